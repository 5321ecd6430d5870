"""Caption evidence: which stains and methods a caption (or one panel of it) names.

Kinds (``STAIN_KINDS``): ``he`` (H&E / haematoxylin and eosin), ``ihc`` (with the markers
named: CK19, Ki-67, HER2, …), ``pas``, ``trichrome``, ``special`` (Alcian blue, silver,
Congo red, Giemsa, Oil red O, …), ``if`` (immunofluorescence, confocal, DAPI),
``fish`` (FISH / RNA-FISH / smFISH / in situ hybridisation), ``cytology`` (smears, FNA,
Pap), ``gross`` (macroscopic photos), ``radiology`` (CT, MRI, PET, ultrasound, X-ray),
``plot`` (charts, curves, heatmaps, UMAP/t-SNE, flow cytometry, blots).

The decision (``rules.py``) uses them as:

* **for** H&E: the panel's text names ``he`` (and not a non-H&E stain for the same panel);
* **against** H&E: the panel's text names a non-H&E stain (``ihc``, ``pas``, ``trichrome``,
  ``special``, ``if``, ``fish``, ``cytology``, ``gross``, ``radiology``) and not ``he``;
* nothing: no caption, a caption naming no stain, only ``plot`` words, or both kinds for
  the same panel (a figure "H&E (A) and CK19 (B)" whose panels cannot be told apart).

Which text a row reads: a panel whose letter was read (panel_letters.py) and that the
caption names ("(B) …", "(C–E) …") reads its own part plus the shared title before the
first marker; a panel without a letter, a letter the caption does not name, and a whole
figure read the whole caption. So "(A) H&E … (B) CK19 IHC …" gives panel A "for" and
panel B "against", where the whole caption gives no verdict to either.

Negated mentions ("no H&E", "H&E not shown") are rare in legends and are not special-cased.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from histofetch.captions import split_panels

STAIN_KINDS = (
    "he",
    "ihc",
    "pas",
    "trichrome",
    "special",
    "if",
    "fish",
    "cytology",
    "gross",
    "radiology",
    "plot",
)
#: Kinds that, named for a panel without ``he``, count against it being an H&E micrograph.
AGAINST_HE = frozenset(STAIN_KINDS) - {"he", "plot"}

_W = r"(?<![A-Za-z0-9])"  # word start that also works before "&" and digits
_E = r"(?![A-Za-z0-9])"

#: Per kind: (words matched in any case, acronyms matched in upper case only, so that
#: "if", "fish", "pet", "ct", "er" in ordinary prose are not mistaken for methods).
_PATTERNS: dict[str, tuple[str, str]] = {
    "he": (
        r"H\s?&\s?E|H\s?and\s?E|HE[- ]stain\w*|H/E|ha?ematoxylin[- ]eosin|"
        r"ha?ematoxylin\s+(?:and|&)\s+eosin|eosin",
        r"HES",
    ),
    "ihc": (
        r"immunohisto\w*|immuno-?stain\w*|immunoreactiv\w*|immunoperoxidase|"
        r"antibod(?:y|ies)\s+(?:against|to)",
        r"IHC|DAB",
    ),
    "pas": (r"periodic\s+acid[- ]Schiff\w*|diastase", r"PAS|PAS-D"),
    "trichrome": (r"trichrome|Masson\w*|Sirius\s+red|picrosirius|van\s+Gieson", r"EVG"),
    "special": (
        r"Alcian\s+blue|silver\s+stain\w*|reticulin|Congo\s+red|Giemsa|Oil\s+Red\s+O|"
        r"Prussian\s+blue|Perls|von\s+Kossa|toluidine\s+blue|Gomori|Grocott|"
        r"Ziehl[- ]Neelsen|mucicarmine|Feulgen|Nissl|cresyl\s+violet|X-?gal",
        r"GMS|Jones",
    ),
    "if": (
        r"immunofluorescen\w*|fluorescen\w*|confocal|Hoechst|mCherry|tdTomato|"
        r"Alexa\s?Fluor",
        r"IF|DAPI|GFP|FITC",
    ),
    "fish": (r"RNA-?FISH|smFISH|RNAscope|in\s+situ\s+hybridi[sz]ation", r"FISH|ISH|CISH|SISH"),
    "cytology": (
        r"cytolog\w*|smears?|fine[- ]needle\s+aspirat\w*|Papanicolaou|Pap\s+stain\w*|"
        r"cytospin|touch\s+prep\w*|Diff-?Quik",
        r"FNA|FNAC",
    ),
    "gross": (r"gross|macroscop\w*|resected\s+specimen|cut\s+surface|photograph\w*", r""),
    "radiology": (
        r"ultrasound|ultrasonograph\w*|sonograph\w*|mammogra\w*|radiograph\w*|X-?ray|"
        r"scintigra\w*|tomograph\w*",
        r"CT|MRI|PET|PET/CT|PET-CT",
    ),
    "plot": (
        r"plots?|graphs?|charts?|curves?|histograms?|heat\s?maps?|UMAP|t-?SNE|Kaplan|"
        r"ROC|flow\s+cytometr\w*|FACS|western\s+blot\w*|immunoblot\w*|quantif\w*|"
        r"bar\s+graphs?|error\s+bars|schemat\w*|diagrams?|workflow",
        r"",
    ),
}
_KIND_RE = {
    kind: (
        re.compile(_W + f"(?:{words})" + _E, re.IGNORECASE),
        re.compile(_W + f"(?:{acronyms})" + _E) if acronyms else None,
    )
    for kind, (words, acronyms) in _PATTERNS.items()
}

#: IHC markers a caption may name (matched case-insensitively as whole words).
MARKERS = (  # noqa: SIM905 (one word list reads better than 60 quoted strings)
    "CK19 CK7 CK20 CK5/6 CK8/18 AE1/AE3 pan-?cytokeratin cytokeratin Ki-?67 MIB-?1 HER2 "
    "ERBB2 ER PR AR GATA3 p53 p63 p16 E-?cadherin CD3 CD4 CD8 CD20 CD31 CD34 CD45 CD68 "
    "CD163 PD-?L1 PD-?1 S100 SOX10 HMB-?45 Melan-?A TTF-?1 mammaglobin GCDFP-?15 "
    "D2-?40 podoplanin LYVE-?1 vimentin SMA desmin EpCAM Ber-?EP4 calretinin WT1 PAX8 "
    "synaptophysin chromogranin FOXP3 CD56 CD10 BCL2 BCL6 MUM1 cyclin\\s?D1 Ki67"
).split()
_UPPER_ONLY = {"ER", "PR", "AR", "SMA"}  # markers that are also short words
_MARKER_RE = re.compile(_W + "(" + "|".join(MARKERS) + ")" + _E, re.IGNORECASE)
_MARKER_CONTEXT = re.compile(r"stain\w*|immuno\w*|IHC|express\w*|positiv\w*", re.IGNORECASE)


_DISPLAY = {"he": "H&E", "trichrome": "trichrome", "special": "a special stain",
            "cytology": "cytology", "gross": "gross pathology", "radiology": "radiology",
            "plot": "plots/charts"}  # fmt: skip


@dataclass
class StainEvidence:
    """What the text names; ``verdict`` is "for", "against" or None (no evidence)."""

    kinds: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    verdict: str | None = None
    source: str = ""  # "panel A", "caption", "" (no caption)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kinds": self.kinds,
            "markers": self.markers,
            "verdict": self.verdict,
            "source": self.source,
        }

    def describe(self) -> str:
        """ "caption panel B names IHC (CK19)" — a phrase for reasons and --explain."""
        if not self.kinds:
            return "caption names no stain" if self.source else "no caption"
        names = [_DISPLAY.get(k, k.upper()) for k in self.kinds]
        if self.markers:
            names = [n + (f" ({', '.join(self.markers)})" if n == "IHC" else "") for n in names]
        return f"{self.source} names {', '.join(names)}"


def stains_in(text: str) -> tuple[list[str], list[str]]:
    """(kinds, IHC markers) named in ``text``, in ``STAIN_KINDS`` order."""
    found = [
        kind
        for kind, (words, acronyms) in _KIND_RE.items()
        if words.search(text) or (acronyms is not None and acronyms.search(text))
    ]
    markers: list[str] = []
    if _MARKER_CONTEXT.search(text) or "ihc" in found:
        for m in _MARKER_RE.finditer(text):
            name = m.group(1)
            short_word = name.upper() in _UPPER_ONLY and name != name.upper()  # "ar", "Er"
            if not short_word and name not in markers:
                markers.append(name)
    if markers and "ihc" not in found and "if" not in found:  # "CK19-positive cells"
        found.insert(1 if found[:1] == ["he"] else 0, "ihc")
    return found, markers


def verdict_of(kinds: list[str]) -> str | None:
    """ "for" (H&E named, nothing against), "against" (a non-H&E stain, no H&E), or None."""
    has_he = "he" in kinds
    against = any(k in AGAINST_HE for k in kinds)
    if has_he and not against:
        return "for"
    if against and not has_he:
        return "against"
    return None


def evidence(caption: str | None, letter: str | None = None) -> StainEvidence:
    """The stain evidence for panel ``letter`` of a figure (or the whole figure).

    With a letter the caption names, only that panel's text and the shared title are read;
    otherwise the whole caption.
    """
    if not caption or not caption.strip():
        return StainEvidence()
    parts = split_panels(caption)
    upper = (letter or "").upper()
    use_panel = bool(upper) and upper in parts.panels
    text = parts.text_for(letter if use_panel else None)
    kinds, markers = stains_in(text)
    source = f"caption panel {upper}" if use_panel else "caption"
    return StainEvidence(kinds=kinds, markers=markers, verdict=verdict_of(kinds), source=source)
