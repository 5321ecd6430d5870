"""The worker processes of a pool (``--jobs N``): started, told apart, ended, deaf to Ctrl-C,
and what each runs (:func:`work_on_copy`).

Workers are spawned (they start clean: no copy of the parent's SQLite connection or
threads); each pool records the processes it starts, so it ends its own and no other child
of this process; a Ctrl-C is the parent's to answer, never the workers'. What workers log
is sent to the parent and shown by its loggers, at their levels, as if logged there
(``warning: …`` lines, ``-v``'s debug lines, above the progress bars). A notice a process
logs once (a cached check of this machine: no Tesseract) is marked :data:`ONCE`; every
worker logs it, and the parent shows it once, as one process would.
"""

from __future__ import annotations

import contextlib
import logging
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
from histofetch.stage import failure_reason, is_transient
from histofetch.thread_pool import DaemonThreadPool

#: (record after the work, its images or None on failure, (reason, transient) or None)
Result = tuple[Record, list[Image] | None, tuple[str, bool] | None]
#: What workers say as they start (or end) a record's work:
#: ``(record id, pid, time.monotonic(), ended)``.
Starts = SimpleQueue[Any]

#: The ``extra`` key (``extra={ONCE: True}``) of a notice each process logs once, whatever
#: it works on (what a cached check of this machine found): the parent shows the first copy
#: its workers send and drops the same notice (logger, level, text) from any other worker.
ONCE = "once_per_process"

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
    return _ProcessPool(jobs, starts)


class _ProcessPool(ProcessPoolExecutor):
    """Spawned workers whose log records this process shows (:class:`_LogRelay`)."""

    def __init__(self, jobs: int, starts: Starts | None) -> None:
        self._logs = _LogRelay()
        levels = _log_levels()
        super().__init__(max_workers=jobs, mp_context=_Context(), initializer=_init_worker,
                         initargs=(starts, self._logs.queue, levels))  # fmt: skip

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        self._logs.stop()  # after the workers' last records (wait) or before they are ended


#: How often the relay looks for log records from the workers (seconds).
_RELAY_POLL_S = 0.05


class _LogRelay:
    """In the parent: a thread that hands each log record the pool's workers send to this
    process's logger of the same name, which shows it as one of its own (same format, same
    levels, above the progress bars). A worker writes each record before it sends its
    result back, so when the pool is shut down every record of the work done is shown."""

    def __init__(self) -> None:
        self.queue: SimpleQueue[logging.LogRecord] = _Context().SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._show, name="worker-logs", daemon=True)
        self._thread.start()

    def _show(self) -> None:
        while True:
            try:
                if self.queue.empty():
                    if self._stop.is_set():
                        return  # stopped and nothing left
                    self._stop.wait(_RELAY_POLL_S)
                    continue
                record = self.queue.get()
            except (EOFError, OSError):  # the pipe is gone: nothing more will come
                return
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno) and _first_time(record):
                logger.handle(record)

    def stop(self) -> None:
        """Show what the workers sent until now, then end the thread. A record a killed
        worker left half-written could block the thread: it is a daemon, not waited for."""
        self._stop.set()
        self._thread.join(timeout=2.0)


#: The :data:`ONCE` notices shown in this process: (logger, level, text).
_shown_once: set[tuple[str, int, str]] = set()
_shown_once_lock = threading.Lock()  # pools fed from different threads have a relay each


def _first_time(record: logging.LogRecord) -> bool:
    """False for a :data:`ONCE` notice this process has shown already (another worker's
    copy, or one from an earlier pool of this process: workers a dead one left, the next
    stage); True for every other record, however often it repeats."""
    if not getattr(record, ONCE, False):
        return True
    key = (record.name, record.levelno, record.getMessage())
    with _shown_once_lock:
        if key in _shown_once:
            return False
        _shown_once.add(key)
        return True


def _log_levels() -> dict[str, int]:
    """The levels set on this process's loggers (the root's under ``""``): the workers log
    at the same ones, so they send exactly the records this process would show."""
    levels = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


class _ToParent(logging.Handler):
    """In a worker: sends each log record to the parent (:class:`_LogRelay`), its message
    formatted here (arguments and a traceback need not be picklable) and any extra
    attribute kept if it is a plain value."""

    def __init__(self, queue: SimpleQueue[logging.LogRecord]) -> None:
        super().__init__()
        self.queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)  # the message, with its traceback if any
            plain = (str, int, float, bool, type(None))
            attrs = {k: v for k, v in vars(record).items() if isinstance(v, plain)}
            attrs.update(msg=text, message=text, args=None, exc_text=None, stack_info=None)
            self.queue.put(logging.makeLogRecord(attrs))
        except Exception:
            self.handleError(record)


def _init_worker(
    starts: Starts | None, logs: SimpleQueue[logging.LogRecord], levels: dict[str, int]
) -> None:
    """Worker initializer: SIGINT is the parent's to answer (see :func:`workers_deaf`); keep
    the queue to say on which record's work starts; log as the parent does, through it."""
    global _starts
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _starts = starts
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().addHandler(_ToParent(logs))


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
        return rec, None, (failure_reason(exc), is_transient(exc))
    finally:
        say_started(rec.id, ended=True)  # the time limit stops here
    return rec, mini.images_of(rec.id), None
