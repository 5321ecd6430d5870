"""The test helpers that build run folders close the stores they open.

An open ``Manifest`` is freed only by the cycle collector, so until it runs the folder holds
``run.sqlite-wal``/``-shm``: a test that copies, lists or compares the folder then fails at
random (a download-resume test did, on a fresh clone). With the collector off, a helper that
leaves its store open fails here every time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import review_kit
import run_factory
import test_sheets
import test_stage
import test_weak_labels
from conftest import open_store_files

from histocore.manifest import Record

HELPERS: dict[str, Callable[[Path], object]] = {
    "review_kit.make_run": review_kit.make_run,
    "run_factory.make_run": lambda d: run_factory.make_run(d, Record(id="pmid:1", pmid="1")),
    "test_sheets._run": lambda d: test_sheets._run(d, 3),
    "test_stage._manifest": test_stage._manifest,
    "test_weak_labels._run_with_captions": lambda d: test_weak_labels._run_with_captions(
        d, {"pmid:0/fig1": "Figure 1. Metastatic carcinoma in a lymph node (H&E)."}
    ),
}


@pytest.mark.parametrize("name", HELPERS)
def test_a_run_helper_leaves_no_store_open(name: str, tmp_path: Path, no_collector) -> None:
    made = HELPERS[name](tmp_path)  # kept: what the test holds must be closed too
    assert made is not None
    assert open_store_files(tmp_path) == []
