"""`histofetch search / download / run` end to end, with env vars pointing at the local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pymupdf
from ncbi_server import (
    Article,
    FakeNcbi,
    image_bytes,
    ncbi_fixture,  # noqa: F401 (fixture)
)
from s3_server import he_jpeg, real_jats
from typer.testing import CliRunner

from histocore.manifest import Manifest
from histocore.store import RunStore
from histofetch.cli import app
from histofetch.search import OA_FILTER

QUERY = "lymph node metastasis breast cancer"


def _pdf_with_image() -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=400)
    page.insert_image(
        pymupdf.Rect(50, 50, 250, 250), stream=image_bytes("PNG", (120, 120), (150, 60, 160))
    )
    page.insert_text((50, 280), "Figure 1. H&E stained section.")
    data = doc.tobytes()
    doc.close()
    return data


def _serve_three(ncbi: FakeNcbi) -> None:
    ncbi.add_article(Article("101", title="Cloud paper", pmcid="PMC101", doi="10.1/101"))
    ncbi.add_article(Article("102", title="PDF paper", pmcid="PMC102"))
    ncbi.add_article(Article("103", title="Paywalled paper"))
    ncbi.searches[QUERY] = ["101", "102", "103"]
    ncbi.searches[f"({QUERY}) AND {OA_FILTER}"] = ["101", "102"]
    media = {"mds52601.jpg": he_jpeg(0), "mds52602.jpg": he_jpeg(1)}
    ncbi.bucket.add_version("PMC101", 1, jats=real_jats(), media=media, pdf=_pdf_with_image())
    ncbi.files["/europepmc/articles/PMC102"] = (200, "application/pdf", _pdf_with_image())


def test_search_then_download_via_cli(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _serve_three(ncbi)
    runner = CliRunner()
    run = tmp_path / "lnm"
    result = runner.invoke(app, ["search", QUERY, "--run", str(run)], env=ncbi.env())
    assert result.exit_code == 0, result.output
    assert "searched: 3 done" in result.output
    result = runner.invoke(app, ["download", "--run", str(run)], env=ncbi.env())
    assert result.exit_code == 0, result.output
    assert "downloaded: 2 done, 0 already done, 1 failed" in result.output
    manifest = Manifest.load(run)
    routes = {r.pmid: r.route for r in manifest.records.values()}
    assert routes == {"101": "pmc-cloud", "102": "europepmc-pdf", "103": None}
    assert [i.source for i in manifest.images.values()] == ["jats", "jats"]
    assert manifest.records["pmid:103"].reason is not None
    assert manifest.records["pmid:103"].reason.startswith("no PMCID: pmc-cloud/europepmc")
    assert all(h.params.get("email") == "tests@example.org" for h in ncbi.log if "eutils" in h.path)
    status = runner.invoke(app, ["status", "--run", str(run), "--json"])
    info = json.loads(status.stdout)
    assert (info["records"], info["pdfs"], info["failed"]) == (3, 2, 1)
    assert info["failure_reasons"] == {"no PMCID": 1}


def test_run_does_all_stages_and_resumes(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _serve_three(ncbi)
    runner = CliRunner()
    run = tmp_path / "lnm"
    args = ["run", QUERY, "--run", str(run), "--max", "3"]
    result = runner.invoke(app, args, env=ncbi.env())
    assert result.exit_code == 0, result.output
    for stage in ("searched:", "downloaded:", "extracted:", "filtered:"):
        assert stage in result.output
    # as `filter` says it: how many were kept and where the sheets are (run said neither)
    assert f"scored images; sheets in {run / 'sheets'}" in result.output
    manifest = Manifest.load(run)
    assert {r.stage for r in manifest.records.values() if r.status == "ok"} == {"filtered"}
    assert any(i.source == "pdf" for i in manifest.images.values())
    before = manifest.path.read_text()
    n_requests = len(ncbi.log)
    again = runner.invoke(app, args, env=ncbi.env())
    assert again.exit_code == 0, again.output
    assert "searched: already done (3 records)" in again.output
    # the record whose download failed is not "already done"
    assert "downloaded: 0 done, 2 already done, 0 failed, 1 failed before" in again.output
    assert len(ncbi.log) == n_requests  # nothing fetched again
    assert Manifest.load(run).path.read_text() == before


def test_cli_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"HISTOFETCH_EUTILS_URL": "http://127.0.0.1:9/", "HISTOFETCH_RETRIES": "0"}
    result = runner.invoke(app, ["search", "x", "--run", str(tmp_path / "r")], env=env)
    assert result.exit_code == 1
    # the URL is the subject; what stopped follows (it read 'error: search failed: connection
    # failed (…): http://127.0.0.1:9/esearch.fcgi (gave up after 1 attempts)'); one attempt
    # is singular (it said '1 attempts')
    assert result.stderr == (
        "error: http://127.0.0.1:9/esearch.fcgi: connection failed (ConnectError: [Errno 111] "
        "Connection refused) (gave up after 1 attempt); search failed\n"
    )
    result = runner.invoke(app, ["download", "--run", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "nothing: no such folder (give a histofetch run folder)" in result.output
    assert not (tmp_path / "nothing").exists()
    bad = runner.invoke(
        app, ["search", "x", "--run", str(tmp_path)], env={"HISTOFETCH_TIMEOUT": "soon"}
    )
    assert bad.exit_code == 1 and "HISTOFETCH_TIMEOUT" in bad.output


def test_network_settings_out_of_bounds_are_one_error_line(tmp_path: Path) -> None:
    """HISTOFETCH_TIMEOUT=1e10 ended in a traceback (OverflowError from the socket's
    settimeout), HISTOFETCH_EUROPEPMC_RATE=1e-300 in one from the rate limiter, and
    HISTOFETCH_RETRIES=1e20 was taken (practically endless retries)."""
    env = {"HISTOFETCH_EUTILS_URL": "http://127.0.0.1:9/", "HISTOFETCH_BACKOFF": "0"}
    for var, value in [
        ("HISTOFETCH_TIMEOUT", "1e10"),
        ("HISTOFETCH_EUROPEPMC_RATE", "1e-300"),
        ("HISTOFETCH_RETRIES", "1e20"),
    ]:
        run = tmp_path / var
        done = CliRunner().invoke(app, ["search", "x", "--run", str(run)], env={**env, var: value})
        assert done.exit_code == 1, (var, done.output)
        assert done.output.splitlines() == [
            f"error: environment variable {var}={value!r}: give "
            + {
                "HISTOFETCH_TIMEOUT": "a number more than 0 and at most 86400",
                "HISTOFETCH_EUROPEPMC_RATE": "a number from 0.001 to 1000",
                "HISTOFETCH_RETRIES": "a whole number from 0 to 100",
            }[var]
        ]
        assert not run.exists()


def test_real_entry_point_in_a_subprocess(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _serve_three(ncbi)
    env = {**os.environ, **ncbi.env(), "NCBI_API_KEY": "KEY123"}
    cmd = [sys.executable, "-m", "histofetch.cli", "search", QUERY, "--run", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "searched: 3 done" in done.stdout
    assert ncbi.requests_to("/eutils/esearch.fcgi")[0].params["api_key"] == "KEY123"
    header = json.loads(Manifest.load(tmp_path).path.read_text().splitlines()[0])
    assert header["query"] == QUERY and header["last_search"]["count"] == 3


def test_help_of_network_commands_renders() -> None:
    runner = CliRunner()
    for command in ("search", "download", "run"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--run" in result.output
    assert "--mindate" in runner.invoke(app, ["search", "--help"]).output


def _serve_routes(ncbi: FakeNcbi) -> None:
    """One article per route, and two that every route misses (retracted, nowhere)."""
    import io
    import zipfile

    arts = [
        Article("1", title="Sentinel node metastases", pmcid="PMC101"),
        Article("2", title="Two versions", pmcid="PMC102"),
        Article("3", title="Europe PMC only", pmcid="PMC103"),
        Article("4", title="PDF render only", pmcid="PMC104"),
        Article("5", title="Publisher only"),
        Article("6", title="Nowhere", pmcid="PMC106"),
        Article("7", title="Retracted", pmcid="PMC107"),
    ]
    for art in arts:
        ncbi.add_article(art)
    ncbi.searches[QUERY] = [a.pmid for a in arts]
    ncbi.searches[f"({QUERY}) AND {OA_FILTER}"] = ["1", "2", "3", "7"]
    tiles = {"mds52601.jpg": he_jpeg(0), "mds52602.jpg": he_jpeg(1)}
    bucket = ncbi.bucket
    bucket.add_version("PMC101", 1, jats=real_jats(), media=tiles, pdf=_pdf_with_image())
    bucket.add_version("PMC102", 1, jats=real_jats(), media=tiles, license_code="CC BY-NC-ND")
    bucket.add_version("PMC102", 2, jats=real_jats(), media=tiles, is_manuscript=True)
    bucket.add_version("PMC107", 1, jats=real_jats(), media=tiles, is_retracted=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in tiles.items():
            zf.writestr(name, data)
    rest = "/europepmc/rest/PMC103"
    ncbi.files[f"{rest}/fullTextXML"] = (200, "application/xml", real_jats())
    ncbi.files[f"{rest}/supplementaryFiles"] = (200, "application/zip", buf.getvalue())
    ncbi.files["/europepmc/articles/PMC104"] = (200, "application/pdf", _pdf_with_image())
    ncbi.prlinks["5"] = [f"{ncbi.base}/publisher/5"]
    ncbi.files["/publisher/5"] = (200, "application/pdf", _pdf_with_image())


def test_run_lymph_node_query_routes_captions_licences(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _serve_routes(ncbi)
    runner = CliRunner()
    run = tmp_path / "lnm"
    result = runner.invoke(app, ["run", QUERY, "--run", str(run)], env=ncbi.env())
    assert result.exit_code == 0, result.output
    assert "downloaded: 5 done, 0 already done, 2 failed" in result.output
    manifest = Manifest.load(run)
    recs = {r.pmid: r for r in manifest.records.values()}
    assert {p: r.route for p, r in recs.items()} == {
        "1": "pmc-cloud",
        "2": "pmc-cloud",
        "3": "europepmc",
        "4": "europepmc-pdf",
        "5": "pubmed2pdf",
        "6": None,
        "7": None,
    }
    assert (recs["2"].pmc_version, recs["2"].license) == (1, "CC BY-NC-ND")
    assert recs["3"].license == "CC BY-NC"  # from the JATS <license>
    assert recs["6"].reason is not None
    assert recs["6"].reason.startswith("not in bucket: pmc-cloud: PMC106 is not in the PMC")
    for miss in ("europepmc: Europe PMC has no full text", "europepmc-pdf: HTTP 404", "pubmed2pdf"):
        assert miss in recs["6"].reason
    assert recs["7"].reason is not None
    assert recs["7"].reason.startswith("retracted: pmc-cloud")
    # Figures come from JATS with captions; the cloud PDF of PMC101 is not mined again.
    jats = [i for i in manifest.images.values() if i.source == "jats"]
    assert len(jats) == 6 and all(i.caption and i.figure_label for i in jats)
    assert {i.record_id for i in manifest.images.values() if i.source == "pdf"} == {
        "pmid:4",
        "pmid:5",
    }
    assert sum(1 for i in jats if i.kept) >= 4  # real H&E tiles pass the filter
    status = runner.invoke(app, ["status", "--run", str(run), "--json"])
    info = json.loads(status.stdout)
    assert info["routes"] == {
        "pmc-cloud": 2,
        "none": 2,
        "europepmc": 1,
        "europepmc-pdf": 1,
        "pubmed2pdf": 1,
    }
    assert info["figures_by_licence"]["CC BY"] == 2
    assert info["figures_by_licence"]["CC BY-NC-ND"] == 2
    assert info["figures_by_licence"]["CC BY-NC"] == 2
    assert info["failure_reasons"] == {"not in bucket": 1, "retracted": 1}
    text = runner.invoke(app, ["status", "--run", str(run)]).stdout
    assert "records by route: pmc-cloud 2" in text and "images by licence: " in text


def test_db_pmc_search_then_download_extract_filter_from_recorded_answers(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """`search --db pmc` walked through the chain on NCBI's recorded answers: the esearch
    db=pmc page (PMC uids, no PMC prefix) and the esummary db=pmc JSON of the same 200
    uids, then download (two articles in the bucket), extract and filter. PMC writes
    'pmid': '0' for an article without a PMID (57 of the 200): each became the record
    'pmid:0', the first one only, and the other 8 of the first 20 were counted 'already
    done' and lost."""

    docs = _replay_pmc_search(ncbi)
    first = docs["uids"][:20]
    no_pmid = [u for u in first if {"idtype": "pmid", "value": "0"} in docs[u]["articleids"]]
    assert len(no_pmid) == 9 and first[0] == "7771231"  # the recording's own facts
    media = {"mds52601.jpg": he_jpeg(0), "mds52602.jpg": he_jpeg(1)}
    for uid in (first[0], no_pmid[0]):
        ncbi.bucket.add_version(f"PMC{uid}", 1, jats=real_jats(), media=media)
    runner = CliRunner()
    run = tmp_path / "pmc"
    args = ["search", QUERY, "--db", "pmc", "--max", "20", "--run", str(run)]
    result = runner.invoke(app, args, env=ncbi.env())
    assert result.exit_code == 0, result.output
    assert "searched: 20 done" in result.output, result.output
    with Manifest.load(run) as manifest:
        recs = dict(manifest.records)
    assert len(recs) == 20 and "pmid:0" not in recs
    assert recs["pmid:33328347"].pmcid == "PMC7771231"
    bare = recs[f"pmcid:PMC{no_pmid[0]}"]
    assert (bare.pmid, bare.doi, bare.open_access) == (None, "10.1186/s12985-020-01477-w", True)
    assert not ncbi.requests_to("/idconv/")  # esummary db=pmc gives the ids

    for step in ("download", "extract", "filter"):
        result = runner.invoke(app, [step, "--run", str(run)], env=ncbi.env())
        assert result.exit_code == 0, result.output
    with Manifest.load(run) as manifest:
        done = {r.id: r for r in manifest.records.values() if r.status == "ok"}
        assert set(done) == {"pmid:33328347", f"pmcid:PMC{no_pmid[0]}"}
        assert {r.stage for r in done.values()} == {"filtered"}
        assert {r.route for r in done.values()} == {"pmc-cloud"}
        assert bare.id in done and done[bare.id].pmid is None  # the bucket JSON has none
        figures = [i for i in manifest.images.values() if i.parent_id is None]
        assert len(figures) == 4 and {i.source for i in figures} == {"jats"}


def _stale_run(run: Path, uid: str, *others: str) -> None:
    """A run searched before 617df23: the record 'pmid:0' of PMC article ``uid`` (without
    a PMID then), first, then the records ``pmid:<other>``."""
    from run_factory import make_run, searched

    from histocore.manifest import Record

    stale = Record(id="pmid:0", pmid="0", pmcid=f"PMC{uid}", stage="downloaded", title="old")
    make_run(run, stale, *(searched(pmid) for pmid in others))


def _search_pmc(ncbi: FakeNcbi, run: Path) -> str:
    args = ["search", QUERY, "--db", "pmc", "--max", "20", "--run", str(run)]
    result = CliRunner().invoke(app, args, env=ncbi.env())
    assert result.exit_code == 0, result.output
    return result.output


def _record_order(run: Path) -> list[str]:
    """Record ids in the order manifest.jsonl lists them (the store's ``seq``)."""
    lines = (run / "manifest.jsonl").read_text().splitlines()[1:]
    return [row["id"] for row in map(json.loads, lines) if row["kind"] == "record"]


def test_db_pmc_search_renames_a_record_pmid_0_of_an_earlier_search_in_place(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """A run searched before 617df23 holds the first PMC article without a PMID as the
    record 'pmid:0'. Searching it again added 'pmcid:PMCn' beside it, the same article
    twice; 8681033 renamed it, but as a new row: it moved behind the records added after
    it (the export listed 'pmid:999' first). Now the row is renamed where it stands."""
    docs = _replay_pmc_search(ncbi)
    uid = "7770741"  # the first hit of the recording whose esummary pmid is "0"
    assert {"idtype": "pmid", "value": "0"} in docs[uid]["articleids"]
    run = tmp_path / "pmc"
    _stale_run(run, uid, "999")
    output = _search_pmc(ncbi, run)
    assert "searched: 19 done, 1 already done" in output, output
    with Manifest.load(run) as manifest:
        recs = dict(manifest.records)
    assert len(recs) == 21 and "pmid:0" not in recs
    adopted = recs[f"pmcid:PMC{uid}"]
    assert (adopted.pmid, adopted.stage, adopted.title) == (None, "downloaded", "old")
    assert _record_order(run)[:2] == [f"pmcid:PMC{uid}", "pmid:999"]


def test_db_pmc_search_keeps_pmid_0_that_has_images_and_says_so(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """'pmid:0' with image rows: their ids, files (images/pmid_0/), labels, review log lines
    and --scores CSV rows are all keyed by 'pmid:0'. 8681033 renamed the rows and left the
    files, the review log and the scores behind; now the record keeps its id (the hit counts
    as already done, never a second record) and one warning line says why."""
    from histocore.manifest import Image

    _replay_pmc_search(ncbi)
    uid = "7770741"
    run = tmp_path / "pmc"
    _stale_run(run, uid)
    (run / "images" / "pmid_0").mkdir(parents=True)
    (run / "images" / "pmid_0" / "fig_a.png").write_bytes(b"png")
    with Manifest.load(run) as manifest:
        manifest.add_image(
            Image(
                id="pmid:0/fig_a",
                record_id="pmid:0",
                path="images/pmid_0/fig_a.png",
                sha256="a" * 64,
                width=8,
                height=8,
                source="jats",
                label="metastasis",
                label_by="reviewer",
            )
        )
        manifest.save()
    before = (run / "manifest.jsonl").read_text().splitlines()
    output = _search_pmc(ncbi, run)
    assert "searched: 19 done, 1 already done" in output, output
    warned = [line for line in output.splitlines() if "pmid:0" in line]
    assert len(warned) == 1 and f"PMC{uid}" in warned[0] and "1 image" in warned[0], output
    # it was not renamed: 'record pmid:0 is pmcid:PMC… now, but keeps its id' read as if it was
    assert f"record pmid:0 keeps its id (not renamed pmcid:PMC{uid}): " in warned[0], output
    with Manifest.load(run) as manifest:
        recs = dict(manifest.records)
        images = dict(manifest.images)
    assert len(recs) == 20 and f"pmcid:PMC{uid}" not in recs
    assert recs["pmid:0"].title == "old" and set(images) == {"pmid:0/fig_a"}
    assert images["pmid:0/fig_a"].label == "metastasis"
    after = (run / "manifest.jsonl").read_text().splitlines()
    assert [line for line in after if "pmid:0" in line] == before[1:]  # rows as they were
    assert (run / "images" / "pmid_0" / "fig_a.png").read_bytes() == b"png"


def test_a_process_that_read_pmid_0_before_the_rename_cannot_write_it_back(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """A stage or the review page that loaded the run before the search renamed 'pmid:0'
    wrote the row back when it committed it (a second copy of the article, beside the
    renamed one). Now its claim is refused and the record dropped from its memory (the
    stage skips it)."""
    _replay_pmc_search(ncbi)
    uid = "7770741"
    run = tmp_path / "pmc"
    _stale_run(run, uid)
    with Manifest.load(run) as stale:
        _search_pmc(ncbi, run)
        assert not stale.claim("pmid:0", "extracted")
        assert "pmid:0" not in stale.records  # dropped: the store holds it under its new id
        stale.commit()  # nothing of the old row is written back
    with Manifest.load(run) as manifest:
        recs = dict(manifest.records)
    assert "pmid:0" not in recs and f"pmcid:PMC{uid}" in recs


def test_a_stale_commit_of_pmid_0_fails_and_writes_nothing(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """A process that changed the old row and commits it after the rename (it resurrected
    'pmid:0' beside the renamed record): the commit fails with one error naming the new
    id, and writes nothing of that transaction."""
    import pytest

    from histocore.manifest import ManifestError

    _replay_pmc_search(ncbi)
    uid = "7770741"
    run = tmp_path / "pmc"
    _stale_run(run, uid, "999")
    with Manifest.load(run) as stale:
        _search_pmc(ncbi, run)
        stale.records["pmid:0"].stage = "extracted"
        stale.records["pmid:999"].title = "changed"
        with pytest.raises(ManifestError, match=f"pmid:0 .*pmcid:PMC{uid}"):
            stale.commit()
        with pytest.raises(ManifestError, match=f"pmcid:PMC{uid}"):
            stale.commit_record("pmid:0")
    with Manifest.load(run) as manifest:
        recs = dict(manifest.records)
    assert "pmid:0" not in recs and recs[f"pmcid:PMC{uid}"].stage == "downloaded"
    assert recs["pmid:999"].title is None  # the failed commit wrote nothing


def test_db_pmc_search_renames_pmid_0_of_an_article_that_now_has_a_pmid(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """An article that had no PMID when the run was searched ('pmid:0', or 'pmcid:PMCn'
    after 617df23) and has one now: the search added 'pmid:NNN' beside it. Now the record
    is renamed 'pmid:NNN' (its PMID set) when nothing is keyed by its old id."""
    docs = _replay_pmc_search(ncbi)
    uid, pmid = "7771231", "33328347"  # the recording gives this article a PMID
    assert {"idtype": "pmid", "value": pmid} in docs[uid]["articleids"]
    run = tmp_path / "pmc"
    _stale_run(run, uid)
    output = _search_pmc(ncbi, run)
    assert "searched: 19 done, 1 already done" in output, output
    with Manifest.load(run) as manifest:
        recs = dict(manifest.records)
    assert len(recs) == 20 and "pmid:0" not in recs
    assert (recs[f"pmid:{pmid}"].pmid, recs[f"pmid:{pmid}"].title) == (pmid, "old")
    run2 = tmp_path / "pmc2"  # a record a search after 617df23 made, PMID-less then
    from run_factory import make_run

    from histocore.manifest import Record

    make_run(run2, Record(id="pmcid:PMC7771052", pmcid="PMC7771052", stage="searched"))
    output = _search_pmc(ncbi, run2)
    assert "searched: 19 done, 1 already done" in output, output
    with Manifest.load(run2) as manifest:
        recs = dict(manifest.records)
    assert len(recs) == 20 and "pmcid:PMC7771052" not in recs
    assert recs["pmid:33238123"].pmcid == "PMC7771052"


def _pubmed_finds_pmc_article(ncbi: FakeNcbi, run: Path, pmcid: str) -> str:
    """A PubMed search whose first hit is the PMC article ``pmcid`` (a PMID now: its
    esummary and idconv name the PMCID), then a new article; the CLI output."""
    ncbi.add_article(Article("40000001", title="now in PubMed", pmcid=pmcid))
    ncbi.add_article(Article("40000002", title="another"))
    ncbi.searches[QUERY] = ["40000001", "40000002"]
    result = CliRunner().invoke(app, ["search", QUERY, "--run", str(run)], env=ncbi.env())
    assert result.exit_code == 0, result.output
    return result.output


def test_pubmed_search_renames_the_pmcid_record_of_a_db_pmc_search(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """A --db pmc search made 'pmcid:PMC7770741' of an article without a PMID; a PubMed
    search finding that article under its PMID now added 'pmid:40000001' beside it (the
    article twice: 'searched: 2 done'). Now the record is renamed in place, its PMID set."""
    _replay_pmc_search(ncbi)
    uid = "7770741"  # esummary pmid "0" in the recording
    run = tmp_path / "pmc"
    assert "searched: 20 done" in _search_pmc(ncbi, run)
    with Manifest.load(run) as manifest:
        manifest.records[f"pmcid:PMC{uid}"].stage = "downloaded"
        manifest.save()
    before = _record_order(run)
    output = _pubmed_finds_pmc_article(ncbi, run, f"PMC{uid}")
    assert "searched: 1 done, 1 already done" in output, output
    with Manifest.load(run) as manifest:
        recs = dict(manifest.records)
    assert len(recs) == 21 and f"pmcid:PMC{uid}" not in recs
    adopted = recs["pmid:40000001"]
    assert (adopted.pmid, adopted.pmcid, adopted.stage) == ("40000001", f"PMC{uid}", "downloaded")
    where = before.index(f"pmcid:PMC{uid}")
    assert _record_order(run)[where] == "pmid:40000001"  # its place in the run kept
    assert _record_order(run)[-1] == "pmid:40000002"
    run2 = tmp_path / "stale"  # 'pmid:0' of a search before 617df23 likewise
    _stale_run(run2, uid)
    output = _pubmed_finds_pmc_article(ncbi, run2, f"PMC{uid}")
    assert "searched: 1 done, 1 already done" in output, output
    with Manifest.load(run2) as manifest:
        assert set(manifest.records) == {"pmid:40000001", "pmid:40000002"}
        assert manifest.records["pmid:40000001"].title == "old"


def test_a_search_applies_its_rename_to_a_record_another_search_renamed_meanwhile(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """A PubMed search finding PMC7770741 under PMID 40000001, while a --db pmc search of
    the same run renamed its 'pmid:0' 'pmcid:PMC7770741': the PubMed search warned 'record
    pmid:0 is pmcid:PMC7770741 now, not pmid:40000001', counted the hit done and left the
    record 'pmcid:PMC7770741'; only a third search renamed it. Now it renames it on, at
    once, with no warning (the run ends as the two searches one after the other leave it)."""
    from histofetch.search import run_search

    _replay_pmc_search(ncbi)
    uid = "7770741"
    run = tmp_path / "pmc"
    _stale_run(run, uid, "999")

    def pmc_search_lands() -> None:  # while the PubMed search waits on NCBI's idconv
        summary = run_search(run, QUERY, db="pmc", max_results=20, net=ncbi.config())
        assert (summary.done, summary.skipped) == (19, 1)

    ncbi.before["/idconv/"] = pmc_search_lands
    output = _pubmed_finds_pmc_article(ncbi, run, f"PMC{uid}")
    assert not ncbi.before, "the PMC search did not run"
    assert "searched: 1 done, 1 already done" in output, output
    assert "warning" not in output, output
    assert f"record pmcid:PMC{uid} (a PMC article without a PMID then) is now pmid:40000001" in (
        output
    )
    with Manifest.load(run) as manifest:
        recs = dict(manifest.records)
    assert "pmid:0" not in recs and f"pmcid:PMC{uid}" not in recs
    adopted = recs["pmid:40000001"]
    assert (adopted.pmid, adopted.pmcid, adopted.title) == ("40000001", f"PMC{uid}", "old")
    assert _record_order(run)[:2] == ["pmid:40000001", "pmid:999"]  # its place kept
    assert len(recs) == 22  # 19 PMC hits added, pmid:999, pmid:40000002


def test_a_pmc_search_finds_the_article_under_its_pmid(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """PMC's esummary writes "pmid": "0" for PMC7770741: a --db pmc search added
    'pmcid:PMC7770741' beside the run's 'pmid:40000001' of the same article, whether a PubMed
    search made that record first or renamed the PMC one (review of 271894f). The PMC hit is
    matched by its PMCID against every record and counted already done."""
    _replay_pmc_search(ncbi)
    uid = "7770741"
    pubmed_first, renamed = tmp_path / "pubmed_first", tmp_path / "renamed"
    _pubmed_finds_pmc_article(ncbi, pubmed_first, f"PMC{uid}")
    assert "searched: 19 done, 1 already done" in _search_pmc(ncbi, pubmed_first)
    assert "searched: 20 done" in _search_pmc(ncbi, renamed)
    _pubmed_finds_pmc_article(ncbi, renamed, f"PMC{uid}")  # renames pmcid:PMC7770741
    assert "searched: 0 done, 20 already done" in _search_pmc(ncbi, renamed)
    for run in (pubmed_first, renamed):
        with Manifest.load(run) as manifest:
            same = [r.id for r in manifest.records.values() if r.pmcid == f"PMC{uid}"]
            assert same == ["pmid:40000001"], (run.name, same)
            assert len(manifest.records) == 21
    # a hit that has a PMID (PMC7771231: 33328347) is its own record, whatever else names
    # its PMCID (review of 29a03b8: it was skipped, unsaid)
    from run_factory import make_run

    from histocore.manifest import Record

    other = tmp_path / "other"
    make_run(other, Record(id="pmid:50000001", pmid="50000001", pmcid="PMC7771231"))
    assert "searched: 20 done" in _search_pmc(ncbi, other)
    with Manifest.load(other) as manifest:
        assert "pmid:33328347" in manifest.records and len(manifest.records) == 21


def test_pubmed_search_keeps_a_pmcid_record_with_images_and_says_so(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """'pmcid:PMCn' with image rows keeps its id (files, labels, review log and scores name
    it): the PubMed hit of that article counts as already done, with one warning line."""
    from run_factory import make_run

    from histocore.manifest import Image, Record

    run = tmp_path / "pmc"
    rid = "pmcid:PMC7770741"
    make_run(run, Record(id=rid, pmcid="PMC7770741", stage="extracted"))
    with Manifest.load(run) as manifest:
        manifest.add_image(
            Image(
                id=f"{rid}/fig_a",
                record_id=rid,
                path="images/pmcid_PMC7770741/fig_a.png",
                sha256="a" * 64,
                width=8,
                height=8,
                source="jats",
            )
        )
        manifest.save()
    output = _pubmed_finds_pmc_article(ncbi, run, "PMC7770741")
    assert "searched: 1 done, 1 already done" in output, output
    warned = [line for line in output.splitlines() if rid in line]
    assert len(warned) == 1 and "pmid:40000001" in warned[0] and "1 image" in warned[0], output
    assert f"record {rid} keeps its id (not renamed pmid:40000001): " in warned[0], output
    with Manifest.load(run) as manifest:
        assert set(manifest.records) == {rid, "pmid:40000002"}
        assert set(manifest.images) == {f"{rid}/fig_a"}


def _pmcid_record_with_images(run: Path, rid: str, n: int) -> None:
    """``rid`` ('pmcid:PMCn') in ``run``, extracted, with ``n`` image rows keyed by it."""
    from run_factory import make_run

    from histocore.manifest import Image, Record

    pmcid = rid.removeprefix("pmcid:")
    if not run.exists():
        make_run(run, Record(id=rid, pmcid=pmcid, stage="extracted"))
    with Manifest.load(run) as manifest:
        for i in range(n):
            manifest.add_image(
                Image(
                    id=f"{rid}/fig_{i}",
                    record_id=rid,
                    path=f"images/pmcid_{pmcid}/fig_{i}.png",
                    sha256=f"{i:064x}",
                    width=8,
                    height=8,
                    source="jats",
                )
            )
        manifest.save()


def test_a_refused_rename_warns_once_for_a_record_and_reason(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    """'pmcid:PMC7770741' with image rows keeps its id at every PubMed search that finds its
    article, and every such search warned 'record … keeps its id' again, about a record
    that nothing had changed. Now the run remembers the refusal: a later search meeting the
    same one says it with -v only; a new reason (a second image row) warns again."""
    rid = "pmcid:PMC7770741"
    run = tmp_path / "pmc"
    _pmcid_record_with_images(run, rid, 1)

    def warned(output: str) -> list[str]:
        return [line for line in output.splitlines() if f"record {rid} keeps its id" in line]

    first = _pubmed_finds_pmc_article(ncbi, run, "PMC7770741")
    assert len(warned(first)) == 1 and "warning: " in warned(first)[0], first
    again = _pubmed_finds_pmc_article(ncbi, run, "PMC7770741")
    assert "searched: 0 done, 2 already done" in again and warned(again) == [], again
    args = ["-v", "search", QUERY, "--run", str(run)]
    verbose = CliRunner().invoke(app, args, env=ncbi.env())
    assert verbose.exit_code == 0, verbose.output
    assert [line.split("(not renamed")[1] for line in warned(verbose.output)] == [
        line.split("(not renamed")[1] for line in warned(first)
    ], verbose.output
    assert "warning: " not in warned(verbose.output)[0], verbose.output
    _pmcid_record_with_images(run, rid, 2)  # now 2 image rows: another reason
    other = _pubmed_finds_pmc_article(ncbi, run, "PMC7770741")
    assert len(warned(other)) == 1 and "its 2 image rows" in warned(other)[0], other
    with Manifest.load(run) as manifest:
        assert set(manifest.records) == {rid, "pmid:40000002"}
        manifest.drop_images_of(rid)
        manifest.save()
    _pubmed_finds_pmc_article(ncbi, run, "PMC7770741")  # renamed now: nothing to remember
    store = RunStore(run)
    assert store.meta(f"renamed:{rid}") == "pmid:40000001"
    assert store.meta(f"rename_refused:{rid}") is None
    store.close()


def test_two_new_pmids_of_one_pmcid_are_two_records(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """Two new PMIDs that idconv maps to one PMCID (an article and, say, its erratum) in one
    PubMed search: a second PMID of one PMCID is a record of its own. A PMID-less record of
    that PMCID ('pmid:0', 'pmcid:PMCn' of a --db pmc search) is taken by the first PMID:
    renamed to it, or kept under its id when refused (it warned twice in one search then,
    and the second PMID was counted already done, unlike when the rename went through)."""
    from run_factory import make_run

    from histocore.manifest import Record

    pmcid = "PMC7770741"
    ncbi.add_article(Article("40000001", title="the article", pmcid=pmcid))
    ncbi.add_article(Article("40000003", title="its erratum", pmcid=pmcid))
    ncbi.searches[QUERY] = ["40000001", "40000003"]

    def search(run: Path) -> tuple[str, dict]:
        result = CliRunner().invoke(app, ["search", QUERY, "--run", str(run)], env=ncbi.env())
        assert result.exit_code == 0, result.output
        with Manifest.load(run) as manifest:
            return result.output, {r.id: r for r in manifest.records.values()}

    output, recs = search(tmp_path / "new")
    assert "searched: 2 done" in output, output
    assert {rid: r.pmcid for rid, r in recs.items()} == {
        "pmid:40000001": pmcid,
        "pmid:40000003": pmcid,
    }
    renamed = tmp_path / "renamed"
    make_run(renamed, Record(id=f"pmcid:{pmcid}", pmcid=pmcid, stage="downloaded"))
    output, recs = search(renamed)
    assert "searched: 1 done, 1 already done" in output, output
    assert list(recs) == ["pmid:40000001", "pmid:40000003"], list(recs)
    assert (recs["pmid:40000001"].stage, recs["pmid:40000003"].stage) == ("downloaded", "searched")
    kept = tmp_path / "kept"
    _pmcid_record_with_images(kept, f"pmcid:{pmcid}", 1)
    output, recs = search(kept)
    assert "searched: 1 done, 1 already done" in output, output
    assert output.count("keeps its id") == 1, output
    assert list(recs) == [f"pmcid:{pmcid}", "pmid:40000003"], list(recs)
    output, recs = search(kept)  # a later search: the same
    assert "searched: 0 done, 2 already done" in output, output
    assert list(recs) == [f"pmcid:{pmcid}", "pmid:40000003"], list(recs)


def _replay_pmc_search(ncbi: FakeNcbi) -> dict:
    """NCBI's recorded esearch/esummary answers for db=pmc served for QUERY; the esummary
    result (uids and their documents)."""
    from conftest import shared_path

    from histofetch.search import PMC_OA_FILTER

    esearch = shared_path("fixtures", "ncbi", "esearch_pmc_ecology_retmax200.xml").read_bytes()
    summaries = shared_path("fixtures", "ncbi", "esummary_pmc_v2_json_200ids.json").read_bytes()
    ncbi.first_page_body[f"({QUERY}) AND {PMC_OA_FILTER}"] = esearch
    ncbi.esummary_recorded["pmc"] = summaries
    return json.loads(summaries)["result"]


def test_a_query_matching_nothing_says_so_and_exits_0(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """It printed only "searched: 0 done, 0 already done, 0 failed"."""
    said = "searched: 0 done, 0 already done, 0 failed; the query matched no articles in PubMed"
    for command in ("search", "run"):
        run = tmp_path / command
        args = [command, "abcXYZ nothing", "--run", str(run)]
        result = CliRunner().invoke(app, args, env=ncbi.env())
        assert result.exit_code == 0, result.output
        assert said in result.stdout.splitlines(), result.output
