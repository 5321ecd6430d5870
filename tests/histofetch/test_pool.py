"""--jobs: extract and filter in worker processes, downloads in threads; same result as one
worker, the parent committing each record."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ncbi_server import FakeNcbi, ncbi_fixture  # noqa: F401 (fixture)
from pdf_factory import build_image_pdf, he_like, random_rgb
from s3_server import he_jpeg, real_jats

from histocore.manifest import MANIFEST_NAME, Manifest, Record
from histofetch.download import run_download
from histofetch.extract import run_extract
from histofetch.filter import run_filter

LIST = "/pmc-oa-opendata/"


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pdfs")
    for k in range(6):
        images = [he_like(160, 160, seed=k), random_rgb(120, 120, seed=50 + k)]
        build_image_pdf(folder / f"paper{k}.pdf", images, caption=f"Figure {k}: H&E")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")  # fails cleanly
    return folder


def test_extract_and_filter_with_two_workers_equal_one(tmp_path: Path, pdfs: Path) -> None:
    runs = {}
    for jobs in (1, 2):
        run = tmp_path / "run" / str(jobs)
        run_extract(run, [pdfs], jobs=jobs)
        extracted = (run / MANIFEST_NAME).read_text()
        summary = run_filter(run, sheet=False, jobs=jobs)
        assert (summary.done, summary.failed) == (6, 0)
        runs[jobs] = (extracted, (run / MANIFEST_NAME).read_text())
        images = sorted(p.relative_to(run).as_posix() for p in (run / "images").rglob("*"))
        runs[jobs] += (images,)
    assert runs[1] == runs[2]
    m = Manifest.load(tmp_path / "run" / "2")
    assert len(m.records) == 7 and len(m.images) == 12
    assert [r.status for r in m.records.values()].count("failed") == 1


def _cloud(ncbi: FakeNcbi, pmcid: str, n: int) -> None:
    media = {"mds52601.jpg": he_jpeg(n), "mds52602.jpg": he_jpeg(n + 1)}
    ncbi.bucket.add_version(pmcid, 1, jats=real_jats(), media=media)


def test_downloads_run_side_by_side_and_equal_one_at_a_time(ncbi: FakeNcbi, tmp_path: Path) -> None:
    one, three = tmp_path / "one", tmp_path / "three"
    m = Manifest.load(one, create=True)
    for n in (61, 62, 63):
        _cloud(ncbi, f"PMC{n}", n)
        m.add_record(Record(id=f"pmid:{n}", pmid=str(n), pmcid=f"PMC{n}"))
    m.save()
    shutil.copytree(one, three)
    run_download(one, net=ncbi.config())

    hang = f"{LIST}PMC61.1/mds52601.jpg"  # the first record's figure is slow...
    ncbi.inject(hang, ("sleep", 4.0))
    seen = len(ncbi.log)
    summary = run_download(three, net=ncbi.config(), jobs=3)
    assert summary.done == 3
    slow = ncbi.requests_to(hang)[-1].time
    others = [r for r in ncbi.log[seen:] if "PMC62" in r.path or "PMC63" in r.path]
    # ...and the other records were fetched while it waited, not after it (one at a time,
    # their first request would come more than 4 s after the slow one)
    assert {r.path.split("/")[2][:5] for r in others} == {"PMC62", "PMC63"}
    assert max(r.time for r in others) < slow + 3.9
    got = (three / MANIFEST_NAME).read_text().replace(str(three), str(one))
    assert got == (one / MANIFEST_NAME).read_text()
