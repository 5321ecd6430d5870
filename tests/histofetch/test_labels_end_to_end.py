"""The issue's "done when": `histofetch run` → `histofetch review` → `histomodels eval
--manifest` gives external metrics with CIs and the weak-label noise rate.

The network is a loopback NCBI + PMC Cloud bucket (recorded shapes, see ncbi_server.py);
the figures are real Camelyon16 tiles when ../shared is present (synthetic H&E-like
otherwise) under lymph-node captions written for the test.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from conftest import SHARED
from ncbi_server import Article, FakeNcbi, ncbi_fixture  # noqa: F401 (fixture)
from PIL import Image as PILImage
from starlette.testclient import TestClient
from typer.testing import CliRunner

from histocore.manifest import Manifest
from histofetch.cli import app as histofetch
from histofetch.review.app import create_app

QUERY = "sentinel lymph node metastasis"
CAPTIONS = {
    "ln01": "Metastatic carcinoma in an axillary lymph node (H&E, x200).",
    "ln02": "Sentinel lymph node with isolated tumour cells (H&E).",
    "ln03": "No evidence of metastatic carcinoma in the sentinel lymph node (H&E).",
    "ln04": "Reactive lymph node, H&E.",
    "ln05": "Lymph node, H&E x100.",
}


def _jats(pmcid: str) -> bytes:
    figs = "".join(
        f'<fig id="f{n}"><label>Figure {n}</label><caption><p>{cap.replace("&", "&amp;")}</p>'
        f'</caption><graphic xlink:href="{href}"/></fig>'
        for n, (href, cap) in enumerate(CAPTIONS.items(), start=1)
    )
    return (
        '<?xml version="1.0"?><article xmlns:xlink="http://www.w3.org/1999/xlink" '
        'article-type="research-article"><front><article-meta>'
        f'<article-id pub-id-type="pmc">{pmcid}</article-id>'
        "<title-group><article-title>Sentinel nodes</article-title></title-group>"
        '<permissions><license license-type="open-access" '
        'xlink:href="https://creativecommons.org/licenses/by/4.0/"/></permissions>'
        f"</article-meta></front><body>{figs}</body></article>"
    ).encode()


def _tile(n: int, tumour: bool) -> bytes:
    folder = SHARED / "data" / "camelyon16_tiles_didsr" / ("tumor" if tumour else "normal")
    tiles = sorted(folder.glob("*.webp")) if folder.exists() else []
    if tiles:
        with PILImage.open(tiles[n % len(tiles)]) as im:
            rgb = np.asarray(im.convert("RGB").resize((288, 288)))
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from pdf_factory import he_like

        rgb = he_like(288, 288, seed=n)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_run_review_eval(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.add_article(Article("11", title="Sentinel nodes in breast cancer", pmcid="PMC211"))
    ncbi.searches[QUERY] = ["11"]
    media = {f"{k}.jpg": _tile(n, tumour=n < 2) for n, k in enumerate(CAPTIONS)}
    ncbi.bucket.add_version("PMC211", 1, jats=_jats("PMC211"), media=media)
    run = tmp_path / "run"
    r = CliRunner().invoke(histofetch, ["run", QUERY, "--run", str(run)], env=ncbi.env())
    assert r.exit_code == 0, r.output
    m = Manifest.load(run)
    kept = {i.id.rsplit("_", 1)[-1]: i for i in m.kept_images()}
    weak = {k[-4:]: i.weak_label or "" for k, i in kept.items()}
    assert len(kept) == 5, [(i.id, i.filter_reason) for i in m.images.values()]
    assert sorted(weak.values()) == sorted(
        ["metastasis", "metastasis", "no_metastasis", "no_metastasis", "abstain"]
    )
    # review: a person agrees except for the reactive node (a metastasis on a closer look)
    client = TestClient(create_app(run, reviewer="pathologist"))
    truth = {"metastasis": "metastasis", "no_metastasis": "no_metastasis", "abstain": None}
    for img in m.kept_images():
        assert img.weak_label is not None
        label = truth[img.weak_label]
        if "Reactive" in (img.caption or ""):
            label = "metastasis"
        if label:
            ok = client.post("/api/label", json={"id": img.id, "label": label})
            assert ok.status_code == 200
    # eval on the reviewed run (histomodels reads it through histocore only)
    sys.path.insert(0, str(Path(__file__).parents[1] / "histomodels"))
    from _evalkit import tiny_checkpoint

    from histomodels.cli import app as histomodels

    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "eval"
    args = ["eval", str(ckpt), "--manifest", str(run), "--out", str(out), "--bootstrap", "200"]
    args += ["--scale", "1"]  # 40x tiles shrunk to 288 px: the nucleus estimate would cut none
    r = CliRunner().invoke(histomodels, args)
    assert r.exit_code == 0, r.output
    assert "weak-label noise rate 0.250" in r.output
    res = json.loads((out / "metrics.json").read_text())
    agree = res["external"]["agreement"]
    assert agree["n_both"] == 4 and agree["noise_rate"] == 0.25
    assert agree["confusion"]["no_metastasis"]["metastasis"] == 1
    assert res["external"]["reviewed"]["n"] == 4 and res["external"]["weak"]["n"] == 4
    assert "ci" in res["external"]["reviewed"]["metrics"]["max"]
