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
    manifest = Manifest.load(run)
    assert {r.stage for r in manifest.records.values() if r.status == "ok"} == {"filtered"}
    assert any(i.source == "pdf" for i in manifest.images.values())
    before = manifest.path.read_text()
    n_requests = len(ncbi.log)
    again = runner.invoke(app, args, env=ncbi.env())
    assert again.exit_code == 0, again.output
    assert "searched: already done (3 records)" in again.output
    assert "downloaded: 0 done, 3 already done" in again.output
    assert len(ncbi.log) == n_requests  # nothing fetched again
    assert Manifest.load(run).path.read_text() == before


def test_cli_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"HISTOFETCH_EUTILS_URL": "http://127.0.0.1:9/", "HISTOFETCH_RETRIES": "0"}
    result = runner.invoke(app, ["search", "x", "--run", str(tmp_path / "r")], env=env)
    assert result.exit_code == 1
    assert "error: search failed: connection failed" in result.output
    result = runner.invoke(app, ["download", "--run", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "no manifest here" in result.output
    assert not (tmp_path / "nothing").exists()
    bad = runner.invoke(
        app, ["search", "x", "--run", str(tmp_path)], env={"HISTOFETCH_TIMEOUT": "soon"}
    )
    assert bad.exit_code == 1 and "HISTOFETCH_TIMEOUT" in bad.output


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
