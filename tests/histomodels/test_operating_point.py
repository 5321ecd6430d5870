"""The operating point: chosen on validation for a target sensitivity (the screening
default) or by Youden's J, and shown moving with the threshold on the test set."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _evalkit import tiny_checkpoint
from sklearn import metrics as skm

from histomodels.data.base import ArrayDataset
from histomodels.evaluate import evaluate_checkpoint
from histomodels.inference import Predictor, sigmoid
from histomodels.metrics import threshold_sweep
from histomodels.report import build_report
from histomodels.synthetic import make_patches

torch.set_num_threads(1)


def _ds(n: int, seed: int, name: str) -> ArrayDataset:
    x, y = make_patches(n, seed=seed)
    return ArrayDataset(x, y, ids=[f"{name}{i}" for i in range(n)], source=name)


def test_threshold_sweep_matches_sklearn_and_moves_one_way() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    rows = threshold_sweep(y, p)
    assert [r["threshold"] for r in rows] == sorted(r["threshold"] for r in rows)
    assert len(rows) == 19 and rows[0]["threshold"] == 0.05 and rows[-1]["threshold"] == 0.95
    recall = [r["recall"] for r in rows]
    spec = [r["specificity"] for r in rows]
    assert all(a >= b for a, b in itertools.pairwise(recall))
    assert all(a <= b for a, b in itertools.pairwise(spec))
    mid = rows[9]  # 0.5
    assert mid["recall"] == pytest.approx(skm.recall_score(y, p >= 0.5))
    assert mid["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))


def test_default_rule_keeps_target_sensitivity_on_validation(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path)
    val = _ds(160, 2, "v")
    res = evaluate_checkpoint(  # on the CPU, as the check below (a GPU's TF32 differs)
        ckpt, _ds(120, 1, "t"), tmp_path / "ev", val=val, n_bootstrap=0, gallery=False,
        device="cpu",
    )  # fmt: skip
    assert "sensitivity>=0.9" in res["threshold_source"]
    # on validation, the chosen threshold keeps >= 90 % of the tumours
    pred = Predictor.load(ckpt, device="cpu", precision="fp32")
    x, y, _ = val.load_all()
    p_val = sigmoid(pred.logits(x), res["temperature"])
    assert (p_val[np.asarray(y) == 1] >= res["threshold"]).mean() >= 0.9
    # the sweep table and its plot are written for the test set
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(saved["threshold_sweep"]) == 19
    assert (tmp_path / "ev" / "threshold.png").stat().st_size > 0
    # Youden stays available and, for the same data, picks its own point
    you = evaluate_checkpoint(
        ckpt,
        _ds(120, 1, "t"),
        tmp_path / "ev_y",
        val=val,
        threshold_rule="youden",
        n_bootstrap=0,
        gallery=False,
        store_temperature="none",
    )
    assert you["threshold_source"].startswith("youden")
    with pytest.raises(ValueError, match="threshold rule"):
        evaluate_checkpoint(ckpt, val, tmp_path / "x", val=val, threshold_rule="best")
    with pytest.raises(ValueError, match="youden"):
        evaluate_checkpoint(
            ckpt, val, tmp_path / "x", val=val, threshold_rule="youden", sensitivity=0.8
        )
    # the report shows the table beside the plot
    html = Path(build_report([tmp_path / "ev"], tmp_path / "rep")["html"]).read_text()
    assert "metrics by threshold" in html and "Recall and specificity vs threshold" in html


@pytest.mark.parametrize("rule", ["youden", "sensitivity"])
def test_a_threshold_rule_without_validation_data_is_a_programmer_error(
    tmp_path: Path, rule: str
) -> None:
    """``evaluate_checkpoint(..., threshold_rule="youden")`` without ``val`` used the model's
    own threshold (pcam-cnn: its shipped sensitivity>=0.9 one) as if the rule had been
    applied; it is now a ValueError (not a UsageError: no user input can cause it, the CLI
    refuses ``--threshold-rule`` without ``--val`` first), raised before any work."""
    from histocore.errors import DomainError
    from histomodels.external import evaluate_manifest

    test = _ds(16, 1, "t")
    for call in (
        lambda: evaluate_checkpoint("pcam-cnn", test, tmp_path / "ev", threshold_rule=rule),
        lambda: evaluate_manifest(
            "pcam-cnn", tmp_path / "no-run", tmp_path / "em", threshold_rule=rule
        ),
    ):
        with pytest.raises(ValueError, match="needs validation data") as caught:
            call()
        assert not isinstance(caught.value, DomainError)  # a traceback, not an error line
        assert f"threshold_rule={rule!r}" in str(caught.value)
    assert not (tmp_path / "ev").exists() and not (tmp_path / "em").exists()
    # no rule: the model's own threshold, as before
    res = evaluate_checkpoint("pcam-cnn", test, tmp_path / "ok", n_bootstrap=0, gallery=False)
    assert res["threshold_source"].startswith("shipped with the model")


def test_a_sensitivity_without_validation_data_is_a_programmer_error(tmp_path: Path) -> None:
    """``evaluate_checkpoint(..., sensitivity=0.95)`` without ``val`` (or with the rule
    youden) raised histocore's UsageError, a DomainError whose message named the command
    line's options (``--sensitivity needs --val``) to a library caller. It is a ValueError
    naming the arguments now, like ``threshold_rule`` (the CLI refuses both first: exit 2)."""
    from histocore.errors import DomainError
    from histomodels.external import evaluate_manifest

    test, val = _ds(16, 1, "t"), _ds(16, 2, "v")
    calls = {
        "needs validation data (val=...)": (
            lambda: evaluate_checkpoint("pcam-cnn", test, tmp_path / "ev", sensitivity=0.95),
            lambda: evaluate_manifest(
                "pcam-cnn", tmp_path / "no-run", tmp_path / "em", sensitivity=0.95
            ),
        ),
        "goes with threshold_rule='sensitivity', not 'youden'": (
            lambda: evaluate_checkpoint(
                "pcam-cnn",
                test,
                tmp_path / "ev",
                val=val,
                threshold_rule="youden",
                sensitivity=0.95,
            ),
        ),
    }
    for message, each in calls.items():
        for call in each:
            with pytest.raises(ValueError, match=re.escape(message)) as caught:
                call()
            assert not isinstance(caught.value, DomainError)  # a traceback, not an error line
            assert str(caught.value).startswith("sensitivity=0.95 ")
            assert "--" not in str(caught.value)  # no option names in the library's words
    assert not (tmp_path / "ev").exists() and not (tmp_path / "em").exists()


def test_predict_and_eval_take_their_threshold_by_one_rule() -> None:
    """``predict.decision_threshold`` and ``evaluate.default_threshold`` were two copies of
    one rule (given, else the shipped threshold, else 0.5); now both commands call
    ``checkpoint.decision_threshold``, each keeping its wording of the source."""
    from histomodels import evaluate, external, predict
    from histomodels.checkpoint import decision_threshold

    shipped = {"threshold": 0.25, "threshold_rule": "sensitivity>=0.9"}
    assert decision_threshold(shipped) == (0.25, "shipped with the model (sensitivity>=0.9)")
    assert decision_threshold(shipped, 0.7) == (0.7, "given")
    assert decision_threshold({"threshold": 1}) == (
        1.0,
        "shipped with the model (rule not recorded)",
    )
    assert decision_threshold({}) == (0.5, "default 0.5 (the model ships no threshold)")
    note = evaluate.NO_VALIDATION
    assert decision_threshold({}, note=note) == (0.5, "default 0.5 (no validation set given)")
    assert decision_threshold(shipped, note=note) == (
        0.25,
        "shipped with the model (sensitivity>=0.9 on its own validation data; "
        "no validation set given)",
    )
    for module in (evaluate, external, predict):  # no second copy of the rule left
        assert not hasattr(module, "default_threshold"), module
        assert getattr(module, "decision_threshold", decision_threshold) is decision_threshold


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_threshold_sweep_refuses_probabilities_that_are_not_finite(bad: float) -> None:
    """p >= t is False for NaN: counted as negatives, the table would read as a real one."""
    from histomodels.metrics import threshold_sweep

    with pytest.raises(ValueError, match="finite"):
        threshold_sweep(np.array([0, 1]), np.array([bad, 0.5]))
