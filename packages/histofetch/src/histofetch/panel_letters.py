"""Panel letters ("A", "B", …) read at each panel's top-left corner with Tesseract.

Reading whole gutters with Tesseract finds almost none of the letters (they sit among
group labels, axis titles and tick labels) and costs ~2 s a panel. So the letter is first
*found* without OCR, and only one glyph per panel is read:

1. **Find** (:func:`find_glyph`): in a window around the panel's top-left corner (side
   :data:`WINDOW_SHARE` of the panel's shorter side, within :data:`WINDOW_PX`), connected
   components of *ink* — page-contrasting pixels in the gutter (outside every panel) and
   pure black or white pixels on the image itself (letters drawn over the micrograph) — are
   kept when glyph-sized (:data:`MIN_GLYPH_PX` tall at least, a letter's aspect and fill),
   whole (not cut by the window), *isolated* (no neighbour of letter height closer than
   :data:`ISOLATION` of its height on the same line: words such as "Control" are not
   letters) and at the corner (not further right or down than a letter's height or
   :data:`CORNER_SHARE` of the panel). The one nearest the corner wins; when the top-left
   corner has none, the top-right corner inside the panel is tried.
2. **Read** (:func:`read_glyphs`): the glyph is re-binarised (Otsu on its crop), scaled to
   :data:`GLYPH_HEIGHT` px, padded, and all glyphs of a figure go to ONE Tesseract process
   (a list file, ``--psm 10``, letters-only whitelist; the ones left unread to a second,
   ``--psm 8``). A result counts when it is one letter (case folded: "Cc" → C; a solid
   bar is an "I") at confidence ≥ :data:`MIN_CONF`.
3. **Check** (:func:`plausible`): the letters of one figure must be at least two, distinct,
   and increase in reading order (rows, then left to right) or column by column, skipping
   at most :data:`MAX_SKIP` letters more than the panels between them; otherwise
   every letter of the figure is dropped (None) rather than pair a panel with the wrong
   part of the caption. The one exception: among four or more readings, a single stray
   one is dropped alone when the other three or more pass.

Tesseract is optional: without ``pytesseract`` or the ``tesseract`` binary (Debian:
``apt-get install tesseract-ocr``) every letter stays None and the decision reads the
whole caption for each panel, as it always did (one log line says so).
"""

from __future__ import annotations

import functools
import itertools
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from histofetch.panels import Panel, background_colour
from histofetch.worker_processes import ONCE

log = logging.getLogger(__name__)

WINDOW_SHARE = 0.25  # window half-side, as a share of the panel's shorter side …
WINDOW_PX = (24, 120)  # … clipped to this range (px of the figure as the filter reads it)
MIN_GLYPH_PX = 7  # a letter shorter than this cannot be read
MIN_IMAGE_GLYPH_PX = 10  # … and on the image itself, where specks abound
CORNER_SHARE = 0.1  # a letter inside the panel starts within this share of its side
STROKE = 0.5  # the thickest stroke of a letter (at a joint), as a share of its height
ISOLATION = 0.6  # no letter-high neighbour closer than this × the glyph height
GLYPH_HEIGHT = 40  # px: what Tesseract reads single characters best at (measured in tests)
GLYPH_PAD = 10
MAX_SKIP = 3  # letters a figure may skip between two read panels beyond the panels between
MIN_CONF = 30.0  # Tesseract confidence (0–100) below which a reading is dropped
WHITELIST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TIMEOUT_S = 30  # one Tesseract call per figure; hostile input must not hang the stage


@functools.cache
def tesseract_available() -> bool:
    """``pytesseract`` importable and the ``tesseract`` binary runnable (checked once)."""
    try:
        import pytesseract

        pytesseract.get_tesseract_version()
    # ImportError, TesseractNotFoundError, OSError; SystemExit: pytesseract's answer to a
    # Tesseract older than 3.05 (or a version it cannot parse), which ended the command
    except (Exception, SystemExit) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.info("panel letters are not read (no Tesseract: %s)", first, extra={ONCE: True})
        return False
    return True


@dataclass
class _Blob:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in figure pixels
    label: int
    dark: bool  # dark ink on a light ground

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]


def _components(mask: np.ndarray, origin: tuple[int, int], dark: bool):
    """Labels and blobs (boxes in figure pixels) of ``mask``'s 8-connected components."""
    from scipy import ndimage
    from skimage.measure import label

    labels = np.asarray(label(mask, connectivity=2))
    blobs = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        box = (origin[0] + xs.start, origin[1] + ys.start, origin[0] + xs.stop, origin[1] + ys.stop)
        blobs.append(_Blob(box, k, dark))
    return labels, blobs


def _is_glyph(b: _Blob, labels: np.ndarray, origin: tuple[int, int], max_h: float) -> bool:
    h, w = b.height, b.width
    if not (MIN_GLYPH_PX <= h <= max_h and 0.12 * h <= w <= 1.6 * h):
        return False
    x0, y0 = b.box[0] - origin[0], b.box[1] - origin[1]
    from scipy import ndimage

    mask = labels[y0 : y0 + h, x0 : x0 + w] == b.label
    fill = mask.mean()
    if not 0.1 <= fill <= (1.0 if w < 0.35 * h else 0.9):
        return False
    # letters are strokes: a solid blob (a cell, a spot, an icon) is thicker than STROKE
    stroke = 2 * float(np.max(np.asarray(ndimage.distance_transform_edt(np.pad(mask, 1)))))
    return stroke <= max(2.0, STROKE * h)


def _isolated(b: _Blob, others: list[_Blob]) -> bool:
    """No letter-high neighbour on the same line within ISOLATION × height (brackets and
    full stops around a letter, "(A)" / "A.", do not count)."""
    h = b.height
    for o in others:
        if o is b or o.height < 0.3 * h:
            continue
        same_line = min(b.box[3], o.box[3]) - max(b.box[1], o.box[1]) > 0.3 * h
        gap = max(o.box[0] - b.box[2], b.box[0] - o.box[2])
        bracket = o.width <= 0.4 * h and o.height >= 0.9 * h
        if same_line and gap < ISOLATION * h and not bracket:
            return False
    return True


def _window_masks(rgb: np.ndarray, window: tuple[int, int, int, int], inside, others, bg):
    """(dark ink, light ink) masks of a window: page-contrasting pixels in the gutter,
    pure black / white (grey) pixels on the panel's own image."""
    x0, y0, x1, y1 = window
    win = rgb[y0:y1, x0:x1].astype(np.int16)
    gray = win.mean(axis=2)
    hi, lo = win.max(axis=2), win.min(axis=2)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    on_panel = (xx >= inside[0]) & (xx < inside[2]) & (yy >= inside[1]) & (yy < inside[3])
    elsewhere = np.zeros_like(on_panel)
    for b in others:
        elsewhere |= (xx >= b[0]) & (xx < b[2]) & (yy >= b[1]) & (yy < b[3])
    gutter = ~on_panel & ~elsewhere
    page = float(np.mean(bg))
    grey = (hi - lo) <= 40
    dark = (gutter & (gray < page - 100)) | (on_panel & (hi <= 60))
    light = (gutter & (gray > page + 100)) | (on_panel & (lo >= 225) & grey)
    return dark, light


def find_glyph(
    rgb: np.ndarray, box: tuple[int, int, int, int], boxes: Sequence[tuple[int, int, int, int]]
) -> np.ndarray | None:
    """The panel letter at ``box``'s top-left (else top-right) corner as a black-on-white
    uint8 image ready for Tesseract, or None when no glyph-like blob sits there."""
    bg = background_colour(rgb)
    others = [b for b in boxes if b != tuple(box)]
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0)
    e = int(np.clip(WINDOW_SHARE * side, *WINDOW_PX))
    fh, fw = rgb.shape[:2]
    corners = [
        ((max(0, x0 - e), max(0, y0 - e), min(fw, x0 + e), min(fh, y0 + e)), "left"),
        ((max(x0, x1 - e), y0, x1, min(fh, y0 + e)), "right"),
    ]
    for window, corner in corners:
        if window[2] - window[0] < MIN_GLYPH_PX or window[3] - window[1] < MIN_GLYPH_PX:
            continue
        best = _best_blob(rgb, window, box, others, bg, corner)
        if best is not None:
            return best
    return None


def _best_blob(rgb, window, box, others, bg, corner: str) -> np.ndarray | None:
    x0, y0, x1, y1 = box
    origin = (window[0], window[1])
    candidates = []
    max_h = max(MIN_GLYPH_PX, min(0.3 * min(x1 - x0, y1 - y0), (window[3] - window[1]) * 0.8))
    for mask, dark in zip(_window_masks(rgb, window, box, others, bg), (True, False), strict=True):
        labels, blobs = _components(mask, origin, dark)
        for b in blobs:
            if not _is_glyph(b, labels, origin, max_h):
                continue
            if not _whole(b, window, rgb.shape) or not _isolated(b, blobs):
                continue
            h = b.height
            reach_x, reach_y = max(CORNER_SHARE * (x1 - x0), h), max(CORNER_SHARE * (y1 - y0), h)
            if b.box[1] > y0 + reach_y:
                continue
            if corner == "left" and b.box[0] > x0 + reach_x:
                continue
            if corner == "right" and b.box[2] < x1 - reach_x:
                continue
            cx, cy = (b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2
            ref = x0 if corner == "left" else x1
            on_image = b.box[0] < x1 and b.box[2] > x0 and b.box[1] < y1 and b.box[3] > y0
            if on_image and (b.width <= 0.3 * h or h < MIN_IMAGE_GLYPH_PX):
                continue  # thin bars and specks on tissue are edges and lumens, not letters
            candidates.append((on_image, np.hypot(cx - ref, cy - y0), b, labels))
    if not candidates:
        return None
    # a letter in the gutter (dark on the page) before one on the image; then the nearest
    _, _, blob, labels = min(candidates, key=lambda c: (c[0], c[1]))
    return _glyph_image(rgb, blob, labels, origin)


def _whole(b: _Blob, window: tuple[int, int, int, int], shape: tuple[int, ...]) -> bool:
    """Not cut by the window's edge (the figure's own edge is fine)."""
    fh, fw = shape[:2]
    return not (
        (b.box[0] == window[0] and window[0] > 0)
        or (b.box[1] == window[1] and window[1] > 0)
        or (b.box[2] == window[2] and window[2] < fw)
        or (b.box[3] == window[3] and window[3] < fh)
    )


def _glyph_image(rgb: np.ndarray, b: _Blob, labels: np.ndarray, origin) -> np.ndarray:
    """Otsu-binarised glyph (the seed blob's Otsu components), black on white, scaled to
    GLYPH_HEIGHT and padded."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    m = max(2, round(0.25 * b.height))
    fh, fw = rgb.shape[:2]
    cx0, cy0 = max(0, b.box[0] - m), max(0, b.box[1] - m)
    cx1, cy1 = min(fw, b.box[2] + m), min(fh, b.box[3] + m)
    gray = rgb[cy0:cy1, cx0:cx1].mean(axis=2)
    seed = np.zeros(gray.shape, bool)
    ly0, lx0 = cy0 - origin[1], cx0 - origin[0]
    part = labels[max(0, ly0) : ly0 + gray.shape[0], max(0, lx0) : lx0 + gray.shape[1]]
    oy, ox = max(0, -ly0), max(0, -lx0)
    seed[oy : oy + part.shape[0], ox : ox + part.shape[1]] = part == b.label
    ink = seed
    if gray.max() - gray.min() > 10:
        t = threshold_otsu(gray)
        otsu = gray < t if b.dark else gray > t
        lab = np.asarray(label(otsu, connectivity=2))
        keep = np.unique(lab[seed & otsu])
        grown = np.isin(lab, keep[keep > 0]) | seed
        gy, gx = np.nonzero(grown)
        sy, sx = np.nonzero(seed)
        # Otsu may thicken the glyph, never leak into the ground around it
        if (
            max(sy.min() - gy.min(), gx.max() - sx.max(), sx.min() - gx.min(), gy.max() - sy.max())
            <= 1
        ):
            ink = grown
    ys, xs = np.nonzero(ink)
    ink = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = GLYPH_HEIGHT / ink.shape[0]
    size = (max(1, round(ink.shape[1] * scale)), GLYPH_HEIGHT)
    up = PIL.Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).resize(
        size, PIL.Image.Resampling.BILINEAR
    )
    out = np.where(np.asarray(up) < 128, 0, 255).astype(np.uint8)
    return np.pad(out, GLYPH_PAD, constant_values=255)


def _fold(text: str) -> str | None:
    """One letter from Tesseract's text: "C" / "Cc" / "WwW" → the letter; "l" → I."""
    text = text.strip()
    if text == "l":
        return "I"
    upper = text.upper()
    if not upper or len(set(upper)) != 1 or not upper.isalpha() or not upper.isascii():
        return None
    return upper[0]


def _is_bar(glyph: np.ndarray) -> bool:
    """A solid upright bar (a sans-serif "I"): narrow and nearly all ink."""
    ink = glyph[GLYPH_PAD:-GLYPH_PAD, GLYPH_PAD:-GLYPH_PAD] < 128
    return ink.shape[1] <= 0.3 * ink.shape[0] and ink.mean() >= 0.85


def read_glyphs(glyphs: Sequence[np.ndarray | None]) -> list[str | None]:
    """Each glyph image read as one letter (upper case) or None.

    One Tesseract process reads every glyph of a figure as a single character
    (``--psm 10``); the glyphs it leaves unread go to a second one as a single word
    (``--psm 8``), which reads some shapes (a "B") that the first mode returns nothing for.
    """
    out: list[str | None] = [None] * len(glyphs)
    for k, g in enumerate(glyphs):
        if g is not None and _is_bar(g):
            out[k] = "I"  # Tesseract reads a lone bar as "l" at ~0 confidence
    todo = [k for k, g in enumerate(glyphs) if g is not None and out[k] is None]
    if not todo or not tesseract_available():
        return out
    with tempfile.TemporaryDirectory(prefix="histofetch-letters-") as tmp:
        paths = {}
        for k in todo:
            paths[k] = Path(tmp) / f"g{k:03d}.png"
            PIL.Image.fromarray(np.asarray(glyphs[k])).save(paths[k])
        for psm in (10, 8):
            read = _tesseract(paths, psm, Path(tmp))
            if read is None:  # failed or timed out: a second mode would too
                break
            for k, letter in read.items():
                out[k] = letter
            paths = {k: p for k, p in paths.items() if out[k] is None}
            if not paths:
                break
    return out


def _tesseract(paths: dict[int, Path], psm: int, tmp: Path) -> dict[int, str] | None:
    """Letters read at ``paths`` (key → glyph file) by one Tesseract process (None when it
    failed; its output is parsed defensively: a page or confidence that makes no sense is
    skipped)."""
    import pytesseract

    keys = list(paths)
    listing = tmp / f"glyphs-{psm}.txt"
    listing.write_text("\n".join(str(paths[k]) for k in keys) + "\n")
    config = f"--psm {psm} -c tessedit_char_whitelist={WHITELIST}"
    try:
        data = pytesseract.image_to_data(
            str(listing), config=config, timeout=TIMEOUT_S, output_type="dict"
        )
    except (RuntimeError, OSError, pytesseract.TesseractError) as exc:
        log.warning("panel letters not read: tesseract failed: %s", exc)
        return None
    best: dict[int, tuple[float, str | None]] = {}
    for page, text, conf in zip(data["page_num"], data["text"], data["conf"], strict=True):
        try:
            page, conf = int(page), float(conf)
        except (TypeError, ValueError):
            continue
        if not str(text).strip() or not 1 <= page <= len(keys):
            continue
        k = keys[page - 1]
        if conf > best.get(k, (-1.0, None))[0]:
            best[k] = (conf, _fold(str(text)) if conf >= MIN_CONF else None)
    return {k: letter for k, (_, letter) in best.items() if letter}


def plausible(letters: Sequence[str | None], boxes: Sequence[tuple[int, int, int, int]]):
    """``letters`` (one per panel, reading order) when they form a believable sequence,
    else all None: at least two, distinct, increasing by rows or by columns. One stray
    reading among four or more (a tick label, a "0" read as "O") is dropped alone when
    the others (three at least) are believable without it."""
    read = [k for k, x in enumerate(letters) if x]
    none: list[str | None] = [None] * len(letters)
    if _increasing(letters, read, boxes):
        return list(letters)
    if len(read) >= 4:
        for stray in read:
            rest = [k for k in read if k != stray]
            if _increasing(letters, rest, boxes):
                return [None if k == stray else x for k, x in enumerate(letters)]
    return none


def _increasing(letters, keys: list[int], boxes) -> bool:
    """At least two distinct letters at ``keys``, increasing by rows or by columns, each
    at most :data:`MAX_SKIP` letters further than the panels between them (charts and
    schemes that are not cut as panels still take letters)."""
    if len(keys) < 2 or len({letters[k] for k in keys}) != len(keys):
        return False
    by_cols = sorted(range(len(boxes)), key=lambda k: (boxes[k][0], boxes[k][1]))
    for order in (list(range(len(boxes))), by_cols):
        rank = {k: r for r, k in enumerate(order)}
        seq = sorted(keys, key=rank.__getitem__)
        steps = [
            (ord(letters[b]) - ord(letters[a]), rank[b] - rank[a])
            for a, b in itertools.pairwise(seq)
        ]
        if all(0 < d <= n + MAX_SKIP for d, n in steps):
            return True
    return False


def read_letters(rgb: np.ndarray, panels: Sequence[Panel]) -> list[str | None]:
    """Find, read and check the letters of a figure's panels; sets ``Panel.letter``."""
    if len(panels) < 2 or not tesseract_available():
        return [None] * len(panels)
    boxes = [p.bbox for p in panels]
    glyphs = [find_glyph(rgb, b, boxes) for b in boxes]
    letters = plausible(read_glyphs(glyphs), boxes)
    for p, letter in zip(panels, letters, strict=True):
        p.letter = letter
    return letters
