"""PNG figures for evaluation and reports (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn import metrics as skm

from histocore.io import atomic_write_bytes, fraction_text


def save_figure(
    fig: plt.Figure, path: str | Path, dpi: int = 110, metadata: dict[str, str] | None = None
) -> Path:
    """Render to memory first, then rename into place: no half-written PNGs. ``metadata``:
    extra PNG text chunks (key, text)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def roc_plot(y: np.ndarray, p: np.ndarray, path: Path, threshold: float | None = None) -> Path:
    fpr, tpr, _thr = skm.roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(fpr, tpr, lw=1.8, label=f"AUC = {skm.roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    if threshold is not None:
        pred = p >= threshold
        tp, fn = (pred & (y == 1)).sum(), (~pred & (y == 1)).sum()
        fp, tn = (pred & (y == 0)).sum(), (~pred & (y == 0)).sum()
        ax.plot(
            fp / max(fp + tn, 1),
            tp / max(tp + fn, 1),
            "o",
            color="C3",
            label=f"threshold {fraction_text(threshold)}",
        )
    ax.set(
        xlabel="1 - specificity (FPR)",
        ylabel="sensitivity (TPR)",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def pr_plot(y: np.ndarray, p: np.ndarray, path: Path) -> Path:
    prec, rec, _ = skm.precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.step(rec, prec, where="post", lw=1.8, label=f"AP = {skm.average_precision_score(y, p):.3f}")
    ax.axhline(y.mean(), color="k", ls=":", lw=0.8, label=f"prevalence {y.mean():.2f}")
    ax.set(
        xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01)
    )
    ax.legend(loc="lower left")
    return save_figure(fig, path)


def confusion_plot(tn: int, fp: int, fn: int, tp: int, path: Path, threshold: float) -> Path:
    cm = np.array([[tn, fp], [fn, tp]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        share = v / max(cm[i].sum(), 1)
        ax.text(
            j,
            i,
            f"{v}\n({share:.1%})",
            ha="center",
            va="center",
            color="white" if v > cm.max() / 2 else "black",
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["normal", "tumour"],
        yticklabels=["normal", "tumour"],
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion at threshold {fraction_text(threshold)}",
    )
    return save_figure(fig, path)


def reliability_plot(y: np.ndarray, p: np.ndarray, path: Path, n_bins: int = 15) -> Path:
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    centers, frac, counts = [], [], []
    for b in range(n_bins):
        m = bins == b
        if m.any():
            centers.append(p[m].mean())
            frac.append(y[m].mean())
            counts.append(m.sum())
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.2, 5), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    ax.plot(centers, frac, "o-", label="model")
    ax.set(ylabel="fraction positive", title="Reliability", ylim=(0, 1))
    ax.legend(loc="upper left")
    axh.hist(p, bins=n_bins, range=(0, 1), color="C0")
    axh.set(xlabel="predicted probability", ylabel="patches", xlim=(0, 1))
    return save_figure(fig, path)


def threshold_plot(y: np.ndarray, p: np.ndarray, path: Path, threshold: float) -> Path:
    """Recall (sensitivity) and specificity against the threshold, the chosen one marked."""
    t = np.linspace(0, 1, 201)
    pos, neg = p[y == 1], p[y == 0]
    recall = [(pos >= x).mean() if len(pos) else np.nan for x in t]
    spec = [(neg < x).mean() if len(neg) else np.nan for x in t]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot(t, recall, label="recall (sensitivity)")
    ax.plot(t, spec, label="specificity")
    ax.axvline(threshold, color="k", ls=":", lw=1, label=f"chosen {fraction_text(threshold)}")
    ax.set(
        xlabel="threshold", ylabel="rate", title="Operating point on the test set", ylim=(0, 1.02)
    )
    ax.legend(loc="lower center")
    return save_figure(fig, path)


def histogram_plot(scores: np.ndarray, path: Path, title: str, xlabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.hist(scores, bins=20, range=(0, 1), color="C0", edgecolor="white")
    ax.set(xlabel=xlabel, ylabel="count", title=title, xlim=(0, 1))
    return save_figure(fig, path)


def curve_groups(history: list[dict]) -> dict[str, list[str]]:
    """History columns by panel: losses, 0–1 metrics (AUC, accuracy, …) and timing (seconds).

    Flags (booleans such as ``frozen_backbone``) and bookkeeping (epoch, step, lr) are not
    curves; seconds never share an axis with a metric bounded by 1, nor a loss (a column
    naming ``loss`` or ``bce``: ``train_bce``, the BCE part of a distillation loss, is
    unbounded and was drawn on the 0–1 axis beside ``val_auc``).
    """
    keys = sorted(
        {
            k
            for row in history
            for k, v in row.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and k not in ("epoch", "step", "lr", "time")
        }
    )
    timing = [k for k in keys if k.endswith(("seconds", "_s")) or "time" in k]
    losses = [k for k in keys if ("loss" in k or "bce" in k) and k not in timing]
    metrics = [k for k in keys if k not in timing and k not in losses]
    return {"loss": losses, "metric (0–1)": metrics, "seconds": timing}


def curves_plot(history: list[dict], path: Path, title: str = "Training") -> Path:
    """Training curves from a ``history.json`` (list of epochs): one panel for the losses,
    one for the validation metrics on a 0–1 axis, one for timing."""
    groups = {name: keys for name, keys in curve_groups(history).items() if keys}
    x = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(3.6 * max(len(groups), 1), 3.2))
    axes = np.atleast_1d(axes)
    for ax, (label, keys) in zip(axes, groups.items(), strict=False):
        for k in keys:
            ax.plot(x, [row.get(k, np.nan) for row in history], "o-", ms=3, label=k)
        ax.set(xlabel="epoch", ylabel=label)
        if label.startswith("metric"):
            ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def overlay_heatmap(
    image: np.ndarray,
    boxes: Sequence[tuple[float, float, float, float, float]],
    path: Path,
    title: str = "",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Tile probabilities ``(x0, y0, x1, y1, prob)`` (image pixels) drawn over the image;
    overlapping tiles are averaged, pixels in no tile (background) stay uncoloured.
    ``metadata``: PNG text chunks, as :func:`save_figure`."""
    h, w = image.shape[:2]
    heat = np.full((h, w), np.nan, dtype=np.float32)
    count = np.zeros((h, w), dtype=np.float32)
    acc = np.zeros((h, w), dtype=np.float32)
    for x0, y0, x1, y1, prob in boxes:
        ya, yb, xa, xb = (int(np.rint(v)) for v in (y0, y1, x0, x1))
        sl = (slice(max(ya, 0), yb), slice(max(xa, 0), xb))
        acc[sl] += prob
        count[sl] += 1
    seen = count > 0
    heat[seen] = acc[seen] / count[seen]
    scale = 6.0 / max(h, w)
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(w * scale, 2.5) + 1, max(h * scale, 2.5)))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(image)
    im = axes[1].imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=0.55)
    axes[1].set_title("tumour probability per tile", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, metadata=metadata)


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: Path,
    *,
    cols: int = 6,
    title: str = "",
    cell: float = 1.9,
    dpi: int = 80,
) -> Path:
    """A contact sheet / gallery of equally sized panels."""
    n = max(len(images), 1)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    extra = max((t.count("\n") for t in titles), default=0)  # caption lines beyond the first
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * cell, rows * (cell + 0.35 + 0.12 * extra)), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t in zip(axes.ravel(), images, titles, strict=False):
        ax.imshow(img, interpolation="nearest")
        # y given: matplotlib then skips placing each title against every axes of its row at
        # each draw (most of a 24-panel gallery's seconds); an ax.text instead made
        # tight_layout shrink the panels to fit wide captions
        ax.set_title(t, fontsize=7, y=1.0)
    if not images:
        axes[0, 0].text(0.5, 0.5, "(none)", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    # tight_layout leaves no room for a title placed by hand (y given): make it
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None, h_pad=1.08 + 0.9 * (extra + 1))
    return save_figure(fig, path, dpi=dpi)
