"""Worker pools for per-record stages (``--jobs N``): workers compute, the parent commits.

A worker receives one record and its image rows, runs the stage's ``work`` on a manifest
of its own holding just those, and sends them back; the parent (:mod:`histofetch.stage`)
claims each record before it is sent and commits it when it comes back. Workers never
open the run store, so a run has one writer per process however many workers it uses.
:func:`run_records` is what the stages call: :func:`histofetch.stage.run_per_record` for one
job, a pool for more.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.process import BaseProcess

from histocore.manifest import Manifest, Record
from histocore.progress import task
from histofetch.canary import Canary, bare_canary, canary_lives
from histofetch.record_time import RecordClock, count_timeouts, death_kinds, fail_slow
from histofetch.stage import StageSummary, _Stage, run_per_record
from histofetch.thread_pool import CANCEL_GRACE_S, DaemonThreadPool
from histofetch.worker_deaths import (
    DEATHS_IN_A_ROW,
    WorkerDied,
    count_deaths,
    died,
    machine_kills,
    report_deaths,
    suspects_first,
)
from histofetch.worker_processes import (
    Result,
    executor,
    recording,
    second_ctrl_c_ignored,
    start_queue,
    stop_workers,
    work_on_copy,
    workers_deaf,
)

log = logging.getLogger(__name__)


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
    canary: Canary = bare_canary,
    record_timeout: float | None = None,
    isolate: bool = False,
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
    called when the run is interrupted. ``canary``: what builds the stage's known-good
    input that tells a broken machine from records that kill their reader
    (:mod:`histofetch.canary`). ``record_timeout``: seconds one record's work may run in a
    worker process before its worker is killed (:mod:`histofetch.record_time`); None, or
    threads, or one job (the work then runs in this process): no limit. ``isolate``: one
    job runs in one worker process too, so ``record_timeout`` applies to it.
    """
    if jobs <= 1 and (threads or not isolate):  # one job, not isolated in a worker process
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
        run_pooled(runner, work, jobs=max(1, jobs), threads=threads, advance=shown.advance,
                   cancel=cancel, canary=canary, record_timeout=record_timeout)  # fmt: skip
    manifest.save() if export else manifest.commit()
    return runner.summary


def run_pooled(
    runner: _Stage,
    work: Callable[[Manifest, Record], None],
    *,
    jobs: int,
    threads: bool,
    advance: Callable[[], None],
    cancel: Callable[[], None] | None = None,
    canary: Canary = bare_canary,
    record_timeout: float | None = None,
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
    a fresh worker runs ``work`` on the stage's ``canary``, a known-good input that is none
    of the run's records (:mod:`histofetch.canary`). If it comes back, the deaths were the
    records': those that died too often are failed and the run goes on (the others are read
    again, alone); if its worker dies too (or runs past ``record_timeout``), the cause is
    the machine or its installation, and :class:`WorkerDied` ends the call leaving them to
    the next run (their dead attempts counted, none failed). A record whose work runs past
    ``record_timeout`` (processes only) has its worker killed: it counts as that record's
    own death (the others in flight are read again, nothing counted), and its second one
    fails it with reason ``timed out`` (:mod:`histofetch.record_time`). Without the guard,
    or when no record was on the dead worker, :class:`WorkerDied` ends the call too. The
    first death since a result came back is a warning at once, the ones after it one
    warning when a result comes back (see :mod:`histofetch.worker_deaths`). Ended by
    Ctrl-C, it still commits the results the pool had received; then worker processes are
    ended, and worker threads are told to stop (``cancel``) and given
    :data:`CANCEL_GRACE_S` at most: what they had not returned is not committed."""
    manifest = runner.manifest
    feed = _Feed(runner, work, threads, advance, None if threads else record_timeout)
    deaths = feed.deaths
    try:
        _run_pools(runner, feed, deaths, jobs, threads, cancel, canary)
        feed.confirm()  # the call ends: those whose readers died are failed
    finally:
        manifest.release(feed.deferred)  # left to the next run (Ctrl-C, WorkerDied)
        report_deaths(feed)  # deaths not said yet (none after the machine's WorkerDied)


def _run_pools(
    runner: _Stage,
    feed: _Feed,
    deaths: Counter[str],
    jobs: int,
    threads: bool,
    cancel: Callable[[], None] | None,
    canary: Canary,
) -> None:
    """:func:`run_pooled`'s loop: a pool, and a fresh one after each death it goes on from."""
    manifest = runner.manifest
    while True:
        if len(feed.alone_deaths) >= DEATHS_IN_A_ROW:  # the machine, or those records?
            if not canary_lives(feed.work, canary, feed.limit):  # a known-good input died too
                raise WorkerDied(machine_kills(feed))
            feed.confirm()  # the worker lived: the deaths were the records'
        workers: list[BaseProcess] = []
        feed.clock = RecordClock(feed.limit, None if feed.limit is None else start_queue())
        # workers start at submit (deaf to Ctrl-C there)
        pool = executor(jobs, threads, feed.clock.starts)
        try:
            suspects, others = suspects_first(runner, feed.left())
            with recording(workers):
                feed.run(pool, suspects, 1)
                feed.run(pool, others, jobs if runner.guard_attempts else 2 * jobs)
        except BaseException as exc:  # Ctrl-C, a dead worker
            dead = isinstance(exc, BrokenProcessPool)
            go_on = dead and runner.guard_attempts and bool(feed.sent)
            with second_ctrl_c_ignored():
                try:
                    stop_workers(pool, workers)
                    if dead or isinstance(exc, KeyboardInterrupt):
                        feed.adopt_finished()  # results the pool had received are kept
                    if isinstance(pool, DaemonThreadPool):  # downloads running: stop them now
                        if cancel is not None:
                            cancel()
                        pool.join(CANCEL_GRACE_S)
                    if go_on:  # killed for time: the slow records only, else all on it
                        (count_timeouts if feed.clock.overdue else count_deaths)(feed, deaths)
                finally:
                    manifest.release(feed.held)
            if go_on:
                feed.restart()
                continue
            if dead:
                raise WorkerDied(died(runner, sorted(feed.sent))) from None
            raise
        pool.shutdown()
        return


class _Feed:
    """Claims records, sends them to the pool, commits what comes back."""

    def __init__(
        self,
        runner: _Stage,
        work: Callable[[Manifest, Record], None],
        threads: bool,
        advance: Callable[[], None],
        limit: float | None = None,
    ) -> None:
        self.runner, self.work, self.threads, self.advance = runner, work, threads, advance
        self.limit = limit  # seconds a record's work may run (record_time)
        self.clock = RecordClock(None, None)  # the current pool's
        self.held: set[str] = set()  # claimed (or being claimed) and not committed
        self.sent: set[str] = set()  # of those, the ones on a worker
        self.flying: dict[Future[Result], str] = {}  # what the workers have, by record
        self.finished: set[str] = set()  # committed, failed or left: not taken again
        #: read alone, their worker died once too often: failed at the next result back
        self.deferred: list[str] = []
        #: records whose worker died while each was read alone, since the last result back
        self.alone_deaths: list[str] = []
        #: the records on each worker that died since the last result back, in order
        self.deaths_in_a_row: list[list[str]] = []
        #: attempts of this call that died with their worker (time-outs included), by record
        self.deaths: Counter[str] = Counter()
        #: of those, the attempts killed for running past the limit
        self.timeouts: Counter[str] = Counter()

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
                with workers_deaf(self.threads):  # a submit may start a worker
                    future = pool.submit(work_on_copy, self.work, manifest.run_dir, rec, images)
                flying[future] = rid
                future.add_done_callback(lambda f, rid=rid: _log_outcome(rid, f))
                self.sent.add(rid)
            if not flying:
                return
            wait(flying, self.clock.wait_s(self._running()), FIRST_COMPLETED)
            self.clock.stop_overdue(self._running())  # the pool then sees a dead worker
            error = self.adopt_finished()
            if error is not None:  # a dead worker (the others' results are kept) or a bug
                raise error

    def _running(self) -> list[str]:
        """The records on the workers (or waiting for one), their result not back."""
        return [rid for future, rid in self.flying.items() if not future.done()]

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
            self.clock.forget(rid)
            self.confirm()  # a worker lived through a record: the deaths were the records'
            _adopt(self.runner, rid, future.result())
            self.held.discard(rid)
            self.sent.discard(rid)
            self.finished.add(rid)
            self.advance()
        return error

    def confirm(self) -> None:
        """Fail the records whose reader died too often (their claims held until now):
        ``timed out`` when every attempt of this call that died was stopped for time, else
        ``unfinished attempts`` (a killer), naming the crashes and time-outs when mixed."""
        report_deaths(self)  # the deaths not said yet, before the failures they lead to
        records = self.runner.manifest.records
        while self.deferred:
            rid = self.deferred.pop(0)
            slow, crashes = self.timeouts[rid], self.deaths[rid] - self.timeouts[rid]
            if slow and not crashes:
                fail_slow(self.runner, records[rid], self.limit or 0.0, slow)
            else:
                self.runner.fail_killer(records[rid], death_kinds(crashes, slow, self.limit))
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
