"""The H&E classifier's training material (benchmarks/he_classifier_material.py) and how the
training script sets the rule's thresholds (benchmarks/train_he_classifier.py): shapes,
determinism, and that each made image has the physics it claims."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import shared_path
from pdf_factory import he_like
from PIL import ImageFilter
from skimage.color import hed2rgb, rgb2hed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import he_classifier_material as M
import he_classifier_pigment as P
import he_classifier_special as S

TILE = he_like(M.T, M.T, seed=3)
MAKERS = {
    "ihc": M.to_ihc,
    "pas": M.to_pas,
    "fluor": M.to_fluor,
    "overlay": M.overlay,
    "harder": M.harder_he,
    "annotate": M.annotate,
    "pigment": M.pigment,
    "lowmag": M.low_magnification,
}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_every_generator_gives_a_tile_and_is_deterministic(name: str) -> None:
    make = MAKERS[name]
    src = he_like(200, 160, seed=1) if name == "lowmag" else TILE
    outs = [make(src, _rng(seed)) for seed in (0, 0, 1, 2, 3)]
    for out in outs:
        assert out.shape == (M.T, M.T, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(outs[0], outs[1])
    assert any(not np.array_equal(outs[0], o) for o in outs[2:])  # the seed matters


@pytest.mark.parametrize("kind", sorted(M.HARDER))
def test_each_kind_of_harder_he_changes_the_tile(kind: str) -> None:
    out = M.harder_he(TILE, _rng(5), kind)
    assert out.shape == TILE.shape and not np.array_equal(out, TILE)
    with pytest.raises(ValueError, match="unknown kind"):
        M.harder_he(TILE, _rng(), "sepia")


def test_annotations_are_sparse_marks_on_the_tissue() -> None:
    changed = []
    for seed in range(20):
        out = M.annotate(TILE, _rng(seed)).astype(int)
        # the 2x round trip blurs slightly; a mark is a clear change
        changed.append(float((np.abs(out - TILE).max(-1) > 60).mean()))
    assert max(changed) < 0.45 and np.median(changed) < 0.2  # tissue stays visible
    assert min(changed) > 0.0  # every call draws something


def test_faint_ihc_removes_the_eosin_and_adds_a_little_dab() -> None:
    before = np.clip(rgb2hed(TILE), 0, None)
    for seed in range(5):
        after = np.clip(rgb2hed(M.to_ihc(TILE, _rng(seed), "faint")), 0, None)
        assert after[..., 1].mean() < 0.35 * before[..., 1].mean()  # no eosin counterstain
        dab_area = float((after[..., 2] > 0.03).mean())
        assert 0.0 < dab_area < 0.3  # a faint, small DAB share
    with pytest.raises(ValueError, match="unknown IHC mode"):
        M.to_ihc(TILE, _rng(), "silver")


def test_pigment_adds_dark_granules_and_keeps_the_rest() -> None:
    for seed in range(6):
        out = M.pigment(TILE, _rng(seed)).astype(int)
        darker = (TILE.astype(int).sum(-1) - out.sum(-1)) > 45
        assert 0.005 < darker.mean() < 0.6
        assert (out.sum(-1) > TILE.astype(int).sum(-1) + 30).mean() < 0.01  # nothing paler


@pytest.mark.parametrize("kind", sorted(P.KINDS))
def test_pigment_lies_over_the_stain_as_granules_of_its_colour(kind: str) -> None:
    out = P.pigment(TILE, _rng(3), kind).astype(float)
    loss = TILE.astype(float) - out  # light the granules absorb, per channel
    granule = loss.sum(-1) > 45
    assert 0.002 < granule.mean() < 0.5  # sparse granules, not a wash over the tile
    assert (loss.sum(-1) < -30).mean() < 0.01  # absorbers only: nothing paler
    # the eosin and haematoxylin away from the granules are untouched
    far = ~np.asarray(
        PIL.Image.fromarray(granule.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))
    ).astype(bool)
    assert np.abs(loss[far]).mean() < 6
    blue_over_red = loss[granule, 2].mean() / max(loss[granule, 0].mean(), 1e-6)
    if kind == "haemosiderin":  # golden-brown: blue light absorbed most
        assert blue_over_red > 1.3
    with pytest.raises(ValueError, match="square"):
        P.pigment(TILE[:40], _rng(), kind)


def test_weak_ihc_puts_pale_dab_where_the_eosin_was() -> None:
    # a stained section made in HED space: haematoxylin nuclei in eosin-stained cytoplasm
    yy, xx = np.mgrid[: M.T, : M.T]
    nuclei = ((yy % 16 - 8) ** 2 + (xx % 16 - 8) ** 2) < 20
    hed = np.zeros((M.T, M.T, 3))
    hed[..., 0] = np.where(nuclei, 0.5, 0.02)
    hed[..., 1] = np.where(nuclei, 0.05, 0.25)
    tile = (hed2rgb(hed) * 255).round().astype(np.uint8)
    before = np.clip(rgb2hed(tile), 0, None)
    for seed in range(4):
        after = np.clip(rgb2hed(M.to_ihc(tile, _rng(seed), "weak")), 0, None)
        assert after[..., 1].mean() < 0.35 * before[..., 1].mean()  # eosin gone
        dab = after[..., 2] - before[..., 2]
        assert dab[~nuclei].mean() > 2 * max(dab[nuclei].mean(), 0.01)  # where eosin was
        assert 0.02 < dab[~nuclei].mean() < before[~nuclei, 1].mean()  # and pale


def test_composite_is_a_grid_of_tissue_with_gutters() -> None:
    pieces = [he_like(300, 260, seed=s) for s in (4, 5)]
    for seed in range(6):
        out = M.composite(pieces, _rng(seed)).astype(int)
        assert out.shape == (M.T, M.T, 3)
        spread = lambda a: np.ptp(a, axis=1).max(-1)  # noqa: E731
        uniform = (spread(out) < 8).any() or (spread(out.transpose(1, 0, 2)) < 8).any()
        assert uniform  # a gutter row or column crosses the figure
        assert (out.min(-1) < 200).mean() > 0.6  # and tissue fills the cells
    assert np.array_equal(M.composite(pieces, _rng(1)), M.composite(pieces, _rng(1)))


@pytest.mark.parametrize("kind", sorted(S.SPECIAL))
def test_special_stains_are_deterministic_tiles_without_eosin_pink(kind: str) -> None:
    outs = [S.to_special(TILE, _rng(seed), kind) for seed in (0, 0, 1)]
    assert all(o.shape == TILE.shape and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])
    with pytest.raises(ValueError, match="unknown special stain"):
        S.to_special(TILE, _rng(), "gram")


def test_silver_draws_dark_membranes_and_trichrome_splits_red_from_blue() -> None:
    yy = np.mgrid[: M.T, : M.T][0]
    hed = np.zeros((M.T, M.T, 3))
    hed[..., 1] = np.where((yy // 16) % 2 == 0, 0.25, 0.0)  # bands of eosin-stained tissue
    tile = (hed2rgb(hed) * 255).round().astype(np.uint8)
    silver = S.to_silver(tile, _rng(2)).astype(int).sum(-1)
    edges = (yy % 16 == 0) | (yy % 16 == 15)
    assert silver[edges].mean() < silver[~edges].mean() - 40  # black along the band edges
    tri = S.to_trichrome(tile, _rng(3)).astype(int)
    tissue = (yy // 16) % 2 == 0
    red = tri[..., 0] - tri[..., 2] > 20
    blue_or_green = tri[..., 0] < tri[..., 1:].max(-1) - 20
    assert red[tissue].any() and blue_or_green[tissue].any()  # cytoplasm and collagen
    inner = (yy % 16 > 2) & (yy % 16 < 13)  # away from the edges the smoothing spreads
    assert not (red | blue_or_green)[~tissue & inner].any()  # nothing where no tissue is


def _donor() -> np.ndarray:
    """An H&E tile with a brown (DAB-like) deposit and a black one, as real pigment is."""
    donor = TILE.copy()
    donor[10:25, 10:30] = (150, 95, 30)  # golden brown
    donor[40:50, 35:55] = (20, 15, 20)  # carbon
    return donor


def test_pigment_mask_finds_brown_and_black_deposits_not_the_stain() -> None:
    mask = M.pigment_mask(_donor())
    assert mask[10:25, 10:30].all() and mask[40:50, 35:55].all()
    assert M.pigment_mask(TILE).mean() < 0.01  # plain H&E is not pigment


def test_transfer_pigment_pastes_only_the_deposits() -> None:
    other = he_like(M.T, M.T, seed=8)
    out = M.transfer_pigment(other, _donor(), _rng(1))
    changed = np.abs(out.astype(int) - other.astype(int)).sum(-1) > 30
    assert 0.08 < changed.mean() < 0.2  # the two deposits (~12 % of the tile), rotated
    assert np.array_equal(M.transfer_pigment(other, TILE, _rng(1)), other)  # no pigment


def test_groups_score_an_image_by_the_mean_of_its_tiles() -> None:
    import train_he_classifier as tr

    p_he = np.array([0.9, 0.1, 0.2, 0.4, 0.0])
    he = np.array([True, True, False, False, False])
    p_img, he_img = tr.per_image(p_he, he, ["a", "a", "b", "b", "c"])
    assert np.allclose(p_img, [0.5, 0.3, 0.0]) and he_img.tolist() == [True, False, False]


def test_low_magnification_puts_small_tissue_on_white() -> None:
    src = he_like(300, 300, seed=2)
    for seed in range(6):
        out = M.low_magnification(src, _rng(seed))
        background = (out.min(-1) >= 235).mean()
        assert 0.2 < background < 0.99  # a white slide with tissue on it


def test_charts_and_fields_are_drawn() -> None:
    (chart,) = M.charts(_rng(), 1)
    assert chart.ndim == 3 and min(chart.shape[:2]) >= 100
    field = M.colour_field(_rng())
    assert field.shape == (M.T, M.T, 3) and np.array_equal(field, M.colour_field(_rng()))


def test_thresholds_follow_the_validation_targets() -> None:
    import train_he_classifier as tr

    rng = _rng(7)
    he = np.r_[np.ones(300, bool), np.zeros(700, bool)]
    p_he = np.where(he, rng.beta(6, 1.5, he.size), rng.beta(1, 8, he.size))
    points = tr.operating_points(p_he, he)
    chosen = tr.choose_thresholds(points)
    for name, (metric, target) in tr.TARGETS.items():
        t = chosen[name]
        assert t in tr.GRID
        if metric == "recall":  # the highest threshold that still keeps the recall
            assert points[str(t)]["recall"] >= target
            higher = [g for g in tr.GRID if g > t]
            assert not higher or points[str(higher[0])]["recall"] < target
        else:  # the lowest threshold that reaches the precision
            assert points[str(t)]["precision"] >= target
    assert chosen["p_override"] >= chosen["p_keep"]
    assert chosen["p_caption"] <= chosen["p_keep"]


def test_weights_file_is_byte_stable_and_loads(tmp_path: Path) -> None:
    import train_he_classifier as tr
    from safetensors.numpy import load_file

    from histofetch.decide import classifier as C

    rng = _rng(3)
    widths = [3, 16, 32, 64, 64]
    tensors = {"fc.weight": rng.normal(size=(6, 128)).astype(np.float32)}
    tensors["fc.bias"] = rng.normal(size=6).astype(np.float32)
    for name, a, b in zip(C.CONV_LAYERS, widths, widths[1:], strict=False):
        tensors[f"{name}.weight"] = rng.normal(size=(b, a, 3, 3)).astype(np.float32)
        tensors[f"{name}.bias"] = rng.normal(size=b).astype(np.float32)
    meta = {"seed": "0", "classes": '["he", "ihc", "pas", "fluor", "cyto", "graphic"]'}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    tr.save_safetensors(tensors, one, meta)
    tr.save_safetensors(dict(reversed(tensors.items())), two, dict(reversed(meta.items())))
    assert one.read_bytes() == two.read_bytes()
    back = load_file(str(one))
    assert all(np.array_equal(back[k], v) for k, v in tensors.items())
    loaded, classes = C.load_weights(one)
    assert classes[0] == "he" and set(loaded) == set(tensors)


def test_no_training_patch_is_an_image_of_the_evaluation_pdfs() -> None:
    """The evaluation papers embed a few PCam train patches; the training material must
    leave out exactly what the twin search finds (so a new twin fails here)."""
    import he_classifier_data as D

    shared_path("data", "pcam_real", "dev", "train.h5")
    shared_path("data", "pdfs", "konrad-gerlach_report.pdf")
    found = D.eval_twins(shared_path())
    assert {"pcam_train_0006310", "pcam_train_0013616"} <= found  # konrad's sample patches
    assert found == D.EVAL_TWINS
