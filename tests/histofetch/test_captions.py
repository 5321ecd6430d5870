"""Caption panel splitting: "(A) … (B) …", bare "A, …; B, …", ranges, and false markers."""

from __future__ import annotations

import pytest

from histofetch.captions import MAX_CAPTION_CHARS, split_panels

LI_STYLE = (
    "Figure 6. KIR+ cells in lung. (A) H&E staining of lung sections (n = 5). (B) Ki-67 IHC. "
    "(C–E) PAS staining of kidney; (F and G) quantification, P < 0.05."
)


def test_parenthesised_panels_ranges_and_lists() -> None:
    parts = split_panels(LI_STYLE)
    assert parts.shared == "KIR+ cells in lung."
    assert parts.panels["A"] == "H&E staining of lung sections (n = 5)."
    assert parts.panels["B"] == "Ki-67 IHC."
    assert parts.panels["C"] == parts.panels["D"] == parts.panels["E"] == "PAS staining of kidney"
    assert parts.panels["F"] == parts.panels["G"] == "quantification, P < 0.05."
    assert parts.text_for("b") == "KIR+ cells in lung. Ki-67 IHC."


def test_bare_letters_after_sentence_ends() -> None:
    parts = split_panels("Fig. 2: A, H&E of the node; B, CK19 immunohistochemistry. C. Bar chart.")
    assert parts.panels == {
        "A": "H&E of the node",
        "B": "CK19 immunohistochemistry.",
        "C": "Bar chart.",
    }


def test_lower_case_letters_and_back_references_stay_in_the_text() -> None:
    parts = split_panels("(a) H&E (b) IHC for ER as in (a)")
    assert parts.panels == {"A": "H&E", "B": "IHC for ER as in (a)"}


def test_parentheses_that_are_not_panels_do_not_split() -> None:
    assert split_panels("Figure 1. Vitamin (A) levels (HE) in mice.").panels == {}
    one = split_panels("Figure 3 Lymph node with metastasis (H&E, x200).")
    assert one.panels == {} and one.shared == "Lymph node with metastasis (H&E, x200)."
    # letters out of order are not a panel list: "(B)" before any "(A)"
    assert split_panels("Cells (B) and (C) are shown").panels == {}


def test_unknown_letter_or_no_caption_gives_the_whole_text() -> None:
    assert split_panels(None).panels == {} and split_panels("").shared == ""
    parts = split_panels("(A) H&E. (B) PAS.")
    assert parts.text_for("Z") == "H&E. PAS."
    assert parts.text_for(None) == "H&E. PAS."


def test_hostile_captions_are_capped_and_fast() -> None:
    import time

    # CPU time of this thread, which other processes on the box cannot stretch: about
    # 2 ms here; a regex that backtracks on this input takes far more than the 2 s allowed
    start = time.thread_time()
    parts = split_panels("(A) " + "(a-" * 50_000 + " x" * 100_000)
    assert time.thread_time() - start < 2.0
    assert len(parts.shared) + sum(map(len, parts.panels.values())) <= MAX_CAPTION_CHARS


@pytest.mark.parametrize(
    ("caption", "shared"),
    [
        # the label read by the review page's grammar (histofetch.captions.FIGURE_LABEL): a
        # PLOS "S1 Fig." and "Suppl. Fig. 3." stayed in the shared text (finding 8)
        ("S1 Fig. (A) H&E of the node. (B) CK19.", ""),
        ("Suppl. Fig. 3. (A) H&E of the node. (B) CK19.", ""),
        ("Figure 2: (A) H&E of the node. (B) CK19.", ""),
        # a bare 'S1' is no caption's label: its own text
        ("S1 patients: (A) H&E of the node. (B) CK19.", "S1 patients:"),
        # an appendix or e-figure's label, which the shared grammar does not read (so the
        # review page does not take 'Figure A1' for 'Figure 1'), is still skipped here: it
        # stayed in the text and hid the panel letters after it
        ("Figure A1 A. H&E of the node. B. CK19.", ""),
        ("Figure A1 A: H&E of the node. B: CK19.", ""),
        ("Fig. e1. (A) H&E of the node. (B) CK19.", ""),
        ("Supplementary Figure B2: A. H&E of the node. B. CK19.", ""),
    ],
)
def test_the_label_a_caption_starts_with_is_read_by_the_shared_grammar(
    caption: str, shared: str
) -> None:
    from histofetch.captions import panel_spans

    parts = split_panels(caption)
    assert parts.shared == shared
    assert parts.panels == {"A": "H&E of the node.", "B": "CK19."}
    text, spans = panel_spans(caption)
    assert [text[a:b].strip() for _, a, b in spans[1:]] == ["H&E of the node.", "CK19."]


@pytest.mark.parametrize(
    "label", ["Figure A1", "Figure A1:", "Figure e1", "S1 Fig", "Figure 1"], ids=str
)
def test_each_panel_keeps_its_own_label_after_any_figure_label(label: str) -> None:
    # 'Figure A1 A. … B. Benign …' was not split: B read the metastasis of A
    from histofetch.labels import read_caption

    caption = f"{label} A. Lymph node with metastatic carcinoma. B. Benign reactive lymph node."
    got = {letter: read_caption(caption, letter).label for letter in "AB"}
    assert got == {"A": "metastasis", "B": "no_metastasis"}


def test_an_appendix_label_is_not_the_numbered_figure() -> None:
    # the caption's start skips 'Figure A1', but the label grammar still does not read it
    # as 'Figure 1' (the review page compares labels by figure_key)
    from histofetch.captions import FIGURE_LABEL, figure_key

    assert figure_key(FIGURE_LABEL.match("Figure A1")) is None
    assert figure_key(FIGURE_LABEL.match("Figure 1")) == (False, "1", "")
