"""SYNTHETIC PCam-like H&E patches: a procedural stand-in for real data, for demos and tests.

Nothing here is real tissue. The generator paints haematoxylin and eosin *concentration maps*
and turns them into RGB with the Beer-Lambert law (``rgb = 255 * exp(-OD)``), the same optical
model that stain deconvolution (``skimage.color.rgb2hed``, Macenko) assumes, so stain tools
behave on it as on real slides.

- Normal lymph node: pink eosin stroma with fibres, fat/empty spaces, and many small, dense,
  dark-purple round lymphocyte nuclei (~7 px across, like PCam's ~0.97 um/px).
- Tumour (metastatic carcinoma): clusters of cells with larger (10-16 px), pleomorphic,
  irregular, paler vesicular nuclei with a dark rim and a visible nucleolus, and more
  cytoplasm.
- Confounders in both classes: pale oval histiocyte nuclei and thin dark fibroblast nuclei.

Label 1 means that at least one tumour-nucleus pixel lies in the central 32x32 region, which
is PCam's rule; negatives may hold tumour cells *outside* the centre so that a model has to
look at the centre. Everything is numpy, vectorised over the batch and deterministic for a seed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from histomodels.synthetic_paint import Nuclei, jittered_grid, low_freq, sample, splat, unit

PATCH = 96
CENTRE = (32, 64)  # the central 32x32 region, [32, 64) on both axes

# Optical-density stain vectors (Macenko's reference H&E matrix, unit length).
_H_REF = np.array([0.5626, 0.7201, 0.4062])
_E_REF = np.array([0.2159, 0.8012, 0.5581])


class _Tissue(NamedTuple):
    """The stain concentration maps before nuclei: fat, tumour area, eosin and haematoxylin."""

    fat: np.ndarray
    tumour: np.ndarray
    eosin: np.ndarray
    haem: np.ndarray


def _layout(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, clusters: np.ndarray, kind: np.ndarray
) -> _Tissue:
    """Fat spaces, the tumour clusters' area, eosin stroma with wavy collagen fibres (less
    pink in lymphoid areas) and the background haematoxylin."""
    f32 = np.float32
    n, (h, w) = len(kind), yy.shape
    fat_noise = low_freq(rng, n, h, w, 30)
    fat_thr = np.where(kind == 1, 0.05, np.where(kind == 2, 0.45, 0.9)).astype(f32)
    fat_thr = fat_thr + rng.normal(0, 0.15, n).astype(f32)
    fat_d = fat_noise - fat_thr[:, None, None]
    fat = np.clip(fat_d * 9 + 0.5, 0, 1)
    fat_edge = np.clip(1 - np.abs(fat_d) * 25, 0, 1)

    tumour = np.zeros((n, h, w), f32)
    edge_noise = 1 + 0.35 * low_freq(rng, n, h, w, 25)
    for k in range(clusters.shape[1]):
        cy, cx, rad = (clusters[:, k, i].astype(f32)[:, None, None] for i in range(3))
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        inside = np.clip((rad * edge_noise - dist) / 5 + 0.5, 0, 1)
        tumour = np.maximum(tumour, np.where(rad > 0, inside, 0))
    fat = fat * (1 - tumour)

    theta = rng.uniform(0, np.pi, n).astype(f32)[:, None, None]
    lam = rng.uniform(4, 9, n).astype(f32)[:, None, None]
    warp = 6 * low_freq(rng, n, h, w, 20)
    phase = (xx * np.cos(theta) + yy * np.sin(theta) + warp) * (2 * np.pi / lam)
    fibres = 0.5 + 0.5 * np.sin(phase)
    lymph_bg = np.where(kind == 1, 0.3, 1.0).astype(f32)[:, None, None]
    e_base = rng.uniform(0.35, 0.75, n).astype(f32)[:, None, None]
    eosin = e_base * (0.75 + 0.35 * fibres * (1 - 0.6 * lymph_bg)) + 0.1 * low_freq(
        rng, n, h, w, 12
    )
    eosin = eosin * (1 - fat) + 0.55 * fat_edge + 0.35 * tumour
    haem = (0.08 + 0.12 * lymph_bg) * (1 - fat) + 0.12 * tumour
    return _Tissue(fat, tumour, eosin, haem)


def _lymphocytes(rng: np.random.Generator, t: _Tissue, kind: np.ndarray) -> Nuclei:
    """Small dense round nuclei on a jittered grid, thinned by local density."""
    f32 = np.float32
    n, h, w = t.fat.shape
    nuc = Nuclei()
    density = np.where(kind == 0, 0.8, np.where(kind == 1, 0.12, 0.45)).astype(f32)
    lam_field = density[:, None, None] * (1 + 0.6 * low_freq(rng, n, h, w, 28))
    lam_field = np.clip(lam_field, 0, 0.95) * (1 - t.fat) * (1 - 0.85 * t.tumour)
    b, y, x = jittered_grid(rng, n, h, w, 7.2, 1.8)
    keep = rng.random(len(b)) < sample(lam_field, b, y, x)
    b, y, x = b[keep], y[keep], x[keep]
    m = len(b)
    r = rng.uniform(2.4, 3.4, m)
    nuc.add(
        b=b,
        y=y,
        x=x,
        rx=r * rng.uniform(0.9, 1.1, m),
        ry=r * rng.uniform(0.9, 1.1, m),
        theta=rng.uniform(0, np.pi, m),
        core=rng.uniform(1.9, 2.6, m),
        rim=0.2,
    )
    return nuc


def _confounders(rng: np.random.Generator, t: _Tissue, kind: np.ndarray) -> Nuclei:
    """Pale oval histiocyte nuclei and thin dark fibroblast nuclei, in either class."""
    n, h, w = t.fat.shape
    other = Nuclei()
    for count, rx_rng, ry_rng, core_rng in (
        (rng.poisson(2.0, n), (3.5, 6.0), (2.2, 3.5), (0.7, 1.1)),
        (rng.poisson(np.where(kind == 0, 1.0, 4.0)), (4.5, 8.0), (1.1, 1.8), (1.6, 2.3)),
    ):
        count = (count * (h * w) / PATCH**2).astype(int)
        b = np.repeat(np.arange(n), count)
        m = len(b)
        y, x = rng.uniform(0, h, m), rng.uniform(0, w, m)
        ok = sample(t.fat, b, y, x) < 0.5
        b, y, x, m = b[ok], y[ok], x[ok], int(ok.sum())
        other.add(
            b=b,
            y=y,
            x=x,
            rx=rng.uniform(*rx_rng, m),
            ry=rng.uniform(*ry_rng, m),
            theta=rng.uniform(0, np.pi, m),
            core=rng.uniform(*core_rng, m),
            rim=0.3,
        )
    return other


def _tumour_cells(
    rng: np.random.Generator, t: _Tissue, keep_out_centre: np.ndarray, forced: np.ndarray | None
) -> Nuclei:
    """Large, pleomorphic, vesicular nuclei with a nucleolus inside the tumour area, none
    that could touch the centre where ``keep_out_centre``, plus the ``forced`` ones."""
    n, h, w = t.fat.shape
    b, y, x = jittered_grid(rng, n, h, w, 12.5, 3.0)
    keep = rng.random(len(b)) < 0.95 * sample(t.tumour, b, y, x)
    b, y, x = b[keep], y[keep], x[keep]
    m = len(b)
    rx = rng.uniform(4.8, 7.8, m)
    ry = rx * rng.uniform(0.65, 1.0, m)
    irreg = rng.uniform(0.04, 0.16, m)
    reach = rx * (1 + irreg) + 1.5
    centre_lo, centre_hi = CENTRE
    gap = np.maximum(
        np.maximum(centre_lo - y, y - (centre_hi - 1)),
        np.maximum(centre_lo - x, x - (centre_hi - 1)),
    )
    ok = ~(keep_out_centre[b] & (gap <= reach))
    b, y, x, rx, ry, irreg = b[ok], y[ok], x[ok], rx[ok], ry[ok], irreg[ok]
    if forced is not None:
        fb = np.flatnonzero(~np.isnan(forced[:, 0]))
        fm = len(fb)
        b = np.concatenate([b, fb])
        y = np.concatenate([y, forced[fb, 0]])
        x = np.concatenate([x, forced[fb, 1]])
        frx = rng.uniform(5.0, 7.0, fm)
        rx = np.concatenate([rx, frx])
        ry = np.concatenate([ry, frx * rng.uniform(0.7, 1.0, fm)])
        irreg = np.concatenate([irreg, rng.uniform(0.04, 0.12, fm)])
    m = len(b)
    tum = Nuclei()
    tum.add(
        b=b,
        y=y,
        x=x,
        rx=rx,
        ry=ry,
        theta=rng.uniform(0, np.pi, m),
        core=rng.uniform(0.55, 0.95, m),
        rim=rng.uniform(0.5, 0.9, m),
        nucleolus=np.where(rng.random(m) < 0.85, rng.uniform(1.4, 2.4, m), 0.0),
        irreg=irreg,
    )
    return tum


def _to_rgb(rng: np.random.Generator, haem: np.ndarray, eosin: np.ndarray) -> np.ndarray:
    """Beer-Lambert with per-image jittered stain vectors and strengths, then a light optical
    blur on some images and sensor noise on all: uint8 [n, h, w, 3]."""
    f32 = np.float32
    n, h, w = haem.shape
    h_vec = unit(_H_REF + rng.normal(0, 0.06, (n, 3))).astype(f32)
    e_vec = unit(_E_REF + rng.normal(0, 0.06, (n, 3))).astype(f32)
    h_scale = rng.uniform(0.75, 1.2, n).astype(f32)[:, None, None, None]
    e_scale = rng.uniform(0.7, 1.25, n).astype(f32)[:, None, None, None]
    od = haem[..., None] * (h_scale * h_vec[:, None, None, :])
    od += eosin[..., None] * (e_scale * e_vec[:, None, None, :])
    od += rng.uniform(0.02, 0.08, (n, 1, 1, 3)).astype(f32)
    np.negative(od, out=od)
    rgb = np.exp(od, out=od)
    rgb *= 255
    blur = np.flatnonzero(rng.random(n) < 0.35)
    if len(blur):
        sub = rgb[blur]
        soft = sub.copy()
        soft[:, 1:-1] = (sub[:, :-2] + sub[:, 1:-1] + sub[:, 2:]) / 3
        soft[:, :, 1:-1] = (soft[:, :, :-2] + soft[:, :, 1:-1] + soft[:, :, 2:]) / 3
        rgb[blur] = 0.5 * sub + 0.5 * soft
    # Sensor noise (+0.5 rounds): each image draws one of 16 noise fields (cheaper than
    # fresh noise per pixel, and indistinguishable to the eye or a model).
    noise = rng.random((min(n, 16), h, w, 3), dtype=f32) * 8 - 3.5
    rgb += noise[rng.integers(0, len(noise), n)]
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)


def _render(
    rng: np.random.Generator,
    h: int,
    w: int,
    clusters: np.ndarray,
    kind: np.ndarray,
    keep_out_centre: np.ndarray,
    forced: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``n`` images of size h x w.

    clusters: float [n, K, 3] tumour clusters (cy, cx, radius; radius 0 = none).
    kind: int [n] background type (0 lymphoid, 1 stroma/fat, 2 mixed).
    keep_out_centre: bool [n], drop tumour cells that could touch the central 32x32.
    forced: float [n, 2] (y, x) of one extra tumour nucleus per image, NaN for none.
    Returns ``(uint8 [n,h,w,3], tumour-nucleus coverage [n,h,w])``.
    """
    n = len(kind)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = _layout(rng, yy, xx, clusters, kind)
    lymph = _lymphocytes(rng, t, kind)
    other = _confounders(rng, t, kind)
    tum = _tumour_cells(rng, t, keep_out_centre, forced)
    nd, _ = splat(rng, lymph.arrays(), n, h, w, 5, bank=256)
    od_, _ = splat(rng, other.arrays(), n, h, w, 9)
    td, tmask = splat(rng, tum.arrays(), n, h, w, 10, want_mask=True)
    assert tmask is not None  # want_mask=True
    # Tumour nuclei replace (not add to) the tissue under them, so they stay pale.
    under = np.clip(tmask, 0, 1)
    eosin = t.eosin * (1 - 0.6 * under)
    haem = t.haem * (1 - 0.5 * under) + np.minimum(nd + od_, 3.2) + np.minimum(td, 3.0)
    return _to_rgb(rng, haem, eosin), tmask


def _patch_plan(
    rng: np.random.Generator, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch: tumour clusters, background kind, and whether the centre must stay clean."""
    n = len(labels)
    clusters = np.zeros((n, 1, 3))
    pos = labels == 1
    kind = rng.choice(3, n, p=[0.5, 0.2, 0.3])
    # Positives: a cluster overlapping the centre, from a few cells to the whole patch.
    npos = int(pos.sum())
    clusters[pos, 0, 0] = rng.uniform(30, 66, npos)
    clusters[pos, 0, 1] = rng.uniform(30, 66, npos)
    clusters[pos, 0, 2] = np.where(
        rng.random(npos) < 0.25, rng.uniform(7, 14, npos), rng.uniform(14, 70, npos)
    )
    # 35 % of negatives hold a tumour cluster near the border, kept out of the centre.
    neg_t = (~pos) & (rng.random(n) < 0.35)
    m = int(neg_t.sum())
    ang = rng.uniform(0, 2 * np.pi, m)
    dist = rng.uniform(45, 70, m)
    clusters[neg_t, 0, 0] = 48 + dist * np.sin(ang)
    clusters[neg_t, 0, 1] = 48 + dist * np.cos(ang)
    clusters[neg_t, 0, 2] = rng.uniform(15, 40, m)
    return clusters, kind, ~pos


def make_patches(
    n: int, seed: int = 0, positive_fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC patches: ``(uint8 [n, 96, 96, 3], int64 [n])``, label 1 = tumour in the centre.

    Exactly ``round(n * positive_fraction)`` positives, in shuffled order; the same ``seed``
    always gives the same patches.
    """
    if n < 0 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(
            f"need n >= 0 and 0 <= positive_fraction <= 1, got {n}, {positive_fraction}"
        )
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[: round(n * positive_fraction)] = 1
    rng.shuffle(labels)
    images = np.empty((n, PATCH, PATCH, 3), dtype=np.uint8)
    lo, hi = CENTRE
    for start in range(0, n, 256):
        sl = slice(start, min(n, start + 256))
        clusters, kind, clean = _patch_plan(rng, labels[sl])
        pos = labels[sl] == 1
        # Guarantee PCam's rule for positives: one tumour nucleus well inside the centre.
        forced = np.full((len(kind), 2), np.nan)
        forced[pos] = rng.uniform(lo + 6, hi - 6, (int(pos.sum()), 2))
        imgs, tmask = _render(rng, PATCH, PATCH, clusters, kind, clean, forced)
        got = (tmask[:, lo:hi, lo:hi] > 0.5).any(axis=(1, 2))
        if np.any(got != pos):  # never expected: fail loudly rather than mislabel
            raise AssertionError("synthetic label rule violated")
        images[sl] = imgs
    return images, labels


def make_figure(rows: int, cols: int, seed: int = 0, tumour: bool = True) -> np.ndarray:
    """A SYNTHETIC "micrograph" uint8 [rows*96, cols*96, 3] at PCam scale (~0.97 um/px).

    Painted as one seamless field (not stitched patches): lymph-node tissue and, when
    ``tumour``, a few metastatic clusters, for building demo figures and PDFs.
    """
    rng = np.random.default_rng(seed)
    h, w = rows * PATCH, cols * PATCH
    k = max(1, (rows * cols) // 4) if tumour else 0
    clusters = np.zeros((1, max(k, 1), 3))
    if k:
        clusters[0, :, 0] = rng.uniform(0.15, 0.85, k) * h
        clusters[0, :, 1] = rng.uniform(0.15, 0.85, k) * w
        clusters[0, :, 2] = rng.uniform(35, 80, k)
    img, _ = _render(rng, h, w, clusters, np.array([0]), np.array([False]))
    return img[0]


def write_h5(path: str | Path, n: int, seed: int = 0, positive_fraction: float = 0.5) -> Path:
    """Write SYNTHETIC patches in the compact encoded layout (lossless PNG bytes per patch).

    Datasets ``encoded`` (vlen uint8), ``y`` (uint8), ``patch_id`` (str), ``stored_codec``;
    readable by :func:`histomodels.data.open_dataset`. Written to a temp file, then renamed.
    """
    import h5py
    from PIL import Image

    from histocore.io import make_parents

    path = Path(path)
    images, labels = make_patches(n, seed, positive_fraction)
    tmp = path.with_name(path.name + ".part")
    make_parents(path)  # a file in the way: a: is a file, not a folder
    with h5py.File(tmp, "w") as f:
        enc = f.create_dataset("encoded", (n,), dtype=h5py.vlen_dtype(np.uint8))
        for i, img in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", compress_level=1)
            enc[i] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        f.create_dataset("y", data=labels.astype(np.uint8))
        f.create_dataset(
            "patch_id", data=[f"synthetic_{seed}_{i}" for i in range(n)], dtype=h5py.string_dtype()
        )
        f.create_dataset("stored_codec", data=["png"] * n, dtype=h5py.string_dtype())
        f.attrs["synthetic"] = (
            "procedural PCam-like patches from histomodels.synthetic; not real tissue"
        )
        f.attrs["seed"] = seed
    tmp.replace(path)
    return path
