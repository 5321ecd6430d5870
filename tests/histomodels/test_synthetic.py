"""The synthetic PCam-like generator: deterministic, labelled by the centre, learnable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import names_the_file_in_the_way
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from histomodels.data import open_dataset
from histomodels.synthetic import make_figure, make_patches, write_h5


def test_shapes_balance_and_determinism() -> None:
    x, y = make_patches(300, seed=3, positive_fraction=0.3)
    assert x.shape == (300, 96, 96, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
    assert y.sum() == 90
    x2, y2 = make_patches(300, seed=3, positive_fraction=0.3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = make_patches(300, seed=4, positive_fraction=0.3)
    assert not np.array_equal(x, x3)
    # H&E-like colours: pink/purple, red and blue above green on average, not saturated
    mean = x.reshape(-1, 3).mean(0)
    assert mean[0] > mean[1] and mean[2] > mean[1]
    assert 80 < mean.mean() < 210


def test_edge_cases() -> None:
    x, y = make_patches(0)
    assert x.shape == (0, 96, 96, 3) and len(y) == 0
    assert make_patches(5, positive_fraction=1.0)[1].tolist() == [1] * 5
    with pytest.raises(ValueError):
        make_patches(5, positive_fraction=1.5)


def _pool(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per-patch colour statistics of a square region, 4x4 average pooled."""
    region = x[:, lo:hi, lo:hi].astype(np.float32)
    n, s = len(x), hi - lo
    pooled = region.reshape(n, 4, s // 4, 4, s // 4, 3).mean((2, 4))
    return np.concatenate([pooled.reshape(n, -1), region.std((1, 2))], 1)


def test_label_lives_in_the_centre_and_is_not_trivial() -> None:
    x, y = make_patches(1600, seed=7)
    xt, yt, xv, yv = x[:1200], y[:1200], x[1200:], y[1200:]

    def auc(features) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1))
        clf.fit(features(xt), yt)
        return roc_auc_score(yv, clf.decision_function(features(xv)))

    centre = auc(lambda a: _pool(a, 32, 64))
    corner = auc(lambda a: _pool(a[:, :32, :32], 0, 32))
    brightness = roc_auc_score(yv, -xv.reshape(len(xv), -1).mean(1))
    assert centre > 0.75, centre  # the centre carries learnable signal
    assert corner < centre - 0.1, (corner, centre)  # a corner tells much less
    assert brightness < 0.85, brightness  # not separable by one global statistic


def test_figure_is_a_seamless_micrograph() -> None:
    fig = make_figure(2, 3, seed=1)
    assert fig.shape == (192, 288, 3) and fig.dtype == np.uint8
    assert 60 < fig.mean() < 230
    # no seams on the 96 px grid: the column step at x=96 looks like any other
    step = np.abs(np.diff(fig.astype(np.int16), axis=1)).mean((0, 2))
    assert step[95] < 3 * np.median(step)
    assert not np.array_equal(fig, make_figure(2, 3, seed=1, tumour=False))


def test_write_h5_round_trips_through_open_dataset(tmp_path) -> None:
    path = write_h5(tmp_path / "synthetic.h5", 20, seed=5)
    ds = open_dataset(path)
    x, y = make_patches(20, seed=5)
    assert len(ds) == 20 and np.array_equal(ds.labels(), y)
    img, label, pid = ds[3]
    assert np.array_equal(img, x[3]) and label == y[3] and pid == "synthetic_5_3"
    assert not (tmp_path / "synthetic.h5.part").exists()


def test_write_h5_under_a_file_names_the_file(tmp_path) -> None:
    """``write_h5(a/x.h5)`` (``a`` a file) made its folder with a plain mkdir (see
    conftest.names_the_file_in_the_way)."""
    names_the_file_in_the_way(tmp_path, lambda a: write_h5(a / "x.h5", 2))
