"""The "Fig. N" caption of an image on a PDF page: caption blocks found, the nearest chosen."""

from __future__ import annotations

import re

import pymupdf

#: A caption block starts with "Fig. 3", "Figure 3:", "FIGURE 3." ...
CAPTION_RE = re.compile(r"^\s*(fig\.?|figure)\s*[A-Z]?\d+[A-Za-z]?\s*[:.|\-–—)]", re.IGNORECASE)


#: A hyphen (or soft hyphen) that ends a line of a caption block, and the two word parts.
_LINE_END_HYPHEN = re.compile(r"(\S)([-\u2010\u00ad])[ \t]*\n[ \t]*(?=(\S))")
_WORD_END = re.compile(r"[A-Za-z]+$")
_WORD_START = re.compile(r"[a-z]+")
#: Words typeset with a hyphen of their own that a line may end on ("tumour-free",
#: "lymph-node", "node-negative"): the hyphen stays. Other lower-case word parts broken
#: at a line end ("metas-" + "tasis") are one word, as the reader reads it.
# fmt: off
_COMPOUND_LEFT = frozenset((
    "lymph", "node", "tumor", "tumour", "cancer", "carcinoma", "cell", "non", "well",
    "poorly", "moderately", "high", "low", "post", "pre", "anti", "cross", "long", "short",
))
_COMPOUND_RIGHT = frozenset((
    "free", "negative", "positive", "stained", "staining", "associated", "related",
    "derived", "induced", "like", "type", "based", "bearing", "rich", "poor", "node", "nodes",
))
# fmt: on


def _join_hyphen(match: re.Match[str]) -> str:
    before, hyphen, after = match.group(1), match.group(2), match.group(3)
    if hyphen == "\u00ad":  # a soft hyphen only ever marks a word broken at the line end
        return before
    if before.islower() and before.isascii() and after.islower() and after.isascii():
        text = match.string
        left = _WORD_END.search(text, 0, match.end(1))
        right = _WORD_START.match(text, match.end())
        left_word = left.group(0).lower() if left else ""
        right_word = right.group(0) if right else ""
        if left_word not in _COMPOUND_LEFT and right_word not in _COMPOUND_RIGHT:
            return before
    return before + "-"


def join_lines(text: str) -> str:
    """A text block's lines as one line of words.

    A word broken at a line end is joined: "metas-" + "tasis" is "metastasis" (it was
    "metas- tasis", which no caption rule reads), a word with a hyphen of its own keeps it
    ("tumour-free", "H&E-stained", "Ki-67"; it was "Tumour- free", read as a positive
    finding).
    """
    return " ".join(_LINE_END_HYPHEN.sub(_join_hyphen, text).split())


def caption_blocks(page: pymupdf.Page) -> list[tuple[pymupdf.Rect, str]]:
    """The text blocks of ``page`` that start like a figure caption, with their boxes."""
    out = []
    for block in page.get_text("blocks"):
        text = join_lines(str(block[4]))
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
