"""Worker pools for per-record stages (``--jobs N``): workers compute, the parent commits.

A worker receives one record and its image rows, runs the stage's ``work`` on a manifest
of its own holding just those, and sends them back; the parent (:mod:`histofetch.stage`)
claims each record before it is sent and commits it when it comes back. Workers never
open the run store, so a run has one writer per process however many workers it uses.
:func:`run_records` is what the stages call: :func:`histofetch.stage.run_per_record` for one
job, a pool for more.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.process import BaseProcess
from pathlib import Path

from histocore.errors import DomainError
from histocore.manifest import Image, Manifest, Record
from histocore.progress import task
from histofetch.stage import UNFINISHED_KEY, StageSummary, _Stage, is_transient, run_per_record
from histofetch.thread_pool import CANCEL_GRACE_S, DaemonThreadPool

log = logging.getLogger(__name__)

#: Records in a row whose worker died while each was read alone, with no result back in
#: between, that stop the call: the cause is then this machine, not the records.
DEATHS_IN_A_ROW = 3

#: (record after the work, its images or None on failure, (reason, transient) or None)
Result = tuple[Record, list[Image] | None, tuple[str, bool] | None]


def run_records(
    manifest: Manifest,
    stage: str,
    work: Callable[[Manifest, Record], None],
    *,
    jobs: int = 1,
    threads: bool = False,
    retry_failed: bool = False,
    export: bool = True,
    guard_attempts: bool = False,
    cancel: Callable[[], None] | None = None,
) -> StageSummary:
    """:func:`run_per_record` with ``work(manifest, record)`` run by ``jobs`` workers.

    Each worker gets a copy of the record and its images in a manifest of their own and
    returns them; this process claims, merges and commits, one record per transaction, so
    the store has one writer per process. ``threads`` runs workers as threads (network-bound
    work: downloads from several hosts at once); otherwise as processes, and ``work`` must
    then be picklable (a module-level function or a ``functools.partial`` of one).
    ``guard_attempts``: see :mod:`histofetch.stage` (then only ``jobs`` records are claimed
    at a time, each on a worker, so a claim left behind names a record really being read).
    ``cancel``: what stops the threads' work at once (the network client's ``cancel``),
    called when the run is interrupted.
    """
    if jobs <= 1:
        return run_per_record(
            manifest,
            stage,
            lambda rec: work(manifest, rec),
            retry_failed=retry_failed,
            export=export,
            guard_attempts=guard_attempts,
        )
    runner = _Stage(manifest, stage, retry_failed, guard_attempts)
    with task(stage, len(runner.todo)) as shown:
        run_pooled(runner, work, jobs=jobs, threads=threads, advance=shown.advance, cancel=cancel)
    manifest.save() if export else manifest.commit()
    return runner.summary


def work_on_copy(
    work: Callable[[Manifest, Record], None], run_dir: Path, rec: Record, images: list[Image]
) -> Result:
    """Run ``work`` on one record in a manifest holding only it (in a worker)."""
    mini = Manifest(run_dir=run_dir)
    mini.records[rec.id] = rec
    for img in images:
        mini.images[img.id] = img
    try:
        work(mini, rec)
    except Exception as exc:  # the parent records it, like run_per_record does
        return rec, None, (str(exc) or type(exc).__name__, is_transient(exc))
    return rec, mini.images_of(rec.id), None


#: Per thread: the list the pool being fed from it records its workers in as they start.
_starting = threading.local()


class _Worker(SpawnProcess):
    """A pool's worker process (spawned: it starts clean, with no copy of the parent's SQLite
    connection or threads); as it starts it records itself in :func:`_recording`'s list of
    the starting thread (a pool starts its workers in the thread that submits to it)."""

    def start(self) -> None:
        workers = getattr(_starting, "workers", None)
        if workers is not None:
            workers.append(self)
        super().start()


class _Context(SpawnContext):
    Process = _Worker


@contextlib.contextmanager
def _recording(workers: list[BaseProcess]) -> Iterator[None]:
    """Worker processes started from this thread in this block are added to ``workers``:
    the pool's own, for :func:`_stop` to end, and no other child of this process (a pool
    another thread feeds, say)."""
    _starting.workers = workers
    try:
        yield
    finally:
        _starting.workers = None


def _executor(jobs: int, threads: bool) -> Executor:
    if threads:
        return DaemonThreadPool(jobs)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=_Context(), initializer=_ignore_ctrl_c)


def _ignore_ctrl_c() -> None:
    """Worker initializer: SIGINT is the parent's to answer (see :func:`_workers_deaf`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _workers_deaf(threads: bool) -> Iterator[None]:
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
def _second_ctrl_c_ignored() -> Iterator[None]:
    """Cleaning up after a Ctrl-C: another one pressed meanwhile must not cut it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _stop(pool: Executor, workers: list[BaseProcess]) -> None:
    """Give up the work not done yet and end the workers now (Ctrl-C, a dead worker): the
    processes the pool started (see :func:`_recording`). Threads are not ended here (see
    :func:`run_pooled`'s ``cancel``)."""
    pool.shutdown(wait=False, cancel_futures=True)
    if isinstance(pool, DaemonThreadPool):
        return
    workers = [p for p in workers if p.pid is not None]
    for proc in workers:
        proc.terminate()
    for proc in workers:
        proc.join(timeout=10)


class WorkerDied(DomainError):
    """A worker process died (killed, crashed, out of memory) with records in flight."""


def run_pooled(
    runner: _Stage,
    work: Callable[[Manifest, Record], None],
    *,
    jobs: int,
    threads: bool,
    advance: Callable[[], None],
    cancel: Callable[[], None] | None = None,
) -> None:
    """Feed the runner's records to ``jobs`` workers, at most ``2 * jobs`` in flight
    (``jobs`` when the runner guards attempts). However it ends (Ctrl-C, a dead worker), no
    claim of a record this call took and did not commit is left behind.

    A worker that dies (a decoder crash, the OOM killer) breaks the pool. The records whose
    results the pool had received are committed; a result still in the pipe is lost with
    the pool and its record is read again. When the runner guards attempts, each record
    still in flight counts one attempt killed before it finished, and the run goes on in a
    fresh pool that reads those records (suspects) one at a time first: the death of its
    worker is then that record's own, and its second death in this call (or the
    :data:`~histofetch.stage.MAX_UNFINISHED_ATTEMPTS`-th in all) fails it with reason
    ``unfinished attempts`` (listed in ``summary.killers``) while the others finish. That
    failure waits for a result back from another record (or the end of the call): when
    :data:`DEATHS_IN_A_ROW` different records in a row kill the worker reading each alone,
    one record no worker died on is read alone next. If it comes back, the deaths were the
    records' and they are failed; if its worker dies too, the cause is the machine (a native
    library that crashes here, less memory than one worker needs, a broken install), and
    :class:`WorkerDied` ends the call leaving them to the next run (their dead attempts
    counted, none failed). With no such record left, they are failed at the end. Without
    the guard, or when no record was on the dead worker, :class:`WorkerDied` ends the call
    too. Ended by Ctrl-C, it still
    commits the results the pool had received; then worker processes are ended, and worker
    threads are told to stop (``cancel``) and given :data:`CANCEL_GRACE_S` at most: what
    they had not returned is not committed."""
    manifest = runner.manifest
    feed = _Feed(runner, work, threads, advance)
    deaths: Counter[str] = Counter()  # attempts of this call that died with their worker
    try:
        _run_pools(runner, feed, deaths, jobs, threads, cancel)
        feed.confirm()  # the call ends: those whose readers died are failed
    finally:
        manifest.release(feed.deferred)  # left to the next run (Ctrl-C, WorkerDied)


def _run_pools(
    runner: _Stage,
    feed: _Feed,
    deaths: Counter[str],
    jobs: int,
    threads: bool,
    cancel: Callable[[], None] | None,
) -> None:
    """:func:`run_pooled`'s loop: a pool, and a fresh one after each death it goes on from."""
    manifest = runner.manifest
    while True:
        workers: list[BaseProcess] = []
        pool = _executor(jobs, threads)  # workers start at submit (deaf to Ctrl-C there)
        probe: list[str] = []
        try:
            suspects, others = _suspects_first(runner, feed.left())
            if len(feed.alone_deaths) >= DEATHS_IN_A_ROW:  # the machine, or those records?
                probe = others[:1]  # a record never killed, read alone first, tells
            with _recording(workers):
                feed.run(pool, probe, 1)  # back: the deaths were the records' (confirm)
                feed.run(pool, suspects, 1)
                feed.run(pool, others[len(probe) :], jobs if runner.guard_attempts else 2 * jobs)
        except BaseException as exc:  # Ctrl-C, a dead worker
            dead = isinstance(exc, BrokenProcessPool)
            go_on = dead and runner.guard_attempts and bool(feed.sent)
            probe_died = go_on and bool(probe) and feed.sent == set(probe)
            with _second_ctrl_c_ignored():
                try:
                    _stop(pool, workers)
                    if dead or isinstance(exc, KeyboardInterrupt):
                        feed.adopt_finished()  # results the pool had received are kept
                    if isinstance(pool, DaemonThreadPool):  # downloads running: stop them now
                        if cancel is not None:
                            cancel()
                        pool.join(CANCEL_GRACE_S)
                    if go_on:
                        _count_deaths(feed, deaths)
                finally:
                    manifest.release(feed.held)
            if probe_died:
                raise WorkerDied(_machine_kills(runner, feed.alone_deaths)) from None
            if go_on:
                feed.restart()
                continue
            if dead:
                raise WorkerDied(_died(runner, sorted(feed.sent))) from None
            raise
        pool.shutdown()
        return


def _count_deaths(feed: _Feed, deaths: Counter[str]) -> None:
    """The records on a worker when one died: one more attempt each that never ended. A
    record read alone that this makes too many is failed only once another record's result
    comes back (:meth:`_Feed.confirm`): until then it keeps its claim, counted."""
    runner = feed.runner
    sent = sorted(feed.sent)
    records = runner.manifest.records
    deaths.update(sent)
    alone = len(sent) == 1
    if alone and sent[0] not in feed.alone_deaths:  # each record once
        feed.alone_deaths += sent
    again = [
        rid
        for rid in sent
        if not runner.too_many_deaths(
            int(records[rid].extra.get(UNFINISHED_KEY, 0)) + 1, deaths[rid]
        )
    ]
    log.warning(
        "%s: %s: a worker process died (crashed, out of memory or killed) while reading %s%s",
        runner.manifest.run_dir, runner.stage, _named(sent),
        f"; reading {_named(again)} again, one at a time" if again else "",
    )  # fmt: skip
    for rid in sent:
        rec = records[rid]
        n = int(rec.extra.get(UNFINISHED_KEY, 0)) + 1
        if alone and runner.too_many_deaths(n, deaths[rid]):
            rec.extra[UNFINISHED_KEY] = n
            runner.manifest.commit_record(rid, release=False)
            feed.held.discard(rid)
            feed.deferred.append(rid)
        elif runner._after_death(rec, deaths[rid]):
            continue  # read again
        feed.finished.add(rid)  # failed, or to be failed: not read again
        feed.advance()


def _named(rids: list[str]) -> str:
    return ", ".join(rids[:5]) + (f" and {len(rids) - 5} more" if len(rids) > 5 else "")


def _died(runner: _Stage, sent: list[str]) -> str:
    named = _named(sent)
    then = (
        "they are read one at a time by the next run, and a record whose reader dies twice "
        "is skipped until --retry-failed"
        if runner.guard_attempts
        else "the next run tries them again"
    )
    return (
        f"{runner.manifest.run_dir}: {runner.stage}: a worker process died (killed, crashed "
        f"or out of memory) while reading {named or 'nothing'}; run the command again: {then}"
    )


def _machine_kills(runner: _Stage, rids: list[str]) -> str:
    return (
        f"{runner.manifest.run_dir}: {runner.stage}: a worker process died (killed, crashed or "
        f"out of memory) reading each of {_named(rids)}, each read alone, with no record read "
        "in between: the cause is this machine or installation (a native library that "
        "crashes here, less memory than one worker needs), not the records; none was failed, "
        "the next run reads them again"
    )


def _suspects_first(runner: _Stage, todo: list[str]) -> tuple[list[str], list[str]]:
    """Of ``todo``, the records an earlier attempt of which was killed unfinished (guarded
    stages), and the others."""
    if not runner.guard_attempts:
        return [], list(todo)
    died = {rid for rid, st in runner.manifest._db().abandoned_claims() if st == runner.stage}
    records = runner.manifest.records
    suspect = [rid in died or bool(records[rid].extra.get(UNFINISHED_KEY)) for rid in todo]
    return (
        [rid for rid, s in zip(todo, suspect, strict=True) if s],
        [rid for rid, s in zip(todo, suspect, strict=True) if not s],
    )


class _Feed:
    """Claims records, sends them to the pool, commits what comes back."""

    def __init__(
        self,
        runner: _Stage,
        work: Callable[[Manifest, Record], None],
        threads: bool,
        advance: Callable[[], None],
    ) -> None:
        self.runner, self.work, self.threads, self.advance = runner, work, threads, advance
        self.held: set[str] = set()  # claimed (or being claimed) and not committed
        self.sent: set[str] = set()  # of those, the ones on a worker
        self.flying: dict[Future[Result], str] = {}  # what the workers have, by record
        self.finished: set[str] = set()  # committed, failed or left: not taken again
        #: read alone, their worker died once too often: failed at the next result back
        self.deferred: list[str] = []
        #: records whose worker died while each was read alone, since the last result back
        self.alone_deaths: list[str] = []

    def left(self) -> list[str]:
        """The runner's records not finished yet, in order."""
        return [rid for rid in self.runner.todo if rid not in self.finished]

    def restart(self) -> None:
        """Forget a broken pool's work (its claims released, its deaths counted)."""
        self.held, self.sent, self.flying = set(), set(), {}

    def run(self, pool: Executor, rids: list[str], limit: int) -> None:
        """Work through ``rids`` with at most ``limit`` of them in flight."""
        manifest = self.runner.manifest
        pending = iter(rids)
        flying = self.flying
        while True:
            while len(flying) < limit:
                rid = next(pending, None)
                if rid is None:
                    break
                self.held.add(rid)
                rec = self.runner.take(rid)
                if rec is None:
                    self.held.discard(rid)
                    self.finished.add(rid)
                    self.advance()
                    continue
                images = manifest.images_of(rid)
                if self.threads:  # a thread would otherwise change the parent's objects
                    rec, images = copy.deepcopy(rec), copy.deepcopy(images)
                with _workers_deaf(self.threads):  # a submit may start a worker
                    future = pool.submit(work_on_copy, self.work, manifest.run_dir, rec, images)
                flying[future] = rid
                future.add_done_callback(lambda f, rid=rid: _log_outcome(rid, f))
                self.sent.add(rid)
            if not flying:
                return
            wait(flying, return_when=FIRST_COMPLETED)
            error = self.adopt_finished()
            if error is not None:  # a dead worker (the others' results are kept) or a bug
                raise error

    def adopt_finished(self) -> BaseException | None:
        """Commit every record whose result is back; the first error of those that ended
        without one (they stay in flight: a dead worker's records are suspects)."""
        error = None
        for future in [f for f in self.flying if f.done() and not f.cancelled()]:
            failed = future.exception()
            if failed is not None:
                error = error or failed
                continue
            rid = self.flying.pop(future)
            self.confirm()  # a worker lived through a record: the deaths were the records'
            _adopt(self.runner, rid, future.result())
            self.held.discard(rid)
            self.sent.discard(rid)
            self.finished.add(rid)
            self.advance()
        return error

    def confirm(self) -> None:
        """Fail the records whose reader died too often (their claims held until now)."""
        records = self.runner.manifest.records
        while self.deferred:
            self.runner.fail_killer(records[self.deferred.pop(0)])
        self.alone_deaths = []


def _adopt(runner: _Stage, rid: str, result: Result) -> None:
    """Take a worker's record (and images, on success) into the manifest and commit it."""
    rec, images, failure = result
    manifest = runner.manifest
    manifest.records[rid] = rec
    if images is not None:
        manifest.drop_images_of(rid)
        for img in images:
            manifest.add_image(img)
    runner.finish(rec, failure)


def _log_outcome(rid: str, future: Future[Result]) -> None:
    """Done-callback of a record's future (run on the executor's thread as the pool learns
    the outcome): one DEBUG line, ``result`` when its result is back, ``broken`` when its
    worker died before sending it, ``cancelled`` or ``error`` otherwise. The record id and
    outcome are also the log record's ``record_id`` and ``outcome`` attributes."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    if future.cancelled():
        outcome = "cancelled"
    else:
        exc = future.exception()
        outcome = (
            "result" if exc is None else "broken" if isinstance(exc, BrokenProcessPool) else "error"
        )
    log.debug("%s: %s from the pool", rid, outcome, extra={"record_id": rid, "outcome": outcome})
