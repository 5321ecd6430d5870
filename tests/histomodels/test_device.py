"""Device and precision choices: the "auto" bf16 rule and the autocast/scaler it implies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from histocore.errors import UsageError
from histomodels.device import autocast, grad_scaler, pick_device, set_threads, use_bf16


def test_auto_bf16_on_cpu_only_for_the_scratch_cnn() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("cnn", cpu, None) is True
    assert use_bf16("mobilenetv3_small_100", cpu, None) is False  # depthwise convs slow down
    assert use_bf16("cnn", cpu, False) is False  # an explicit choice wins
    assert use_bf16("efficientnet_b0", cpu, True) is True
    assert use_bf16("efficientnet_b0", torch.device("cuda"), None) is True  # AMP on CUDA


def test_autocast_runs_in_bf16_only_when_enabled() -> None:
    cpu = pick_device("cpu")
    assert cpu == torch.device("cpu")
    a, b = torch.ones(4, 4), torch.ones(4, 4)
    with autocast(cpu, True):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(cpu, False):
        assert (a @ b).dtype == torch.float32
    assert grad_scaler(cpu, True) is None  # bf16 on CPU needs no loss scaling


def test_set_threads_limits_torch_and_none_leaves_it() -> None:
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_device_this_machine_lacks_is_one_usage_error() -> None:
    with pytest.raises(UsageError, match="not a device histomodels runs on"):
        pick_device("cdua")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(UsageError, match="no CUDA GPU" if n == 0 else "numbered from 0"):
        pick_device(f"cuda:{n}")
    for other in ("xla", "meta"):  # names torch knows, devices histomodels does not run on
        with pytest.raises(UsageError, match="not a device histomodels runs on"):
            pick_device(other)
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cli_device_cuda_without_a_gpu_is_one_error_line(tmp_path: Path) -> None:
    """It was PyTorch's driver traceback once the model moved to the GPU."""
    from PIL import Image
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    data = write_h5(tmp_path / "t.h5", 8, seed=1)
    Image.new("RGB", (96, 96), (200, 120, 200)).save(tmp_path / "p.png")
    for cmd in (
        ["eval", "--model", "pcam-cnn", "--data", str(data)],
        ["predict", "--model", "pcam-cnn", str(tmp_path / "p.png")],
    ):
        r = CliRunner().invoke(app, [*cmd, "--device", "cuda", "--out", str(tmp_path / "o")])
        assert r.exit_code == 1, r.output
        assert r.output.startswith("error: --device cuda: no CUDA GPU is usable here"), r.output
        assert len(r.output.splitlines()) == 1 and not (tmp_path / "o").exists()
