"""Shared fixtures: where the read-only real material in ../shared lives."""

from __future__ import annotations

import gc
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HISTO_SHARED", ROOT.parent / "shared"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """On a CUDA machine (benchmarks/gpu_check.sh), the histomodels tests that compare two
    runs bit for bit (same seed, resume, prefetch) need deterministic kernels: cuDNN and
    cuBLAS pick non-deterministic ones by default (``warn_only``: an op with no deterministic
    kernel warns instead of failing). On a CPU-only machine nothing changes; on a GPU machine
    the setting is process-wide, so CPU tests run with it too (``torch.empty`` fills with NaN).
    Here, not in a ``tests/histomodels/conftest.py``, which would shadow this module for the
    test files that ``from conftest import shared_path``."""
    if importlib.util.find_spec("torch") is None:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    import torch

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def shared_path(*parts: str) -> Path:
    """A path inside ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it lives beside the checkout)")
    return path


def names_the_file_in_the_way(tmp_path: Path, write: Callable[[Path], object]) -> None:
    """``write(a)``, which writes under ``a`` (``a/x.h5``), with ``a`` a file: the
    NotADirectoryError naming ``a`` (histocore.io's make_parents), which the CLIs print as one
    line, not a plain mkdir's raw FileExistsError ('[Errno 17] File exists')."""
    a = tmp_path / "a"
    a.write_text("mine")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder") as caught:
        write(a)
    assert caught.value.filename == str(a)


def refused_with(result: Any) -> str:
    """The one line a refused CLI run (a typer ``Result``) printed, without its ``error: ``:
    exit 1, nothing on stdout and that one line on stderr, each asserted."""
    assert (result.exit_code, result.stdout) == (1, ""), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0].removeprefix("error: ")


def unboxed(text: str) -> str:
    """A CLI's output with rich's error box and line breaks taken out: one line of words,
    so a message that rich wrapped can be matched whole."""
    return " ".join(text.replace("│", " ").split())


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


@pytest.fixture
def fresh_logging():
    """The loggers ``histocore.cli.setup_logging`` sets up (our packages and the quiet
    libraries), put back as they were after the test."""
    import logging

    from histocore.cli import PACKAGES, QUIET_LIBRARIES

    names = PACKAGES + QUIET_LIBRARIES
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    yield
    for name, (handlers, level) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).setLevel(level)


def deny_opening(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """``open(path)`` fails as a file of mode 000 would for anyone but root (the tests run
    as root, so the mode alone cannot make it fail); every other open is left alone."""
    import builtins

    real_open = builtins.open

    def deny(file: object, *args: object, **kwargs: object) -> object:
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", deny)


def shadow_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, init: str = ""
) -> Path:
    """A package ``name`` whose ``__init__.py`` is ``init``, put first on ``sys.path`` with
    ``name`` and its submodules out of ``sys.modules`` (both restored at teardown): what an
    installed package that fails as it imports (a broken install) looks like to the code that
    imports it. Returns its ``__init__.py`` (to find in the error's traceback)."""
    import sys

    folder = tmp_path / "shadow-site" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(init + "\n")
    monkeypatch.syspath_prepend(str(folder.parent))
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    # the shadow the test imports goes at teardown too where ``name`` was never imported in
    # this process (review 52: it stayed, and a later `import pymupdf` got the shadow):
    # monkeypatch's undo deletes a key it set that was absent
    monkeypatch.setitem(sys.modules, name, None)
    del sys.modules[name]
    return folder / "__init__.py"
