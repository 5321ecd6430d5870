"""Upscaling undone before scoring (decide/scale.py): blocky and smooth, never native tissue."""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from pdf_factory import he_like

from histocore.manifest import Image, Manifest, Record
from histofetch.decide import rules, scale
from histofetch.decide.classifier import classify_rgb
from histofetch.decide.colour import score_rgb
from histofetch.decide.scale import native_factor, to_native
from histofetch.filter import run_filter, score_pixels, store_pixels

R = PIL.Image.Resampling


def _up(rgb: np.ndarray, factor: float, how: R) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(PIL.Image.fromarray(rgb).resize((round(w * factor), round(h * factor)), how))


def test_stain_is_what_the_colour_rule_counts_as_neither_grey_nor_dark() -> None:
    from histofetch.decide import colour

    assert (scale.CHROMA_S, scale.CHROMA_V) == (colour.ACHROMATIC_S, colour.DARK_V) == (0.08, 0.25)
    # value = max/255, saturation = (max - min)/max: each pixel just inside or outside a limit
    pixels = np.array(
        [[[200, 186, 200], [200, 182, 200], [62, 0, 62], [66, 0, 66], [255, 255, 255]]], np.uint8
    )  # s 0.07, s 0.09, v 0.243, v 0.259, white
    assert scale._chromatic(pixels).tolist() == [[False, True, False, True, False]]


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
    native, upscaled = score_pixels(rgb), score_pixels(up)
    assert (native.factor, upscaled.factor) == (1.0, 3.0)
    assert upscaled.colour.detail == pytest.approx(native.colour.detail)
    assert upscaled.classifier.p_he == pytest.approx(native.classifier.p_he, abs=1e-6)
    img = Image(id="x", record_id="r", path="x.png", sha256="", width=288, height=288)
    store_pixels(img, up)
    assert img.extra["colour"]["native_factor"] == 3.0
    assert rules.decide(img, rules.Thresholds()).kept
    with_shipped = scale.MODE
    try:
        scale.MODE = "off"  # scored as before round 5: the grain is a third
        smooth = score_pixels(up).colour
    finally:
        scale.MODE = with_shipped
    assert smooth.detail < native.colour.detail / 2


def test_a_figure_is_read_once_and_scored_at_one_native_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 300 px patch drawn 3× (900 px, more than the colour rule's 768 px): the file is
    decoded once to score it, and colour and classifier both judge the 300 px patch (the
    factor found once, on the pixels read; a 768 px copy of the upscale finds 2)."""
    patch = he_like(300, 300, seed=1)
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    PIL.Image.fromarray(_up(patch, 3, R.NEAREST)).save(run / "images" / "up.png")
    m = Manifest.load(run, create=True)
    m.add_record(Record(id="r", stage="extracted"))
    m.add_image(Image(id="r/up", record_id="r", path="images/up.png", sha256="", width=900,
                      height=900, source="package"))  # fmt: skip
    m.save()
    opened: list[object] = []
    real_open = PIL.Image.open

    def counting_open(fp, *args, **kwargs):  # PIL's own open, counted while scoring
        if any(frame.name == "score_row" for frame in traceback.extract_stack()):
            opened.append(fp)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    run_filter(run, sheet=False, panels=False)
    monkeypatch.undo()
    assert [Path(str(fp)).name for fp in opened] == ["up.png"]
    row = Manifest.load(run).images["r/up"]
    assert row.extra["colour"]["native_factor"] == 3.0
    assert row.extra["colour"]["detail"] == round(score_rgb(patch).detail, 4)
    assert row.p_he == round(classify_rgb(patch).p_he, 4)
