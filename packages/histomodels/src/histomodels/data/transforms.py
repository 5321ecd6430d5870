"""Histology augmentation as batched torch ops on uint8 NHWC batches.

Tissue has no canonical orientation, so every one of the 8 dihedral flips/rotations is a
valid view; the main nuisance between labs is stain colour, handled by jittering the
haematoxylin/eosin/DAB concentrations after colour deconvolution (Tellez et al. 2018;
the same Ruifrok-Johnston matrices as ``skimage.color.rgb2hed``). Light brightness,
contrast and saturation changes and an occasional slight blur cover scanner differences.
All ops are vectorised over the batch and run on the batch's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from histomodels.data.randstain import LabStats

# Ruifrok & Johnston stain matrix as in scikit-image (rows: H, E, DAB optical densities).
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = float(torch.log(torch.tensor(1e-6)))


def rgb2hed(rgb: torch.Tensor) -> torch.Tensor:
    """float RGB in [0, 1], [..., 3] → HED stain concentrations (``skimage.color.rgb2hed``)."""
    rgb = rgb.clamp_min(1e-6)
    stains = (torch.log(rgb) / _LOG_ADJUST) @ HED_FROM_RGB.to(rgb)
    return stains.clamp_min(0)


def hed2rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb2hed` (``skimage.color.hed2rgb``), float RGB in [0, 1]."""
    log_rgb = -(hed * -_LOG_ADJUST) @ RGB_FROM_HED.to(hed)
    return torch.exp(log_rgb).clamp(0, 1)


def _check(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        dtype = getattr(x, "dtype", None)
        raise ValueError(f"expected a uint8 torch tensor [N, H, W, 3], got {dtype} {shape}")


def _dihedral(x: torch.Tensor, k: int, dims: tuple[int, int]) -> torch.Tensor:
    """View ``k`` (0-7) of the dihedral group: rotate by k*90 deg, flipped when k >= 4."""
    if k >= 4:
        x = x.flip(dims[1])
    return torch.rot90(x, k % 4, dims) if k % 4 else x


def dihedral_views(x: torch.Tensor, layout: str | None = None) -> list[torch.Tensor]:
    """The 8 flips/rotations of an NCHW or NHWC batch (for test-time augmentation).

    ``layout`` is ``"NCHW"`` or ``"NHWC"``; by default NCHW when dim 1 has 3 channels.
    View 0 is ``x`` itself.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a 4-d batch, got shape {tuple(x.shape)}")
    if layout is None:
        layout = "NCHW" if x.shape[1] == 3 else "NHWC"
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
    dims = (2, 3) if layout == "NCHW" else (1, 2)
    if x.shape[dims[0]] != x.shape[dims[1]]:
        raise ValueError(f"dihedral views need square images, got shape {tuple(x.shape)}")
    return [_dihedral(x, k, dims) for k in range(8)]


class Augment:
    """Random histology augmentation of a uint8 ``[N, H, W, 3]`` batch → same shape and dtype.

    ``strength`` scales every random change (0 = identity, 1 = defaults, up to ~2 sensible);
    dihedral views are drawn whenever ``strength > 0``. ``seed`` makes the stream
    repeatable (a private generator); ``None`` uses torch's global RNG.

    The optional levers below are off at 0 and independent of ``strength``:
    ``randstain`` is the probability that a patch is normalised to a random LAB template
    drawn from ``stain_stats`` (:mod:`histomodels.data.randstain`; fitted on the batch itself
    when not given), before the colour jitter; ``jpeg_blur`` the probability of a JPEG
    re-encode (quality 30-90) or, as often, a Gaussian blur (sigma 0.1-1.0), after it;
    ``cutout`` the probability that a patch gets 1-3 rectangles filled with its mean
    colour, never inside the central third (the label region; :func:`cutout_mask`).
    """

    def __init__(
        self,
        strength: float = 1.0,
        hed_jitter: bool = True,
        seed: int | None = None,
        *,
        cutout: float = 0.0,
        randstain: float = 0.0,
        jpeg_blur: float = 0.0,
        stain_stats: LabStats | None = None,
    ):
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        for name, p in (("cutout", cutout), ("randstain", randstain), ("jpeg_blur", jpeg_blur)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.strength = float(strength)
        self.hed_jitter = hed_jitter
        self.cutout, self.randstain, self.jpeg_blur = (
            float(cutout),
            float(randstain),
            float(jpeg_blur),
        )
        self.stain_stats = stain_stats
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        levers = "".join(
            f", {k}={getattr(self, k)}"
            for k in ("randstain", "jpeg_blur", "cutout")
            if getattr(self, k)
        )
        return f"Augment(strength={self.strength}, hed_jitter={self.hed_jitter}{levers})"

    @property
    def identity(self) -> bool:
        return self.strength == 0 and not (self.cutout or self.randstain or self.jpeg_blur)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def _uniform(self, n: int, spread: float, centre: float = 1.0) -> torch.Tensor:
        return centre + (self._rand(n) * 2 - 1) * spread

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check(x)
        if self.identity or x.shape[0] == 0:
            return x.clone()
        y = self._geometry(x) if self.strength > 0 else x.float().div_(255.0)
        if self.randstain:
            y = self._randstain(y)
        if self.strength > 0:
            y = self._colour(y)
        if self.jpeg_blur:
            y = self._jpeg_blur(y)
        if self.cutout:
            mask = cutout_mask(x.shape[0], x.shape[1], x.shape[2], self.cutout, self.generator)
            mask = mask.to(x.device)[..., None]
            y = torch.where(mask, y.mean((1, 2), keepdim=True), y)
        return y.clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        """One of the 8 dihedral views per sample, as float RGB in [0, 1]."""
        n, dev = x.shape[0], x.device
        # 1. one of the 8 dihedral views per sample (flips only for non-square images)
        square = x.shape[1] == x.shape[2]
        views = torch.randint(0, 8 if square else 4, (n,), generator=self.generator)
        if not square:  # the shape-preserving views: identity, 180 deg, and the two flips
            views = torch.tensor([0, 2, 4, 6])[views]
        out = torch.empty_like(x)
        for k in range(8):
            idx = (views == k).nonzero().flatten().to(dev)
            if len(idx):
                out[idx] = _dihedral(x[idx], k, (1, 2))
        return out.float().div_(255.0)

    def _colour(self, y: torch.Tensor) -> torch.Tensor:
        """HED jitter, colour and slight blur of float RGB (the result may overshoot [0, 1])."""
        s, n, dev = self.strength, y.shape[0], y.device
        # 2. HED stain jitter: scale and shift each stain's concentration per sample
        if self.hed_jitter:
            # hed' = hed * alpha + beta is linear in log-RGB, so the whole round trip
            # rgb -> hed -> jitter -> rgb is one per-sample 3x3 matrix plus an offset.
            alpha = self._uniform(n * 3, 0.05 * s).view(n, 3).to(dev)
            beta = ((self._rand(n * 3) * 2 - 1) * 0.005 * s).view(n, 1, 3).to(dev)
            hed_from, rgb_from = HED_FROM_RGB.to(y), RGB_FROM_HED.to(y)
            mix = hed_from[None] * alpha[:, None, :] @ rgb_from  # [n, 3, 3]
            offset = (beta * _LOG_ADJUST) @ rgb_from  # [n, 1, 3]
            log_rgb = torch.log(y.clamp_min_(1e-6)).view(n, -1, 3)
            y = torch.exp(torch.baddbmm(offset, log_rgb, mix)).view_as(y)
        # 3. saturation, contrast, brightness: all linear in RGB, so one 3x3 matrix + offset
        sat = self._uniform(n, 0.1 * s).to(dev).view(n, 1, 1)
        contrast = self._uniform(n, 0.1 * s).to(dev).view(n, 1, 1)
        bright = self._uniform(n, 0.08 * s).to(dev).view(n, 1, 1)
        luma = torch.tensor([0.299, 0.587, 0.114], device=dev)
        eye = torch.eye(3, device=dev)
        sat_m = eye * sat + (1 - sat) * luma.view(1, 3, 1).expand(n, 3, 3)  # y @ sat_m
        flat = y.view(n, -1, 3)
        mean = (flat.mean(1, keepdim=True) @ sat_m).mean(-1, keepdim=True)  # [n, 1, 1]
        mix = sat_m * (contrast * bright)
        offset = (mean * (1 - contrast) * bright).expand(n, 1, 3)
        y = torch.baddbmm(offset, flat, mix).view_as(y)
        # 4. occasional slight blur (3x3 Gaussian, sigma ~0.6)
        blur = (self._rand(n) < min(0.5, 0.1 * s)).nonzero().flatten().to(dev)
        if len(blur):
            k1 = torch.tensor([0.2, 0.6, 0.2], device=dev)
            kernel = (k1[:, None] * k1[None, :]).expand(3, 1, 3, 3)
            sub = y[blur].permute(0, 3, 1, 2)
            sub = F.conv2d(F.pad(sub, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
            y[blur] = sub.permute(0, 2, 3, 1)
        return y

    def _randstain(self, y: torch.Tensor) -> torch.Tensor:
        from histomodels.data.randstain import fit_lab_stats, randstain

        pick = (self._rand(y.shape[0]) < self.randstain).nonzero().flatten().to(y.device)
        if len(pick):
            stats = self.stain_stats
            if stats is None:
                stats = fit_lab_stats(y.clamp(0, 1).mul(255).round().to(torch.uint8))
            y[pick] = randstain(y[pick], stats, self.generator)
        return y

    def _jpeg_blur(self, y: torch.Tensor) -> torch.Tensor:
        n = y.shape[0]
        pick, jpeg = self._rand(n) < self.jpeg_blur, self._rand(n) < 0.5
        quality = 30 + (self._rand(n) * 61).long().clamp_max(60)
        sigma = 0.1 + self._rand(n) * 0.9
        blur = (pick & ~jpeg).nonzero().flatten()
        if len(blur):
            y[blur.to(y.device)] = gaussian_blur(y[blur.to(y.device)], sigma[blur])
        enc = (pick & jpeg).nonzero().flatten()
        if len(enc):
            d = enc.to(y.device)
            y[d] = jpeg_roundtrips(y[d], quality[enc].tolist())
        return y


def gaussian_blur(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each float ``[H, W, 3]`` image of ``y`` ``[n, H, W, 3]`` with its own ``sigma``
    (a separable 7-tap Gaussian, reflected edges)."""
    n, h, w, c = y.shape
    t = torch.arange(-3, 4, dtype=y.dtype, device=y.device)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(y)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, 7]
    x = y.permute(0, 3, 1, 2).reshape(1, n * c, h, w)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="reflect"), k.view(n * c, 1, 1, 7), groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="reflect"), k.view(n * c, 1, 7, 1), groups=n * c)
    return x.view(n, c, h, w).permute(0, 2, 3, 1)


def jpeg_roundtrip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode a float RGB ``[H, W, 3]`` image as JPEG at ``quality`` (Pillow, 4:2:0 chroma
    subsampling as scanners' JPEG/JPEG 2000 tiles have) and decode it again."""
    return jpeg_roundtrips(img[None], [quality])[0]


def jpeg_roundtrips(y: torch.Tensor, quality: Sequence[int]) -> torch.Tensor:
    """:func:`jpeg_roundtrip` of each float ``[H, W, 3]`` image of ``y`` at its ``quality``:
    the float/uint8 conversions are done once for the batch (elementwise, so the values are
    those of one image at a time), and the codec calls, which release the GIL, are spread
    over up to ``torch.get_num_threads()`` threads (joined before returning)."""
    import numpy as np

    u8 = y.clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    q = [int(v) for v in quality]
    workers = min(len(u8) // 4, torch.get_num_threads(), 8)
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="histomodels-jpeg") as pool:
            back = list(pool.map(_jpeg_u8, u8, q))
    else:
        back = [_jpeg_u8(img, v) for img, v in zip(u8, q, strict=True)]
    return torch.from_numpy(np.stack(back)).to(y).div_(255.0)


def _jpeg_u8(u8: Any, quality: int) -> Any:
    """uint8 ``[H, W, 3]`` array → JPEG at ``quality`` → decoded uint8 array (Pillow)."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def centre_box(size: int) -> tuple[int, int]:
    """``(start, stop)`` of the central third of a side: 32-64 of 96, PCam's label region."""
    side = size // 3
    start = (size - side) // 2
    return start, start + side


def cutout_mask(
    n: int, h: int, w: int, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """bool ``[n, h, w]``: with probability ``p`` per patch, 1-3 random rectangles (sides
    h/8 to h/3) minus the central third box (:func:`centre_box`), which stays False."""
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    k = 3
    hit = rand(n) < p
    count = 1 + (rand(n) * k).long().clamp_max(k - 1)  # 1..3 rectangles
    active = hit[:, None] & (torch.arange(k)[None] < count[:, None])  # [n, k]
    lo_h, hi_h, lo_w, hi_w = h // 8, max(h // 3, h // 8 + 1), w // 8, max(w // 3, w // 8 + 1)
    rh = lo_h + (rand(n, k) * (hi_h - lo_h + 1)).long()
    rw = lo_w + (rand(n, k) * (hi_w - lo_w + 1)).long()
    y0 = (rand(n, k) * (h - rh + 1)).long()
    x0 = (rand(n, k) * (w - rw + 1)).long()
    rows, cols = torch.arange(h).view(1, 1, h), torch.arange(w).view(1, 1, w)
    in_r = (rows >= y0[..., None]) & (rows < (y0 + rh)[..., None]) & active[..., None]
    in_c = (cols >= x0[..., None]) & (cols < (x0 + rw)[..., None])
    mask = (in_r[..., :, None] & in_c[..., None, :]).any(1)  # [n, h, w]
    (r0, r1), (c0, c1) = centre_box(h), centre_box(w)
    mask[:, r0:r1, c0:c1] = False
    return mask
