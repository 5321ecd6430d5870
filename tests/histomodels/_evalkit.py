"""Small real fixtures shared by the evaluation-side tests: a tiny CNN trained for a few
steps on procedural PCam-like patches (``histomodels.synthetic``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from histomodels.checkpoint import make_checkpoint, save_checkpoint
from histomodels.models import create_model
from histomodels.preprocess import to_input
from histomodels.synthetic import make_patches


def writable_shipped_model(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable install's ``pretrained/`` folder: the shipped pcam-cnn copied into
    ``folder/shipped``, which :data:`histomodels.pretrained.HERE` names until the test
    ends. Returns its weights file (what ``--out`` must never replace)."""
    import shutil

    from histomodels import pretrained

    shipped = folder / "shipped"
    shipped.mkdir()
    for name in ("pcam-cnn.safetensors", "pcam-cnn.json"):
        shutil.copy(pretrained.HERE / name, shipped / name)
    monkeypatch.setattr(pretrained, "HERE", shipped)
    return shipped / "pcam-cnn.safetensors"


TINY_CNN = {"depth": 2, "blocks": 1, "width": 8, "dropout": 0.0}


def train_tiny(path: Path, steps: int = 60, seed: int = 0) -> Path:
    """A tiny cnn checkpoint that has learnt something (a few seconds on one CPU core)."""
    torch.manual_seed(seed)
    model = create_model("cnn", **TINY_CNN)
    x_np, y_np = make_patches(256, seed=seed + 100)
    x, y = to_input(x_np), torch.as_tensor(y_np, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx])[:, 0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_checkpoint(path, make_checkpoint(model, "cnn", TINY_CNN))


_CACHE: dict[str, Path] = {}


def tiny_checkpoint(tmp_path: Path) -> Path:
    """A private copy (tests may rewrite it) of one tiny checkpoint trained once per run."""
    import shutil

    if "ckpt" not in _CACHE:
        # Beside the tests' own folders in pytest's basetemp, which pytest removes: a tempfile
        # folder with an atexit cleanup outlived interrupted runs (17 were found in /tmp).
        folder = tmp_path.parent / "histo-eval-cache"
        folder.mkdir(exist_ok=True)
        _CACHE["ckpt"] = train_tiny(folder / "tiny.pt")
    dest = tmp_path / "tiny.pt"
    shutil.copy(_CACHE["ckpt"], dest)
    return dest
