"""Small helpers shared by the training-lever tests: the `histomodels train` command line
of a tiny CNN on procedural PCam-like patches (``histomodels.synthetic``)."""

from __future__ import annotations

import json
from pathlib import Path

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
