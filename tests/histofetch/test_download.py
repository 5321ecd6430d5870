"""Download stage: the routes in order against the local server, every miss with a reason."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymupdf
import pytest
from ncbi_server import FakeNcbi, image_bytes, make_pdf, ncbi_fixture  # noqa: F401 (fixture)
from pdf_factory import encrypted_pdf, write_bad_page_tree
from run_factory import make_run as _run
from run_factory import searched as _rec
from s3_server import he_jpeg, real_jats

from histocore.manifest import Manifest
from histofetch.archive import ArchiveLimits
from histofetch.download import run_download
from histofetch.sources.pdf_routes import NotAPdf, check_pdf, find_pdf_link

HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Login</body></html>"
LIST = "/pmc-oa-opendata/"


def _cloud(ncbi: FakeNcbi, pmcid: str, n: int = 0, **kw) -> None:
    """One open-access version with the real JATS and two real H&E tiles as its figures."""
    media = {"mds52601.jpg": he_jpeg(n), "mds52602.jpg": he_jpeg(n + 1)}
    ncbi.bucket.add_version(pmcid, 1, jats=real_jats(), media=media, **kw)


def test_europepmc_render_when_no_figure_route_has_it(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.files["/europepmc/articles/PMC8550608"] = (200, "application/pdf", make_pdf())
    _run(tmp_path, _rec("7", "PMC8550608"))
    run_download(tmp_path, net=ncbi.config())
    rec = Manifest.load(tmp_path).records["pmid:7"]
    assert (rec.route, rec.pdf_source, rec.status) == ("europepmc-pdf", "europepmc-pdf", "ok")
    assert ncbi.requests_to("/europepmc/articles/PMC8550608")[0].params == {"pdf": "render"}
    assert ncbi.requests_to("/europepmc/rest/PMC8550608/fullTextXML")  # tried before


def test_publisher_page_route(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.files["/europepmc/articles/PMC9"] = (200, "text/html", HTML)  # an HTML page
    page = (
        b'<html><head><meta name="citation_pdf_url" content="/content/9/article.pdf">'
        b"</head><body>Article 9</body></html>"
    )
    ncbi.prlinks["9"] = [f"{ncbi.base}/publisher/article/9"]
    ncbi.files["/publisher/article/9"] = (200, "text/html", page)
    pdf = make_pdf("publisher pdf")
    ncbi.files["/content/9/article.pdf"] = (200, "application/pdf", pdf)
    _run(tmp_path, _rec("9", "PMC9"))
    run_download(tmp_path, net=ncbi.config())
    rec = Manifest.load(tmp_path).records["pmid:9"]
    assert rec.pdf_path is not None
    assert rec.pdf_source == "pubmed2pdf" and (tmp_path / rec.pdf_path).read_bytes() == pdf
    assert ncbi.requests_to("/eutils/elink.fcgi")[0].params["cmd"] == "prlinks"


def test_html_everywhere_is_a_failure_never_a_pdf(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.files["/europepmc/articles/PMC3"] = (200, "application/pdf", HTML)  # lies about type
    ncbi.prlinks["3"] = [f"{ncbi.base}/publisher/3"]
    ncbi.files["/publisher/3"] = (200, "text/html", HTML)
    _run(tmp_path, _rec("3", "PMC3"))
    summary = run_download(tmp_path, net=ncbi.config())
    assert summary.failed == 1 and summary.reasons == {"not a PDF": 1}
    rec = Manifest.load(tmp_path).records["pmid:3"]
    assert rec.status == "failed" and rec.failed_stage == "downloaded"
    assert rec.reason is not None
    assert rec.reason.startswith("not a PDF: pmc-cloud: PMC3 is not in the PMC Cloud Service")
    assert "europepmc-pdf: got an HTML/XML page, not a PDF" in rec.reason
    assert "pubmed2pdf: no PDF link" in rec.reason
    assert rec.pdf_path is None and not (tmp_path / "pdfs").exists()


def test_no_pmcid_no_publisher_link(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _run(tmp_path, _rec("4"))
    summary = run_download(tmp_path, net=ncbi.config())
    assert summary.failed == 1
    rec = Manifest.load(tmp_path).records["pmid:4"]
    assert rec.reason is not None
    assert rec.reason.startswith("no PMCID: pmc-cloud/europepmc: record has no PMCID")
    assert "pubmed2pdf: PubMed lists no publisher link" in rec.reason
    assert summary.reasons == {"no PMCID": 1}
    assert not ncbi.requests_to(LIST)


def test_licence_policy_refuses_pdfs_of_unknown_licence(ncbi: FakeNcbi, tmp_path: Path) -> None:
    from histofetch.sources import Policy

    ncbi.files["/europepmc/articles/PMC5"] = (200, "application/pdf", make_pdf())
    _run(tmp_path, _rec("5", "PMC5"))
    run_download(tmp_path, net=ncbi.config(), policy=Policy("commercial"))
    rec = Manifest.load(tmp_path).records["pmid:5"]
    assert rec.reason is not None
    assert rec.reason.startswith("licence: ") and "europepmc-pdf: licence unknown" in rec.reason
    assert not ncbi.requests_to("/europepmc/articles/PMC5")


def test_network_failure_is_retried_by_the_next_run(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _cloud(ncbi, "PMC2")
    ncbi.inject(LIST, *[(503, {}, b"down")] * 3)
    ncbi.inject("/europepmc/rest/PMC2/fullTextXML", *[(502, {}, b"bad gateway")] * 3)
    ncbi.files["/europepmc/articles/PMC2"] = (200, "application/pdf", make_pdf())
    _run(tmp_path, _rec("2", "PMC2"))
    net = ncbi.config(max_retries=2)
    first = run_download(tmp_path, net=net)
    assert first.failed == 1
    rec = Manifest.load(tmp_path).records["pmid:2"]
    assert rec.reason is not None
    assert rec.reason.startswith("network: pmc-cloud: HTTP 503"), rec.reason
    assert rec.transient is True
    # No PDF is taken while the figures are only out of reach for now.
    assert "europepmc-pdf: not tried while a figure route has network trouble" in rec.reason
    assert not ncbi.requests_to("/europepmc/articles/PMC2")
    again = run_download(tmp_path, net=net)  # no --retry-failed needed
    assert again.done == 1
    rec = Manifest.load(tmp_path).records["pmid:2"]
    assert rec.status == "ok" and rec.reason is None and rec.route == "pmc-cloud"
    assert rec.transient is None


def test_download_resumes_without_refetching(ncbi: FakeNcbi, tmp_path: Path) -> None:
    for n in (21, 22):
        _cloud(ncbi, f"PMC{n}", n)
    _run(tmp_path, _rec("21", "PMC21"), _rec("22", "PMC22"))
    run_download(tmp_path, net=ncbi.config())
    before = len(ncbi.log)
    summary = run_download(tmp_path, net=ncbi.config())
    assert (summary.done, summary.skipped) == (0, 2) and len(ncbi.log) == before


def test_figure_over_pixel_limit_is_refused(ncbi: FakeNcbi, tmp_path: Path) -> None:
    media = {
        "mds52601.png": image_bytes("PNG", (300, 300), (9, 9, 9)),
        "mds52602.png": image_bytes("PNG", (20, 20), (9, 9, 9)),
    }
    ncbi.bucket.add_version("PMC31", 1, jats=real_jats(), media=media)
    _run(tmp_path, _rec("31", "PMC31"))
    limits = ArchiveLimits(max_image_pixels=10_000)
    run_download(tmp_path, net=ncbi.config(), limits=limits)
    manifest = Manifest.load(tmp_path)
    rec = manifest.records["pmid:31"]
    assert [Path(i.path).name for i in manifest.images_of(rec.id)] == ["fig_mds52602.png"]
    assert "over the 10000 px limit" in rec.extra["failed_files"][0]


def test_check_pdf_rejects_fakes(tmp_path: Path) -> None:
    check_pdf(make_pdf(pages=3))  # a real PDF passes
    for body, match in [
        (b"", "empty"),
        (HTML, "HTML"),
        (b"%PDF-1.7\n garbage that is no pdf", "PyMuPDF cannot open"),
        (b"\x89PNG\r\n\x1a\n", "bytes starting"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_pdf(body)
    body = write_bad_page_tree(tmp_path / "count.pdf", "count").read_bytes()
    with pytest.raises(NotAPdf, match="cannot read its page tree"):  # was a RuntimeError
        check_pdf(body)
    doc = pymupdf.open(stream=make_pdf(), filetype="pdf")
    assert doc.page_count == 1


def test_a_pdf_that_needs_a_password_is_refused_by_download_and_extract(
    tmp_path: Path,
) -> None:
    """check_pdf and extract's open_pdf share one guard (pdf_checks.open_document), and
    both refuse a PDF that needs a password, with or without its page tree in (encrypted)
    object streams (it counted 0 pages: 'PDF without pages'). check_pdf returned None for
    it, so the download routes took it and only extract failed it."""
    from histofetch.pdf_checks import open_pdf
    from histofetch.sources.pdf_routes import EncryptedPdf
    from histofetch.stage import StageFailure

    doc = pymupdf.open()
    doc.new_page()
    for streams in (1, 0):
        body = doc.tobytes(
            encryption=pymupdf.mupdf.PDF_ENCRYPT_AES_256,
            user_pw="u",
            owner_pw="o",
            use_objstms=streams,
        )
        with pytest.raises(EncryptedPdf, match=r"^got an encrypted PDF that needs a password$"):
            check_pdf(body)
        with pytest.raises(StageFailure, match=r"^encrypted PDF, needs a password: x\.pdf$"):
            open_pdf(body, Path("x.pdf"))


def test_an_encrypted_pdf_lets_the_next_route_try(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """Europe PMC's render answers a PDF that needs a password: it was kept (route
    europepmc-pdf) and the record failed at extract, though the publisher had a readable
    copy. Now the publisher's copy is taken, and the miss names the encryption."""
    locked, readable = encrypted_pdf(), make_pdf("publisher copy")
    ncbi.files["/europepmc/articles/PMC11"] = (200, "application/pdf", locked)
    ncbi.prlinks["11"] = [f"{ncbi.base}/publisher/11.pdf"]
    ncbi.files["/publisher/11.pdf"] = (200, "application/pdf", readable)
    _run(tmp_path, _rec("11", "PMC11"))
    summary = run_download(tmp_path, net=ncbi.config())
    assert summary.done == 1
    with Manifest.load(tmp_path) as manifest:
        rec = manifest.records["pmid:11"]
    assert (rec.status, rec.route, rec.pdf_source) == ("ok", "pubmed2pdf", "pubmed2pdf")
    assert rec.pdf_path is not None and (tmp_path / rec.pdf_path).read_bytes() == readable
    assert any(
        m.startswith("europepmc-pdf: got an encrypted PDF that needs a password from ")
        for m in rec.extra["route_misses"]
    ), rec.extra["route_misses"]


def test_only_encrypted_pdfs_fail_the_record_naming_encryption(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    ncbi.files["/europepmc/articles/PMC12"] = (200, "application/pdf", encrypted_pdf())
    ncbi.prlinks["12"] = [f"{ncbi.base}/publisher/12"]
    ncbi.files["/publisher/12"] = (200, "text/html", HTML)  # a login page
    _run(tmp_path, _rec("12", "PMC12"))
    summary = run_download(tmp_path, net=ncbi.config())
    assert summary.failed == 1 and summary.reasons == {"encrypted PDF": 1}
    with Manifest.load(tmp_path) as manifest:
        rec = manifest.records["pmid:12"]
    assert rec.status == "failed" and rec.failed_stage == "downloaded"
    assert rec.reason is not None and rec.reason.startswith("encrypted PDF: pmc-cloud: ")
    assert "europepmc-pdf: got an encrypted PDF that needs a password from " in rec.reason
    assert rec.pdf_path is None and not (tmp_path / "pdfs").exists()


def test_an_encrypted_pdf_with_an_empty_user_password_is_kept(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """Encrypted with an empty user password (print/copy restrictions only): every reader,
    PyMuPDF included, opens it without asking, so it is a usable PDF."""
    from histofetch.extract import run_extract

    body = encrypted_pdf(user_pw="")
    meta = pymupdf.open(stream=body, filetype="pdf").metadata
    assert meta is not None and meta["encryption"]  # it is encrypted
    check_pdf(body)  # passes, and download keeps it (below)
    ncbi.files["/europepmc/articles/PMC13"] = (200, "application/pdf", body)
    _run(tmp_path, _rec("13", "PMC13"))
    run_download(tmp_path, net=ncbi.config())
    assert run_extract(tmp_path).done == 1
    with Manifest.load(tmp_path) as manifest:
        rec = manifest.records["pmid:13"]
        assert (rec.route, rec.stage, rec.status) == ("europepmc-pdf", "extracted", "ok")
        assert len(manifest.images_of(rec.id)) == 1


def test_pubmed2pdf_finders_on_publisher_markup() -> None:
    base = "https://pub.example/doi/10.1/x"
    meta = b'<meta name="citation_pdf_url" content="https://pub.example/x.pdf">'
    assert find_pdf_link(base, meta) == "https://pub.example/x.pdf"
    fm = b'<a href="/doi/pdf/10.1/x">PDF</a>'
    assert find_pdf_link(base, fm) == "https://pub.example/doi/pdf/10.1/x"
    assert find_pdf_link(base, b"<html><body>nothing</body></html>") is None


def _cloud_rows(run: Path) -> list[dict]:
    lines = (run / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_sigkill_mid_download_then_resume_equals_uninterrupted(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    records = []
    for n in range(41, 45):
        _cloud(ncbi, f"PMC{n}", n, pdf=make_pdf(str(n)))
        records.append(_rec(str(n), f"PMC{n}"))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    _run(killed, *records)
    shutil.copytree(killed, clean)
    run_download(clean, net=ncbi.config())

    hang = f"{LIST}PMC43.1/mds52602.jpg"
    ncbi.inject(hang, ("sleep", 30))  # the third article's second figure hangs...
    seen = len(ncbi.requests_to(hang))  # the clean run's request
    env = {**os.environ, **ncbi.env(), "HISTOFETCH_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "histofetch.cli", "download", "--run", str(killed), "--jobs", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240  # start-up and two records; minutes when loaded
        while len(ncbi.requests_to(hang)) == seen:
            assert time.monotonic() < deadline, "subprocess never reached record 3"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # ...and the process is killed while waiting
        proc.wait()
    partial = Manifest.load(killed)
    assert [r.stage for r in partial.records.values()] == ["downloaded"] * 2 + ["searched"] * 2
    assert len(partial.images) == 4  # the killed record's first figure left no row
    partial.close()  # a reader left open would keep run.sqlite-wal/-shm in the folder

    run_download(killed, net=ncbi.config())
    got = (killed / "manifest.jsonl").read_text()
    assert got == (clean / "manifest.jsonl").read_text()
    assert len([r for r in _cloud_rows(killed) if r["kind"] == "image"]) == 8
    files = sorted(p.relative_to(killed).as_posix() for p in killed.rglob("*") if p.is_file())
    want = sorted(p.relative_to(clean).as_posix() for p in clean.rglob("*") if p.is_file())
    assert files == want  # no stray temp files or half-written figures
    assert "run.sqlite" in want and not [f for f in want if f.startswith("run.sqlite-")]


def test_retracted_at_search_is_skipped_before_any_request(ncbi: FakeNcbi, tmp_path: Path) -> None:
    from histofetch.sources import Policy

    rec = _rec("8", "PMC8")
    rec.is_retracted = True  # PubMed's "Retracted Publication" publication type
    _run(tmp_path, rec)
    summary = run_download(tmp_path, net=ncbi.config())
    assert summary.reasons == {"retracted": 1} and ncbi.log == []
    _cloud(ncbi, "PMC8")
    kept = run_download(
        tmp_path,
        net=ncbi.config(),
        retry_failed=True,
        policy=Policy(include_retracted=True),
    )
    assert kept.done == 1 and Manifest.load(tmp_path).records["pmid:8"].route == "pmc-cloud"


SAME_STEM_JATS = b"""<?xml version="1.0" encoding="UTF-8"?>
<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>
<title-group><article-title>Figures with one stem</article-title></title-group>
<permissions><license xlink:href="https://creativecommons.org/licenses/by/4.0/"/></permissions>
</article-meta></front><body>
<fig id="F1"><label>Figure 1</label><caption><p>Grid of H&amp;E panels.</p></caption>
<graphic xlink:href="fig1.tif"/></fig>
<fig id="F2"><label>Figure 2</label><caption><p>Same stem, JPEG.</p></caption>
<graphic xlink:href="fig1.jpg"/></fig>
<fig id="F3"><label>Figure 3</label><caption><p>Same stem but for case.</p></caption>
<graphic xlink:href="Fig1.png"/></fig>
<fig id="F4"><label>Figure 4</label><caption><p>Named like a panel of figure 1.</p></caption>
<graphic xlink:href="fig1_panel01.png"/></fig>
<fig id="F5"><label>Figure 5</label><caption><p>Figure 1 again.</p></caption>
<graphic xlink:href="fig1.tif"/></fig>
</body></article>"""


def test_figure_files_with_one_stem_keep_distinct_ids_and_files(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    import io

    import numpy as np
    from PIL import Image
    from test_panels import grid_figure

    from histofetch.extract import run_extract
    from histofetch.filter import run_filter

    def encoded(rgb: np.ndarray, fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        return buf.getvalue()

    pixels = {  # file -> the RGB its row must show
        "fig1.tif": grid_figure(),
        "fig1.jpg": np.asarray(Image.open(io.BytesIO(he_jpeg(1))).convert("RGB")),
        "Fig1.png": np.full((120, 150, 3), (200, 90, 160), np.uint8),
        "fig1_panel01.png": np.full((130, 140, 3), (120, 40, 90), np.uint8),
    }
    media = {
        "fig1.tif": encoded(pixels["fig1.tif"], "TIFF"),
        "fig1.jpg": he_jpeg(1),
        "Fig1.png": encoded(pixels["Fig1.png"], "PNG"),
        "fig1_panel01.png": encoded(pixels["fig1_panel01.png"], "PNG"),
    }
    ncbi.bucket.add_version("PMC9", 1, jats=SAME_STEM_JATS, media=media)
    _run(tmp_path, _rec("9", "PMC9"))
    run_download(tmp_path, net=ncbi.config())

    manifest = Manifest.load(tmp_path)
    rows = manifest.images_of("pmid:9")
    assert sorted(i.id for i in rows) == [
        "pmid:9/fig_Fig1_3",
        "pmid:9/fig_fig1",
        "pmid:9/fig_fig1-panel01",
        "pmid:9/fig_fig1_2",
    ]
    assert len({i.path.lower() for i in rows}) == 4  # distinct files on case-blind disks too
    for img in rows:
        shown = np.asarray(Image.open(manifest.resolve(img.path)))
        assert np.array_equal(shown, pixels[img.extra["href"]]), img.id
    first = manifest.images["pmid:9/fig_fig1"]
    assert first.figure_id == "F1"
    assert first.extra["also_figures"] == [
        {"figure_id": "F5", "figure_label": "Figure 5", "file": "PMC9.1/fig1.tif"}
    ]

    # filter cuts figure 1 into panels fig_fig1_panel01..: none may replace figure 4's row
    run_extract(tmp_path)
    run_filter(tmp_path)
    manifest = Manifest.load(tmp_path)
    panels = manifest.panels_of("pmid:9/fig_fig1")
    assert len(panels) == 4
    assert len(manifest.images_of("pmid:9")) == 8
    fig4 = manifest.images["pmid:9/fig_fig1-panel01"]
    assert (fig4.source, fig4.figure_id) == ("jats", "F4")
    shown = np.asarray(Image.open(manifest.resolve(fig4.path)))
    assert np.array_equal(shown, pixels["fig1_panel01.png"])


def test_a_pmcid_that_is_not_pmc_and_digits_is_never_put_into_a_url(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """A hand-edited manifest's (or a service's) PMCID went into URL paths as it was:
    'PMC../../etc' asked Europe PMC for /europepmc/rest/etc/fullTextXML after the client
    resolved the dots, 'PMC12?x=1' added a query, 'PMC１２' (full-width digits) was tried,
    and 'PMC101\\n' failed as 'network' (retried by every run) with a two-line reason. Now a
    PMCID is PMC and ASCII digits, surrounding space and the prefix's case ignored; anything
    else is the record's 'no PMCID' (the publisher route by PMID is still tried)."""
    _cloud(ncbi, "PMC101")
    bad = ["PMC../../etc", "PMC12?x=1", "PMC１２", "garbage", " "]
    _run(tmp_path, _rec("1", " pmc101\n"), *[_rec(str(10 + i), p) for i, p in enumerate(bad)])
    run_download(tmp_path, net=ncbi.config())
    with Manifest.load(tmp_path) as manifest:
        ok = manifest.records["pmid:1"]
        assert (ok.status, ok.route, ok.pmcid) == ("ok", "pmc-cloud", "PMC101")
        for i, pmcid in enumerate(bad):
            rec = manifest.records[f"pmid:{10 + i}"]
            assert rec.status == "failed" and rec.reason is not None
            assert rec.reason.startswith(
                f"no PMCID: pmc-cloud/europepmc: record's PMCID {pmcid!r} is not PMC and digits"
            ), rec.reason
            assert "\n" not in rec.reason
    asked = [r.path + r.params.get("prefix", "") for r in ncbi.log if "elink" not in r.path]
    assert asked and all("PMC101" in a for a in asked), asked
    assert not any(r.params.get("x") for r in ncbi.log)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_pdf_another_record_names_is_never_overwritten(
    ncbi: FakeNcbi, tmp_path: Path, jobs: int
) -> None:
    """'pmid:7' renamed 'pmcid:PMC5' kept its PDF as 'pdfs/pmid_7.pdf' (a rename before
    the PDF moved with the record, or one refused): a later hit 'pmid:7' wrote its own PDF
    over it, and PMC5's row named another article's file. Now the download writes under a
    free name ('pdfs/pmid_7-2.pdf') where another record's row names the file."""
    pdf = make_pdf()
    ncbi.files["/europepmc/articles/PMC8550608"] = (200, "application/pdf", pdf)
    renamed = _rec("5", "PMC5")
    renamed.id, renamed.stage, renamed.status = "pmcid:PMC5", "downloaded", "ok"
    renamed.pdf_path = "pdfs/pmid_7.pdf"
    (tmp_path / "pdfs").mkdir(parents=True)
    (tmp_path / "pdfs" / "pmid_7.pdf").write_bytes(b"%PDF-1.4 the article PMC5")
    _run(tmp_path, renamed, _rec("7", "PMC8550608"))
    run_download(tmp_path, net=ncbi.config(), jobs=jobs)
    with Manifest.load(tmp_path) as manifest:
        mine, theirs = manifest.records["pmcid:PMC5"], manifest.records["pmid:7"]
    assert mine.pdf_path == "pdfs/pmid_7.pdf"
    assert (tmp_path / mine.pdf_path).read_bytes() == b"%PDF-1.4 the article PMC5"
    assert (theirs.status, theirs.pdf_path) == ("ok", "pdfs/pmid_7-2.pdf")
    assert (tmp_path / "pdfs" / "pmid_7-2.pdf").read_bytes() == pdf


@pytest.mark.parametrize("jobs", [1, 2])
def test_two_records_whose_ids_slug_alike_keep_their_own_pdfs(
    ncbi: FakeNcbi, tmp_path: Path, jobs: int
) -> None:
    """The PDF names rows held were read once, when the download began: 'x:1' wrote
    'pdfs/x_1.pdf', then 'x_1' (the same slug) wrote its own PDF over it, and both rows
    named the second article's file. A name given in the run is taken from then on. The
    new test fails on main."""
    first, second = make_pdf("the first article"), make_pdf("the second article")
    ncbi.files["/europepmc/articles/PMC8550608"] = (200, "application/pdf", first)
    ncbi.files["/europepmc/articles/PMC8550609"] = (200, "application/pdf", second)
    one, two = _rec("1", "PMC8550608"), _rec("2", "PMC8550609")
    one.id, two.id = "x:1", "x_1"
    _run(tmp_path, one, two)
    run_download(tmp_path, net=ncbi.config(), jobs=jobs)
    with Manifest.load(tmp_path) as manifest:
        got = {
            rid: (rec.status, rec.pdf_path, (tmp_path / str(rec.pdf_path)).read_bytes())
            for rid, rec in manifest.records.items()
        }
    paths = {got["x:1"][1], got["x_1"][1]}
    assert paths == {"pdfs/x_1.pdf", "pdfs/x_1-2.pdf"}
    assert got["x:1"][0] == got["x_1"][0] == "ok"
    assert (got["x:1"][2], got["x_1"][2]) == (first, second)


def test_a_pdf_another_process_wrote_is_never_overwritten(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """Names were known only from rows read when this process began (review 1 of 46fbe49):
    a second download process on the run wrote 'pdfs/x_1.pdf' for its 'x:1' before
    committing, and this one's 'x_1' wrote over it. A file there with other bytes is
    another's; one with the same bytes is this record's own, left by a run killed before
    its commit, and is taken again (no '-2' beside it)."""
    pdf = make_pdf("the article")
    ncbi.files["/europepmc/articles/PMC8550609"] = (200, "application/pdf", pdf)
    rec = _rec("2", "PMC8550609")
    rec.id = "x_1"
    _run(tmp_path, rec)
    (tmp_path / "pdfs").mkdir(exist_ok=True)
    (tmp_path / "pdfs" / "x_1.pdf").write_bytes(b"%PDF-1.4 the other process's article")
    run_download(tmp_path, net=ncbi.config())
    with Manifest.load(tmp_path) as manifest:
        assert manifest.records["x_1"].pdf_path == "pdfs/x_1-2.pdf"
    assert (tmp_path / "pdfs" / "x_1.pdf").read_bytes() == b"%PDF-1.4 the other process's article"
    assert (tmp_path / "pdfs" / "x_1-2.pdf").read_bytes() == pdf

    again = tmp_path / "again"
    again.mkdir()
    _run(again, _rec("2", "PMC8550609"))
    with Manifest.load(again) as manifest:
        rid = next(iter(manifest.records))
    slug_pdf = again / "pdfs" / f"{rid.replace(':', '_')}.pdf"
    slug_pdf.parent.mkdir(exist_ok=True)
    slug_pdf.write_bytes(pdf)  # the same bytes, as a killed run left them
    run_download(again, net=ncbi.config())
    with Manifest.load(again) as manifest:
        assert manifest.records[rid].pdf_path == f"pdfs/{slug_pdf.name}"
    assert sorted(p.name for p in slug_pdf.parent.iterdir()) == [slug_pdf.name]


def test_a_pdf_another_process_writes_once_the_name_is_chosen_is_not_replaced(
    ncbi: FakeNcbi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name was checked free, then the PDF written there by an atomic rename: another
    download process on the run that chose the same free name (its 'x:1', this one's 'x_1')
    and wrote in between had its PDF replaced, both rows naming one article's file. The PDF
    is now linked into place, which never replaces a file: it goes to the next free name."""
    pdf = make_pdf("the article")
    ncbi.files["/europepmc/articles/PMC8550609"] = (200, "application/pdf", pdf)
    rec = _rec("2", "PMC8550609")
    rec.id = "x_1"
    _run(tmp_path, rec)
    theirs = tmp_path / "pdfs" / "x_1.pdf"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # this PDF is written beside its name: theirs lands now
        real_fsync(fd)
        if theirs.parent.is_dir() and not theirs.exists():
            theirs.write_bytes(b"%PDF-1.4 the other process's article")

    monkeypatch.setattr(os, "fsync", fsync)
    run_download(tmp_path, net=ncbi.config())
    monkeypatch.undo()
    assert theirs.read_bytes() == b"%PDF-1.4 the other process's article"
    with Manifest.load(tmp_path) as manifest:
        assert manifest.records["x_1"].pdf_path == "pdfs/x_1-2.pdf"
    assert (tmp_path / "pdfs" / "x_1-2.pdf").read_bytes() == pdf
    assert sorted(p.name for p in theirs.parent.iterdir()) == ["x_1-2.pdf", "x_1.pdf"]


def test_a_pdf_whose_name_the_record_holds_is_written_over(tmp_path: Path) -> None:
    """Review of the link into place above: a record downloaded again whose own row names
    'pdfs/x_1.pdf' (other bytes there now: its old PDF) writes its new PDF over it, as the
    atomic write did, not under '-2' beside it."""
    from histofetch.download import PdfNames

    rec = _rec("2", "PMC2")
    rec.id, rec.pdf_path = "x_1", "pdfs/x_1.pdf"
    _run(tmp_path, rec)
    (tmp_path / "pdfs").mkdir(exist_ok=True)
    (tmp_path / "pdfs" / "x_1.pdf").write_bytes(b"%PDF-1.4 the old download")
    with Manifest.load(tmp_path) as manifest:
        names = PdfNames(manifest)
    assert names.write("x_1", b"%PDF-1.4 the new download") == "pdfs/x_1.pdf"
    assert (tmp_path / "pdfs" / "x_1.pdf").read_bytes() == b"%PDF-1.4 the new download"
    assert sorted(p.name for p in (tmp_path / "pdfs").iterdir()) == ["x_1.pdf"]
    assert names.write("x_1", b"%PDF-1.4 once more") == "pdfs/x_1.pdf"  # a name it was given
    assert names.write("x:1", b"%PDF-1.4 another article") == "pdfs/x_1-2.pdf"
    assert (tmp_path / "pdfs" / "x_1.pdf").read_bytes() == b"%PDF-1.4 once more"


def test_a_fifo_at_a_pdf_name_is_passed_over_unread(tmp_path: Path) -> None:
    """Review 2 of the check above: a FIFO at 'pdfs/x_1.pdf' was opened to compare its
    bytes, and the download hung there, every thread with it (the lock held)."""
    import threading

    from histofetch.download import PdfNames

    _run(tmp_path, _rec("2", "PMC2"))
    (tmp_path / "pdfs").mkdir(exist_ok=True)
    os.mkfifo(tmp_path / "pdfs" / "x_1.pdf")
    (tmp_path / "pdfs" / "x_1-2.pdf").write_bytes(b"%PDF-1.4 same size, other bytes!")
    with Manifest.load(tmp_path) as manifest:
        names = PdfNames(manifest)
    got: list[str] = []
    worker = threading.Thread(target=lambda: got.append(names.write("x_1", b"%PDF-1.4 x")))
    worker.start()
    worker.join(timeout=20)
    assert got == ["pdfs/x_1-3.pdf"]
    assert (tmp_path / "pdfs" / "x_1-3.pdf").read_bytes() == b"%PDF-1.4 x"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("make_pdfs", "reason"),
    [
        (lambda pdfs: pdfs.write_bytes(b"not a folder"), "is a file, not a folder"),
        (lambda pdfs: pdfs.symlink_to("pdfs"), "too many levels of symbolic links"),
    ],
    ids=["a file", "a link loop"],
)
def test_a_pdfs_that_is_no_folder_fails_the_record(
    ncbi: FakeNcbi, tmp_path: Path, make_pdfs: object, reason: str
) -> None:
    """Review 23: with RUN/pdfs a file or a link loop, every PDF name's lookup failed and
    counted as 'taken', so the download tried pdfs/x-2.pdf, x-3, … for ever (the names'
    lock held: every thread hung). Now the record fails with one line naming pdfs."""
    ncbi.files["/europepmc/articles/PMC8550609"] = (200, "application/pdf", make_pdf("a"))
    _run(tmp_path, _rec("2", "PMC8550609"))
    assert callable(make_pdfs)
    make_pdfs(tmp_path / "pdfs")
    summary = run_download(tmp_path, net=ncbi.config())
    assert (summary.done, summary.failed) == (0, 1)
    with Manifest.load(tmp_path) as manifest:
        (rec,) = manifest.records.values()
    assert rec.status == "failed" and rec.pdf_path is None
    assert rec.reason == f"{reason}: {tmp_path / 'pdfs'}"
