"""Work functions for pool tests (module-level, so spawned worker processes can import them)
and the child set-up of the Ctrl-C tests."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from histocore.manifest import Manifest, Record


def downloaded_run(run: Path, ids: list[str]) -> Path:
    """A run folder holding records ``ids``, downloaded and nothing more (store closed)."""
    with Manifest.load(run, create=True) as m:
        for rid in ids:
            m.add_record(Record(id=rid, stage="downloaded"))
        m.save()
    return run


def die_reading(manifest: Manifest, rec: Record, *, victim: str) -> None:
    """Kill the worker process reading ``victim`` (what a PDF that crashes MuPDF or eats all
    memory does to its reader: SIGKILL, no exception, no cleanup); others take a moment."""
    if rec.id == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)


def die_reading_each(manifest: Manifest, rec: Record, *, victims: tuple[str, ...]) -> None:
    """:func:`die_reading` for several records (a run with a few crashing PDFs)."""
    if rec.id in victims:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)


def crash_reading_any(manifest: Manifest, rec: Record) -> None:
    """Crash the worker on every record (a native library that segfaults on this machine,
    whatever it reads): exit 139 at once, no exception, no cleanup."""
    os._exit(139)


def hang_reading(manifest: Manifest, rec: Record, *, victim: str) -> None:
    """Never end on ``victim`` (a PDF that makes MuPDF loop: no crash, no exception); the
    others take a moment."""
    time.sleep(3600 if rec.id == victim else 0.2)


def crash_then_hang(
    manifest: Manifest, rec: Record, *, folder: str, victim: str, first: str
) -> None:
    """``victim``'s first attempt does ``first`` (``crash``: SIGKILL its worker, ``hang``:
    never end), its next ones the other; the others take a moment."""
    if rec.id != victim:
        time.sleep(0.2)
        return
    mark = Path(folder) / "seen"
    now = "hang" if first == "hang" else "crash"
    if mark.exists():
        now = "crash" if now == "hang" else "hang"
    mark.write_text(now)
    if now == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(3600)


def hang_reading_any(manifest: Manifest, rec: Record) -> None:
    """Never end, whatever the record (a machine where the work cannot finish)."""
    time.sleep(3600)


def read_fine(manifest: Manifest, rec: Record) -> None:
    """Read any record without trouble (the same run on a healthy machine)."""


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


class _PoolLog(logging.Handler):
    """What ``histofetch.pool`` says of each record's future as it ends (its DEBUG line
    per outcome: ``result``, ``broken``, ...), kept for :func:`result_back` and
    :func:`pool_broken`. Lines above DEBUG go on to the parent loggers as usual."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logger
        self.seen: list[tuple[str, str]] = []  # (record id, outcome), in order
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        outcome = getattr(record, "outcome", None)
        if outcome is None:  # not an outcome line: where it would have gone
            if record.levelno > logging.DEBUG and self.logger.parent is not None:
                self.logger.parent.handle(record)
            return
        with self.changed:
            self.seen.append((getattr(record, "record_id", ""), outcome))
            self.changed.notify_all()

    def wait(self, ready: Callable[[list[tuple[str, str]]], bool], what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: ready(self.seen), timeout=120):
                raise TimeoutError(f"{what} never came (the pool said {self.seen})")


_watching: list[_PoolLog] = []


@contextlib.contextmanager
def watching_pool() -> Iterator[None]:
    """Within the block, :func:`result_back` and :func:`pool_broken` can wait on the pool
    of this process: its outcome lines are seen here (and not shown)."""
    logger = logging.getLogger("histofetch.pool")
    level, propagate = logger.level, logger.propagate
    handler = _PoolLog(logger)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the handler passes on what is not an outcome line
    _watching.append(handler)
    try:
        yield
    finally:
        _watching.remove(handler)
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _watch() -> _PoolLog:
    if not _watching:
        raise RuntimeError("wait on the pool inside watching_pool(), started before the event")
    return _watching[-1]


def result_back(rid: str) -> None:
    """Wait until the pool in this process has received ``rid``'s result (its future is
    done), whoever is slow: the marker a worker writes comes before its result is sent."""
    _watch().wait(lambda seen: (rid, "result") in seen, f"{rid}'s result")


def pool_broken() -> None:
    """Wait until the pool in this process has seen a worker die (a future broken)."""
    _watch().wait(lambda seen: any(o == "broken" for _, o in seen), "a broken pool")


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
            with watching_pool():
                (marks / "go").touch()
                result_back("good")
            (marks / "ready").touch()
            _wait_for(marks / "never", within_s=600)  # Ctrl-C comes here

    runner = _Stage(Manifest.load(Path(run)), "extracted", False)
    work = functools.partial(finish_then_hang, folder=folder)
    with errors():
        run_pooled(runner, work, jobs=3, threads=False, advance=advance)


def _wait_until(ready: Callable[[], bool], what: str, within_s: float = 120.0) -> None:
    deadline = time.monotonic() + within_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} never came")
        time.sleep(0.01)


def _wait_for(path: Path, within_s: float = 120.0) -> None:
    _wait_until(path.exists, str(path), within_s)
