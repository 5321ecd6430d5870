"""Download stage: every route against the local server, failures recorded with reasons."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pymupdf
import pytest
from conftest import SHARED
from ncbi_server import (
    FakeNcbi,
    image_bytes,
    make_pdf,
    make_tgz,
    ncbi_fixture,  # noqa: F401 (fixture)
    oa_error,
    oa_record,
)
from PIL import Image as PILImage

from histocore.manifest import Manifest, Record
from histofetch.archive import ArchiveLimits
from histofetch.download import check_pdf, find_pdf_link, run_download

HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Login</body></html>"
FTP = "ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/"
NXML = b"""<article xmlns:xlink="http://www.w3.org/1999/xlink"><body>
<fig><label>Figure 2</label><caption><p>Sentinel node, H&amp;E.</p></caption>
<graphic xlink:href="gr2"/></fig></body></article>"""


def _run(tmp_path: Path, *records: Record) -> Manifest:
    manifest = Manifest.load(tmp_path, create=True)
    for rec in records:
        manifest.add_record(rec)
    manifest.save()
    return manifest


def _rec(pmid: str, pmcid: str | None = None) -> Record:
    return Record(id=f"pmid:{pmid}", pmid=pmid, pmcid=pmcid, stage="searched")


def test_pmc_oa_pdf_link(ncbi: FakeNcbi, tmp_path: Path) -> None:
    pdf = make_pdf("oa article", pages=2)
    ncbi.oa["PMC11"] = oa_record("PMC11", {"pdf": FTP + "ab/cd/main.pdf"}, "CC BY")
    ncbi.files["/ftp/pub/pmc/ab/cd/main.pdf"] = (200, "application/pdf", pdf)
    _run(tmp_path, _rec("1", "PMC11"))
    summary = run_download(tmp_path, net=ncbi.config(), progress=False)
    assert (summary.done, summary.failed) == (1, 0)
    rec = Manifest.load(tmp_path).records["pmid:1"]
    assert rec.pdf_source == "pmc-oa" and rec.pdf_path == "pdfs/pmid_1.pdf"
    assert (tmp_path / rec.pdf_path).read_bytes() == pdf
    assert rec.pdf_sha256 == hashlib.sha256(pdf).hexdigest()
    assert rec.license == "CC BY" and rec.open_access is True and rec.stage == "downloaded"


def _tgz_package() -> tuple[bytes, bytes]:
    pdf = make_pdf("package article")
    data = make_tgz(
        [
            ("PMC7906746/", None, "dir"),
            ("PMC7906746/main.pdf", pdf, "file"),
            ("PMC7906746/gr2.jpg", image_bytes("JPEG", (64, 48), (180, 90, 160)), "file"),
            ("PMC7906746/gr2.gif", image_bytes("GIF", (16, 12), (180, 90, 160)), "file"),
            ("PMC7906746/gr3.png", image_bytes("PNG", (30, 20), (0, 0, 255, 0), "RGBA"), "file"),
            ("PMC7906746/gr4.tif", image_bytes("TIFF", (20, 10), (0, 255, 0)), "file"),
            ("PMC7906746/article.nxml", NXML, "file"),
        ]
    )
    return data, pdf


def test_tgz_only_package_gives_pdf_and_original_figures(ncbi: FakeNcbi, tmp_path: Path) -> None:
    recorded = SHARED / "fixtures" / "ncbi" / "oa_fcgi_PMC7906746_record_tgz_only.xml"
    if recorded.exists():  # replay the real answer (license="none", tgz link only, ftp://)
        ncbi.oa["PMC7906746"] = recorded.read_bytes()
    else:
        ncbi.oa["PMC7906746"] = oa_record(
            "PMC7906746", {"tgz": FTP + "oa_package/f1/69/PMC7906746.tar.gz"}, "none"
        )
    package, pdf = _tgz_package()
    ncbi.files["/ftp/pub/pmc/oa_package/f1/69/PMC7906746.tar.gz"] = (200, "x", package)
    _run(tmp_path, _rec("33515491", "PMC7906746"))
    summary = run_download(tmp_path, net=ncbi.config(), progress=False)
    assert summary.done == 1, summary.line()

    manifest = Manifest.load(tmp_path)
    rec = manifest.records["pmid:33515491"]
    assert rec.pdf_source == "pmc-oa-package" and rec.license is None
    assert (tmp_path / rec.pdf_path).read_bytes() == pdf
    images = {Path(i.path).name: i for i in manifest.images_of(rec.id)}
    assert set(images) == {"pkg_gr2.png", "pkg_gr3.png", "pkg_gr4.png"}
    gr2 = images["pkg_gr2.png"]
    assert (gr2.source, gr2.page, gr2.width, gr2.height) == ("package", None, 64, 48)
    assert gr2.caption == "Figure 2 Sentinel node, H&E."
    assert gr2.path == "images/pmid_33515491/pkg_gr2.png"
    png = (tmp_path / gr2.path).read_bytes()
    assert gr2.sha256 == hashlib.sha256(png).hexdigest()
    with PILImage.open(tmp_path / images["pkg_gr3.png"].path) as im:
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)  # alpha on white


def test_package_without_pdf_keeps_figures_and_falls_back(ncbi: FakeNcbi, tmp_path: Path) -> None:
    package = make_tgz([("P/gr1.jpg", image_bytes("JPEG", (50, 50), (200, 120, 200)), "file")])
    ncbi.oa["PMC5"] = oa_record("PMC5", {"tgz": FTP + "p5.tar.gz"})
    ncbi.files["/ftp/pub/pmc/p5.tar.gz"] = (200, "x", package)
    epmc = make_pdf("europe pmc render")
    ncbi.files["/europepmc/articles/PMC5"] = (200, "application/pdf", epmc)
    _run(tmp_path, _rec("5", "PMC5"))
    run_download(tmp_path, net=ncbi.config(), progress=False)
    manifest = Manifest.load(tmp_path)
    rec = manifest.records["pmid:5"]
    assert rec.pdf_source == "europepmc"
    assert [i.source for i in manifest.images_of(rec.id)] == ["package"]
    assert ncbi.requests_to("/europepmc/articles/PMC5")[0].params == {"pdf": "render"}


def test_not_open_access_then_europepmc(ncbi: FakeNcbi, tmp_path: Path) -> None:
    recorded = SHARED / "fixtures" / "ncbi" / "oa_fcgi_PMC8550608_error_idIsNotOpenAccess.xml"
    ncbi.oa["PMC8550608"] = (
        recorded.read_bytes()
        if recorded.exists()
        else oa_error(
            "PMC8550608", "idIsNotOpenAccess", "identifier 'PMC8550608' is not Open Access"
        )
    )
    ncbi.files["/europepmc/articles/PMC8550608"] = (200, "application/pdf", make_pdf())
    _run(tmp_path, _rec("7", "PMC8550608"))
    run_download(tmp_path, net=ncbi.config(), progress=False)
    rec = Manifest.load(tmp_path).records["pmid:7"]
    assert rec.pdf_source == "europepmc" and rec.open_access is False


def test_publisher_page_route(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.oa["PMC9"] = oa_error("PMC9", "idIsNotOpenAccess", "not Open Access")
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
    run_download(tmp_path, net=ncbi.config(), progress=False)
    rec = Manifest.load(tmp_path).records["pmid:9"]
    assert rec.pdf_source == "pubmed2pdf" and (tmp_path / rec.pdf_path).read_bytes() == pdf
    assert ncbi.requests_to("/eutils/elink.fcgi")[0].params["cmd"] == "prlinks"


def test_html_everywhere_is_a_failure_never_a_pdf(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.oa["PMC3"] = oa_record("PMC3", {"pdf": FTP + "3.pdf"})
    ncbi.files["/ftp/pub/pmc/3.pdf"] = (200, "application/pdf", HTML)  # lies about its type
    ncbi.files["/europepmc/articles/PMC3"] = (200, "text/html", HTML)
    ncbi.prlinks["3"] = [f"{ncbi.base}/publisher/3"]
    ncbi.files["/publisher/3"] = (200, "text/html", HTML)
    _run(tmp_path, _rec("3", "PMC3"))
    summary = run_download(tmp_path, net=ncbi.config(), progress=False)
    assert summary.failed == 1 and summary.reasons == {"not a PDF": 1}
    rec = Manifest.load(tmp_path).records["pmid:3"]
    assert rec.status == "failed" and rec.failed_stage == "downloaded"
    assert rec.reason.startswith("not a PDF: pmc-oa: got an HTML/XML page, not a PDF")
    assert "europepmc" in rec.reason and "pubmed2pdf: no PDF link" in rec.reason
    assert rec.pdf_path is None and not (tmp_path / "pdfs").exists()


def test_no_pmcid_no_publisher_link(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _run(tmp_path, _rec("4"))
    summary = run_download(tmp_path, net=ncbi.config(), progress=False)
    assert summary.failed == 1
    rec = Manifest.load(tmp_path).records["pmid:4"]
    assert rec.reason.startswith("no PMCID: pmc-oa/europepmc: record has no PMCID")
    assert "pubmed2pdf: PubMed lists no publisher link" in rec.reason
    assert summary.reasons == {"no PMCID": 1}


def test_hostile_package_is_refused_and_run_goes_on(ncbi: FakeNcbi, tmp_path: Path) -> None:
    evil = make_tgz([("P/main.pdf", make_pdf(), "file"), ("../../escape.pdf", b"%PDF", "file")])
    ncbi.oa["PMC6"] = oa_record("PMC6", {"tgz": FTP + "6.tar.gz"})
    ncbi.files["/ftp/pub/pmc/6.tar.gz"] = (200, "x", evil)
    ncbi.oa["PMC8"] = oa_record("PMC8", {"pdf": FTP + "8.pdf"})
    ncbi.files["/ftp/pub/pmc/8.pdf"] = (200, "application/pdf", make_pdf())
    _run(tmp_path, _rec("6", "PMC6"), _rec("8", "PMC8"))
    summary = run_download(tmp_path, net=ncbi.config(), progress=False)
    assert (summary.done, summary.failed) == (1, 1)
    rec = Manifest.load(tmp_path).records["pmid:6"]
    assert rec.reason.startswith("bad package: pmc-oa-package: unsafe member '../../escape.pdf'")
    assert not (tmp_path.parent / "escape.pdf").exists()
    assert Manifest.load(tmp_path).images_of(rec.id) == []


def test_network_failure_then_retry_failed(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.inject("/oa/oa.fcgi", *[(503, {}, b"down")] * 3)
    ncbi.inject("/europepmc/articles/PMC2", *[(502, {}, b"bad gateway")] * 3)
    ncbi.oa["PMC2"] = oa_record("PMC2", {"pdf": FTP + "2.pdf"})
    ncbi.files["/ftp/pub/pmc/2.pdf"] = (200, "application/pdf", make_pdf())
    _run(tmp_path, _rec("2", "PMC2"))
    net = ncbi.config(max_retries=2)
    first = run_download(tmp_path, net=net, progress=False)
    assert first.failed == 1
    assert Manifest.load(tmp_path).records["pmid:2"].reason.startswith("network: pmc-oa: HTTP 503")
    again = run_download(tmp_path, net=net, progress=False)
    assert (again.done, again.skipped) == (0, 1)  # failed records wait for --retry-failed
    retried = run_download(tmp_path, net=net, progress=False, retry_failed=True)
    assert retried.done == 1
    rec = Manifest.load(tmp_path).records["pmid:2"]
    assert rec.status == "ok" and rec.reason is None and rec.pdf_source == "pmc-oa"


def test_download_resumes_without_refetching(ncbi: FakeNcbi, tmp_path: Path) -> None:
    for n in (21, 22):
        ncbi.oa[f"PMC{n}"] = oa_record(f"PMC{n}", {"pdf": FTP + f"{n}.pdf"})
        ncbi.files[f"/ftp/pub/pmc/{n}.pdf"] = (200, "application/pdf", make_pdf(str(n)))
    _run(tmp_path, _rec("21", "PMC21"), _rec("22", "PMC22"))
    run_download(tmp_path, net=ncbi.config(), progress=False)
    before = len(ncbi.log)
    summary = run_download(tmp_path, net=ncbi.config(), progress=False)
    assert (summary.done, summary.skipped) == (0, 2) and len(ncbi.log) == before


def test_package_figure_over_pixel_limit_is_refused(ncbi: FakeNcbi, tmp_path: Path) -> None:
    package = make_tgz(
        [
            ("P/main.pdf", make_pdf(), "file"),
            ("P/huge.png", image_bytes("PNG", (300, 300), (9, 9, 9)), "file"),
            ("P/ok.png", image_bytes("PNG", (20, 20), (9, 9, 9)), "file"),
        ]
    )
    ncbi.oa["PMC31"] = oa_record("PMC31", {"tgz": FTP + "31.tar.gz"})
    ncbi.files["/ftp/pub/pmc/31.tar.gz"] = (200, "x", package)
    _run(tmp_path, _rec("31", "PMC31"))
    run_download(
        tmp_path, net=ncbi.config(), progress=False, limits=ArchiveLimits(max_image_pixels=10_000)
    )
    manifest = Manifest.load(tmp_path)
    rec = manifest.records["pmid:31"]
    assert [Path(i.path).name for i in manifest.images_of(rec.id)] == ["pkg_ok.png"]
    assert "over the 10000 px limit" in rec.extra["refused_package_figures"][0]


def test_check_pdf_rejects_fakes() -> None:
    assert check_pdf(make_pdf(pages=3)) == 3
    for body, match in [
        (b"", "empty"),
        (HTML, "HTML"),
        (b"%PDF-1.7\n garbage that is no pdf", "PyMuPDF cannot open"),
        (b"\x89PNG\r\n\x1a\n", "bytes starting"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_pdf(body)
    doc = pymupdf.open(stream=make_pdf(), filetype="pdf")
    assert doc.page_count == 1


def test_pubmed2pdf_finders_on_publisher_markup() -> None:
    base = "https://pub.example/doi/10.1/x"
    meta = b'<meta name="citation_pdf_url" content="https://pub.example/x.pdf">'
    assert find_pdf_link(base, meta) == "https://pub.example/x.pdf"
    fm = b'<a href="/doi/pdf/10.1/x">PDF</a>'
    assert find_pdf_link(base, fm) == "https://pub.example/doi/pdf/10.1/x"
    assert find_pdf_link(base, b"<html><body>nothing</body></html>") is None


def test_sigkill_mid_download_then_resume_equals_uninterrupted(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    records = []
    for n in range(41, 45):
        ncbi.oa[f"PMC{n}"] = oa_record(f"PMC{n}", {"pdf": FTP + f"{n}.pdf"})
        ncbi.files[f"/ftp/pub/pmc/{n}.pdf"] = (200, "application/pdf", make_pdf(str(n)))
        records.append(_rec(str(n), f"PMC{n}"))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    _run(killed, *records)
    shutil.copytree(killed, clean)
    run_download(clean, net=ncbi.config(), progress=False)

    ncbi.inject("/ftp/pub/pmc/43.pdf", ("sleep", 30))  # the third PDF hangs...
    seen = len(ncbi.requests_to("/ftp/pub/pmc/43.pdf"))  # the clean run's request
    env = {**os.environ, **ncbi.env(), "HISTOFETCH_TIMEOUT": "60"}
    cmd = [sys.executable, "-m", "histofetch.cli", "download", "--run", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(ncbi.requests_to("/ftp/pub/pmc/43.pdf")) == seen:
            assert time.monotonic() < deadline, "subprocess never reached record 3"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # ...and the process is killed while waiting
        proc.wait()
    partial = Manifest.load(killed)
    assert [r.stage for r in partial.records.values()] == ["downloaded"] * 2 + ["searched"] * 2

    run_download(killed, net=ncbi.config(), progress=False)
    got = (killed / "manifest.jsonl").read_text()
    assert got == (clean / "manifest.jsonl").read_text().replace(str(clean), str(killed))
    assert sorted(p.name for p in (killed / "pdfs").iterdir()) == [
        f"pmid_{n}.pdf" for n in range(41, 45)
    ]


def test_figures_only_package_keeps_the_record_going(ncbi: FakeNcbi, tmp_path: Path) -> None:
    from histofetch.extract import run_extract

    package = make_tgz([("P/gr1.jpg", image_bytes("JPEG", (50, 40), (200, 120, 200)), "file")])
    ncbi.oa["PMC51"] = oa_record("PMC51", {"tgz": FTP + "51.tar.gz"})
    ncbi.files["/ftp/pub/pmc/51.tar.gz"] = (200, "x", package)
    _run(tmp_path, _rec("51", "PMC51"))  # Europe PMC 404s, no publisher link
    summary = run_download(tmp_path, net=ncbi.config(), progress=False)
    assert (summary.done, summary.failed) == (1, 0)
    rec = Manifest.load(tmp_path).records["pmid:51"]
    assert rec.pdf_path is None and rec.stage == "downloaded"
    assert rec.extra["pdf_missing"].startswith("no PDF link: pmc-oa-package: package holds no")
    run_extract(tmp_path, progress=False)  # the extract stage accepts figure-only records
    manifest = Manifest.load(tmp_path)
    rec = manifest.records["pmid:51"]
    assert rec.stage == "extracted" and rec.n_images == 1
    assert [i.width for i in manifest.images_of(rec.id)] == [50]
