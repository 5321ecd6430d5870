"""Temperature scaling recovers a known over-confidence factor and never hurts NLL."""

from __future__ import annotations

import numpy as np
import pytest

from histomodels.calibration import fit_temperature, nll


def test_recovers_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logits))).astype(int)
    overconfident = 3.0 * true_logits  # a model 3x too sure of itself
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    assert nll(overconfident, labels, t) < nll(overconfident, labels) - 0.05


def test_underconfident_gets_t_below_one() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-z))).astype(int)
    assert fit_temperature(z / 2, y) == pytest.approx(0.5, rel=0.1)


def test_rejects_unlabelled() -> None:
    with pytest.raises(ValueError, match="0/1"):
        fit_temperature(np.array([0.1, 2.0]), np.array([-1, 1]))
