"""The histomodels test helpers that build histofetch run folders close their stores (see
tests/histofetch/test_run_kits.py: an open store keeps run.sqlite-wal/-shm in the folder
until the cycle collector runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import test_external
import test_external_labels
import test_label
import test_manifest_tiles
from conftest import open_store_files

HELPERS: dict[str, Callable[[Path], object]] = {
    "test_external._run": lambda d: test_external._run(d, ["metastasis", None]),
    "test_external_labels._manifest": lambda d: test_external_labels._manifest(d / "run", False),
    "test_label._run": test_label._run,
    "test_manifest_tiles._run": lambda d: test_manifest_tiles._run(
        d, {"fig": (np.full((120, 130, 3), 200, np.uint8), "metastasis")}
    ),
}


@pytest.mark.parametrize("name", HELPERS)
def test_a_run_helper_leaves_no_store_open(name: str, tmp_path: Path, no_collector) -> None:
    made = HELPERS[name](tmp_path)  # kept: what the test holds must be closed too
    assert made is not None
    assert open_store_files(tmp_path) == []
