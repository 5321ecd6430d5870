"""Worker pools for per-record stages (``--jobs N``): workers compute, the parent commits.

A worker receives one record and its image rows, runs the stage's ``work`` on a manifest
of its own holding just those, and sends them back; the parent (:mod:`histofetch.stage`)
claims each record before it is sent and commits it when it comes back. Workers never
open the run store, so a run has one writer per process however many workers it uses.
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
from typing import TYPE_CHECKING

from histocore.manifest import Image, Manifest, Record

if TYPE_CHECKING:
    from histofetch.stage import _Stage

#: (record after the work, its images or None on failure, (reason, transient) or None)
Result = tuple[Record, list[Image] | None, tuple[str, bool] | None]


def work_on_copy(
    work: Callable[[Manifest, Record], None], run_dir: Path, rec: Record, images: list[Image]
) -> Result:
    """Run ``work`` on one record in a manifest holding only it (in a worker)."""
    from histofetch.stage import is_transient

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
    """Feed the runner's records to ``jobs`` workers, at most ``2 * jobs`` in flight."""
    manifest = runner.manifest
    pending = iter(runner.todo)
    flying: dict[Future[Result], str] = {}
    with _executor(jobs, threads) as pool:
        try:
            while True:
                while len(flying) < 2 * jobs:
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
