"""The pool's canary: each stage's known-good input really runs through the stage's work
(so a live canary means the libraries that work uses can run here), and a worker that
dies on it is told apart from one that comes back."""

from __future__ import annotations

import functools
from pathlib import Path

from pool_work import crash_reading_any, read_fine

from histocore.manifest import Manifest
from histofetch.canary import (
    CANARY_ID,
    Canary,
    Work,
    bare_canary,
    canary_lives,
    image_canary,
    pdf_canary,
)
from histofetch.extract import extract_record
from histofetch.filter import Thresholds, filter_record


def _run_here(folder: Path, canary: Canary, work: Work) -> Manifest:
    """The canary's inputs built in ``folder`` and ``work`` run on them in this process."""
    rec, images = canary(folder)
    mini = Manifest(run_dir=folder)
    mini.records[rec.id] = rec
    for img in images:
        mini.images[img.id] = img
    work(mini, rec)
    return mini


def test_the_pdf_canary_is_extracted_by_the_extract_work(tmp_path: Path) -> None:
    """extract's canary is a real PDF: PyMuPDF decodes its two images (one stored as a
    JPEG, one as a PNG, the encodings article PDFs mostly hold), pdfplumber counts them."""
    mini = _run_here(tmp_path, pdf_canary, functools.partial(extract_record, min_size=32))
    images = mini.images_of(CANARY_ID)
    assert [(i.width, i.height, i.page) for i in images] == [(96, 96, 1)] * 2
    assert all((tmp_path / i.path).stat().st_size > 0 for i in images)
    rec = mini.records[CANARY_ID]
    assert rec.n_images == 2 and rec.extra.get("pdfplumber_images") == 2, rec.extra


def test_the_image_canary_is_scored_by_the_filter_work(tmp_path: Path) -> None:
    """filter's canary is a real image: decoded, scored by both signals, hashed."""
    work = functools.partial(filter_record, limits=Thresholds.from_kwargs(0.3), panels=True)
    mini = _run_here(tmp_path, image_canary, work)
    figures = [mini.images[f"{CANARY_ID}/fig{k}"] for k in (1, 2)]  # a JPEG and a PNG
    assert [f.path.rsplit(".", 1)[1] for f in figures] == ["jpg", "png"]
    for figure in figures:
        assert figure.status == "ok", figure.reason
        assert figure.p_he is not None and figure.he_score is not None and figure.phash


def test_a_worker_that_lives_through_the_canary_is_told_from_one_that_dies() -> None:
    """In a fresh worker process: the stage's work coming back (filter's, on its image)
    says the machine can do it; a work that kills every worker it runs in says not."""
    work = functools.partial(filter_record, limits=Thresholds.from_kwargs(0.3), panels=False)
    assert canary_lives(work, image_canary)
    assert canary_lives(read_fine, bare_canary)
    assert not canary_lives(crash_reading_any, bare_canary)
