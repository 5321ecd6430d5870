"""Hostile PDFs through ``histofetch extract``: no hang, no bomb, no silent truncation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from make_corpus import (
    half_pdf_with_eof,
    image_pdf,
    mask_bomb_pdf,
    nested_forms_pdf,
    reference_loop_pdf,
)

from histocore.manifest import Manifest
from histofetch.extract import ExtractError, run_extract


def _only_record(run: Path):
    with Manifest.load(run) as manifest:
        (rec,) = manifest.records.values()
    return rec


@pytest.mark.timeout(60)
def test_nested_forms_pdf_finishes_fast_and_is_recorded(tmp_path: Path) -> None:
    pdf = tmp_path / "nested.pdf"
    pdf.write_bytes(nested_forms_pdf(depth=8, links=10))
    assert pdf.stat().st_size < 15_000
    start = time.monotonic()
    summary = run_extract(tmp_path / "run", [pdf])
    assert time.monotonic() - start < 10
    assert summary.done == 1
    rec = _only_record(tmp_path / "run")
    assert rec.stage == "extracted"
    # the one real image at the bottom of the forms is found by both parsers
    assert rec.extra["pdfplumber_images"] == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("length", [1, 2])
def test_reference_cycle_is_not_given_to_pdfminer(tmp_path: Path, length: int) -> None:
    """``6 0 obj 6 0 R endobj`` as an image's ``/Length``: pdfminer's resolve1 looped for ever
    inside the pdfplumber cross-check (one job: no budget check reached, extract hung). Now
    the cross-check is skipped with the reason; PyMuPDF's extraction is kept."""
    pdf = tmp_path / "loop.pdf"
    pdf.write_bytes(reference_loop_pdf(length))
    summary = run_extract(tmp_path / "run", [pdf])
    assert summary.done == 1
    rec = _only_record(tmp_path / "run")
    assert rec.stage == "extracted"
    assert rec.extra["pymupdf_images"] == 1
    assert "leading back to itself" in rec.extra["pdfplumber_error"]


@pytest.mark.parametrize("key", [b"/SMask", b"/Mask"])
def test_mask_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path, key: bytes) -> None:
    pdf = tmp_path / "bomb.pdf"
    pdf.write_bytes(mask_bomb_pdf(side=9000, key=key))
    run_extract(tmp_path / "run", [pdf])
    rec = _only_record(tmp_path / "run")
    (refused,) = rec.extra["refused_images"]
    assert "mask 9000x9000 px exceeds the pixel limit" in refused
    assert not Manifest.load(tmp_path / "run").images


def test_half_pdf_ending_in_eof_fails_as_truncated(tmp_path: Path) -> None:
    good, half = tmp_path / "good.pdf", tmp_path / "half.pdf"
    good.write_bytes(image_pdf())
    half.write_bytes(half_pdf_with_eof())
    assert half.read_bytes().rstrip().endswith(b"%%EOF")
    summary = run_extract(tmp_path / "run", [good, half])
    assert (summary.done, summary.failed) == (1, 1)
    manifest = Manifest.load(tmp_path / "run")
    failed = [r for r in manifest.records.values() if r.status == "failed"]
    assert failed[0].reason is not None
    assert failed[0].reason.startswith("truncated PDF")
    assert str(half) in failed[0].reason
    assert len(manifest.images) == 3  # the good file's three pages


@pytest.mark.timeout(30)
def test_fifo_and_device_are_refused_before_hashing(tmp_path: Path) -> None:
    fifo = tmp_path / "paper.pdf"
    os.mkfifo(fifo)
    with pytest.raises(ExtractError, match="not a regular file"):
        run_extract(tmp_path / "run", [fifo])
    with pytest.raises(ExtractError, match="/dev/zero: not a regular file"):
        run_extract(tmp_path / "run", [Path("/dev/zero")])
    assert not (tmp_path / "run" / "manifest.jsonl").exists()


@pytest.mark.timeout(30)
def test_a_record_whose_pdf_became_a_fifo_fails_instead_of_hanging(tmp_path: Path) -> None:
    pdf = tmp_path / "paper.pdf"
    pdf.write_bytes(image_pdf(n_pages=1))
    manifest = Manifest.load(tmp_path / "run", create=True)
    from histofetch.extract import ingest_local

    ingest_local(manifest, [pdf])
    manifest.save()
    pdf.unlink()
    os.mkfifo(pdf)
    summary = run_extract(tmp_path / "run")
    assert summary.failed == 1
    assert _only_record(tmp_path / "run").reason == f"not a regular file: {pdf}"


def _slow_pages(how: str):  # -> a pymupdf.Document subclass
    """A document whose pages come 0.5 s apart: ``sleep`` (wall time with no CPU spent,
    what a process starved by other work sees) or ``spin`` (CPU spent in this thread, what
    a runaway decode costs)."""
    import pymupdf

    class SlowPages(pymupdf.Document):
        def __iter__(self):  # type: ignore[override]
            for number in range(self.page_count):
                end = time.thread_time() + 0.5
                if how == "sleep":
                    time.sleep(0.5)
                while how == "spin" and time.thread_time() < end:
                    pass
                yield self[number]

    return SlowPages


def test_time_budget_counts_cpu_time_so_a_starved_process_fails_no_good_pdf() -> None:
    """The budget is CPU time of the thread doing the work: 4 pages 0.5 s apart in wall
    time only (a machine loaded by others) pass a 1 s budget; the same 2 s spent on CPU
    (a decode that runs away) fail it."""
    from histofetch.pdf_images import extract_images
    from histofetch.stage import StageFailure

    with _slow_pages("sleep")(stream=image_pdf(n_pages=4), filetype="pdf") as doc:
        images, _ = extract_images(doc, where="x.pdf", budget_s=1.0)
    assert len(images) == 4
    with (
        _slow_pages("spin")(stream=image_pdf(n_pages=4), filetype="pdf") as doc,
        pytest.raises(StageFailure, match=r"over the time budget.*x\.pdf"),
    ):
        extract_images(doc, where="x.pdf", budget_s=1.0)


def test_time_budget_fails_the_record(tmp_path: Path) -> None:
    import pymupdf

    from histofetch.pdf_images import extract_images
    from histofetch.stage import StageFailure

    with (
        pymupdf.open(stream=image_pdf(), filetype="pdf") as doc,
        pytest.raises(StageFailure, match=r"over the time budget.*x\.pdf"),
    ):
        extract_images(doc, where="x.pdf", budget_s=-1)
