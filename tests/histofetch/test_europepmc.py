"""Route europepmc: fullTextXML captions + the inline-image ZIP, read under archive limits."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from ncbi_server import FakeNcbi, make_pdf, ncbi_fixture  # noqa: F401 (fixture)
from run_factory import make_run, searched
from s3_server import he_jpeg, real_jats

from histocore.manifest import Manifest
from histofetch.archive import ArchiveError, ArchiveLimits
from histofetch.download import run_download
from histofetch.sources import Policy
from histofetch.sources.europepmc import read_zip

REST = "/europepmc/rest/PMC77"


def _zip(members: list[tuple[str, bytes]], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _serve(ncbi: FakeNcbi, zip_body: bytes) -> None:
    ncbi.files[f"{REST}/fullTextXML"] = (200, "application/xml", real_jats())
    ncbi.files[f"{REST}/supplementaryFiles"] = (200, "application/zip", zip_body)


def _download(ncbi: FakeNcbi, tmp_path: Path, **kw) -> Manifest:
    make_run(tmp_path, searched("77", "PMC77"))
    run_download(tmp_path, net=ncbi.config(), **kw)
    with Manifest.load(tmp_path) as manifest:  # read, then closed (no -wal/-shm left open)
        return manifest


def test_figures_and_captions_from_europepmc(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _serve(
        ncbi, _zip([("mds52601.jpg", he_jpeg(3)), ("mds52602.jpg", he_jpeg(4)), ("s1.xlsx", b"x")])
    )
    manifest = _download(ncbi, tmp_path)
    rec = manifest.records["pmid:77"]
    assert (rec.route, rec.license, rec.pdf_path, rec.status) == (
        "europepmc",
        "CC BY-NC",
        None,
        "ok",
    )
    images = manifest.images_of(rec.id)
    assert [(i.source, i.figure_label, i.extra["file"]) for i in images] == [
        ("jats", "Figure 1.", "mds52601.jpg"),
        ("jats", "Figure 2.", "mds52602.jpg"),
    ]
    assert images[0].caption is not None
    assert images[0].caption.startswith("Deprivation inequalities")
    params = ncbi.requests_to(f"{REST}/supplementaryFiles")[0].params
    assert params == {"includeInlineImage": "true"}
    assert ncbi.requests_to("/pmc-oa-opendata/")  # the bucket was asked first


def test_hostile_zip_is_refused_and_the_pdf_route_follows(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _serve(ncbi, _zip([("mds52601.jpg", he_jpeg(3)), ("../../escape.jpg", he_jpeg(4))]))
    ncbi.files["/europepmc/articles/PMC77"] = (200, "application/pdf", make_pdf())
    rec = _download(ncbi, tmp_path).records["pmid:77"]
    assert rec.route == "europepmc-pdf"
    assert not (tmp_path.parent / "escape.jpg").exists()


def test_licence_refused_before_the_zip_is_fetched(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _serve(ncbi, _zip([("mds52601.jpg", he_jpeg(3))]))
    rec = _download(ncbi, tmp_path, policy=Policy("commercial")).records["pmid:77"]
    assert rec.reason == "licence: europepmc: CC BY-NC is not allowed by --licence commercial"
    assert rec.license == "CC BY-NC"
    assert not ncbi.requests_to(f"{REST}/supplementaryFiles")


def test_read_zip_limits_and_names() -> None:
    ok = _zip([("a/fig1.jpg", b"1"), ("a/s1.txt", b"22")])
    assert read_zip(ok) == {"a/fig1.jpg": b"1", "a/s1.txt": b"22"}
    for members, symlink, match in [
        ([("/etc/x.jpg", b"1")], None, "absolute path"),
        ([("a/../../x.jpg", b"1")], None, r"'\.\.' in path"),
        ([("C:/x.jpg", b"1")], None, "absolute path"),
        ([("a.jpg", b"1")], "link.jpg", "symbolic link"),
    ]:
        with pytest.raises(ArchiveError, match=match):
            read_zip(_zip(members, symlink=symlink))
    limits = ArchiveLimits(max_members=2, max_member_bytes=100, max_total_bytes=150)
    with pytest.raises(ArchiveError, match="too many members"):
        read_zip(_zip([(f"{i}.txt", b"x") for i in range(3)]), limits)
    with pytest.raises(ArchiveError, match="too large"):
        read_zip(_zip([("big.bin", b"0" * 101)]), limits)
    with pytest.raises(ArchiveError, match="unpacked size"):
        read_zip(_zip([("a.bin", b"0" * 80), ("b.bin", b"0" * 80)]), limits)
    with pytest.raises(ArchiveError, match="not a readable ZIP"):
        read_zip(b"PK\x03\x04 broken")


def test_zip_whose_header_lies_about_its_size() -> None:
    data = bytearray(_zip([("a.bin", b"0" * 5000)]))
    # Shrink the declared size in the central directory: reading must not trust it.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(ArchiveError):
        read_zip(bytes(data))


def _damaged_zips() -> dict[str, bytes]:
    """The ways a ZIP arrives broken, each with the words its refusal must carry."""
    good = _zip([("fig1.jpg", b"abc" * 2000)])
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fig1.jpg", b"abc" * 2000)
    body = 30 + len("fig1.jpg")  # where the member's data starts (no extra field)
    crc = bytearray(good)
    crc[body + 100] ^= 0xFF  # a flipped byte in stored data: only the CRC-32 sees it
    stream = bytearray(deflated.getvalue())
    stream[body] = 0x07  # deflate block type 3 (reserved): zlib refuses the stream
    method = bytearray(good)  # compression method 9 (Deflate64), which zipfile cannot read
    method[8:10] = (9).to_bytes(2, "little")
    central = method.rfind(b"PK\x01\x02")
    method[central + 10 : central + 12] = (9).to_bytes(2, "little")
    return {
        "CRC-32": bytes(crc),
        "corrupt data": bytes(stream),
        "compression method": bytes(method),
        "truncated": good[: len(good) - 30],
    }


@pytest.mark.parametrize("what", ["CRC-32", "corrupt data", "compression method", "truncated"])
def test_a_damaged_zip_is_refused_whole(what: str) -> None:
    with pytest.raises(ArchiveError, match=what):
        read_zip(_damaged_zips()[what])


def test_a_corrupt_zip_is_a_recorded_miss_and_the_pdf_route_follows(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    good = _zip([("mds52601.jpg", he_jpeg(3)), ("mds52602.jpg", he_jpeg(4))])
    body = 30 + len("mds52601.jpg")
    damaged = bytearray(good)
    damaged[body + 500] ^= 0xFF  # inside the first JPEG: the ZIP still opens, its CRC fails
    _serve(ncbi, bytes(damaged))
    ncbi.files["/europepmc/articles/PMC77"] = (200, "application/pdf", make_pdf())
    manifest = _download(ncbi, tmp_path)
    rec = manifest.records["pmid:77"]
    assert (rec.status, rec.route) == ("ok", "europepmc-pdf")
    assert manifest.images_of(rec.id) == []  # no figure of the damaged ZIP kept
    (miss,) = [m for m in rec.extra["route_misses"] if m.startswith("europepmc:")]
    assert "supplementaryFiles of PMC77" in miss and "CRC-32" in miss and "\n" not in miss


def test_failed_files_are_the_kept_routes_own(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """The bucket's figure files answer 404 and its PDF needs a password; Europe PMC then
    gives both figures. The record kept the bucket's three failures in
    extra.failed_files, so `histofetch status` counted 3 'files named but not kept' for a
    record whose figures were all kept; the kept route's list (empty) now replaces it, and
    the bucket's miss stays in route_misses."""
    from pdf_factory import encrypted_pdf

    from histofetch.status import run_status

    pmcid = "PMC77"
    figs = {"mds52601.jpg": he_jpeg(0), "mds52602.jpg": he_jpeg(1)}
    ncbi.bucket.add_version(pmcid, 1, jats=real_jats(), media=figs, pdf=encrypted_pdf())
    for name in figs:
        del ncbi.bucket.objects[f"{pmcid}.1/{name}"]
    _serve(ncbi, _zip(list(figs.items())))
    make_run(tmp_path, searched("1", pmcid))
    run_download(tmp_path, net=ncbi.config())
    with Manifest.load(tmp_path) as manifest:
        rec = manifest.records["pmid:1"]
        n_images = len(manifest.images_of(rec.id))
    assert (rec.status, rec.route, n_images) == ("ok", "europepmc", 2), rec.reason
    assert "failed_files" not in rec.extra, rec.extra["failed_files"]
    assert "needs a password" in rec.extra["route_misses"][0], rec.extra
    assert run_status(tmp_path)["failed_files"] == 0


def test_failed_files_of_a_record_no_route_kept_are_every_routes(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """No route keeps anything: the bucket's two figure files fail their MD5 check twice,
    Europe PMC's ZIP holds neither figure. extra.failed_files held only the last route's
    list (Europe PMC's two missing files), the bucket's MD5 failures gone from it; now it
    holds every route's, in the order the routes were tried."""
    from histofetch.status import run_status

    pmcid = "PMC77"
    figs = {"mds52601.jpg": he_jpeg(0), "mds52602.jpg": he_jpeg(1)}
    ncbi.bucket.add_version(pmcid, 1, jats=real_jats(), media=figs, pdf=None, wrong_md5=tuple(figs))
    _serve(ncbi, _zip([("s1.xlsx", b"x")]))
    manifest = _download(ncbi, tmp_path)
    rec = manifest.records["pmid:77"]
    assert rec.status == "failed", rec.reason
    failed = rec.extra["failed_files"]
    assert len(failed) == 4, failed
    assert ["MD5 mismatch" in f for f in failed] == [True, True, False, False], failed
    assert all("no file for href" in f for f in failed[2:]), failed
    routes = [f.split(": ", 1)[0] for f in failed]
    assert routes == ["pmc-cloud", "pmc-cloud", "europepmc", "europepmc"], failed
    assert run_status(tmp_path)["failed_files"] == 4


def test_failed_files_each_route_missing_the_same_file_is_a_line_of_its_own(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """Neither the bucket nor Europe PMC's ZIP has the JATS's two figure files: both routes
    wrote 'Figure 1.: no file for href …', the same text, and the record's list kept two
    lines for two routes' four misses (one route's lines lost). Each line now names its
    route."""
    from histofetch.status import run_status

    pmcid = "PMC77"
    other = {"unrelated1.jpg": he_jpeg(0), "unrelated2.jpg": he_jpeg(1)}  # hrefs match neither
    ncbi.bucket.add_version(pmcid, 1, jats=real_jats(), media=other, pdf=None)
    _serve(ncbi, _zip([("s1.xlsx", b"x")]))
    rec = _download(ncbi, tmp_path).records["pmid:77"]
    assert rec.status == "failed", rec.reason
    failed = rec.extra["failed_files"]
    routes = [f.split(": ", 1)[0] for f in failed]
    assert routes == ["pmc-cloud", "pmc-cloud", "europepmc", "europepmc"], failed
    assert all("no file for href" in f for f in failed), failed
    assert run_status(tmp_path)["failed_files"] == 4
