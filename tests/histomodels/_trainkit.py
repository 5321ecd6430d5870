"""Small helpers shared by the training-lever tests: the `histomodels train` command line
of a tiny CNN on procedural PCam-like patches (``histomodels.synthetic``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from histomodels.synthetic import write_h5

TINY = {"width": 8, "depth": 2, "blocks": 1}


def train_args(tmp_path: Path, epochs: int) -> tuple[list[str], Path]:
    """`train` arguments (ending with ``--quiet``) for a tiny CNN on 32 training and 24
    validation patches written under ``tmp_path``, and the run folder they name."""
    train_h5 = write_h5(tmp_path / "train.h5", 32, seed=0)
    val_h5 = write_h5(tmp_path / "val.h5", 24, seed=1)
    out = tmp_path / "r"
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(out),
            "--model-config", json.dumps(TINY), "--epochs", str(epochs), "--batch-size", "16",
            "--threads", "1", "--quiet"]  # fmt: skip
    return args, out


def encoded_h5_with_origins(path: Path, n: int, unknown: Any, seed: int = 0) -> Path:
    """An encoded HDF5 (PNG bytes per row, as ``dev/train.h5`` stores its patches) of ``n``
    patches with a ``manifest.csv`` beside it: rows of origin ``pcam_train``, but the last,
    of origin ``unknown``, holds the pixels ``unknown`` (e.g. a validation patch's)."""
    import csv
    import io

    import h5py
    import numpy as np
    from PIL import Image

    from histomodels.synthetic import make_patches

    x, y = make_patches(n - 1, seed=seed)
    x = np.concatenate([x, np.asarray(unknown, np.uint8)[None]])
    with h5py.File(path, "w") as f:
        enc = f.create_dataset("encoded", (n,), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(x[i]).save(buf, format="PNG")
            enc[i] = np.frombuffer(buf.getvalue(), np.uint8)
        f["y"] = np.append(y, 0).astype(np.uint8)
    with (path.parent / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "row", "origin_split"])
        for i in range(n):
            w.writerow([path.name, i, "unknown" if i == n - 1 else "pcam_train"])
    return path


def run_out_of_memory_in_validation(monkeypatch: Any) -> None:
    """Make every forward pass without grad (validation's) run out of memory: torch's
    allocator refuses a 1 PB tensor, as it refuses a batch too big for the machine."""
    import torch

    real = torch.nn.functional.conv2d

    def conv2d(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.device.type != "meta":
            torch.empty(2**50, dtype=torch.uint8)
        return real(x, *args, **kwargs)

    monkeypatch.setattr("torch.nn.functional.conv2d", conv2d)
