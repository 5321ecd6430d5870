"""Random stain normalisation in LAB, in the style of RandStainNA (Shen et al., MICCAI 2022).

Each augmented patch is Reinhard-normalised to a *random virtual template*: its LAB
channels are shifted and scaled so their per-patch mean and standard deviation become
targets drawn from the distribution those statistics have over the training set
(``target = N(mean over patches, std over patches)`` per channel and statistic, the
"normal" variant with ``std_hyper = 0`` of the reference code). The colours it produces thus
stay within the range the training slides span, unlike unconstrained jitter.

:func:`fit_lab_stats` measures that distribution once per run (on up to 2,048 training
patches); :func:`rgb2lab` / :func:`lab2rgb` are vectorised torch versions of the sRGB (D65)
formulas of ``skimage.color.rgb2lab`` / ``lab2rgb``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# sRGB (linear) -> XYZ, D65 (as skimage.color)
_XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_EPS = 0.008856
#: patches used to fit the template distribution (evenly spaced over the training set)
FIT_PATCHES = 2048


#: XYZ/white from linear RGB, LAB from f(XYZ/white), and their inverses (left-multiplied on
#: planar ``[..., 3, P]`` pixels: a 3x3 matrix times a wide matrix is fast, a [P, 3] @ [3, 3]
#: product is not)
_XYZN_FROM_RGB = _XYZ_FROM_RGB / _WHITE[:, None]
_RGB_FROM_XYZN = torch.linalg.inv(_XYZN_FROM_RGB)
_LAB_FROM_F = torch.tensor([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])
_F_FROM_LAB = torch.linalg.inv(_LAB_FROM_F)
_L_OFFSET = torch.tensor([-16.0, 0.0, 0.0]).view(3, 1)


def _planar_rgb2lab(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3, P]`` float sRGB in [0, 1] → LAB, same layout."""
    lin = torch.where(rgb > 0.04045, rgb.add(0.055).div_(1.055).pow_(2.4), rgb / 12.92)
    xyz = torch.matmul(_XYZN_FROM_RGB.to(rgb), lin)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS).pow_(1 / 3), xyz * 7.787 + 16 / 116)
    return torch.matmul(_LAB_FROM_F.to(rgb), f).add_(_L_OFFSET.to(rgb))


def _planar_lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_planar_rgb2lab`: float sRGB clipped to [0, 1]."""
    f = torch.matmul(_F_FROM_LAB.to(lab), lab - _L_OFFSET.to(lab))
    f3 = f * f * f
    xyz = torch.where(f3 > _EPS, f3, (f - 16 / 116) / 7.787)
    lin = torch.matmul(_RGB_FROM_XYZN.to(lab), xyz).clamp_min_(0)
    rgb = torch.where(lin > 0.0031308, lin.pow(1 / 2.4).mul_(1.055).sub_(0.055), lin * 12.92)
    return rgb.clamp_(0, 1)


def rgb2lab(rgb: torch.Tensor) -> torch.Tensor:
    """float sRGB in [0, 1], ``[..., 3]`` → CIE LAB (L in [0, 100])."""
    flat = rgb.reshape(-1, 3).T
    return _planar_rgb2lab(flat).T.reshape(rgb.shape)


def lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb2lab`: float sRGB clipped to [0, 1]."""
    flat = lab.reshape(-1, 3).T
    return _planar_lab2rgb(flat).T.reshape(lab.shape)


def _moments(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch channel means and standard deviations of planar ``[N, 3, P]``: two ``[N, 3]``."""
    mean = lab.mean(2)
    var = (lab * lab).mean(2) - mean * mean
    return mean, var.clamp_min(0).sqrt()


@dataclass(frozen=True)
class LabStats:
    """Distribution of per-patch LAB statistics: for each channel (L, A, B), the mean and
    spread over patches of the patch mean (``avg_*``) and of the patch std (``std_*``)."""

    avg_mean: tuple[float, float, float]
    avg_std: tuple[float, float, float]
    std_mean: tuple[float, float, float]
    std_std: tuple[float, float, float]
    n_patches: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def fit_lab_stats(images: torch.Tensor) -> LabStats:
    """The template distribution of uint8 ``[N, H, W, 3]`` patches (all of them; pass a
    sample such as :func:`fit_sample` for a large set)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N, H, W, 3] batch, got {tuple(images.shape)}")
    means, stds = [], []
    for i in range(0, len(images), 256):
        part = images[i : i + 256].float().div_(255.0)
        m, s = _moments(_planar_rgb2lab(part.flatten(1, 2).transpose(1, 2)))
        means.append(m)
        stds.append(s)
    m, s = torch.cat(means), torch.cat(stds)

    def t(v: torch.Tensor) -> tuple[float, float, float]:
        return tuple(round(float(x), 4) for x in v)  # type: ignore[return-value]

    return LabStats(
        t(m.mean(0)), t(m.std(0, correction=0)), t(s.mean(0)), t(s.std(0, correction=0)), len(m)
    )


def fit_sample(images, limit: int = FIT_PATCHES) -> torch.Tensor:
    """Up to ``limit`` patches to fit on: evenly spaced over a decoded tensor, the first
    ``limit`` of a streamed set (one sequential read)."""
    n = len(images)
    if n <= limit:
        return images[torch.arange(n)]
    if isinstance(images, torch.Tensor):
        return images[torch.linspace(0, n - 1, limit).long()]
    return images[torch.arange(limit)]


def randstain(y: torch.Tensor, stats: LabStats, generator: torch.Generator | None) -> torch.Tensor:
    """Normalise each float RGB patch of ``y`` ``[n, H, W, 3]`` (in [0, 1]) to a random LAB
    template drawn from ``stats``; returns float RGB in [0, 1]."""
    n = y.shape[0]
    lab = _planar_rgb2lab(y.clamp(0, 1).flatten(1, 2).transpose(1, 2))  # [n, 3, P]
    mean, std = _moments(lab)
    z = torch.randn(2, n, 3, generator=generator).to(y)

    def v(x: tuple[float, float, float]) -> torch.Tensor:
        return torch.tensor(x, dtype=y.dtype, device=y.device)

    tgt_mean = v(stats.avg_mean) + z[0] * v(stats.avg_std)
    # a template std is positive: at least a tenth of the typical one
    tgt_std = (v(stats.std_mean) + z[1] * v(stats.std_std)).clamp_min(0.1 * v(stats.std_mean))
    scale = tgt_std / std.clamp_min(1e-3)
    out = (lab - mean[..., None]).mul_(scale[..., None]).add_(tgt_mean[..., None])
    out[:, 0].clamp_(0, 100)
    return _planar_lab2rgb(out).transpose(1, 2).reshape(y.shape)
