"""Histology augmentation: dihedral geometry, HED colour maths, repeatability, identity at 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb as sk_hed2rgb
from skimage.color import rgb2hed as sk_rgb2hed

from histomodels.data.transforms import Augment, dihedral_views, hed2rgb, rgb2hed
from histomodels.synthetic import make_patches

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.from_numpy(make_patches(16, seed=2)[0])


def test_strength_zero_is_identity(batch) -> None:
    out = Augment(0.0)(batch)
    assert out.dtype == torch.uint8 and torch.equal(out, batch)
    assert out.data_ptr() != batch.data_ptr()  # a copy: callers may modify it


def test_shape_dtype_and_repeatability(batch) -> None:
    a = Augment(1.0, seed=3)(batch)
    assert a.shape == batch.shape and a.dtype == torch.uint8
    assert torch.equal(a, Augment(1.0, seed=3)(batch))
    assert not torch.equal(a, Augment(1.0, seed=4)(batch))
    assert not torch.equal(a, batch)
    # light jitter: average colour stays close to the input's
    diff = (a.float().mean((1, 2)) - batch.float().mean((1, 2))).abs()
    assert diff.max() < 25, diff.max()


def test_geometry_is_one_of_the_eight_dihedral_views(batch) -> None:
    """At a tiny strength colour barely moves, so each output matches one dihedral view."""
    out = Augment(0.01, hed_jitter=False, seed=0)(batch).float()
    views = torch.stack([v.float() for v in dihedral_views(batch, "NHWC")])  # [8, N, H, W, 3]
    err = (views - out[None]).abs().mean((2, 3, 4))  # [8, N]
    assert (err.min(0).values < 1.5).all(), err.min(0).values
    assert len(set(err.argmin(0).tolist())) > 1  # different samples get different views


def test_dihedral_views_layouts(batch) -> None:
    nhwc = dihedral_views(batch)
    assert torch.equal(nhwc[0], batch) and len(nhwc) == 8
    flat = {v[0].numpy().tobytes() for v in nhwc}
    assert len(flat) == 8  # all distinct for a generic image
    for v in nhwc:  # permutations of the same pixels
        assert torch.equal(v.flatten().sort().values, batch.flatten().sort().values)
    nchw = dihedral_views(batch.permute(0, 3, 1, 2))
    for a, b in zip(nhwc, nchw, strict=True):
        assert torch.equal(a.permute(0, 3, 1, 2), b)
    with pytest.raises(ValueError, match="square"):
        dihedral_views(torch.zeros(2, 3, 8, 6))


def test_hed_matches_scikit_image() -> None:
    rgb = make_patches(2, seed=1)[0]
    f = torch.from_numpy(rgb).double() / 255
    ours = rgb2hed(f).numpy()
    assert np.allclose(ours, sk_rgb2hed(rgb), atol=1e-6)
    assert np.allclose(hed2rgb(torch.from_numpy(ours)).numpy(), sk_hed2rgb(ours), atol=1e-6)


def test_hed_jitter_moves_stain_not_geometry(batch) -> None:
    plain = Augment(1.0, hed_jitter=False, seed=9)(batch)
    jittered = Augment(1.0, hed_jitter=True, seed=9)(batch)
    assert not torch.equal(plain, jittered)
    assert (plain.float() - jittered.float()).abs().mean() < 20


def test_non_square_and_bad_input() -> None:
    x = torch.randint(0, 256, (4, 32, 48, 3), dtype=torch.uint8)
    assert Augment(1.0, seed=0)(x).shape == x.shape
    with pytest.raises(ValueError, match="uint8"):
        Augment()(x.float())
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        Augment()(x[0])
    with pytest.raises(ValueError):
        Augment(strength=-1)
