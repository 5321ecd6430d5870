"""Upscaling undone before scoring (decide/scale.py): blocky and smooth, never native tissue."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from pdf_factory import he_like

from histocore.manifest import Image
from histofetch.decide import rules, scale
from histofetch.decide.scale import native_factor, to_native
from histofetch.filter import classifier_of, colour_of, store_classifier, store_scores

R = PIL.Image.Resampling


def _up(rgb: np.ndarray, factor: float, how: R) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(PIL.Image.fromarray(rgb).resize((round(w * factor), round(h * factor)), how))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_native_tissue_is_left_as_it_is(seed: int) -> None:
    for side in (96, 256):
        rgb = he_like(side, side, seed=seed)
        assert native_factor(rgb) == 1.0
        out, factor = to_native(rgb)
        assert out is rgb and factor == 1.0


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_blocky_upscaling_is_undone_exactly(factor: int) -> None:
    rgb = he_like(seed=factor)
    out, found = to_native(_up(rgb, factor, R.NEAREST))
    assert found == pytest.approx(factor, rel=0.05)
    assert out.shape == rgb.shape and np.array_equal(out, rgb)  # area average of copies


def test_blocky_upscaling_by_an_odd_factor_is_found() -> None:
    """matplotlib's nearest-neighbour resampling to a size the patch does not divide."""
    rgb = he_like(seed=5)
    assert native_factor(_up(rgb, 2.7, R.NEAREST)) == pytest.approx(2.7, rel=0.1)


def test_smooth_upscaling_is_found() -> None:
    rgb = he_like(seed=6)
    assert native_factor(_up(rgb, 3, R.BILINEAR)) >= 2.0


def test_never_smaller_than_the_minimum_side() -> None:
    rgb = _up(he_like(50, 50, seed=1), 2, R.NEAREST)  # 100 px of 50 px content
    out, factor = to_native(rgb)
    assert min(out.shape[:2]) == scale.MIN_SIDE and factor == pytest.approx(100 / 64, rel=0.01)


def test_images_without_stain_are_left_alone() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)
    grey = np.repeat(_up(noise, 4, R.NEAREST)[..., None], 3, axis=2)  # greyscale, blocky
    chart = np.full((200, 200, 3), 255, np.uint8)
    for rgb in (grey, chart):
        assert native_factor(rgb) == 1.0


def test_mode_off_keeps_every_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "MODE", "off")
    assert native_factor(_up(he_like(), 3, R.NEAREST)) == 1.0


def test_an_upscaled_patch_is_scored_as_the_patch() -> None:
    """The filter's scores of a 3× blocky upscale equal those of the patch itself, so the
    detail test, which an upscale fails, passes as it does for the patch."""
    rgb = he_like(seed=3)
    up = _up(rgb, 3, R.NEAREST)
    (native, f1), (upscaled, f3) = colour_of(rgb), colour_of(up)
    assert (f1, f3) == (1.0, 3.0)
    assert upscaled.detail == pytest.approx(native.detail)
    assert classifier_of(up).p_he == pytest.approx(classifier_of(rgb).p_he, abs=1e-6)
    img = Image(id="x", record_id="r", path="x.png", sha256="", width=288, height=288)
    store_scores(img, upscaled, f3)
    store_classifier(img, up)
    assert img.extra["colour"]["native_factor"] == 3.0
    assert rules.decide(img, rules.Thresholds()).kept
    with_shipped = scale.MODE
    try:
        scale.MODE = "off"  # scored as before round 5: the grain is a third
        smooth, _ = colour_of(up)
    finally:
        scale.MODE = with_shipped
    assert smooth.detail < native.detail / 2
