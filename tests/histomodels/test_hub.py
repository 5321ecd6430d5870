"""timm's hub weights without the hub (models/hub.py): one error line at once, or the cache.

Each case runs the command in a child process, since huggingface_hub reads ``HF_ENDPOINT``,
``HF_HOME``, ``HF_HUB_OFFLINE`` and ``HF_HUB_VERBOSITY`` when it is imported; cases with the
same settings share one child (a module fixture: the imports cost about 7 CPU seconds a
child), each command with its own stderr, cache entry and ``--out``. The hub is a port on
127.0.0.1 that refuses connections, or a local mirror that serves weights (and answers 503
at its root).
"""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
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


class _Mirror(http.server.BaseHTTPRequestHandler):
    """A hub mirror: it serves one weights file as the hub does (ETag, X-Repo-Commit) and
    answers 503 at its root, which no download asks for."""

    protocol_version = "HTTP/1.1"
    weights = b""

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        if path.endswith("/resolve/main/model.safetensors"):
            self.send_response(200)
            self.send_header("ETag", f'"{hashlib.sha256(self.weights).hexdigest()}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("Content-Length", str(len(self.weights)))
            self.end_headers()
            if body:
                self.wfile.write(self.weights)
            return
        self.send_response(503 if path.rstrip("/") == "" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """A mirror serving resnet18 weights (random: any other stem than timm's init) and what
    it serves."""
    import timm
    from safetensors.torch import save

    torch.manual_seed(5)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    handler = type("Mirror", (_Mirror,), {"weights": save(state)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
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


def _stem(run: Path, like: torch.Tensor) -> torch.Tensor:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    stem = [v for k, v in ckpt["state_dict"].items() if k.split(".")[-2:] == ["conv1", "weight"]
            and v.shape == like.shape]  # fmt: skip
    assert len(stem) == 1
    return stem[0]


@pytest.mark.slow
def test_a_hub_that_answers_downloads_as_before(tmp_path: Path, mirror) -> None:
    """Online: any HTTP answer at the endpoint (here 503 at a mirror's root, which serves its
    files) lets timm download; the check first refused it ('answered HTTP 503')."""
    endpoint, state = mirror
    r = _finetune(tmp_path, _env(tmp_path, endpoint))
    assert r.returncode == 0, r.stderr
    assert torch.equal(_stem(tmp_path / "r", state["conv1.weight"]), state["conv1.weight"])


@pytest.mark.slow
def test_a_callers_own_weights_file_is_not_replaced(tmp_path: Path) -> None:
    """``pretrained_cfg_overlay={"file": ...}`` (timm's way to load local weights) was
    replaced by the cache's file, or refused when nothing was cached, without the hub."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    mine = {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}
    save_file(mine, str(tmp_path / "mine.safetensors"))
    code = textwrap.dedent(
        f"""
        import torch
        from histomodels.models import create_model
        m = create_model("timm/resnet18", pretrained=True,
                         pretrained_cfg_overlay={{"file": {str(tmp_path / "mine.safetensors")!r}}})
        torch.save(m.state_dict(), {str(tmp_path / "got.pt")!r})
        """
    )
    env = _env(tmp_path, f"http://127.0.0.1:{_closed_port()}")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / "got.pt", weights_only=True)
    stem = [v for k, v in got.items() if k.endswith("conv1.weight")
            and v.shape == mine["conv1.weight"].shape]  # fmt: skip
    assert len(stem) == 1 and torch.equal(stem[0], mine["conv1.weight"])


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
    assert torch.equal(_stem(tmp_path / "r", state["conv1.weight"]), state["conv1.weight"])


_VERBOSITY = """
import os, subprocess, sys
from histomodels.cli import app
try:
    app(sys.argv[1:], prog_name="histomodels")
except SystemExit:
    pass
from huggingface_hub.utils import logging as hub
child = "from huggingface_hub.utils import logging as hub; print(hub.get_verbosity())"
seen = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout
print(os.environ.get("HF_HUB_VERBOSITY"), hub.get_verbosity(), seen.strip())
"""


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, "None 40 30"),  # its warnings hidden here (ERROR), a child keeps its own
        (["-v"], {}, "None 30 30"),  # -v: huggingface_hub's default, WARNING
        ([], {"HF_HUB_VERBOSITY": "info"}, "info 20 20"),  # the user's choice is kept
    ],
)
def test_hub_warnings_are_quiet_in_this_process_only(tmp_path: Path, args, env, expected) -> None:
    """huggingface_hub's warnings (its retry lines) show only with -v, set through its logging
    API: the CLI set HF_HUB_VERBOSITY=error in the environment, which every child process
    (a training's workers, a tool it runs) inherited."""
    r = subprocess.run(
        [sys.executable, "-c", _VERBOSITY, *args, "data", "--help"],
        env=_env(tmp_path, "http://127.0.0.1:9", **env), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == expected


_HF_NAME = "timm/hf-hub:timm/resnet18.a1_in1k"

#: Runs the CLI in this child once for each command line of the JSON file argv[1] (each with
#: its stderr in a file of its own, argv[2] + ".N") and writes how long each took, imports
#: apart (the commands import PyTorch and timm lazily: 10 s and more on a busy machine), and
#: its exit code, to the JSON file argv[2]. Several commands in one child pay the imports
#: (about 7 CPU seconds) once. A command that raises anything but SystemExit (a bug) has its
#: traceback in its own stderr file and the code "raised TYPE", and the next still runs: one
#: bug fails its own case, not every case of the group (the child died, no results at all).
#: TIMED_RAISE_AT=N makes command N raise such a bug (this harness's own test).
_TIMED = """
import json, os, sys, time, traceback
import huggingface_hub, timm, torch  # noqa
import histomodels.models, histomodels.training  # noqa
from histomodels.cli import app
with open(sys.argv[1]) as f:
    commands = json.load(f)
results = []
for n, argv in enumerate(commands):
    sys.stderr.flush()
    with open(f"{sys.argv[2]}.{n}", "w") as err:
        os.dup2(err.fileno(), 2)
    start = time.monotonic()
    code = None
    try:
        if os.environ.get("TIMED_RAISE_AT") == str(n):
            raise RuntimeError(f"a bug in command {n}")
        app(argv, prog_name="histomodels")
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # not KeyboardInterrupt: Ctrl-C stops the child
        traceback.print_exc()
        code = f"raised {type(exc).__name__}"
    sys.stderr.flush()
    results.append([time.monotonic() - start, code])
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def _timed_many(
    folder: Path, env: dict[str, str], *commands: list[str]
) -> list[tuple[float, int | str | None, str]]:
    """Each command (``COMMAND --model ...``) on the same data in one child, into its own
    ``--out`` (``folder/r0``, ``r1``, ...): [(seconds, exit code, stderr)] in order."""
    train_h5 = write_h5(folder / "train.h5", 32, seed=0)
    val_h5 = write_h5(folder / "val.h5", 24, seed=1)
    lines = [
        [*args, "--data", str(train_h5), "--val", str(val_h5), "--out", str(folder / f"r{n}"),
         "--epochs", "1", "--batch-size", "16", "--threads", "1", "--quiet"]
        for n, args in enumerate(commands)
    ]  # fmt: skip
    (folder / "commands.json").write_text(json.dumps(lines))
    results = folder / "results.json"
    command = [sys.executable, "-c", _TIMED, str(folder / "commands.json"), str(results)]
    r = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert results.exists(), r.stderr[-3000:] + "".join(
        p.read_text()[-3000:] for p in sorted(folder.glob("results.json.*"))
    )
    return [
        (seconds, code, (folder / f"results.json.{n}").read_text())
        for n, (seconds, code) in enumerate(json.loads(results.read_text()))
    ]


def _timed(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[float, int | str | None, str]:
    """One command in a child of its own (``--out`` is ``tmp_path/r0``)."""
    (result,) = _timed_many(tmp_path, env, list(args))
    return result


COMMANDS = ("train", "finetune")


def test_a_command_that_raises_fails_only_its_own_case(tmp_path: Path) -> None:
    """A command that raised (a bug, not SystemExit) killed the child running its group:
    no results.json, so every case of the group errored in its fixture. It has its own
    code and traceback now, and the commands after it still run."""
    env = _env(tmp_path, f"http://127.0.0.1:{_closed_port()}", TIMED_RAISE_AT="0")
    bad = ["train", "--model", "cnn"]
    good = ["train", "--model", "cnn", "--lr", "0"]  # a usage error: exit 2, at once
    (_, code0, err0), (_, code1, err1) = _timed_many(tmp_path, env, bad, good)
    assert code0 == "raised RuntimeError" and "RuntimeError: a bug in command 0" in err0
    assert "Traceback" in err0 and "Traceback" not in err1
    assert code1 == 2, err1


@pytest.fixture(scope="module")
def uncached_runs(tmp_path_factory: pytest.TempPathFactory):
    """``offline -> (folder, {command: (seconds, exit code, stderr)})``: train and finetune of
    an uncached hf-hub: model without the hub, in one child per HF_HUB_OFFLINE setting (read
    when huggingface_hub is imported); each run when a test first asks for it."""
    runs: dict[bool, tuple[Path, dict[str, tuple[float, int | str | None, str]]]] = {}

    def run(offline: bool) -> tuple[Path, dict[str, tuple[float, int | str | None, str]]]:
        if offline not in runs:
            folder = tmp_path_factory.mktemp("uncached")
            extra = {"HF_HUB_OFFLINE": "1"} if offline else {}
            env = _env(folder, f"http://127.0.0.1:{_closed_port()}", **extra)
            results = _timed_many(folder, env, *([c, "--model", _HF_NAME] for c in COMMANDS))
            runs[offline] = folder, dict(zip(COMMANDS, results, strict=True))
        return runs[offline]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("offline", [False, True])
def test_an_uncached_hf_hub_model_without_the_hub_is_one_line_at_once(
    uncached_runs, command: str, offline: bool
) -> None:
    """timm reads an hf-hub: model's config.json from the hub even untrained: with nothing
    cached and no hub, huggingface_hub's retries took 34 s (at least 23 s of backoff), then
    'error: An error happened while trying to locate the file on the Hub ...', naming no
    model."""
    folder, runs = uncached_runs(offline)
    seconds, code, stderr = runs[command]
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(
        f"error: {_HF_NAME}: the model's config.json is not in the Hugging Face cache and "
        "cannot be downloaded: "
    )
    why = "HF_HUB_OFFLINE is set" if offline else "cannot be reached (ConnectError"
    assert why in lines[0] and "local-dir:FOLDER" in lines[0]
    # huggingface_hub's backoff alone sleeps 1+2+4+8+8 s; now: the data read, a trial
    # build and one refused connection (1-2 s idle)
    assert seconds < 15, seconds
    assert not (folder / f"r{COMMANDS.index(command)}").exists()


@pytest.mark.slow
def test_a_cached_hf_hub_model_builds_without_the_hub(tmp_path: Path) -> None:
    """config.json and weights in the huggingface_hub cache (a download's layout) still
    build the model when the hub cannot be reached: the check of the cache above refuses
    nothing it holds, and the frozen backbone keeps the cached stem."""
    import json

    import timm
    from safetensors.torch import save_file

    torch.manual_seed(11)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    config = {"architecture": "resnet18", "num_classes": 1000, "num_features": 512,
              "pretrained_cfg": {"tag": "a1_in1k", "input_size": [3, 224, 224],
                                 "fixed_input_size": False, "num_classes": 1000,
                                 "first_conv": "conv1", "classifier": "fc"}}  # fmt: skip
    (snapshot / "config.json").write_text(json.dumps(config))
    env = _env(tmp_path, f"http://127.0.0.1:{_closed_port()}")
    _, code, stderr = _timed(tmp_path, env, "finetune", "--model", _HF_NAME)
    assert code in (0, None), stderr
    assert torch.equal(_stem(tmp_path / "r0", state["conv1.weight"]), state["conv1.weight"])


#: Builds hf-hub: models pretrained in this child (the library, no CLI: huggingface_hub's
#: retry warnings are not silenced) and saves each one's stem: argv is NAME STEM_FILE ...;
#: each build's stderr goes to STEM_FILE.err, and a build that raises leaves no STEM_FILE
#: (its traceback in the .err file) while the next still runs.
_BUILD = """
import logging, os, sys, traceback, torch
from histomodels.models.timm_zoo import _timm_create
# the package loggers hold a NullHandler: a script's warnings show once it sets up logging
logging.basicConfig(format="%(name)s: %(message)s")
for name, stem in zip(sys.argv[1::2], sys.argv[2::2]):
    sys.stderr.flush()
    with open(stem + ".err", "w") as err:
        os.dup2(err.fileno(), 2)
    try:
        model = _timm_create(name, True)
        torch.save(model.conv1.weight.detach(), stem)
    except (Exception, SystemExit):  # as _TIMED: one build's bug is its case's failure only
        traceback.print_exc()
    sys.stderr.flush()
"""

#: the cached weights timm does not ask for first: (weights, hf_hub_filename, legacy)
SECOND_LOADS = [
    ("pytorch_model.bin", None, False),  # timm asks for model.safetensors first
    ("open_clip_pytorch_model.bin", "open_clip_pytorch_model.bin", False),  # named
    # a legacy config.json, one dict without "pretrained_cfg", names it at its top
    # level (timm takes the whole file as the pretrained config), with other weights
    # cached as pytorch_model.bin beside it: those were loaded, the wrong model
    ("open_clip_pytorch_model.bin", "open_clip_pytorch_model.bin", True),
]


@pytest.fixture(scope="module")
def second_load_runs(tmp_path_factory: pytest.TempPathFactory):
    """``[(snapshot, stem file, stderr, the stem cached)]`` for each of SECOND_LOADS, cached
    as repo caseN/resnet18.a1_in1k in one Hugging Face cache and built in one child."""
    import json

    import timm

    folder = tmp_path_factory.mktemp("second-load")
    cases, argv = [], []
    for n, (weights, hf_hub_filename, legacy) in enumerate(SECOND_LOADS):
        torch.manual_seed(12)
        state = timm.create_model("resnet18", pretrained=False).state_dict()
        repo = folder / "hf" / "hub" / f"models--case{n}--resnet18.a1_in1k"
        commit = "fedcba9876543210fedcba9876543210fedcba98"
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        torch.save(state, snapshot / weights)
        pretrained = {"tag": "a1_in1k", "input_size": [3, 224, 224], "num_classes": 1000,
                      "first_conv": "conv1", "classifier": "fc"}  # fmt: skip
        if hf_hub_filename:
            pretrained["hf_hub_filename"] = hf_hub_filename
        config = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": pretrained}
        if legacy:
            config = {"architecture": "resnet18", **pretrained}
            torch.manual_seed(13)
            torch.save(timm.create_model("resnet18").state_dict(), snapshot / "pytorch_model.bin")
        (snapshot / "config.json").write_text(json.dumps(config))
        stem = folder / f"stem{n}.pt"
        argv += [f"hf-hub:case{n}/resnet18.a1_in1k", str(stem)]
        cases.append((snapshot, stem, state["conv1.weight"]))
    env = _env(folder, f"http://127.0.0.1:{_closed_port()}")
    r = subprocess.run([sys.executable, "-c", _BUILD, *argv], env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return [
        (snapshot, stem, Path(f"{stem}.err").read_text(), like) for snapshot, stem, like in cases
    ]


@pytest.mark.parametrize("script", ["_TIMED", "_BUILD"])
def test_the_shared_children_let_ctrl_c_through(script: str) -> None:
    """The children that run many cases caught BaseException, so that one case's bug failed
    that case only, and swallowed KeyboardInterrupt with it: Ctrl-C went on to the next
    case. They catch Exception (and SystemExit, a command's exit) only."""
    caught: set[str] = set()
    for handler in ast.walk(ast.parse(globals()[script])):
        if isinstance(handler, ast.ExceptHandler):
            assert handler.type is not None, f"{script}: a bare except"
            caught |= {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)}
    assert "Exception" in caught, caught
    assert not caught & {"BaseException", "KeyboardInterrupt"}, caught


@pytest.mark.parametrize(("weights", "hf_hub_filename", "legacy"), SECOND_LOADS)
def test_cached_weights_timm_asks_for_second_load_without_retries(
    second_load_runs, weights: str, hf_hub_filename: str | None, legacy: bool
) -> None:
    """An hf-hub: model whose cache holds weights that are not the first file timm asks for
    (pytorch_model.bin, after model.safetensors) or that its config.json names
    (hf_hub_filename): without the hub, huggingface_hub retried the first file for ~23 s
    ('Retrying in 1s [Retry 1/5]' ... 8s) before timm fell back to the cached one; a name
    other than model.safetensors/pytorch_model.bin was not seen as cached at all and the
    build was refused. The cached file is loaded at once, and is what the model holds."""
    n = SECOND_LOADS.index((weights, hf_hub_filename, legacy))
    snapshot, stem, stderr, like = second_load_runs[n]
    assert stem.exists(), stderr[-3000:]
    assert "Retrying" not in stderr, stderr[-3000:]
    assert f"using the cached weights {snapshot / weights}" in stderr
    assert torch.equal(torch.load(stem), like)


#: cached config.json texts timm cannot parse, and what the error line says of each
BAD_CONFIGS = [
    ("[" * 100_000 + "]" * 100_000, "not usable JSON (nested too deeply)"),  # RecursionError
    ("[1, 2]", "a JSON list, expected an object"),  # TypeError inside timm
    ('{"architecture": 5}', "its 'architecture' is not a model name"),  # AttributeError
    ('{"architecture": "resnet18", "pretrained_cfg": 5}', "its 'pretrained_cfg' is a JSON"),
    # a JSONDecodeError traceback inside timm, which reads it as UTF-8 text (review 2)
    ('\ufeff{"architecture": "resnet18"}', "it starts with a byte-order mark"),
]


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory: pytest.TempPathFactory):
    """``(folder, [(seconds, exit code, stderr)])``: ``train --model timm/hf-hub:evil/mN``
    for each of BAD_CONFIGS (cached as repo evil/mN), all in one child."""
    folder = tmp_path_factory.mktemp("bad-configs")
    for n, (text, _) in enumerate(BAD_CONFIGS):
        repo = folder / "hf" / "hub" / f"models--evil--m{n}"
        commit = "0123456789abcdef0123456789abcdef01234567"
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        (repo / "snapshots" / commit / "config.json").write_text(text)
    env = _env(folder, f"http://127.0.0.1:{_closed_port()}", HF_HUB_OFFLINE="1")
    commands = (["train", "--model", f"timm/hf-hub:evil/m{n}"] for n in range(len(BAD_CONFIGS)))
    return folder, _timed_many(folder, env, *commands)


@pytest.mark.parametrize(("text", "said"), BAD_CONFIGS)
def test_a_cached_hf_hub_config_timm_cannot_parse_is_one_line(
    bad_config_runs, text: str, said: str
) -> None:
    """An hf-hub: model's config.json comes from someone's hub repo; one timm cannot parse
    was a traceback from train (a RecursionError in our own read of its hf_hub_filename,
    then TypeError or AttributeError in timm's _parse_model_cfg). Now one line naming the
    cached file, nothing written."""
    folder, runs = bad_config_runs
    n = BAD_CONFIGS.index((text, said))
    config = next(
        (folder / "hf" / "hub" / f"models--evil--m{n}" / "snapshots").glob("*/config.json")
    )
    assert config.read_text() == text
    _, code, stderr = runs[n]
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(
        f"error: {config}: not a usable config.json for timm/hf-hub:evil/m{n} ({said}"
    ), lines
    assert not (folder / f"r{n}").exists()


@pytest.mark.slow
def test_no_torchvision_download_names_the_cli_option(tmp_path: Path) -> None:
    """A torchvision model's ImageNet weights that cannot be downloaded said "when offline
    pass weights=PATH to a local file", the Python argument, to a CLI user; the timm line
    names --weights FILE."""
    proxy = f"http://127.0.0.1:{_closed_port()}"  # torch.hub's urllib: connection refused
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    env.update(TORCH_HOME=str(tmp_path / "torch"), HTTPS_PROXY=proxy, https_proxy=proxy,
               OMP_NUM_THREADS="1")  # fmt: skip
    train_h5 = write_h5(tmp_path / "train.h5", 32, seed=0)
    val_h5 = write_h5(tmp_path / "val.h5", 24, seed=1)
    args = ["finetune", "--model", "mobilenet_v3_small", "--data", str(train_h5), "--val",
            str(val_h5), "--out", str(tmp_path / "r"), "--epochs", "1", "--quiet"]  # fmt: skip
    command = [sys.executable, "-m", "histomodels", *args]
    r = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: mobilenet_v3_small: could not get torchvision ImageNet")
    assert "--weights FILE" in lines[0], lines[0]
    assert not (tmp_path / "r").exists()
