"""The brushes of :mod:`histomodels.synthetic`: smooth noise, cell positions, nuclei rendered.

Vectorised numpy over the batch; every random draw comes from the caller's generator, in
the same order, so a seed gives the same patches as before the split.
"""

from __future__ import annotations

import numpy as np


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to unit length along its last axis."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _interp_matrix(out: int, coarse: int) -> np.ndarray:
    """Linear-interpolation matrix [out, coarse] (upsampling coarse noise smoothly)."""
    pos = np.linspace(0, coarse - 1, out)
    lo = np.clip(np.floor(pos).astype(int), 0, coarse - 2)
    frac = pos - lo
    m = np.zeros((out, coarse), dtype=np.float32)
    m[np.arange(out), lo] = 1 - frac
    m[np.arange(out), lo + 1] = frac
    return m


def low_freq(rng: np.random.Generator, n: int, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise [n, h, w] with features about ``cell`` pixels wide, roughly N(0, 0.5)."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    g = rng.standard_normal((n, gh, gw)).astype(np.float32)
    return _interp_matrix(h, gh) @ g @ _interp_matrix(w, gw).T


class Nuclei:
    """Columns of a batch of ellipses to splat (one entry per nucleus or cell body)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[np.ndarray]] = {}

    def add(self, **cols: np.ndarray | float) -> None:
        n = np.size(cols["b"])
        for key in ("b", "y", "x", "rx", "ry", "theta", "core", "rim", "nucleolus", "irreg"):
            val = cols.get(key, 0.0)
            self.cols.setdefault(key, []).append(np.broadcast_to(np.asarray(val), (n,)).copy())

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.cols.items()} if self.cols else {}


def _stamps(
    rng: np.random.Generator, nuc: dict[str, np.ndarray], half: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per nucleus, a ``(2*half+1)^2`` window of ``(density, coverage mask)``.

    The window is anchored at ``floor(y), floor(x)``; the sub-pixel part of the centre is
    rendered inside it.
    """
    m = len(nuc["y"])
    off = np.arange(-half, half + 1, dtype=np.float32)
    fy = (nuc["y"] - np.floor(nuc["y"])).astype(np.float32)
    fx = (nuc["x"] - np.floor(nuc["x"])).astype(np.float32)
    dy = (off[None, :] - fy[:, None])[:, :, None]
    dx = (off[None, :] - fx[:, None])[:, None, :]
    c = np.cos(nuc["theta"]).astype(np.float32)[:, None, None]
    s = np.sin(nuc["theta"]).astype(np.float32)[:, None, None]
    u = dx * c + dy * s
    v = -dx * s + dy * c
    rx = nuc["rx"].astype(np.float32)[:, None, None]
    ry = nuc["ry"].astype(np.float32)[:, None, None]
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    irreg = nuc["irreg"].astype(np.float32)[:, None, None]
    if np.any(irreg > 0):
        # Pleomorphic outline: radius modulated by a random 2-4 lobe harmonic.
        lobes = rng.integers(2, 5, m).astype(np.float32)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, m).astype(np.float32)[:, None, None]
        r = r / (1 + irreg * np.cos(lobes * np.arctan2(v, u) + phase))
    rmean = np.sqrt(rx * ry)
    mask = np.clip((1 - r) * rmean / 0.9 + 0.5, 0, 1)
    core = nuc["core"].astype(np.float32)[:, None, None]
    rim = nuc["rim"].astype(np.float32)[:, None, None]
    density = core + rim * np.clip((r - 0.55) / 0.35, 0, 1)
    nucleolus = nuc["nucleolus"].astype(np.float32)[:, None, None]
    if np.any(nucleolus > 0):
        oy = (rng.uniform(-0.3, 0.3, m) * nuc["ry"]).astype(np.float32)[:, None, None]
        ox = (rng.uniform(-0.3, 0.3, m) * nuc["rx"]).astype(np.float32)[:, None, None]
        density = density + nucleolus * np.exp(-((u - ox) ** 2 + (v - oy) ** 2) / 1.6)
    # Chromatin texture: multiplicative pixel noise.
    texture = 0.62 + 0.76 * rng.random(mask.shape, dtype=np.float32)
    return mask * density * texture, mask


def splat(
    rng: np.random.Generator,
    nuc: dict[str, np.ndarray],
    n: int,
    h: int,
    w: int,
    half: int,
    want_mask: bool = False,
    bank: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render nuclei into ``(density [n,h,w], coverage mask [n,h,w])`` with one bincount.

    With ``bank`` > 0 only that many nuclei are rendered exactly and every nucleus gets a
    random one of those stamps: much faster for the thousands of look-alike lymphocytes
    (all drawn from one distribution). Not used for tumour nuclei, whose exact outline
    decides the label.
    """
    if nuc:  # nuclei whose window cannot reach the image are dropped (never clamped)
        inside = (nuc["y"] > -half) & (nuc["y"] < h - 1 + half)
        inside &= (nuc["x"] > -half) & (nuc["x"] < w - 1 + half)
        nuc = {k: v[inside] for k, v in nuc.items()}
    m = len(nuc["b"]) if nuc else 0
    if m == 0:
        z = np.zeros((n, h, w), dtype=np.float32)
        return z, z.copy()
    if bank and m > bank:
        chosen = rng.choice(m, bank, replace=False)
        proto = {k: v[chosen] for k, v in nuc.items()}
        dens, mask = _stamps(rng, proto, half)
        pick = rng.integers(0, bank, m)
        dens, mask = dens[pick], (mask[pick] if want_mask else None)
    else:
        dens, mask = _stamps(rng, nuc, half)
    pad = 2 * half + 2
    ph, pw = h + 2 * pad, w + 2 * pad
    iy = np.floor(nuc["y"]).astype(np.int64)
    ix = np.floor(nuc["x"]).astype(np.int64)
    base = (nuc["b"].astype(np.int64) * ph + iy + pad - half) * pw + ix + pad - half
    win = np.arange(2 * half + 1)
    flat = (base[:, None] + (win[:, None] * pw + win[None, :]).ravel()[None, :]).ravel()
    size = n * ph * pw
    d = np.bincount(flat, weights=dens.ravel(), minlength=size)
    d = d.reshape(n, ph, pw)[:, pad : pad + h, pad : pad + w].astype(np.float32)
    if not want_mask:
        return d, None
    assert mask is not None  # want_mask
    k = np.bincount(flat, weights=mask.ravel(), minlength=size)
    return d, k.reshape(n, ph, pw)[:, pad : pad + h, pad : pad + w].astype(np.float32)


def jittered_grid(
    rng: np.random.Generator, n: int, h: int, w: int, spacing: float, jitter: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate cell positions (b, y, x): a jittered grid, so cells pack without piling up."""
    gy = np.arange(spacing / 2 - spacing, h + spacing, spacing)
    gx = np.arange(spacing / 2 - spacing, w + spacing, spacing)
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    m = yy.size
    b = np.repeat(np.arange(n), m)
    y = np.tile(yy.ravel(), n) + rng.uniform(-jitter, jitter, n * m)
    x = np.tile(xx.ravel(), n) + rng.uniform(-jitter, jitter, n * m)
    # Shift the grid per image so grid lines do not line up across patches.
    b_off = rng.uniform(0, spacing, (n, 2))
    return b, y + b_off[b, 0], x + b_off[b, 1]


def sample(field: np.ndarray, b: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``field`` [n, h, w] at the nearest pixel of each (b, y, x), clamped to the image."""
    h, w = field.shape[1:]
    iy = np.clip(np.round(y).astype(int), 0, h - 1)
    ix = np.clip(np.round(x).astype(int), 0, w - 1)
    return field[b, iy, ix]
