"""Colour measures for the H&E filter: block-wise HSV structure + HED colour deconvolution.

Why blocks: a plain purple-pixel count keeps model heatmaps (magma/inferno), false-colour
feature maps and magenta fluorescence, and it dilutes real micrographs inside composite
figures (micrographs beside bar charts). So the image is cut into square blocks and each
block is judged on its own; only blocks that look like stained tissue form the *tissue
region*, and the image-level scores are taken over that region.

A block is H&E tissue when all of these hold (measured on the real PDFs, see
docs/histofetch.md):

* at least ``MIN_FG`` of its pixels are stained (not white/grey background: H&E sits on a
  light background, so white is background, not evidence);
* at least ``MIN_HE_HUE`` of those stained pixels have an H&E colour: hue in the pink →
  purple arc (250°…360°…15°), saturation 0.07–0.75, value 0.30–0.97;
* at most ``MAX_DARK`` of its pixels are dark (V < 0.25): fluorescence and heatmaps sit on
  black, brightfield tissue does not;
* at most ``MAX_OFF_PALETTE`` are saturated colours H&E never has (orange, yellow, green,
  cyan, blue: hue 20°–240°, S > 0.25) — colour maps and feature maps have plenty;
* the 90th percentile of saturation is at most ``MAX_S90``: colour maps and fluorophores
  are near fully saturated, stains are not;
* its brightness varies (std of V ≥ ``MIN_TEXTURE``) and at most ``MAX_FLAT`` of its stained
  pixels are within ``FLAT_TOL`` levels of the block's median colour: flat pink bars,
  confusion-matrix cells and logo fills are not tissue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.color import rgb2hed, rgb2hsv

from histocore.imaging import ImageTooLarge, read_rgb_sized

#: Images are scored at most this large (longest side), which keeps scoring fast.
WORK_SIDE = 768
#: Figures are read at most this large (longest side) for panels, the classifier and the
#: near-duplicate hash (``filter`` and ``leakage`` read them alike).
PANEL_SIDE = 2048
#: Image files declaring more pixels than this (e.g. hostile downloaded figures) are not
#: decoded and the row is marked failed (the effective limit before the per-call check:
#: twice the 64 MP that used to be PIL's global). Readers of figure files share it.
MAX_PIXELS = 128_000_000

# Pixel classes (HSV with hue in degrees, S and V in 0..1)
HE_HUE_FROM, HE_HUE_TO = 250.0, 15.0  # pink → purple arc, wrapping through 0°
HE_S = (0.07, 0.75)
HE_V = (0.30, 0.97)
BG_V, BG_S = 0.88, 0.10  # white/light background
ACHROMATIC_S = 0.08  # greys (charts, greyscale images) carry no stain
DARK_V = 0.25
OFF_HUE = (20.0, 240.0)
OFF_S = 0.25
# HED optical densities (scikit-image rgb2hed units) that brightfield H&E occupies;
# heatmaps reach H ≈ 0.2–0.8 (dark pixels), magenta fluorophores E ≈ 0.9.
HED_MAX_H, HED_MAX_E, HED_MAX_D = 0.25, 0.25, 0.15

#: The plain purple-pixel rule (hue 250–345°, S > 0.12, 0.25 < V < 0.97) used to stage the
#: fixtures; recorded for comparison only: it keeps heatmaps and fluorescence.
NAIVE_PURPLE = (250.0, 345.0, 0.12, 0.25, 0.97)

# Block rule
MIN_FG = 0.4
MIN_HE_HUE = 0.5
MAX_DARK = 0.10
MAX_OFF_PALETTE = 0.25
MAX_S90 = 0.85
MIN_TEXTURE = 0.02
FLAT_TOL = 8  # RGB levels: a pixel this close to the block's median colour is "flat"
MAX_FLAT = 0.6  # blocks mostly of one flat colour are fills (charts, matrices), not tissue


@dataclass
class ColourScores:
    """What the filter stores for one image (so thresholds can be re-applied without re-reading)."""

    purple_ratio: float  # H&E-coloured share of the stained pixels in the tissue region
    he_score: float  # share of those pixels whose HED densities are in the H&E range
    tissue_fraction: float  # share of the image's blocks that are H&E tissue
    tissue_blocks: int
    blocks: int
    purple_ratio_image: float  # the naive whole-image share of H&E-coloured pixels
    dark_fraction: float
    detail: float  # median pixel-scale brightness step in the tissue blocks
    naive_purple: float  # plain HSV purple count over the whole image (NAIVE_PURPLE rule)

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def load_rgb(path: str | Path, work_side: int = WORK_SIDE) -> np.ndarray:
    """Read an image as uint8 RGB, shrunk so its longest side is at most ``work_side``
    (JPEG decodes at reduced size). Raises :class:`~histocore.imaging.ImageError`."""
    return load_rgb_sized(path, work_side)[0]


def load_rgb_sized(path: str | Path, work_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_rgb`, and the file's ``(width, height)`` (before shrinking)."""
    try:
        return read_rgb_sized(path, max_pixels=MAX_PIXELS, max_side=work_side)
    except ImageTooLarge as exc:  # the wording the filter has always recorded
        raise ImageTooLarge(
            exc.what, exc.limit, exc.size, exc.pixels,
            f"image of {exc.declared} pixels exceeds limit of {exc.limit} (decompression bomb?)",
        ) from None  # fmt: skip


def pixel_classes(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks per pixel: background, stained, H&E colour, dark, off-palette, HED ok."""
    hsv = rgb2hsv(rgb)
    h, s, v = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    background = ((v >= BG_V) & (s < BG_S)) | (s < ACHROMATIC_S)
    he_hue = (h >= HE_HUE_FROM) | (h <= HE_HUE_TO)
    he_colour = he_hue & (s >= HE_S[0]) & (s <= HE_S[1]) & (v >= HE_V[0]) & (v <= HE_V[1])
    off = (s > OFF_S) & (v > DARK_V) & (h > OFF_HUE[0]) & (h < OFF_HUE[1])
    hed = rgb2hed(rgb)
    hed_ok = (hed[..., 0] <= HED_MAX_H) & (hed[..., 1] <= HED_MAX_E) & (hed[..., 2] <= HED_MAX_D)
    return {
        "stained": ~background,
        "he_colour": he_colour,
        "dark": v < DARK_V,
        "off": off,
        "hed_ok": hed_ok,
        "naive_purple": (h >= NAIVE_PURPLE[0])
        & (h <= NAIVE_PURPLE[1])
        & (s > NAIVE_PURPLE[2])
        & (v > NAIVE_PURPLE[3])
        & (v < NAIVE_PURPLE[4]),
        "s": s,
        "v": v,
    }


def block_size(shape: tuple[int, ...]) -> int:
    """16 px blocks for patch-sized images (a 96 px patch gives 6×6), 24 px for figures."""
    return 16 if min(shape[:2]) < 200 else 24


def tissue_mask(
    rgb: np.ndarray, px: dict[str, np.ndarray], bs: int
) -> tuple[np.ndarray, int, int, float]:
    """Pixels of blocks that pass the H&E block rule; (mask, tissue blocks, blocks, detail).

    ``detail`` is the median over tissue blocks of the mean absolute brightness step between
    neighbouring pixels: stained tissue is grainy at pixel scale, a colour map of a smooth
    field (saliency, Grad-CAM, density maps) is not.
    """
    height, width = px["v"].shape
    v = px["v"]
    grad = np.zeros_like(v)
    grad[:, 1:] += np.abs(np.diff(v, axis=1))
    grad[1:, :] += np.abs(np.diff(v, axis=0))
    details: list[float] = []
    mask = np.zeros((height, width), dtype=bool)
    n_blocks = n_tissue = 0
    for y in range(0, max(height - bs + 1, 1), bs):
        for x in range(0, max(width - bs + 1, 1), bs):
            sl = (slice(y, y + bs), slice(x, x + bs))
            n_blocks += 1
            stained = px["stained"][sl]
            n_stained = int(stained.sum())
            if n_stained < MIN_FG * stained.size:
                continue
            if (px["he_colour"][sl] & stained).sum() < MIN_HE_HUE * n_stained:
                continue
            if px["dark"][sl].mean() > MAX_DARK or px["off"][sl].mean() > MAX_OFF_PALETTE:
                continue
            if np.percentile(px["s"][sl][stained], 90) > MAX_S90:
                continue
            if px["v"][sl].std() < MIN_TEXTURE:
                continue
            colours = rgb[sl][stained].astype(np.int16)
            flat = (np.abs(colours - np.median(colours, axis=0)).max(axis=1) <= FLAT_TOL).mean()
            if flat > MAX_FLAT:
                continue
            mask[sl] = True
            n_tissue += 1
            details.append(float(grad[sl].mean()))
    return mask, n_tissue, n_blocks, float(np.median(details)) if details else 0.0


def score_rgb(rgb: np.ndarray) -> ColourScores:
    """All colour measures of one uint8 RGB image."""
    px = pixel_classes(rgb)
    region, n_tissue, n_blocks, detail = tissue_mask(rgb, px, block_size(rgb.shape))
    stained = px["stained"]
    where = (region & stained) if n_tissue else stained  # no tissue region: whole image
    n_where = max(int(where.sum()), 1)
    return ColourScores(
        purple_ratio=float((px["he_colour"] & where).sum() / n_where),
        he_score=float((px["hed_ok"] & px["he_colour"] & where).sum() / n_where),
        tissue_fraction=float(n_tissue / max(n_blocks, 1)),
        tissue_blocks=n_tissue,
        blocks=n_blocks,
        purple_ratio_image=float(px["he_colour"].mean()),
        dark_fraction=float(px["dark"].mean()),
        detail=detail,
        naive_purple=float(px["naive_purple"].mean()),
    )


def score_image(path: str | Path) -> ColourScores:
    return score_rgb(load_rgb(path))
