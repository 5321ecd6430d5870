"""End-to-end evaluation of a really trained tiny CNN: files, numbers, calibration, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _evalkit import tiny_checkpoint
from conftest import names_the_file_in_the_way, refused_with
from PIL import Image
from sklearn import metrics as skm
from typer.testing import CliRunner

from histomodels.calibration import calibration_path
from histomodels.checkpoint import load_model, read_checkpoint
from histomodels.cli import app
from histomodels.data import ArrayDataset
from histomodels.evaluate import evaluate_checkpoint
from histomodels.inference import Predictor, predict_logits
from histomodels.synthetic import make_patches

torch.set_num_threads(1)
FILES = (
    "metrics.json",
    "predictions.csv",
    "roc.png",
    "pr.png",
    "confusion.png",
    "reliability.png",
    "errors_gradcam.png",
)


def _ds(n: int, seed: int, name: str) -> ArrayDataset:
    x, y = make_patches(n, seed=seed)
    return ArrayDataset(x, y, ids=[f"{name}{i}" for i in range(n)], source=name)


def test_evaluate_with_validation(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    ckpt_bytes = ckpt.read_bytes()
    out = tmp_path / "ev"
    res = evaluate_checkpoint(ckpt, _ds(160, 1, "t"), out, val=_ds(160, 2, "v"), n_bootstrap=200)
    for f in FILES:
        assert (out / f).stat().st_size > 0, f
    saved = json.loads((out / "metrics.json").read_text())
    for key in (
        "roc_auc",
        "accuracy",
        "balanced_accuracy",
        "recall",
        "specificity",
        "precision",
        "f1",
        "pr_auc",
        "brier",
        "ece",
        "threshold",
        "ci",
    ):
        assert key in saved, key
    assert "validation" in saved["threshold_source"]
    # numbers agree with sklearn on the written predictions at the written threshold
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    assert saved["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-4)
    assert saved["f1"] == pytest.approx(skm.f1_score(y, p >= saved["threshold"]), abs=1e-3)
    assert saved["roc_auc"] > 0.6  # the tiny model learnt something real
    lo, hi = saved["ci"]["roc_auc"]
    assert lo < saved["roc_auc"] < hi
    # the fitted temperature lowered validation NLL and went beside the checkpoint, which
    # eval leaves byte for byte as it was; inference picks the sidecar up
    assert res["temperature"] != 1.0
    assert ckpt.read_bytes() == ckpt_bytes
    assert res["temperature_stored"] == str(calibration_path(ckpt))
    assert Predictor.load(ckpt).temperature == pytest.approx(res["temperature"])
    assert res["validation"]["nll_after"] <= res["validation"]["nll_before"] + 1e-9


def test_evaluate_without_validation_says_threshold_is_default(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    res = evaluate_checkpoint(ckpt, _ds(64, 3, "t"), tmp_path / "ev", n_bootstrap=50, gallery=False)
    assert res["threshold"] == 0.5 and "no validation" in res["threshold_source"]
    with pytest.raises(ValueError, match="needs validation data"):
        evaluate_checkpoint(ckpt, _ds(8, 3, "t"), tmp_path / "e2", sensitivity=0.9)


def test_unlabelled_data_gives_predictions_only(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    x, _ = make_patches(12, seed=4)
    res = evaluate_checkpoint(ckpt, ArrayDataset(x), tmp_path / "ev")
    assert "roc_auc" not in res and "no labels" in res["note"]
    assert len((tmp_path / "ev" / "predictions.csv").read_text().splitlines()) == 13


def test_unlabelled_data_records_the_threshold_of_its_predictions(tmp_path: Path) -> None:
    """metrics.json of unlabelled data names the threshold its probabilities are read with
    beside where it came from: it said ``threshold_source`` and no ``threshold``."""
    ckpt = tiny_checkpoint(tmp_path)
    x, _ = make_patches(12, seed=4)
    evaluate_checkpoint(ckpt, ArrayDataset(x), tmp_path / "ev", store_temperature="none")
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["threshold"] == 0.5 and "no validation" in saved["threshold_source"]
    res = evaluate_checkpoint(ckpt, ArrayDataset(x), tmp_path / "ev2", val=_ds(64, 3, "v"),
                              sensitivity=0.9, store_temperature="none")  # fmt: skip
    saved = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert "validation" in saved["threshold_source"] and saved["threshold"] == res["threshold"]
    assert 0 < saved["threshold"] < 1 and saved["threshold"] != 0.5


def test_tta_is_rotation_invariant(tmp_path: Path) -> None:
    model, _ = load_model(tiny_checkpoint(tmp_path))
    x, _ = make_patches(6, seed=5)
    plain = predict_logits(model, x)
    tta = predict_logits(model, x, tta=True)
    tta_rot = predict_logits(model, np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))), tta=True)
    np.testing.assert_allclose(tta, tta_rot, atol=1e-4)
    assert not np.allclose(plain, tta, atol=1e-4)
    bf16 = predict_logits(model, x, precision="bf16")
    np.testing.assert_allclose(plain, bf16, atol=0.1)


def test_cli_eval_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("histomodels.data.readers", reason="dataset readers not installed")
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    test_h5 = write_h5(tmp_path / "test.h5", 96, seed=7)
    val_h5 = write_h5(tmp_path / "val.h5", 96, seed=8)
    out = tmp_path / "out"

    def run_eval(val: Path, *extra: str):
        args = ["eval", str(ckpt), "--data", str(test_h5), "--val", str(val), "--out", str(out)]
        return CliRunner().invoke(app, [*args, *extra])

    r = run_eval(val_h5, "--bootstrap", "100", "--sensitivity", "0.9", "--tta")
    assert r.exit_code == 0, r.output
    for f in FILES:
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["tta"] is True and "sensitivity>=0.9" in m["threshold_source"]
    assert "roc_auc" in r.output and "warning" not in m
    # where the threshold came from, after it, with no brackets nested in brackets
    # (was "threshold 0.41 (sensitivity>=0.9 on validation (val.h5, n=96)); temperature …")
    assert f"threshold {m['threshold']:.4f}: {m['threshold_source']}" in r.stdout.splitlines()
    assert not any("((" in line or "))" in line for line in r.stdout.splitlines())
    # the first line names what was evaluated on what, whole (not a wrapped table title)
    assert r.output.splitlines()[0] == f"{ckpt} ({m['model']}) on {m['data']} (n={m['n']})"
    # fitting threshold and temperature on the test set itself is flagged
    r = run_eval(test_h5, "--bootstrap", "0")
    assert r.exit_code == 0, r.output
    warning = json.loads((out / "metrics.json").read_text())["warning"]
    assert "optimistic" in warning
    # one `warning:` line on stderr like every other warning, not wrapped rich text on stdout
    assert r.stderr.splitlines() == [f"warning: {warning}"]
    assert "warning" not in r.stdout


def test_eval_replaces_in_out_only_what_an_earlier_eval_wrote(tmp_path: Path) -> None:
    """``eval --out FOLDER`` wrote metrics.json, predictions.csv and the plots over any files
    of those names: a metrics.json of the user's own, the predictions.csv that ``predict``
    wrote, a roc.png, a pipe (its node replaced), even the --data file through a link.
    Each is now one error line naming the file, exit 1, nothing written; an earlier eval's
    folder (or one stopped after its predictions.csv) is replaced as before, and files of
    other names beside it are no concern."""
    pytest.importorskip("histomodels.data.readers", reason="dataset readers not installed")
    import os

    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    test_h5 = write_h5(tmp_path / "test.h5", 32, seed=7)

    def run_eval(out: Path):
        args = ["eval", str(ckpt), "--data", str(test_h5), "--out", str(out), "--bootstrap", "0"]
        return CliRunner().invoke(app, args)

    would = "eval would replace it: choose another --out"
    cases = {
        "metrics.json": '{"note": "mine"}',
        "predictions.csv": "path,x,y,size,probability,label\na.png,0,0,96,0.5,0\n",
        "roc.png": "my own plot",
    }
    for i, (name, text) in enumerate(cases.items()):
        out = tmp_path / f"mine{i}"
        out.mkdir()
        (out / name).write_text(text)
        r = run_eval(out)
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines() == [
            f"error: {out / name}: exists and was not written by eval; {would}, or remove it first"
        ]
        assert sorted(os.listdir(out)) == [name] and (out / name).read_text() == text
    out = tmp_path / "piped"
    out.mkdir()
    os.mkfifo(out / "predictions.csv")
    r = run_eval(out)
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {out / 'predictions.csv'}: not a regular file (a pipe, socket or device); {would}"
    ]
    assert (out / "predictions.csv").is_fifo()
    out = tmp_path / "linked"
    out.mkdir()
    (out / "predictions.csv").symlink_to(test_h5)
    kept = test_h5.read_bytes()
    r = run_eval(out)
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {out / 'predictions.csv'}: is the --data eval reads; {would}"
    ]
    assert test_h5.read_bytes() == kept
    out = tmp_path / "stopped"  # an eval stopped after its predictions.csv, notes beside it
    out.mkdir()
    (out / "predictions.csv").write_text("id,label,probability\n0,1,0.5\n")
    (out / "notes.txt").write_text("mine")
    for _ in range(2):  # then over its own finished folder
        r = run_eval(out)
        assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").is_file()


def test_a_shipped_models_temperature_is_not_stored_and_metrics_say_so(tmp_path: Path) -> None:
    """``eval --model pcam-cnn --val …`` fitted a temperature that went nowhere (package data
    is not rewritten) and ``temperature_stored`` was missing: nothing said why."""
    from histomodels import pretrained
    from histomodels.synthetic import write_h5

    folder = Path(pretrained.__file__).parent
    before = {p.name: p.read_bytes() for p in folder.glob("pcam-cnn*")}
    data = write_h5(tmp_path / "test.h5", 24, seed=3)
    val = write_h5(tmp_path / "val.h5", 24, seed=4)
    res = evaluate_checkpoint("pcam-cnn", data, tmp_path / "ev", val=val, n_bootstrap=0,
                              gallery=False)  # fmt: skip
    assert res["temperature_stored"].startswith("not stored: pcam-cnn is a model shipped")
    assert {p.name: p.read_bytes() for p in folder.glob("pcam-cnn*")} == before
    res = evaluate_checkpoint("pcam-cnn", data, tmp_path / "ev2", val=val, n_bootstrap=0,
                              gallery=False, store_temperature="none")  # fmt: skip
    assert "temperature_stored" not in res


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dot-spelling"])
def test_the_same_data_warning_compares_files_not_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link: str
) -> None:
    """``--val`` naming the test file by another path (a link, ``./x.h5``) is the same data:
    the paths were compared, so a hard link escaped the warning (only the weaker "N of M
    test patches are also in the validation data" was left)."""
    from histomodels.evaluate import SAME_DATA
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    test_h5 = write_h5(tmp_path / "test.h5", 32, seed=7)
    monkeypatch.chdir(tmp_path)
    if link == "symlink":
        (tmp_path / "val.h5").symlink_to(test_h5)
        data, val = "test.h5", "val.h5"
    elif link == "hardlink":
        (tmp_path / "val.h5").hardlink_to(test_h5)
        data, val = "test.h5", "val.h5"
    else:
        data, val = "test.h5", "./sub/../test.h5"
        (tmp_path / "sub").mkdir()
    res = evaluate_checkpoint(ckpt, data, tmp_path / "ev", val=val, n_bootstrap=0, gallery=False)
    assert res["warning"] == SAME_DATA
    other = write_h5(tmp_path / "other.h5", 32, seed=8)
    res = evaluate_checkpoint(ckpt, data, tmp_path / "ev2", val=other, n_bootstrap=0, gallery=False)
    assert "warning" not in res


def test_cli_eval_data_lines_are_not_wrapped_at_the_terminal_width(tmp_path: Path) -> None:
    """At COLUMNS=60 rich broke the "recall / specificity by threshold" line mid-entry
    ("0.2: " on one line, "0.95/0.83" on the next); data lines are now printed whole."""
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    test_h5 = write_h5(tmp_path / "test.h5", 64, seed=7)
    out = tmp_path / "out"
    args = ["eval", str(ckpt), "--data", str(test_h5), "--out", str(out), "--bootstrap", "0"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "60"})
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    sweep = {round(row["threshold"], 6): row for row in m["threshold_sweep"]}
    expected = "recall / specificity by threshold: " + ", ".join(
        f"{t:.1f}: {sweep[t]['recall']:.2f}/{sweep[t]['specificity']:.2f}"
        for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    )
    assert len(expected) > 60 and expected in r.stdout.splitlines()
    assert f"threshold {m['threshold']:.4f}: {m['threshold_source']}" in r.stdout.splitlines()


def test_cli_eval_prints_paths_with_brackets_as_they_are(tmp_path: Path) -> None:
    """Paths went through rich markup: ``--out 'o[/x]'`` raised MarkupError after the
    metrics were written, ``runs/[exp1]`` printed as ``runs/``, ``val[b].h5`` as ``val.h5``."""
    pytest.importorskip("histomodels.data.readers", reason="dataset readers not installed")
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    test_h5 = write_h5(tmp_path / "test[b].h5", 96, seed=7)
    val_h5 = write_h5(tmp_path / "val[b].h5", 96, seed=8)
    for out in (tmp_path / "runs" / "[exp1]", tmp_path / "o[" / "x]"):
        args = ["eval", str(ckpt), "--data", str(test_h5), "--val", str(val_h5)]
        r = CliRunner().invoke(app, [*args, "--out", str(out), "--bootstrap", "0"])
        assert r.exit_code == 0 and r.exception is None, r.output
        m = json.loads((out / "metrics.json").read_text())
        assert r.stdout.splitlines()[0] == f"{ckpt} ({m['model']}) on {m['data']} (n={m['n']})"
        assert "test[b].h5" in r.stdout.splitlines()[0]
        assert f"threshold {m['threshold']:.4f}: {m['threshold_source']}" in r.stdout
        assert "val[b].h5" in m["threshold_source"]
        assert r.stdout.splitlines()[-1] == f"wrote {out}/metrics.json, predictions.csv and plots"


def test_validation_sharing_test_patches_is_flagged_whatever_the_format(tmp_path: Path) -> None:
    """The Kaggle-format sample in shared/data is a subset of the PCam-format one: as test
    and validation, threshold and temperature were fitted on the test patches with no word
    (only the same path was flagged). Patches are matched by their pixels, not ids."""
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    test_h5 = write_h5(tmp_path / "test.h5", 60, seed=7)
    shared, shared_y = make_patches(60, seed=7)  # the same pixels write_h5 stored
    other, other_y = make_patches(40, seed=9)
    val = tmp_path / "val"
    pairs = [*zip(shared[:20], shared_y[:20], strict=True), *zip(other, other_y, strict=True)]
    for i, (img, y) in enumerate(pairs):
        (val / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(val / str(y) / f"v{i}.png")
    m = evaluate_checkpoint(ckpt, test_h5, tmp_path / "ev", val=val, n_bootstrap=0)
    assert m["warning"].startswith("20 of 60 test patches are also in the validation data")
    assert m["validation"]["test_patches_also_here"] == 20
    clean = tmp_path / "clean"
    for i, (img, y) in enumerate(zip(other, other_y, strict=True)):
        (clean / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(clean / str(y) / f"v{i}.png")
    m = evaluate_checkpoint(ckpt, test_h5, tmp_path / "ev2", val=clean, n_bootstrap=0)
    assert "warning" not in m and m["validation"]["test_patches_also_here"] == 0


def test_shared_patches_are_counted_by_row_and_all_shared_says_entirely(tmp_path: Path) -> None:
    """The overlap count was of distinct pixel digests: a test patch stored twice counted
    once ('20 of 70' where 30 of the 70 test rows are in the validation data), and a
    validation set made only of test patches still said 'fitted partly on the test set'."""
    ckpt = tiny_checkpoint(tmp_path)
    shared, shared_y = make_patches(60, seed=7)
    other, other_y = make_patches(40, seed=9)

    def folder(name: str, imgs: list, ys: list) -> Path:
        for i, (img, y) in enumerate(zip(imgs, ys, strict=True)):
            (tmp_path / name / str(y)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp_path / name / str(y) / f"p{i}.png")
        return tmp_path / name

    test = folder("test", [*shared, *shared[:10]], [*shared_y, *shared_y[:10]])
    val = folder("val", [*shared[:20], *shared[:5], *other], [*shared_y[:20], *shared_y[:5],
                                                              *other_y])  # fmt: skip
    m = evaluate_checkpoint(ckpt, test, tmp_path / "ev", val=val, n_bootstrap=0)
    assert m["warning"].startswith(
        "30 of 70 test patches are also in the validation data (identical pixels): "
        "temperature and threshold were fitted partly on the test set (25 of 65 validation "
        "patches)"
    ), m["warning"]
    assert m["validation"]["test_patches_also_here"] == 30
    assert m["validation"]["patches_also_in_test"] == 25
    assert len(set(shared_y[:20].tolist())) == 2  # a validation set needs both classes
    only = folder("only", list(shared[:20]), list(shared_y[:20]))
    m = evaluate_checkpoint(ckpt, test, tmp_path / "ev2", val=only, n_bootstrap=0)
    assert m["warning"].startswith(
        "30 of 70 test patches are also in the validation data (identical pixels): "
        "temperature and threshold were fitted entirely on the test set (20 of 20 validation "
        "patches)"
    ), m["warning"]


def test_cli_bad_checkpoints_fail_cleanly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(2048))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "histomodels.checkpoint", "x": Evil()}, evil)  # pickles code
    assert b"print" in evil.read_bytes()  # the code payload really is in the file
    runner = CliRunner()
    for bad in (junk, evil, tmp_path / "missing.pt"):
        r = runner.invoke(app, ["export", str(bad), "--out", str(tmp_path / "m.onnx")])
        assert r.exit_code == 1, r.output
        assert "error:" in r.output and str(bad) in r.output
        assert "Traceback" not in r.output and "pwned" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()
    r = runner.invoke(app, ["eval", str(junk), "--data", str(tmp_path)])
    assert r.exit_code == 1 and "junk.pt" in r.output


@pytest.mark.realdata
def test_cli_eval_on_real_pcam_pair(tmp_path: Path) -> None:
    """The real PCam-format HDF5 pair (400 patches, 200/200) through the whole command."""
    from conftest import shared_path

    x_h5 = shared_path("data", "pcam_real", "pcam_format_sample", "pcam_real_sample_x.h5")
    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "real"
    r = CliRunner().invoke(
        app, ["eval", str(ckpt), "--data", str(x_h5), "--out", str(out), "--bootstrap", "100"]
    )
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert (m["n"], m["n_positive"]) == (400, 200)
    assert 0.0 <= m["ci"]["roc_auc"][0] <= m["roc_auc"] <= m["ci"]["roc_auc"][1] <= 1.0
    assert len((out / "predictions.csv").read_text().splitlines()) == 401


def test_temperature_goes_into_the_checkpoint_only_on_request(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    val = _ds(96, 5, "v")
    res = evaluate_checkpoint(
        ckpt, val, tmp_path / "ev", val=val, n_bootstrap=0, gallery=False,
        store_temperature="checkpoint",
    )  # fmt: skip
    assert res["temperature_stored"] is True
    assert read_checkpoint(ckpt)["temperature"] == pytest.approx(res["temperature"])
    assert not calibration_path(ckpt).exists()


def test_a_sidecar_of_another_checkpoint_is_ignored(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    val = _ds(96, 6, "v")
    res = evaluate_checkpoint(ckpt, val, tmp_path / "ev", val=val, n_bootstrap=0, gallery=False)
    assert Predictor.load(ckpt).temperature == pytest.approx(res["temperature"])
    raw = read_checkpoint(ckpt)
    raw["temperature"] = 1.5  # the file changes (say, retrained): the old T no longer applies
    torch.save(raw, ckpt)
    assert Predictor.load(ckpt).temperature == pytest.approx(1.5)


def test_a_huge_sidecar_is_refused_unread(tmp_path: Path) -> None:
    """A checkpoint's calibration sidecar (a shared file, a few hundred bytes when eval
    writes it) was read whole however large; over 1 MB it is one CalibrationError."""
    from histomodels.calibration import CalibrationError, read_calibration

    ckpt = tiny_checkpoint(tmp_path)
    calibration_path(ckpt).write_text('{"temperature": 1.5, "pad": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(CalibrationError, match=r"not a calibration file \(over 1 MB\)"):
        read_calibration(ckpt)


def test_eval_keeps_the_origin_splits_given(tmp_path: Path) -> None:
    """``eval --origin-split`` scores only those origin splits of ``--data``, as ``data
    info`` and ``train`` take them; with ``--manifest`` it is a usage error."""
    from _trainkit import encoded_h5_with_origins

    ckpt = tiny_checkpoint(tmp_path)
    (tmp_path / "t").mkdir()
    data = encoded_h5_with_origins(tmp_path / "t" / "enc.h5", 13, make_patches(1, 9)[0][0])
    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--data", str(data), "--out", str(out),
                                 "--bootstrap", "0", "--origin-split", "pcam_train"])  # fmt: skip
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == 12 and saved["n_unlabelled"] == 0  # 13 rows, one 'unknown'
    assert saved["origin_split"] == "pcam_train"  # metrics.json says which rows n counts
    assert len((out / "predictions.csv").read_text().splitlines()) == 13
    # and so do the printed line and report (they named the file alone, as if n were all of it)
    assert f"on encoded:{data}, origin_split pcam_train (n=12)" in r.stdout.splitlines()[0]
    rep = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| test data | encoded:{data} (origin_split pcam_train) |" in md, md
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--manifest", str(tmp_path), "--out",
                                 str(out), "--origin-split", "pcam_train"])  # fmt: skip
    assert r.exit_code == 2 and "--origin-split" in r.output


def test_eval_origin_split_on_data_without_origins_names_the_option(tmp_path: Path) -> None:
    """``eval --origin-split`` on data without origins (class folders) is refused naming
    ``--origin-split``, as ``data info`` does: it said ``option(s) ['origin_split'] do not
    apply ... (it takes ['patch_size'])``, a reader keyword eval has no option for."""
    ckpt = tiny_checkpoint(tmp_path)
    x, y = make_patches(8, seed=3)
    d = tmp_path / "cls"
    for i in range(len(y)):
        (d / str(int(y[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(d / str(int(y[i])) / f"{i}.png")
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--data", str(d), "--out",
                                 str(tmp_path / "ev"), "--origin-split", "pcam_train"])  # fmt: skip
    assert r.exit_code == 2, r.output
    said = " ".join(r.output.replace("│", " ").split())
    assert "'--origin-split': does not apply to" in said and "image folder data" in said
    assert "patch_size" not in said and not (tmp_path / "ev").exists()
    # the data takes eval's --scale: "(it takes none of these options)" read wrong
    assert "it takes" not in said, said


def test_metrics_json_keeps_the_inference_precision_apart_from_the_metric(
    tmp_path: Path,
) -> None:
    """The inference precision (``--precision``) is ``inference_precision`` in metrics.json.
    It was stored as ``precision``, the key of the metric: labelled data overwrote it with
    the metric (the fp32/bf16 choice was lost), and unlabelled data kept ``"precision":
    "fp32"``, which ``histomodels report`` then showed in its metrics table as a precision
    (real: ``eval --model pcam-cnn --data kaggle_format_sample/train``, no labels)."""
    from histomodels.report import build_report

    ckpt = tiny_checkpoint(tmp_path)
    x, _ = make_patches(24, seed=4)
    unlabelled = ArrayDataset(x, np.full(24, -1), ids=[f"u{i}" for i in range(24)], source="u")
    evaluate_checkpoint(ckpt, unlabelled, tmp_path / "unl", n_bootstrap=0, gallery=False)
    saved = json.loads((tmp_path / "unl" / "metrics.json").read_text())
    assert saved["inference_precision"] == "fp32" and "precision" not in saved
    evaluate_checkpoint(ckpt, _ds(48, 5, "t"), tmp_path / "lab", n_bootstrap=0, gallery=False)
    saved = json.loads((tmp_path / "lab" / "metrics.json").read_text())
    assert saved["inference_precision"] == "fp32" and isinstance(saved["precision"], float)
    build_report([tmp_path / "unl"], tmp_path / "rep")
    assert "| precision |" not in (tmp_path / "rep" / "report.md").read_text()


def test_cli_eval_threads_sets_torchs_intra_op_threads(tmp_path: Path) -> None:
    """eval had no --threads (only train, finetune and tune did): on a shared machine only
    OMP_NUM_THREADS limited it. ``--threads N`` now sets torch's threads, as train's does."""
    pytest.importorskip("histomodels.data.readers", reason="dataset readers not installed")
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    data = write_h5(tmp_path / "test.h5", 32, seed=7)
    before = torch.get_num_threads()
    want = 3 if before != 3 else 2  # another count than the one it had
    try:
        r = CliRunner().invoke(app, ["eval", str(ckpt), "--data", str(data), "--out",
                                     str(tmp_path / "ev"), "--bootstrap", "0",
                                     "--threads", str(want)])  # fmt: skip
        assert r.exit_code == 0 and r.exception is None, r.output
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_evaluate_checkpoint_out_under_a_file_names_the_file(tmp_path: Path) -> None:
    """``evaluate_checkpoint(..., a/ev)`` (``a`` a file) made its folder with a plain mkdir (see
    conftest.names_the_file_in_the_way)."""
    ckpt = tiny_checkpoint(tmp_path)
    names_the_file_in_the_way(
        tmp_path, lambda a: evaluate_checkpoint(ckpt, _ds(8, 3, "t"), a / "ev", n_bootstrap=10)
    )


def test_cli_eval_tiny_labelled_set_gives_no_interval_and_says_why(tmp_path: Path) -> None:
    """A handful of labelled patches gave a 95 % CI column of intervals from a few draws."""
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    test_h5 = write_h5(tmp_path / "test.h5", 8, seed=7)
    out = tmp_path / "out"
    args = ["eval", str(ckpt), "--data", str(test_h5), "--out", str(out), "--bootstrap", "100"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    pos, neg = m["n_positive"], m["n"] - m["n_positive"]
    assert min(pos, neg) > 0  # both classes: metrics, but too few of each for an interval
    assert m["ci"] is None
    reason = f"too few patches for an interval: {pos} tumour, {neg} normal"
    assert m["ci_reason"].startswith(reason)
    assert f"no 95% CI: {m['ci_reason']}" in r.stdout.splitlines()


def test_cli_eval_bootstrap_0_says_there_is_no_interval(tmp_path: Path) -> None:
    """``--bootstrap 0`` printed an empty ``95% CI`` column with no line saying why."""
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    test_h5 = write_h5(tmp_path / "test.h5", 24, seed=7)
    out = tmp_path / "out"
    args = ["eval", str(ckpt), "--data", str(test_h5), "--out", str(out), "--bootstrap", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert "roc_auc" in m and "ci" not in m  # the library's record is unchanged
    assert "no 95% CI: --bootstrap 0" in r.stdout.splitlines()
    assert "95% CI" not in r.stdout.replace("no 95% CI: --bootstrap 0", "")


def test_predictions_csv_probabilities_read_as_their_call_at_the_threshold(
    tmp_path: Path,
) -> None:
    """Written with 6 decimals, 0.99999955 read 1.000000: called tumour at a threshold of
    0.9999996, which the metrics had not (the threshold is kept exact)."""
    import csv

    from histomodels.evaluate import write_predictions

    path = tmp_path / "predictions.csv"
    probs = np.array([0.99999955, 0.9999996, 0.25])
    write_predictions(path, ["a", "b", "c"], np.array([1, 1, 0]), probs, 0.9999996)
    rows = list(csv.DictReader(path.open()))
    assert [float(r["probability"]) >= 0.9999996 for r in rows] == [False, True, False]
    assert rows[2]["probability"] == "0.250000"


def test_eval_on_the_models_own_training_data_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval --data`` on the patches the model was trained on gave its metrics as a test's,
    silently (only ``eval --manifest`` had ``--train-data``). The checkpoint's train_config
    names its data: the same file (by any path or link), or a copy of it, is one warning
    line on stderr and ``training_data_warning`` in metrics.json; another file is not."""
    import shutil

    from histomodels.checkpoint import save_checkpoint
    from histomodels.evaluate import trained_on
    from histomodels.synthetic import write_h5

    monkeypatch.chdir(tmp_path)
    write_h5(tmp_path / "train.h5", 32, seed=7)
    ckpt_path = tiny_checkpoint(tmp_path)
    ckpt = read_checkpoint(ckpt_path)
    ckpt["train_config"] = {"data": "train.h5", "origin_split": None}
    save_checkpoint(ckpt_path, ckpt)
    (tmp_path / "link.h5").symlink_to(tmp_path / "train.h5")
    shutil.copy(tmp_path / "train.h5", tmp_path / "copy.h5")
    write_h5(tmp_path / "other.h5", 32, seed=8)
    for data, warned in [("train.h5", True), ("./link.h5", True), ("copy.h5", True),
                         ("other.h5", False)]:  # fmt: skip
        out = tmp_path / f"ev_{data.strip('./')}"
        args = ["eval", str(ckpt_path), "--data", data, "--out", str(out), "--bootstrap", "0"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        said = [line for line in r.stderr.splitlines() if "training data" in line]
        recorded = json.loads((out / "metrics.json").read_text()).get("training_data_warning")
        if warned:
            assert len(said) == 1 and said[0].startswith(f"warning: {data} is the model's "), said
            assert recorded and recorded in said[0]
        else:
            assert not said and recorded is None, (said, recorded)
    # rows of one file kept by other origin splits are not the training rows
    split = {"train_config": {"data": "train.h5", "origin_split": "kaggle_train"}}
    assert trained_on(split, "train.h5", "pcam_valid") is None
    assert trained_on(split, "train.h5", "kaggle_train,pcam_valid") is not None
    assert trained_on(split, "train.h5") is not None  # every row, the training ones too
    assert trained_on({}, "train.h5") is None  # a checkpoint that names no data


def test_a_nul_byte_in_the_checkpoints_training_data_does_not_fail_the_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint whose ``train_config.data`` holds a NUL byte crashed ``eval`` with a
    ValueError traceback (``Path.samefile`` raises it; ``same_file`` caught only OSError).
    The training-data check is only a warning: such a path is no file, so no warning, and
    the eval completes."""
    from histocore.io import same_file
    from histomodels.checkpoint import save_checkpoint
    from histomodels.evaluate import trained_on
    from histomodels.synthetic import write_h5

    monkeypatch.chdir(tmp_path)
    write_h5(tmp_path / "t.h5", 32, seed=7)
    assert same_file("a\x00b", "t.h5") is False
    assert trained_on({"train_config": {"data": "a\x00b"}}, "t.h5") is None
    ckpt_path = tiny_checkpoint(tmp_path)
    ckpt = read_checkpoint(ckpt_path)
    ckpt["train_config"] = {"data": "a\x00b", "origin_split": None}
    save_checkpoint(ckpt_path, ckpt)
    out = tmp_path / "ev"
    args = ["eval", str(ckpt_path), "--data", "t.h5", "--out", str(out), "--bootstrap", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    assert "training_data_warning" not in json.loads((out / "metrics.json").read_text())


def test_evals_checkpoint_in_a_tilde_folder_is_named_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval ./~/ck.pt --data ./~/t.h5 --out ./~/ev4`` (a folder named ``~`` here) printed
    the checkpoint as ``~/ck.pt``, ``$HOME``'s to a reader, where the data and the folder
    written were ``./~/…``: every path on its lines is named as given now."""
    import shutil

    from histomodels.synthetic import write_h5

    monkeypatch.chdir(tmp_path)
    (tmp_path / "~").mkdir()
    shutil.copy(tiny_checkpoint(tmp_path), tmp_path / "~" / "ck.pt")
    write_h5(tmp_path / "~" / "t.h5", 32, seed=7)
    args = ["eval", "./~/ck.pt", "--data", "./~/t.h5", "--out", "./~/ev4", "--bootstrap", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("./~/ck.pt ("), r.stdout
    assert "~/" not in r.stdout.replace("./~/", ""), r.stdout


def test_a_users_tile_predictions_csv_is_not_taken_for_an_earlier_eval(tmp_path: Path) -> None:
    """``eval --manifest`` took any tile_predictions.csv starting ``image_id,`` for the one
    an earlier eval wrote (which starts ``id,image_id,``) and replaced it and a roc.png
    beside it. Only eval's own header marks the folder as an earlier eval's now."""
    from histocore.errors import UsageError
    from histomodels.evaluate import refuse_to_replace_what_eval_did_not_write

    out = tmp_path / "mine"
    out.mkdir()
    (out / "tile_predictions.csv").write_text("image_id,score\na,0.5\n")
    (out / "roc.png").write_text("my own plot")
    with pytest.raises(UsageError, match=r"tile_predictions\.csv: exists and was not written by"):
        refuse_to_replace_what_eval_did_not_write(out, {}, manifest=True)
    (out / "tile_predictions.csv").write_text(
        "id,image_id,row,col,x0,y0,x1,y1,tissue,probability\n"
    )
    refuse_to_replace_what_eval_did_not_write(out, {}, manifest=True)  # an eval stopped midway


def test_eval_val_replaces_beside_the_checkpoint_only_a_sidecar_eval_wrote(tmp_path: Path) -> None:
    """``eval --val`` wrote ``CKPT.calibration.json`` over any file of that name beside the
    checkpoint (a JSON note of the user's own holding a ``temperature``, say). It is one
    error line now, before anything is read, and the library refuses it too (nothing in
    ``--out``); an earlier sidecar, or ``--store-temperature none``, goes on as before."""
    from histomodels.calibration import CalibrationError
    from histomodels.synthetic import write_h5

    ckpt = tiny_checkpoint(tmp_path)
    data = write_h5(tmp_path / "test.h5", 24, seed=3)
    val = write_h5(tmp_path / "val.h5", 24, seed=4)
    side = calibration_path(ckpt)
    mine = '{"temperature": 2.0, "note": "my own calibration, fitted elsewhere"}'
    side.write_text(mine)
    out = tmp_path / "ev"
    args = ["eval", str(ckpt), "--data", str(data), "--val", str(val), "--out", str(out),
            "--bootstrap", "0"]  # fmt: skip
    assert refused_with(CliRunner().invoke(app, args)) == (
        f"{side}: exists and is not a calibration file eval wrote; eval --val would "
        "replace it with the fitted temperature: give --store-temperature none or checkpoint, "
        "or remove it first"
    )
    assert side.read_text() == mine and not out.exists()
    unread = tmp_path / "unread.h5"  # refused before the validation data is read
    unread.write_bytes(b"not an HDF5 file")
    r = CliRunner().invoke(app, [*args[:5], str(unread), *args[6:]])
    assert r.exit_code == 1 and r.stderr.splitlines()[-1].startswith(f"error: {side}: exists")
    with pytest.raises(CalibrationError, match="is not a calibration file eval wrote"):
        evaluate_checkpoint(ckpt, data, out, val=val, n_bootstrap=0, gallery=False)
    assert side.read_text() == mine and not (out / "metrics.json").exists()
    r = CliRunner().invoke(app, [*args, "--store-temperature", "none"])
    assert r.exit_code == 0 and side.read_text() == mine, r.output
    side.unlink()
    for _ in range(2):  # written, then its own earlier sidecar replaced
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert json.loads(side.read_text())["fitted_on"] == f"encoded:{val}"


def test_eval_manifest_refuses_a_heatmaps_folder_it_did_not_write(tmp_path: Path) -> None:
    """``eval --manifest`` draws into ``OUT/heatmaps/``: a non-empty ``heatmaps/`` in a
    folder holding no earlier eval is one line before anything is read, its files as they
    were; an empty one, or the same folder for ``--data`` (which draws none), is no concern."""
    from histocore.errors import UsageError
    from histomodels.evaluate import refuse_to_replace_what_eval_did_not_write

    ckpt = tiny_checkpoint(tmp_path)
    run = tmp_path / "lnm"
    run.mkdir()
    out = tmp_path / "mine"
    (out / "heatmaps").mkdir(parents=True)
    refuse_to_replace_what_eval_did_not_write(out, {}, manifest=True)  # empty: no concern
    (out / "heatmaps" / "slide1.png").write_bytes(b"my own heatmap")
    r = CliRunner().invoke(
        app, ["eval", str(ckpt), "--manifest", str(run), "--out", str(out), "--bootstrap", "0"]
    )
    assert refused_with(r) == (
        f"{out / 'heatmaps'}: exists and was not written by eval; eval would replace "
        "it: choose another --out, or remove it first"
    )
    assert [p.name for p in out.rglob("*")] == ["heatmaps", "slide1.png"]
    assert (out / "heatmaps" / "slide1.png").read_bytes() == b"my own heatmap"
    with pytest.raises(UsageError, match=r"heatmaps: exists and was not written by eval"):
        refuse_to_replace_what_eval_did_not_write(out, {}, manifest=True)
    refuse_to_replace_what_eval_did_not_write(out, {}, manifest=False)  # --data draws none
    (out / "image_scores.csv").write_text("image_id,record_id,score\n")  # an eval stopped
    refuse_to_replace_what_eval_did_not_write(out, {}, manifest=True)  # midway: its folder


def test_evals_threshold_line_names_validation_data_in_a_tilde_folder_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval … --val ./~/v.h5`` (a folder named ``~`` here) printed the threshold line's
    validation data as ``encoded:~/v.h5``, ``$HOME``'s to a reader, where the other lines
    name paths as given (``./~/…``). metrics.json keeps the library's text."""
    import shutil

    from histomodels.synthetic import write_h5

    monkeypatch.chdir(tmp_path)
    (tmp_path / "~").mkdir()
    shutil.copy(tiny_checkpoint(tmp_path), tmp_path / "~" / "ck.pt")
    write_h5(tmp_path / "~" / "t.h5", 32, seed=7)
    write_h5(tmp_path / "~" / "v.h5", 32, seed=8)
    args = ["eval", "./~/ck.pt", "--data", "./~/t.h5", "--val", "./~/v.h5", "--out", "./~/ev",
            "--bootstrap", "0", "--store-temperature", "none"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("threshold "))
    assert "on validation (encoded:./~/v.h5, n=32)" in line, line
    assert "~/" not in r.stdout.replace("./~/", ""), r.stdout
    m = json.loads((tmp_path / "~" / "ev" / "metrics.json").read_text())
    assert "(encoded:~/v.h5, n=32)" in m["threshold_source"]


def test_evaluate_arrays_gives_evals_numbers_in_memory(tmp_path: Path) -> None:
    """A notebook with a model and arrays had to write files to get eval's numbers. The
    in-memory API gives the same ones (AUC, bootstrap CIs, accuracy, recall, the sweep:
    one code path, :func:`histomodels.evaluate.patch_metrics`), from a Predictor, a
    checkpoint path, an nn.Module or a dataset, and writes nothing."""
    from histomodels.evaluate import evaluate_arrays

    ckpt = tiny_checkpoint(tmp_path)
    ds = _ds(48, 11, "t")
    images, labels, _ = ds.load_all()
    res = evaluate_checkpoint(ckpt, ds, tmp_path / "ev", n_bootstrap=50, gallery=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    pred = Predictor.load(ckpt, device="cpu")
    mem = evaluate_arrays(pred, images, labels, n_bootstrap=50)
    for key in ("n", "roc_auc", "accuracy", "recall", "specificity", "ci", "threshold",
                "threshold_source", "temperature", "at_0.5", "threshold_sweep",
                "uncalibrated", "n_unlabelled"):  # fmt: skip
        assert mem[key] == res[key], key
    assert evaluate_arrays(ckpt, ds, n_bootstrap=50)["ci"] == res["ci"]  # a path, a dataset
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    net = load_model(ckpt)[0]
    bare = evaluate_arrays(net, images, labels.tolist(), threshold=0.3, n_bootstrap=0)
    assert (bare["threshold"], bare["threshold_source"], bare["temperature"]) == (0.3, "given", 1)
    assert "ci" not in bare and 0 <= bare["roc_auc"] <= 1
    with pytest.raises(ValueError, match=r"labels=\.\.\. is needed"):
        evaluate_arrays(pred, images)
    with pytest.raises(ValueError, match="47 labels for 48 patches"):
        evaluate_arrays(pred, images, labels[:47])


def test_evaluate_arrays_refuses_what_it_cannot_score_right(tmp_path: Path) -> None:
    """``evaluate_arrays`` gave no metrics and no word for labels none of which is 0/1
    (strings, ``y + 2``), scored a module's first of two class logits (an inverted AUC when
    it is the negative class's), took ``threshold=True`` as 1, and met ``threshold="0.3"``,
    ``batch_size=0``, ``n_bootstrap=-1`` and a module without parameters (a bare
    StopIteration) with no clear line; one class labelled had no note (review 45). Labels
    of another count than the patches were said only after every patch was scored."""
    from histomodels.evaluate import evaluate_arrays

    ckpt = tiny_checkpoint(tmp_path)
    images, labels, _ = _ds(16, 5, "t").load_all()
    pred = Predictor.load(ckpt, device="cpu")
    for bad in (labels.astype(str), labels + 2):
        with pytest.raises(ValueError, match="none of the 16 is 0 or 1"):
            evaluate_arrays(pred, images, bad, n_bootstrap=0)
    net = load_model(ckpt)[0]

    class TwoLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.net(x).reshape(len(x), 1)
            return torch.cat([-z, z], 1)

    with pytest.raises(ValueError, match=r"model gives output \(16, 2\) for 16 patches"):
        evaluate_arrays(TwoLogits(), images, labels, n_bootstrap=0)
    cases: tuple[tuple[dict[str, Any], type[Exception], str], ...] = (
        ({"threshold": True}, TypeError, "threshold must be a number"),
        ({"threshold": "0.3"}, TypeError, "threshold must be a number"),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
        ({"n_bootstrap": -1}, ValueError, "n_bootstrap must be at least 0"),
    )
    for kwargs, error, text in cases:
        with pytest.raises(error, match=text):
            evaluate_arrays(pred, images, labels, **kwargs)

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((1, 2, 3))

    with pytest.raises(ValueError, match=r"no parameters.*give device="):
        evaluate_arrays(Constant(), images, labels, n_bootstrap=0)
    assert "roc_auc" in evaluate_arrays(Constant(), images, labels, n_bootstrap=0, device="cpu")
    one = evaluate_arrays(pred, images, np.ones(16, int), n_bootstrap=0)
    assert one["note"] == "only one class present: AUC is undefined"

    class Counted(torch.nn.Module):  # a caller's module that counts its batches
        def __init__(self) -> None:
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.net(x)

    counted = Counted()  # labels that do not match the patches: said before any scoring
    with pytest.raises(ValueError, match="15 labels for 16 patches"):
        evaluate_arrays(counted, images, labels[:15], n_bootstrap=0, batch_size=4)
    assert counted.calls == 0
    with pytest.raises(ValueError, match=r"^2 labels for 1 patch$"):  # one [H, W, 3] patch
        evaluate_arrays(counted, images[0], labels[:2], n_bootstrap=0)
    # a 3-D array that is no [H, W, 3] patch (grey [N, H, W], a [3, H, W] tensor) was
    # counted as one patch: "16 labels for 1 patches"; its shape is the error
    for bad in (images[..., 0], torch.from_numpy(images[0]).permute(2, 0, 1)):
        with pytest.raises(ValueError, match=rf"got shape \({len(bad)}, 96, 96\)"):
            evaluate_arrays(ckpt, bad, labels[: len(bad)], n_bootstrap=0)
