"""Panel letters: found at each panel's corner (gutter or on the image), read by Tesseract,
checked per figure; a lettered panel reads its own part of the caption."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import pytest
from pdf_factory import build_image_pdf, he_like

from histocore.manifest import Manifest
from histofetch.panel_letters import plausible, read_letters, tesseract_available
from histofetch.panels import find_panels

needs_tesseract = pytest.mark.skipif(
    not tesseract_available(),
    reason="tesseract-ocr / pytesseract not installed (apt-get install tesseract-ocr): "
    "panel letters are not read without it",
)
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"  # fonts every install has
SIDE, GUTTER, MARGIN = 150, 44, 44


def tissue(seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 25, (SIDE, SIDE, 3))
    return np.clip(he_like(SIDE, SIDE, seed=seed) + noise, 0, 255).astype(np.uint8)


def lettered_figure(
    letters: str, font: str, size: int, style: str, *, cols: int = 3, labels: bool = True
) -> np.ndarray:
    """A grid of H&E-like panels, ``letters`` in reading order: drawn dark in the gutter
    above-left of each panel (``style="gutter"``) or white / black on the panel's own
    top-left corner (``"white"`` / ``"black"``); group labels ("Control") above the panels."""
    rows = -(-len(letters) // cols)
    h = 2 * MARGIN + rows * SIDE + (rows - 1) * GUTTER
    w = 2 * MARGIN + cols * SIDE + (cols - 1) * GUTTER
    fig = PIL.Image.new("RGB", (w, h), "white")
    draw = PIL.ImageDraw.Draw(fig)
    face = PIL.ImageFont.truetype(str(FONT_DIR / font), size)
    small = PIL.ImageFont.truetype(str(FONT_DIR / "DejaVuSans.ttf"), 11)
    for k, letter in enumerate(letters):
        x0 = MARGIN + (k % cols) * (SIDE + GUTTER)
        y0 = MARGIN + (k // cols) * (SIDE + GUTTER)
        tile = tissue(k + 1)
        if style == "black":  # a pale micrograph, so that black ink stands out
            tile = (255 - (255 - tile.astype(np.int16)) // 3).astype(np.uint8)
        fig.paste(PIL.Image.fromarray(tile), (x0, y0))
        gx0, gy0, _, gy1 = draw.textbbox((0, 0), letter, font=face)
        if style == "gutter":
            at, ink = (x0 - 2 - gx0, y0 - 5 - gy1), "black"
        else:
            at, ink = (x0 + 6 - gx0, y0 + 6 - gy0), style
        draw.text(at, letter, font=face, fill=ink)
        if labels:  # a word on the letter's line, well to its right, as real figures have
            draw.text((x0 + 50, y0 - 16), "Control", font=small, fill="black")
    return np.asarray(fig)


STYLES = ("gutter", "white", "black")
CASES = [
    *[("DejaVuSans-Bold.ttf", s, st) for s in (18, 26) for st in STYLES],
    *[("DejaVuSans.ttf", 18, st) for st in STYLES],
    *[("DejaVuSerif-Bold.ttf", 22, st) for st in STYLES],
    ("STIXGeneralBol.ttf", 22, "gutter"),
]


@needs_tesseract
def test_letters_are_read_in_gutters_and_on_images_in_several_fonts() -> None:
    read = right = 0
    for font, size, style in CASES:
        fig = lettered_figure("ABCDEF", font, size, style)
        panels = find_panels(fig)
        assert len(panels) == 6, (font, size, style)
        letters = read_letters(fig, panels)
        # a letter is never paired with the wrong panel, and most are read
        wrong = [(t, x) for t, x in zip("ABCDEF", letters, strict=True) if x is not None and x != t]
        assert not wrong, (font, size, style, letters)
        assert sum(x is not None for x in letters) >= 4, (font, size, style, letters)
        read += sum(x is not None for x in letters)
        right += 6
        assert [p.letter for p in panels] == letters
    assert read / right >= 0.85


@needs_tesseract
def test_lower_case_letters_and_column_order_are_accepted() -> None:
    fig = lettered_figure("abcdef", "DejaVuSans-Bold.ttf", 24, "gutter")
    assert read_letters(fig, find_panels(fig)) == list("ABCDEF")
    # lettered down the columns (A C E / B D F): increasing column by column
    fig = lettered_figure("ACEBDF", "DejaVuSans-Bold.ttf", 24, "gutter")
    assert read_letters(fig, find_panels(fig)) == list("ACEBDF")


@needs_tesseract
def test_letters_out_of_order_or_unreadable_give_none() -> None:
    fig = lettered_figure("CADBFE", "DejaVuSans-Bold.ttf", 24, "gutter")
    assert read_letters(fig, find_panels(fig)) == [None] * 6
    # solid blobs (cells, icons) at the corners are not letters
    fig = lettered_figure("ABCDEF", "DejaVuSans-Bold.ttf", 24, "gutter", labels=False).copy()
    for k in range(6):
        x0 = MARGIN + (k % 3) * (SIDE + GUTTER)
        y0 = MARGIN + (k // 3) * (SIDE + GUTTER)
        fig[y0 - 30 : y0, x0 - 30 : x0] = 255
        fig[y0 - 20 : y0 - 6, x0 - 16 : x0 - 4] = (60, 20, 90)  # a 14×12 solid square
    assert read_letters(fig, find_panels(fig)) == [None] * 6
    # a word above each panel (no lone letter) gives nothing either
    fig = lettered_figure("ABCDEF", "DejaVuSans.ttf", 18, "gutter", labels=False).copy()
    draw_fig = PIL.Image.fromarray(fig)
    draw = PIL.ImageDraw.Draw(draw_fig)
    face = PIL.ImageFont.truetype(str(FONT_DIR / "DejaVuSans.ttf"), 18)
    for k in range(6):
        x0 = MARGIN + (k % 3) * (SIDE + GUTTER)
        y0 = MARGIN + (k // 3) * (SIDE + GUTTER)
        draw.rectangle((x0 - 40, y0 - 40, x0 + 60, y0 - 1), fill="white")
        draw.text((x0 - 2, y0 - 26), "Dox", font=face, fill="black")
    fig = np.asarray(draw_fig)
    assert read_letters(fig, find_panels(fig)) == [None] * 6


def test_plausible_sequences() -> None:
    rows = [(0, 0, 10, 10), (20, 0, 30, 10), (0, 20, 10, 30), (20, 20, 30, 30)]
    assert plausible(["A", "B", "C", "D"], rows) == ["A", "B", "C", "D"]
    assert plausible(["B", None, "E", "G"], rows) == ["B", None, "E", "G"]  # gaps are fine
    assert plausible(["A", "I", None, "K"], rows) == [None] * 4  # … but not 7 letters
    assert plausible(["A", "C", "B", "D"], rows) == ["A", "C", "B", "D"]  # by columns
    assert plausible(["A", "A", "B", None], rows) == [None] * 4  # repeated
    assert plausible(["B", "A", None, None], rows) == [None] * 4  # decreasing
    assert plausible(["A", None, None, None], rows) == [None] * 4  # one letter: unchecked
    assert plausible(["O", "E", "H", "I"], rows) == [None, "E", "H", "I"]  # one stray of 4
    assert plausible(["O", "E", "H", None], rows) == [None] * 4  # a stray among three


def test_without_tesseract_letters_stay_none(monkeypatch: pytest.MonkeyPatch) -> None:
    pytesseract = pytest.importorskip("pytesseract", reason="pytesseract is not installed")
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    tesseract_available.cache_clear()
    try:
        fig = lettered_figure("ABCD", "DejaVuSans-Bold.ttf", 24, "gutter", cols=2)
        panels = find_panels(fig)
        assert read_letters(fig, panels) == [None] * 4
        assert [p.letter for p in panels] == [None] * 4
    finally:
        tesseract_available.cache_clear()


def test_an_old_tesseract_leaves_letters_unread(tmp_path: Path, monkeypatch, caplog) -> None:
    """pytesseract raises SystemExit for a Tesseract older than 3.05: it ended the whole
    filter command (a bare 'Invalid tesseract version' line) instead of leaving the letters
    unread as without Tesseract."""
    pytesseract = pytest.importorskip("pytesseract", reason="pytesseract is not installed")
    old = tmp_path / "tesseract"
    old.write_text('#!/bin/sh\necho "tesseract 3.01"\n')
    old.chmod(0o755)
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(old))
    tesseract_available.cache_clear()
    try:
        fig = lettered_figure("ABCD", "DejaVuSans-Bold.ttf", 24, "gutter", cols=2)
        with caplog.at_level(logging.INFO, logger="histofetch.panel_letters"):
            assert read_letters(fig, find_panels(fig)) == [None] * 4
        assert "no Tesseract: Invalid tesseract version" in caplog.text, caplog.text
    finally:
        tesseract_available.cache_clear()


CAPTION = (
    "Figure 3. Axillary lymph node with breast cancer metastasis. (A) H&E staining of the "
    "node at low power. (B) CK19 immunohistochemistry of the same node. (C) H&E at high "
    "power. (D) Ki-67 immunostaining; scale bars 100 µm."
)


@needs_tesseract
def test_filter_gives_lettered_panels_their_own_caption_part(tmp_path: Path) -> None:
    from histofetch.extract import run_extract
    from histofetch.filter import run_filter

    fig = lettered_figure("ABCD", "DejaVuSans-Bold.ttf", 26, "gutter", cols=2)
    pdf = build_image_pdf(tmp_path / "fig.pdf", [fig], caption="Figure 3.")
    run_dir = tmp_path / "run"
    run_extract(run_dir, [pdf])
    m = Manifest.load(run_dir)
    (figure,) = m.images.values()
    figure.caption = CAPTION
    m.save()
    m.close()
    run_filter(run_dir, sheet=False)
    m = Manifest.load(run_dir)
    panels = m.panels_of(figure.id)
    assert [p.panel_letter for p in panels] == ["A", "B", "C", "D"]
    stains = [p.extra["stains"] for p in panels]
    assert [s["source"] for s in stains] == [f"caption panel {x}" for x in "ABCD"]
    assert [s["verdict"] for s in stains] == ["for", "against", "for", "against"]
    assert stains[1]["markers"] == ["CK19"] and stains[3]["markers"] == ["Ki-67"]
    # the figure itself reads the whole caption: H&E and IHC both named, no verdict
    assert figure.id in m.images and m.images[figure.id].extra["stains"]["verdict"] is None
    # a panel whose letter the caption does not name reads the whole caption
    from histofetch.decide.stains import evidence

    assert evidence(CAPTION, "E").source == "caption"
    assert evidence(CAPTION, None).verdict is None


def test_per_panel_evidence_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from histocore.manifest import Image
    from histofetch import filter as filter_mod

    row = Image("r/p1_panel02", "r", "x.png", "0" * 64, 10, 10, caption=CAPTION)
    row.panel_letter = "B"
    filter_mod.store_evidence(row)
    assert row.extra["stains"]["source"] == "caption panel B"
    assert row.extra["stains"]["verdict"] == "against"
    monkeypatch.setattr(filter_mod, "PANEL_EVIDENCE", False)
    filter_mod.store_evidence(row)
    assert row.extra["stains"]["source"] == "caption" and row.extra["stains"]["verdict"] is None
