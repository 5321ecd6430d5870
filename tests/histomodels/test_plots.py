"""Training curves: seconds, flags and 0–1 metrics never share an axis."""

from __future__ import annotations

from pathlib import Path

import PIL.Image

from histomodels.plots import curve_groups, curves_plot

HISTORY = [
    {
        "epoch": e,
        "lr": 0.001,
        "train_loss": 0.7 / e,
        "val_loss": 0.8 / e,
        "val_auc": 0.6 + 0.05 * e,
        "val_accuracy": 0.55 + 0.05 * e,
        "elapsed_seconds": 5.0 * e,
        "epoch_seconds": 5.0,
        "frozen_backbone": e < 2,
    }
    for e in range(1, 5)
]


def test_curve_groups_keep_seconds_and_flags_off_the_metric_axis() -> None:
    groups = curve_groups(HISTORY)
    assert groups["loss"] == ["train_loss", "val_loss"]
    assert groups["metric (0–1)"] == ["val_accuracy", "val_auc"]
    assert groups["seconds"] == ["elapsed_seconds", "epoch_seconds"]
    assert all("frozen_backbone" not in keys for keys in groups.values())


def test_curves_plot_draws_one_panel_per_group(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    path = curves_plot(HISTORY, tmp_path / "curves.png", title="t")
    with PIL.Image.open(path) as img:
        width, height = img.size
    assert width > 3 * height  # three panels side by side (two would be ~2.2 : 1)
    assert set(plt.get_fignums()) == before  # the figure was closed


def test_curves_plot_without_timing_has_two_panels(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if "seconds" not in k} for r in HISTORY]
    assert "seconds" not in {k for k, v in curve_groups(rows).items() if v}
    with PIL.Image.open(curves_plot(rows, tmp_path / "c.png")) as img:
        width, height = img.size
    assert 1.5 * height < width < 2.5 * height
