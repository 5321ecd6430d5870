"""Filter stage: score every image once (colour.py), then apply the H&E decision rule.

Scores are stored on the Image rows (``purple_ratio``, ``he_score``, ``tissue_fraction``
and ``extra["colour"]``), so an image already scored is never re-read; the thresholds are
re-applied to *all* images on every run, so ``filter --purple 0.5`` after ``--purple 0.3``
simply re-decides. Decision rule (documented with its measurements in docs/histofetch.md)::

    kept = min(width, height) >= min_side
           and tissue_blocks >= min_blocks and tissue_fraction >= min_tissue
           and dark_fraction <= max_dark and detail >= min_detail
           and purple_ratio >= purple and he_score >= min_he
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from histocore.manifest import Image, Manifest, Record
from histofetch.decide.colour import ColourScores, score_image
from histofetch.labels import RULES_VERSION, label_manifest
from histofetch.stage import StageSummary, run_records

#: Bump when colour.py changes what the scores mean; older scores are then recomputed.
SCORER_VERSION = 3


@dataclass(frozen=True)
class Thresholds:
    """Image-level thresholds (re-applied every run; no image is re-read to change them)."""

    purple: float = 0.3  # H&E-coloured share of the tissue region's stained pixels
    min_he: float = 0.5  # share of those pixels with H&E-range HED optical densities
    min_tissue: float = 0.02  # share of the image's blocks that are tissue
    min_blocks: int = 2  # tissue blocks needed (one block can be chance in a big figure)
    max_dark: float = 0.2  # dark-pixel share: fluorescence/heatmaps/black matrices sit on black
    min_detail: float = 0.045  # pixel-scale grain of the tissue blocks; smooth colour maps lack it
    min_side: int = 64  # px; smaller crops are too small to judge by colour (< one PCam tile)

    @classmethod
    def from_kwargs(cls, purple: float, **kw: Any) -> Thresholds:
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise ValueError(f"unknown filter threshold(s): {', '.join(sorted(unknown))}")
        values = {k: v for k, v in kw.items() if v is not None}
        return cls(purple=purple, **values)


def run_filter(
    run_dir: Path,
    *,
    purple: float = 0.3,
    sheet: bool = True,
    rescore: bool = False,
    retry_failed: bool = False,
    jobs: int = 1,
    **thresholds: Any,
) -> StageSummary:
    """Score unscored images of extracted records, then re-decide every image.

    ``thresholds`` are the other fields of :class:`Thresholds` (``min_he``, ``min_tissue``,
    ``min_blocks``). ``rescore`` recomputes scores even for images already scored.
    """
    limits = Thresholds.from_kwargs(purple, **thresholds)
    manifest = Manifest.load(Path(run_dir))
    if rescore:
        for img in manifest.images.values():
            img.extra.pop("colour", None)
    for rec in manifest.records.values():
        # Filtered before, but with images scored by an older scorer (or added since, e.g.
        # OA package figures): take the record again; its scored images are not re-read.
        if rec.stage == "filtered" and any(
            i.status == "ok" and not _is_scored(i) for i in manifest.images_of(rec.id)
        ):
            rec.stage = "extracted"
    manifest.commit()  # the stage claims records as the store holds them

    summary = run_records(
        manifest,
        "filtered",
        functools.partial(filter_record, limits=limits),  # picklable for --jobs
        jobs=jobs,
        retry_failed=retry_failed,
        export=False,  # saved below, once the thresholds are re-applied everywhere
    )
    # Re-apply the thresholds to every scored image (records filtered in earlier runs too).
    for img in manifest.images.values():
        if img.status == "ok" and _is_scored(img):
            decide(img, limits)
    manifest.header_extra["filter_thresholds"] = vars(limits) | {"scorer": SCORER_VERSION}
    # Caption weak labels + leakage flags of the images kept now (re-labelled every run).
    manifest.header_extra["weak_labels"] = label_manifest(manifest) | {"rules": RULES_VERSION}
    manifest.save()
    if sheet:
        from histofetch.sheets import write_filter_sheets

        write_filter_sheets(manifest)
    return summary


def filter_record(manifest: Manifest, rec: Record, *, limits: Thresholds) -> None:
    """Score the record's unscored images (each file read once) and decide each image."""
    for img in manifest.images_of(rec.id):
        if img.status != "ok":
            continue
        if not _is_scored(img):
            score_row(manifest, img)
        decide(img, limits)


def _is_scored(img: Image) -> bool:
    colour = img.extra.get("colour")
    return isinstance(colour, dict) and colour.get("scorer") == SCORER_VERSION


def score_row(manifest: Manifest, img: Image) -> None:
    """Read one image file and store its colour scores; an unreadable file fails the row."""
    path = manifest.resolve(img.path)
    try:
        if path is None:
            raise FileNotFoundError("the manifest names no file")
        scores = score_image(path)
    except Exception as exc:  # missing/corrupt PNG: mark this image, keep the run going
        img.status, img.reason = "failed", f"cannot read image {path}: {exc}".splitlines()[0]
        img.kept, img.filter_reason = False, "unreadable image"
        return
    store_scores(img, scores)


def store_scores(img: Image, scores: ColourScores) -> None:
    img.purple_ratio = round(scores.purple_ratio, 4)
    img.he_score = round(scores.he_score, 4)
    img.tissue_fraction = round(scores.tissue_fraction, 4)
    img.extra["colour"] = scores.as_dict() | {"scorer": SCORER_VERSION}


def decide(img: Image, limits: Thresholds) -> None:
    """Set ``kept`` and, when rejected, ``filter_reason`` (the first test that failed)."""
    colour = img.extra.get("colour", {})
    blocks = int(colour.get("tissue_blocks", 0))
    dark = float(colour.get("dark_fraction", 0.0))
    detail = float(colour.get("detail", 0.0))
    tissue, purple, he = img.tissue_fraction or 0.0, img.purple_ratio or 0.0, img.he_score or 0.0
    reason = None
    if min(img.width, img.height) < limits.min_side:
        reason = f"too small to judge ({img.width}x{img.height} px < {limits.min_side})"
    elif blocks == 0:
        reason = "no H&E-like tissue blocks"
    elif blocks < limits.min_blocks or tissue < limits.min_tissue:
        reason = f"tissue region too small ({blocks} blocks, {tissue:.2f})"
    elif dark > limits.max_dark:
        reason = f"dark image, fluorescence or colour map ({dark:.2f} > {limits.max_dark:g})"
    elif detail < limits.min_detail:
        reason = f"smooth colour gradient, not tissue grain ({detail:.3f} < {limits.min_detail:g})"
    elif purple < limits.purple:
        reason = f"purple ratio too low ({purple:.2f} < {limits.purple:g})"
    elif he < limits.min_he:
        reason = f"H&E score too low ({he:.2f} < {limits.min_he:g})"
    img.kept = reason is None
    img.filter_reason = reason
