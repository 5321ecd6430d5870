"""Work functions for pool tests (module-level, so spawned worker processes can import them)
and the child set-up of the Ctrl-C tests."""

from __future__ import annotations

import functools
import gc
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from histocore.manifest import Manifest, Record


def die_reading(manifest: Manifest, rec: Record, *, victim: str) -> None:
    """Kill the worker process reading ``victim`` (what a PDF that crashes MuPDF or eats all
    memory does to its reader: SIGKILL, no exception, no cleanup); others take a moment."""
    if rec.id == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)


def default_sigint() -> None:
    """``preexec_fn`` of a child that a test sends Ctrl-C: SIGINT back to its default.

    A shell starts background jobs (``cmd &``, ``nohup``, a CI runner's) with SIGINT ignored,
    children inherit that, and Python then never raises KeyboardInterrupt — right for a
    user's background job, but the test means a foreground terminal's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish_while_another_dies(manifest: Manifest, rec: Record, *, folder: str) -> None:
    """``good`` ends once the parent is busy (it wrote ``go``); ``victim`` kills its worker
    once the parent holds ``good``'s result (it wrote ``kill``); the others end at once."""
    marks = Path(folder)
    if rec.id == "good":
        _wait_for(marks / "go")
    elif rec.id == "victim":
        _wait_for(marks / "kill")
        os.kill(os.getpid(), signal.SIGKILL)


def finish_then_hang(manifest: Manifest, rec: Record, *, folder: str) -> None:
    """``good`` ends once the parent is busy (it wrote ``go``); ``slow`` never ends (its
    worker is ended by the Ctrl-C); the others end at once."""
    marks = Path(folder)
    if rec.id == "good":
        _wait_for(marks / "go")
    elif rec.id == "slow":
        _wait_for(marks / "never", within_s=600)


def result_back(rid: str) -> None:
    """Wait until the pool in this process has received ``rid``'s result (its future is
    done), whoever is slow: the marker a worker writes comes before its result is sent."""

    def back(f: Future) -> bool:
        if not f.done() or f.cancelled() or f.exception() is not None:
            return False
        result = f.result()
        return isinstance(result, tuple) and isinstance(result[0], Record) and result[0].id == rid

    _wait_until(lambda: any(back(f) for f in _futures()), f"{rid}'s result")


def pool_broken() -> None:
    """Wait until the pool in this process has seen a worker die (a future broken)."""

    def broken(f: Future) -> bool:
        return f.done() and not f.cancelled() and isinstance(f.exception(), BrokenProcessPool)

    _wait_until(lambda: any(broken(f) for f in _futures()), "a broken pool")


def interrupted_after_a_result(run: str, folder: str) -> None:
    """Child of the Ctrl-C test: 3 workers on ``first``, ``good``, ``slow``; the parent,
    busy after committing ``first``, holds ``good``'s result when it writes ``ready`` and
    waits for the test's SIGINT there (as a CLI would: one ``interrupted`` line, 130)."""
    from histocore.cli import errors
    from histofetch.pool import run_pooled
    from histofetch.stage import _Stage

    marks = Path(folder)
    calls = []

    def advance() -> None:
        calls.append(1)
        if len(calls) == 1:  # "first" committed
            (marks / "go").touch()
            result_back("good")
            (marks / "ready").touch()
            _wait_for(marks / "never", within_s=600)  # Ctrl-C comes here

    runner = _Stage(Manifest.load(Path(run)), "extracted", False)
    work = functools.partial(finish_then_hang, folder=folder)
    with errors():
        run_pooled(runner, work, jobs=3, threads=False, advance=advance)


def _futures() -> list[Future]:
    # type(), not isinstance(): that reads __class__, which some module proxies warn about
    return [obj for obj in gc.get_objects() if issubclass(type(obj), Future)]


def _wait_until(ready: Callable[[], bool], what: str, within_s: float = 120.0) -> None:
    deadline = time.monotonic() + within_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} never came")
        time.sleep(0.01)


def _wait_for(path: Path, within_s: float = 120.0) -> None:
    _wait_until(path.exists, str(path), within_s)
