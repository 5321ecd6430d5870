"""External metrics on reviewed and weak labels, the weak-label noise rate, leakage exclusion."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import tiny_checkpoint
from PIL import Image as PILImage
from sklearn import metrics as skm
from typer.testing import CliRunner

from histocore.manifest import Image, Manifest, Record
from histomodels.cli import app
from histomodels.external_labels import label_tables, leakage_exclusions
from histomodels.metrics import MIN_PER_CLASS_FOR_CI
from histomodels.synthetic import make_figure

torch.set_num_threads(1)

# (reviewed label, weak label, leakage flags) per figure
FIGURES = [
    ("metastasis", "metastasis", None),
    ("metastasis", "no_metastasis", None),  # weak label wrong
    ("no_metastasis", "no_metastasis", None),
    ("no_metastasis", "metastasis", None),  # weak label wrong
    ("metastasis", "abstain", None),
    ("no_metastasis", "abstain", None),
    (None, "metastasis", None),
    (None, "no_metastasis", None),
    ("not_usable", "metastasis", None),
    (None, "abstain", None),
    ("metastasis", "metastasis", ["camelyon"]),  # leakage: left out by default
    ("no_metastasis", "no_metastasis", ["near_duplicate:fig02"]),  # a reprint of fig02
]


def _manifest(run: Path, with_files: bool) -> Manifest:
    m = Manifest(run_dir=run, query="synthetic")
    m.add_record(Record(id="pmid:1", stage="filtered"))
    for i, (label, weak, leak) in enumerate(FIGURES):
        rel = f"images/fig{i:02d}.png"
        w = h = 200
        if with_files:
            fig = np.full((3 * 96 + 80, 3 * 96 + 80, 3), 255, np.uint8)
            tumour = (label or weak) == "metastasis"
            fig[40:-40, 40:-40] = make_figure(3, 3, seed=i, tumour=tumour)
            (run / "images").mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(fig).save(run / rel)
            h, w = fig.shape[:2]
        m.add_image(
            Image(
                id=f"fig{i:02d}",
                record_id="pmid:1",
                path=rel,
                sha256="0" * 64,
                width=w,
                height=h,
                kept=True,
                label=label,
                weak_label=weak,
                leakage=leak,
            )
        )
    m.save()
    m.close()  # still readable; no open store (run.sqlite-wal/-shm) left for the collector
    return m


def test_label_tables_count_the_noise_rate(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "run", with_files=False)
    t = label_tables(m)
    assert t["n_excluded_leakage"] == 2
    assert set(t["excluded"]) == {"fig10", "fig11"}
    c = t["confusion"]
    assert c["metastasis"] == {
        "metastasis": 1, "no_metastasis": 1, "not_usable": 1, "unreviewed": 1
    }  # fmt: skip
    assert c["no_metastasis"] == {
        "metastasis": 1, "no_metastasis": 1, "not_usable": 0, "unreviewed": 1
    }  # fmt: skip
    assert c["abstain"] == {"metastasis": 1, "no_metastasis": 1, "not_usable": 0, "unreviewed": 1}
    assert t["n_both"] == 4 and t["noise_rate"] == pytest.approx(0.5)
    # 4 figures with both labels: resampling them gives no honest interval; none, and why
    assert t["noise_rate_ci"] is None
    assert t["noise_rate_ci_reason"] == (
        "too few figures with both labels for an interval: 4 (at least 10 needed)"
    )
    assert t["weak_metastasis_precision"] == pytest.approx(0.5)
    assert t["weak_labelled_but_not_usable"] == 1
    every = label_tables(m, include_leaky=True)
    assert every["n_both"] == 6 and every["noise_rate"] == pytest.approx(2 / 6)


def test_noise_rate_interval_from_the_metrics_minimum_of_figures(tmp_path: Path) -> None:
    """2 agreeing figures gave the noise rate 0.000 [0.000, 0.000]; an interval needs
    MIN_PER_CLASS_FOR_CI figures with both labels, as the metrics need of each class."""
    m = Manifest(run_dir=tmp_path / "run")
    m.add_record(Record(id="pmid:1", stage="filtered"))
    for i in range(MIN_PER_CLASS_FOR_CI):
        label = "metastasis" if i % 2 else "no_metastasis"
        weak = "metastasis" if i in (0, 1, 3) else label  # fig00 is wrong
        m.add_image(
            Image(id=f"f{i:02d}", record_id="pmid:1", path=f"images/f{i}.png", sha256="0" * 64,
                  width=9, height=9, kept=True, label=label, weak_label=weak)
        )  # fmt: skip
    t = label_tables(m)
    assert t["n_both"] == MIN_PER_CLASS_FOR_CI and t["noise_rate_ci_reason"] is None
    lo, hi = t["noise_rate_ci"]  # Wilson's score interval for 1 of 10
    assert t["noise_rate"] == pytest.approx(0.1)
    assert (lo, hi) == (pytest.approx(0.01788, abs=1e-4), pytest.approx(0.40415, abs=1e-4))
    for img in m.images.values():  # all 10 agreeing: a bootstrap gave [0, 0] at any size
        img.weak_label = img.label
    lo, hi = label_tables(m)["noise_rate_ci"]
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    for img in m.images.values():  # left with f01 and f02: 2 figures whose labels agree
        if img.id not in ("f01", "f02"):
            img.label = None
    t = label_tables(m)
    assert t["n_both"] == 2 and t["noise_rate"] == 0.0 and t["noise_rate_ci"] is None
    assert t["noise_rate_ci_reason"].startswith("too few figures with both labels")


def test_near_duplicates_keep_the_first_of_a_pair(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "run", with_files=False)
    m.images["fig02"].leakage = ["near_duplicate:fig11"]
    assert leakage_exclusions(m.kept_images()) == {
        "fig10": "camelyon",
        "fig11": "near-duplicate of fig02",
    }


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "image_scores.csv").open()))


def test_eval_reports_reviewed_and_weak_metrics_exact_against_sklearn(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _manifest(run, with_files=True)
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "ext"
    args = ["eval", str(ckpt), "--manifest", str(run), "--bootstrap", "100", "--scale", "1"]
    r = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    no_rate_ci = "too few figures with both labels for an interval: 4 (at least 10 needed)"
    assert f"weak-label noise rate 0.500 (no interval: {no_rate_ci}) on 4 figure" in r.output
    m = json.loads((out / "metrics.json").read_text())
    ext = m["external"]
    rows = _rows(out)
    assert m["n_excluded_leakage"] == 2
    used = [x for x in rows if not x["leakage"]]
    codes = {"metastasis": 1, "no_metastasis": 0}
    for kind, key in (("reviewed", "label"), ("weak", "weak_label")):
        lab = [x for x in used if x[key] in ("0", "1", "metastasis", "no_metastasis")]
        y = np.array([int(x[key]) if x[key] in "01" else codes[x[key]] for x in lab])
        assert ext[kind]["n"] == len(y) == 6
        for agg in ("max", "topk_mean"):
            s = np.array([float(x[agg]) for x in lab])
            got = ext[kind]["metrics"][agg]
            assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
            assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
            pred = (s >= 0.5).astype(int)
            assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
            assert got["f1"] == pytest.approx(
                # sklearn documents zero_division=np.nan; its hints say str
                skm.f1_score(y, pred, zero_division=np.nan),  # pyright: ignore[reportArgumentType]
                abs=1e-12,
                nan_ok=True,
            )
            # 6 figures: an interval from resampling them would mean nothing (it read
            # [1.000, 1.000] on 2); none, and why, in metrics.json and the printed line
            pos = int(y.sum())
            reason = f"too few figures for an interval: {pos} metastasis, {6 - pos} no_metastasis"
            assert got["ci"] is None and got["ci_reason"].startswith(reason)
            if kind == "reviewed":
                assert f"  {agg}: ROC AUC {got['roc_auc']:.4f} (no interval: {reason}" in r.output
    assert m["image_metrics"] == ext["reviewed"]["metrics"]  # what `report` reads
    assert ext["agreement"]["noise_rate"] == pytest.approx(0.5)
    assert ext["agreement"]["noise_rate_ci"] is None
    assert ext["agreement"]["noise_rate_ci_reason"] == no_rate_ci
    assert m["score_distribution"]["max"]["n"] == 9  # usable (not not_usable), non-leaky
    # with the flag, the leaky figures count
    out2 = tmp_path / "ext2"
    r = CliRunner().invoke(app, [*args, "--out", str(out2), "--include-leaky"])
    assert r.exit_code == 0, r.output
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["n_excluded_leakage"] == 0 and m2["external"]["reviewed"]["n"] == 8
    # the HTML report gains an "external test set" section with these tables
    rep = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(out), "--out", str(rep)])
    assert r.exit_code == 0, r.output
    page = (rep / "report.html").read_text()
    assert "External test set" in page and "weak-label noise rate" in page
    assert "model on caption weak labels" in page and "topk_mean (n=6)" in page
    # said once per column (the metrics table's, and max/topk_mean of reviewed and weak),
    # not in every metric's cell (the threshold's too)
    assert page.count(">none: too few figures for an interval: ") == 5, page
    # the noise rate's missing interval is said the same way: the rate alone, a row why
    # (it was inline, "0.500 (no interval: …) on 4 figures", a second style in one report)
    assert "(no interval" not in page
    assert "0.500 on 4 figures</td>" in page
    md = (rep / "report.md").read_text()
    assert "| weak-label noise rate | 0.500 on 4 figures |" in md
    assert f"| 95 % intervals | none: {no_rate_ci} |" in md
    if (out / "errors_sheet.png").exists():
        assert "most confident errors" in page


def test_eval_manifest_with_bootstrap_0_says_why_there_are_no_intervals(tmp_path: Path) -> None:
    """Review 23: ``eval --manifest --bootstrap 0`` printed each ROC AUC bare, nothing said
    of the intervals asked away (``--data`` says ``no 95% CI: --bootstrap 0``)."""
    run = tmp_path / "run"
    _manifest(run, with_files=True)
    ckpt = tiny_checkpoint(tmp_path)
    args = ["eval", str(ckpt), "--manifest", str(run), "--bootstrap", "0", "--scale", "1"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ext")])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if ": ROC AUC " in line]
    assert len(lines) == 4  # max and topk_mean, of reviewed and weak labels
    assert all(line.split(",")[0].endswith(" (no interval: --bootstrap 0)") for line in lines)


def test_one_class_labelled_is_said_not_blamed_on_bootstrap(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review 28: a reviewed set of one class (AUC undefined, no "ci" written) printed
    ``ROC AUC None (no interval: --bootstrap 0)`` with the default 1000 resamples; the
    metric's note was never shown."""
    from histomodels.cli.evaluate import _print_external

    note = "only one class labelled: AUC undefined"
    block = {"n": 3, "metrics": {"max": {"n": 3, "accuracy": 1.0, "note": note}}}
    result = {"n_images": 3, "n_tiles": 9, "n_excluded_leakage": 0, "bootstrap": 1000}
    result |= {"threshold": 0.5, "threshold_source": "checkpoint", "temperature": 1.0}
    _print_external({**result, "external": {"reviewed": block}}, Path("ext"))
    out = capsys.readouterr().out
    assert f"max: ROC AUC None (no interval: {note}), accuracy 1.0000" in out, out
    assert "--bootstrap 0" not in out


def test_nearest_hamming_distance() -> None:
    from histomodels.leakage import nearest

    ref = np.array([0b1111, 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64)
    q = np.array([0b1111, 0b0111, 0, 0xFFFF_FFFF_FFFF_FFF0], dtype=np.uint64)
    assert nearest(q, ref).tolist() == [0, 1, 4, 4]
    assert nearest(q, np.empty(0, np.uint64)).tolist() == [64] * 4


def test_figures_reprinting_training_patches_are_left_out(tmp_path: Path) -> None:
    """A paper showing PCam examples: its patch-sized figure is a training patch."""
    train = tmp_path / "train"
    patches = [make_figure(1, 1, seed=100 + k, tumour=k % 2 == 1) for k in range(6)]
    for k, p in enumerate(patches):
        (train / str(k % 2)).mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(p).save(train / str(k % 2) / f"p{k}.png")
    run = tmp_path / "run"
    m = Manifest(run_dir=run)
    m.add_record(Record(id="pmid:9", stage="filtered"))
    (run / "images").mkdir(parents=True)
    figures = {
        "reprint": patches[3],  # the same patch, re-encoded as JPEG by the journal
        "own": make_figure(2, 2, seed=7, tumour=True),
    }
    for name, rgb in figures.items():
        rel = f"images/{name}.jpg" if name == "reprint" else f"images/{name}.png"
        if name == "reprint":
            PILImage.fromarray(rgb).save(run / rel, quality=90)
        else:
            PILImage.fromarray(rgb).save(run / rel)
        h, w = rgb.shape[:2]
        m.add_image(Image(id=name, record_id="pmid:9", path=rel, sha256="0", width=w, height=h,
                          kept=True, label="metastasis", weak_label="metastasis"))  # fmt: skip
    m.save()
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "ext"
    args = ["eval", str(ckpt), "--manifest", str(run), "--scale", "1", "--bootstrap", "0"]
    r = CliRunner().invoke(app, [*args, "--out", str(out), "--train-data", str(train)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "metrics.json").read_text())
    assert list(res["training_duplicates"]) == ["reprint"]
    assert res["training_duplicates"]["reprint"] <= 4
    assert {x["image_id"]: x["leakage"] for x in _rows(out)} == {
        "reprint": "training_duplicate",
        "own": "",
    }
    assert res["n_excluded_leakage"] == 1 and res["external"]["reviewed"]["n"] == 1
    assert res["external"]["agreement"]["excluded"] == {"reprint": "training_duplicate"}
