"""File and image ids that a spreadsheet would run as formulas: the CSV outputs of
``predict`` and ``eval`` (PCam-style and ``--manifest``) quote them, the JSON outputs keep
them exact, and our own readers of those CSVs get the ids back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import tiny_checkpoint
from PIL import Image as PILImage
from typer.testing import CliRunner

from histocore.csvcells import read_cell
from histocore.manifest import Image, Manifest, Record
from histomodels.cli import app
from histomodels.label import read_label_csv
from histomodels.synthetic import make_figure, make_patches

torch.set_num_threads(1)

NAMES = ["=1+1", "@SUM(1)", "+A1", "-2+3", "'=quoted", "-5", "plain"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_quotes_a_file_named_as_a_formula(tmp_path: Path, monkeypatch) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    patches, _ = make_patches(len(NAMES), seed=3)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, patch in zip(NAMES, patches, strict=True):
        PILImage.fromarray(patch).save(folder / f"{name}.png")
    monkeypatch.chdir(folder)  # so the path cells start with the file names
    names = [f"{n}.png" for n in NAMES]
    args = ["predict", "--out", str(tmp_path / "p.csv"), "--", str(ckpt), *names]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    paths = [row["path"] for row in _rows(tmp_path / "p.csv")]
    assert paths == ["'=1+1.png", "'@SUM(1).png", "'+A1.png", "'-2+3.png", "''=quoted.png",
                     "'-5.png", "plain.png"]  # fmt: skip
    assert [read_cell(p) for p in paths] == names


def test_eval_quotes_patch_ids_of_a_kaggle_set(tmp_path: Path) -> None:
    """Kaggle ids are the CSV's and the TIFF names: ``train/=1+1.tif`` is a real file."""
    ckpt = tiny_checkpoint(tmp_path)
    x, y = make_patches(12, seed=4)
    ids = [*NAMES, *(f"p{i}" for i in range(len(NAMES), 12))]
    root = tmp_path / "k"
    (root / "train").mkdir(parents=True)
    with (root / "train_labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label"])
        for i, name in enumerate(ids):
            w.writerow([name, int(y[i])])
            PILImage.fromarray(x[i]).save(root / "train" / f"{name}.tif")
    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--data", str(root), "--out", str(out),
                                 "--bootstrap", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    cells = [row["id"] for row in _rows(out / "predictions.csv")]
    # a plain number is no formula: "-5" stays as it is
    assert cells[:7] == ["'=1+1", "'@SUM(1)", "'+A1", "'-2+3", "''=quoted", "-5", "plain"]
    assert [read_cell(c) for c in cells] == ids


def test_eval_manifest_quotes_image_ids_and_readers_get_them_back(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="q")
    m.add_record(Record(id="=1+1", stage="filtered"))
    (run / "images").mkdir(parents=True)
    for i, label in enumerate(["metastasis", "no_metastasis"]):
        fig = np.full((3 * 96 + 80, 4 * 96 + 80, 3), 255, np.uint8)
        fig[40:-40, 40:-40] = make_figure(3, 4, seed=i, tumour=label == "metastasis")
        PILImage.fromarray(fig).save(run / "images" / f"=fig{i}.png")
        m.add_image(Image(id=f"=1+1/fig{i}", record_id="=1+1", path=f"images/=fig{i}.png",
                          sha256="0" * 64, width=fig.shape[1], height=fig.shape[0],
                          kept=True, label=label))  # fmt: skip
    m.save()
    m.close()
    out = tmp_path / "ext"
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--manifest", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    scores = _rows(out / "image_scores.csv")
    assert {s["image_id"] for s in scores} == {"'=1+1/fig0", "'=1+1/fig1"}
    assert {s["record_id"] for s in scores} == {"'=1+1"}
    tiles = _rows(out / "tile_predictions.csv")
    assert all(t["id"].startswith("'=1+1/fig") and t["image_id"][0] == "'" for t in tiles)
    # a label CSV made from it names the images themselves
    labels = read_label_csv(out / "image_scores.csv")
    assert labels == {"=1+1/fig0": "metastasis", "=1+1/fig1": "no_metastasis"}
    assert "'" not in json.dumps(json.loads((out / "metrics.json").read_text()))
    review = pytest.importorskip("histofetch.review.data", reason="histofetch not installed")
    assert set(review.Scores.load(out).by_image) == {"=1+1/fig0", "=1+1/fig1"}
