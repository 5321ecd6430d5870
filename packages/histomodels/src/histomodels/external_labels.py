"""Labels of the external literature set: reviewed, weak, their agreement, and leakage.

A histofetch run carries two labels per kept figure (read through ``histocore.manifest``,
never histofetch):

* ``label``: a person's answer (``histofetch review`` / ``histomodels label``):
  metastasis, no_metastasis, not_usable;
* ``weak_label``: what the caption says (metastasis, no_metastasis, abstain).

:func:`label_tables` measures how often the weak label is wrong where a person reviewed
the figure (the **weak-label noise rate**, with a bootstrap CI from
:data:`~histomodels.metrics.MIN_PER_CLASS_FOR_CI` figures with both labels on, and the full
confusion table); :func:`metric_sets` gives the model's image-level metrics on each kind of label.
Figures flagged for leakage (``Image.leakage``: a CAMELYON/PCam paper, a near-duplicate
of an earlier figure, or a training patch) are excluded from both unless asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from histocore.manifest import Image, Manifest
from histomodels.metrics import MIN_PER_CLASS_FOR_CI

WEAK = {"metastasis": 1, "no_metastasis": 0}
REVIEWED = {"metastasis": 1, "no_metastasis": 0}
WEAK_ROWS = ("metastasis", "no_metastasis", "abstain", "none")
REVIEW_COLS = ("metastasis", "no_metastasis", "not_usable", "unreviewed")


def _code(codes: dict[str, int], label: str | None) -> int | None:
    return codes.get(label) if label is not None else None


def leakage_reason(img: Image, excluded_ids: set[str] | None = None) -> str | None:
    """Why this figure must not count as external (``None``: it may).

    Of a near-duplicate pair across articles only the later id is left out (the first is
    still one honest figure).
    """
    for flag in img.leakage or []:
        if flag in ("camelyon", "training_duplicate"):
            return flag
        if flag.startswith("near_duplicate:"):
            other = flag.split(":", 1)[1]
            if other < img.id and (excluded_ids is None or other not in excluded_ids):
                return f"near-duplicate of {other}"
    return None


def leakage_exclusions(images: Iterable[Image]) -> dict[str, str]:
    """Image id → reason, for every figure left out of external metrics."""
    out: dict[str, str] = {}
    for img in sorted(images, key=lambda i: i.id):
        reason = leakage_reason(img, set(out))
        if reason:
            out[img.id] = reason
    return out


def rate_ci_reason(n_both: int) -> str | None:
    """Why the noise rate has no interval (fewer than
    :data:`~histomodels.metrics.MIN_PER_CLASS_FOR_CI` figures with both labels), or None.

    Resampling 2 figures that agree gives [0.000, 0.000], an interval that says nothing: a
    single proportion gets one from as many figures as the metrics need of each class.
    """
    if n_both >= MIN_PER_CLASS_FOR_CI:
        return None
    return (
        f"too few figures with both labels for an interval: {n_both} "
        f"(at least {MIN_PER_CLASS_FOR_CI} needed)"
    )


def _rate_interval(wrong: np.ndarray) -> list[float] | None:
    """Wilson score 95 % interval of a proportion of 0/1 values; None below
    :func:`rate_ci_reason`'s minimum. A percentile bootstrap of a proportion with no
    disagreement (or no agreement) resamples only zeros: [0, 0] at any size, an interval
    that says nothing; Wilson's is exact to compute and wide where the data are few."""
    n = len(wrong)
    if rate_ci_reason(n):
        return None
    z2, p = 1.959964**2, float(np.mean(wrong))
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = (z2**0.5) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, float(centre - half)), min(1.0, float(centre + half))]


def label_tables(
    manifest: Manifest,
    *,
    include_leaky: bool = False,
    extra_excluded: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Counts of weak × reviewed labels on kept figures, and the weak-label noise rate
    with its Wilson interval (no resampling: no bootstrap count or seed to give).

    ``extra_excluded``: more leaky figures (id → reason), e.g. training-patch reprints.
    """
    kept = manifest.kept_images()
    excluded = {} if include_leaky else leakage_exclusions(kept) | (extra_excluded or {})
    used = [i for i in kept if i.id not in excluded]
    table = {w: dict.fromkeys(REVIEW_COLS, 0) for w in WEAK_ROWS}
    for img in used:
        w = img.weak_label if img.weak_label in WEAK_ROWS else "none"
        r = img.label if img.label in REVIEW_COLS else "unreviewed"
        table[w][r] += 1
    both = [i for i in used if i.weak_label in WEAK and i.label in REVIEWED]
    wrong = np.array([_code(WEAK, i.weak_label) != _code(REVIEWED, i.label) for i in both], float)
    reviewed = [i for i in used if i.label in REVIEWED]
    out: dict[str, Any] = {
        "confusion": table,
        "confusion_rows": "weak label (caption)",
        "confusion_cols": "reviewed label (person)",
        "n_kept": len(kept),
        "n_used": len(used),
        "n_excluded_leakage": len(excluded),
        "excluded": excluded,
        "n_reviewed": sum(i.label is not None for i in used),
        "n_weak_labelled": sum(i.weak_label in WEAK for i in used),
        "n_both": len(both),
        "noise_rate": float(wrong.mean()) if len(both) else float("nan"),
        "noise_rate_ci": _rate_interval(wrong),
        "noise_rate_ci_reason": rate_ci_reason(len(both)),  # None when there is an interval
        "noise_rate_definition": (
            "share of figures with a weak label (metastasis/no_metastasis) and a reviewed "
            "label (metastasis/no_metastasis) where the two differ"
        ),
        # how much of what a person confirmed as a class the caption rules found
        "weak_coverage_of_reviewed": (
            sum(i.weak_label in WEAK for i in reviewed) / len(reviewed) if reviewed else None
        ),
    }
    for name, value in (("metastasis", 1), ("no_metastasis", 0)):
        said = [i for i in both if _code(WEAK, i.weak_label) == value]
        if said:
            out[f"weak_{name}_precision"] = sum(
                _code(REVIEWED, i.label) == value for i in said
            ) / len(said)
    not_usable = [i for i in used if i.weak_label in WEAK and i.label == "not_usable"]
    out["weak_labelled_but_not_usable"] = len(not_usable)
    return out


def targets(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Image id → ``{"reviewed": 0/1/None, "weak": 0/1/None, "weak_label": the caption's
    word (``abstain`` too) or None, "leakage": reason}``."""
    kept = manifest.kept_images()
    excluded = leakage_exclusions(kept)
    return {
        i.id: {
            "reviewed": REVIEWED.get(i.label or ""),
            "weak": WEAK.get(i.weak_label or ""),
            "weak_label": i.weak_label,
            "leakage": excluded.get(i.id),
        }
        for i in kept
    }
