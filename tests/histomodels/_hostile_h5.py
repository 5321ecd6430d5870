"""An encoded-HDF5 training file (PNG per row, the ``pcam_real/dev`` layout) whose one row
is a truncated PNG: decodes fine until that row, then fails as a user's damaged file does."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from histomodels.synthetic import make_patches


def truncated_png_h5(path: Path, n: int = 120, bad_row: int = 100, seed: int = 0) -> Path:
    """``n`` synthetic PNG patches with labels; row ``bad_row`` keeps half its bytes."""
    x, y = make_patches(n, seed=seed)
    with h5py.File(path, "w") as f:
        enc = f.create_dataset("encoded", (n,), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(x[i]).save(buf, format="PNG")
            data = buf.getvalue()
            enc[i] = np.frombuffer(data[: len(data) // 2] if i == bad_row else data, np.uint8)
        f["y"] = np.asarray(y, np.uint8)
    return path
