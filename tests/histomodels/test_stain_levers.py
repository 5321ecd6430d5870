"""Issue 11's stain levers: RandStainNA-style random LAB templates (``randstain``) and
JPEG re-encoding / Gaussian blur (``jpeg_blur``), each off by default."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from skimage.color import lab2rgb as sk_lab2rgb
from skimage.color import rgb2lab as sk_rgb2lab

from histomodels.checkpoint import read_checkpoint
from histomodels.config import ConfigError, TrainConfig, validate
from histomodels.data.randstain import LabStats, fit_lab_stats, lab2rgb, randstain, rgb2lab
from histomodels.data.transforms import Augment, gaussian_blur, jpeg_roundtrip
from histomodels.synthetic import make_patches
from histomodels.training import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.from_numpy(make_patches(16, seed=3)[0])


def test_lab_conversions_match_scikit_image(batch) -> None:
    rgb = batch[:2].float() / 255
    lab = rgb2lab(rgb)
    assert torch.allclose(lab, torch.from_numpy(sk_rgb2lab(rgb.numpy())).float(), atol=1e-3)
    assert torch.allclose(lab2rgb(lab), rgb, atol=1e-4)
    shifted = lab.clone()
    shifted[..., 1:] *= 1.5  # also outside the gamut of the input
    want = torch.from_numpy(sk_lab2rgb(shifted.numpy())).float()
    assert torch.allclose(lab2rgb(shifted), want, atol=1e-4)


def test_fit_lab_stats_describes_the_patches(batch) -> None:
    stats = fit_lab_stats(batch)
    lab = rgb2lab(batch.float() / 255).flatten(1, 2)
    assert stats.n_patches == len(batch)
    assert stats.avg_mean[0] == pytest.approx(float(lab[..., 0].mean()), abs=1e-2)
    assert all(s > 0 for s in stats.avg_std + stats.std_mean + stats.std_std)
    assert json.loads(json.dumps(stats.to_dict()))["avg_mean"] == list(stats.avg_mean)
    with pytest.raises(ValueError, match="non-empty"):
        fit_lab_stats(batch[:0])


def test_randstain_moves_each_patch_to_its_template(batch) -> None:
    # a distribution with no spread: every patch gets the same template (mean and std)
    target = LabStats((60.0, 20.0, -10.0), (0.0, 0.0, 0.0), (12.0, 6.0, 5.0), (0.0, 0.0, 0.0))
    y = batch.float() / 255
    out = randstain(y, target, torch.Generator().manual_seed(0))
    assert out.shape == y.shape and out.dtype == y.dtype and out.min() >= 0 and out.max() <= 1
    lab = rgb2lab(out).flatten(1, 2)
    # close to the template (colours pushed out of the sRGB gamut are clipped)
    assert torch.allclose(lab.mean(1), torch.tensor([60.0, 20.0, -10.0]), atol=2.5)
    assert torch.allclose(lab.std(1), torch.tensor([12.0, 6.0, 5.0]), rtol=0.25)
    before = rgb2lab(y).flatten(1, 2).mean(1)
    assert (before - torch.tensor([60.0, 20.0, -10.0])).abs().max() > 5  # it did move


def test_augment_randstain_and_jpeg_blur_keep_dtype_and_are_repeatable(batch) -> None:
    stats = fit_lab_stats(batch)
    levers: list[dict[str, Any]] = [
        {"randstain": 1.0, "stain_stats": stats},
        {"randstain": 1.0},
        {"jpeg_blur": 1.0},
    ]
    for kw in levers:
        a = Augment(0.0, seed=1, **kw)(batch)
        assert a.shape == batch.shape and a.dtype == torch.uint8
        assert torch.equal(a, Augment(0.0, seed=1, **kw)(batch)), kw
        assert not torch.equal(a, Augment(0.0, seed=2, **kw)(batch)), kw
        changed = (a != batch).flatten(1).any(1).float().mean()
        assert changed > (0.99 if "randstain" in kw else 0.6), kw  # (a sigma 0.1 blur may not)
    # randstain changes colour statistics, not structure: LAB means spread differently
    a = Augment(0.0, seed=1, randstain=1.0, stain_stats=stats)(batch)
    m_in, m_out = (rgb2lab(t.float() / 255).flatten(1, 2).mean(1) for t in (batch, a))
    assert (m_in - m_out).abs().mean() > 1.0
    assert Augment(0.0, seed=1, jpeg_blur=0.0).identity
    with pytest.raises(ValueError, match="randstain"):
        Augment(randstain=-0.1)


def test_gaussian_blur_per_sample_sigma(batch) -> None:
    y = batch[:3].float() / 255
    sig = torch.tensor([0.1, 0.5, 1.0])
    out = gaussian_blur(y, sig)
    for i in range(3):  # each sample is blurred with its own sigma
        assert torch.allclose(out[i : i + 1], gaussian_blur(y[i : i + 1], sig[i : i + 1]))
    assert torch.allclose(out[0], y[0], atol=1e-4)  # sigma 0.1 is (nearly) the identity

    def detail(t):
        return (t[:, 1:] - t[:, :-1]).abs().mean()

    assert detail(out[2:]) < 0.8 * detail(y[2:])
    assert torch.allclose(out.mean((1, 2)), y.mean((1, 2)), atol=2e-3)  # no colour shift


def test_jpeg_roundtrip_loses_more_at_low_quality(batch) -> None:
    img = batch[0].float() / 255
    err = {q: (jpeg_roundtrip(img, q) - img).abs().mean().item() for q in (30, 90)}
    assert 0 < err[90] < err[30] < 0.1


def test_training_with_stain_levers_writes_its_template_distribution(tmp_path) -> None:
    (xt, yt), (xv, yv) = make_patches(48, seed=0), make_patches(32, seed=1)
    cfg = TrainConfig(
        model_config={"width": 8, "depth": 2}, epochs=1, batch_size=16, progress=False,
        threads=1, randstain=0.5, jpeg_blur=0.5, bf16=False,
    )  # fmt: skip
    res = train(cfg, tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    assert np.isfinite(res.history[0]["train_loss"])
    saved = json.loads((tmp_path / "r" / "randstain.json").read_text())
    want = fit_lab_stats(torch.from_numpy(xt)).to_dict()
    assert saved == json.loads(json.dumps(want))
    conf = read_checkpoint(tmp_path / "r" / "best.pt")["train_config"]
    assert conf["randstain"] == 0.5 and conf["jpeg_blur"] == 0.5
    assert TrainConfig().randstain == 0 and TrainConfig().jpeg_blur == 0
    with pytest.raises(ConfigError, match="jpeg_blur must be a probability"):
        validate(TrainConfig(jpeg_blur=2.0))


@pytest.mark.parametrize("threads", [1, 2])
def test_jpeg_roundtrips_of_a_batch_are_each_images_own_roundtrip(batch, threads) -> None:
    """The batched re-encode (conversions once, codec calls spread over threads) gives each
    image exactly what Pillow gives for that image alone at its quality."""
    import io

    from PIL import Image

    from histomodels.data.transforms import jpeg_roundtrips

    y = batch.float().div(255.0).mul(1.1).sub(0.05)  # off the uint8 grid, a little outside [0, 1]
    quality = [30 + 4 * i for i in range(len(y))]
    expected = []
    for img, q in zip(y, quality, strict=True):
        buf = io.BytesIO()
        u8 = img.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        Image.fromarray(u8).save(buf, format="JPEG", quality=q)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        expected.append(torch.from_numpy(back.copy()).float().div(255.0))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = jpeg_roundtrips(y, quality)
    finally:
        torch.set_num_threads(before)
    assert got.dtype == y.dtype and torch.equal(got, torch.stack(expected))
    assert torch.equal(jpeg_roundtrip(y[3], quality[3]), expected[3])
