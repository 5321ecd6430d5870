"""The external literature set: figures of a histofetch run → tiles → image-level scores."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import tiny_checkpoint
from conftest import names_the_file_in_the_way
from PIL import Image as PILImage
from typer.testing import CliRunner

from histocore.manifest import Image, Manifest, Record
from histomodels.cli import app
from histomodels.external import aggregate, evaluate_manifest
from histomodels.synthetic import make_figure

torch.set_num_threads(1)


def _run(tmp_path: Path, labels: list[str | None]) -> Path:
    """A run folder with SYNTHETIC figures at PCam scale, with white margins (background)."""
    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="synthetic")
    m.add_record(Record(id="pmid:1", stage="filtered"))
    for i, label in enumerate(labels):
        fig = np.full((3 * 96 + 80, 4 * 96 + 80, 3), 255, np.uint8)
        fig[40:-40, 40:-40] = make_figure(3, 4, seed=i, tumour=label != "no_metastasis")
        rel = f"images/fig{i}.png"
        (run / "images").mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(fig).save(run / rel)
        m.add_image(
            Image(
                id=f"pmid:1/fig{i}",
                record_id="pmid:1",
                path=rel,
                sha256="0" * 64,
                width=fig.shape[1],
                height=fig.shape[0],
                kept=True,
                label=label,
            )
        )
    m.save()
    m.close()  # no open store (run.sqlite-wal/-shm) left for the collector
    return run


def test_aggregate() -> None:
    p = np.array([0.1, 0.9, 0.5, 0.3])
    assert aggregate(p, 2) == pytest.approx({"max": 0.9, "topk_mean": 0.7})
    assert aggregate(p, 10)["topk_mean"] == pytest.approx(p.mean())
    assert np.isnan(aggregate(np.array([]), 3)["max"])


def test_unlabelled_run_gives_distribution_heatmaps_and_contact_sheet(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    run = _run(tmp_path, [None, None, None])
    out = tmp_path / "ext"
    r = CliRunner().invoke(
        app, ["eval", str(ckpt), "--manifest", str(run), "--out", str(out), "--top-k", "3"]
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == 3 and m["n_labelled"] == 0 and "image_metrics" not in m
    assert m["score_distribution"]["max"]["n"] == 3
    assert 0.0 <= m["score_distribution"]["max"]["min"] <= m["score_distribution"]["max"]["max"]
    rows = list(csv.DictReader((out / "image_scores.csv").open()))
    assert [float(r["max"]) for r in rows] == sorted((float(r["max"]) for r in rows), reverse=True)
    for r in rows:
        assert float(r["topk_mean"]) <= float(r["max"])
        assert int(r["n_tiles"]) >= 1 and r["scale_source"] in ("estimated", "default")
    tiles = list(csv.DictReader((out / "tile_predictions.csv").open()))
    assert len(tiles) == m["n_tiles"] == sum(int(r["n_tiles"]) for r in rows)
    # the image max is the max of that image's tile predictions
    first = rows[0]["image_id"]
    assert float(rows[0]["max"]) == pytest.approx(
        max(float(t["probability"]) for t in tiles if t["image_id"] == first), abs=1e-5
    )
    assert len(list((out / "heatmaps").glob("*.png"))) == 3
    assert (out / "contact_sheet.png").stat().st_size > 0
    assert (out / "score_hist_max.png").stat().st_size > 0


def test_an_ensemble_built_with_tta_is_recorded_as_tta(tmp_path: Path) -> None:
    """The figures' tiles score through the ensemble's own 8 views: metrics.json said
    ``tta: false`` without ``eval --tta``."""
    from _evalkit import train_tiny

    from histomodels.ensemble import write_ensemble

    members = [train_tiny(tmp_path / f"m{i}.pt", steps=5, seed=i) for i in range(2)]
    ens = write_ensemble(members, tmp_path / "ens", tta=True)
    out = tmp_path / "ext"
    r = CliRunner().invoke(app, ["eval", str(ens), "--manifest", str(_run(tmp_path, [None])),
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["tta"] is True and m["tta_inside_model"] is True


def test_manifest_eval_records_the_inference_precision(tmp_path: Path) -> None:
    """``eval --manifest --precision bf16`` scored in bf16 but metrics.json did not say so
    (``eval --data`` records ``inference_precision``): now both do."""
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "ext"
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--manifest", str(_run(tmp_path, [None])),
                                 "--out", str(out), "--precision", "bf16"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.json").read_text())["inference_precision"] == "bf16"
    # the last line named metrics.json, image_scores.csv, heatmaps/ and contact_sheet.png
    # alone: tile_predictions.csv (every tile's score) and the histograms were not said
    last = r.stdout.splitlines()[-1]
    assert last == (
        f"wrote {out}/metrics.json, image_scores.csv, tile_predictions.csv, heatmaps/, "
        "contact_sheet.png and plots"
    )
    named = [
        "metrics.json",
        "image_scores.csv",
        "tile_predictions.csv",
        "heatmaps",
        "contact_sheet.png",
    ]
    assert all((out / name).exists() for name in named)
    assert {p.name for p in out.iterdir() if p.suffix != ".png"} <= set(named)


def test_a_figure_without_tissue_tiles_does_not_stop_review_scores(tmp_path: Path) -> None:
    """A kept figure with no tissue tile gets ``nan`` scores and ``n_tiles`` 0 in
    image_scores.csv; ``histofetch review --scores`` refused that whole file, so the
    README's eval --manifest → review --scores flow stopped on any such figure."""
    review = pytest.importorskip("histofetch.review.data", reason="histofetch not installed")
    run = _run(tmp_path, [None])
    PILImage.fromarray(np.full((300, 300, 3), 255, np.uint8)).save(run / "images" / "white.png")
    m = Manifest.load(run)
    m.add_image(Image(id="pmid:1/white", record_id="pmid:1", path="images/white.png",
                      sha256="1" * 64, width=300, height=300, kept=True))  # fmt: skip
    m.save()
    m.close()
    out = tmp_path / "ext"
    r = CliRunner().invoke(app, ["eval", str(tiny_checkpoint(tmp_path)), "--manifest", str(run),
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    # the first line said "2 figure(s), N tissue tile(s) scored", as if both had a score
    assert re.match(
        r"2 figure\(s\), \d+ tissue tile\(s\) scored \(1 figure\(s\) without a "
        r"tissue tile: no score\); left out for leakage: 0$",
        r.stdout.splitlines()[0],
    )
    rows = {row["image_id"]: row for row in csv.DictReader((out / "image_scores.csv").open())}
    assert rows["pmid:1/white"]["n_tiles"] == "0" and rows["pmid:1/white"]["max"] == "nan"
    assert set(review.Scores.load(out).by_image) == {"pmid:1/fig0"}


def test_labelled_run_gives_image_metrics(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    run = _run(
        tmp_path, ["metastasis", "no_metastasis", "metastasis", "no_metastasis", "not_usable"]
    )
    out = tmp_path / "ext"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            str(ckpt),
            "--manifest",
            str(run),
            "--out",
            str(out),
            "--bootstrap",
            "50",
            "--scale",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == 4  # not_usable is left out
    assert m["n_labelled"] == 4
    for agg in ("max", "topk_mean"):
        assert 0.0 <= m["image_metrics"][agg]["roc_auc"] <= 1.0
        assert "ci" in m["image_metrics"][agg]
    assert (out / "roc.png").exists()
    # calibration is checked on the external set too
    assert (out / "reliability.png").exists()
    cal = m["calibration"]["topk_mean"]
    assert cal["fraction_positive"] == 0.5 and 0.0 <= cal["ece"] <= 1.0
    assert cal["brier"] == pytest.approx(m["image_metrics"]["topk_mean"]["brier"])
    # at the given scale the centred grid is exactly the 3x4 tissue area inside the margins
    rows = list(csv.DictReader((out / "image_scores.csv").open()))
    assert {r["scale_source"] for r in rows} == {"given"}
    assert all(10 <= int(r["n_tiles"]) <= 12 for r in rows)


def test_val_sets_the_figures_threshold_and_the_tiles_temperature(tmp_path: Path) -> None:
    """``eval --manifest --val`` was accepted and ignored (threshold 0.5, the model's T):
    now T is fitted and the threshold chosen on the validation patches, as ``eval --data
    --val`` does, and a figure is called positive when its score reaches that threshold."""
    from histomodels.calibration import calibration_path
    from histomodels.evaluate import evaluate_checkpoint
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    run = _run(tmp_path, ["metastasis", "no_metastasis", "metastasis", "no_metastasis"])
    val = write_h5(tmp_path / "val.h5", 128, seed=9)
    args = ["eval", str(ckpt), "--manifest", str(run), "--bootstrap", "0", "--scale", "1"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert plain["threshold"] == 0.5 and plain["threshold_source"].startswith("default 0.5")
    out = tmp_path / "fitted"
    r = CliRunner().invoke(app, [*args, "--out", str(out), "--val", str(val),
                                 "--threshold-rule", "youden"])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    # the operating point eval --data --val chooses on the same patches
    ref = evaluate_checkpoint(ckpt, val, tmp_path / "ref", val=val, threshold_rule="youden",
                              n_bootstrap=0, store_temperature="none", gallery=False)  # fmt: skip
    assert m["threshold"] == pytest.approx(ref["threshold"]) != 0.5
    assert m["temperature"] == pytest.approx(ref["temperature"]) != 1.0
    assert m["threshold_source"] == ref["threshold_source"] and m["validation"]["n"] == 128
    assert (
        m["temperature_stored"] == str(calibration_path(ckpt)) and calibration_path(ckpt).is_file()
    )
    assert f"threshold {m['threshold']:.4f}: youden" in r.output

    # tiles read with the fitted T: the same logits as without --val, divided by it
    def logits(folder: Path) -> np.ndarray:
        p = np.array([float(t["probability"]) for t in
                      csv.DictReader((folder / "tile_predictions.csv").open())])  # fmt: skip
        return np.log(p / (1 - p))

    fitted, raw = logits(out), logits(tmp_path / "plain")
    mid = (np.abs(raw) < 4) & (np.abs(fitted) < 4)  # where 6 printed decimals keep the logit
    assert mid.sum() > 10
    np.testing.assert_allclose(fitted[mid] * m["temperature"], raw[mid], atol=1e-3)
    # figures called at the fitted threshold
    rows = [r for r in csv.DictReader((out / "image_scores.csv").open())]
    y = np.array([r["label"] == "1" for r in rows])
    called = np.array([float(r["max"]) >= m["threshold"] for r in rows])
    assert m["image_metrics"]["max"]["accuracy"] == pytest.approx((called == y).mean())


def test_manifest_without_val_uses_the_shipped_threshold_as_data_does(tmp_path: Path) -> None:
    """``eval --manifest`` without ``--val`` used 0.5 while ``eval --data`` used the model's
    shipped threshold (pcam-cnn: 0.392); now both take it, and the output says where from."""
    from histomodels import pretrained

    shipped = pretrained.sidecar("pcam-cnn")["threshold"]
    run = _run(tmp_path, ["metastasis", "no_metastasis", "metastasis"])
    out = tmp_path / "ev"
    args = ["eval", "--model", "pcam-cnn", "--manifest", str(run), "--bootstrap", "0",
            "--scale", "1", "--out", str(out)]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["threshold"] == pytest.approx(shipped) != 0.5
    assert m["threshold_source"].startswith("shipped with the model (sensitivity>=0.9")
    assert f"threshold {shipped:.4f}: shipped with the model" in r.output
    rows = list(csv.DictReader((out / "image_scores.csv").open()))
    y = np.array([r["label"] == "1" for r in rows])
    called = np.array([float(r["max"]) >= shipped for r in rows])
    assert m["image_metrics"]["max"]["accuracy"] == pytest.approx((called == y).mean())


def test_manifest_eval_names_a_file_named_like_the_shipped_model_as_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval ./pcam-cnn --manifest RUN`` (a checkpoint file saved from the shipped model)
    wrote ``"checkpoint": "pcam-cnn"`` in metrics.json, which given again means the shipped
    model, and ``"shipped": true`` for a file; it writes ``./pcam-cnn`` and false, as
    ``eval --data`` does."""
    from histomodels.checkpoint import read_checkpoint, save_checkpoint

    run = _run(tmp_path, [None])
    monkeypatch.chdir(tmp_path)
    save_checkpoint("pcam-cnn", read_checkpoint("pcam-cnn"))  # its "pretrained" kept
    args = ["eval", "./pcam-cnn", "--manifest", str(run), "--out", "ext", "--bootstrap", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads(Path("ext/metrics.json").read_text())
    assert (m["checkpoint"], m["shipped"]) == ("./pcam-cnn", False)


def test_bad_manifest(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--manifest", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "nope: no such folder (give a histofetch run folder)" in r.output
    r = CliRunner().invoke(app, ["eval", str(ckpt)])
    assert r.exit_code == 2 and "exactly one of" in r.output  # a usage error


def test_image_scores_say_abstain_where_the_caption_rules_abstained(tmp_path: Path) -> None:
    """``weak_label`` in image_scores.csv was blank for an abstention, as for a figure the
    caption rules never read: it now says what the manifest says."""
    ckpt = tiny_checkpoint(tmp_path)
    run = _run(tmp_path, [None, None, None])
    with Manifest.load(run) as m:
        for n, weak in enumerate(["metastasis", "abstain", None]):
            m.update_image(f"pmid:1/fig{n}", weak_label=weak)
        m.save()
    out = tmp_path / "ext"
    args = ["eval", str(ckpt), "--manifest", str(run), "--out", str(out), "--scale", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = {r["image_id"]: r for r in csv.DictReader((out / "image_scores.csv").open())}
    assert {i: r["weak_label"] for i, r in rows.items()} == {
        "pmid:1/fig0": "metastasis",
        "pmid:1/fig1": "abstain",
        "pmid:1/fig2": "",
    }
    m = json.loads((out / "metrics.json").read_text())
    assert m["external"]["weak"]["n"] == 1  # an abstention is no negative


def test_val_scale_resizes_the_validation_patches_not_the_figures(tmp_path: Path) -> None:
    """``--val-scale`` (validation tiles at another magnification) reaches a manifest's
    --val set too: T and the threshold are those ``eval --data --val`` chooses on the
    same patches resized alike; the figures keep their own --scale."""
    from histomodels.evaluate import evaluate_checkpoint
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    run = _run(tmp_path, ["metastasis", "no_metastasis", "metastasis", "no_metastasis"])
    val = write_h5(tmp_path / "val.h5", 64, seed=9)
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--manifest", str(run), "--bootstrap", "0",
                                 "--scale", "1", "--val", str(val), "--val-scale", "0.5",
                                 "--threshold-rule", "youden", "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    ref = evaluate_checkpoint(ckpt, val, tmp_path / "ref", val=val, val_scale=0.5,
                              threshold_rule="youden", n_bootstrap=0, gallery=False)  # fmt: skip
    assert "scale" not in ref  # the test patches as they are, the validation's resized
    assert m["validation"]["scale"] == ref["validation"]["scale"] == 0.5
    assert m["temperature"] == pytest.approx(ref["temperature"])
    assert m["threshold"] == pytest.approx(ref["threshold"])
    assert m["temperature_stored"].startswith("not stored: fitted on images resized by 0.5")


def test_evaluate_manifest_out_under_a_file_names_the_file(tmp_path: Path) -> None:
    """``evaluate_manifest(..., a/ext)`` (``a`` a file) made its folder with a plain mkdir (see
    conftest.names_the_file_in_the_way)."""
    from histomodels.external import evaluate_manifest

    ckpt, run = tiny_checkpoint(tmp_path), _run(tmp_path, [None])
    names_the_file_in_the_way(tmp_path, lambda a: evaluate_manifest(ckpt, run, a / "ext"))


def test_tile_probabilities_read_as_their_call_at_the_threshold(tmp_path: Path) -> None:
    """tile_predictions.csv wrote 6 decimals while the threshold is kept exact: a tile
    just under it (or at it) could read as the other call, so recounting the calls from
    the CSV disagreed with metrics.json's. Now a cell has as many digits as it takes."""
    ckpt = tiny_checkpoint(tmp_path)
    run = _run(tmp_path, [None])
    args = ["eval", str(ckpt), "--manifest", str(run), "--bootstrap", "0"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    p = float(next(csv.DictReader((tmp_path / "a" / "image_scores.csv").open()))["max"])
    rounded = float(f"{p:.6f}")
    assert rounded != p
    # a threshold between the probability and its 6-decimal text: the two calls differ
    cut = float(np.nextafter(p, 1.0)) if rounded > p else p
    out = tmp_path / "b"
    evaluate_manifest(ckpt, run, out, threshold=cut, n_bootstrap=0)  # the library's option
    assert json.loads((out / "metrics.json").read_text())["threshold"] == cut
    tiles = [float(t["probability"]) for t in csv.DictReader((out / "tile_predictions.csv").open())]
    assert (max(tiles) >= cut) == (p >= cut)
