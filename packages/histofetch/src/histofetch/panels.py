"""Compound figures into panels: recursive XY-cut on near-uniform rows and columns.

A journal figure is usually a grid of panels (micrographs, charts, blots) separated by
white (or black) gutters. :func:`find_panels` finds them without any model:

1. A row (column) of a region is a *gutter line* when it is near-uniform (at least
   :data:`UNIFORM_SHARE` of its pixels within :data:`UNIFORM_TOL` levels of its median
   colour: white, black or grey separators), or when at least :data:`BACKGROUND_SHARE`
   of it is page: white or the figure's background colour (the median of its outermost
   pixels), so panel labels that cross a gutter do not break it.
2. Runs of at least ``min_gap`` gutter lines cut the region into bands; each band is cut
   again along the other axis, recursively (at most :data:`MAX_DEPTH` levels), until no
   gutter is left.
3. Each leaf is *tightly cropped* (uniform border lines removed) and kept when both sides
   are at least ``min_side`` px and it covers at least :data:`MIN_AREA` of the figure:
   panel letters, axis ticks and specks are dropped.

A figure that yields fewer than two panels is not a composite (``[]``). Tissue with
white gaps at low magnification may be cut into islands; each island is still judged on
its own, so the decision is unchanged.

Panel letters are read by panel_letters.py, not here: Tesseract on whole gutters found
none of the real letters (they sit among other labels) at ~2 s a panel, so that module
first finds one glyph-sized blob at each panel's corner and reads only it, then drops a
figure's letters unless they form a believable sequence. A panel with a letter reads its
own part of the caption ("(B) …"); one without reads the whole caption (decide/stains.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIFORM_TOL = 24  # RGB levels (JPEG ringing stays inside)
UNIFORM_SHARE = 0.98  # share of a near-uniform line within the tolerance of its median
#: Share of a gutter line that must be background: panel labels ("Control", "Dox group")
#: often cross the gutters, so a line need not be background all along.
BACKGROUND_SHARE = 0.85
MAX_DEPTH = 6
MIN_AREA = 0.01  # of the figure's area
#: Figures larger than this (longest side) are cut on a shrunk copy; boxes are scaled back.
WORK_SIDE = 1600


@dataclass
class Panel:
    """One panel: pixel box (x0, y0, x1, y1) in the parent image, its reading order and letter."""

    bbox: tuple[int, int, int, int]
    order: int
    letter: str | None = None  # set by panel_letters.read_letters when one can be read

    @property
    def width(self) -> int:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> int:
        return self.bbox[3] - self.bbox[1]


def _channel_max(a: np.ndarray) -> np.ndarray:
    """``a.max(axis=2)`` for (H, W, 3) arrays, without numpy's slow reduction over a
    length-3 last axis (this runs for every candidate cut of every figure)."""
    return np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])


def _uniform_lines(region: np.ndarray, axis: int, background: np.ndarray) -> np.ndarray:
    """Boolean per row (axis=0) or column (axis=1): is the line a gutter?

    A gutter line is near-uniform (``UNIFORM_SHARE`` of it within ``UNIFORM_TOL`` of its
    median colour), or mostly page: ``BACKGROUND_SHARE`` of it the figure's background
    colour or white.
    """
    lines = (region if axis == 0 else region.transpose(1, 0, 2)).astype(np.int16)
    med = np.median(lines, axis=1, keepdims=True).astype(np.int16)
    uniform = (_channel_max(np.abs(lines - med)) <= UNIFORM_TOL).mean(axis=1) >= UNIFORM_SHARE
    gutter = uniform
    for colour in (background, np.array([255, 255, 255])):
        near = _channel_max(np.abs(lines - colour.astype(np.int16))) <= UNIFORM_TOL
        gutter |= near.mean(axis=1) >= BACKGROUND_SHARE
    return gutter


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """The figure's page colour: the median of its outermost rows and columns."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.median(border, axis=0)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of False (content) in ``mask``."""
    out, start = [], None
    for i, gutter in enumerate(mask):
        if not gutter and start is None:
            start = i
        elif gutter and start is not None:
            out.append((start, i))
            start = None
    if start is not None:
        out.append((start, len(mask)))
    return out


def _cut(mask: np.ndarray, min_gap: int) -> list[tuple[int, int]]:
    """Content segments separated by gutters at least ``min_gap`` lines wide."""
    segments = _runs(mask)
    if not segments:
        return []
    merged = [segments[0]]
    for start, stop in segments[1:]:
        if start - merged[-1][1] < min_gap:  # a thin gutter: same panel (e.g. a grid line)
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def _leaves(
    rgb: np.ndarray,
    box: tuple[int, int, int, int],
    ctx: tuple[int, np.ndarray],
    depth: int,
    axis: int,
    out: list,
) -> None:
    """Append the leaf boxes of ``box`` to ``out``; ``ctx`` = (min gap, background colour)."""
    x0, y0, x1, y1 = box
    min_gap, background = ctx
    region = rgb[y0:y1, x0:x1]
    rows = _cut(_uniform_lines(region, 0, background), min_gap)
    cols = _cut(_uniform_lines(region, 1, background), min_gap)
    if not rows or not cols:
        return  # all uniform: empty region
    # tight crop first
    ty0, ty1, tx0, tx1 = rows[0][0], rows[-1][1], cols[0][0], cols[-1][1]
    tight = (x0 + tx0, y0 + ty0, x0 + tx1, y0 + ty1)
    if depth >= MAX_DEPTH:
        out.append(tight)
        return
    for ax in (axis, 1 - axis):
        segs = rows if ax == 0 else cols
        if len(segs) > 1:
            for a, b in segs:
                child = (
                    (tight[0], y0 + a, tight[2], y0 + b)
                    if ax == 0
                    else (x0 + a, tight[1], x0 + b, tight[3])
                )
                _leaves(rgb, child, ctx, depth + 1, 1 - ax, out)
            return
    out.append(tight)


#: Figures with a shorter side below this are not split (a small image is one panel).
MIN_FIGURE_SIDE = 128


def find_panels(rgb: np.ndarray, *, min_side: int = 64, min_gap: int | None = None) -> list[Panel]:
    """Panels of a figure in reading order (rows top to bottom, then left to right).

    ``min_gap`` defaults to 0.5 % of the longer side (at least 2 px). Returns ``[]`` when
    the figure is a single panel.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_FIGURE_SIDE:
        return []
    scale = 1.0
    work = rgb
    if max(h, w) > WORK_SIDE:
        import PIL.Image

        scale = max(h, w) / WORK_SIDE
        size = (max(1, round(w / scale)), max(1, round(h / scale)))
        work = np.asarray(PIL.Image.fromarray(rgb).resize(size, PIL.Image.Resampling.BILINEAR))
    wh, ww = work.shape[:2]
    gap = min_gap if min_gap is not None else max(2, round(0.005 * max(wh, ww)))
    boxes: list[tuple[int, int, int, int]] = []
    _leaves(work, (0, 0, ww, wh), (gap, background_colour(work)), 0, 0, boxes)
    side = min_side / scale
    area = MIN_AREA * wh * ww
    boxes = [
        b
        for b in boxes
        if min(b[2] - b[0], b[3] - b[1]) >= side and (b[2] - b[0]) * (b[3] - b[1]) >= area
    ]
    if len(boxes) < 2:
        return []
    boxes = [
        (
            round(b[0] * scale),
            round(b[1] * scale),
            min(w, round(b[2] * scale)),
            min(h, round(b[3] * scale)),
        )
        for b in boxes
    ]
    frozen = list(boxes)  # list.sort empties the list while it runs
    boxes.sort(key=lambda b: (_row_key(b, frozen), b[0]))
    return [Panel(bbox=b, order=k) for k, b in enumerate(boxes)]


def _row_key(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> int:
    """The top of the first box whose vertical span overlaps this one's middle (one "row")."""
    mid = (box[1] + box[3]) / 2
    return min(b[1] for b in boxes if b[1] <= mid <= b[3])
