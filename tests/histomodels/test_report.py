"""Reports: one self-contained HTML (+ Markdown) with metrics, CIs, curves and images."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _evalkit import tiny_checkpoint
from typer.testing import CliRunner, Result

from histomodels.checkpoint import read_checkpoint, save_checkpoint
from histomodels.cli import app
from histomodels.data import ArrayDataset
from histomodels.evaluate import evaluate_checkpoint
from histomodels.report_inputs import load_run
from histomodels.synthetic import make_patches
from histomodels.training.callbacks import write_history

torch.set_num_threads(1)


def _build_runs(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run_a"
    run.mkdir()
    shutil.copy(tiny_checkpoint(tmp_path), run / "best.pt")
    (run / "config.json").write_text(json.dumps({"model": "cnn", "data": "train.h5"}))
    history = [
        {
            "epoch": e,
            "train_loss": 0.7 - 0.1 * e,
            "val_loss": 0.72 - 0.08 * e,
            "val_auc": 0.6 + 0.1 * e,
            "val_accuracy": 0.55 + 0.08 * e,
            "lr": 1e-3,
        }
        for e in (1, 2, 3)
    ]
    write_history(run, history)
    x, y = make_patches(96, seed=11)
    xv, yv = make_patches(96, seed=12)
    evaluate_checkpoint(
        run / "best.pt",
        ArrayDataset(x, y, source="synthetic-test"),
        run / "eval",
        val=ArrayDataset(xv, yv, source="synthetic-val"),
        n_bootstrap=100,
    )
    other = tmp_path / "eval_tta"
    evaluate_checkpoint(
        run / "best.pt",
        ArrayDataset(x, y, source="synthetic-test"),
        other,
        tta=True,
        n_bootstrap=100,
        gallery=False,
    )
    return run, other


@pytest.fixture(scope="module")
def _built_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run and the TTA evaluation, evaluated once per module (two evaluations with
    plots, bootstrap and a Grad-CAM gallery: most of each report test's time)."""
    root = tmp_path_factory.mktemp("report-runs")
    _build_runs(root)
    return root


@pytest.fixture
def runs(tmp_path: Path, _built_runs: Path) -> tuple[Path, Path]:
    """A private copy (tests may rewrite it) of :func:`_build_runs`'s folders in
    ``tmp_path``, the paths eval wrote into its JSON files pointing at the copy."""
    for name in ("run_a", "eval_tta"):
        shutil.copytree(_built_runs / name, tmp_path / name)
    for path in tmp_path.rglob("*.json"):
        text = path.read_text()
        path.write_text(text.replace(str(_built_runs), str(tmp_path)))
    return tmp_path / "run_a", tmp_path / "eval_tta"


def test_report_single_and_comparison(tmp_path: Path, runs: tuple[Path, Path]) -> None:
    run, other = runs
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(run), str(other), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = (out / "report.html").read_text()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    # the numbers in the table are the ones eval wrote, with their intervals
    lo, hi = metrics["ci"]["roc_auc"]
    assert f"{metrics['roc_auc']:.4f} [{lo:.4f}, {hi:.4f}]" in page
    assert "run_a/eval" in page and "eval_tta" in page
    # an eval folder given alone is named after the model it evaluated, not only its folder
    assert "<th>run_a/eval_tta</th>" in page
    # the run's temperature is the one eval --val fitted and stored beside best.pt
    assert (run / "best.calibration.json").is_file()
    assert load_run(run, tmp_path).checkpoint["temperature"] == metrics["temperature"] != 1.0
    assert "Training curves" in page and "ROC comparison" in page
    # self-contained: every image is embedded and decodes as PNG, no external references
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(imgs) >= 8
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"src=['\"](?!data:)", page)
    md = (out / "report.md").read_text()
    assert "| ROC AUC" in md
    for link in re.findall(r"\]\((assets/[^)]+)\)", md):
        assert (out / link).is_file()
    # an unreadable input fails before the previous report is touched, leaving nothing behind
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("[1, 2")
    r = CliRunner().invoke(app, ["report", str(run), str(tmp_path / "broken"), "--out", str(out)])
    assert r.exit_code == 1 and "metrics.json" in r.output
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in out.iterdir()) == [
        "assets",
        "report.html",
        "report.md",
    ]


def _files(out: Path) -> dict[Path, bytes]:
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_a_failed_swap_leaves_the_previous_report_whole(
    tmp_path: Path, monkeypatch, runs: tuple[Path, Path]
) -> None:
    """The old ``assets/`` was removed before the new one was renamed in and the pages
    written: a failure in between left new assets beside the old pages (or no assets).
    Each rename the report makes is failed in turn: the folder holds the previous report,
    byte for byte and nothing else; the first rename that is not failed gives the new one."""
    run, other = runs
    out = tmp_path / "report"
    assert CliRunner().invoke(app, ["report", str(run), "--out", str(out)]).exit_code == 0
    old = _files(out)
    replace = os.replace
    for fail_at in range(1, 100):
        calls = [0]

        def failing(src, dst, calls=calls, fail_at=fail_at) -> None:
            calls[0] += 1
            if calls[0] == fail_at:
                raise OSError(28, "No space left on device", str(dst))
            replace(src, dst)

        monkeypatch.setattr(os, "replace", failing)
        r = CliRunner().invoke(app, ["report", str(run), str(other), "--out", str(out)])
        monkeypatch.setattr(os, "replace", replace)
        if calls[0] < fail_at:  # no rename was failed: the new report is in
            assert r.exit_code == 0, r.output
            break
        assert r.exit_code == 1 and "no space left" in r.output.lower(), (fail_at, r.output)
        assert _files(out) == old, fail_at
        assert sorted(p.name for p in out.iterdir()) == ["assets", "report.html", "report.md"]
    else:
        pytest.fail("the report never succeeded")
    assert fail_at > 6  # at least three entries moved aside and three into place
    new = _files(out)
    assert new != old and "eval_tta" in (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    links = re.findall(r"\]\((assets/[^)]+)\)", md)
    assert links and {Path(link) for link in links} == {p for p in new if p.parts[0] == "assets"}
    assert sorted(p.name for p in out.iterdir()) == ["assets", "report.html", "report.md"]


def test_a_failed_rollback_keeps_the_previous_report(
    tmp_path: Path, monkeypatch, runs: tuple[Path, Path]
) -> None:
    """A placement fails, then so does moving a new entry back out: before, the rollback's
    errors were suppressed and the staging folder, holding the old ``assets/``, was deleted
    (new assets beside the old pages, the old assets gone). Now one error line names the
    folder that keeps the previous report, and every old file is still on disk."""
    run, other = runs
    out = tmp_path / "report"
    assert CliRunner().invoke(app, ["report", str(run), "--out", str(out)]).exit_code == 0
    old = _files(out)
    replace = os.replace

    def failing(src, dst) -> None:
        src, dst = Path(src), Path(dst)
        placing_html = dst == out / "report.html" and src.parent.name != "previous"
        undoing_assets = src == out / "assets" and dst.parent.name != "previous"
        if placing_html or undoing_assets:
            raise OSError(28, "No space left on device", str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    r = CliRunner().invoke(app, ["report", str(run), str(other), "--out", str(out)])
    monkeypatch.setattr(os, "replace", replace)
    assert r.exit_code == 1 and r.exception is not None, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "previous report is kept in" in lines[0], r.output
    kept = [p for p in out.glob(".report-*/previous") if p.is_dir()]
    assert len(kept) == 1 and str(kept[0]) in lines[0]
    saved = {p: (out / p).read_bytes() for p in old if (out / p).is_file()}
    saved |= {p.relative_to(kept[0]): p.read_bytes() for p in kept[0].rglob("*") if p.is_file()}
    assert {p: saved.get(p) for p in old} == old  # every old file, byte for byte


def test_an_interrupted_report_is_named_and_runs_at_once_are_refused(
    tmp_path: Path, runs: tuple[Path, Path]
) -> None:
    """A run killed between moving the old report aside and placing the new one leaves the
    old report in ``.report-*/previous``: the next run names it in a warning. A second run
    into a folder another holds fails at once with one line (before, both swapped into the
    same folder)."""
    import fcntl

    run, _ = runs
    out = tmp_path / "report"
    assert CliRunner().invoke(app, ["report", str(run), "--out", str(out)]).exit_code == 0
    previous = out / ".report-1-deadbeef" / "previous"
    previous.mkdir(parents=True)
    for name in ("assets", "report.html", "report.md"):
        (out / name).rename(previous / name)
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"warning: {previous}: holds the previous report" in r.output
    assert (previous / "report.html").is_file()  # left for the user to restore
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _files(out)
        r = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
        assert r.exit_code == 1 and r.exception is not None
        assert r.output.strip() == (
            f"error: {out}: another histomodels report is writing into this folder"
        )
        assert _files(out) == before
    finally:
        os.close(fd)


def test_report_bad_inputs(tmp_path: Path) -> None:
    # a missing path said "not a folder"
    r = CliRunner().invoke(app, ["report", str(tmp_path / "gone"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and f"{tmp_path / 'gone'}: no such folder (give" in r.output
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(app, ["report", str(tmp_path / "file"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and f"{tmp_path / 'file'}: not a folder (give" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["report", str(empty), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "nothing to report" in r.output
    (empty / "metrics.json").write_text("{not json")
    r = CliRunner().invoke(app, ["report", str(empty), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "metrics.json" in r.output
    assert not (tmp_path / "o").exists()  # no assets, no half-built pages, no empty folder
    (tmp_path / "kept").mkdir()  # a folder that was there stays, as it was
    r = CliRunner().invoke(app, ["report", str(empty), "--out", str(tmp_path / "kept")])
    assert r.exit_code == 1 and list((tmp_path / "kept").iterdir()) == []


def _report_of_metrics(tmp_path: Path, fields: dict[str, Any]) -> tuple[Path, Result]:
    """``histomodels report`` of an eval folder whose metrics.json holds ``fields`` over a
    plain set of metrics, into ``tmp_path / "o"``: (the folder, the CLI result)."""
    folder = tmp_path / "ev"
    folder.mkdir()
    metrics = {"roc_auc": 0.9, "ci": {"roc_auc": [0.8, 0.95]}, "n": 10, **fields}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder, CliRunner().invoke(app, ["report", str(folder), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"ci": [1, 2]}, "ci is not an object"),
        ({"ci": {"roc_auc": "x"}}, "ci.roc_auc is not a [low, high] pair of numbers"),
        ({"ci": {"roc_auc": [0.1]}}, "ci.roc_auc is not a [low, high] pair of numbers"),
        ({"threshold_sweep": 5}, "threshold_sweep is not a list of rows with threshold, "),
        ({"image_metrics": {"max": 3}}, "image_metrics.max is not an object"),
        ({"external": 5}, "external is not an object"),
        (
            {"external": {"agreement": {"confusion": {"positive": 1}}}},
            "external.agreement.confusion.positive is not an object",
        ),
        # why there is no interval is shown as given: a number or a list there was printed
        # (the noise rate's "(no interval: [1, 2])") or dropped (the metrics' row said "-")
        ({"ci_reason": 5}, "ci_reason is not text"),
        ({"image_metrics": {"max": {"ci_reason": [1]}}}, "image_metrics.max.ci_reason is not"),
        (
            {"external": {"agreement": {"noise_rate_ci_reason": 5}}},
            "external.agreement.noise_rate_ci_reason is not text",
        ),
        (
            {"external": {"agreement": {"noise_rate_ci_reason": [1, 2]}}},
            "external.agreement.noise_rate_ci_reason is not text",
        ),
        # eval --scale's fields: a flag is no number (Python's True is an int); "-" before
        ({"scale": True, "scored_px": [9, 9]}, "scale is not a positive number"),
        ({"scale": "0.5", "scored_px": [9, 9]}, "scale is not a positive number"),
        # shown as "by nan (96x96 px)" before
        ({"scale": float("nan"), "scored_px": [9, 9]}, "scale is not a positive number"),
        ({"scale": -0.5, "scored_px": [9, 9]}, "scale is not a positive number"),
        ({"scale": 0.5, "scored_px": [9]}, "scored_px is not a [width, height] pair of pixel"),
        ({"scale": 0.5, "scored_px": [9, True]}, "scored_px is not a [width, height] pair"),
        ({"scale": 0.5, "scored_px": [9.5, 9]}, "scored_px is not a [width, height] pair"),
        ({"scale": 0.5, "scored_px": "9x9"}, "scored_px is not a [width, height] pair"),
    ],
)
def test_a_tampered_metrics_json_is_one_error_line(tmp_path: Path, change, problem) -> None:
    """metrics.json parts of the wrong shape were tracebacks (AttributeError: 'list' object
    has no attribute 'get', IndexError, TypeError) from the report's tables."""
    folder, r = _report_of_metrics(tmp_path, change)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {folder / 'metrics.json'}: {r.stderr.strip().split(': ', 2)[2]}"
    ]
    assert problem in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("fields", "row"),
    [
        # a metrics.json written by hand or by another tool with "scale": 1 showed "-"
        ({"scale": 1, "scored_px": [96, 96]}, "| resized (scored at) | by 1 (96x96 px) |"),
        ({"scale": 0.25, "scored_px": [64, 64]}, "| resized (scored at) | by 0.25 (64x64 px) |"),
        ({}, None),  # not resized: no row
        # a manifest's eval names how each image's scale was set: no row, and no error
        ({"scale": "estimated from nucleus diameter"}, None),
    ],
)
def test_eval_scale_is_the_resized_row(tmp_path: Path, fields, row) -> None:
    _, r = _report_of_metrics(tmp_path, fields)
    assert r.exit_code == 0, r.output
    md = (tmp_path / "o" / "report.md").read_text()
    assert (row in md) if row else ("| resized" not in md), md


def test_a_manifest_evaluation_counts_the_figures_its_metrics_are_on(tmp_path: Path) -> None:
    """`eval --manifest`'s metrics are on labelled figures (image_metrics.max); the
    "patches (positive)" cell showed `51 (-)`, the tile count, beside an AUC on 26 figures
    (the shared PDFs' run, 26 figures labelled by hand)."""
    figures = {"roc_auc": 0.825, "ci": {"roc_auc": [0.657, 0.955]}, "n": 26, "n_positive": 20}
    fields = {
        "n_tiles": 51,
        "n_images": 56,
        "image_metrics": {"max": figures, "topk_mean": figures},
    }
    folder = tmp_path / "ev"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(fields))
    unlabelled = tmp_path / "ev_unlabelled"
    unlabelled.mkdir()
    (unlabelled / "metrics.json").write_text(json.dumps({"n_tiles": 51, "n_images": 56}))
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["report", str(folder), str(unlabelled), "--out", str(out)])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert (
        "| patches (positive) | 51 tiles of 56 figures; metrics on 26 labelled figures (20) "
        "| 51 tiles of 56 figures; no labelled figure |"
    ) in md, md
    assert "| ROC AUC | 0.8250 [0.6570, 0.9550] | n/a |" in md


def test_an_interval_is_printed_at_the_points_precision(tmp_path: Path, capsys) -> None:
    """The demo's report showed `0.9998 [1.000, 1.000]`: the interval at three digits and
    the point at four, so the interval seemed to leave the point out."""
    folder = tmp_path / "ev"
    folder.mkdir()
    metrics = {"roc_auc": 0.99981, "ci": {"roc_auc": [0.99962, 1.0]}, "n": 600}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    whole = tmp_path / "whole"  # JSON integers, numbers the reader takes: at that precision too
    whole.mkdir()
    (whole / "metrics.json").write_text(json.dumps({"roc_auc": 1, "ci": {"roc_auc": [1, 1]}}))
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["report", str(folder), str(whole), "--out", str(out)])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert "| ROC AUC | 0.9998 [0.9996, 1.0000] | 1.0000 [1.0000, 1.0000] |" in md, md
    # eval's own line for a literature set, at the same precision
    from histomodels.cli.evaluate import _print_external

    block = {"n": 600, "metrics": {"max": {**metrics, "accuracy": 0.99}}}
    _print_external({"n_images": 3, "n_tiles": 9, "n_excluded_leakage": 0, "threshold": 0.5,
                     "threshold_source": "default", "temperature": 1.0,
                     "external": {"reviewed": block}}, out)  # fmt: skip
    assert "max: ROC AUC 0.9998 [0.9996, 1.0000], accuracy 0.9900" in capsys.readouterr().out


def test_an_evaluations_warning_is_in_the_report(tmp_path: Path) -> None:
    """eval's warning (threshold and temperature fitted on test patches) stayed in
    metrics.json: the report, the page people read, showed those metrics unflagged."""
    ckpt = tiny_checkpoint(tmp_path)
    x, y = make_patches(64, seed=3)
    test = ArrayDataset(x, y, source="synthetic-test")
    flagged, clean = tmp_path / "flagged", tmp_path / "clean"
    evaluate_checkpoint(ckpt, test, flagged, val=test, n_bootstrap=0, gallery=False)
    evaluate_checkpoint(ckpt, test, clean, n_bootstrap=0, gallery=False)
    warning = json.loads((flagged / "metrics.json").read_text())["warning"]
    assert warning.startswith("64 of 64 test patches are also in the validation data")
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(flagged), str(clean), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"| warning | {warning} | - |" in (out / "report.md").read_text()
    r = CliRunner().invoke(app, ["report", str(clean), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 0 and "| warning |" not in (tmp_path / "r2" / "report.md").read_text()


def test_evals_training_data_warning_is_in_the_report(tmp_path: Path) -> None:
    """eval's ``training_data_warning`` (the test data is the model's training data) was
    said on stderr and kept in metrics.json, but the report showed only ``warning``: the
    metrics went unflagged on the page people read. It is a row of its own, in both files."""
    said = "t.h5 is the model's training data (the same file as its train_config's data)"
    _, r = _report_of_metrics(tmp_path, {"training_data_warning": said})
    assert r.exit_code == 0, r.output
    assert f"| training data warning | {said} |" in (tmp_path / "o" / "report.md").read_text()
    page = (tmp_path / "o" / "report.html").read_text()
    assert "training data warning" in page and said.replace("'", "&#x27;") in page
    clean = tmp_path / "clean"
    clean.mkdir()
    _, r = _report_of_metrics(clean, {})
    assert (
        r.exit_code == 0 and "training data warning" not in (clean / "o" / "report.md").read_text()
    )


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("metrics.json", "metrics file"),
        ("config.json", "config file"),
        ("history.json", "history file"),
        ("best.pt", "checkpoint file"),
    ],
)
def test_an_input_that_is_a_folder_is_named(tmp_path: Path, name: str, what: str) -> None:
    """``metrics.json/`` (or ``config.json/``, ``history.json/``, ``best.pt/``) was taken for
    no file: "nothing to report", or a report without it."""
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    for nested in (run, tmp_path):  # the folder itself, and its parent (subfolder evals)
        out = tmp_path / "o"
        r = CliRunner().invoke(app, ["report", str(nested if name == "metrics.json" else run),
                                     "--out", str(out)])  # fmt: skip
        assert r.exit_code == 1, r.output
        assert r.stderr.strip().splitlines() == [f"error: {run / name}: is a folder, not a {what}"]
        assert not out.exists()


def test_a_predictions_csv_that_is_a_folder_is_named(tmp_path: Path) -> None:
    """The ROC overlay's input (two evaluations compared): a ``predictions.csv/`` folder
    was skipped unsaid."""
    metrics = {"roc_auc": 0.9, "ci": {"roc_auc": [0.8, 0.95]}, "n": 10}
    for name in ("ev1", "ev2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "ev2" / "predictions.csv").mkdir()
    args = ["report", str(tmp_path / "ev1"), str(tmp_path / "ev2"), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    bad = tmp_path / "ev2" / "predictions.csv"
    assert r.stderr.strip() == f"error: {bad}: is a folder, not a predictions file"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        ("p2,1,abc\n", "line 4: probability 'abc' is not a number from 0 to 1"),
        ("p2,1,1.5\n", "line 4: probability '1.5' is not a number from 0 to 1"),
        ("p2,1,nan\n", "line 4: probability 'nan' is not a number from 0 to 1"),
        # a label eval never writes: the row was skipped as unlabelled, without a word
        ("p2,2,0.5\n", "line 4: label '2' is not 0, 1 or -1 (unlabelled)"),
        ("p2,yes,0.5\n", "line 4: label 'yes' is not 0, 1 or -1 (unlabelled)"),
        # the line the row starts on: an id quoted over two lines named its last line (5)
        ('"p\n2",1,abc\n', "line 4: probability 'abc' is not a number from 0 to 1"),
        ("\xff\xfe,1,\n", "not a UTF-8 CSV file (byte 0xff: invalid start byte)"),
        # past the decoder's first 8 KB chunk: its offset counted from the chunk (dropped)
        ("p" * 9000 + ",1,\xe9\n", "not a UTF-8 CSV file (byte 0xe9: invalid continuation "),
    ],
)
def test_a_tampered_predictions_csv_is_one_error_line(tmp_path: Path, tail, problem) -> None:
    """The ROC overlay read predictions.csv unchecked, in the locale's encoding: a
    probability that is no number, or bytes that are not UTF-8, were tracebacks
    (ValueError, UnicodeDecodeError)."""
    metrics = {"roc_auc": 0.9, "ci": {"roc_auc": [0.8, 0.95]}, "n": 10}
    good = "id,label,probability\np0,0,0.2\np1,1,0.7\n"
    for name in ("ev1", "ev2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
        (tmp_path / name / "predictions.csv").write_text(good, encoding="utf-8")
    bad = tmp_path / "ev2" / "predictions.csv"
    bad.write_bytes(good.encode() + tail.encode("latin-1"))
    args = ["report", str(tmp_path / "ev1"), str(tmp_path / "ev2"), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines()[0].startswith(f"error: {bad}: {problem}"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # its header line lost: the first row was taken for the header, every row skipped
        (
            "p0,0,0.2\np1,1,0.7\n",
            "no column 'label' or 'probability'; its header is ['p0', '0', '0.2']",
        ),
        ("id,label\np0,0\np1,1\n", "no column 'probability'; its header is ['id', 'label']"),
        ("", "no column 'label' or 'probability'; its header is []"),
    ],
    ids=["no header", "no probability", "empty"],
)
def test_a_predictions_csv_without_its_columns_is_one_error_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    """A ``predictions.csv`` without the ``label`` and ``probability`` columns eval writes
    (its header line lost, or another program's CSV) had every row skipped as unlabelled:
    the ROC overlay of the evaluations compared left that one out, exit 0."""
    metrics = {"roc_auc": 0.9, "ci": {"roc_auc": [0.8, 0.95]}, "n": 2}
    for name in ("ev1", "ev2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    good = "id,label,probability\np0,0,0.2\np1,1,0.7\n"
    (tmp_path / "ev1" / "predictions.csv").write_text(good, encoding="utf-8")
    bad = tmp_path / "ev2" / "predictions.csv"
    bad.write_text(text, encoding="utf-8")
    args = ["report", str(tmp_path / "ev1"), str(tmp_path / "ev2"), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {bad}: not a predictions file histomodels writes ({problem})"
    ]
    assert not (tmp_path / "o").exists()


def test_a_manifest_evaluation_of_one_figure_counts_in_the_singular(tmp_path: Path) -> None:
    """Review 1 of 9eb193e: one tile of one labelled figure read '1 tiles of 1 figures;
    metrics on 1 labelled figures (1)'."""
    figures = {"roc_auc": None, "n": 1, "n_positive": 1}
    folder = tmp_path / "ev"
    folder.mkdir()
    fields = {"n_tiles": 1, "n_images": 1, "image_metrics": {"max": figures}}
    (folder / "metrics.json").write_text(json.dumps(fields))
    r = CliRunner().invoke(app, ["report", str(folder), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| 1 tile of 1 figure; metrics on 1 labelled figure (1) |" in md, md


def test_the_weak_label_noise_rate_row_counts_one_figure_in_the_singular() -> None:
    """Review 2 of the fix above: the noise-rate cell still read 'on 1 figures'."""
    from histomodels.report_tables import external_tables

    agreement = {
        "confusion": {"metastasis": {"metastasis": 1}},
        "noise_rate": 0.0,
        "noise_rate_ci": [0.0, 0.0],
        "n_both": 1,
    }
    tables = external_tables("ev", {"external": {"agreement": agreement}})
    cells = [cell for _, _, rows in tables for label, row in rows for cell in row]
    assert any(str(c).endswith("on 1 figure") for c in cells), cells


def test_the_training_data_row_names_the_origin_splits_kept(tmp_path: Path) -> None:
    """A run trained with ``--origin-split`` read 'train.h5' alone, as if it had trained on
    every row of it; the row names the filter its config.json records."""
    from histomodels.report_inputs import Run
    from histomodels.report_tables import dataset_rows

    config = {"model": "cnn", "data": "dev/train.h5"}
    runs = [
        Run("all", tmp_path, config=config),
        Run("kept", tmp_path, config={**config, "origin_split": "kaggle_train,pcam_train"}),
        Run("old", tmp_path, config={**config, "origin_split": None}),  # before the option
    ]
    assert dict(dataset_rows(runs))["training data"] == [
        "dev/train.h5",
        "dev/train.h5 (origin_split kaggle_train,pcam_train)",
        "dev/train.h5",
    ]


@pytest.mark.parametrize(
    ("fields", "cell"),
    [
        # eval of data without labels (a flat folder of tiles): it read '- (-)'
        ({"n_unlabelled": 200, "note": "no labels in the data"}, "200 unlabelled"),
        ({"n": 10, "n_positive": 4, "n_unlabelled": 3}, "10 (4) + 3 unlabelled"),
        ({"n": 10, "n_positive": 4, "n_unlabelled": 0}, "10 (4)"),
        ({"n": 10, "n_positive": 4}, "10 (4)"),  # a metrics.json from before n_unlabelled
    ],
)
def test_the_patch_count_names_unlabelled_patches(tmp_path: Path, fields, cell) -> None:
    folder = tmp_path / "ev"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(fields))
    r = CliRunner().invoke(app, ["report", str(folder), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert f"| patches (positive) | {cell} |" in (tmp_path / "o" / "report.md").read_text()


def test_an_ensemble_has_no_best_epoch(tmp_path: Path) -> None:
    """``histomodels ensemble`` writes ``epoch`` 0 (it trains nothing): its column read
    'best epoch 0' beside its members' real epochs."""
    from histomodels.report_inputs import Run
    from histomodels.report_tables import dataset_rows

    runs = [
        Run("a", tmp_path, checkpoint={"model": "cnn", "epoch": 3}),
        Run("ens", tmp_path, checkpoint={"model": "ensemble", "epoch": 0}),
    ]
    assert dict(dataset_rows(runs))["best epoch"] == ["3", "n/a"]


def test_an_older_metrics_json_inference_precision_is_no_metric(tmp_path: Path) -> None:
    """eval stored its inference precision as ``precision`` before ``inference_precision``:
    an unlabelled run's ``"precision": "fp32"`` showed as a 'precision | fp32' metric row."""
    folder = tmp_path / "ev"
    folder.mkdir()
    old = {"n_unlabelled": 200, "precision": "fp32", "threshold": 0.39, "note": "no labels"}
    (folder / "metrics.json").write_text(json.dumps(old))
    r = CliRunner().invoke(app, ["report", str(folder), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| precision |" not in md and "| threshold | 0.3900 |" in md, md


def test_a_lone_eval_folders_temperature_is_in_the_runs_table(tmp_path: Path) -> None:
    """An eval folder alone has no best.pt: the runs table read 'temperature | n/a' while
    the metrics table showed the 0.961 it evaluated with. The runs table now shows the
    folder's own; a run's checkpoint (the temperature predict uses) still comes first."""
    from histomodels.report_inputs import Evaluation, Run
    from histomodels.report_tables import dataset_rows

    folder = tmp_path / "ev"
    folder.mkdir()
    fields = {"n": 10, "n_positive": 4, "roc_auc": 0.9, "temperature": 0.961, "model": "cnn"}
    (folder / "metrics.json").write_text(json.dumps(fields))
    r = CliRunner().invoke(app, ["report", str(folder), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "o" / "report.md").read_text()
    runs_table = md.split("## Runs and data", 1)[1].split("\n## ", 1)[0]
    assert "| temperature | 0.961 |" in runs_table, md
    run = Run("a", tmp_path, checkpoint={"model": "cnn", "temperature": 1.5},
              evals=[Evaluation(tmp_path, {"temperature": 0.9})])  # fmt: skip
    assert dict(dataset_rows([run]))["temperature"] == ["1.500"]


def test_report_inputs_over_their_caps_are_one_line_unread(tmp_path: Path, monkeypatch) -> None:
    """``report`` read metrics.json, config.json and history.json whole, and streamed
    predictions.csv to its end, however large (a 10 GB file put in a run read it all). Each
    now has a cap a few times the largest a real run writes: over it, one line naming the
    file, read no further; PCam's full test split (32,768 predictions) is well under."""
    import numpy as np

    from histomodels.evaluate import write_predictions
    from histomodels.report_inputs import MAX_REPORT_BYTES, read_predictions

    folder = tmp_path / "eval"
    folder.mkdir()
    metrics = folder / "metrics.json"
    metrics.write_text(json.dumps({"pad": "x" * (65 << 20)}))  # over 64 MB, else valid
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(folder), "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {metrics}: over 64 MB, not a metrics file histomodels writes"
    ]
    assert not out.exists()
    preds = tmp_path / "predictions.csv"
    n = 32_768
    rng = np.random.default_rng(0)
    ids = [f"pcam_test_{i:05d}" for i in range(n)]
    write_predictions(preds, ids, rng.integers(0, 2, n), rng.random(n), 0.5)
    assert preds.stat().st_size < MAX_REPORT_BYTES["predictions.csv"] // 100
    assert len(read_predictions(preds)[0]) == n
    monkeypatch.setitem(MAX_REPORT_BYTES, "predictions.csv", 512 << 10)
    with pytest.raises(ValueError, match=r"predictions.csv: over 524288 bytes, not a pred"):
        read_predictions(preds)


def test_predictions_csv_is_streamed_not_read_whole(tmp_path: Path) -> None:
    """``read_predictions`` read the file whole, decoded it and parsed it from a copy
    (several times its size at once: 0.9 GB at the report's peak for a 100 MB file). Now
    rows are streamed into compact arrays: its peak is well under the file's size."""
    import tracemalloc

    from histomodels.report_inputs import read_predictions

    preds = tmp_path / "predictions.csv"
    n = 40_000
    with preds.open("w", encoding="utf-8") as fh:
        fh.write("id,label,probability\n")
        for i in range(n):  # 100-character ids, as a folder of long file names gives
            fh.write(f"{'x' * 92}{i:08d},{i % 2},{(i % 997) / 997:.8f}\n")
    size = preds.stat().st_size
    tracemalloc.start()
    try:
        y, p = read_predictions(preds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(y) == len(p) == n and y[:3].tolist() == [0, 1, 0] and p[1] == pytest.approx(1 / 997)
    assert peak < size // 2, (peak, size)


@pytest.mark.parametrize(
    ("threshold", "shown"),
    [
        (0.5, "0.5000"),
        (0.9971199907327686, "0.9971"),
        (0.99996, "0.99996"),  # it read 1.0000: a threshold at 1 for a confident model
        (1 - 2**-53, "0.9999999999999999"),
        (0.00002, "0.00002"),
        (1.0, "1.0000 (only scores of exactly 1.0 pass: they saturate)"),
        (0.0, "0.0000"),
    ],
)
def test_a_threshold_near_1_is_not_printed_as_1(tmp_path: Path, threshold, shown) -> None:
    """The demo's run_cnn, chosen on validation among scores near 1, showed threshold
    1.0000: 0.99996 rounded, or scores of exactly 1.0 (a logit over about 37 saturates
    the float64 sigmoid). Enough digits to tell it from 1, and exactly 1 says so."""
    from histomodels.report_tables import threshold_text

    assert threshold_text(threshold) == shown
    _, r = _report_of_metrics(tmp_path, {"threshold": threshold})
    assert r.exit_code == 0, r.output
    assert f"| threshold | {shown} |" in (tmp_path / "o" / "report.md").read_text()


def test_report_says_an_eval_without_intervals_ran_with_bootstrap_0(tmp_path: Path) -> None:
    """An ``eval --bootstrap 0`` column showed values alone under "Point estimate [95%
    bootstrap interval]", with no row saying why, as a too-small set's does."""
    x, y = make_patches(48, seed=11)
    ev = tmp_path / "ev"
    evaluate_checkpoint(tiny_checkpoint(tmp_path), ArrayDataset(x, y, source="s"), ev,
                        n_bootstrap=0, gallery=False)  # fmt: skip
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(ev), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "| 95 % intervals | none: --bootstrap 0 |" in (out / "report.md").read_text()


def test_the_external_note_says_the_noise_rate_interval_is_wilsons(tmp_path: Path) -> None:
    """edff0d7 gave the noise rate Wilson's interval; the section's note still called every
    interval in it a bootstrap one."""
    agreement = {
        "confusion": {"metastasis": {"metastasis": 9, "no_metastasis": 1}},
        "noise_rate": 0.1,
        "noise_rate_ci": [0.018, 0.404],
        "n_both": 10,
    }
    folder = tmp_path / "ev"
    folder.mkdir()
    fields = {"n_tiles": 10, "n_images": 10, "external": {"agreement": agreement}}
    (folder / "metrics.json").write_text(json.dumps(fields))
    r = CliRunner().invoke(app, ["report", str(folder), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| weak-label noise rate | 0.100 [0.018, 0.404] on 10 figures |" in md, md
    assert "Wilson's 95% score interval (not a bootstrap)" in md


def test_a_distillation_runs_report_draws_train_bce_with_the_losses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run trained with ``--teacher`` keeps ``train_bce`` in its history; the report's
    training curves drew it on the 0–1 metric panel beside val_auc. It renders, with
    train_bce on the loss panel."""
    import matplotlib.pyplot as plt

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint(tmp_path), run / "best.pt")
    (run / "config.json").write_text(json.dumps({"model": "cnn", "data": "train.h5"}))
    write_history(run, [{"epoch": e, "train_loss": 1.7 / e, "train_bce": 0.6 / e,
                         "val_loss": 0.7 / e, "val_auc": 0.6, "val_accuracy": 0.5,
                         "lr": 1e-3} for e in (1, 2)])  # fmt: skip
    panels: dict[str, list[str]] = {}
    close = plt.close

    def record(fig=None) -> None:  # each panel's y label and its legend's entries
        for ax in fig.axes if fig is not None else []:
            if ax.get_legend() is not None:
                panels[ax.get_ylabel()] = [t.get_text() for t in ax.get_legend().get_texts()]
        close(fig)

    monkeypatch.setattr(plt, "close", record)
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Training curves" in (out / "report.html").read_text()
    assert panels["loss"] == ["train_bce", "train_loss", "val_loss"]
    assert panels["metric (0–1)"] == ["val_accuracy", "val_auc"]


def test_an_eval_of_a_file_named_like_the_shipped_model_is_not_named_as_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An eval of a checkpoint file ``./pcam-cnn`` was headed ``pcam-cnn/…`` in the report,
    as the shipped model's own eval is: the report says which it was. ``pcam-cnn`` is the
    shipped model also with that file there (it read the file: a local file won), and
    metrics.json names the file ``./pcam-cnn``, which means it when given again. A file
    saved from the shipped model is a file too (``shipped`` false)."""
    x, y = make_patches(8, seed=3)
    data = ArrayDataset(x, y * 0, source="s")  # one class: no plots, quicker
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_checkpoint(tmp_path), "pcam-cnn")
    shipped = evaluate_checkpoint("pcam-cnn", data, "shipped", n_bootstrap=0, gallery=False)
    mine = evaluate_checkpoint(Path("pcam-cnn"), data, "mine", n_bootstrap=0, gallery=False)
    assert shipped["shipped"] and not mine["shipped"]
    assert (shipped["checkpoint"], mine["checkpoint"]) == ("pcam-cnn", "./pcam-cnn")
    assert load_run(Path("shipped"), tmp_path).name == "pcam-cnn/shipped"
    assert load_run(Path("mine"), tmp_path).name == "./pcam-cnn/mine"
    save_checkpoint("copy.pt", read_checkpoint("pcam-cnn"))  # a file, its "pretrained" kept
    copy = evaluate_checkpoint("copy.pt", data, "copy", n_bootstrap=0, gallery=False)
    assert not copy["shipped"]  # it said true: a file saved from the shipped model
    old = json.loads(Path("mine/metrics.json").read_text())  # written before: the bare name
    Path("mine/metrics.json").write_text(json.dumps({**old, "checkpoint": "pcam-cnn"}))
    assert load_run(Path("mine"), tmp_path).name == "./pcam-cnn/mine"
