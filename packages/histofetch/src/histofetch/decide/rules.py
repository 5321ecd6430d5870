"""The one H&E decision: classifier probability + colour scores + caption evidence.

Inputs stored on each image/panel row by the filter: ``extra.colour`` (decide/colour.py),
``p_he`` and ``extra.classifier`` (decide/classifier.py), ``extra.stains``
(decide/stains.py). The rule, applied in this order (the first that decides gives the
reason; every reason reads "<what>: <numbers>"):

1. **Too small**: shorter side < ``min_side`` → reject.
2. **No tissue**: no block passes the colour block rule (flat charts, text, greyscale,
   fluorescence on black) → reject. The colour block rule is the hard gate: the CNN sees
   tiles only and is never asked about an image without a single tissue-like block.
3. **Caption against** (the caption names IHC/PAS/IF/… for this panel, or for the whole
   figure when the panel's letter is unknown, and no H&E): reject unless the classifier is
   nearly certain (``p_he ≥ p_against``, 0.98) *and* the colour rule passes.
4. **Classifier veto**: the classifier rejects only when it is confident the image is not
   H&E: ``p_he`` below ``p_keep``, or below ``p_caption`` when the caption names H&E for
   this panel/figure (strong text evidence outweighs a weak "no").
5. **Colour**: the strict colour rule (decide/colour.py thresholds) must pass, or, for its
   *soft* tests only (tissue region size, dark share, detail, purple ratio, HED score:
   what blur, black padding, low magnification and red-brown staining trip), the classifier
   may override it when ``p_he ≥ p_override`` (``p_override_caption`` with H&E named in
   the caption).

The four classifier thresholds are not tuned here: ``benchmarks/train_he_classifier.py``
chooses them on the classifier's held-out validation images (each scored, as here, by the
mean p(H&E) of its tiles) by fixed targets — a veto keeps
recall ≥ 0.95 (``p_keep``) or ≥ 0.98 (``p_caption``) of held-out H&E; an override reaches
precision ≥ 0.98 (``p_override``) or ≥ 0.95 (``p_override_caption``) — and writes them to
``benchmarks/results/he_classifier.json`` (``thresholds``), which the defaults below copy
(tests/histofetch/test_rules.py checks they agree). The evaluation papers never set them.

Signals can be switched off (``use_classifier``, ``use_text``) to measure what each adds:
with both off this is exactly the colour-only rule of earlier releases.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from histocore.io import number_text
from histocore.manifest import Image


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds (re-applied every run; no image is re-read to change them)."""

    purple: float = 0.3  # H&E-coloured share of the tissue region's stained pixels
    min_he: float = 0.5  # share of those pixels with H&E-range HED optical densities
    min_tissue: float = 0.02  # share of the image's blocks that are tissue
    min_blocks: int = 2  # tissue blocks needed (one block can be chance in a big figure)
    max_dark: float = 0.2  # dark-pixel share: fluorescence/heatmaps/black matrices sit on black
    min_detail: float = 0.045  # pixel-scale grain of the tissue blocks; smooth colour maps lack it
    min_side: int = 64  # px; smaller crops are too small to judge (< one PCam tile)
    # Classifier thresholds: chosen by benchmarks/train_he_classifier.py on the classifier's
    # held-out validation images (TARGETS there; benchmarks/results/he_classifier.json,
    # "thresholds"), never on the evaluation papers. A veto keeps recall >= 0.95 (0.98);
    # an override needs precision >= 0.98 (0.95), or the most precise threshold when none
    # reaches it.
    p_keep: float = 0.04  # below it the classifier vetoes (confident "not H&E")
    p_caption: float = 0.02  # … when the caption names H&E for this image/panel
    p_override: float = 0.78  # classifier probability that overrides a soft colour test
    p_override_caption: float = 0.78  # … when the caption names H&E
    p_against: float = 0.98  # probability that keeps an image the caption says is not H&E

    @classmethod
    def from_kwargs(cls, purple: float, **kw: Any) -> Thresholds:
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise ValueError(f"unknown filter threshold(s): {', '.join(sorted(unknown))}")
        values = {k: v for k, v in kw.items() if v is not None}
        return cls(purple=purple, **values)


@dataclass
class Decision:
    kept: bool
    reason: str | None  # None when kept
    note: str  # why it was kept (or the same as reason), for --explain and the sheets
    margin: float  # signed distance to the boundary (>0 kept), for sorting sheets


def _versus(value: float, sign: str, limit: float, digits: int = 2) -> str:
    """``"<value> <sign> <limit>"`` for a reject reason: the threshold as the user gave it
    (:func:`number_text`; ``:g`` wrote ``--purple 0.9999999`` as ``1``), the measured value
    at ``digits`` decimals, or in full where rounding would put it on the threshold or its
    other side (``1.00 < 0.9999999``)."""
    return f"{_measured(value, limit, digits)} {sign} {number_text(limit)}"


def _measured(value: float, limit: float, digits: int = 2) -> str:
    """``value`` at ``digits`` decimals, or in full where rounding would put it on ``limit``
    or its other side (``p(H&E) 0.036`` read ``0.04`` beside ``p_keep`` 0.04)."""
    text = f"{value:.{digits}f}"
    rounded = float(text)
    if rounded == limit or (rounded < limit) != (value < limit):
        text = number_text(value)
    return text


def colour_test(img: Image, limits: Thresholds) -> tuple[str | None, bool]:
    """(reason the colour rule rejects, whether that test is a hard one) or (None, False)."""
    colour = img.extra.get("colour", {})
    blocks = int(colour.get("tissue_blocks", 0))
    dark = float(colour.get("dark_fraction", 0.0))
    detail = float(colour.get("detail", 0.0))
    tissue, purple, he = img.tissue_fraction or 0.0, img.purple_ratio or 0.0, img.he_score or 0.0
    if min(img.width, img.height) < limits.min_side:
        return f"too small to judge ({img.width}x{img.height} px < {limits.min_side})", True
    if blocks == 0:
        return "no H&E-like tissue blocks", True
    if blocks < limits.min_blocks or tissue < limits.min_tissue:
        few = f" < {limits.min_blocks}" if blocks < limits.min_blocks else ""
        share = _versus(tissue, "<", limits.min_tissue)
        if tissue >= limits.min_tissue:
            share = _measured(tissue, limits.min_tissue)
        unit = "block" if blocks == 1 else "blocks"
        return f"tissue region too small ({blocks} {unit}{few}, tissue {share})", False
    if dark > limits.max_dark:
        return (
            f"dark image, fluorescence or colour map ({_versus(dark, '>', limits.max_dark)})",
            False,
        )
    if detail < limits.min_detail:
        grain = _versus(detail, "<", limits.min_detail, 3)
        return f"smooth colour gradient, not tissue grain ({grain})", False
    if purple < limits.purple:
        return f"purple ratio too low ({_versus(purple, '<', limits.purple)})", False
    if he < limits.min_he:
        return f"H&E score too low ({_versus(he, '<', limits.min_he)})", False
    return None, False


def _looks_like(img: Image) -> str:
    probs = img.extra.get("classifier", {}).get("probs", {})
    others = {k: v for k, v in probs.items() if k != "he"}
    if not others:
        return ""
    best = max(others, key=lambda k: others[k])
    return f", looks like {best} ({others[best]:.2f})"


def decide(
    img: Image, limits: Thresholds, *, use_classifier: bool = True, use_text: bool = True
) -> Decision:
    """Apply the rule in the module docstring to one scored row (no pixels are read)."""
    colour_reason, hard = colour_test(img, limits)
    p = img.p_he if use_classifier else None
    stains = img.extra.get("stains", {}) if use_text else {}
    verdict = stains.get("verdict")
    said = stains.get("said", "")
    if colour_reason and (hard or p is None):
        margin = -1.0 if hard else -0.5 + (0.5 * p if p is not None else 0.0)
        return Decision(False, colour_reason, colour_reason, margin)
    if p is None:  # colour only (+ text): the caption can only veto
        if verdict == "against":
            reason = f"caption says not H&E: {said}"
            return Decision(False, reason, reason, -0.25)
        note = "colour rule passes" + (f"; {said}" if verdict == "for" else "")
        return Decision(True, None, note, 0.25)
    if verdict == "against":
        probs = f"p(H&E) {_measured(p, limits.p_against)}"
        if p >= limits.p_against and not colour_reason:
            return Decision(
                True, None, f"kept despite the caption ({said}): {probs}", p - limits.p_against
            )
        reason = f"caption says not H&E: {said}; {probs}{_looks_like(img)}"
        return Decision(False, reason, reason, min(p - limits.p_against, -0.01))
    need = limits.p_caption if verdict == "for" else limits.p_keep
    probs = f"p(H&E) {_measured(p, need)}"
    if p < need:
        why = f" (caption names H&E, needs {number_text(need)})" if verdict == "for" else ""
        if not why:
            probs = f"p(H&E) {_versus(p, '<', need)}"
        reason = f"not H&E by the classifier: {probs}{why}{_looks_like(img)}"
        return Decision(False, reason, reason, p - need)
    if colour_reason:
        override = limits.p_override_caption if verdict == "for" else limits.p_override
        probs = f"p(H&E) {_measured(p, override)}"
        if p < override:
            reason = f"{colour_reason}; classifier p(H&E) {_versus(p, '<', override)} to override"
            return Decision(False, reason, reason, p - override)
        note = f"classifier {probs} overrides the colour test ({colour_reason})"
        return Decision(True, None, note, p - override)
    note = f"classifier {probs}, colour rule passes" + (f"; {said}" if verdict == "for" else "")
    return Decision(True, None, note, p - need)


def apply(img: Image, limits: Thresholds, **signals: bool) -> Decision:
    """Decide and store ``kept``/``filter_reason`` (and the margin/note in ``extra``)."""
    d = decide(img, limits, **signals)
    img.kept, img.filter_reason = d.kept, d.reason
    img.extra["decision"] = {"note": d.note, "margin": round(d.margin, 4)}
    return d
