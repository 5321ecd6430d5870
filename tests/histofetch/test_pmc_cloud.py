"""Route pmc-cloud against an S3-like bucket on 127.0.0.1 built from the recorded bodies,
real JATS and real H&E tile bytes: versions, metadata, policy, figures, MD5, paging."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from ncbi_server import FakeNcbi, make_pdf, ncbi_fixture  # noqa: F401 (fixture)
from PIL import Image as PILImage
from run_factory import make_run as _run
from run_factory import searched as _rec
from s3_server import he_jpeg, real_jats, recorded_listing, slow_down

from histocore.manifest import Manifest, Record
from histofetch.download import run_download
from histofetch.extract import run_extract
from histofetch.http import NetClient
from histofetch.sources import Miss, Policy
from histofetch.sources.pmc_cloud import choose_version, parse_listing, s3_key, versions

LIST = "/pmc-oa-opendata/"
PMCID = "PMC3574550"
FIGS = {"mds52601.jpg": he_jpeg(0), "mds52602.jpg": he_jpeg(1)}


def _download(ncbi: FakeNcbi, tmp_path: Path, *records: Record, **kw) -> Manifest:
    _run(tmp_path, *records)
    run_download(tmp_path, net=ncbi.config(), **kw)
    with Manifest.load(tmp_path) as manifest:  # read, then closed (no -wal/-shm left open)
        return manifest


# -- listings: the recorded bodies and the fake answer the same ----------------------------
@pytest.mark.parametrize(
    ("name", "pmcid", "want"),
    [
        ("list_versions_missing.xml", "PMC99999999999", []),
        ("list_versions_single.xml", "PMC12855588", [1]),
        ("list_versions_two.xml", "PMC11370360", [2, 1]),
    ],
)
def test_recorded_version_listings_and_the_fake_agree(
    ncbi: FakeNcbi, name: str, pmcid: str, want: list[int]
) -> None:
    for v in want:
        ncbi.bucket.add_version(pmcid, v, jats=real_jats())
    with NetClient(ncbi.config()) as client:
        assert versions(client, pmcid) == want
    body = recorded_listing(name)
    if body is None:
        pytest.skip("recorded listings absent (../shared/fixtures/pmc_cloud)")
    page, token = parse_listing(body)
    assert token is None and not page.keys
    assert [p for p in page.prefixes] == [f"{pmcid}.{v}/" for v in sorted(want)]
    fake = ncbi.bucket.answer("", {"list-type": "2", "prefix": f"{pmcid}.", "delimiter": "/"})[2]
    assert parse_listing(fake)[0] == page
    assert (b"<KeyCount>0</KeyCount>" in fake) == (not want)


def test_listing_in_another_namespace_is_refused() -> None:
    with pytest.raises(Miss, match="not an S3 ListBucketResult"):
        parse_listing(b"<ListBucketResult><KeyCount>0</KeyCount></ListBucketResult>")


def test_s3_uri_and_version_choice() -> None:
    assert s3_key(
        "s3://pmc-oa-opendata/PMC1.1/PMC1.1.xml?md5=99210445a56f3315af7e95797556bd6b"
    ) == (
        "PMC1.1/PMC1.1.xml",
        "99210445a56f3315af7e95797556bd6b",
    )
    oa, ms = {"is_pmc_openaccess": True}, {"is_pmc_openaccess": True, "is_manuscript": True}
    closed = {"is_pmc_openaccess": False}
    assert choose_version({1: oa, 2: ms}) == 1  # published beats a newer manuscript
    assert choose_version({1: ms, 2: ms}) == 2
    assert choose_version({1: oa, 2: oa, 3: closed}) == 2
    assert choose_version({1: closed}) is None


# -- the route end to end through the download stage ---------------------------------------
def test_single_version_gives_figures_with_captions_licence_and_pdf(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    pdf = make_pdf("cloud pdf")
    doc = ncbi.bucket.add_version(
        PMCID, 1, jats=real_jats(), media=FIGS, pdf=pdf, citation="Ann Oncol. 2013;24(3):843"
    )
    manifest = _download(ncbi, tmp_path, _rec("23149571", PMCID))
    rec = manifest.records["pmid:23149571"]
    assert (rec.stage, rec.route, rec.pdf_source, rec.pmc_version) == (
        "downloaded",
        "pmc-cloud",
        "pmc-cloud",
        1,
    )
    assert rec.license == "CC BY" == doc["license_code"]
    assert (rec.is_retracted, rec.is_manuscript, rec.open_access) == (False, False, True)
    assert rec.citation == "Ann Oncol. 2013;24(3):843"
    assert rec.pdf_path is not None
    assert (tmp_path / rec.pdf_path).read_bytes() == pdf
    images = manifest.images_of(rec.id)
    assert [(i.source, i.figure_id, i.figure_label) for i in images] == [
        ("jats", "MDS526F1", "Figure 1."),
        ("jats", "MDS526F2", "Figure 2."),
    ]
    assert images[0].caption is not None
    assert images[0].caption.startswith("Deprivation inequalities in advanced stage")
    assert images[0].extra["md5"] == hashlib.md5(FIGS["mds52601.jpg"]).hexdigest()
    with PILImage.open(tmp_path / images[0].path) as im:
        assert im.format == "PNG" and im.size == (256, 256) == (images[0].width, images[0].height)
    # Figures came from JATS: extract does not take the PDF's images a second time.
    run_extract(tmp_path)
    again = Manifest.load(tmp_path)
    assert again.records[rec.id].n_images == 2 and len(again.images_of(rec.id)) == 2


def test_two_versions_take_the_highest_published(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    ncbi.bucket.add_version(PMCID, 2, jats=real_jats(), media=FIGS, license_code="CC BY-NC")
    ncbi.bucket.add_version(PMCID, 3, jats=real_jats(), media=FIGS, is_manuscript=True)
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.pmc_version, rec.license, rec.is_manuscript) == (2, "CC BY-NC", False)
    fetched = {r.path for r in ncbi.log}
    assert f"{LIST}{PMCID}.2/mds52601.jpg" in fetched
    assert f"{LIST}{PMCID}.1/{PMCID}.1.json" not in fetched  # no need to read older versions


def test_manuscript_only_article_takes_the_manuscript(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, is_manuscript=True)
    ncbi.bucket.add_version(
        PMCID, 2, jats=real_jats(), media=FIGS, is_manuscript=True, license_code="TDM"
    )
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.pmc_version, rec.is_manuscript, rec.license, rec.route) == (
        2,
        True,
        "TDM",
        "pmc-cloud",
    )


def test_tdm_is_not_a_reuse_licence(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, license_code="TDM")
    ncbi.files[f"/europepmc/articles/{PMCID}"] = (200, "application/pdf", make_pdf())
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID), policy=Policy(licence="noncommercial"))
    rec = manifest.records["pmid:1"]
    assert rec.status == "failed" and rec.license == "TDM"
    assert rec.reason == "licence: pmc-cloud: TDM is not allowed by --licence noncommercial"
    assert manifest.images_of(rec.id) == [] and rec.pdf_path is None
    assert not any(r.path.endswith(".jpg") for r in ncbi.log)  # refused before any download


def test_licence_policy_commercial(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version("PMC1", 1, jats=real_jats(), media=FIGS, license_code="CC BY-NC-ND")
    ncbi.bucket.add_version("PMC2", 1, jats=real_jats(), media=FIGS, license_code="CC0")
    policy = Policy(licence="commercial")
    manifest = _download(ncbi, tmp_path, _rec("1", "PMC1"), _rec("2", "PMC2"), policy=policy)
    assert manifest.records["pmid:1"].reason is not None
    assert manifest.records["pmid:1"].reason.startswith("licence: pmc-cloud: CC BY-NC-ND")
    assert manifest.records["pmid:2"].route == "pmc-cloud"


def test_not_open_access_falls_back_with_the_reason(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), is_pmc_openaccess=False, license_code=None)
    pdf = make_pdf("render")
    ncbi.files[f"/europepmc/articles/{PMCID}"] = (200, "application/pdf", pdf)
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.route, rec.pdf_source, rec.status) == ("europepmc-pdf", "europepmc-pdf", "ok")
    fetched = {r.path for r in ncbi.log}
    assert f"{LIST}{PMCID}.1/{PMCID}.1.xml" not in fetched


def test_retracted_is_skipped_unless_included(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, is_retracted=True)
    rec = _download(ncbi, tmp_path / "a", _rec("1", PMCID)).records["pmid:1"]
    assert rec.status == "failed" and rec.is_retracted is True
    assert rec.reason is not None
    assert rec.reason.startswith("retracted: pmc-cloud: the article is retracted")
    kept = _download(ncbi, tmp_path / "b", _rec("1", PMCID), policy=Policy(include_retracted=True))
    assert kept.records["pmid:1"].route == "pmc-cloud" and len(kept.images) == 2


@pytest.mark.parametrize(
    ("flags", "retracted"),
    [
        ({"is_retracted": "no", "is_pmc_openaccess": "yes"}, False),
        ({"is_retracted": "False", "is_pmc_openaccess": "true", "is_manuscript": "0"}, False),
        ({"is_retracted": 0, "is_pmc_openaccess": 1}, False),
        ({"is_retracted": "yes"}, True),
        ({"is_retracted": "1", "is_manuscript": False}, True),
    ],
)
def test_metadata_flags_given_as_text_are_read_as_booleans(
    ncbi: FakeNcbi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    flags: dict[str, Any],
    retracted: bool,
) -> None:
    """The bucket's JSON has true/false (the recorded metadata); a mirror writing "no"
    made bool("no") a retraction, and "yes" for open access was taken as not open access."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, **flags)
    with caplog.at_level("WARNING", logger="histofetch.sources.pmc_cloud"):
        rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.is_retracted, rec.is_manuscript) == (retracted, False)
    if retracted:
        assert rec.status == "failed" and rec.reason is not None
        assert rec.reason.startswith("retracted: pmc-cloud: the article is retracted")
    else:
        assert (rec.status, rec.route) == ("ok", "pmc-cloud")
    assert caplog.records == []


def test_unreadable_metadata_flags_keep_the_safe_side_with_one_warning(
    ncbi: FakeNcbi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The value "maybe" for is_retracted: skipped as if retracted, but not recorded as
    retracted (review 3: the guess was stored, so --retry-failed never asked the bucket
    again); for is_pmc_openaccess: as not open access (the route passes the article on).
    One warning each, naming the value."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, is_retracted="maybe")
    with caplog.at_level("WARNING", logger="histofetch.sources.pmc_cloud"):
        rec = _download(ncbi, tmp_path / "a", _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.is_retracted) == ("failed", None)
    assert rec.reason is not None and "is_retracted='maybe' cannot be read" in rec.reason
    assert [r.getMessage() for r in caplog.records] == [
        f"{PMCID}.1.json: is_retracted='maybe' is not true or false; taken as true"
    ]
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, is_retracted=False)
    run_download(tmp_path / "a", net=ncbi.config(), retry_failed=True)  # the bucket is fixed
    with Manifest.load(tmp_path / "a") as manifest:
        rec = manifest.records["pmid:1"]
    assert (rec.status, rec.route, rec.is_retracted) == ("ok", "pmc-cloud", False)
    caplog.clear()
    other = "PMC3574551"
    ncbi.bucket.add_version(other, 1, jats=real_jats(), media=FIGS, is_pmc_openaccess="sure")
    with caplog.at_level("WARNING", logger="histofetch.sources.pmc_cloud"):
        rec = _download(ncbi, tmp_path / "b", _rec("2", other)).records["pmid:2"]
    assert rec.route != "pmc-cloud"
    assert [r.getMessage() for r in caplog.records] == [
        f"{other}.1.json: is_pmc_openaccess='sure' is not true or false; taken as false"
    ]


def test_missing_pmcid_falls_back_route_by_route(ncbi: FakeNcbi, tmp_path: Path) -> None:
    manifest = _download(ncbi, tmp_path, _rec("1", "PMC99999999999"))
    rec = manifest.records["pmid:1"]
    assert rec.status == "failed"
    assert rec.reason is not None
    assert rec.reason.startswith("not in bucket: pmc-cloud: PMC99999999999 is not in the PMC")
    for route in (
        "europepmc: Europe PMC has no full text",
        "europepmc-pdf: HTTP 404",
        "pubmed2pdf",
    ):
        assert route in rec.reason


def test_md5_mismatch_keeps_nothing_of_that_file(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(
        PMCID, 1, jats=real_jats(), media=FIGS, pdf=make_pdf(), wrong_md5=("mds52602.jpg",)
    )
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert [i.figure_label for i in manifest.images_of(rec.id)] == ["Figure 1."]
    assert len(rec.extra["failed_files"]) == 1
    assert "checksum: MD5 mismatch for PMC3574550.1/mds52602.jpg" in rec.extra["failed_files"][0]
    assert not list((tmp_path / "images").rglob("*mds52602*"))
    assert len(ncbi.requests_to(f"{LIST}{PMCID}.1/mds52602.jpg")) == 2  # one re-download


def test_every_figure_failing_its_md5_is_a_checksum_miss(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """Every figure file fails its MD5 twice and the version has no PDF: the record failed
    as 'no figures' ('no figure files and no PDF'), as if the bucket named none, and
    `histofetch status` counted it so; it is a checksum miss, the files named."""
    from typer.testing import CliRunner

    from histofetch.cli import app

    wrong = tuple(FIGS)
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, pdf=None, wrong_md5=wrong)
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert rec.status == "failed" and (rec.reason or "").startswith("checksum: pmc-cloud: "), (
        rec.reason
    )
    assert "2 files failed their MD5 check twice" in (rec.reason or ""), rec.reason
    assert len(rec.extra["failed_files"]) == 2
    status = CliRunner().invoke(app, ["status", "--run", str(tmp_path)])
    assert status.exit_code == 0, status.output
    assert "checksum" in status.output and "no figures" not in status.output, status.output


def test_version_without_pdf_keeps_figures_only(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, pdf=None)
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert rec.route == "pmc-cloud" and rec.pdf_path is None and len(manifest.images) == 2
    assert not any("europepmc" in r.path for r in ncbi.log)  # no PDF hunt elsewhere
    run_extract(tmp_path)
    assert Manifest.load(tmp_path).records[rec.id].stage == "extracted"


def test_href_without_extension_prefers_full_size_over_thumbnail(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    small = he_jpeg(0, size=32)
    media = {"mds52601.gif": small, "mds52601.jpg": he_jpeg(0), "mds52602.png": he_jpeg(1)}
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=media)
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    files = [i.extra["file"] for i in manifest.images_of("pmid:1")]
    assert files == [f"{PMCID}.1/mds52601.jpg", f"{PMCID}.1/mds52602.png"]


def test_figure_with_two_graphics_gives_two_rows(ncbi: FakeNcbi, tmp_path: Path) -> None:
    jats = real_jats().replace(
        b'<graphic xlink:href="mds52601"/>',
        b'<graphic xlink:href="mds52601"/><graphic xlink:href="mds52601b.jpg"/>',
    )
    media = {**FIGS, "mds52601b.jpg": he_jpeg(2)}
    ncbi.bucket.add_version(PMCID, 1, jats=jats, media=media)
    images = _download(ncbi, tmp_path, _rec("1", PMCID)).images_of("pmid:1")
    assert [(i.figure_id, i.extra["href"]) for i in images] == [
        ("MDS526F1", "mds52601"),
        ("MDS526F1", "mds52601b.jpg"),
        ("MDS526F2", "mds52602"),
    ]
    assert images[0].caption == images[1].caption


def test_truncated_listings_are_followed(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.page_limit = 1  # every listing page holds one key or prefix
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, is_manuscript=True)
    ncbi.bucket.add_version(PMCID, 2, jats=real_jats(), media=FIGS, list_media=False)
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    assert manifest.records["pmid:1"].pmc_version == 2 and len(manifest.images) == 2
    pages = [r.params for r in ncbi.requests_to(LIST)]
    assert sum(1 for p in pages if p["prefix"] == f"{PMCID}.") == 2  # two version pages
    listed = [p for p in pages if p["prefix"] == f"{PMCID}.2/"]  # 5 objects, 1 per page
    assert len(listed) == 5 and all("continuation-token" in p for p in listed[1:])


def test_slow_down_and_500_are_retried(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    ncbi.inject(LIST, slow_down(), slow_down())
    ncbi.inject(f"{LIST}{PMCID}.1/mds52601.jpg", (500, {}, b"internal error"))
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    assert len(manifest.images) == 2
    assert len(ncbi.requests_to(f"{LIST}{PMCID}.1/mds52601.jpg")) == 2


def test_missing_object_is_a_file_failure_not_a_crash(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    del ncbi.bucket.objects[f"{PMCID}.1/mds52602.jpg"]  # listed in the JSON, gone (NoSuchKey)
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert len(manifest.images) == 1 and "HTTP 404" in rec.extra["failed_files"][0]
    status, _, body = ncbi.bucket.answer(f"{PMCID}.1/mds52602.jpg", {})
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body


def test_version_without_metadata_json_is_passed_over(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    ncbi.bucket.add_version(PMCID, 2, jats=real_jats(), media=FIGS)
    del ncbi.bucket.objects[f"{PMCID}.2/{PMCID}.2.json"]  # NoSuchKey
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.route, rec.pmc_version) == ("pmc-cloud", 1)


def test_file_names_with_spaces_are_fetched(ncbi: FakeNcbi, tmp_path: Path) -> None:
    jats = real_jats().replace(b'xlink:href="mds52601"', b'xlink:href="Figure 1 (H&amp;E)"')
    media = {"Figure 1 (H&E).jpg": he_jpeg(0), "mds52602.jpg": he_jpeg(1)}
    ncbi.bucket.add_version(PMCID, 1, jats=jats, media=media)
    images = _download(ncbi, tmp_path, _rec("1", PMCID)).images_of("pmid:1")
    assert [i.extra["file"] for i in images] == [
        f"{PMCID}.1/Figure 1 (H&E).jpg",
        f"{PMCID}.1/mds52602.jpg",
    ]
    assert any("%20" in r.path or " " in r.path for r in ncbi.log)


def test_bucket_json_fills_missing_identifiers(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, pmid=23149571, doi="10.1/x")
    rec = Record(id=f"pmcid:{PMCID}", pmcid=PMCID, title="Kept title", stage="searched")
    got = _download(ncbi, tmp_path, rec).records[rec.id]
    assert (got.pmid, got.doi, got.title) == ("23149571", "10.1/x", "Kept title")


def test_hostile_metadata_json_urls_are_misses_not_crashes(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """The version JSON is untrusted: an ``xml_url`` that is not ``s3://`` raised
    ``ValueError`` and ``media_urls`` of another shape ``TypeError``, each failing the whole
    record (later routes never tried, no figures kept). Now the first is a route miss, the
    second is read as "no list" (the version is listed instead), and nothing outside the
    bucket is fetched."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, xml_url="file:///etc/passwd")
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert rec.route != "pmc-cloud"
    assert "xml_url: not an s3:// object URI" in (rec.reason or ""), rec.reason
    ncbi.bucket.add_version(PMCID, 2, jats=real_jats(), media=FIGS, list_media=False,
                            media_urls=7, pdf_url="http://127.0.0.1:9/x.pdf")  # fmt: skip
    manifest = _download(ncbi, tmp_path / "two", _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert (rec.route, rec.pmc_version) == ("pmc-cloud", 2)
    assert len(manifest.images_of("pmid:1")) == 2  # figures found by listing the version
    assert any("pdf_url: not an s3:// object URI" in f for f in rec.extra["failed_files"])
    assert not any("127.0.0.1:9" in r.path for r in ncbi.log)


def _pdf_with_image() -> bytes:
    import pymupdf
    from pdf_factory import he_like, png_bytes

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(40, 40, 232, 232), stream=png_bytes(he_like(128, 128)))
    data = doc.tobytes()
    doc.close()
    return data


def test_version_with_a_pdf_and_no_jats_gives_the_pdf(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """A version whose JSON names a PDF but no xml_url (the bucket's README: some versions
    are XML only, and a JSON may lack a URL) was a miss 'no JATS', its PDF never fetched:
    with no other route holding the article the record failed. Now the figure routes are
    tried first (Europe PMC: no full text here), then the bucket's MD5-checked PDF is kept
    as the first PDF route, route 'pmc-cloud-pdf', and extract takes its images."""
    pdf = _pdf_with_image()
    doc = ncbi.bucket.add_version(PMCID, 1, jats=None, media=FIGS, pdf=pdf)
    assert doc["xml_url"] is None and doc["pdf_url"].startswith("s3://")
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert (rec.status, rec.route, rec.pdf_source, rec.pmc_version, rec.license) == (
        "ok",
        "pmc-cloud-pdf",
        "pmc-cloud",
        1,
        "CC BY",
    )
    assert rec.pdf_path is not None and (tmp_path / rec.pdf_path).read_bytes() == pdf
    misses = rec.extra["route_misses"]
    assert misses[0] == (
        f"pmc-cloud: {PMCID}.1.json names no xml_url (no JATS, no figures); "
        "its PDF is taken if no figure route has figures"
    )
    assert misses[1].startswith("europepmc: Europe PMC has no full text")
    assert not ncbi.requests_to(f"/europepmc/articles/{PMCID}")  # no other PDF fetched
    assert manifest.images_of(rec.id) == []
    run_extract(tmp_path)
    with Manifest.load(tmp_path) as again:
        assert again.records[rec.id].stage == "extracted"
        assert [i.source for i in again.images_of(rec.id)] == ["pdf"]


def test_version_without_jats_prefers_europepmc_figures(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """Figures bound to their captions beat the same article's PDF: Europe PMC's JATS and
    inline images are taken when it has them."""
    import io
    import zipfile

    ncbi.bucket.add_version(PMCID, 1, jats=None, pdf=make_pdf("cloud pdf"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in FIGS.items():
            zf.writestr(name, data)
    rest = f"/europepmc/rest/{PMCID}"
    ncbi.files[f"{rest}/fullTextXML"] = (200, "application/xml", real_jats())
    ncbi.files[f"{rest}/supplementaryFiles"] = (200, "application/zip", buf.getvalue())
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert (rec.status, rec.route, rec.pdf_path) == ("ok", "europepmc", None)
    assert len(manifest.images_of(rec.id)) == 2


def test_version_without_jats_and_a_locked_pdf_goes_on(ncbi: FakeNcbi, tmp_path: Path) -> None:
    from pdf_factory import encrypted_pdf

    ncbi.bucket.add_version(PMCID, 1, jats=None, pdf=encrypted_pdf())
    readable = make_pdf("render")
    ncbi.files[f"/europepmc/articles/{PMCID}"] = (200, "application/pdf", readable)
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.route, rec.pdf_source) == ("europepmc-pdf", "europepmc-pdf")
    assert rec.extra["route_misses"][0] == (
        f"pmc-cloud: {PMCID}.1.json names no xml_url (no JATS, no figures); its PDF: "
        f"got an encrypted PDF that needs a password from {PMCID}.1/{PMCID}.1.pdf"
    )


def test_an_unreadable_flag_warns_once_per_article_not_per_version(
    ncbi: FakeNcbi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three versions whose is_pmc_openaccess is 'sure' (none published open access, so
    all three JSONs are read) gave three warnings for one article; now one names them."""
    for v in (1, 2, 3):
        ncbi.bucket.add_version(PMCID, v, jats=real_jats(), media=FIGS, is_pmc_openaccess="sure")
    other = "PMC3574551"
    ncbi.bucket.add_version(other, 1, jats=real_jats(), media=FIGS, is_pmc_openaccess="maybe")
    ncbi.bucket.add_version(other, 2, jats=real_jats(), media=FIGS, is_pmc_openaccess="sure")
    with caplog.at_level("WARNING", logger="histofetch.sources.pmc_cloud"):
        manifest = _download(ncbi, tmp_path, _rec("1", PMCID), _rec("2", other))
    assert manifest.records["pmid:1"].route != "pmc-cloud"
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"{PMCID}.3.json, {PMCID}.2.json, {PMCID}.1.json: is_pmc_openaccess='sure' is not "
        "true or false; taken as false",
        f"{other}.2.json, {other}.1.json: is_pmc_openaccess='sure', 'maybe' is not true or "
        "false; taken as false",
    ]


# -- the version choice looks at which files a version holds -------------------------------
def test_newest_version_without_jats_gives_way_to_an_older_one_with_it(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """Version 2 (published, open access) has a PDF but no JATS; version 1 has JATS and
    figure files. The route took version 2 (PDF only: no figures bound to captions); now
    version 1's figures, and the record says why the newest version was not taken."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, license_code="CC BY-NC")
    ncbi.bucket.add_version(PMCID, 2, jats=None, pdf=_pdf_with_image())
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert (rec.status, rec.route, rec.pmc_version, rec.license) == (
        "ok",
        "pmc-cloud",
        1,
        "CC BY-NC",
    )
    assert [i.figure_label for i in manifest.images_of(rec.id)] == ["Figure 1.", "Figure 2."]
    assert rec.extra["pmc_version_note"] == (
        f"{PMCID}.2.json names no xml_url (no JATS); took {PMCID}.1, the newest version with JATS"
    )
    assert rec.pdf_path is None  # version 1 has no PDF; version 2's is not needed
    assert not ncbi.requests_to(f"{LIST}{PMCID}.2/{PMCID}.2.pdf")


def test_older_jats_version_without_figures_falls_back_to_the_newest_pdf(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """Version 1's JATS names figures whose files are gone and it has no PDF: the newest
    version's PDF is held as before (route pmc-cloud-pdf, after Europe PMC had nothing)."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    for name in FIGS:
        del ncbi.bucket.objects[f"{PMCID}.1/{name}"]
    pdf = _pdf_with_image()
    ncbi.bucket.add_version(PMCID, 2, jats=None, pdf=pdf)
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert (rec.status, rec.route, rec.pdf_source, rec.pmc_version) == (
        "ok",
        "pmc-cloud-pdf",
        "pmc-cloud",
        2,
    )
    assert rec.pdf_path is not None and (tmp_path / rec.pdf_path).read_bytes() == pdf
    assert rec.extra["route_misses"][0].startswith(
        f"pmc-cloud: {PMCID}.1 (JATS) gave no figure files and no PDF; {PMCID}.2.json names "
        "no xml_url (no JATS, no figures); its PDF is taken if no figure route has figures"
    )
    assert len(rec.extra["failed_files"]) == 2  # version 1's two missing figure files


def test_an_older_jats_version_that_cannot_be_used_leaves_the_newest_pdf(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """Review of 4854b2f: the older version with JATS was checked before the newest's PDF,
    so its licence refusal, or its metadata JSON being unreadable, failed the whole record
    (and a 'network' miss kept the PDF routes from being tried). The newest version's PDF
    is taken as before the change, with the reason in the route's miss."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, license_code="CC BY-NC-ND")
    pdf = _pdf_with_image()
    ncbi.bucket.add_version(PMCID, 2, jats=None, pdf=pdf, license_code="CC BY")
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID), policy=Policy(licence="commercial"))
    rec = manifest.records["pmid:1"]
    assert (rec.status, rec.route, rec.pmc_version, rec.license) == (
        "ok",
        "pmc-cloud-pdf",
        2,
        "CC BY",
    )
    assert (tmp_path / str(rec.pdf_path)).read_bytes() == pdf
    assert rec.extra["route_misses"][0].startswith(f"pmc-cloud: {PMCID}.1 (JATS) refused: ")
    assert not ncbi.requests_to(f"{LIST}{PMCID}.1/mds52601.jpg")

    run2 = tmp_path / "broken"
    good_json = ncbi.bucket.objects[f"{PMCID}.1/{PMCID}.1.json"]
    ncbi.bucket.objects[f"{PMCID}.1/{PMCID}.1.json"] = b"not json"
    rec = _download(ncbi, run2, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.route, rec.pmc_version) == ("ok", "pmc-cloud-pdf", 2)
    assert (run2 / str(rec.pdf_path)).read_bytes() == pdf
    assert rec.extra["route_misses"][0].startswith(  # the skip is on the record (review 2)
        f"pmc-cloud: metadata {PMCID}.1.json is not JSON: version 1 passed over; "
    )

    # network trouble on the older version's JSON is not a verdict: the record is failed
    # and fetched again by a later run (review 2: it was settled on version 2's PDF)
    run3 = tmp_path / "busy"
    ncbi.bucket.objects[f"{PMCID}.1/{PMCID}.1.json"] = good_json
    ncbi.inject(f"{LIST}{PMCID}.1/{PMCID}.1.json", *[(503, {}, b"unavailable")] * 20)
    rec = _download(ncbi, run3, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.route) == ("failed", None)

    # a refusal for good (403) is a verdict: passed over as a broken JSON is (review 3: it
    # failed the record as 'network' on every run, the newest version's PDF never kept)
    run4 = tmp_path / "refused"
    ncbi.faults[f"{LIST}{PMCID}.1/{PMCID}.1.json"].clear()  # the 503s run3 left unserved
    ncbi.inject(f"{LIST}{PMCID}.1/{PMCID}.1.json", *[(403, {}, b"denied")] * 20)
    rec = _download(ncbi, run4, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.route, rec.pmc_version) == ("ok", "pmc-cloud-pdf", 2)
    assert "version 1 passed over" in rec.extra["route_misses"][0]


def test_newest_version_retracted_refuses_an_older_one_with_jats(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    ncbi.bucket.add_version(PMCID, 2, jats=None, pdf=make_pdf(), is_retracted=True)
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.is_retracted, rec.pmc_version) == ("failed", True, 2)
    assert not ncbi.requests_to(f"{LIST}{PMCID}.1/mds52601.jpg")


def test_version_choice_prefers_jats_among_published_versions() -> None:
    jats = {"xml_url": "s3://pmc-oa-opendata/x.xml"}
    oa, ms = {"is_pmc_openaccess": True}, {"is_pmc_openaccess": True, "is_manuscript": True}
    assert choose_version({1: oa | jats, 2: oa}) == 1
    assert choose_version({1: oa | jats, 2: oa | jats, 3: oa}) == 2
    assert choose_version({1: ms | jats, 2: oa}) == 2  # published without JATS beats a manuscript
    assert choose_version({1: ms | jats, 2: ms}) == 1
    assert choose_version({1: oa, 2: oa}) == 2


def test_jats_version_without_figures_and_a_locked_pdf_goes_on_as_encrypted(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """A version with JATS whose figure files are gone and whose PDF needs a password: the
    route's miss counted as 'no figures' (the locked PDF only a failed file); now it is an
    'encrypted PDF' miss naming the file, the next PDF route's readable copy is kept, and
    with no other route the record fails as 'encrypted PDF'."""
    from pdf_factory import encrypted_pdf

    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, pdf=encrypted_pdf())
    for name in FIGS:
        del ncbi.bucket.objects[f"{PMCID}.1/{name}"]
    rec = _download(ncbi, tmp_path / "a", _rec("1", PMCID)).records["pmid:1"]
    assert rec.status == "failed" and rec.reason is not None
    assert rec.reason.startswith(
        f"encrypted PDF: pmc-cloud: {PMCID}.1 gave no figure files; its PDF: got an encrypted "
        f"PDF that needs a password from {PMCID}.1/{PMCID}.1.pdf"
    ), rec.reason
    # the files named but not kept are listed as every other miss lists them (they were
    # only in the reason: extra.failed_files was missing)
    failed = rec.extra["failed_files"]
    assert [f.split(": ", 2)[1] for f in failed] == ["Figure 1.", "Figure 2.", "PDF"], failed
    assert all(f.startswith("pmc-cloud: ") for f in failed), failed
    assert "HTTP 404" in failed[0] and "needs a password" in failed[2]
    readable = make_pdf("render")
    ncbi.files[f"/europepmc/articles/{PMCID}"] = (200, "application/pdf", readable)
    rec = _download(ncbi, tmp_path / "b", _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.route, rec.pdf_source) == ("ok", "europepmc-pdf", "europepmc-pdf")
    assert rec.pdf_path is not None and (tmp_path / "b" / rec.pdf_path).read_bytes() == readable
    assert rec.extra["route_misses"][0].startswith(
        f"pmc-cloud: {PMCID}.1 gave no figure files; its PDF: got an encrypted PDF"
    )


def test_figure_files_that_cannot_be_decoded_name_the_miss(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """Version 1's figure files are in the bucket with their MD5s, but are not images. The
    record failed as 'no full text' (Europe PMC's miss, the only figure-route category
    ranked above 'no figures'), the cause only in extra.failed_files; now the route's miss
    is 'bad file' and says none of the fetched figure files could be decoded."""
    junk = {"mds52601.jpg": b"<html>not an image</html>", "mds52602.jpg": b"\xff\xd8\xff junk"}
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=junk)
    rec = _download(ncbi, tmp_path / "a", _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.transient) == ("failed", False)
    assert rec.reason is not None and rec.reason.startswith(
        "bad file: pmc-cloud: none of its 2 figure files could be decoded, and no PDF "
        f"(Figure 1.: figure '{PMCID}.1/mds52601.jpg' cannot be decoded"
    ), rec.reason
    assert "europepmc: Europe PMC has no full text" in rec.reason
    assert len(rec.extra["failed_files"]) == 2

    # Europe PMC out of reach for now: the PDF routes wait, and the record is retried by
    # the next run by itself whatever category leads its reason
    rest = f"/europepmc/rest/{PMCID}/fullTextXML"
    ncbi.inject(rest, *[(503, {}, b"unavailable")] * 20)
    rendered = len(ncbi.requests_to(f"/europepmc/articles/{PMCID}"))
    rec = _download(ncbi, tmp_path / "b", _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.transient) == ("failed", True), rec.reason
    assert rec.reason is not None and rec.reason.startswith("bad file: pmc-cloud: none of its")
    assert f"europepmc: HTTP 503 from {ncbi.base}{rest}" in rec.reason
    assert len(ncbi.requests_to(f"/europepmc/articles/{PMCID}")) == rendered  # PDF routes wait


def test_version_note_names_newer_versions_with_jats_that_were_not_taken(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """Versions 4 (not open access) and 3 (an author manuscript) have JATS, 2 (published)
    has none, 1 (published) has it: version 1 is taken, as the choice rule says, but the
    note called it 'the newest version with JATS', which 4 and 3 are. Now it says which
    kind of version it is the newest of, and why the newer ones with JATS were not taken."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    ncbi.bucket.add_version(PMCID, 2, jats=None, pdf=make_pdf())
    ncbi.bucket.add_version(PMCID, 3, jats=real_jats(), media=FIGS, is_manuscript=True)
    ncbi.bucket.add_version(PMCID, 4, jats=real_jats(), media=FIGS, is_pmc_openaccess=False)
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.route, rec.pmc_version) == ("ok", "pmc-cloud", 1)
    assert rec.extra["pmc_version_note"] == (
        f"{PMCID}.2.json names no xml_url (no JATS); took {PMCID}.1, the newest published "
        f"open-access version with JATS ({PMCID}.4 has JATS but is not open access; "
        f"{PMCID}.3 has JATS but is an author manuscript)"
    )
    # no published version: the manuscripts are chosen among, and a newer closed version
    # with JATS is named the same way
    other = "PMC3574551"
    ncbi.bucket.add_version(other, 1, jats=real_jats(), media=FIGS, is_manuscript=True)
    ncbi.bucket.add_version(other, 2, jats=None, pdf=make_pdf(), is_manuscript=True)
    ncbi.bucket.add_version(other, 3, jats=real_jats(), media=FIGS, is_pmc_openaccess=False)
    rec = _download(ncbi, tmp_path / "ms", _rec("2", other)).records["pmid:2"]
    assert (rec.status, rec.pmc_version) == ("ok", 1)
    assert rec.extra["pmc_version_note"] == (
        f"{other}.2.json names no xml_url (no JATS); took {other}.1, the newest open-access "
        f"author manuscript with JATS ({other}.3 has JATS but is not open access)"
    )


def test_metadata_over_the_size_limit_is_a_miss_of_that_version(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """A version's metadata JSON larger than NetConfig.max_bytes ('response too large', no
    HTTP status) counted as trouble a later try may not meet: the record failed, marked
    transient, every run again, though the body is as large next time. Now it is that
    version's miss for good: an older version is passed over (the newest version's PDF is
    kept), and a single version's route misses as 'bad file' (the next routes are tried)."""
    net = ncbi.config(max_bytes=1_000_000)  # the JATS (108 KB), figures and PDFs fit
    big = "x" * 1_200_000
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, padding=big)
    pdf = _pdf_with_image()
    ncbi.bucket.add_version(PMCID, 2, jats=None, pdf=pdf)
    _run(tmp_path / "a", _rec("1", PMCID))
    run_download(tmp_path / "a", net=net)
    with Manifest.load(tmp_path / "a") as manifest:
        rec = manifest.records["pmid:1"]
    assert (rec.status, rec.route, rec.pmc_version) == ("ok", "pmc-cloud-pdf", 2), rec.reason
    assert rec.extra["route_misses"][0].startswith(
        f"pmc-cloud: metadata {PMCID}.1.json: response too large"
    ), rec.extra["route_misses"]
    assert "version 1 passed over" in rec.extra["route_misses"][0]

    other = "PMC3574551"
    ncbi.bucket.add_version(other, 1, jats=real_jats(), media=FIGS, padding=big)
    readable = make_pdf("render")
    ncbi.files[f"/europepmc/articles/{other}"] = (200, "application/pdf", readable)
    _run(tmp_path / "b", _rec("2", other))
    run_download(tmp_path / "b", net=net)
    with Manifest.load(tmp_path / "b") as manifest:
        rec = manifest.records["pmid:2"]
    assert (rec.status, rec.route) == ("ok", "europepmc-pdf"), rec.reason
    assert rec.extra["route_misses"][0].startswith(
        f"pmc-cloud: metadata {other}.1.json: response too large"
    )


def test_metadata_that_is_not_json_twice_running_lets_the_next_routes_try(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """A single version whose metadata JSON is an HTML page (a proxy's error page, maybe) is
    network trouble the first time: the record fails, transient, the PDF routes wait. The
    same answer on the next run was the same failure on every run for ever, the PDF routes
    never tried; now the second sight in a row is the route's 'bad file' miss and the
    next routes are tried. A JSON readable by the next run is taken as usual."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    ncbi.bucket.objects[f"{PMCID}.1/{PMCID}.1.json"] = b"<html>502 Bad Gateway</html>"
    ncbi.files[f"/europepmc/articles/{PMCID}"] = (200, "application/pdf", make_pdf("render"))
    fixed = "PMC3574551"
    ncbi.bucket.add_version(fixed, 1, jats=real_jats(), media=FIGS)
    good = ncbi.bucket.objects[f"{fixed}.1/{fixed}.1.json"]
    ncbi.bucket.objects[f"{fixed}.1/{fixed}.1.json"] = b"<html>502 Bad Gateway</html>"
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID), _rec("2", fixed))
    for rid, pmcid in (("pmid:1", PMCID), ("pmid:2", fixed)):
        rec = manifest.records[rid]
        assert (rec.status, rec.transient) == ("failed", True), rec.reason
        assert rec.reason is not None
        assert rec.reason.startswith(f"network: pmc-cloud: metadata {pmcid}.1.json is not JSON")
    assert not ncbi.requests_to(f"/europepmc/articles/{PMCID}")

    ncbi.bucket.objects[f"{fixed}.1/{fixed}.1.json"] = good
    run_download(tmp_path, net=ncbi.config())  # the next run, no --retry-failed
    with Manifest.load(tmp_path) as manifest:
        rec, other = manifest.records["pmid:1"], manifest.records["pmid:2"]
    assert (rec.status, rec.route) == ("ok", "europepmc-pdf"), rec.reason
    assert rec.extra["route_misses"][0].startswith(
        f"pmc-cloud: metadata {PMCID}.1.json is not JSON, as on the run before"
    ), rec.extra["route_misses"]
    assert (other.status, other.route, other.pmc_version) == ("ok", "pmc-cloud", 1)
    assert "unreadable_metadata" not in other.extra


def test_files_over_the_size_limit_are_refused_not_retried(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """A figure file (or Europe PMC's full text) larger than NetConfig.max_bytes stopped the
    route as 'network': the record failed, transient, on every run, no figure kept and the
    PDF routes never tried, though the file is as large next time. Now such a figure file
    is a failed file (the others are kept), and Europe PMC's full text a 'bad file' miss."""
    import numpy as np

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)  # ~480 KB as PNG
    import io

    buf = io.BytesIO()
    PILImage.fromarray(noise).save(buf, format="PNG")
    assert len(buf.getvalue()) > 300_000
    media = {"mds52601.png": buf.getvalue(), "mds52602.jpg": he_jpeg(1)}
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=media)
    net = ncbi.config(max_bytes=300_000)  # the JATS (108 KB), the JPEG and the JSON fit
    _run(tmp_path / "a", _rec("1", PMCID))
    run_download(tmp_path / "a", net=net)
    with Manifest.load(tmp_path / "a") as manifest:
        rec = manifest.records["pmid:1"]
        labels = [i.figure_label for i in manifest.images_of(rec.id)]
    assert (rec.status, rec.route, labels) == ("ok", "pmc-cloud", ["Figure 2."]), rec.reason
    assert rec.extra["failed_files"][0].startswith("pmc-cloud: Figure 1.: response too large")

    other = "PMC3574551"  # not in the bucket; Europe PMC's full text too large
    ncbi.files[f"/europepmc/rest/{other}/fullTextXML"] = (200, "application/xml", b" " * 400_000)
    ncbi.files[f"/europepmc/articles/{other}"] = (200, "application/pdf", make_pdf("render"))
    _run(tmp_path / "b", _rec("2", other))
    run_download(tmp_path / "b", net=net)
    with Manifest.load(tmp_path / "b") as manifest:
        rec = manifest.records["pmid:2"]
    assert (rec.status, rec.route) == ("ok", "europepmc-pdf"), rec.reason
    assert rec.extra["route_misses"][1].startswith(
        f"europepmc: fullTextXML of {other}: response too large"
    ), rec.extra["route_misses"]


@pytest.mark.parametrize("status", [403, 410])
def test_metadata_refused_for_good_on_the_version_read_first_lets_the_next_routes_try(
    ncbi: FakeNcbi, tmp_path: Path, status: int
) -> None:
    """A 403 or 410 (not retried by the client) on the newest version's metadata JSON was
    re-raised and became the route's 'network' miss: the record failed, transient, on every
    run, the PDF routes never tried. Now it is the route's 'bad file' miss, as the docs
    say, and Europe PMC's PDF is kept in the same run."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    ncbi.files[f"/europepmc/articles/{PMCID}"] = (200, "application/pdf", make_pdf("render"))
    key = f"{LIST}{PMCID}.1/{PMCID}.1.json"
    ncbi.inject(key, *[(status, {}, b"<Error>AccessDenied</Error>")] * 10)
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.route, rec.transient) == ("ok", "europepmc-pdf", None), rec.reason
    assert rec.extra["route_misses"][0].startswith(
        f"pmc-cloud: metadata {PMCID}.1.json: HTTP {status}"
    ), rec.extra["route_misses"]
    assert len(ncbi.requests_to(key)) == 1  # not retried


def test_not_json_memory_outlives_an_attempt_that_never_read_the_metadata(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """The 'not JSON' sight (extra.unreadable_metadata) was dropped by an attempt that
    failed before it read the metadata (the bucket listing answered 503 after every
    retry), so the next 'not JSON' counted as the first again: a flaky bucket kept the
    record failing, transient, for ever. Such an attempt now keeps it; one that read the
    JSON fine forgets it."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS)
    ncbi.bucket.objects[f"{PMCID}.1/{PMCID}.1.json"] = b"<html>502 Bad Gateway</html>"
    ncbi.files[f"/europepmc/articles/{PMCID}"] = (200, "application/pdf", make_pdf("render"))
    rec = _download(ncbi, tmp_path, _rec("1", PMCID)).records["pmid:1"]
    assert (rec.status, rec.transient) == ("failed", True), rec.reason
    assert rec.extra["unreadable_metadata"] == f"{PMCID}.1"

    ncbi.inject(LIST, *[(503, {}, b"<Error>SlowDown</Error>")] * 4)  # every retry
    run_download(tmp_path, net=ncbi.config())
    with Manifest.load(tmp_path) as manifest:
        rec = manifest.records["pmid:1"]
    assert (rec.status, rec.transient) == ("failed", True), rec.reason
    assert rec.reason is not None and "503" in rec.reason
    assert rec.extra["unreadable_metadata"] == f"{PMCID}.1"

    run_download(tmp_path, net=ncbi.config())  # not JSON again: the next routes
    with Manifest.load(tmp_path) as manifest:
        rec = manifest.records["pmid:1"]
    assert (rec.status, rec.route) == ("ok", "europepmc-pdf"), rec.reason
    assert "as on the run before" in rec.extra["route_misses"][0], rec.extra["route_misses"]


def test_undecodable_figure_miss_counts_right_and_names_a_refused_pdf(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """The miss read 'none of its 1 figure files could be decoded', and 'and no PDF' when
    the version had a PDF that was refused (not a PDF PyMuPDF opens)."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media={"mds52601.jpg": b"<html/>"})
    rec = _download(ncbi, tmp_path / "a", _rec("1", PMCID)).records["pmid:1"]
    assert rec.reason is not None and rec.reason.startswith(
        "bad file: pmc-cloud: its figure file could not be decoded, and no PDF ("
    ), rec.reason

    other = "PMC3574551"
    junk = {"mds52601.jpg": b"<html/>", "mds52602.jpg": b"\xff\xd8\xff junk"}
    ncbi.bucket.add_version(other, 1, jats=real_jats(), media=junk, pdf=b"%PDF-1.4 garbage")
    rec = _download(ncbi, tmp_path / "b", _rec("2", other)).records["pmid:2"]
    assert rec.reason is not None and rec.reason.startswith(
        "bad file: pmc-cloud: none of its 2 figure files could be decoded, and no usable PDF ("
    ), rec.reason
    assert "PDF: " in rec.reason


def test_md5_failures_of_the_jats_version_stay_checksum_past_the_newest_pdf(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """Every figure file of the version with JATS fails its MD5 twice and the newest version
    (no JATS) names a PDF that is 404: the record failed as 'no full text: … gave no figure
    files and no PDF', the checksum failures lost on the way to the newest version's PDF;
    it is a checksum miss, each file named once."""
    ncbi.bucket.add_version(PMCID, 1, jats=real_jats(), media=FIGS, pdf=None, wrong_md5=tuple(FIGS))
    ncbi.bucket.add_version(PMCID, 2, jats=None, pdf=make_pdf())
    del ncbi.bucket.objects[f"{PMCID}.2/{PMCID}.2.pdf"]  # the newest version's PDF: 404
    manifest = _download(ncbi, tmp_path, _rec("1", PMCID))
    rec = manifest.records["pmid:1"]
    assert rec.status == "failed" and (rec.reason or "").startswith("checksum: pmc-cloud: "), (
        rec.reason
    )
    assert "2 files failed their MD5 check twice" in (rec.reason or ""), rec.reason
    assert "gave no figure files" not in (rec.reason or ""), rec.reason
    assert len(rec.extra["failed_files"]) == 2, rec.extra["failed_files"]
