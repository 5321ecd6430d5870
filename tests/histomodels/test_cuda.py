"""CUDA paths that a CPU machine cannot run: the prefetch thread's pinned, non-blocking
copies, bf16 AMP with every recipe lever, SWA and precise BN on the device, a CUDA-trained
checkpoint scored on the CPU, and ``--deterministic`` runs equal bit for bit. Skipped
without a GPU; benchmarks/gpu_check.sh runs them first on a lent one."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from _trainkit import TINY
from PIL import Image
from typer.testing import CliRunner

from histomodels.checkpoint import read_checkpoint
from histomodels.cli import app
from histomodels.config import TrainConfig
from histomodels.inference import Predictor
from histomodels.synthetic import make_patches
from histomodels.training import train

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)"
)

LEVERS = dict(jpeg_blur=0.5, cutout=0.3, randstain=0.5, mixup=0.4, label_smoothing=0.1)


@pytest.fixture(scope="module")
def arrays():
    return make_patches(96, seed=0), make_patches(48, seed=1)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="cnn", model_config=TINY, epochs=2, batch_size=16, progress=False,
                threads=1, device="cuda", **LEVERS)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "last.pt")["state_dict"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_cuda_prefetch_changes_nothing_beyond_the_devices_own_noise(arrays, tmp_path, monkeypatch):
    """Pinned batches copied ``non_blocking`` while the previous step runs: a buffer reused
    or read before its copy finished would train on the wrong pixels. Prefetch off twice
    gives the device's run-to-run spread (0 with deterministic kernels); on must match off
    within it."""
    (xt, yt), (xv, yv) = arrays
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    runs = {}
    for name, on in (("off1", False), ("off2", False), ("on", True)):
        torch.cuda.reset_peak_memory_stats()
        runs[name] = train(_cfg(prefetch=on), tmp_path / name, train_data=(xt, yt),
                           val_data=(xv, yv))  # fmt: skip
        assert torch.cuda.max_memory_allocated() > 0  # it trained on the GPU
    noise = _max_diff(_weights(tmp_path / "off1"), _weights(tmp_path / "off2"))
    diff = _max_diff(_weights(tmp_path / "off1"), _weights(tmp_path / "on"))
    assert diff <= 10 * noise, f"prefetch on vs off: {diff:.3g}; off vs off: {noise:.3g}"
    losses = [[h["train_loss"] for h in runs[n].history] for n in runs]
    assert all(np.isfinite(v).all() for v in losses), losses


def test_cuda_deterministic_runs_are_bit_identical(arrays, tmp_path, monkeypatch):
    """``--deterministic``: two same-seed CUDA runs with every lever and bf16 AMP give the
    same weights bit for bit, also in a process that had cuDNN autotuning on and
    deterministic algorithms off (the suite's conftest turns them on; undone here)."""
    (xt, yt), (xv, yv) = arrays
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        for name in ("a", "b"):
            train(_cfg(deterministic=True, bf16=True), tmp_path / name, train_data=(xt, yt),
                  val_data=(xv, yv))  # fmt: skip
            assert not torch.are_deterministic_algorithms_enabled()  # the process's setting back
            assert torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(was, warn_only=True)
    assert _max_diff(_weights(tmp_path / "a"), _weights(tmp_path / "b")) == 0


def test_cuda_deterministic_after_cuda_work_warns_about_cublas():
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once: a process that used CUDA before a
    deterministic run (a library caller) is told to set it first."""
    import os
    import subprocess
    import sys

    code = (
        "import logging, torch\n"
        "logging.basicConfig()\n"
        "a = torch.ones(8, 8, device='cuda'); (a @ a).sum().item()\n"
        "from histomodels.device import deterministic_algorithms\n"
        "with deterministic_algorithms(True): pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "CUDA was in use before CUBLAS_WORKSPACE_CONFIG was set" in done.stderr


def test_cuda_trained_swa_precise_bn_checkpoint_scores_the_same_on_cpu(arrays, tmp_path):
    """Every lever, bf16 AMP, SWA (averaged model and its BatchNorm recompute on the
    device) and precise BN: the checkpoint holds CPU tensors and scores the same on both."""
    (xt, yt), (xv, yv) = arrays
    res = train(
        _cfg(epochs=4, swa=0.5, precise_bn=64, bf16=True),
        tmp_path / "r",
        train_data=(xt, yt),
        val_data=(xv, yv),
    )
    assert [h.get("swa_models", 0) for h in res.history][-1] >= 1, res.history
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    # as saved (read_checkpoint maps everything to the CPU, which would hide CUDA tensors)
    saved = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert {v.device.type for v in saved["state_dict"].values()} == {"cpu"}
    cpu = Predictor.load(tmp_path / "r" / "best.pt", device="cpu", precision="fp32")
    gpu = Predictor.load(tmp_path / "r" / "best.pt", device="cuda", precision="fp32")
    gpu_bf16 = Predictor.load(tmp_path / "r" / "best.pt", device="cuda", precision="bf16")
    a, b, c = (p.logits(xv, tta=True) for p in (cpu, gpu, gpu_bf16))
    assert np.isfinite(b).all() and np.abs(a - b).max() < 1e-3, np.abs(a - b).max()
    assert np.abs(a - c).max() < 0.1, np.abs(a - c).max()


def test_cuda_resume_and_distillation_from_a_cuda_teacher(arrays, tmp_path, caplog):
    """Optimizer state saved from CUDA resumes on CUDA; a teacher trained there scores the
    training patches on the device for the student."""
    (xt, yt), (xv, yv) = arrays
    train(_cfg(epochs=1), tmp_path / "t", train_data=(xt, yt), val_data=(xv, yv))
    with caplog.at_level("INFO", logger="histomodels"):
        res = train(_cfg(epochs=2), tmp_path / "t", resume=True, train_data=(xt, yt),
                    val_data=(xv, yv))  # fmt: skip
    assert len(res.history) == 2 and res.history[-1]["epoch"] == 2, res.history
    assert any("after epoch 1" in r.getMessage() for r in caplog.records)  # resumed, not anew
    caplog.clear()
    with caplog.at_level("INFO", logger="histomodels"):
        student = train(
            _cfg(teacher=str(tmp_path / "t")), tmp_path / "s", train_data=(xt, yt),
            val_data=(xv, yv),
        )  # fmt: skip
    assert all(np.isfinite(h["train_loss"]) for h in student.history)
    scored = [r.getMessage() for r in caplog.records if "teacher soft targets" in r.getMessage()]
    assert scored and " on cuda" in scored[0], scored


def test_cuda_predict_cli_matches_cpu(arrays, tmp_path):
    """``predict --device cuda`` and ``--device cpu`` (fp32) give the same probabilities."""
    (xt, yt), (xv, yv) = arrays
    train(_cfg(epochs=1), tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    mosaic = xv[:16].reshape(4, 4, 96, 96, 3).transpose(0, 2, 1, 3, 4).reshape(384, 384, 3)
    Image.fromarray(np.ascontiguousarray(mosaic)).save(tmp_path / "m.png")
    probs = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / f"{dev}.csv"
        r = CliRunner().invoke(app, ["predict", str(tmp_path / "r"), str(tmp_path / "m.png"),
                                     "--out", str(out), "--device", dev, "--precision", "fp32",
                                     "--no-heatmaps"])  # fmt: skip
        assert r.exit_code == 0, r.output
        with out.open() as f:
            probs[dev] = np.array([float(row["probability"]) for row in csv.DictReader(f)])
    assert len(probs["cpu"]) == 16
    assert np.abs(probs["cpu"] - probs["cuda"]).max() < 1e-4
