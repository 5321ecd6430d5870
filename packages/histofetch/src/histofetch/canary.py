"""The pool's canary (``--jobs N``): is this machine killing workers, or are the records?

When records in a row kill the worker reading each alone (:mod:`histofetch.worker_deaths`),
a fresh worker runs the stage's own work on a tiny known-good input that does not come
from the run: a small PDF for extract (:func:`pdf_canary`: PyMuPDF opens it, decodes its
image, pdfplumber counts it), a small image for filter (:func:`image_canary`: decoded,
scored by both signals, cut into panels). Its inputs are built inside that worker, in a
folder of its own, so the parent never loads a library that might crash it. If the worker
comes back (whatever its result), the machine can do the work and the deaths were the
records'; if it dies too, or runs past the pool's time limit (``--record-timeout``, counted
from when the worker starts it, like a record's), the machine is to blame.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np

from histocore.manifest import Image, Manifest, Record
from histofetch.record_time import POLL_S
from histofetch.worker_processes import (
    Starts,
    executor,
    recording,
    say_started,
    start_queue,
    stop_workers,
    work_on_copy,
    workers_deaf,
)

log = logging.getLogger(__name__)

#: What builds a canary's inputs in a folder (in the worker): the record and its images.
Canary = Callable[[Path], tuple[Record, list[Image]]]
#: One record's work, as :func:`histofetch.pool.run_records` takes it.
Work = Callable[[Manifest, Record], None]

CANARY_ID = "canary"


def bare_canary(folder: Path) -> tuple[Record, list[Image]]:
    """The canary of a stage that names none: a record with no files (the work itself is
    run, and whatever it loads)."""
    return Record(id=CANARY_ID), []


def _tissue(side: int = 96) -> np.ndarray:
    """Pink field with purple dots, ``side`` px square (a fixed H&E-like picture)."""
    rng = np.random.default_rng(0)
    rgb = np.empty((side, side, 3), np.uint8)
    rgb[...] = (230, 160, 200)
    yy, xx = np.mgrid[:side, :side]
    for cy, cx in rng.integers(4, side - 4, (side // 4, 2)):
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = (90, 50, 140)
    return rgb


def _png(rgb: np.ndarray) -> bytes:
    return _encoded(rgb, "PNG")


def _jpeg(rgb: np.ndarray) -> bytes:
    return _encoded(rgb, "JPEG")


def _encoded(rgb: np.ndarray, fmt: str) -> bytes:
    import PIL.Image  # in the worker: the library the canary exercises

    buf = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def image_canary(folder: Path) -> tuple[Record, list[Image]]:
    """filter's canary: an extracted record with two small H&E-like figures, a JPEG and a
    PNG (the formats real figures come in: a machine whose JPEG decoder crashes is broken
    for most of PMC, not "full of bad records")."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for k, (ext, encode) in enumerate((("jpg", _jpeg), ("png", _png)), start=1):
        data = encode(_tissue())
        (folder / "images" / f"canary{k}.{ext}").write_bytes(data)
        image = Image(
            id=f"{CANARY_ID}/fig{k}", record_id=CANARY_ID, path=f"images/canary{k}.{ext}",
            sha256=hashlib.sha256(data).hexdigest(), width=96, height=96,
            caption=f"Figure {k}. H&E of a lymph node.",
        )  # fmt: skip
        images.append(image)
    return Record(id=CANARY_ID, stage="extracted"), images


def pdf_canary(folder: Path) -> tuple[Record, list[Image]]:
    """extract's canary: a downloaded record whose one-page PDF (built with PyMuPDF) holds
    one small image and its caption."""
    import pymupdf  # in the worker: the library the canary exercises

    doc = pymupdf.open()
    page = doc.new_page(width=200, height=200)
    # a JPEG (kept as DCT) and a PNG (Flate), the encodings article PDFs mostly hold
    page.insert_image(pymupdf.Rect(10, 10, 96, 96), stream=_jpeg(_tissue()))
    page.insert_image(pymupdf.Rect(104, 10, 190, 96), stream=_png(_tissue()))
    page.insert_text((20, 140), "Figure 1. H&E of a lymph node.")
    data = doc.tobytes()
    doc.close()
    (folder / "canary.pdf").write_bytes(data)
    rec = Record(id=CANARY_ID, stage="downloaded", pdf_path="canary.pdf", pdf_source="local")
    return rec, []


def run_canary(work: Work, canary: Canary, folder: str) -> str | None:
    """In a worker: build the canary's inputs in ``folder`` and run ``work`` on them as on a
    record (:func:`~histofetch.worker_processes.work_on_copy`). Returns the failure reason,
    if any."""
    say_started(CANARY_ID)  # timed from here, inputs included, like a record
    try:  # a canary whose inputs cannot be built still came back: the worker lived
        rec, images = canary(Path(folder))
    except Exception as exc:  # logged by the caller, never raised there
        return f"canary inputs: {type(exc).__name__}: {exc}"
    failure = work_on_copy(work, Path(folder), rec, images)[2]
    return failure[0] if failure else None


def canary_lives(work: Work, canary: Canary, limit: float | None = None) -> bool:
    """Run the canary in a fresh worker process: does that worker come back? (A result
    that says the work failed counts: the process lived through it.) ``limit``: seconds
    the canary may run once its worker has started it (start-up not counted, as for a
    record); one that runs longer is a canary that died (its worker is ended)."""
    with tempfile.TemporaryDirectory(prefix="histofetch-canary-") as folder:
        workers: list[BaseProcess] = []
        starts = None if limit is None else start_queue()
        pool = executor(1, threads=False, starts=starts)
        try:  # its worker ended (Ctrl-C too) before its folder is removed
            with recording(workers), workers_deaf(False):
                future = pool.submit(run_canary, work, canary, folder)
            try:
                failure = _result(future, starts, limit)
            except BrokenProcessPool:
                log.debug("the canary's worker died")
                return False
            except TimeoutError:
                log.debug("the canary ran past %s s: its worker is ended", limit)
                return False
            log.debug("the canary's worker came back (%s)", failure or "no failure")
            return True
        finally:
            stop_workers(pool, workers)


def _result(future: Future[str | None], starts: Starts | None, limit: float | None) -> str | None:
    """The canary's result; TimeoutError once it has run ``limit`` seconds since its worker
    said it started (waiting for that start has no limit: start-up is not timed)."""
    if starts is None or limit is None:
        return future.result()
    while starts.empty():
        if wait([future], timeout=POLL_S).done:
            return future.result()  # it died (or ended) before it said so
    started = starts.get()[2]  # (the first thing it says: the canary starts)
    return future.result(timeout=max(0.0, started + limit - time.monotonic()))
