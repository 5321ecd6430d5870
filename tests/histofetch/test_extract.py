"""Extraction: pixel-exact images from PDFs built here, failures that do not stop the run,
and the real PDFs in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pymupdf
import pytest
from conftest import shared_path
from pdf_factory import (
    build_image_pdf,
    build_known_pdf,
    he_like,
    png_bytes,
    random_rgb,
    write_bad_page_tree,
    write_broken_xref,
    write_corrupt,
    write_encrypted,
    write_truncated,
)

from histocore.io import record_slug
from histocore.manifest import Image, Manifest, Record
from histocore.store import STORE_NAME
from histofetch.extract import MAX_TITLE_CHARS, ExtractError, metadata_title, run_extract
from histofetch.labels import read_caption
from histofetch.stage import UNFINISHED_KEY
from histofetch.status import format_status, run_status


def _pixels(manifest: Manifest, img: Image) -> np.ndarray:
    return np.asarray(PIL.Image.open(manifest.resolve(img.path)))


def test_every_image_kind_is_extracted_pixel_exact(tmp_path: Path) -> None:
    expected = build_known_pdf(tmp_path / "known.pdf")
    summary = run_extract(tmp_path / "run", [tmp_path / "known.pdf"])
    assert (summary.done, summary.failed) == (1, 0)
    manifest = Manifest.load(tmp_path / "run")
    (rec,) = manifest.records.values()
    images = manifest.images_of(rec.id)
    # Page 1: rgb, alpha, grey (icon dropped, rgb repeated); page 2: cmyk, indexed, 16-bit
    # (the second xref with the rgb pixels is a duplicate); page 3: rgb again.
    order = ["rgb", "alpha", "grey", "cmyk", "indexed", "deep"]
    assert [(i.page, i.id.rsplit("/", 1)[1]) for i in images] == [
        (1, "p001_001"), (1, "p001_002"), (1, "p001_003"),
        (2, "p002_001"), (2, "p002_002"), (2, "p002_003"),
    ]  # fmt: skip
    for label, img in zip(order, images, strict=True):
        got = _pixels(manifest, img)
        assert got.shape == expected[label].shape, label
        assert np.array_equal(got, expected[label]), f"{label} pixels differ"
        assert (img.width, img.height) == (got.shape[1], got.shape[0])
        data = manifest.resolve(img.path).read_bytes()
        assert img.sha256 == hashlib.sha256(data).hexdigest()
        assert img.source == "pdf" and img.path.startswith("images/")
    rgb = images[0]
    assert rgb.bbox == [50.0, 50.0, 210.0, 178.0]
    assert rgb.caption == "Figure 1: A known RGB test image."
    assert {(p["page"], tuple(p["bbox"])) for p in rgb.extra["also_at"]} == {
        (1, (50.0, 500.0, 210.0, 628.0)),  # same xref drawn twice on page 1
        (2, (50.0, 300.0, 210.0, 428.0)),  # another xref with the same pixels
        (3, (50.0, 50.0, 210.0, 178.0)),  # same xref on page 3
    }
    assert rec.stage == "extracted" and rec.n_images == 6
    assert rec.extra["small_dropped"] == 1
    assert rec.extra["pdfplumber_images"] == rec.extra["pymupdf_images"] == 9
    assert rec.extra["count_mismatch"] is False


def test_pdfplumber_cross_check_uses_a_repaired_copy_when_it_cannot_parse(tmp_path: Path) -> None:
    build_known_pdf(tmp_path / "known.pdf")
    broken = write_broken_xref(tmp_path / "known.pdf", tmp_path / "broken.pdf")
    summary = run_extract(tmp_path / "run", [broken])
    assert summary.done == 1
    manifest = Manifest.load(tmp_path / "run")
    (rec,) = manifest.records.values()
    assert rec.extra["pdfplumber_repaired"] is True
    assert rec.extra["pdfplumber_images"] == rec.extra["pymupdf_images"] == 9
    assert len(manifest.images) == 6


def test_soft_mask_transparent_pixels_become_white(tmp_path: Path) -> None:
    expected = build_known_pdf(tmp_path / "known.pdf")
    run_extract(tmp_path / "run", [tmp_path / "known.pdf"])
    manifest = Manifest.load(tmp_path / "run")
    alpha = _pixels(manifest, manifest.images_of(next(iter(manifest.records)))[1])
    assert (alpha[:8] == 255).all()  # rows with alpha 0 in the SMask
    assert np.array_equal(alpha, expected["alpha"])


def test_min_size_drops_icons(tmp_path: Path) -> None:
    build_known_pdf(tmp_path / "known.pdf")
    run_extract(tmp_path / "run", [tmp_path / "known.pdf"], min_size=45)
    manifest = Manifest.load(tmp_path / "run")
    sizes = sorted(min(i.width, i.height) for i in manifest.images.values())
    assert sizes and min(sizes) >= 45


def test_a_caption_word_broken_at_a_line_end_is_read_whole(tmp_path: Path) -> None:
    # PDF captions are set in narrow columns: "metas-" / "tasis" came out "metas- tasis"
    # (no weak label) and "Tumour-" / "free" as "Tumour- free", read as a metastasis.
    caption = (
        "Figure 1. Sentinel lymph node without metas-\ntasis: a tumour-\nfree node, H&E-\n"
        "stained; Ki-\n67 low; Non-\nneoplastic."
    )
    pdf = build_image_pdf(tmp_path / "a.pdf", [he_like(128, 128, seed=1)], caption=caption)
    run_extract(tmp_path / "run", [pdf])
    (img,) = Manifest.load(tmp_path / "run").images.values()
    assert img.caption == (
        "Figure 1. Sentinel lymph node without metastasis: a tumour-free node, H&E-stained; "
        "Ki-67 low; Non-neoplastic."
    )
    reading = read_caption(img.caption)
    assert (reading.label, reading.site) == ("no_metastasis", "lymph_node")


def test_broken_pdfs_fail_with_a_reason_and_the_run_goes_on(tmp_path: Path) -> None:
    good = build_image_pdf(tmp_path / "good.pdf", [he_like(seed=1)], caption="Fig. 1. H&E.")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_encrypted(bad / "encrypted.pdf")
    write_truncated(good, bad / "truncated.pdf")
    write_corrupt(bad / "corrupt.pdf")
    (bad / "page.pdf").write_text("<html><body>Access denied</body></html>")
    (bad / "empty.pdf").write_bytes(b"")
    summary = run_extract(tmp_path / "run", [good, bad])
    assert (summary.done, summary.failed) == (1, 5)
    manifest = Manifest.load(tmp_path / "run")
    reasons = {
        Path(r.pdf_path or "").name: r.reason
        for r in manifest.records.values()
        if r.status == "failed"
    }
    assert reasons["encrypted.pdf"] is not None
    assert reasons["encrypted.pdf"].startswith("encrypted PDF, needs a password")
    assert reasons["truncated.pdf"] is not None
    assert reasons["truncated.pdf"].startswith("truncated PDF")
    assert reasons["corrupt.pdf"] is not None
    assert reasons["corrupt.pdf"].startswith("corrupt PDF")
    assert reasons["page.pdf"] is not None
    assert reasons["page.pdf"].startswith("not a PDF")
    assert reasons["empty.pdf"] is not None
    assert reasons["empty.pdf"].startswith("empty file")
    assert all(r.failed_stage == "extracted" for r in manifest.records.values() if r.reason)
    (img,) = manifest.images.values()
    assert img.caption == "Fig. 1. H&E."
    assert not list((tmp_path / "run").rglob("*.tmp"))  # no half-written files


def test_pdfs_whose_page_tree_mupdf_refuses_fail_as_corrupt(tmp_path: Path) -> None:
    """MuPDF opens these, then raises on ``page_count`` or a page (a lying /Count, a /Kids
    loop): the record fails as a corrupt PDF naming the file, not with MuPDF's bare
    ``code=7: ...`` or a reason that starts with the file's path."""
    bad = tmp_path / "bad"
    bad.mkdir()
    write_bad_page_tree(bad / "count.pdf", "count")
    write_bad_page_tree(bad / "loop.pdf", "loop")  # repaired on opening
    write_bad_page_tree(bad / "loop_xref.pdf", "loop", xref=True)  # not repaired
    summary = run_extract(tmp_path / "run", [bad])
    assert (summary.done, summary.failed) == (0, 3)
    reasons = {
        Path(r.pdf_path or "").name: r.reason or ""
        for r in Manifest.load(tmp_path / "run").records.values()
    }
    assert reasons["count.pdf"].startswith("corrupt PDF, cannot read its page tree (code=7")
    assert reasons["loop.pdf"].startswith("corrupt PDF, cannot load a page (page 1: code=7")
    assert reasons["loop_xref.pdf"].startswith("corrupt PDF, MuPDF cannot read it (code=7")
    assert set(summary.reasons) == {  # grouped by the problem, not by the file's name
        "corrupt PDF, cannot read its page tree",
        "corrupt PDF, cannot load a page",
        "corrupt PDF, MuPDF cannot read it",
    }
    for name, reason in reasons.items():  # the file last, as the CLI's warning line expects
        assert reason.endswith(f"{name}"), reason


def test_missing_pdf_file_fails_its_record(tmp_path: Path) -> None:
    pdf = build_image_pdf(tmp_path / "gone.pdf", [he_like()])
    run_dir = tmp_path / "run"
    manifest = Manifest.load(run_dir, create=True)
    from histofetch.extract import ingest_local

    ingest_local(manifest, [pdf])
    manifest.save()
    pdf.unlink()
    summary = run_extract(run_dir)
    assert summary.failed == 1
    (rec,) = Manifest.load(run_dir).records.values()
    assert rec.reason is not None
    assert rec.reason.startswith("PDF file missing")


def test_bad_input_paths_raise_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="no such file or folder"):
        run_extract(tmp_path / "run", [tmp_path / "nope.pdf"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractError, match=r"holds no \.pdf files"):
        run_extract(tmp_path / "run", [tmp_path / "empty"])


def test_a_pdf_under_a_link_loop_names_the_loop(tmp_path: Path) -> None:
    """``ln -s loop loop; histofetch extract loop/x.pdf`` said ``loop/x.pdf: no such file or
    folder``, and ``extract loop`` the same of the loop itself."""
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    for given in (loop / "x.pdf", loop, loop / "a" / "b.pdf"):
        with pytest.raises(ExtractError) as raised:
            run_extract(tmp_path / "run", [given])
        assert str(raised.value) == f"{loop}: too many levels of symbolic links"


def test_ingesting_the_same_pdf_twice_adds_one_record(tmp_path: Path) -> None:
    pdf = build_image_pdf(tmp_path / "a.pdf", [he_like(seed=2), he_like(seed=3)])
    copy = tmp_path / "copy.pdf"
    copy.write_bytes(pdf.read_bytes())
    run_extract(tmp_path / "run", [pdf])
    first = Manifest.load(tmp_path / "run").path.read_text()
    summary = run_extract(tmp_path / "run", [pdf, copy])
    assert (summary.done, summary.skipped) == (0, 1)
    assert Manifest.load(tmp_path / "run").path.read_text() == first
    (rec,) = Manifest.load(tmp_path / "run").records.values()
    assert rec.id.startswith("local:") and rec.pdf_source == "local"
    assert rec.pdf_sha256 == hashlib.sha256(pdf.read_bytes()).hexdigest()


def test_a_downloaded_pdf_given_again_as_a_local_pdf_adds_no_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``extract --run R R/`` (the run folder given as a PDF folder) found R/pdfs/*.pdf and
    made each downloaded article a second, ``local:`` record: its figures were extracted
    twice. A PDF whose bytes a record already has is that record's."""
    run = tmp_path / "run"
    (run / "pdfs").mkdir(parents=True)
    pdf = build_image_pdf(run / "pdfs" / "pmid_1.pdf", [he_like(seed=1)], caption="Fig. 1.")
    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id="pmid:1", pmid="1", stage="downloaded", pdf_path="pdfs/pmid_1.pdf",
                            pdf_sha256=hashlib.sha256(pdf.read_bytes()).hexdigest()))  # fmt: skip
        m.save()
    with caplog.at_level("INFO", logger="histofetch.extract"):
        summary = run_extract(run, [run])
    assert summary.done == 1
    with Manifest.load(run) as m:
        assert list(m.records) == ["pmid:1"]
        assert len(m.images) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "histofetch.extract"]
    assert said == [
        f"1 PDF(s) given are a record's own PDF already (same bytes, e.g. {pdf}): not added again"
    ]


def test_jats_figures_are_kept_and_the_pdf_is_not_extracted_again(tmp_path: Path) -> None:
    pdf = build_image_pdf(tmp_path / "a.pdf", [he_like(seed=4), he_like(seed=5)])
    run_dir = tmp_path / "run"
    run_extract(run_dir, [pdf])
    manifest = Manifest.load(run_dir)
    (rec,) = manifest.records.values()
    manifest.add_image(
        Image(
            id=f"{rec.id}/fig_fig1",
            record_id=rec.id,
            path="images/x/fig_fig1.png",
            sha256="0" * 64,
            width=900,
            height=700,
            source="jats",
            figure_id="F1",
        )
    )
    rec.stage = "downloaded"  # e.g. a user asked for a fresh extraction
    manifest.save()
    run_extract(run_dir)
    again = Manifest.load(run_dir)
    # The JATS figure stays; the PDF's copies of the figures are not taken a second time.
    assert [i.source for i in again.images.values()] == ["jats"]
    assert again.records[rec.id].n_images == 1


def test_images_over_the_pixel_limit_are_refused_undecoded(tmp_path: Path) -> None:
    doc = pymupdf.open()
    page = doc.new_page()
    xref = page.insert_image(pymupdf.Rect(40, 40, 136, 136), stream=png_bytes(he_like()))
    page.insert_image(pymupdf.Rect(200, 40, 296, 136), stream=png_bytes(he_like(seed=9)))
    # A decompression bomb: declares 100000 x 100000 pixels (10 gigapixels).
    doc.xref_set_key(xref, "Width", "100000")
    doc.xref_set_key(xref, "Height", "100000")
    doc.save(tmp_path / "bomb.pdf")
    summary = run_extract(tmp_path / "run", [tmp_path / "bomb.pdf"])
    assert summary.done == 1
    manifest = Manifest.load(tmp_path / "run")
    (rec,) = manifest.records.values()
    assert len(manifest.images) == 1
    (refused,) = rec.extra["refused_images"]
    assert "100000x100000 px exceeds the pixel limit" in refused


# -- real PDFs -----------------------------------------------------------------------------


@pytest.mark.realdata
def test_konrad_gerlach_report_all_113_patches_found(tmp_path: Path) -> None:
    pdf = shared_path("data", "pdfs", "konrad-gerlach_report.pdf")
    run_extract(tmp_path / "run", [pdf])
    manifest = Manifest.load(tmp_path / "run")
    (rec,) = manifest.records.values()
    patches = [i for i in manifest.images.values() if (i.width, i.height) == (96, 96)]
    placements = sum(1 + len(i.extra.get("also_at", [])) for i in patches)
    assert placements == 113  # every embedded 96x96 image, on pages 3-9
    assert len(patches) == 96  # 17 are the same dataset patch shown in two figures
    assert {i.page for i in patches} == set(range(3, 10))
    assert rec.extra["pdfplumber_images"] == rec.extra["pymupdf_images"] == 114
    # soft masks are opaque here: the PNG must equal the PDF's own RGB samples
    doc = pymupdf.open(pdf)
    first = min(patches, key=lambda i: (i.page, i.id))
    raw = pymupdf.Pixmap(doc, first.extra["xref"])
    assert np.array_equal(
        _pixels(manifest, first), np.frombuffer(raw.samples, np.uint8).reshape(96, 96, 3)
    )
    captions = {i.caption.split(":")[0] for i in patches if i.caption}
    assert {"Figure 1", "Figure 2", "Figure 10", "Figure 13"} <= captions


@pytest.mark.realdata
def test_fixture_pdfs_extract_or_fail_as_provenance_says(tmp_path: Path) -> None:
    folder = shared_path("fixtures", "pdfs")
    summary = run_extract(tmp_path / "run", [folder])
    manifest = Manifest.load(tmp_path / "run")
    by_name = {Path(r.pdf_path or "").name: r for r in manifest.records.values()}
    assert summary.failed == 1
    enc = by_name["bad_pdfplumber_encrypted_password_example.pdf"]
    assert enc.reason is not None
    assert enc.status == "failed" and enc.reason.startswith("encrypted PDF")
    malformed = by_name["bad_pdfplumber_malformed_issue932.pdf"]
    assert malformed.status == "ok" and "pdfplumber_images" in malformed.extra
    for name in ("neg_datta2010_jtmo_4_1_review_no_images.pdf",
                 "neg_drageset2015_peerj_1120_no_images.pdf"):  # fmt: skip
        assert by_name[name].status == "ok" and by_name[name].n_images == 0
    soler = by_name["neg_soler2014_plosone_0107412_charts_photos.pdf"]
    assert soler.n_images == 4
    li = by_name["pos_li2022_science_abi9591_HE_lung_PAS_kidney.pdf"]
    lung = [
        i for i in manifest.images_of(li.id) if i.page == 11 and (i.width, i.height) == (565, 567)
    ]
    assert lung[0].caption is not None
    assert len(lung) == 1 and lung[0].caption.startswith("Fig. 6")
    assert all(not r.extra.get("count_mismatch") for r in manifest.records.values())


def test_only_errors_raised_inside_mupdf_count_as_bad_input() -> None:
    from histofetch.pdf_images import _raised_in_mupdf

    try:
        pymupdf.open(stream=b"not a pdf at all", filetype="pdf")
    except Exception as exc:
        assert _raised_in_mupdf(exc)
    else:
        raise AssertionError("MuPDF opened garbage")
    try:
        raise ValueError("a bug of ours")
    except ValueError as exc:
        assert not _raised_in_mupdf(exc)


def _run_cli(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "histofetch.cli", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_once_claimed(run: Path, pdf: Path, deaths_before: int = 0) -> None:
    """Start `histofetch extract` and SIGKILL it once its attempt at the PDF has started and
    before it committed: what a user does to a hung MuPDF. Started means claimed, and, after
    earlier deaths, the death count committed (the attempt commits it before it works)."""
    proc = _run_cli("extract", "--run", str(run), str(pdf))
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(run / STORE_NAME, timeout=30) as db:
                sql = "SELECT COUNT(*) FROM claims WHERE pid = ?"
                claimed = db.execute(sql, (proc.pid,)).fetchone()[0]
                if claimed and deaths_before:
                    (data,) = db.execute("SELECT data FROM records").fetchone()
                    claimed = f'"{UNFINISHED_KEY}": {deaths_before}' in data
        except sqlite3.OperationalError:  # the store is being created
            claimed = 0
        if claimed:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "extract ended before its attempt was killed"


def test_a_pdf_whose_attempts_die_is_skipped_then_retried_on_request(tmp_path: Path) -> None:
    # a PDF read for a second or so: 6 noise images of 800 x 800 px
    pdf = build_image_pdf(tmp_path / "slow.pdf", [random_rgb(800, 800, k) for k in range(6)])
    run = tmp_path / "run"
    _kill_once_claimed(run, pdf)
    rec_id = next(iter(Manifest.load(run).records))
    assert run_status(run)["unfinished"] == {"extracted": 1}
    assert "attempts whose process died" in format_status(run_status(run))
    _kill_once_claimed(run, pdf, 1)  # one death is retried (a random kill resumes): killed again
    assert Manifest.load(run).records[rec_id].extra[UNFINISHED_KEY] == 1

    skip = _run_cli("extract", "--run", str(run))
    out, err = skip.communicate(timeout=300)
    assert skip.returncode == 1, err.decode()  # the summary, then one error line naming it
    *warnings, last = err.decode().splitlines()
    assert len(warnings) == 1 and "2 attempts" in warnings[0] and "--retry-failed" in warnings[0]
    assert last.startswith("error: ") and "1 record failed" in last and rec_id in last
    assert "0 done" in out.decode() and "unfinished attempts: 1" in out.decode()
    rec = Manifest.load(run).records[rec_id]
    assert (rec.status, rec.failed_stage, rec.stage) == ("failed", "extracted", "downloaded")
    assert rec.reason is not None and rec.reason.startswith("unfinished attempts")
    assert Manifest.load(run).images_of(rec_id) == []  # nothing half written
    info = run_status(run)
    assert info["failure_reasons"] == {"unfinished attempts": 1} and info["unfinished"] == {}
    assert run_extract(run).failed_before == 1  # a plain re-run leaves it failed, no warning

    retried = run_extract(run, retry_failed=True)
    assert (retried.done, retried.failed) == (1, 0)
    rec = Manifest.load(run).records[rec_id]
    assert rec.status == "ok" and rec.stage == "extracted" and rec.n_images == 6
    assert UNFINISHED_KEY not in rec.extra


def test_finished_stages_leave_no_sqlite_side_files(tmp_path: Path) -> None:
    """A stage closes its store: the WAL is folded into run.sqlite and ``-wal``/``-shm``
    are gone, so the folder can be copied as it is or shared read-only."""
    from histofetch.filter import run_filter

    pdf = build_image_pdf(tmp_path / "a.pdf", [he_like(128, 128, seed=1)], caption="Figure 1")
    run = tmp_path / "run"
    gc.disable()  # without it a store left open might still be closed by the collector
    try:
        for stage in (lambda: run_extract(run, [pdf]), lambda: run_filter(run, sheet=False)):
            stage()
            assert not [p.name for p in run.iterdir() if p.name.startswith(STORE_NAME + "-")]
        run_status(run)
        assert not [p.name for p in run.iterdir() if p.name.startswith(STORE_NAME + "-")]
    finally:
        gc.enable()
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / STORE_NAME).write_bytes((run / STORE_NAME).read_bytes())  # the store file alone
    assert Manifest.load(copy).records.keys() == Manifest.load(run).records.keys() != set()


def _titled_pdf(path: Path, title: str | None) -> Path:
    """A one-image PDF whose metadata /Title is ``title`` (None: no title at all)."""
    build_image_pdf(path, [he_like()])
    if title is not None:
        doc = pymupdf.open(path)
        doc.set_metadata({"title": title})
        doc.saveIncr()
        doc.close()
    return path


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Nodal metastases of breast carcinoma", "Nodal metastases of breast carcinoma"),
        # hostile: a NUL, a bidi override and line breaks go, the title is one line
        ("Nodal\x00 metastases\u202e\r\nof carcinoma", "Nodal metastases of carcinoma"),
        ("Microsoft Word - draft_v3.docx", "paper_07"),  # a tool's placeholder: the file name
        ("untitled", "paper_07"),
        ("pone.0107412 1..10", "paper_07"),  # a typesetting job and its page range
        ("paper 07", "paper_07"),  # the file name itself
        ("Journal of Pathology 2019", "paper_07"),  # a journal's name and a year
        ("   ", "paper_07"),
        (None, "paper_07"),
    ],
)
def test_local_pdf_titled_by_its_metadata_title_when_plausible(
    tmp_path: Path, title: str | None, expected: str
) -> None:
    pdf = _titled_pdf(tmp_path / "paper_07.pdf", title)
    assert run_extract(tmp_path / "run", [pdf]).done == 1
    (rec,) = Manifest.load(tmp_path / "run").records.values()
    assert rec.title == expected


def test_local_pdf_metadata_title_is_capped(tmp_path: Path) -> None:
    pdf = _titled_pdf(tmp_path / "long.pdf", "Carcinoma " * 100)
    run_extract(tmp_path / "run", [pdf])
    (rec,) = Manifest.load(tmp_path / "run").records.values()
    assert rec.title is not None and len(rec.title) <= 300 and rec.title.endswith("…")
    assert "\n" not in rec.title


def test_real_pdf_titled_by_its_metadata_title(tmp_path: Path) -> None:
    pdf = shared_path(
        "fixtures", "pdfs", "pos_bawaneh2022_cancers14_4849_TNBC_HE_lung_metastasis.pdf"
    )
    run_extract(tmp_path / "run", [pdf])
    (rec,) = Manifest.load(tmp_path / "run").records.values()
    assert rec.title == (
        "Intestinal Microbiota Influence Doxorubicin Responsiveness in Triple-Negative Breast "
        "Cancer"
    )


@pytest.mark.parametrize(
    "title",
    [
        "PII: S0046-8177(18)30123-4",  # Elsevier's item identifier
        "Untitled document",
        "PowerPoint Presentation",
        "Author Manuscript",
        "HHS Public Access",
        "Article title",
        "Adobe Photoshop PDF",
        "Word Pro - paper.lwp",
    ],
)
def test_publisher_and_tool_placeholders_are_not_titles(title: str) -> None:
    assert metadata_title(title, "paper_07") is None


@pytest.mark.parametrize(
    "title",
    [
        "Journal of Pathology 2019",
        "The Journal of Pathology (2019)",
        "JOURNAL OF PATHOLOGY 2019",
        "American Journal of Surgical Pathology 2019.",
        "Annals of Oncology, 2019",
        "Archives of Pathology & Laboratory Medicine 2018",
        "The Breast Journal 2019",
        "Acta Neuropathologica 2020",
    ],
)
def test_a_journal_name_and_year_is_not_a_title(title: str) -> None:
    """Some publishers' metadata title is the journal and the year: it passed as the
    article's title (two words with letters, no placeholder)."""
    assert metadata_title(title, "paper_07") is None


@pytest.mark.parametrize(
    "title",
    [
        "Journal of Pathology: lymph node metastases 2019",  # more than the journal
        "Sentinel Lymph Node Biopsy in Breast Cancer 2019",  # no journal word
        "Lymph node metastases in breast cancer 2019",
        "Journal club: sentinel nodes in 2019",
        "Breast Cancer Journal Club Review 2019",
        "Modern Pathology 2019",  # a journal, but not told from a title: taken
        "Journal of Pathology",  # no year
    ],
)
def test_titles_near_a_journal_name_are_kept(title: str) -> None:
    assert metadata_title(title, "paper_07") == title


@pytest.mark.parametrize("title", ["Acta " * 8000 + "x", "Annals Of A " * 4000 + "x"])
def test_a_long_crafted_title_is_read_at_once(title: str) -> None:
    """The journal-and-year pattern backtracks over every capitalised word: a 40 KB title
    of them took 10+ s (quadratic; an 80 KB one held extract 46 s). Only titles a journal
    name could fill are matched now."""
    start = time.perf_counter()
    kept = metadata_title(title, "paper_07")
    assert time.perf_counter() - start < 2.0
    assert kept is not None and title.startswith(kept[:-1]) and kept.endswith("…")


def test_long_title_without_a_late_word_break_is_cut_hard() -> None:
    """A word cut that would drop most of the title is not taken: cut hard, end in '…'."""
    title = metadata_title("Lymph node " + "x" * 400, "paper_07")
    assert title == ("Lymph node " + "x" * 400)[: MAX_TITLE_CHARS - 1] + "…"
    words = metadata_title("Carcinoma " * 100, "paper_07")
    assert words is not None and words.endswith("Carcinoma…")  # a late break: cut at a word
    assert MAX_TITLE_CHARS - len("Carcinoma ") <= len(words) <= MAX_TITLE_CHARS


def test_local_pdf_keeps_its_file_name_title_when_extraction_fails(tmp_path: Path) -> None:
    """The metadata title is read on opening the PDF but set only when the record is
    extracted: a record whose extraction fails (here its images folder is a file) keeps the
    file-name title, as the docs say."""
    pdf = _titled_pdf(tmp_path / "paper_07.pdf", "Nodal metastases of breast carcinoma")
    run = tmp_path / "run"
    rid = "local:" + hashlib.sha256(pdf.read_bytes()).hexdigest()[:16]
    (run / "images").mkdir(parents=True)
    (run / "images" / record_slug(rid)).write_text("in the way")
    assert run_extract(run, [pdf]).failed == 1
    rec = Manifest.load(run).records[rid]
    assert rec.status == "failed" and rec.title == "paper_07"
