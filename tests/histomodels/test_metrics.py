"""Metrics against scikit-learn and hand-computed examples; bootstrap formulas vs sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from histomodels.metrics import (
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    expected_calibration_error,
    summarize,
    weighted_metrics,
)


def _data(n: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1).round(2)  # rounded: many ties
    return y, p


def test_hand_computed_example() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = binary_metrics(y, p, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 1)
    assert m["accuracy"] == 0.5 and m["recall"] == 0.5 and m["specificity"] == 0.5
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 pos/neg pairs ordered correctly
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    # ECE, 15 bins: each patch alone in its bin → mean |p - y|
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.6 + 0.1) / 4)


def test_weighted_formulas_equal_sklearn_on_unit_weights() -> None:
    y, p = _data()
    ref = binary_metrics(y, p, 0.45)
    got = weighted_metrics(np.ones(len(y)), y, p, 0.45)
    for key, val in got.items():
        assert val[0] == pytest.approx(ref[key], abs=1e-12), key


def test_weighted_formulas_equal_sklearn_with_sample_weights() -> None:
    y, p = _data(seed=3)
    w = np.random.default_rng(0).integers(0, 4, len(y))
    got = weighted_metrics(w, y, p, 0.5)
    assert got["roc_auc"][0] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w))
    assert got["pr_auc"][0] == pytest.approx(skm.average_precision_score(y, p, sample_weight=w))
    assert got["f1"][0] == pytest.approx(skm.f1_score(y, p >= 0.5, sample_weight=w))


def test_bootstrap_is_seeded_and_brackets_estimate() -> None:
    y, p = _data(300)
    a = bootstrap_ci(y, p, n_resamples=200, seed=5)
    b = bootstrap_ci(y, p, n_resamples=200, seed=5)
    assert a == b
    point = binary_metrics(y, p)
    for key, (lo, hi) in a.items():
        assert lo <= point[key] <= hi, key
        assert hi - lo < 0.3, key
    # wider with fewer samples
    small = bootstrap_ci(y[:40], p[:40], n_resamples=200, seed=5)
    assert small["roc_auc"][1] - small["roc_auc"][0] > a["roc_auc"][1] - a["roc_auc"][0]


def test_threshold_choice() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.8, 0.9])
    thr, how = choose_threshold(y, p)
    assert how == "youden" and thr == pytest.approx(0.6)  # J = 1 - 1/4 beats 2/3 - 0 at 0.8
    thr, how = choose_threshold(y, p, sensitivity=0.6)
    assert thr == pytest.approx(0.8) and how.startswith("sensitivity")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(3), p[:3])


def test_ece_perfect_and_bad_calibration() -> None:
    y = np.array([0, 1] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.where(y == 1, 0.0, 1.0)) == pytest.approx(1.0)


def test_summarize_rejects_unlabelled() -> None:
    with pytest.raises(ValueError, match="0/1"):
        summarize(np.array([-1, 1]), np.array([0.2, 0.3]))
    out = summarize(*_data(100), n_resamples=50)
    assert set(out["ci"]) >= {"roc_auc", "ece", "brier", "f1"}


def test_sensitivity_rule_names_the_value_given():
    """':g' kept six digits: --sensitivity 0.9999999 was stored and shown as 'sensitivity>=1'."""
    y = np.array([0, 0, 1, 1] * 5)
    p = np.linspace(0.01, 0.99, len(y))
    assert choose_threshold(y, p, sensitivity=0.9999999)[1] == "sensitivity>=0.9999999"
    assert choose_threshold(y, p, sensitivity=0.9)[1] == "sensitivity>=0.9"


def test_no_interval_below_the_minimum_of_each_class_and_it_says_why() -> None:
    """2 reviewed figures gave ROC AUC 1.0000 [1.000, 1.000]: an interval meaning nothing."""
    from histomodels.metrics import MIN_PER_CLASS_FOR_CI

    tiny = summarize(np.array([0, 1]), np.array([0.2, 0.9]), n_resamples=100)
    assert tiny["roc_auc"] == 1.0 and tiny["ci"] is None and "ci_method" not in tiny
    assert tiny["ci_reason"] == (
        f"too few patches for an interval: 1 tumour, 1 normal "
        f"(at least {MIN_PER_CLASS_FOR_CI} of each needed)"
    )
    k = MIN_PER_CLASS_FOR_CI
    y = np.array([0] * (k - 1) + [1] * 50)
    p = np.linspace(0, 1, len(y))
    short = summarize(y, p, n_resamples=100, unit="figures", names=("no_metastasis", "metastasis"))
    assert short["ci"] is None
    assert short["ci_reason"].startswith(
        f"too few figures for an interval: 50 metastasis, {k - 1} no_metastasis"
    )
    y = np.array([0] * k + [1] * k)  # at the minimum: intervals
    enough = summarize(y, np.linspace(0, 1, len(y)), n_resamples=100)
    assert set(enough["ci"]) >= {"roc_auc"} and "ci_reason" not in enough
    assert "ci" not in summarize(np.array([0, 1]), np.array([0.2, 0.9]), n_resamples=0)
