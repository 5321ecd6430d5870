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
import multiprocessing
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from pathlib import Path

from histocore.manifest import Image, Manifest, Record
from histocore.progress import task
from histofetch.stage import StageSummary, _Stage, is_transient, run_per_record

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
) -> StageSummary:
    """:func:`run_per_record` with ``work(manifest, record)`` run by ``jobs`` workers.

    Each worker gets a copy of the record and its images in a manifest of their own and
    returns them; this process claims, merges and commits, one record per transaction, so
    the store has one writer per process. ``threads`` runs workers as threads (network-bound
    work: downloads from several hosts at once); otherwise as processes, and ``work`` must
    then be picklable (a module-level function or a ``functools.partial`` of one).
    ``guard_attempts``: see :mod:`histofetch.stage` (then only ``jobs`` records are claimed
    at a time, each on a worker, so a claim left behind names a record really being read).
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
        run_pooled(runner, work, jobs=jobs, threads=threads, advance=shown.advance)
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


def _executor(jobs: int, threads: bool) -> Executor:
    if threads:
        return ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="histofetch")
    # spawn: workers start clean (no copy of the parent's SQLite connection or threads)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def run_pooled(
    runner: _Stage,
    work: Callable[[Manifest, Record], None],
    *,
    jobs: int,
    threads: bool,
    advance: Callable[[], None],
) -> None:
    """Feed the runner's records to ``jobs`` workers, at most ``2 * jobs`` in flight
    (``jobs`` when the runner guards attempts)."""
    manifest = runner.manifest
    limit = jobs if runner.guard_attempts else 2 * jobs
    pending = iter(runner.todo)
    flying: dict[Future[Result], str] = {}
    with _executor(jobs, threads) as pool:
        try:
            while True:
                while len(flying) < limit:
                    rid = next(pending, None)
                    if rid is None:
                        break
                    rec = runner.take(rid)
                    if rec is None:
                        advance()
                        continue
                    images = manifest.images_of(rid)
                    if threads:  # a thread would otherwise change the parent's objects
                        rec, images = copy.deepcopy(rec), copy.deepcopy(images)
                    future = pool.submit(work_on_copy, work, manifest.run_dir, rec, images)
                    flying[future] = rid
                if not flying:
                    return
                finished, _ = wait(flying, return_when=FIRST_COMPLETED)
                for future in finished:
                    rid = flying.pop(future)
                    _adopt(runner, rid, future.result())
                    advance()
        except BaseException:  # Ctrl-C, a dead worker: records in flight are redone next run
            manifest.release(flying.values())
            for future in flying:
                future.cancel()
            raise


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
