"""``eval --data FOLDER --scale F``: tile folders at another magnification are resized by
predict's resize, then fitted to the model's input size (a centre crop where larger, whole
where smaller) and scored. Before, ``--scale`` was refused with ``--data`` (exit 2) and a
folder of 256 px tiles stopped at ``image is 256x256 px, expected 96x96``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm
from typer.testing import CliRunner

from histocore.imaging import rescale
from histomodels.cli import app
from histomodels.evaluate import evaluate_checkpoint
from histomodels.inference import Predictor, sigmoid
from histomodels.synthetic import make_figure, make_patches

torch.set_num_threads(1)
# on the CPU also where a GPU is visible: compared with the library on the CPU to 2e-6
EVAL = ["eval", "--model", "pcam-cnn", "--bootstrap", "0", "--device", "cpu"]


def _tiles(folder: Path, sizes: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """A class-folder tree of SYNTHETIC tiles: PCam-like patches enlarged to ``sizes[i]``
    px (as if seen at a higher magnification). Returns {id: pixels} as written."""
    x, y = make_patches(len(sizes), seed=seed)
    written = {}
    for i, (img, label, size) in enumerate(zip(x, y, sizes, strict=True)):
        big = rescale(img, size / 96)
        cls = "tumor" if label else "normal"
        (folder / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(folder / cls / f"t{i}.png")
        written[f"{cls}/t{i}.png"] = big
    return written


def _probs(csv_path: Path) -> dict[str, float]:
    with csv_path.open() as f:
        return {r["id"]: float(r["probability"]) for r in csv.DictReader(f)}


def _library_probs(images: dict[str, np.ndarray]) -> dict[str, float]:
    """pcam-cnn's probability for each image as given (the library, no eval)."""
    pred = Predictor.load("pcam-cnn", device="cpu")
    out = {}
    for pid, img in images.items():
        out[pid] = float(sigmoid(pred.logits(np.stack([img])), pred.temperature)[0])
    return out


def _centre(img: np.ndarray, size: int = 96) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y : y + size, x : x + size]


def test_scale_scores_what_an_explicit_resize_scores(tmp_path: Path) -> None:
    tiles = _tiles(tmp_path / "x40", [192] * 8)
    out = tmp_path / "o"
    r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "x40"), "--scale", "0.5",
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = _probs(out / "predictions.csv")
    m = json.loads((out / "metrics.json").read_text())
    assert m["scale"] == 0.5 and m["scored_px"] == [96, 96] and m["n"] == 8
    assert "resized by 0.5, scored at 96x96 px" in r.stdout.splitlines()[0]
    # the report says so beside the test data, as eval's first line does
    r = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "resized (scored at)" in html and "by 0.5 (96x96 px)" in html
    # the same tiles resized first by the library, then evaluated as plain 96 px patches
    for pid, img in tiles.items():
        dest = tmp_path / "pre" / pid
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rescale(img, 0.5)).save(dest)
    r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "pre"), "--out",
                                 str(tmp_path / "p")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert _probs(tmp_path / "p" / "predictions.csv") == got
    want = _library_probs({k: rescale(v, 0.5) for k, v in tiles.items()})
    assert got == pytest.approx(want, abs=2e-6)
    assert m["roc_auc"] == pytest.approx(
        skm.roc_auc_score([k.startswith("tumor") for k in got], list(got.values()))
    )
    # predict --scale 0.5 resizes each 192 px file to one 96 px patch: the same probability
    csv_out = tmp_path / "pred.csv"
    args = ["predict", "--model", "pcam-cnn", str(tmp_path / "x40"), "--scale", "0.5",
            "--device", "cpu"]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--no-heatmaps", "--out", str(csv_out)])
    assert r.exit_code == 0, r.output
    with csv_out.open() as f:
        rows = {Path(row["path"]).relative_to(tmp_path / "x40").as_posix(): row
                for row in csv.DictReader(f)}  # fmt: skip
    assert {k: float(v["probability"]) for k, v in rows.items()} == got


def test_mixed_sizes_larger_than_a_patch_are_centre_cropped(tmp_path: Path) -> None:
    tiles = _tiles(tmp_path / "mixed", [192, 256, 192, 288])  # 96, 128, 96, 144 px at 0.5
    out = tmp_path / "o"
    r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "mixed"), "--scale", "0.5",
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    want = _library_probs({k: _centre(rescale(v, 0.5)) for k, v in tiles.items()})
    assert _probs(out / "predictions.csv") == pytest.approx(want, abs=2e-6)


def test_smaller_images_are_scored_whole_and_val_is_resized_alike(tmp_path: Path) -> None:
    tiles = _tiles(tmp_path / "test", [128] * 6, seed=1)  # 64 px at 0.5: scored whole
    _tiles(tmp_path / "val", [128] * 8, seed=2)
    out = tmp_path / "o"
    got = evaluate_checkpoint("pcam-cnn", tmp_path / "test", out, val=tmp_path / "val",
                              scale=0.5, n_bootstrap=0, device="cpu", gallery=False)  # fmt: skip
    assert got["scored_px"] == [64, 64] and got["validation"]["n"] == 8
    pred = Predictor.load("pcam-cnn", device="cpu")
    logits = pred.logits(np.stack([rescale(v, 0.5) for v in tiles.values()]))
    want = dict(zip(tiles, sigmoid(logits, got["temperature"]).tolist(), strict=True))
    assert _probs(out / "predictions.csv") == pytest.approx(want, abs=2e-6)
    # without a scale the same folders are refused: they are not the model's 96 px; the
    # line names the option that reads them (it stopped at "expected 96x96")
    r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "test"), "--out", str(out)])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.strip().endswith(
        "image is 128x128 px, expected 96x96; for tiles of another size or magnification "
        "give --scale F (0.25 for 40x tiles: PCam is ~10x)"
    )
    # the --val tiles: the option that reads them is --val-scale (--scale would also
    # resize the 96 px --data patches; review 3)
    _tiles(tmp_path / "p96", [96] * 4, seed=3)
    r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "p96"), "--val",
                                 str(tmp_path / "test"), "--out", str(out)])  # fmt: skip
    assert r.exit_code == 1 and r.stderr.strip().endswith("give --val-scale F (0.25 for 40x "
                                                          "tiles: PCam is ~10x)")  # fmt: skip


@pytest.mark.parametrize(
    ("sizes", "scale", "message"),
    [
        # 64 and 80 px after the resize, both under 96 px: scored whole, so not one batch
        ([128, 160, 128], 0.5, "the images come out at 2 sizes: 64x64 px (2, e.g. normal/t0"),
        ([128, 60], 0.5, "60x60 at scale 0.5 is 30x30, smaller than 32 px, PCam's label"),
        # enlarged whole before the centre is cut: bounded like predict's --max-pixels
        ([600], 16, "600x600 at scale 16 is 9600x9600 pixels, over the limit of 64000000"),
    ],
)
def test_sizes_that_cannot_be_scored_are_one_error_line(
    tmp_path: Path, sizes: list[int], scale: float, message: str
) -> None:
    _tiles(tmp_path / "d", sizes)
    out = tmp_path / "o"
    r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "d"), "--scale", str(scale),
                                 "--out", str(out)])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr
    assert not out.exists()  # nothing written


def test_models_that_enlarge_their_input_refuse_smaller_tiles(tmp_path: Path) -> None:
    """An ensemble enlarges what it is given to each member's input size: 64 px tiles (128
    px at 0.5) were scored at ~15x instead of 10x, while eval said "scored at 64x64 px"
    (an ensemble of pcam-cnn with itself: specificity 0.07 against pcam-cnn's 0.87 on the
    Camelyon16 tiles). Tiles that come out at the input size are scored as before."""
    from histomodels.checkpoint import read_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "copy.pt", read_checkpoint("pcam-cnn"))
    ens = tmp_path / "ens.pt"
    r = CliRunner().invoke(app, ["ensemble", "pcam-cnn", str(tmp_path / "copy.pt"),
                                 "--out", str(ens)])  # fmt: skip
    assert r.exit_code == 0, r.output
    tiles = _tiles(tmp_path / "d", [128] * 4)
    args = ["eval", str(ens), "--bootstrap", "0", "--data", str(tmp_path / "d"), "--device", "cpu"]
    r = CliRunner().invoke(app, [*args, "--scale", "0.5", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        f"error: folders:{tmp_path / 'd'}: at scale 0.5 the images are 64x64 px, and this "
        "model enlarges its input to 96 px itself (another magnification); give a --scale at "
        "which they are at least 96 px, or score them with a single model"
    ]
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(app, [*args, "--scale", "0.75", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output  # 96 px: what the members take
    want = _library_probs({k: rescale(v, 0.75) for k, v in tiles.items()})  # same weights
    assert _probs(tmp_path / "o" / "predictions.csv") == pytest.approx(want, abs=1e-5)


def test_a_temperature_fitted_on_scaled_tiles_is_not_stored(tmp_path: Path) -> None:
    """eval --scale --val fitted T on the resized tiles and stored it beside the checkpoint
    (calibration.json, no scale in it); every later eval and predict at PCam scale used
    that T (on the ensemble of the finding: ECE 0.057 became 0.314)."""
    from histomodels.checkpoint import read_checkpoint, save_checkpoint

    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, read_checkpoint("pcam-cnn"))
    _tiles(tmp_path / "test", [192] * 6, seed=1)
    _tiles(tmp_path / "val", [192] * 8, seed=2)
    got = evaluate_checkpoint(ckpt, tmp_path / "test", tmp_path / "o", val=tmp_path / "val",
                              scale=0.5, n_bootstrap=0, device="cpu", gallery=False)  # fmt: skip
    assert got["temperature_stored"].startswith("not stored: fitted on images resized by 0.5")
    assert not list(tmp_path.glob("*.calibration.json"))
    # at PCam scale (no --scale) it is stored, as before
    _tiles(tmp_path / "val96", [96] * 8, seed=2)
    got = evaluate_checkpoint(ckpt, tmp_path / "val96", tmp_path / "o2", val=tmp_path / "val96",
                              n_bootstrap=0, device="cpu", gallery=False)  # fmt: skip
    assert (tmp_path / "m.calibration.json").is_file()


def test_a_histofetch_run_as_data_is_refused_with_a_scale(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.jsonl").write_text("")
    r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "run"), "--scale", "0.5",
                                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code == 1 and "a histofetch run" in r.stderr


def test_tiles_at_another_magnification_get_predicts_warning(tmp_path: Path) -> None:
    """eval --data FOLDER --scale 1 on 40x tiles scored them silently (Camelyon16's 89
    tiles: AUC 0.33) where predict warned from the nucleus size; eval now measures the
    first images after --scale, for --data and --val alike, and warns once each."""
    for i, cls in enumerate(("normal", "tumor", "normal", "tumor")):
        fig = make_figure(2, 2, seed=i)  # drawn at PCam scale, 192 px
        (tmp_path / "x40" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(fig).resize((768, 768), Image.Resampling.BICUBIC).save(
            tmp_path / "x40" / cls / f"f{i}.png"
        )

    def run(scale: str, *extra: str) -> list[str]:
        r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "x40"), "--scale", scale,
                                     "--out", str(tmp_path / f"o{scale}"), *extra])  # fmt: skip
        assert r.exit_code == 0, r.output
        return [line for line in r.stderr.splitlines() if "the nuclei in" in line]

    (line,) = run("1")
    assert line.startswith(f"warning: {tmp_path / 'x40'}: the nuclei in 4 checked image(s) look")
    assert "larger than in PCam patches" in line and "at --scale 1:" in line
    suggested = float(line.split("try --scale ")[1].split()[0])
    assert 0.15 <= suggested <= 0.35  # the true factor is 0.25
    assert run("0.25") == []  # 192 px at PCam scale: measured, no warning
    data_line, val_line = run("1", "--val", str(tmp_path / "x40"))  # --data's and --val's
    assert "at --scale 1:" in data_line and "try --scale 0." in data_line
    # the --val set's line names the option that sets its scale, whether given or not
    assert "at --val-scale 1:" in val_line and "try --val-scale 0." in val_line
    (val_line,) = run("0.25", "--val", str(tmp_path / "x40"), "--val-scale", "1")
    assert "at --val-scale 1:" in val_line
    assert json.loads((tmp_path / "o1" / "metrics.json").read_text())["n"] == 4


def test_camelyon16_40x_tiles_at_quarter_scale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The 89 real 40x 256 px Camelyon16 tiles: resized to PCam's ~10x (64 px) pcam-cnn
    separates them; at their own magnification (--scale 1: the centre 96 px at 40x) it calls
    nearly all tumour and ranks them worse than chance. (The slides may be among PCam's
    sources, so this checks the magnification, not generalisation to new slides.)"""
    from conftest import shared_path

    folder = shared_path("data", "camelyon16_tiles_didsr")
    with caplog.at_level("WARNING", logger="histomodels.predict"):
        quarter = evaluate_checkpoint("pcam-cnn", folder, tmp_path / "q", scale=0.25,
                                      n_bootstrap=0, device="cpu", gallery=False)  # fmt: skip
        assert not [r for r in caplog.records if "the nuclei in" in r.getMessage()]
        own = evaluate_checkpoint("pcam-cnn", folder, tmp_path / "o", scale=1.0,
                                  n_bootstrap=0, device="cpu", gallery=False)  # fmt: skip
    (warned,) = [r.getMessage() for r in caplog.records if "the nuclei in" in r.getMessage()]
    assert "8 checked image(s) look" in warned and "larger than in PCam" in warned
    assert quarter["n"] == own["n"] == 89 and quarter["scored_px"] == [64, 64]
    assert quarter["roc_auc"] > 0.9
    assert quarter["roc_auc"] > own["roc_auc"] + 0.3


def test_val_scale_reads_validation_tiles_at_their_own_magnification(tmp_path: Path) -> None:
    """--val was read with --scale, so PCam-scale validation patches could not go with a
    test folder of 40x tiles (--scale 0.25 made them 24 px: refused). --val-scale resizes
    them on their own: 1 reads PCam patches as they are, and T is the one fitted on them
    at PCam scale."""
    _tiles(tmp_path / "x40", [384] * 6, seed=1)  # 96 px at 0.25
    _tiles(tmp_path / "pcam", [96] * 8, seed=2)
    args = [*EVAL, "--data", str(tmp_path / "x40"), "--scale", "0.25",
            "--val", str(tmp_path / "pcam")]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o1")])
    assert r.exit_code == 1 and "at scale 0.25 is 24x24, smaller than 32 px" in r.stderr
    r = CliRunner().invoke(app, [*args, "--val-scale", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert got["scale"] == 0.25 and got["scored_px"] == [96, 96]
    assert got["validation"]["scale"] == 1.0 and got["validation"]["n"] == 8
    at_pcam = evaluate_checkpoint("pcam-cnn", tmp_path / "pcam", tmp_path / "o2",
                                  val=tmp_path / "pcam", n_bootstrap=0, device="cpu",
                                  gallery=False)  # fmt: skip
    assert got["temperature"] == pytest.approx(at_pcam["temperature"], abs=1e-6)
    assert "scale" not in at_pcam["validation"]
    # it acts on a --val set only: without one it is a usage error, as --sensitivity is
    r = CliRunner().invoke(app, [*EVAL, "--data", str(tmp_path / "x40"), "--scale", "0.25",
                                 "--val-scale", "1", "--out", str(tmp_path / "o3")])  # fmt: skip
    assert r.exit_code == 2 and "--val-scale" in r.output
    assert not (tmp_path / "o3").exists()


def test_scale_on_a_run_folder_given_as_home_text_says_use_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--data '~/RUN'`` (quoted: the text reaches eval unexpanded) is a run folder as
    its expanded path is: the check took the text as a relative name and missed it, and
    the reader's ``patch_size ... do not apply`` error came instead of the one saying to
    use ``--manifest``."""
    home = tmp_path / "home"
    (home / "RUN").mkdir(parents=True)
    (home / "RUN" / "manifest.jsonl").write_text(
        '{"kind": "header", "schema": "histofetch.manifest", "version": 1, "query": null}\n'
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [*EVAL, "--data", "~/RUN", "--scale", "0.5"])
    assert res.exit_code == 1, res.output
    assert "a histofetch run: its figures are resized by their own factor" in res.output
    assert "eval --manifest" in res.output and "patch_size" not in res.output
