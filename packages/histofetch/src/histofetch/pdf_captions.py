"""The "Fig. N" caption of an image on a PDF page: caption blocks found, the nearest chosen."""

from __future__ import annotations

import re

import pymupdf

#: A caption block starts with "Fig. 3", "Figure 3:", "FIGURE 3." ...
CAPTION_RE = re.compile(r"^\s*(fig\.?|figure)\s*[A-Z]?\d+[A-Za-z]?\s*[:.|\-–—)]", re.IGNORECASE)


def caption_blocks(page: pymupdf.Page) -> list[tuple[pymupdf.Rect, str]]:
    """The text blocks of ``page`` that start like a figure caption, with their boxes."""
    out = []
    for block in page.get_text("blocks"):
        text = " ".join(str(block[4]).split())
        if block[6] == 0 and CAPTION_RE.match(text):
            out.append((pymupdf.Rect(block[:4]), text[:4000]))
    return out


def find_caption(captions: list[tuple[pymupdf.Rect, str]], bbox: list[float] | None) -> str | None:
    """The "Fig./Figure" block for an image on the page.

    Nearest below it in the same columns, else nearest above, else a caption beside it
    (overlapping rows), else the page's only caption; None when nothing fits.
    """
    if not captions:
        return None
    if bbox is None:
        return captions[0][1] if len(captions) == 1 else None
    img = pymupdf.Rect(bbox)

    def overlaps(r: pymupdf.Rect) -> bool:
        return min(r.x1, img.x1) - max(r.x0, img.x0) > 0

    below = [(r.y0 - img.y1, t) for r, t in captions if r.y0 >= img.y1 - 2 and overlaps(r)]
    if below:
        return min(below)[1]
    above = [(img.y0 - r.y1, t) for r, t in captions if r.y1 <= img.y0 + 2 and overlaps(r)]
    if above:
        return min(above)[1]
    # side captions (journals that set the legend in a column beside the figure)
    side = [
        (min(abs(r.x0 - img.x1), abs(img.x0 - r.x1)), t)
        for r, t in captions
        if min(r.y1, img.y1) - max(r.y0, img.y0) > 0
    ]
    if side:
        return min(side)[1]
    return captions[0][1] if len(captions) == 1 else None
