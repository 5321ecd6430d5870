"""The worker processes of a pool (``--jobs N``): started, told apart, ended, deaf to Ctrl-C,
and what each runs (:func:`work_on_copy`).

Workers are spawned (they start clean: no copy of the parent's SQLite connection or
threads); each pool records the processes it starts, so it ends its own and no other child
of this process; a Ctrl-C is the parent's to answer, never the workers'.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.process import BaseProcess
from multiprocessing.queues import SimpleQueue
from pathlib import Path
from typing import Any

from histocore.manifest import Image, Manifest, Record
from histofetch.stage import is_transient
from histofetch.thread_pool import DaemonThreadPool

#: (record after the work, its images or None on failure, (reason, transient) or None)
Result = tuple[Record, list[Image] | None, tuple[str, bool] | None]
#: What workers say as they start (or end) a record's work:
#: ``(record id, pid, time.monotonic(), ended)``.
Starts = SimpleQueue[Any]

#: Per thread: the list the pool being fed from it records its workers in as they start.
_starting = threading.local()


class _Worker(SpawnProcess):
    """A pool's worker process (spawned: it starts clean, with no copy of the parent's SQLite
    connection or threads); as it starts it records itself in :func:`recording`'s list of
    the starting thread (a pool starts its workers in the thread that submits to it)."""

    def start(self) -> None:
        workers = getattr(_starting, "workers", None)
        if workers is not None:
            workers.append(self)
        super().start()


class _Context(SpawnContext):
    Process = _Worker


@contextlib.contextmanager
def recording(workers: list[BaseProcess]) -> Iterator[None]:
    """Worker processes started from this thread in this block are added to ``workers``:
    the pool's own, for :func:`stop_workers` to end, and no other child of this process (a pool
    another thread feeds, say)."""
    _starting.workers = workers
    try:
        yield
    finally:
        _starting.workers = None


#: In a worker process: where it says which record it starts, when (see :func:`start_queue`).
_starts: Starts | None = None


def start_queue() -> Starts:
    """A queue on which a pool's workers say ``(record id, pid, time.monotonic(), ended)``
    as they start and end each record's work (the parent times records from there: worker
    start-up, and a result on its way back, are not counted). ``time.monotonic`` is the
    system's monotonic clock, the same in every process."""
    return _Context().SimpleQueue()


def executor(jobs: int, threads: bool, starts: Starts | None = None) -> Executor:
    """A pool of ``jobs`` workers: daemon threads (``threads``) or spawned processes, which
    tell ``starts`` (:func:`start_queue`) when they start a record, if given."""
    if threads:
        return DaemonThreadPool(jobs)
    return ProcessPoolExecutor(
        max_workers=jobs, mp_context=_Context(), initializer=_init_worker, initargs=(starts,)
    )


def _init_worker(starts: Starts | None) -> None:
    """Worker initializer: SIGINT is the parent's to answer (see :func:`workers_deaf`); keep
    the queue to say on which record's work starts."""
    global _starts
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _starts = starts


def say_started(record_id: str, ended: bool = False) -> None:
    """In a worker: tell the parent (if it listens) that ``record_id``'s work starts now (or,
    ``ended``, that it ended: its result is on its way)."""
    if _starts is not None:
        _starts.put((record_id, os.getpid(), time.monotonic(), ended))


@contextlib.contextmanager
def workers_deaf(threads: bool) -> Iterator[None]:
    """Worker processes started in this block never see SIGINT. A terminal sends Ctrl-C to
    the whole foreground group; it is this process's to answer (it ends the workers), not
    theirs to print tracebacks for. They start with SIGINT blocked (a child inherits the
    signal mask of the thread that starts it) and their initializer then ignores it, so no
    moment of their start-up (imports included) takes it. A Ctrl-C pressed meanwhile is
    held back and raised here when the block ends, never half-way through starting one
    (a worker whose parent stopped before sending it its work would print a traceback)."""
    if threads:
        yield
        return
    pressed: list[int] = []
    handler = None
    if threading.current_thread() is threading.main_thread():
        handler = signal.signal(signal.SIGINT, lambda sig, _frame: pressed.append(sig))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        if pressed:
            signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def second_ctrl_c_ignored() -> Iterator[None]:
    """Cleaning up after a Ctrl-C: another one pressed meanwhile must not cut it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def stop_workers(pool: Executor, workers: list[BaseProcess]) -> None:
    """Give up the work not done yet and end the workers now (Ctrl-C, a dead worker): the
    processes the pool started (see :func:`recording`). Threads are not ended here (see
    :func:`histofetch.pool.run_pooled`'s ``cancel``)."""
    pool.shutdown(wait=False, cancel_futures=True)
    if isinstance(pool, DaemonThreadPool):
        return
    workers = [p for p in workers if p.pid is not None]
    for proc in workers:
        proc.terminate()
    for proc in workers:
        proc.join(timeout=10)


def work_on_copy(
    work: Callable[[Manifest, Record], None], run_dir: Path, rec: Record, images: list[Image]
) -> Result:
    """Run ``work`` on one record in a manifest holding only it (in a worker)."""
    say_started(rec.id)
    mini = Manifest(run_dir=run_dir)
    mini.records[rec.id] = rec
    for img in images:
        mini.images[img.id] = img
    try:
        work(mini, rec)
    except Exception as exc:  # the parent records it, like run_per_record does
        return rec, None, (str(exc) or type(exc).__name__, is_transient(exc))
    finally:
        say_started(rec.id, ended=True)  # the time limit stops here
    return rec, mini.images_of(rec.id), None
