"""What ``histomodels report`` reads: a run or eval folder as a :class:`Run`, checked.

A training run (``config.json``, ``history.json``, ``best.pt``), an eval folder
(``metrics.json`` + the PNGs of ``histomodels eval``), or a run with eval folders one level
down; anything unreadable or of the wrong shape is a :class:`ReportError` naming the file.
"""

from __future__ import annotations

import csv
import io
import math
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from histocore.csvcells import numbered_rows
from histocore.errors import DomainError
from histocore.io import (
    NotJSON,
    RefusedFile,
    loads_json,
    open_regular,
    read_capped,
    size_text,
)


class ReportError(DomainError, ValueError):
    """A run or eval folder the report cannot read."""


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


#: the columns of an eval's ``threshold_sweep`` rows that the report shows
SWEEP_KEYS = ("recall", "specificity", "precision", "accuracy")


@dataclass
class Evaluation:
    """One eval folder: its metrics and the plots found in it."""

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


#: The most bytes the report reads of each file it takes, by name: a few times the largest
#: a real run or eval writes (``config.json`` a few KB; ``history.json`` about 400 bytes an
#: epoch, 64 MB is 160,000 epochs; ``metrics.json`` tens of KB with its threshold sweep and
#: external blocks; ``predictions.csv`` 0.9 MB for PCam's 32,768 test patches, 128 MB holds
#: a million rows with 100-character ids). A larger file (a 10 GB file put in its place) is
#: refused unread, as is a FIFO or device: never read whole into memory.
MAX_REPORT_BYTES = {
    "config.json": 4 << 20,
    "history.json": 64 << 20,
    "metrics.json": 64 << 20,
    "predictions.csv": 128 << 20,
}


def _read_capped(path: Path, what: str) -> bytes:
    """``path``'s bytes, at most its :data:`MAX_REPORT_BYTES`; over it, a ReportError."""
    try:
        return read_capped(path, MAX_REPORT_BYTES.get(path.name, max(MAX_REPORT_BYTES.values())))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None
    except RefusedFile as exc:
        raise ReportError(f"{path}: {exc}, not a {what} histomodels writes") from None


def _read_json(path: Path, what: str) -> Any:
    raw = _read_capped(path, what)
    try:
        return loads_json(raw)  # UTF-8 (or the UTF-16/32 json detects)
    except NotJSON as exc:
        raise ReportError(f"{path}: cannot read JSON ({exc})") from None


def _check_history(history: Any, path: Path) -> list[dict[str, Any]]:
    """``history.json`` must be a list of objects whose plotted values (the trainer's
    ``HISTORY_FIELDS`` and any key numeric in some epoch) are numbers (or flags)."""
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ReportError(f"{path}: expected a JSON list of per-epoch objects")

    from histomodels.training.callbacks import HISTORY_FIELDS

    numeric = {k for row in history for k, v in row.items() if _number(v)} | set(HISTORY_FIELDS)
    numeric -= {"frozen_backbone"}  # the trainer's one flag field: true/false, not plotted
    for i, row in enumerate(history):
        for k in numeric:
            if k in row and row[k] is not None and not isinstance(row[k], int | float):
                raise ReportError(f"{path}: entry {i}: {k!r} is {row[k]!r}, expected a number")
    return history


def _evaluation(folder: Path) -> Evaluation | None:
    f = folder / "metrics.json"
    if not present_file(f, "metrics file"):
        return None
    metrics = _read_json(f, "metrics file")
    if not isinstance(metrics, dict):
        raise ReportError(f"{f}: expected a JSON object")
    _check_metrics(metrics, f)
    plots = [(folder / name, title) for name, title in EVAL_PLOTS if (folder / name).is_file()]
    return Evaluation(folder, metrics, plots)


def _check_metrics(metrics: dict[str, Any], path: Path) -> None:
    """The parts of ``metrics.json`` the report reads must have the shapes ``histomodels
    eval`` writes: intervals (``ci``) as ``[low, high]`` pairs, the threshold sweep as rows,
    the external block as objects, ``eval --scale``'s ``scored_px`` its ``[width, height]``
    and its ``scale`` a number (a tampered file was a traceback; a manifest's eval writes a
    ``scale`` that names its source instead)."""

    def bad(where: str, what: str) -> NoReturn:
        raise ReportError(f"{path}: {where} is not {what}")

    def mapping(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            bad(where, "an object")
        return value

    def text(value: Any, where: str) -> None:  # why there is no interval: shown as given
        if value is not None and not isinstance(value, str):
            bad(where, "text")

    def block(m: Any, where: str) -> None:  # one set of metrics with its intervals
        for key, pair in mapping(mapping(m, where.rstrip(".") or "metrics.json").get("ci") or {},
                                 f"{where}ci").items():  # fmt: skip
            if pair is not None and not _pair(pair):
                bad(f"{where}ci.{key}", "a [low, high] pair of numbers")
        text(m.get("ci_reason"), f"{where}ci_reason")

    block(metrics, "")
    px = metrics.get("scored_px")
    if px is not None:  # eval --data --scale (a manifest's eval says how its scale was set)
        scale: Any = metrics.get("scale")
        if not (_number(scale) and math.isfinite(scale) and scale > 0):
            bad("scale", "a positive number")
        if not (isinstance(px, list) and len(px) == 2 and all(_whole(v) and v > 0 for v in px)):
            bad("scored_px", "a [width, height] pair of pixel counts")
    for agg, m in mapping(metrics.get("image_metrics") or {}, "image_metrics").items():
        block(m, f"image_metrics.{agg}.")
    sweep = metrics.get("threshold_sweep") or []
    if not isinstance(sweep, list) or not all(
        isinstance(row, dict) and all(k in row for k in ("threshold", *SWEEP_KEYS)) for row in sweep
    ):
        bad("threshold_sweep", f"a list of rows with threshold, {', '.join(SWEEP_KEYS)}")
    ext = mapping(metrics.get("external") or {}, "external")
    aggs = ext.get("aggregations", [])
    if not isinstance(aggs, list) or not all(isinstance(a, str) for a in aggs):
        bad("external.aggregations", "a list of names")
    for kind in ("reviewed", "weak"):
        scored = mapping(ext.get(kind) or {}, f"external.{kind}")
        for agg, m in mapping(scored.get("metrics") or {}, f"external.{kind}.metrics").items():
            block(m, f"external.{kind}.metrics.{agg}.")
    agree = mapping(ext.get("agreement") or {}, "external.agreement")
    for weak, counts in mapping(agree.get("confusion") or {}, "external.agreement").items():
        mapping(counts, f"external.agreement.confusion.{weak}")
    if agree.get("noise_rate_ci") is not None and not _pair(agree["noise_rate_ci"]):
        bad("external.agreement.noise_rate_ci", "a [low, high] pair of numbers")
    text(agree.get("noise_rate_ci_reason"), "external.agreement.noise_rate_ci_reason")


def _number(v: Any) -> bool:
    """A JSON number (``true``/``false`` are not, though Python's bool is an int)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
    """A JSON whole number (not a flag)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(value: Any) -> bool:
    """``[low, high]``: two numbers (or nulls, an interval that could not be computed)."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(v is None or _number(v) for v in value)
    )


#: Checkpoint files named in metrics.json (a run's model is then its folder's name).
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".onnx", ".safetensors")


def _evaluated_model(metrics: dict[str, Any]) -> str | None:
    """What an eval folder evaluated, from its metrics.json ``checkpoint``: a shipped
    model's name (``pcam-cnn``), or the run folder of a checkpoint file or folder. A file,
    folder or run folder named like a shipped model (its ``shipped`` false) is named by its
    path, with a folder part (``./pcam-cnn``), not taken for the shipped model."""
    from histomodels import pretrained

    checkpoint = metrics.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        return None
    where = Path(checkpoint.strip())
    if where.suffix.lower() in _CHECKPOINT_SUFFIXES:
        where = where.parent
    name = where.name
    if name and metrics.get("shipped") is False and pretrained.is_pretrained(name):
        return str(where) if where.parent != Path() else os.path.join(os.curdir, name)
    return name or None


def _cut(text: str, most: int) -> str:
    """``text`` whole, or its first ``most`` characters and ``…`` (a cell of a damaged
    file may be megabytes long)."""
    return text if len(text) <= most else f"{text[:most]}…"


#: The columns of eval's ``predictions.csv`` the report reads (``id`` is not).
PREDICTION_COLUMNS = ("label", "probability")


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows of an eval folder's ``predictions.csv``: labels (0/1) and
    probabilities. A probability that is not a number from 0 to 1 is a
    :class:`ReportError` naming the file and the line the row starts on; a file that is
    not UTF-8 CSV one naming the file and what is wrong (the first byte that is not
    UTF-8 and why: the text is decoded in chunks ahead of the rows, so no line is known).
    A header without ``label`` or ``probability``, or a label other than 0, 1 or -1 (eval's
    unlabelled), is a :class:`ReportError` too: such rows were skipped as unlabelled, and
    the ROC overlay left that evaluation out without a word.
    Streamed a row at a time, its size (:data:`MAX_REPORT_BYTES`) checked on the open file
    first: it was read whole and decoded, several copies of it at once (0.9 GB at its
    peak for a 100 MB file)."""
    labels, probs = array("b"), array("d")  # a byte and 8 bytes a row, not Python objects
    cap = MAX_REPORT_BYTES["predictions.csv"]
    try:
        fh = open_regular(path)
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None
    except RefusedFile as exc:
        raise ReportError(f"{path}: {exc}, not a predictions file histomodels writes") from None
    with fh:
        if os.fstat(fh.fileno()).st_size > cap:
            raise ReportError(
                f"{path}: over {size_text(cap)}, not a predictions file histomodels writes"
            )
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
        try:
            reader = csv.DictReader(text)
            missing = [c for c in PREDICTION_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:  # a file without its header read every row as unlabelled: no curve
                raise ReportError(
                    f"{path}: not a predictions file histomodels writes (no column "
                    f"{' or '.join(repr(c) for c in missing)}; its header is "
                    f"{_cut(repr(reader.fieldnames or []), 200)})"
                )
            for line, row in numbered_rows(reader):
                label = row.get("label")
                if label not in ("0", "1", "-1"):  # -1: unlabelled, as eval writes it
                    raise ReportError(
                        f"{path}: line {line}: label {_cut(repr(label), 40)} is not "
                        "0, 1 or -1 (unlabelled)"
                    )
                if label == "-1":
                    continue
                cell = row.get("probability")
                try:
                    prob = float(cell or "")
                except ValueError:
                    prob = math.nan
                if not 0.0 <= prob <= 1.0:  # NaN too
                    raise ReportError(
                        f"{path}: line {line}: probability {cell!r} is not a number from 0 to 1"
                    )
                labels.append(int(label))
                probs.append(prob)
        except UnicodeDecodeError as exc:  # its position counts from the decoder's 8 KB chunk
            bad = exc.object[exc.start : exc.start + 1].hex()
            raise ReportError(
                f"{path}: not a UTF-8 CSV file (byte 0x{bad}: {exc.reason})"
            ) from None
        except csv.Error as exc:
            raise ReportError(f"{path}: not a UTF-8 CSV file ({exc})") from None
        finally:
            text.detach()  # ``fh`` is closed once, by its own ``with``
    return np.array(labels, dtype=int), np.array(probs, dtype=float)


def present_file(path: Path, what: str) -> bool:
    """Whether ``path``, an input the report reads when it is there, is there: a file. A
    folder (or another non-file) by that name is a :class:`ReportError`, not an absent file
    (``metrics.json/`` made the report say "nothing to report")."""
    if path.is_file():
        return True
    if path.is_dir():
        raise ReportError(f"{path}: is a folder, not a {what}")
    if path.exists():
        raise ReportError(f"{path}: is not a regular file; expected a {what}")
    return False


def load_run(path: Path, work: Path) -> Run:
    """Collect a run's files; ``work`` receives generated PNGs (training curves)."""
    if not path.is_dir():
        problem = "not a folder" if path.exists() else "no such folder"
        raise ReportError(f"{path}: {problem} (give a training run or an eval output folder)")
    run = Run(name=path.resolve().name, path=path)
    if present_file(path / "config.json", "config file"):
        run.config = _read_json(path / "config.json", "config file")
        if not isinstance(run.config, dict):
            raise ReportError(f"{path / 'config.json'}: expected a JSON object")
    if present_file(path / "history.json", "history file"):
        history = _read_json(path / "history.json", "history file")
        run.history = _check_history(history, path / "history.json")
    ckpt = path / "best.pt"
    if present_file(ckpt, "checkpoint file"):
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
