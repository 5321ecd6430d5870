"""Macenko normalisation: real tiles from 5 Camelyon17 centres move onto the target's stains."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from histomodels.data.stain import MacenkoNormalizer, StainError, stain_vectors
from histomodels.synthetic import make_figure


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(0), -1, 1)))


def test_real_centres_are_pulled_onto_the_target() -> None:
    target = np.asarray(
        Image.open(shared_path("data", "external_he_images", "tiatoolbox_target_image.png"))
        .convert("RGB")
        .resize((400, 400))
    )
    norm = MacenkoNormalizer().fit(target)
    assert norm.stains.shape == (3, 2)
    before, after = [], []
    for path in sorted(shared_path("data", "camelyon17_centre_tiles").glob("*.jpeg")):
        tile = np.asarray(Image.open(path).convert("RGB").resize((384, 384)))
        out = norm.transform(tile)
        assert out.shape == tile.shape and out.dtype == np.uint8
        before.append(_angles(stain_vectors(tile)[0], norm.stains))
        after.append(_angles(stain_vectors(out)[0], norm.stains))
    before, after = np.array(before), np.array(after)
    assert after.mean() < before.mean() / 2, (before, after)
    assert after[:, 0].max() < 3  # haematoxylin direction within 3 degrees everywhere


def test_synthetic_round_trip_and_batches(tmp_path) -> None:
    fig = make_figure(2, 2, seed=4)
    norm = MacenkoNormalizer().fit(fig)
    # normalising an image onto its own stains changes it little
    assert np.abs(norm.transform(fig).astype(int) - fig).mean() < 6
    batch = np.stack([fig[:96, :96], fig[96:, 96:]])
    assert norm.transform(batch).shape == batch.shape
    norm.save(tmp_path / "stain.json")
    again = MacenkoNormalizer.load(tmp_path / "stain.json")
    assert np.allclose(again.stains, norm.stains) and np.allclose(again.max_c, norm.max_c)


def test_blank_patches_pass_through_and_are_counted() -> None:
    blank = np.full((96, 96, 3), 245, np.uint8)
    with pytest.raises(StainError):
        stain_vectors(blank)
    norm = MacenkoNormalizer()
    assert np.array_equal(norm.transform(blank), blank) and norm.n_skipped == 1
    with pytest.raises(StainError):
        MacenkoNormalizer().fit(blank)
    with pytest.raises(ValueError, match="uint8"):
        norm.transform(blank.astype(np.float32))
