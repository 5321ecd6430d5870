"""The rows of ``histomodels report``'s tables, from what the run and eval folders hold
(:mod:`histomodels.report_inputs`): runs and data, evaluation settings, metrics with
their intervals, and the external (literature) set's tables. :mod:`histomodels.report`
lays them out as HTML and Markdown."""

from __future__ import annotations

from typing import Any

from histocore.io import fraction_text, number_text
from histomodels.report_inputs import Evaluation, Run

METRIC_ROWS = (
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC (average precision)"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("recall", "sensitivity (recall)"),
    ("specificity", "specificity"),
    ("precision", "precision"),
    ("f1", "F1"),
    ("brier", "Brier score (lower is better)"),
    ("ece", "ECE (lower is better)"),
    ("threshold", "threshold"),
)


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def threshold_text(t: float, source: str | None = None) -> str:
    """A decision threshold as printed: 4 decimals, or as many more as it takes not to read
    as 0 or 1 (``0.99996``, not ``1.0000``: a confident model's threshold chosen on
    validation lies among scores that close to 1). Exactly 1 chosen on validation says
    what it means: only scores of exactly 1.0 pass, which happens when most validation
    scores saturate at 1.0 (a logit over about 37 after the temperature, in float64); one
    the user gave (``source`` ``"given"``: ``--threshold 1``) is just ``1.0000``."""
    if t == 1.0 and source != "given":
        return f"{fraction_text(t)} (only scores of exactly 1.0 pass: they saturate)"
    return fraction_text(t)


def _number(v: Any) -> Any:
    """A metric read as a JSON integer (``1``) as the float it stands for, so it is printed
    at the others' precision (``1.0000``, not ``1``)."""
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _metric_cell(m: dict[str, Any], key: str) -> str:
    v = _number(m.get(key))
    if key == "threshold" and isinstance(v, float):
        return threshold_text(v, m.get("threshold_source"))  # never an interval
    ci = (m.get("ci") or {}).get(key)
    if ci and None not in ci:
        # the interval at the point's precision: 0.9998 [1.000, 1.000] read as if the
        # interval left the point out
        return f"{fmt(v)} [{fmt(_number(ci[0]))}, {fmt(_number(ci[1]))}]"
    return fmt(v)


def _interval_row(shown: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """A row saying once per column why it has no intervals (eval's ``ci_reason``: too few
    of a class), where any column has none; the reason stood in every metric's cell,
    the threshold's too, which never has an interval; or ``--bootstrap 0``: metrics and no
    ``ci`` at all, under the page's "[95% bootstrap interval]" with nothing said)."""
    reasons = [
        m.get("ci_reason") or ("--bootstrap 0" if "roc_auc" in m and "ci" not in m else None)
        for m in shown
    ]
    if not any(isinstance(r, str) for r in reasons):
        return []
    return [("95 % intervals", [f"none: {r}" if isinstance(r, str) else "-" for r in reasons])]


def columns(runs: list[Run]) -> list[tuple[str, Evaluation]]:
    cols = []
    for r in runs:
        for ev in r.evals:
            label = r.name if ev.path == r.path else f"{r.name}/{ev.path.name}"
            cols.append((label, ev))
    return cols


def dataset_rows(runs: list[Run]) -> list[tuple[str, list[str]]]:
    keys = [
        (
            "model",
            lambda r: (
                r.checkpoint.get("model")
                or r.config.get("model")
                or next((e.metrics.get("model") for e in r.evals), None)
            ),
        ),
        ("training data", _training_data),
        ("validation data", lambda r: r.config.get("val")),
        ("epochs run", lambda r: len(r.history) or None),
        ("best epoch", _best_epoch),
        ("temperature", _temperature),
    ]
    rows = []
    for label, get in keys:
        vals = [get(r) for r in runs]
        if any(v not in (None, "", [], {}) for v in vals):
            rows.append((label, [fmt(v, 3) for v in vals]))
    return rows


def _temperature(r: Run) -> float | None:
    """The checkpoint's temperature (the one predict uses); for a folder without
    ``best.pt``, an eval folder alone, the one its own ``metrics.json`` evaluated with (it
    read n/a here beside the metrics table's 0.961). Evals one level down are not asked:
    they may differ."""
    if r.checkpoint:
        return r.checkpoint.get("temperature")
    own = next((ev for ev in r.evals if ev.path == r.path), None)
    t = own.metrics.get("temperature") if own else None
    return t if isinstance(t, int | float) and not isinstance(t, bool) else None


def _best_epoch(r: Run) -> int | None:
    """The checkpoint's epoch; none for an ensemble, which was never trained (its
    checkpoint's ``epoch`` 0 read 'best epoch 0')."""
    if r.checkpoint.get("model") == "ensemble":
        return None
    return r.checkpoint.get("epoch")


def _training_data(r: Run) -> str | None:
    """The training data path and, when ``--origin-split`` filtered it, the origin splits
    kept: a run trained on 7,601 of dev/train.h5's 7,602 rows read as one trained on all."""
    data = r.config.get("data") or r.config.get("train")
    split = r.config.get("origin_split")
    if data and split:
        return f"{data} (origin_split {split})"
    return data


def _test_data(metrics: dict) -> str:
    """The test data and, for ``eval --origin-split``, the origin splits its ``n`` counts,
    as the training data row names them."""
    data = str(metrics.get("data") or metrics.get("manifest"))
    split = metrics.get("origin_split")
    return f"{data} (origin_split {split})" if split else data


def eval_rows(cols: list[tuple[str, Evaluation]]) -> list[tuple[str, list[str]]]:
    rows = [
        (
            "test data",
            [_test_data(ev.metrics) for _, ev in cols],
        ),
        ("patches (positive)", [_counts(ev.metrics) for _, ev in cols]),
        ("threshold chosen by", [str(ev.metrics.get("threshold_source", "-")) for _, ev in cols]),
        ("test-time augmentation", [str(ev.metrics.get("tta", "-")) for _, ev in cols]),
        ("temperature", [fmt(ev.metrics.get("temperature"), 3) for _, ev in cols]),
    ]
    if any(ev.metrics.get("scored_px") is not None for _, ev in cols):  # eval --scale
        rows.append(("resized (scored at)", [_resized(ev.metrics) for _, ev in cols]))
    if any(ev.metrics.get("warning") for _, ev in cols):  # e.g. validation = test patches
        rows.append(("warning", [str(ev.metrics.get("warning") or "-") for _, ev in cols]))
    if any(ev.metrics.get("training_data_warning") for _, ev in cols):  # tested on its training
        rows.append(
            (
                "training data warning",
                [str(ev.metrics.get("training_data_warning") or "-") for _, ev in cols],
            )
        )
    return rows


def _counts(metrics: dict) -> str:
    """``"200 (100)"``: patches and positives of an ``eval --data`` result. A manifest
    evaluation's metrics are on labelled figures, so its cell counts those (and the tiles
    scored): it said ``51 (-)``, the tile count, beside AUCs taken on 26 figures. Patches
    without labels (``n_unlabelled``: scored, in predictions.csv, in no metric) are counted
    apart: data without any read ``- (-)``."""
    if "n_tiles" not in metrics:
        unlabelled = metrics.get("n_unlabelled") or 0
        if "n" not in metrics and unlabelled:
            return f"{unlabelled} unlabelled"
        counts = f"{metrics.get('n', '-')} ({metrics.get('n_positive', '-')})"
        return f"{counts} + {unlabelled} unlabelled" if unlabelled else counts
    n_images = metrics.get("n_images", "-")
    tiles = f"{_many(metrics['n_tiles'], 'tile')} of {_many(n_images, 'figure')}"
    figures = (metrics.get("image_metrics") or {}).get("max") or {}
    if "n" not in figures:
        return f"{tiles}; no labelled figure"
    labelled = _many(figures["n"], "labelled figure")
    return f"{tiles}; metrics on {labelled} ({figures.get('n_positive', '-')})"


def _many(n: object, noun: str) -> str:
    """``"1 tile"``, ``"2 tiles"``, ``"- figures"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _resized(metrics: dict) -> str:
    """``"by 0.25 (64x64 px)"`` for an ``eval --data --scale`` result, else ``"-"`` (the
    fields' shapes are checked by ``report_inputs``)."""
    px, scale = metrics.get("scored_px"), metrics.get("scale")
    return "-" if px is None or scale is None else f"by {number_text(scale)} ({px[0]}x{px[1]} px)"


def metric_rows(cols: list[tuple[str, Evaluation]]) -> list[tuple[str, list[str]]]:
    rows = []
    for key, label in METRIC_ROWS:
        cells = []
        for _, ev in cols:
            m = _figure_level(ev.metrics, key)
            if isinstance(m.get(key), str):  # no metric: "precision": "fp32", the inference
                m = {}  # precision, in a metrics.json from before inference_precision
            cells.append(_metric_cell(m, key))
        if any(c != "n/a" for c in cells):
            rows.append((label, cells))
    return rows + _interval_row([_figure_level(ev.metrics, "roc_auc") for _, ev in cols])


def _figure_level(m: dict[str, Any], key: str) -> dict[str, Any]:
    """The metrics ``key`` is read from: a literature set's are at figure level (``max``)."""
    if key not in m and "image_metrics" in m:
        return m["image_metrics"].get("max", {})
    return m


def external_tables(name: str, m: dict[str, Any]) -> list[tuple[str, list[str], list]]:
    """The "external test set" tables of one manifest evaluation: ``(title, head, rows)``."""
    ext = m.get("external")
    if not ext:
        return []
    tables = []
    aggs = list(ext.get("aggregations", ("max", "topk_mean")))
    for kind, what in (("reviewed", "reviewed labels"), ("weak", "caption weak labels")):
        block = ext.get(kind, {})
        metrics = block.get("metrics") or {}
        head = ["", *(f"{a} (n={block.get('n', 0)})" for a in aggs)]
        rows = []
        for key, label in METRIC_ROWS:
            cells = [_metric_cell(metrics.get(a, {}), key) for a in aggs]
            if any(c != "n/a" for c in cells):
                rows.append((label, cells))
        if rows:
            rows += _interval_row([metrics.get(a, {}) for a in aggs])
            tables.append((f"{name}: model on {what}", head, rows))
    agree = ext.get("agreement") or {}
    conf = agree.get("confusion") or {}
    if conf:
        cols = list(next(iter(conf.values())).keys())
        head = ["weak label ↓ / reviewed label →", *cols]
        rows = [(w, [str(c.get(k, 0)) for k in cols]) for w, c in conf.items()]
        rate, ci = agree.get("noise_rate"), agree.get("noise_rate_ci") or [None, None]
        rate, ci = _number(rate), [_number(c) for c in ci]
        # no interval: the rate alone and a row saying why, as the metrics tables say it
        no_ci = agree.get("noise_rate_ci") is None and agree.get("noise_rate_ci_reason")
        ci_text = "" if no_ci else f" [{fmt(ci[0], 3)}, {fmt(ci[1], 3)}]"
        blank = [""] * (len(cols) - 1)
        on = _many(agree.get("n_both", 0), "figure")
        rows.append(("weak-label noise rate", [f"{fmt(rate, 3)}{ci_text} on {on}", *blank]))
        if no_ci:
            rows.append(("95 % intervals", [f"none: {no_ci}", *blank]))
        rows.append(
            (
                "left out for leakage",
                [str(agree.get("n_excluded_leakage", 0)), *[""] * (len(cols) - 1)],
            )
        )
        tables.append((f"{name}: weak vs reviewed labels", head, rows))
    return tables
