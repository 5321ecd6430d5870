"""``histomodels eval --manifest RUN``: the external literature test set.

Every kept figure of a histofetch run is resized to approximately PCam scale and cut into
96 px tissue tiles by :class:`histomodels.data.manifest_tiles.ManifestTileDataset` (scale
from the measured nucleus diameter; see that module). Each tile is scored, and tile scores
are aggregated to one score per figure in two ways:

* ``max``: the most suspicious tile (the usual multiple-instance rule: one metastatic
  region makes the figure positive), sensitive to a single false-positive tile;
* ``topk_mean``: the mean of the ``k`` highest tiles, a little more robust to one outlier.

Figures a person labelled (``histomodels label``) give image-level metrics; all figures
get a score distribution, a heatmap overlay each, and a contact sheet ranked by score.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from histocore.csvcells import safe_cell, safe_dict
from histocore.errors import UsageError
from histocore.io import atomic_write_text, make_parents, unique_stem
from histocore.progress import task

AGGREGATIONS = ("max", "topk_mean")


def _calibration(y: np.ndarray, rows: list[dict]) -> dict[str, Any]:
    """ECE, Brier, mean probability vs fraction positive per image aggregation (reviewed
    labels)."""
    from histomodels.metrics import binary_metrics

    out: dict[str, Any] = {}
    for agg in AGGREGATIONS:
        s = np.array([r[agg] for r in rows], dtype=float)
        m = binary_metrics(y, s)
        out[agg] = {
            "ece": m["ece"],
            "brier": m["brier"],
            "mean_probability": float(s.mean()),
            "fraction_positive": float(y.mean()),
        }
    out["note"] = "reliability.png shows topk_mean; max over tiles is biased upwards by design"
    return out


def aggregate(probs: np.ndarray, top_k: int) -> dict[str, float]:
    """Image-level scores from one figure's tile probabilities."""
    if len(probs) == 0:
        return {"max": float("nan"), "topk_mean": float("nan")}
    top = np.sort(probs)[::-1][: max(1, top_k)]
    return {"max": float(top[0]), "topk_mean": float(top.mean())}


def _distribution(scores: np.ndarray) -> dict[str, float]:
    s = scores[np.isfinite(scores)]
    if len(s) == 0:
        return {"n": 0}
    q = np.percentile(s, [5, 25, 50, 75, 95])
    return {
        "n": len(s),
        "mean": float(s.mean()),
        "std": float(s.std()),
        "min": float(s.min()),
        "p5": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "p95": float(q[4]),
        "max": float(s.max()),
        "fraction_above_0.5": float((s >= 0.5).mean()),
    }


def _thumb(rgb: np.ndarray, size: int = 256) -> np.ndarray:
    """Fit into a white ``size`` square; small figures are enlarged (nearest neighbour, so
    a 96 px patch stays recognisable), large ones reduced."""
    from PIL import Image

    im = Image.fromarray(rgb)
    f = min(size / im.width, size / im.height)
    new = (max(1, round(im.width * f)), max(1, round(im.height * f)))
    im = im.resize(new, Image.Resampling.NEAREST if f > 1 else Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return np.asarray(canvas)


def evaluate_manifest(
    checkpoint: str | Path,
    run_dir: str | Path,
    out: str | Path,
    *,
    top_k: int = 5,
    scale: float | None = None,
    min_tissue: float = 0.5,
    batch_size: int = 256,
    tta: bool = False,
    precision: str = "fp32",
    device: str | None = None,
    threshold: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_heatmaps: int = 200,
    include_leaky: bool = False,
    train_data: str | Path | None = None,
    val: Any | None = None,
    threshold_rule: str | None = None,
    sensitivity: float | None = None,
    store_temperature: str = "beside",
    val_scale: float | None = None,
) -> dict[str, Any]:
    """Score every kept figure; write metrics.json, image_scores.csv, tile_predictions.csv,
    score_hist_<agg>.png, heatmaps/<unique stem of the image id>.png, contact_sheet.png and
    errors_sheet.png.

    Metrics are image-level, on reviewed labels and on caption weak labels, with the
    weak-label noise rate; figures flagged for leakage are left out unless
    ``include_leaky``; with ``train_data`` (the training patches), figures whose tiles
    reprint a training patch are flagged ``training_duplicate`` (:mod:`histomodels.leakage`).

    Tiles are read with the model's temperature and figures with ``threshold`` (when not
    given: the one shipped with the model, else 0.5, as ``eval --data`` does); or, with
    ``val`` (labelled PCam-style patches), with the temperature fitted and the threshold
    chosen there, as :func:`histomodels.evaluate.evaluate_checkpoint` does
    (``threshold_rule``, ``sensitivity``, ``store_temperature``): a figure is called
    positive when its score (its highest tile, or the top-k mean) reaches the patch
    threshold. ``val_scale``: ``val``'s tiles are resized by it first (not ``scale``, the
    figures' factor).
    """
    from histocore.manifest import Manifest
    from histomodels import plots, pretrained
    from histomodels.checkpoint import decision_threshold
    from histomodels.data.images import decode_image
    from histomodels.data.manifest_tiles import ManifestTileDataset
    from histomodels.evaluate import (
        NO_VALIDATION,
        check_threshold_options,
        operating_point,
        write_json,
    )
    from histomodels.external_labels import label_tables, targets
    from histomodels.inference import Predictor, sigmoid
    from histomodels.predict import probability_text

    check_threshold_options(val, threshold_rule, sensitivity)
    if val is not None and threshold is not None:
        raise UsageError("give a threshold or validation data to choose one on, not both")
    out = Path(out)
    pred = Predictor.load(checkpoint, device=device, precision=precision)
    ckpt = pred.ckpt
    ds = ManifestTileDataset(Path(run_dir), scale=scale, min_tissue=min_tissue)
    images = ds.load_all()[0]

    def infer(patches: np.ndarray, desc: str) -> np.ndarray:
        with task(desc, len(patches)) as shown:
            return pred.logits(patches, batch_size=batch_size, tta=tta, progress=shown.advance)

    default = decision_threshold(ckpt, threshold, note=NO_VALIDATION)
    point = operating_point(
        pred, checkpoint, val, infer, default=default, threshold_rule=threshold_rule,
        sensitivity=sensitivity, store_temperature=store_temperature, val_scale=val_scale,
    )  # fmt: skip
    cut: float = point.pop("threshold")
    temperature = point["temperature"]
    logits = infer(images, "scoring tiles")
    probs = sigmoid(logits, temperature)
    with Manifest.load(Path(run_dir)) as manifest:
        truth = targets(manifest)
    train_dups: dict[str, int] = {}
    if train_data is not None:
        from histomodels.data import open_dataset
        from histomodels.leakage import training_duplicates

        train_dups = training_duplicates(
            images, [t.image_id for t in ds.tiles], open_dataset(train_data)
        )

    by_image: dict[str, list[int]] = {i: [] for i in ds.figures}
    for n, tile in enumerate(ds.tiles):
        by_image[tile.image_id].append(n)
    rows = []
    for image_id, fig in ds.figures.items():
        p = probs[by_image[image_id]]
        t = truth.get(image_id, {})
        rows.append(
            {
                "image_id": image_id,
                **fig,
                **aggregate(p, top_k),
                # as the manifest says: an abstention is "abstain", not a blank as if the
                # caption rules had not run
                "weak_label": t.get("weak_label") or "",
                "leakage": t.get("leakage")
                or ("training_duplicate" if image_id in train_dups else ""),
            }
        )
    rows.sort(key=lambda r: -np.nan_to_num(r["max"], nan=-1.0))

    make_parents(out / "image_scores.csv")  # a file in the way: a: is a file, not a folder
    cols = [
        "image_id",
        "record_id",
        "label",
        "weak_label",
        "leakage",
        "max",
        "topk_mean",
        "n_tiles",
        "scale",
        "scale_source",
        "width",
        "height",
        "path",
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(safe_dict(r) for r in rows)
    atomic_write_text(out / "image_scores.csv", buf.getvalue())
    buf = io.StringIO()
    tw = csv.writer(buf, lineterminator="\n")
    tw.writerow(["id", "image_id", "row", "col", "x0", "y0", "x1", "y1", "tissue", "probability"])
    for t, p in zip(ds.tiles, probs, strict=True):
        tw.writerow(
            [
                safe_cell(t.id),
                safe_cell(t.image_id),
                t.row,
                t.col,
                *(f"{v:.1f}" for v in t.box),
                f"{t.tissue:.3f}",
                probability_text(float(p), cut),
            ]
        )
    atomic_write_text(out / "tile_predictions.csv", buf.getvalue())

    result: dict[str, Any] = {
        "checkpoint": pretrained.shown(checkpoint),  # ./pcam-cnn for a file named like it
        "shipped": pretrained.shipped_name(checkpoint) is not None,  # not a file saved from it
        "model": ckpt.get("model"),
        "manifest": str(run_dir),
        "n_images": len(rows),
        "n_tiles": len(ds.tiles),
        "n_images_without_tissue": sum(r["n_tiles"] == 0 for r in rows),
        "top_k": top_k,
        **point,  # temperature, threshold_source; with val: validation, temperature_stored
        "tta": bool(tta) or pred.tta_inside,  # the scores average the 8 views either way
        **({"tta_inside_model": True} if pred.tta_inside else {}),
        "inference_precision": pred.precision,  # as evaluate_checkpoint records it
        "scale": "given" if scale is not None else "estimated from nucleus diameter",
        "aggregations": {
            "max": "highest tile probability",
            "topk_mean": f"mean of the {top_k} highest tile probabilities",
        },
    }
    used = [r for r in rows if include_leaky or not r["leakage"]]
    result["include_leaky"] = include_leaky
    result["n_excluded_leakage"] = len(rows) - len(used)
    if train_data is not None:
        result["train_data"] = str(train_data)
        result["training_duplicates"] = train_dups
    for agg in AGGREGATIONS:
        scores = np.array([r[agg] for r in rows], dtype=float)
        plots.histogram_plot(
            scores[np.isfinite(scores)],
            out / f"score_hist_{agg}.png",
            title=f"Figure scores ({agg}, n={int(np.isfinite(scores).sum())})",
            xlabel="image-level tumour probability",
        )
    result["score_distribution"] = {
        agg: _distribution(np.array([r[agg] for r in used], dtype=float)) for agg in AGGREGATIONS
    }
    reviewed = _label_metrics(used, "label", cut, n_bootstrap, seed)
    weak = _label_metrics(
        [r | {"weak": WEAK_CODES.get(r["weak_label"], -1)} for r in used],
        "weak",
        cut,
        n_bootstrap,
        seed,
    )
    result["n_labelled"] = reviewed["n"]
    result["threshold"] = cut
    result["external"] = {
        "reviewed": reviewed,
        "weak": weak,
        "agreement": label_tables(
            manifest,
            include_leaky=include_leaky,
            extra_excluded=dict.fromkeys(train_dups, "training_duplicate"),
        ),
        "aggregations": AGGREGATIONS,
    }
    if reviewed.get("metrics"):
        result["image_metrics"] = reviewed["metrics"]
    if reviewed["n"] == 0 and weak["n"] == 0:
        result["note"] = (
            "no labelled figures: score distribution only "
            "(confirm labels with `histofetch review --run RUN`)"
        )
    labelled = [r for r in used if r["label"] in (0, 1) and np.isfinite(r["max"])]
    y = np.array([r["label"] for r in labelled])
    if len(np.unique(y)) == 2:
        sc = np.array([r["max"] for r in labelled], dtype=float)
        plots.roc_plot(y, sc, out / "roc.png", cut)
        plots.pr_plot(y, sc, out / "pr.png")
        # calibration on the external set: do image probabilities mean what they say?
        result["calibration"] = _calibration(y, labelled)
        topk = np.array([r["topk_mean"] for r in labelled], dtype=float)
        plots.reliability_plot(y, topk, out / "reliability.png")
    _errors_sheet(used, cut, out / "errors_sheet.png")

    # Heatmaps (most suspicious first) and a ranked contact sheet.
    thumbs, titles = [], []
    heat_dir = out / "heatmaps"
    names = {**_NAMES, -1: "unlabelled"}
    for rank, r in enumerate(rows):
        rgb = decode_image(Path(r["path"]), f"{r['path']}", convert=True)
        if rank < max_heatmaps and r["n_tiles"]:
            boxes = [(*ds.tiles[n].box, float(probs[n])) for n in by_image[r["image_id"]]]
            plots.overlay_heatmap(
                rgb,
                boxes,
                heat_dir / f"{unique_stem(r['image_id'])}.png",
                title=f"{r['image_id']} ({names[r['label']]}): max {r['max']:.2f}, "
                f"top-{top_k} mean {r['topk_mean']:.2f}, scale x{r['scale']:.2f}",
            )
        if rank < 60:
            thumbs.append(_thumb(rgb))
            score = "no tiles" if not r["n_tiles"] else f"{r['max']:.2f}"
            short = r["image_id"] if len(r["image_id"]) <= 28 else "…" + r["image_id"][-27:]
            titles.append(f"#{rank + 1} {score} {names[r['label']]}\n{short}")
    plots.image_grid(
        thumbs,
        titles,
        out / "contact_sheet.png",
        cols=6,
        title="Figures ranked by image score (max tile probability)",
    )
    result["heatmaps"] = str(heat_dir)
    write_json(out / "metrics.json", result)
    return result


_NAMES = {0: "no_metastasis", 1: "metastasis"}
WEAK_CODES = {"metastasis": 1, "no_metastasis": 0}


def _label_metrics(
    rows: list[dict[str, Any]], key: str, threshold: float, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """Image-level metrics (both aggregations, bootstrap CIs) on the rows labelled in ``key``."""
    from histomodels.metrics import summarize

    labelled = [r for r in rows if r[key] in (0, 1) and np.isfinite(r["max"])]
    y = np.array([r[key] for r in labelled], dtype=np.int64)
    out: dict[str, Any] = {"n": len(y), "n_positive": int(y.sum())}
    if not len(y):
        return out
    metrics = {}
    for agg in AGGREGATIONS:
        s = np.array([r[agg] for r in labelled], dtype=float)
        if len(np.unique(y)) == 2:
            metrics[agg] = summarize(
                y, s, threshold, n_resamples=n_bootstrap, seed=seed,
                unit="figures", names=(_NAMES[0], _NAMES[1]),
            )  # fmt: skip
        else:
            metrics[agg] = {
                "n": len(y),
                "accuracy": float(((s >= threshold) == y).mean()),
                "note": "only one class labelled: AUC undefined",
            }
    out["metrics"] = metrics
    return out


def _errors_sheet(rows: list[dict[str, Any]], threshold: float, path: Path, n: int = 24) -> None:
    """Contact sheet of the most confident errors (max score vs the reviewed label, or the
    weak label where no person reviewed the figure)."""
    from histomodels import plots
    from histomodels.data.images import decode_image

    errors = []
    for r in rows:
        if not np.isfinite(r["max"]):
            continue
        if r["label"] in (0, 1):
            y, source = r["label"], "reviewed"
        elif r["weak_label"] in WEAK_CODES:
            y, source = WEAK_CODES[r["weak_label"]], "weak"
        else:
            continue
        if (r["max"] >= threshold) != bool(y):
            errors.append((abs(r["max"] - y), y, source, r))
    errors.sort(key=lambda e: -e[0])
    if not errors:
        return
    thumbs, titles = [], []
    for _conf, y, source, r in errors[:n]:
        thumbs.append(_thumb(decode_image(Path(r["path"]), r["path"], convert=True)))
        short = r["image_id"] if len(r["image_id"]) <= 28 else "…" + r["image_id"][-27:]
        titles.append(f"{_NAMES[y]} ({source}) score {r['max']:.2f}\n{short}")
    plots.image_grid(
        thumbs, titles, path, cols=6, title="Most confident errors (max tile probability)"
    )
