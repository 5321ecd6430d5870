"""Undo upscaling before an image is scored: judge it at the pixel scale it was drawn at.

Papers and reports rarely embed a 96 px patch as it is: matplotlib, a slide deck or a
LaTeX figure upscale it 2–4× (nearest-neighbour, blocky, or smoothly). The colour rule's
``detail`` (pixel-scale grain) and the classifier's tiles then see tissue magnified: the
grain per pixel falls by the upscaling factor and a 64 px tile holds a fraction of a cell.
So before scoring, :func:`to_native` finds how much larger than its content an image is
drawn and scores the image shrunk back by that factor (never below :data:`MIN_SIDE` px):

* **blocky** (nearest-neighbour) upscaling repeats pixels: the share of chromatic pixels
  (stain, not text, axes or background) equal to their right/lower neighbour is
  (f − 1) / f for a factor f. At :data:`MIN_REPEAT` or more (f ≥ 1.5) the factor is
  1 / (1 − share), per axis (the nearest whole number when within 0.1 of it). Native
  micrographs repeat 0–10 % (sensor noise).
* **smooth** (bilinear, bicubic) upscaling: the largest f of :data:`FACTORS` such that
  shrinking f× and enlarging back changes the chromatic pixels by less than
  :data:`MAX_ERROR` on average. Native H&E at its scanned resolution (PCam patches,
  Camelyon tiles) changes 0.016–0.021 at 1.5×; an upscale changes 0.004–0.022 at its
  own factor, so about half are found. A photograph that is smooth at pixel scale for
  another reason (a high-resolution micrograph, a blurred figure) is shrunk as well: it
  then shows its grain as a figure of that size would.

Chosen on the stress set (benchmarks/he_decision_stress.py; docs/benchmarks.md "Fifth
round"), never on the evaluation papers.
"""

from __future__ import annotations

import numpy as np
import PIL.Image

from histofetch.decide.colour import ACHROMATIC_S, DARK_V

#: Upscaling factors tried, largest first.
FACTORS = (4.0, 3.0, 2.0, 1.5)
#: Mean absolute change (0..1) of chromatic pixels after shrinking and enlarging back.
MAX_ERROR = 0.012
#: Share of chromatic pixels equal to their neighbour from which an axis is blocky.
MIN_REPEAT = 1 / 3
#: Which upscaling is undone (the stress benchmark compares them): "all", "blocky", "off".
MODE = "all"
#: The scored image is never made smaller than this (shorter side, px).
MIN_SIDE = 64
#: The factor is found on a copy at most this large (longest side), for speed.
PROBE_SIDE = 768
#: Chromatic pixels: saturation at least this and value above this (text, axes, white
#: background and black padding are not stain and are sharp at any scale): the colour
#: rule's own limits for grey (achromatic) and dark pixels, so both see the same stain.
CHROMA_S, CHROMA_V = ACHROMATIC_S, DARK_V

_R = PIL.Image.Resampling


def _chromatic(rgb: np.ndarray) -> np.ndarray:
    t = rgb.astype(np.float32) / 255.0
    v = t.max(axis=-1)
    s = (v - t.min(axis=-1)) / np.maximum(v, 1e-6)
    return (s >= CHROMA_S) & (v > CHROMA_V)


def loss(rgb: np.ndarray, factor: float, mask: np.ndarray | None = None) -> float:
    """Mean absolute change (0..1) of the masked pixels when the image is shrunk ``factor``×
    (area average) and enlarged back (bilinear or nearest-neighbour, whichever is closer)."""
    h, w = rgb.shape[:2]
    mask = _chromatic(rgb) if mask is None else mask
    if not mask.any():
        return 1.0
    small = PIL.Image.fromarray(rgb).resize(
        (max(1, round(w / factor)), max(1, round(h / factor))), _R.BOX
    )
    orig = rgb.astype(np.float32)
    out = []
    for how in (_R.BILINEAR, _R.NEAREST):
        back = np.asarray(small.resize((w, h), how)).astype(np.float32)
        out.append(float((np.abs(back - orig).mean(axis=2) / 255.0)[mask].mean()))
    return min(out)


def repeat_factors(rgb: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Blocky upscaling factor along x and y (1.0 where pixels do not repeat)."""
    out = []
    for axis in (1, 0):
        a, b = (rgb[:, 1:], rgb[:, :-1]) if axis == 1 else (rgb[1:], rgb[:-1])
        m = mask[:, 1:] if axis == 1 else mask[1:]
        same = float((np.all(a == b, axis=2) & m).sum() / max(int(m.sum()), 1))
        factor = 1.0 / (1.0 - same) if MIN_REPEAT <= same < 0.95 else 1.0
        out.append(float(round(factor)) if abs(factor - round(factor)) < 0.1 else factor)
    return out[0], out[1]


def native_factor(rgb: np.ndarray) -> float:
    """How many times larger than its content ``rgb`` is drawn (1.0: not upscaled)."""
    if MODE == "off":
        return 1.0
    h, w = rgb.shape[:2]
    mask = _chromatic(rgb)
    if mask.mean() < 0.01:  # no stain to judge by
        return 1.0
    blocky = min(repeat_factors(rgb, mask))
    if blocky > 1.0:
        return min(blocky, min(h, w) / MIN_SIDE) if min(h, w) > MIN_SIDE else 1.0
    if MODE == "blocky":
        return 1.0
    probe, shrink = rgb, 1.0
    if max(h, w) > PROBE_SIDE:
        im = PIL.Image.fromarray(np.ascontiguousarray(rgb))
        im.thumbnail((PROBE_SIDE, PROBE_SIDE), _R.BOX)
        probe, shrink = np.asarray(im), max(h, w) / max(im.size)
        mask = _chromatic(probe)
    for factor in FACTORS:
        if min(h, w) / (shrink * factor) < MIN_SIDE:
            continue
        if loss(probe, factor, mask) < MAX_ERROR:
            return factor * shrink
    return 1.0


def to_native(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """``rgb`` shrunk by :func:`native_factor` (itself when it is not upscaled), and the factor."""
    factor = native_factor(rgb)
    if factor <= 1.0:
        return rgb, 1.0
    h, w = rgb.shape[:2]
    size = (max(MIN_SIDE, round(w / factor)), max(MIN_SIDE, round(h / factor)))
    im = PIL.Image.fromarray(np.ascontiguousarray(rgb)).resize(size, _R.BOX)
    return np.asarray(im), round(factor, 3)
