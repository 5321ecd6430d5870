"""The offline demo runs the real flow end to end on a tiny budget."""

from __future__ import annotations

import json
import re

import pytest

from histocore.manifest import Manifest
from histomodels.demo import run_demo


@pytest.mark.slow
def test_demo_runs_whole_flow_and_filter_keeps_only_the_he_figures(tmp_path):
    summary = run_demo(tmp_path, minutes=0.15, n_train=256)

    manifest = Manifest.load(tmp_path / "fetch_run")
    kept = sorted(i.page or 0 for i in manifest.kept_images())
    assert kept == [1, 2]  # the two H&E figures; the heatmap and the bar chart are rejected
    assert {i.label for i in manifest.kept_images()} == {"metastasis", "no_metastasis"}

    metrics = json.loads((tmp_path / "run_cnn" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["roc_auc"] <= 1.0
    assert (tmp_path / "run_cnn" / "best.pt").is_file()
    assert (tmp_path / "run_cnn" / "literature_eval" / "image_scores.csv").is_file()
    page = (tmp_path / "report" / "report.html").read_text()
    assert len(page) > 10_000
    # every column says whose it is: the run just trained and the shipped pcam-cnn
    heads = set(re.findall(r"<th>([^<]*)</th>", page))
    assert {"run_cnn/eval", "run_cnn/literature_eval"} <= heads
    assert {"pcam-cnn/eval", "pcam-cnn/literature_eval"} <= heads and "eval" not in heads
    # the shipped pcam-cnn ran next to the synthetic run, on the same data, untrained here
    shipped = summary["pretrained_pcam_cnn"]
    assert 0.0 <= shipped["test"]["roc_auc"] <= 1.0 and "shipped" in shipped["threshold_source"]
    assert (tmp_path / "pcam_cnn" / "literature_eval" / "image_scores.csv").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=str)
    )
