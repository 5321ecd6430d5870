"""What is in a dataset: counts, label balance, and a contact sheet of sample patches."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from histocore.io import atomic_write_bytes
from histomodels.data.base import DatasetError, PatchDataset

CLASS_NAMES = {0: "0 normal", 1: "1 tumour", -1: "unlabelled"}


def describe(ds: PatchDataset) -> dict[str, Any]:
    """Counts per label, positive fraction, patch shape and reader, as a JSON-able dict."""
    labels = np.asarray(ds.labels())
    counts = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)}
    labelled = int(sum(v for k, v in counts.items() if k in (0, 1)))
    info: dict[str, Any] = {
        "source": ds.source,
        "reader": type(ds).__name__,
        "n": len(ds),
        "counts": {str(k): v for k, v in sorted(counts.items())},
        "positive_fraction": (counts.get(1, 0) / labelled) if labelled else None,
        "patch_shape": list(ds[0][0].shape) if len(ds) else None,
    }
    figures = getattr(ds, "figures", None)
    if figures is not None:  # histofetch run: tiles per figure
        info["figures"] = len(figures)
    return info


def contact_sheet(ds: PatchDataset, out: str | Path, per_class: int = 8, seed: int = 0) -> Path:
    """PNG grid: one row per label present, ``per_class`` random patches each, ids as titles."""
    import matplotlib.pyplot as plt

    fig = sheet_figure(ds, per_class, seed)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)


#: The longest patch id a sheet's title shows whole; a longer one keeps its end, where ids
#: differ (``pcam_valid_0031763``; cut to its first 14 characters, every title read
#: ``pcam_valid_003``).
TITLE_CHARS = 20


def sheet_title(pid: object) -> str:
    """A patch id as a sheet shows it: whole, or ``…`` and its last characters."""
    text = str(pid)
    return text if len(text) <= TITLE_CHARS else "…" + text[-(TITLE_CHARS - 1) :]


def sheet_figure(ds: PatchDataset, per_class: int = 8, seed: int = 0) -> Any:
    """The matplotlib figure :func:`contact_sheet` saves (close it when done). Laid out by
    matplotlib's constrained layout, which leaves each row's titles room below the row
    above (``tight_layout`` let them touch its images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(ds.labels())
    rng = np.random.default_rng(seed)
    classes = [c for c in (0, 1, -1) if np.any(labels == c)]
    if not classes:
        raise DatasetError(f"{ds.source}: no patches to show")
    fig, axes = plt.subplots(
        len(classes),
        per_class,
        figsize=(1.3 * per_class, 1.5 * len(classes)),
        squeeze=False,
        layout="constrained",
    )
    for r, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        for k, ax in enumerate(axes[r]):
            ax.axis("off")
            if k < len(pick):
                img, _, pid = ds[int(pick[k])]
                ax.imshow(img)
                ax.set_title(sheet_title(pid), fontsize=5)
        axes[r][0].text(
            -0.15,
            0.5,
            CLASS_NAMES[c],
            transform=axes[r][0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    fig.suptitle(f"{Path(ds.source.split(':', 1)[-1]).name}: {len(ds)} patches", fontsize=9)
    return fig
