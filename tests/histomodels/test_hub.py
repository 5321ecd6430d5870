"""timm's hub weights without the hub (models/hub.py): one error line at once, or the cache.

Each case runs the command in a fresh process, since huggingface_hub reads ``HF_ENDPOINT``,
``HF_HUB_CACHE`` and ``HF_HUB_VERBOSITY`` when it is imported; the hub is a port on
127.0.0.1 that refuses connections, or a local server that answers 503 to everything.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from histomodels.synthetic import write_h5

pytest.importorskip("timm")
pytest.importorskip("huggingface_hub")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving: connections are refused


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_OFFLINE", None)
    return {**env, **extra}


def _finetune(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    train_h5 = write_h5(tmp_path / "train.h5", 32, seed=0)
    val_h5 = write_h5(tmp_path / "val.h5", 24, seed=1)
    args = ["finetune", "--model", "timm/resnet18", "--weights", "imagenet", "--data",
            str(train_h5), "--val", str(val_h5), "--out", str(tmp_path / "r"), "--epochs", "1",
            "--batch-size", "16", "--threads", "1", "--quiet"]  # fmt: skip
    command = [sys.executable, "-m", "histomodels", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_no_hub_is_one_error_line_without_retries(tmp_path: Path) -> None:
    """It was 22 'Retrying in Ns' lines over 66 s, then the error."""
    r = _finetune(tmp_path, _env(tmp_path, f"http://127.0.0.1:{_closed_port()}"))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: timm/resnet18: could not download the pretrained weights")
    assert "cannot be reached (ConnectError" in lines[0]
    assert "--weights FILE" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_hub_answering_503_fails_at_once(tmp_path: Path, unavailable_hub: str) -> None:
    """The build itself, timed in its process (the imports excluded): huggingface_hub
    retries a 503 five times per file (1+2+4+8+8 s), and timm asks for two files."""
    code = textwrap.dedent(
        """
        import time
        import huggingface_hub, timm.models  # imported before the clock starts
        from histomodels.models import create_model
        from histomodels.models.weights import WeightsError
        t0 = time.perf_counter()
        try:
            create_model("timm/resnet18", pretrained=True)
        except WeightsError as exc:
            print(f"{time.perf_counter() - t0:.1f}", exc, sep="\\n")
        """
    )
    env = _env(tmp_path, unavailable_hub)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    seconds, message = r.stdout.strip().splitlines()
    assert float(seconds) < 15, (seconds, r.stderr)  # the retries alone sleep 23 s per file
    assert f"the hub at {unavailable_hub} answered HTTP 503" in message
    assert "Retrying" not in r.stderr


@pytest.mark.slow
def test_cached_weights_load_without_the_hub(tmp_path: Path) -> None:
    """Weights in the huggingface_hub cache (the layout a download leaves) are used when the
    hub cannot be reached: the frozen backbone keeps exactly the cached stem."""
    import timm
    from safetensors.torch import save_file

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()},
              str(repo / "snapshots" / commit / "model.safetensors"))  # fmt: skip
    r = _finetune(tmp_path, _env(tmp_path, f"http://127.0.0.1:{_closed_port()}"))
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    stem = [v for k, v in ckpt["state_dict"].items() if k.split(".")[-2:] == ["conv1", "weight"]
            and v.shape == state["conv1.weight"].shape]  # fmt: skip
    assert len(stem) == 1 and torch.equal(stem[0], state["conv1.weight"])
