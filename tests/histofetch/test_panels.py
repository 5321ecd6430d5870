"""Compound figures into panels: gutters of any uniform colour, labels across gutters,
reading order, tight crops, and letters matched to the caption."""

from __future__ import annotations

import numpy as np
import pytest
from pdf_factory import he_like

from histofetch.panels import MIN_FIGURE_SIDE, find_panels


def tissue(h: int, w: int, seed: int) -> np.ndarray:
    """H&E-like texture with real tissue's grain (no row of it is near-uniform)."""
    noise = np.random.default_rng(seed).normal(0, 30, (h, w, 3))
    return np.clip(he_like(h, w, seed=seed) + noise, 0, 255).astype(np.uint8)


def grid_figure(background: int = 255, gutter: int = 12, margin: int = 20) -> np.ndarray:
    """2×2 panels of 150×120 px (three H&E-like, one noisy heatmap) on ``background``."""
    fig = np.full((2 * 150 + gutter + 2 * margin, 2 * 120 + gutter + 2 * margin, 3), background)
    fig = fig.astype(np.uint8)
    tiles = [tissue(150, 120, 1), tissue(150, 120, 2)]
    heatmap = np.random.default_rng(0).integers(0, 255, (150, 120, 3)).astype(np.uint8)
    tiles += [heatmap, tissue(150, 120, 3)]
    for k, tile in enumerate(tiles):
        y = margin + (k // 2) * (150 + gutter)
        x = margin + (k % 2) * (120 + gutter)
        fig[y : y + 150, x : x + 120] = tile
    return fig


@pytest.mark.parametrize("background", [255, 0, 128])
def test_grid_is_cut_into_its_panels_in_reading_order(background: int) -> None:
    panels = find_panels(grid_figure(background))
    boxes = [p.bbox for p in panels]
    assert boxes == [
        (20, 20, 140, 170),
        (152, 20, 272, 170),
        (20, 182, 140, 332),
        (152, 182, 272, 332),
    ]
    assert [p.order for p in panels] == [0, 1, 2, 3]


def test_labels_crossing_a_gutter_do_not_merge_panels() -> None:
    fig = grid_figure()
    fig[172:180, 60:230] = 0  # a text line ("Control   Treated") across the vertical gutter
    assert len(find_panels(fig)) == 4


def test_single_image_and_small_figures_are_not_split() -> None:
    assert find_panels(tissue(300, 300, 0)) == []
    small = grid_figure()[:, : MIN_FIGURE_SIDE - 1]
    assert find_panels(small) == []


def test_specks_and_panel_letters_are_dropped() -> None:
    fig = grid_figure()
    fig[2:14, 2:12] = 0  # a 10×12 "A" in the corner: too small to be a panel
    assert len(find_panels(fig)) == 4


def test_large_figures_are_cut_on_a_shrunk_copy_with_boxes_in_file_pixels() -> None:
    big = np.asarray(
        __import__("PIL.Image").Image.fromarray(grid_figure()).resize((292 * 8, 352 * 8), 0)
    )
    panels = find_panels(big)
    assert len(panels) == 4
    x0, y0, x1, y1 = panels[0].bbox
    assert abs(x0 - 160) <= 8 and abs(y0 - 160) <= 8 and abs(x1 - 1120) <= 8 and abs(y1 - 1360) <= 8
