"""Histology augmentation as batched torch ops on uint8 NHWC batches.

Tissue has no canonical orientation, so every one of the 8 dihedral flips/rotations is a
valid view; the main nuisance between labs is stain colour, handled by jittering the
haematoxylin/eosin/DAB concentrations after colour deconvolution (Tellez et al. 2018;
the same Ruifrok-Johnston matrices as ``skimage.color.rgb2hed``). Light brightness,
contrast and saturation changes and an occasional slight blur cover scanner differences.
All ops are vectorised over the batch and run on the batch's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    ``cutout`` is the probability that a patch gets 1-3 rectangles filled with its mean
    colour, never inside the central third (the label region; :func:`cutout_mask`).
    """

    def __init__(
        self,
        strength: float = 1.0,
        hed_jitter: bool = True,
        seed: int | None = None,
        *,
        cutout: float = 0.0,
    ):
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if not 0 <= cutout <= 1:
            raise ValueError(f"cutout must be a probability in [0, 1], got {cutout}")
        self.strength = float(strength)
        self.hed_jitter = hed_jitter
        self.cutout = float(cutout)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        levers = f", cutout={self.cutout}" if self.cutout else ""
        return f"Augment(strength={self.strength}, hed_jitter={self.hed_jitter}{levers})"

    @property
    def identity(self) -> bool:
        return self.strength == 0 and not self.cutout

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def _uniform(self, n: int, spread: float, centre: float = 1.0) -> torch.Tensor:
        return centre + (self._rand(n) * 2 - 1) * spread

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check(x)
        if self.identity or x.shape[0] == 0:
            return x.clone()
        y = self._base(x) if self.strength > 0 else x.float().div_(255.0)
        if self.cutout:
            mask = cutout_mask(x.shape[0], x.shape[1], x.shape[2], self.cutout, self.generator)
            mask = mask.to(x.device)[..., None]
            y = torch.where(mask, y.mean((1, 2), keepdim=True), y)
        return y.clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        """Dihedral view, HED jitter, colour and blur: float RGB in [0, 1] (may overshoot)."""
        s, n, dev = self.strength, x.shape[0], x.device
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
        y = out.float().div_(255.0)
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
