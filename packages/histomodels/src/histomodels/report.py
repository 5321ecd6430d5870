"""``histomodels report``: one self-contained HTML page (and a Markdown twin) for one run or
several side by side.

Inputs are folders: a training run (``config.json``, ``history.json``, ``best.pt``), an
eval folder (``metrics.json`` + PNGs from ``histomodels eval``), or a training run with
eval folders inside it (one level down). A run is named after its folder; an eval folder
given alone after the model it evaluated and its folder (``pcam-cnn/eval``). Everything is
read from what those commands wrote; nothing is recomputed except the combined ROC curve,
from ``predictions.csv``.
Images are base64-embedded in the HTML so the single file can be mailed or archived; the
Markdown page links copies of them in ``assets/``. The folders are read by
:mod:`histomodels.report_inputs`; this module makes the tables and the pages.
"""

from __future__ import annotations

import base64
import functools
import html
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from histocore.io import atomic_write_text, locked_folder
from histomodels.report_inputs import (
    EVAL_PLOTS,
    SWEEP_KEYS,
    Evaluation,
    ReportError,
    Run,
    load_run,
    present_file,
    read_predictions,
)
from histomodels.report_tables import (
    columns,
    dataset_rows,
    eval_rows,
    external_tables,
    fmt,
    metric_rows,
)


def _roc_overlay(cols: list[tuple[str, Evaluation]], path: Path) -> Path | None:
    """All evaluations' ROC curves in one plot, from their predictions.csv."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from histomodels.plots import plt, save_figure

    curves = []
    for label, ev in cols:
        f = ev.path / "predictions.csv"
        if not present_file(f, "predictions file"):
            continue
        y, p = read_predictions(f)
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


class _Page:
    """The HTML body and its Markdown twin, written side by side; images go to ``assets``
    (embedded in the HTML, linked from the Markdown)."""

    def __init__(self, assets: Path) -> None:
        self.assets = assets
        self.h: list[str] = []
        self.md: list[str] = []

    def heading(self, level: int, text: str, note: str | None = None) -> None:
        self.h.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += ["#" * level + " " + text, ""]
        if note:
            self.note(note)

    def note(self, text: str, md: str | None = None) -> None:
        self.h.append(f"<p class='note'>{html.escape(text)}</p>")
        self.md += [text if md is None else md, ""]

    def table(self, head: list[str], rows: list[tuple[str, list[str]]]) -> None:
        self.h.append(_html_table(head, rows))
        self.md += [_md_table(head, rows), ""]

    def images(self, title: str, items: list[tuple[Path, str]], level: int = 2) -> None:
        """A heading over a grid of captioned images."""
        self.heading(level, title)
        self.h.append("<div class='grid'>")
        for path, caption in items:
            if path.parent.resolve() == self.assets.resolve():  # generated here already
                copy = path
            else:
                copy = self.assets / f"{len(list(self.assets.iterdir()))}_{path.name}"
                shutil.copyfile(path, copy)
            self.h.append(
                f"<figure><img src='{_b64(path)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
            self.md += [f"![{caption}](assets/{copy.name})", ""]
        self.h.append("</div>")

    def html_page(self, title: str) -> str:
        return (
            f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(self.h)
            + "</body></html>\n"
        )


def _header(page: _Page, title: str, runs: list[Run]) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page.h.append(
        f"<h1>{html.escape(title)}</h1><p class='note'>Generated {stamp} by "
        "<code>histomodels report</code> from: "
        + ", ".join(html.escape(str(r.path)) for r in runs)
        + "</p>"
    )
    page.md += [f"# {title}", "", f"Generated {stamp} by `histomodels report`.", ""]


def _test_metrics(page: _Page, cols: list[tuple[str, Evaluation]]) -> None:
    """The metrics table, each evaluation's note, its threshold sweep, the ROC overlay."""
    page.heading(2, "Test metrics")
    page.note(
        "Point estimate [95% percentile-bootstrap interval]. Threshold-dependent metrics use "
        "the threshold in the last row; for literature figures (manifest), image-level "
        "metrics of the max-tile score.",
        md="Point estimate [95% bootstrap interval].",
    )
    page.table(["", *[c for c, _ in cols]], eval_rows(cols) + metric_rows(cols))
    for label, ev in cols:
        if "note" in ev.metrics:
            note = f"{label}: {ev.metrics['note']}"
            page.note(note, md=f"*{note}*")
    for label, ev in cols:  # how recall and specificity move with the threshold
        sweep = ev.metrics.get("threshold_sweep")
        if sweep:
            page.heading(3, f"{label}: metrics by threshold")
            rows = [(fmt(r["threshold"], 3), [fmt(r[k], 3) for k in SWEEP_KEYS]) for r in sweep]
            page.table(["threshold", *SWEEP_KEYS], rows)
    roc = _roc_overlay(cols, page.assets / "roc_all.png") if len(cols) > 1 else None
    if roc:
        page.images("ROC comparison", [(roc, "ROC curves of all evaluations")], level=3)


EXTERNAL_NOTE = (
    "Image-level metrics on the mined literature figures (external test set), both "
    "aggregation rules, point estimate [95% bootstrap interval]; figures flagged for "
    "leakage (CAMELYON/PCam papers, near-duplicates, training-patch reprints) are "
    "left out unless eval ran with --include-leaky. The noise rate is the share of "
    "figures whose caption weak label differs from the label a person confirmed, with "
    "Wilson's 95% score interval (not a bootstrap)."
)


def _external(page: _Page, cols: list[tuple[str, Evaluation]]) -> None:
    tables = [t for label, ev in cols for t in external_tables(label, ev.metrics)]
    if tables:
        page.heading(2, "External test set", note=EXTERNAL_NOTE)
        for t_title, head, rows in tables:
            page.heading(3, t_title)
            page.table(head, rows)


def _plots(page: _Page, runs: list[Run], cols: list[tuple[str, Evaluation]]) -> None:
    """Training curves, then each kind of evaluation plot side by side."""
    curves = [
        (r.curve_png, f"{r.name}: loss and validation metrics per epoch")
        for r in runs
        if r.curve_png is not None
    ]
    if curves:
        page.images("Training curves", curves)
    for _, plot_title in EVAL_PLOTS:
        have = [
            (p, f"{label}: {plot_title}")
            for label, ev in cols
            for p, t in ev.plots
            if t == plot_title
        ]
        if have:
            page.images(plot_title, have)


#: What a report is, in its folder: swapped in together.
log = logging.getLogger(__name__)

REPORT_ENTRIES = ("assets", "report.html", "report.md")


class _RollbackFailed(ReportError):
    """The swap failed and so did putting the previous report back: ``staging/previous``
    holds (part of) it and must not be deleted."""


def _swap_in(staging: Path, out: Path) -> None:
    """Move the report built in ``staging`` into ``out``: the previous report's entries
    are first moved aside (into ``staging/previous``), then the new ones into place. A
    failure at any step moves back what was moved, so ``out`` holds the previous report
    or the new one, whole. If moving back fails too, :class:`_RollbackFailed` names the
    folder that still holds the previous report (the caller keeps it)."""
    previous = staging / "previous"
    previous.mkdir()
    aside: list[str] = []
    placed: list[str] = []
    try:
        for name in REPORT_ENTRIES:
            if os.path.lexists(out / name):
                os.replace(out / name, previous / name)
                aside.append(name)
        for name in REPORT_ENTRIES:
            os.replace(staging / name, out / name)
            placed.append(name)
    except BaseException as exc:
        failed: list[str] = []
        for name in reversed(placed):
            try:
                os.replace(out / name, staging / name)
            except OSError:
                failed.append(name)
        for name in reversed(aside):
            try:
                if os.path.lexists(out / name):  # a new entry could not be moved out
                    raise FileExistsError(str(out / name))
                os.replace(previous / name, out / name)
            except OSError:
                failed.append(name)
        if failed:
            raise _RollbackFailed(
                f"{out}: the new report could not be put in place ({exc}) nor the previous "
                f"one put back; the previous report is kept in {previous}"
            ) from exc
        raise


def _warn_leftovers(out: Path, staging: Path) -> None:
    """Name earlier ``.report-*`` folders still holding a previous report (a run killed
    between moving the old report aside and placing the new one, or a failed rollback)
    when ``out`` lacks a whole report."""
    if all(os.path.lexists(out / name) for name in REPORT_ENTRIES):
        return
    for left in sorted(out.glob(".report-*")):
        previous = left / "previous"
        if left != staging and previous.is_dir() and any(previous.iterdir()):
            log.warning(
                "%s: holds the previous report (an earlier report run was interrupted); "
                "move its entries back into %s to restore it",
                previous,
                out,
            )


def build_report(
    paths: Sequence[str | Path], out: str | Path, *, title: str | None = None
) -> dict[str, Any]:
    """Write ``out/report.html`` (self-contained) and ``out/report.md`` (+ ``out/assets``).

    The report is built whole in a folder beside them and swapped in only once every input
    has been read (:func:`_swap_in`): an unreadable input, or a failure while swapping,
    leaves the previous report as it was; if putting it back fails too, the error names the
    folder that keeps it. A second report into the same folder while one runs is refused."""
    if not paths:
        raise ReportError("give at least one run or eval folder")
    out = Path(out)
    busy = functools.partial(
        ReportError, f"{out}: another histomodels report is writing into this folder"
    )
    with locked_folder(out, busy):  # a report that fails leaves no new empty folder
        staging = out / f".report-{os.getpid()}-{secrets.token_hex(4)}"
        _warn_leftovers(out, staging)
        staging.mkdir()
        keep = False
        try:
            (staging / "assets").mkdir()  # the user's umask applies, as to any folder here
            runs = [load_run(Path(p), staging / "assets") for p in paths]
            cols = columns(runs)
            names = [r.name for r in runs]
            title = title or (
                "Report: " + names[0] if len(runs) == 1 else "Comparison: " + ", ".join(names)
            )
            page = _Page(staging / "assets")
            _header(page, title, runs)
            ds_rows = dataset_rows(runs)
            if ds_rows:
                page.heading(2, "Runs and data")
                page.table(["", *names], ds_rows)
            if cols:
                _test_metrics(page, cols)
            _external(page, cols)
            _plots(page, runs, cols)
            atomic_write_text(staging / "report.html", page.html_page(title))
            atomic_write_text(staging / "report.md", "\n".join(page.md) + "\n")
            _swap_in(staging, out)
        except _RollbackFailed:
            keep = True
            raise
        finally:
            if not keep:  # the previous report, once swapped out or put back
                shutil.rmtree(staging, ignore_errors=True)
    return {
        "html": str(out / "report.html"),
        "markdown": str(out / "report.md"),
        "runs": names,
        "evaluations": [c for c, _ in cols],
    }
