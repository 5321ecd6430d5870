"""Figure captions split into their panels: "(A) … (B) …", "A, …; B, …", "(C–E) …".

One splitter for every caption reader (the H&E decision's stain evidence and the caption
weak labels), so both agree on which words belong to which panel.

:func:`split_panels` returns a :class:`PanelText` per caption: ``shared`` is the text that
applies to every panel (the title before the first panel marker, and sentences a caption
sets after the panel list without a marker are not separable, so they stay with the last
panel), and ``panels`` maps each panel letter (upper case) to its own text. A marker that
names a range or a list ("(A–C)", "(D,E)", "(F and G)") gives the same text to each letter.

Markers are only believed in order: the letters found must start at A (or continue the
last letter seen) so that "(n = 5)", "(P < 0.05)", "vitamin (A)" or "(HE)" are not
mistaken for panels, and a caption needs two panel letters to be split. Captions are
untrusted input: the length is capped (:data:`MAX_CAPTION_CHARS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Longer captions are cut here before parsing (hostile input; real legends are < 3,000).
MAX_CAPTION_CHARS = 20_000

_LETTER = r"[A-Za-z]"
_RANGE = rf"{_LETTER}(?:\s*(?:[-–—]|,|and|&|to)\s*{_LETTER})*"
#: "(A)", "(a–c)", "(D, E)", "(F and G)" anywhere; "A," / "A." / "A:" / "A)" only after a
#: sentence end or the caption's start ("A, H&E of …; B, CK19 …").
_MARKER = re.compile(
    rf"\((?P<paren>{_RANGE})\)"
    rf"|(?:(?<=^)|(?<=[.;:]\s)|(?<=[.;:]))\s*(?P<bare>{_RANGE})\s*[,.:)]\s",
)
#: A figure's label however it is spelt: "Fig. 1", "Fig 1", "Figure 1", "FIGURE 1", with a
#: sub-letter ("Fig. 1A"), supplementary ("Figure S1", "Supplementary Figure 1", PLOS's
#: "S1 Fig"); a label alone may also be just "S1" (:func:`figure_key`). The one grammar of
#: figure labels: the review page's label beside its caption, and the label a caption starts
#: with (:func:`split_panels`, :func:`panel_spans`).
_WORD = r"fig(?:ure)?\.?"
FIGURE_LABEL = re.compile(
    r"(?:(?P<supp>supplementa(?:ry|l)|suppl?\.?)\s*)?"
    # the S after a space or a '.' ("Figure S1", "Fig.S1"), or right before its number
    # ("FigureS1", "FigS1", as PDF text runs them together): "Figures 1" and "Figs 1" are
    # plurals, their s no supplementary mark ("Figure S1" was hidden before them)
    rf"(?:{_WORD}\s*(?:(?:(?<=[\s.])(?P<s1>S)\s*|(?P<s4>S)(?=\d)))?(?P<n1>\d+)(?P<l1>[A-Za-z])?"
    rf"|(?P<s2>S)\s*(?P<n2>\d+)(?P<l2>[A-Za-z])?\s*{_WORD}"
    r"|(?P<s3>S)(?P<n3>\d+)(?P<l3>[A-Za-z])?)",
    re.IGNORECASE,
)


def figure_key(m: re.Match[str] | None) -> tuple[bool, str, str] | None:
    """(supplementary, number, sub-letter) of a :data:`FIGURE_LABEL` match: "Fig. 1A" and
    "Figure 1a" are one label, "Figure S1", "Fig. S1" and "S1 Fig" another. The number is
    compared as text (a caption's 5,000-digit number was int()'s ValueError)."""
    if m is None:
        return None
    k = next(k for k in "123" if m[f"n{k}"] is not None)
    supp = bool(m["supp"] or m[f"s{k}"] or (k == "1" and m["s4"]))
    return supp, m[f"n{k}"].lstrip("0"), (m[f"l{k}"] or "").upper()


#: What ends the label a caption starts with ("Figure 1. ", "Fig. 2: ", "S1 Fig | ")
_LABEL_END = re.compile(r"\s*[:.|\-–—)]?\s*")


#: An appendix or e-figure's label a caption may start with ("Figure A1", "Fig. e1",
#: "Supplementary Figure B2"), which :data:`FIGURE_LABEL` does not read as a label (so the
#: review page does not take "Figure A1" for "Figure 1"): skipped at a caption's start only,
#: as the captions' own grammar did, so the panels after it are still split
_LETTERED_LABEL = re.compile(
    rf"(?:(?:supplementa(?:ry|l)|suppl?\.?)\s*)?{_WORD}\s*[A-Z]\d+[A-Za-z]?",
    re.IGNORECASE,
)


def _label_end(text: str) -> int:
    """Where the figure label ``text`` starts with ends (with its mark and spaces), 0 when
    it starts with none: read by :data:`FIGURE_LABEL`, as the review page reads a label
    (captions had a grammar of their own, which missed PLOS's "S1 Fig."), or an appendix
    or e-figure's "Figure A1" / "Fig. e1" (:data:`_LETTERED_LABEL`; that grammar read them,
    and without it "Figure A1 A. … B. …" lost its panel split). A bare "S1" is a label's
    form alone, not a caption's start ("S1 patients were …")."""
    m = FIGURE_LABEL.match(text)
    if m is None:
        m = _LETTERED_LABEL.match(text)
    elif m["n3"] is not None:
        return 0
    if m is None:
        return 0
    end = _LABEL_END.match(text, m.end())
    return end.end() if end else m.end()


@dataclass
class PanelText:
    """A caption cut into the text shared by all panels and each panel's own text."""

    shared: str
    panels: dict[str, str] = field(default_factory=dict)

    def text_for(self, letter: str | None) -> str:
        """The words that describe panel ``letter`` (its own text after the shared text);
        the whole caption when the letter is unknown or not in the caption."""
        if letter and letter.upper() in self.panels:
            return f"{self.shared} {self.panels[letter.upper()]}".strip()
        return " ".join([self.shared, *self.panels.values()]).strip()


def _letters(spec: str) -> list[str]:
    """ "A–C" → [A, B, C]; "D, E" → [D, E]; "F and G" → [F, G] (upper case)."""
    parts = re.findall(_LETTER, re.sub(r"\b(?:and|to)\b", " ", spec))
    letters = [p.upper() for p in parts]
    if len(letters) == 2 and re.search(r"[-–—]|\bto\b", spec):
        lo, hi = ord(letters[0]), ord(letters[1])
        if lo < hi <= lo + 12:
            return [chr(c) for c in range(lo, hi + 1)]
    return letters


def normalise(caption: str | None) -> str:
    """The caption as the splitter reads it: capped, whitespace runs collapsed to one space.

    Evidence offsets (``Image.weak_label_evidence``) index this text.
    """
    return " ".join((caption or "")[:MAX_CAPTION_CHARS].split())


def _panel_markers(text: str) -> list[tuple[int, int, list[str]]]:
    """Believable panel markers ``(start, end, letters)`` in order (see the module doc)."""
    markers: list[tuple[int, int, list[str]]] = []
    expected = "A"  # the next letter a believable marker may start with
    seen: set[str] = set()
    for m in _MARKER.finditer(text):
        spec = m.group("paren") or m.group("bare")
        letters = _letters(spec)
        if not letters or any(len(x) != 1 for x in letters):
            continue
        first = letters[0]
        # accept the next letter, or a repeat/back-reference of letters already seen
        # ("(A) … (B) … as in (A)") only as part of the running text, not as a new marker
        if first != expected and not (first in seen and set(letters) <= seen):
            continue
        if first in seen:
            continue  # a reference back to an earlier panel stays in the running text
        markers.append((m.start(), m.end(), letters))
        seen.update(letters)
        expected = chr(ord(max(letters)) + 1)
    if len(seen) < 2:  # one "(A)" alone is a parenthesis ("vitamin (A)"), not a panel list
        return []
    return markers


def split_panels(caption: str | None) -> PanelText:
    """Split ``caption`` into per-panel texts (see the module docstring for the rules)."""
    if not caption:
        return PanelText(shared="")
    text = normalise(caption)
    text = text[_label_end(text) :]
    markers = _panel_markers(text)
    if not markers:
        return PanelText(shared=text)
    out = PanelText(shared=text[: markers[0][0]].strip())
    for k, (_, end, letters) in enumerate(markers):
        stop = markers[k + 1][0] if k + 1 < len(markers) else len(text)
        body = text[end:stop].strip(" ;,")
        for letter in letters:
            out.panels[letter] = f"{out.panels.get(letter, '')} {body}".strip()
    return out


def panel_spans(caption: str | None) -> tuple[str, list[tuple[tuple[str, ...], int, int]]]:
    """The same split as offsets: ``(text, [(letters, start, end), ...])``.

    ``text`` is :func:`normalise`'s caption (figure prefix kept); the first span is the
    shared text (``letters == ()``), then one span per marker in order, so a reader can
    point at words of the caption (the weak-label evidence) and know their panel.
    """
    text = normalise(caption)
    skip = _label_end(text)
    markers = [(a + skip, b + skip, ls) for a, b, ls in _panel_markers(text[skip:])]
    spans: list[tuple[tuple[str, ...], int, int]] = [
        ((), 0, markers[0][0] if markers else len(text))
    ]
    for k, (_, end, letters) in enumerate(markers):
        stop = markers[k + 1][0] if k + 1 < len(markers) else len(text)
        spans.append((tuple(letters), end, stop))
    return text, spans
