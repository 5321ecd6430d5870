"""Training curves: seconds, flags and 0–1 metrics never share an axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest

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


def test_the_distillation_bce_is_on_the_loss_panel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train_bce`` (history of a run with ``--teacher``: the BCE against the labels, an
    unbounded loss) was put on the 0–1 metric panel beside ``val_auc`` (only keys naming
    'loss' went on the loss panel); it is a loss, and is drawn with the losses."""
    import matplotlib.pyplot as plt

    rows = [{**r, "train_bce": 0.9 / r["epoch"]} for r in HISTORY]
    groups = curve_groups(rows)
    assert groups["loss"] == ["train_bce", "train_loss", "val_loss"]
    assert groups["metric (0–1)"] == ["val_accuracy", "val_auc"]
    drawn: dict[str, list[str]] = {}
    close = plt.close

    def record(fig: Any = None) -> None:  # each panel's y label and its legend's entries
        for ax in fig.axes if fig is not None else []:
            drawn[ax.get_ylabel()] = [t.get_text() for t in ax.get_legend().get_texts()]
        close(fig)

    monkeypatch.setattr(plt, "close", record)
    with PIL.Image.open(curves_plot(rows, tmp_path / "c.png")) as img:
        assert img.size[0] > 3 * img.size[1]
    assert drawn["loss"] == ["train_bce", "train_loss", "val_loss"]
    assert drawn["metric (0–1)"] == ["val_accuracy", "val_auc"]


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


def _figure_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text of each figure saved from now on (titles, labels, legend entries)."""
    import matplotlib.figure
    import matplotlib.text

    seen: list[str] = []
    savefig = matplotlib.figure.Figure.savefig

    def record(fig: matplotlib.figure.Figure, *args: Any, **kw: Any) -> None:
        seen.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        savefig(fig, *args, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return seen


def test_figures_print_a_threshold_as_the_text_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A threshold of 0.99996 was 'chosen 1.000' in threshold.png (and the ROC and
    confusion figures) while the text said 0.99996."""
    from histomodels.plots import confusion_plot, roc_plot, threshold_plot

    texts = _figure_texts(monkeypatch)
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.99997, 0.99999, 0.3, 0.2, 0.99996])
    t = 0.99996
    roc_plot(y, p, tmp_path / "roc.png", threshold=t)
    confusion_plot(2, 1, 1, 2, tmp_path / "c.png", threshold=t)
    threshold_plot(y, p, tmp_path / "t.png", threshold=t)
    said = [s for s in texts if "threshold " in s or "chosen" in s]
    assert len(said) >= 3 and all("0.99996" in s and "1.000" not in s for s in said), said


def test_image_grid_captions_as_wide_as_a_cell_do_not_shrink_the_panels(tmp_path: Path) -> None:
    """A caption of a 28-character id (external galleries) must not make the layout shrink
    the pictures to fit it (an ax.text caption did: panels at half their area)."""
    from histomodels.plots import image_grid

    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255

    def red_pixels(titles: list[str], name: str) -> int:
        path = image_grid([red] * 12, titles, tmp_path / name, cols=6, title="gallery")
        rgb = np.asarray(PIL.Image.open(path).convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())

    short = red_pixels(["a"] * 12, "short.png")
    wide = red_pixels(["metastasis (weak) 0.93\n…WWWWWWWWWWWWWWWWWWWWWWWWWWWW"] * 12, "wide.png")
    assert short > 0
    assert wide > 0.8 * short, (wide, short)


@pytest.mark.parametrize("caption", ["p=0.93 label 1", "metastasis (weak) 0.93\n…CM-01Z-00-DX1"])
def test_image_grid_captions_do_not_cover_the_picture_above(tmp_path: Path, caption: str) -> None:
    """A caption placed by hand is left out of tight_layout's sums: its lines were drawn over
    the bottom of the picture in the row above."""
    from histomodels.plots import image_grid

    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    path = image_grid([red] * 12, [caption] * 12, tmp_path / "g.png", cols=6, title="gallery")
    rgb = np.asarray(PIL.Image.open(path).convert("RGB")).astype(int)
    is_red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    dark = (rgb < 100).all(axis=-1)  # caption text, not a red panel's anti-aliased edge
    rows, cols = np.asarray(is_red.any(axis=1)), np.asarray(is_red.any(axis=0))
    inside = rows[:, None] & cols[None, :]
    assert is_red.any() and dark.any()
    assert not (dark & inside).any()
