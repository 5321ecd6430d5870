"""``histomodels report``: one self-contained HTML page (and a Markdown twin) for one run or
several side by side.

Inputs are folders: a training run (``config.json``, ``history.json``, ``best.pt``), an
eval folder (``metrics.json`` + PNGs from ``histomodels eval``), or a training run with
eval folders inside it (one level down). A run is named after its folder; an eval folder
given alone after the model it evaluated and its folder (``pcam-cnn/eval``). Everything is
read from what those commands wrote; nothing is recomputed except the combined ROC curve,
from ``predictions.csv``.
Images are base64-embedded in the HTML so the single file can be mailed or archived; the
Markdown page links copies of them in ``assets/``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from histocore.errors import DomainError
from histocore.io import atomic_write_text


class ReportError(DomainError, ValueError):
    """A run or eval folder the report cannot read."""


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
SWEEP_KEYS = ("recall", "specificity", "precision", "accuracy")
EVAL_PLOTS = (
    ("roc.png", "ROC"),
    ("pr.png", "Precision-recall"),
    ("confusion.png", "Confusion matrix"),
    ("reliability.png", "Reliability"),
    ("threshold.png", "Recall and specificity vs threshold"),
    ("errors_gradcam.png", "Most confident errors with Grad-CAM"),
    ("score_hist_max.png", "Figure score distribution"),
    ("errors_sheet.png", "External test set: most confident errors"),
    ("contact_sheet.png", "Figures ranked by score"),
)


@dataclass
class Evaluation:
    path: Path
    metrics: dict[str, Any]
    plots: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class Run:
    """What the report knows about one input folder."""

    name: str
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    evals: list[Evaluation] = field(default_factory=list)
    curve_png: Path | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read JSON ({exc})") from None


def _check_history(history: Any, path: Path) -> list[dict[str, Any]]:
    """``history.json`` must be a list of objects whose plotted values (the trainer's
    ``HISTORY_FIELDS`` and any key numeric in some epoch) are numbers (or flags)."""
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ReportError(f"{path}: expected a JSON list of per-epoch objects")

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    from histomodels.training.callbacks import HISTORY_FIELDS

    numeric = {k for row in history for k, v in row.items() if number(v)} | set(HISTORY_FIELDS)
    numeric -= {"frozen_backbone"}  # the trainer's one flag field: true/false, not plotted
    for i, row in enumerate(history):
        for k in numeric:
            if k in row and row[k] is not None and not isinstance(row[k], int | float):
                raise ReportError(f"{path}: entry {i}: {k!r} is {row[k]!r}, expected a number")
    return history


def _evaluation(folder: Path) -> Evaluation | None:
    f = folder / "metrics.json"
    if not f.is_file():
        return None
    metrics = _read_json(f)
    if not isinstance(metrics, dict):
        raise ReportError(f"{f}: expected a JSON object")
    plots = [(folder / name, title) for name, title in EVAL_PLOTS if (folder / name).is_file()]
    return Evaluation(folder, metrics, plots)


#: Checkpoint files named in metrics.json (a run's model is then its folder's name).
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".onnx", ".safetensors")


def _evaluated_model(metrics: dict[str, Any]) -> str | None:
    """What an eval folder evaluated, from its metrics.json ``checkpoint``: a shipped
    model's name (``pcam-cnn``), or the run folder of a checkpoint file or folder."""
    checkpoint = metrics.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        return None
    where = Path(checkpoint.strip())
    name = where.parent.name if where.suffix.lower() in _CHECKPOINT_SUFFIXES else where.name
    return name or None


def load_run(path: Path, work: Path) -> Run:
    """Collect a run's files; ``work`` receives generated PNGs (training curves)."""
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder (give a training run or an eval output folder)")
    run = Run(name=path.resolve().name, path=path)
    if (path / "config.json").is_file():
        run.config = _read_json(path / "config.json")
        if not isinstance(run.config, dict):
            raise ReportError(f"{path / 'config.json'}: expected a JSON object")
    if (path / "history.json").is_file():
        run.history = _check_history(_read_json(path / "history.json"), path / "history.json")
    ckpt = path / "best.pt"
    if ckpt.is_file():
        from histomodels.calibration import effective_temperature
        from histomodels.checkpoint import read_checkpoint

        raw = read_checkpoint(ckpt)
        run.checkpoint = {
            k: raw.get(k) for k in ("model", "model_config", "epoch", "metrics", "input_size")
        }
        run.checkpoint["temperature"] = effective_temperature(ckpt, raw)  # as predict uses
    own = _evaluation(path)
    if own:
        run.evals.append(own)
        model = _evaluated_model(own.metrics)
        if model and not (run.config or run.history or run.checkpoint):
            run.name = f"{model}/{run.name}"  # an eval folder alone: say whose it is
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        ev = _evaluation(sub)
        if ev:
            run.evals.append(ev)
    if not (run.config or run.history or run.checkpoint or run.evals):
        raise ReportError(
            f"{path}: nothing to report (no config.json, history.json, best.pt or metrics.json)"
        )
    if run.history:
        from histomodels.plots import curves_plot

        run.curve_png = curves_plot(
            run.history,
            work / f"curves_{len(list(work.glob('curves_*')))}.png",
            title=f"{run.name}: training curves",
        )
    return run


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _metric_cell(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    ci = (m.get("ci") or {}).get(key)
    if ci and None not in ci:
        return f"{_fmt(v)} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return _fmt(v)


def _columns(runs: list[Run]) -> list[tuple[str, Evaluation]]:
    cols = []
    for r in runs:
        for ev in r.evals:
            label = r.name if ev.path == r.path else f"{r.name}/{ev.path.name}"
            cols.append((label, ev))
    return cols


def _dataset_rows(runs: list[Run]) -> list[tuple[str, list[str]]]:
    keys = [
        (
            "model",
            lambda r: (
                r.checkpoint.get("model")
                or r.config.get("model")
                or next((e.metrics.get("model") for e in r.evals), None)
            ),
        ),
        ("training data", lambda r: r.config.get("data") or r.config.get("train")),
        ("validation data", lambda r: r.config.get("val")),
        ("epochs run", lambda r: len(r.history) or None),
        ("best epoch", lambda r: r.checkpoint.get("epoch")),
        ("temperature", lambda r: r.checkpoint.get("temperature")),
    ]
    rows = []
    for label, get in keys:
        vals = [get(r) for r in runs]
        if any(v not in (None, "", [], {}) for v in vals):
            rows.append((label, [_fmt(v, 3) for v in vals]))
    return rows


def _eval_rows(cols: list[tuple[str, Evaluation]]) -> list[tuple[str, list[str]]]:
    rows = [
        (
            "test data",
            [str(ev.metrics.get("data") or ev.metrics.get("manifest")) for _, ev in cols],
        ),
        (
            "patches (positive)",
            [
                f"{ev.metrics.get('n', ev.metrics.get('n_tiles'))} "
                f"({ev.metrics.get('n_positive', '-')})"
                for _, ev in cols
            ],
        ),
        ("threshold chosen by", [str(ev.metrics.get("threshold_source", "-")) for _, ev in cols]),
        ("test-time augmentation", [str(ev.metrics.get("tta", "-")) for _, ev in cols]),
        ("temperature", [_fmt(ev.metrics.get("temperature"), 3) for _, ev in cols]),
    ]
    return rows


def _metric_rows(cols: list[tuple[str, Evaluation]]) -> list[tuple[str, list[str]]]:
    rows = []
    for key, label in METRIC_ROWS:
        cells = []
        for _, ev in cols:
            m = ev.metrics
            if key not in m and "image_metrics" in m:  # literature set: figure level, max
                m = m["image_metrics"].get("max", {})
            cells.append(_metric_cell(m, key))
        if any(c != "n/a" for c in cells):
            rows.append((label, cells))
    return rows


def _external_tables(name: str, m: dict[str, Any]) -> list[tuple[str, list[str], list]]:
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
            tables.append((f"{name}: model on {what}", head, rows))
    agree = ext.get("agreement") or {}
    conf = agree.get("confusion") or {}
    if conf:
        cols = list(next(iter(conf.values())).keys())
        head = ["weak label ↓ / reviewed label →", *cols]
        rows = [(w, [str(c.get(k, 0)) for k in cols]) for w, c in conf.items()]
        rate, ci = agree.get("noise_rate"), agree.get("noise_rate_ci") or [None, None]
        rows.append(
            (
                "weak-label noise rate",
                [
                    f"{_fmt(rate, 3)} [{_fmt(ci[0], 3)}, {_fmt(ci[1], 3)}] "
                    f"on {agree.get('n_both', 0)} figures",
                    *[""] * (len(cols) - 1),
                ],
            )
        )
        rows.append(
            (
                "left out for leakage",
                [str(agree.get("n_excluded_leakage", 0)), *[""] * (len(cols) - 1)],
            )
        )
        tables.append((f"{name}: weak vs reviewed labels", head, rows))
    return tables


def _roc_overlay(cols: list[tuple[str, Evaluation]], path: Path) -> Path | None:
    """All evaluations' ROC curves in one plot, from their predictions.csv."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from histomodels.plots import plt, save_figure

    curves = []
    for label, ev in cols:
        f = ev.path / "predictions.csv"
        if not f.is_file():
            continue
        with f.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("label") in ("0", "1")]
        y = np.array([int(r["label"]) for r in rows])
        p = np.array([float(r["probability"]) for r in rows])
        if len(np.unique(y)) == 2:
            curves.append((label, *roc_curve(y, p)[:2], roc_auc_score(y, p)))
    if len(curves) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5, 4.6))
    for label, fpr, tpr, auc in curves:
        ax.plot(fpr, tpr, lw=1.6, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, all evaluations")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def _b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
th{background:#f3f0f7}td.num{font-variant-numeric:tabular-nums;text-align:right}
.grid{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
figure{margin:0}figcaption{font-size:.8rem;color:#555}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.85rem}
"""


def _html_table(head: list[str], rows: list[tuple[str, list[str]]]) -> str:
    e = html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for label, cells in rows:
        out.append(
            f"<tr><th>{e(label)}</th>"
            + "".join(f'<td class="num">{e(c)}</td>' for c in cells)
            + "</tr>"
        )
    return "\n".join(out) + "</table>"


def _md_table(head: list[str], rows: list[tuple[str, list[str]]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in [label, *cells]) + " |" for label, cells in rows]
    return "\n".join(lines)


def build_report(
    paths: Sequence[str | Path], out: str | Path, *, title: str | None = None
) -> dict[str, Any]:
    """Write ``out/report.html`` (self-contained) and ``out/report.md`` (+ ``out/assets``)."""
    if not paths:
        raise ReportError("give at least one run or eval folder")
    out = Path(out)
    assets = out / "assets"
    if assets.exists():
        shutil.rmtree(assets)
    assets.mkdir(parents=True)
    runs = [load_run(Path(p), assets) for p in paths]
    cols = _columns(runs)
    names = [r.name for r in runs]
    title = title or (
        "Report: " + names[0] if len(runs) == 1 else "Comparison: " + ", ".join(names)
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    h: list[str] = []  # HTML body parts
    md: list[str] = [f"# {title}", "", f"Generated {stamp} by `histomodels report`.", ""]
    h.append(
        f"<h1>{html.escape(title)}</h1><p class='note'>Generated {stamp} by "
        "<code>histomodels report</code> from: "
        + ", ".join(html.escape(str(r.path)) for r in runs)
        + "</p>"
    )

    def add_img(path: Path, caption: str) -> None:
        if path.parent.resolve() == assets.resolve():  # generated here already
            copy = path
        else:
            copy = assets / f"{len(list(assets.iterdir()))}_{path.name}"
            shutil.copyfile(path, copy)
        h.append(
            f"<figure><img src='{_b64(path)}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        md.append(f"![{caption}](assets/{copy.name})")
        md.append("")

    ds_rows = _dataset_rows(runs)
    if ds_rows:
        h.append("<h2>Runs and data</h2>" + _html_table(["", *names], ds_rows))
        md += ["## Runs and data", "", _md_table(["", *names], ds_rows), ""]
    if cols:
        heads = ["", *[c for c, _ in cols]]
        ev_rows = _eval_rows(cols)
        m_rows = _metric_rows(cols)
        h.append(
            "<h2>Test metrics</h2><p class='note'>Point estimate [95% percentile-bootstrap "
            "interval]. Threshold-dependent metrics use the threshold in the last row; for "
            "literature figures (manifest), image-level metrics of the max-tile score.</p>"
        )
        h.append(_html_table(heads, ev_rows + m_rows))
        md += [
            "## Test metrics",
            "",
            "Point estimate [95% bootstrap interval].",
            "",
            _md_table(heads, ev_rows + m_rows),
            "",
        ]
        for label, ev in cols:
            if "note" in ev.metrics:
                h.append(
                    f"<p class='note'>{html.escape(label)}: "
                    f"{html.escape(str(ev.metrics['note']))}</p>"
                )
                md += [f"*{label}: {ev.metrics['note']}*", ""]
        for label, ev in cols:  # how recall and specificity move with the threshold
            sweep = ev.metrics.get("threshold_sweep")
            if not sweep:
                continue
            rows = [(_fmt(r["threshold"], 3), [_fmt(r[k], 3) for k in SWEEP_KEYS]) for r in sweep]
            head = ["threshold", *SWEEP_KEYS]
            h.append(f"<h3>{html.escape(label)}: metrics by threshold</h3>")
            h.append(_html_table(head, rows))
            md += [f"### {label}: metrics by threshold", "", _md_table(head, rows), ""]
        roc = _roc_overlay(cols, assets / "roc_all.png") if len(cols) > 1 else None
        if roc:
            h.append("<h3>ROC comparison</h3><div class='grid'>")
            md += ["### ROC comparison", ""]
            add_img(roc, "ROC curves of all evaluations")
            h.append("</div>")
    external = [t for label, ev in cols for t in _external_tables(label, ev.metrics)]
    if external:
        note = (
            "Image-level metrics on the mined literature figures (external test set), both "
            "aggregation rules, point estimate [95% bootstrap interval]; figures flagged for "
            "leakage (CAMELYON/PCam papers, near-duplicates, training-patch reprints) are "
            "left out unless eval ran with --include-leaky. The noise rate is the share of "
            "figures whose caption weak label differs from the label a person confirmed."
        )
        h.append(f"<h2>External test set</h2><p class='note'>{html.escape(note)}</p>")
        md += ["## External test set", "", note, ""]
        for t_title, head, rows in external:
            h.append(f"<h3>{html.escape(t_title)}</h3>" + _html_table(head, rows))
            md += [f"### {t_title}", "", _md_table(head, rows), ""]
    curves = [r for r in runs if r.curve_png]
    if curves:
        h.append("<h2>Training curves</h2><div class='grid'>")
        md += ["## Training curves", ""]
        for r in curves:
            if r.curve_png is not None:
                add_img(r.curve_png, f"{r.name}: loss and validation metrics per epoch")
        h.append("</div>")
    for _, plot_title in EVAL_PLOTS:
        have = [(label, p) for label, ev in cols for p, t in ev.plots if t == plot_title]
        if not have:
            continue
        h.append(f"<h2>{html.escape(plot_title)}</h2><div class='grid'>")
        md += [f"## {plot_title}", ""]
        for label, p in have:
            add_img(p, f"{label}: {plot_title}")
        h.append("</div>")
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(h)
        + "</body></html>\n"
    )
    atomic_write_text(out / "report.html", page)
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return {
        "html": str(out / "report.html"),
        "markdown": str(out / "report.md"),
        "runs": names,
        "evaluations": [c for c, _ in cols],
    }
