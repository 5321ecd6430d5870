"""Filter stage: split figures into panels, score every image once, then decide H&E.

Per image (read once; scores are stored, so an image already scored is never re-read):

* upscaling undone first (decide/scale.py: a patch drawn 2–4× larger is scored at the
  pixel scale it holds). The factor is found once, on the copy read for the classifier
  (at most :data:`PANEL_SIDE` px), and both signals see that native copy (colour at most
  ``WORK_SIDE`` px); it is stored as ``extra.colour.native_factor`` (1.0: not upscaled);
* colour scores (decide/colour.py) on the row (``purple_ratio``, ``he_score``,
  ``tissue_fraction``, ``extra.colour``);
* the shipped CNN's H&E probability (decide/classifier.py) in ``p_he`` and
  ``extra.classifier``;
* the near-duplicate hash (leakage.py) in ``phash``, from the same decoded copy;
* panels (panels.py): a compound figure gets one row per panel (``source="panel"``,
  ``parent_id``, ``panel_bbox``, ``panel_letter``), each scored the same way; the letter
  printed at each panel's corner is read by panel_letters.py (Tesseract, when installed).

Then every row is decided again on every run (thresholds can change without re-reading):
caption evidence (decide/stains.py) is read from ``caption`` for the panel's letter (its own
"(B) …" part and the shared title; the whole caption when no letter was read), and
decide/rules.py gives ``kept`` and the full ``filter_reason``. A figure split into panels
is kept when one of its panels is (its reason lists its panels' reasons otherwise).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from histocore.errors import ManifestError
from histocore.imaging import ImageError
from histocore.io import atomic_write_bytes, one_line, text_shown
from histocore.manifest import IMAGE_LABELS, Image, Manifest, Record
from histofetch.canary import image_canary
from histofetch.decide import rules
from histofetch.decide.classifier import ClassifierScores, classify_rgb
from histofetch.decide.colour import (
    PANEL_SIDE,  # re-exported: callers name it from here
    WORK_SIDE,
    ColourScores,
    load_rgb_sized,
    score_rgb,
)
from histofetch.decide.scale import to_native
from histofetch.decide.stains import evidence
from histofetch.labels import RULES_VERSION, label_manifest
from histofetch.leakage import rgb_hash
from histofetch.pool import run_records
from histofetch.record_time import DEFAULT_RECORD_TIMEOUT_S
from histofetch.stage import StageSummary, command, decide_commands, failed_at

log = logging.getLogger(__name__)

#: Bump when scoring changes what the stored scores mean; older rows are then rescored.
SCORER_VERSION = 7  # 5: panel letters; 6: upscaling undone (scale.py); 7: one decode, one factor
Thresholds = rules.Thresholds  # re-exported: the CLI and callers name it from here


#: ``filter_reason`` of a figure this stage could not read (``--retry-failed`` reads it again)
UNREADABLE = "unreadable image"
#: ``Image.extra`` key of a figure that could not be read again: its panels' labels
PENDING_LABELS = "panel_labels_pending"


def run_filter(
    run_dir: Path,
    *,
    purple: float = 0.3,
    sheet: bool = True,
    rescore: bool = False,
    retry_failed: bool = False,
    jobs: int = 1,
    panels: bool = True,
    record_timeout: float | None = DEFAULT_RECORD_TIMEOUT_S,
    isolate: bool = False,
    **thresholds: Any,
) -> StageSummary:
    """Score unscored images of extracted records, then re-decide every image.

    ``thresholds`` are the other fields of :class:`Thresholds`. ``rescore`` recomputes
    scores (and panels) even for images already scored; ``panels=False`` does not split.
    ``record_timeout``: seconds one record's figures may take in a worker (``jobs`` > 1, or
    ``isolate``: one job in one worker process), see :mod:`histofetch.record_time`.
    """
    limits = Thresholds.from_kwargs(purple, **thresholds)
    # closed on the way out, also when a step raises: no -wal file left behind
    with Manifest.load(Path(run_dir)) as manifest:
        if sheet:  # a folder where a sheet goes stopped the filter after all its work
            from histofetch.sheets import refuse_folders_in_the_way

            refuse_folders_in_the_way(manifest.run_dir / "sheets")
        if rescore:
            for img in list(manifest.images.values()):
                img.extra.pop("colour", None)
        reread = rescore or retry_failed  # a figure this stage could not read is read again
        # filtered articles with no images: --rescore has nothing of theirs to redo, and
        # counted them 'already done'; they are counted as what they are
        bare = {
            rec.id
            for rec in manifest.records.values()
            if rescore and rec.stage == "filtered" and rec.status == "ok"
            and not _figures(manifest, rec.id)
        }  # fmt: skip
        for rec in manifest.records.values():
            # Filtered before, but with images scored by an older scorer (or added since, e.g.
            # JATS figures from the PMC Cloud Service): take the record again; its scored
            # images are not re-read.
            if rec.stage == "filtered" and any(
                _to_score(i, reread) for i in _figures(manifest, rec.id)
            ):
                rec.stage = "extracted"
        # the earlier filter's sheets stop showing the run's decisions once this one decides
        # any: a filter stopped while scoring left them named as this one's
        manifest.header_extra["filter_sheets"] = False
        manifest.commit()  # the stage claims records as the store holds them

        summary = run_records(
            manifest,
            "filtered",
            functools.partial(filter_record, limits=limits, panels=panels, reread=reread),
            jobs=jobs,
            retry_failed=retry_failed,
            export=False,  # saved below, once the thresholds are re-applied everywhere
            guard_attempts=True,  # an image that kills its decoder fails its record, once
            canary=image_canary,  # tells a machine that kills every decoder from such images
            record_timeout=record_timeout,  # an image that makes a decoder crawl is stopped
            isolate=isolate,
        )
        if bare:  # counted as skipped: still filtered (not taken by another process)
            summary.no_images = min(len(bare), summary.skipped)
            summary.skipped -= summary.no_images
        # Re-decide every scored image (records filtered in earlier runs too).
        for rec_id in {i.record_id for i in manifest.images.values()}:
            decide_record(manifest, rec_id, limits)
        manifest.header_extra["filter_thresholds"] = vars(limits) | {"scorer": SCORER_VERSION}
        # Caption weak labels + leakage flags of the images kept now (re-labelled every run).
        manifest.header_extra["weak_labels"] = label_manifest(manifest) | {"rules": RULES_VERSION}
        # whether RUN/sheets shows these decisions (false since the first commit above):
        # after --no-sheet an earlier filter's sheets are left as they were, and review's
        # hint no longer names them; true only once they are written (a filter stopped while
        # writing them left an earlier filter's named as this one's)
        if sheet:
            _save_with_sheets(manifest)
        else:
            manifest.save()
    return summary


def _save_with_sheets(manifest: Manifest) -> None:
    """Save the run (its header saying no sheets of its decisions are written), write the
    sheets, then say so in the header alone (:meth:`Manifest.commit_header`: the sheets
    change no row) and export ``manifest.jsonl`` again. The first export comes before the
    sheets: with the only export after them, a filter killed while writing them (SIGKILL,
    where no handler runs) left ``manifest.jsonl`` at its state before the filter until
    the next save. The second costs one more write of the file, not a second comparison
    of every row. With no decided row to show no sheet is written, and the header says
    ``filter_sheets`` false as saved; a filter stopped while writing the sheets (an error,
    Ctrl-C, a kill) leaves the first, saying ``filter_sheets`` false as the store does."""
    from histofetch.sheets import write_filter_sheets

    manifest.save()
    if not write_filter_sheets(manifest):  # nothing to show: none written, false stays
        return
    manifest.header_extra["filter_sheets"] = True
    manifest.commit_header()
    manifest.export()


def filter_record(
    manifest: Manifest, rec: Record, *, limits: Thresholds, panels: bool, reread: bool = False
) -> None:
    """Score the record's unscored figures (each file read once, panels cut) and decide.
    ``reread``: figures this stage could not read are read again (``--retry-failed``,
    ``--rescore``); in the record's own work, so a record that fails keeps them as they were."""
    for img in _figures(manifest, rec.id):
        if _to_score(img, reread):
            img.status, img.reason = "ok", None
            score_row(manifest, img, split=panels)
    decide_record(manifest, rec.id, limits)


def _to_score(img: Image, reread: bool) -> bool:
    """Whether ``img`` is to be read and scored: not scored yet, or (``reread``) unreadable
    when this stage last tried."""
    if img.status == "ok":
        return not _is_scored(img)
    return reread and img.status == "failed" and img.filter_reason == UNREADABLE


def _figures(manifest: Manifest, record_id: str) -> list[Image]:
    """The record's images as extracted/downloaded (not the panel rows split from them)."""
    return [i for i in manifest.images_of(record_id) if i.source != "panel"]


def _is_scored(img: Image) -> bool:
    colour = img.extra.get("colour")
    return isinstance(colour, dict) and colour.get("scorer") == SCORER_VERSION


# -- scoring (reads pixels) ----------------------------------------------------------------
def score_row(manifest: Manifest, img: Image, *, split: bool = True) -> None:
    """Read one image file, store its scores and (re)make its panel rows.

    An unreadable file fails the row (and keeps the run going).
    """
    path = manifest.resolve(img.path)
    # a person's labels on the panels (review, histomodels label) go to the new panel with
    # the same pixels: --rescore or a scorer upgrade cut the panels anew and dropped them
    reviewed = _reviewed_panels(manifest, img)
    for old in manifest.panels_of(img.id):
        del manifest.images[old.id]
    img.n_panels = None
    try:  # a path outside the run folder is never read (the manifest is untrusted)
        rgb, scale = _load(None if path is None else manifest.image_file(img.path))
    except Exception as exc:  # missing/corrupt PNG, decompression bomb: this row only
        # a path refused by the manifest (outside the run) is named by its own message
        unnamed = path is None or isinstance(exc, ManifestError)
        named = "cannot read image" if unnamed else f"cannot read image {path}"
        img.status, img.reason = "failed", f"{named}: {_problem(exc, manifest)}"
        img.kept, img.filter_reason = False, UNREADABLE
        _forget_scores(img)
        if reviewed:  # kept on the figure's row until it is read and split again
            img.extra[PENDING_LABELS] = reviewed
            log.warning(
                "%s: cannot read the figure; the labels of %d reviewed panel(s) are kept on "
                "its row and go back to its panels when it is read again (filter --retry-failed "
                "or --rescore)", img.id, len(reviewed),
            )  # fmt: skip
        return
    store_pixels(img, rgb)
    img.n_panels = 0
    if split:
        _give_labels(add_panels(manifest, img, rgb, scale), reviewed)
    elif reviewed:  # read, not split (--no-panels): they wait for the figure's panels
        img.extra[PENDING_LABELS] = reviewed
        reviewed = []
    _say_dropped(img, reviewed)
    if (
        img.n_panels
        and img.label is not None
        and not any(p.label is not None for p in manifest.panels_of(img.id))
    ):  # review and eval now use its panels, none of which holds a label
        log.warning(
            "%s: labelled %s%s as a whole figure, it is split into %d panels now, which "
            "review and eval use instead: label them (the figure's label stays on its row)",
            img.id, img.label, f" by {text_shown(img.label_by)}" if img.label_by else "",
            img.n_panels,
        )  # fmt: skip


#: What scoring and deciding stored on a row from its pixels (and the decision made on them)
_SCORED_EXTRA = ("colour", "classifier", "decision", "stains")


def _forget_scores(img: Image) -> None:
    """Clear what an earlier read of ``img`` stored: a figure unreadable on ``--rescore``
    (its file moved away) kept its old p(H&E), colour scores, hash and decision note, which
    ``--explain`` and ``export`` showed beside 'unreadable image' as if computed from it.
    The row is as one never read: no scores, decided unreadable."""
    img.p_he = img.purple_ratio = img.he_score = img.tissue_fraction = None
    img.phash = None
    for key in _SCORED_EXTRA:
        img.extra.pop(key, None)


def _reviewed_panels(manifest: Manifest, img: Image) -> list[dict[str, Any]]:
    """The labels a person gave ``img``'s panels (and those kept on its row when it could
    not be read), each with the panel's id, pixels (sha256) and place (bbox)."""
    out = [
        {"id": p.id, "sha256": p.sha256, "bbox": p.panel_bbox, "label": p.label,
         "by": p.label_by, "at": p.label_at}
        for p in manifest.panels_of(img.id) if p.label is not None
    ]  # fmt: skip
    pending = img.extra.pop(PENDING_LABELS, [])
    for old in pending if isinstance(pending, list) else []:  # the manifest is untrusted
        if isinstance(old, dict) and old.get("label") in IMAGE_LABELS:
            text = {k: v if isinstance(v := old.get(k), str) else None for k in ("by", "at")}
            out.append({"id": text_shown(str(old.get("id"))), "sha256": old.get("sha256"),
                        "bbox": old.get("bbox"), "label": old["label"], **text})  # fmt: skip
    return out


def _give_labels(rows: list[Image], reviewed: list[dict[str, Any]]) -> None:
    """Each old labelled panel's label to the new panel with its pixels (``reviewed`` keeps
    the ones no new panel takes): over all new panels at the same place first, then of the
    same id, then any. Two panels of one figure may share pixels (a repeated micrograph):
    each keeps its own label, and one labelled alone keeps it."""
    free = list(rows)
    for same in (
        lambda old, row: old["bbox"] == row.panel_bbox,
        lambda old, row: old["id"] == row.id,
        lambda old, row: True,
    ):
        for row in list(free):
            old = next((o for o in reviewed if o["sha256"] == row.sha256 and same(o, row)), None)
            if old is not None:
                row.label, row.label_by, row.label_at = old["label"], old["by"], old["at"]
                reviewed.remove(old)
                free.remove(row)


def _say_dropped(img: Image, reviewed: list[dict[str, Any]]) -> None:
    """One warning for the labelled panels of ``img`` that no new panel matches, with the
    labels they had (``histomodels label`` keeps no review log to find them in)."""
    if reviewed:
        shown = sorted(reviewed, key=lambda o: str(o["id"]))[:10]
        each = ", ".join(
            f"{old['id']}: {old['label']}" + (f" by {text_shown(old['by'])}" if old["by"] else "")
            for old in shown
        ) + (f" and {len(reviewed) - len(shown)} more" if len(reviewed) > len(shown) else "")
        log.warning(
            "%s: the labels of %d reviewed panel(s) were dropped: the figure was split anew "
            "and no new panel has their pixels (%s)", img.id, len(reviewed), each,
        )  # fmt: skip


def _problem(exc: Exception, manifest: Manifest) -> str:
    """``exc``'s first line without the file it starts with: the reason names the row's
    file once (it read ``cannot read image run/a.png: /abs/run/a.png: truncated``)."""
    text = exc.problem if isinstance(exc, ImageError) else str(exc)
    text = text.removeprefix(f"{manifest.path}: ")
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def _load(path: Path | None) -> tuple[np.ndarray, float]:
    """RGB at most PANEL_SIDE px long (transparency on white, as colour.load_rgb reads), and
    the factor from it back to file pixels."""
    if path is None:
        raise FileNotFoundError("the manifest names no file")
    rgb, (width, _) = load_rgb_sized(path, PANEL_SIDE)
    return rgb, width / rgb.shape[1]


@dataclass(frozen=True)
class PixelScores:
    """Both signals of one image, judged at its native pixel scale (one factor for both)."""

    colour: ColourScores
    classifier: ClassifierScores
    factor: float  # the upscaling undone, in pixels of the array scored (1.0: none)


def score_pixels(rgb: np.ndarray) -> PixelScores:
    """Undo ``rgb``'s upscaling once (decide/scale.py), then score the native copy: the
    classifier as it is, the colour rule at most ``WORK_SIDE`` px (as decide/colour.py reads)."""
    native, factor = to_native(rgb)
    return PixelScores(score_rgb(_shrink(native)), classify_rgb(native), factor)


def store_pixels(img: Image, rgb: np.ndarray) -> PixelScores:
    """Score ``rgb`` (:func:`score_pixels`) and store both signals on ``img``, and its
    near-duplicate hash (leakage.py) from the same copy: the file is not read again."""
    scores = score_pixels(rgb)
    img.phash = rgb_hash(rgb)
    store_scores(img, scores.colour, scores.factor)
    img.p_he = round(scores.classifier.p_he, 4)
    img.extra["classifier"] = scores.classifier.as_dict()
    return scores


def store_scores(img: Image, scores: ColourScores, factor: float = 1.0) -> None:
    img.purple_ratio = round(scores.purple_ratio, 4)
    img.he_score = round(scores.he_score, 4)
    img.tissue_fraction = round(scores.tissue_fraction, 4)
    img.extra["colour"] = scores.as_dict() | {"scorer": SCORER_VERSION, "native_factor": factor}


def add_panels(manifest: Manifest, img: Image, rgb: np.ndarray, scale: float) -> list[Image]:
    """Split ``img`` into panels (panels.py) and add a scored row per panel."""
    from histofetch.panel_letters import read_letters
    from histofetch.panels import find_panels
    from histofetch.pdf_images import encode_png

    found = find_panels(rgb)
    read_letters(rgb, found)  # sets Panel.letter where one can be read (None otherwise)
    src = manifest.image_file(img.path)  # checked by score_row: panels go beside it
    out_dir = src.parent
    stem = Path(img.path).stem
    rows = []
    for panel in found:
        x0, y0, x1, y1 = panel.bbox
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        png = encode_png(crop)
        name = f"{stem}_panel{panel.order + 1:02d}.png"
        atomic_write_bytes(out_dir / name, png)
        row = Image(
            id=f"{img.id}_panel{panel.order + 1:02d}",
            record_id=img.record_id,
            path=manifest.relative(out_dir / name),
            sha256=hashlib.sha256(png).hexdigest(),
            width=crop.shape[1],
            height=crop.shape[0],
            page=img.page,
            bbox=img.bbox,
            source="panel",
            caption=img.caption,
            figure_label=img.figure_label,  # the page and exports read a panel's own row
            parent_id=img.id,
            panel_bbox=[round(v * scale) for v in panel.bbox],
            panel_letter=panel.letter,
        )
        store_pixels(row, crop)
        rows.append(manifest.add_image(row))
    img.n_panels = len(rows)
    return rows


def _shrink(rgb: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """The size decide/colour.py scores at (as load_rgb does for files)."""
    if max(rgb.shape[:2]) <= side:
        return rgb
    im = PIL.Image.fromarray(rgb)
    im.thumbnail((side, side), PIL.Image.Resampling.BILINEAR)
    return np.asarray(im)


# -- deciding (no pixels read) ------------------------------------------------------------------
#: Read a lettered panel's own part of the caption ("(B) …" + the shared title) rather than
#: the whole caption (docs/benchmarks.md "Panel letters" measured it before it was on).
PANEL_EVIDENCE = True


def store_evidence(img: Image) -> None:
    """Caption stain evidence for this row's panel letter (or the whole caption)."""
    ev = evidence(img.caption, img.panel_letter if PANEL_EVIDENCE else None)
    img.extra["stains"] = ev.as_dict() | {"said": ev.describe()}


def decide_record(manifest: Manifest, record_id: str, limits: Thresholds, **signals: bool) -> None:
    """Decide every scored row of a record; a split figure follows its panels."""
    for img in _figures(manifest, record_id):
        if img.status != "ok" or not _is_scored(img):
            continue
        decide_image(manifest, img, limits, **signals)


def decide_image(manifest: Manifest, img: Image, limits: Thresholds, **signals: bool) -> None:
    """Decide one figure (and its panels, when it was split)."""
    store_evidence(img)
    whole = rules.apply(img, limits, **signals)
    panels = manifest.panels_of(img.id) if img.n_panels else []
    if not panels:
        return
    for p in panels:
        store_evidence(p)
        rules.apply(p, limits, **signals)
    kept = [p for p in panels if p.kept]
    name = lambda p: p.panel_letter or p.id.rsplit("_", 1)[-1]  # noqa: E731
    img.extra["decision"]["whole_figure"] = {"kept": whole.kept, "reason": whole.reason}
    if kept:
        img.kept, img.filter_reason = True, None
        img.extra["decision"]["note"] = "kept for its H&E panels: " + ", ".join(map(name, kept))
        img.extra["decision"]["margin"] = max(p.extra["decision"]["margin"] for p in kept)
    else:
        details = "; ".join(f"{name(p)}: {p.filter_reason}" for p in panels)
        img.kept = False
        img.filter_reason = f"no H&E panel ({len(panels)} panels): {details}"
        img.extra["decision"]["note"] = img.filter_reason
        img.extra["decision"]["margin"] = max(p.extra["decision"]["margin"] for p in panels)


def decide(img: Image, limits: Thresholds) -> None:
    """Decide one row on its stored scores alone (no panels): kept and filter_reason."""
    store_evidence(img)
    rules.apply(img, limits)


# -- explain --------------------------------------------------------------------------------------
#: How many matching ids an ambiguous ``--explain`` tail lists before "and N more".
EXPLAIN_SHOWN = 5


def _note_unless_said(note: str, img: Image) -> str:
    """The decision's note for ``--explain``, unless it is the reason printed above it."""
    return "" if not note or (not img.kept and note == img.filter_reason) else f"{note} "


def _caption_line(img: Image, stains: dict[str, Any]) -> str:
    """``--explain``'s line on the caption's stain evidence. It printed '(verdict None)'
    where the caption gave none: for a row not decided yet (no evidence stored), a caption
    naming no stain or none at all, plots alone, or H&E beside another stain. A row decided
    without the evidence (its image unreadable) is not said to be undecided."""
    if not stains:
        if img.kept is None:
            return "caption   not read yet (the row is not decided)"
        return "caption   not read (the row was decided without it)"
    said, verdict = stains.get("said", "no caption"), stains.get("verdict")
    if verdict is not None:
        return f"caption   {said} (verdict {verdict} H&E)"
    kinds = stains.get("kinds") or []
    if "he" in kinds:
        return f"caption   {said} (no verdict: H&E and another stain both named)"
    if kinds:  # plots alone: neither for nor against
        return f"caption   {said} (no verdict: no stain for or against H&E)"
    return f"caption   {said}"


def _still_to_run(manifest: Manifest, img: Image, does: str) -> str:
    """What decides (``does``: ``decides``, ``scores``) a row filter has not, as the review
    page says it (:func:`histofetch.stage.decide_commands`): 'histofetch filter decides it'
    was said of a figure whose article was only downloaded (filter passes it over: extract
    first) and of one whose article failed at filter (filter takes it only with
    ``--retry-failed``)."""
    run, rec = manifest.run_dir, manifest.records.get(img.record_id)
    if rec is not None and rec.status == "failed":
        if rec.failed_stage == "filtered":  # the stage, as it is stored
            retry = command("filter", run, "--retry-failed")
            return f"its article failed at filter; {retry} tries again"
        # 'failed at ?' was said of a record failed with no stage recorded
        where, status = failed_at([rec.failed_stage]), command("status", run)
        return f"its article {where}, which filter does not take; {status} says why"
    commands = decide_commands([rec] if rec is not None else [], run) or [command("filter", run)]
    if len(commands) > 1:  # 'decides' of one command, 'decide' of several
        does = does.removesuffix("s")
    return f"{', then '.join(commands)} {does} it"


def _not_scored(manifest: Manifest, img: Image) -> str:
    """Why a row has no scores, for ``--explain`` (it printed ``p(H&E) None over ? tiles``
    and ``purple None, HED None, tissue None,``)."""
    if img.status == "failed":  # read and failed: its reason says why ('cannot read image …')
        why = img.reason or img.filter_reason or "the image could not be read"
        retry = command("filter", manifest.run_dir, "--retry-failed")
        return f"{why} ({retry} reads it again)"
    if img.kept is None:
        return f"not scored yet ({_still_to_run(manifest, img, 'scores')})"
    rescore = command("filter", manifest.run_dir, "--rescore")
    return f"no scores stored for this row ({rescore} computes them)"


def _shown(value: object) -> str:
    """One stored score as ``--explain`` prints it: ``n/a`` where none was stored."""
    return "n/a" if value is None else str(value)


def _score_lines(manifest: Manifest, img: Image) -> list[str]:
    """``--explain``'s classifier and colour lines, or ``not computed: <why>`` for either
    signal a row has no scores of (not scored yet, its image unreadable)."""
    clf = img.extra.get("classifier", {})
    colour = img.extra.get("colour", {})
    if img.p_he is None:
        classifier = f"classifier not computed: {_not_scored(manifest, img)}"
    else:
        classifier = (
            f"classifier p(H&E) {img.p_he} over {clf.get('tiles', '?')} tiles "
            f"(min {clf.get('p_he_min', '?')}, max {clf.get('p_he_max', '?')}); "
            f"classes {clf.get('probs', {})}"
        )
    main = (img.purple_ratio, img.he_score, img.tissue_fraction)
    if all(v is None for v in main):
        # the reason once: an unreadable image's full 'cannot read image …' was said twice
        why = "as above" if img.p_he is None else _not_scored(manifest, img)
        return [classifier, f"colour    not computed: {why}"]
    said = [
        f"{name} {_shown(v)}" for name, v in zip(("purple", "HED", "tissue"), main, strict=True)
    ]
    said += [
        f"{k} {v}"
        for k, v in colour.items()
        if k not in {"purple_ratio", "he_score", "tissue_fraction", "scorer"}
    ]
    return [classifier, "colour    " + ", ".join(said)]


def explain(manifest: Manifest, image_id: str) -> str:
    """Every signal behind one row's decision, as text a person can read (``--explain``).

    ``image_id`` is the full id or its unique tail (``p011_003``, ``p011_003_panel02``).
    Raises KeyError when it names no row, or several: then with the first
    :data:`EXPLAIN_SHOWN` of their full ids (sorted) and how many more, to pick from.
    """
    img = manifest.images.get(image_id)
    if img is None:
        hits = sorted(i.id for i in manifest.images.values() if i.id.endswith("/" + image_id))
        if not hits:
            raise KeyError(
                f"{image_id!r} names no image (give its full id, or the part after the "
                "last '/' when one image's id ends so)"
            )
        if len(hits) > 1:
            shown = ", ".join(hits[:EXPLAIN_SHOWN])
            more = f" and {len(hits) - EXPLAIN_SHOWN} more" if len(hits) > EXPLAIN_SHOWN else ""
            raise KeyError(
                f"{image_id!r} is the end of {len(hits)} image ids; give the full id: {shown}{more}"
            )
        img = manifest.images[hits[0]]
    rec = manifest.records.get(img.record_id)
    stains = img.extra.get("stains", {})
    decision = img.extra.get("decision", {})
    lines = [
        f"image     {img.id}",
        f"article   {(rec.title or rec.pmid or rec.id) if rec else img.record_id}",
        # a figure from a JATS package has no page ('page None' was printed)
        f"file      {img.path} ({img.width}x{img.height} px"
        + ("" if img.page is None else f", page {img.page}")
        + ")",
    ]
    if img.parent_id:
        letter = img.panel_letter or "none read"
        lines.append(f"panel of  {img.parent_id}, box {img.panel_bbox}, letter {letter}")
    if img.n_panels:
        lines.append(
            f"panels    {img.n_panels}: "
            + ", ".join(p.id.rsplit("/", 1)[-1] for p in manifest.panels_of(img.id))
        )
    if img.kept is None:  # 'REJECTED: None' was said of a row filter has not decided
        lines.append(f"decision  not decided yet ({_still_to_run(manifest, img, 'decides')})")
    else:
        lines.append(
            f"decision  {'KEPT' if img.kept else 'REJECTED'}"
            + ("" if img.kept else f": {img.filter_reason}")
        )
        note, margin = _note_unless_said(decision.get("note", ""), img), decision.get("margin")
        if note or margin is not None:  # a row decided unreadable has neither: no '(margin n/a)'
            lines.append(f"          {note}(margin {_shown(margin)})")
    lines += [*_score_lines(manifest, img), _caption_line(img, stains)]
    if "whole_figure" in decision:
        whole = decision["whole_figure"]
        lines.append(
            f"whole fig {'kept' if whole['kept'] else 'rejected: ' + str(whole['reason'])}"
        )
    if img.caption:
        lines.append(f"caption   text: {img.caption[:400]}")
    # titles and captions come from the paper: their control characters are escaped
    return "\n".join(one_line(line) for line in lines)
