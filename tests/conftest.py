"""Shared fixtures: where the read-only real material in ../shared lives."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HISTO_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it lives beside the checkout)")
    return path


@pytest.fixture
def no_collector():
    """The cycle collector off for one test: a run store left open (a ``Manifest`` not
    closed) then keeps its ``run.sqlite-wal``/``-shm`` files, every time, instead of
    losing them whenever the collector happens to run first."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def open_store_files(folder: Path) -> list[str]:
    """The SQLite write-ahead files under ``folder``: there only while a store is open."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.sqlite-*"))
