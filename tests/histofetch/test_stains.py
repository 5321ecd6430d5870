"""Caption stain evidence: kinds, IHC markers, per-panel verdicts, and words that are not stains."""

from __future__ import annotations

import pytest
from test_captions import LI_STYLE

from histofetch.decide.stains import evidence, stains_in, verdict_of


def test_per_panel_evidence_of_a_mixed_figure() -> None:
    whole = evidence(LI_STYLE)
    assert whole.kinds == ["he", "ihc", "pas", "plot"] and whole.verdict is None
    a, b, c, f = (evidence(LI_STYLE, x) for x in "ABCF")
    assert (a.kinds, a.verdict, a.source) == (["he"], "for", "caption panel A")
    assert (b.kinds, b.markers, b.verdict) == (["ihc"], ["Ki-67"], "against")
    assert b.describe() == "caption panel B names IHC (Ki-67)"
    assert (c.kinds, c.verdict) == (["pas"], "against")
    assert (f.kinds, f.verdict) == (["plot"], None)


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Lymph node metastasis, hematoxylin and eosin, x200", ["he"]),
        ("HE staining of the primary tumour", ["he"]),
        ("Masson's trichrome of the liver", ["trichrome"]),
        ("Alcian blue and H&E of the colon", ["he", "special"]),
        ("Immunofluorescence with DAPI (blue)", ["if"]),
        ("RNA-FISH of nascent transcripts", ["fish"]),
        ("Fine-needle aspiration cytology, Papanicolaou", ["cytology"]),
        ("Contrast-enhanced CT of the axilla", ["radiology"]),
        ("UMAP of single-cell clusters", ["plot"]),
        ("Gross photograph of the resected specimen", ["gross"]),
        ("Expression of ER and HER2 in tumour cells", ["ihc"]),
    ],
)
def test_kinds_named(text: str, kinds: list[str]) -> None:
    assert stains_in(text)[0] == kinds


def test_ordinary_words_are_not_acronyms() -> None:
    # "if", "fish", "pet", "ct", "er" in prose; "pas" inside a word
    kinds, markers = stains_in("Mice were fed fish oil if a pet was near; the order was passed")
    assert kinds == [] and markers == []


def test_verdicts() -> None:
    assert verdict_of(["he"]) == "for"
    assert verdict_of(["he", "plot"]) == "for"
    assert verdict_of(["ihc"]) == "against"
    assert verdict_of(["he", "ihc"]) is None
    assert verdict_of(["plot"]) is None and verdict_of([]) is None
    assert evidence(None).describe() == "no caption"
    assert evidence("Figure 2. Study flow.").describe() == "caption names no stain"
