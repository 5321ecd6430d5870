"""Pigment in H&E by physics, for histofetch's H&E classifier material.

Lymph-node H&E often holds pigment: haemosiderin (golden-brown, coarse refractile granules
packed in macrophages), formalin (acid haematin) pigment (fine dark-brown granules strewn
outside cells, often over red cells), melanin (brown-black, in melanophages) and carbon
(anthracosis, black). Under the microscope each is a light absorber *on top of* the
haematoxylin and eosin, so the tile keeps its pink eosin and blue nuclei and gains sparse
granules; this is what sets it apart from IHC, where a haematoxylin counterstain carries
DAB *in place of* eosin over whole cells (he_classifier_material.to_ihc).

:func:`pigment` renders granules as Gaussian absorbers at twice the tile's resolution
(sub-pixel grains), clustered in macrophage-sized clumps or strewn, with each pigment's
absorption spectrum (optical density per RGB channel), and composes them with the tile by
Beer–Lambert (transmissions multiply). Every call takes a seeded generator.
"""

from __future__ import annotations

import numpy as np
import PIL.Image

#: Optical density per unit amount in R, G, B (normalised; ranges drawn around them): the
#: colour of each pigment in transmitted light.
SPECTRA = {
    "haemosiderin": (0.18, 0.38, 0.91),  # golden-brown: absorbs blue most
    "haemosiderin_brown": (0.36, 0.55, 0.75),  # older deposits, browner
    "formalin": (0.52, 0.58, 0.63),  # dark brown-black acid haematin
    "melanin": (0.45, 0.58, 0.68),  # brown-black
    "carbon": (0.57, 0.58, 0.58),  # neutral black
}
#: How each pigment lies: (granule radius range in tile px, granules per clump range,
#: clump radius range in px, optical density range at a granule's centre).
HABIT = {
    "haemosiderin": ((0.5, 1.8), (8, 40), (3.0, 9.0), (0.6, 2.2)),
    "haemosiderin_brown": ((0.5, 1.6), (8, 40), (3.0, 9.0), (0.8, 2.4)),
    "formalin": ((0.3, 0.8), (20, 120), (12.0, 40.0), (0.8, 2.5)),
    "melanin": ((0.4, 1.2), (10, 50), (3.0, 8.0), (1.0, 3.0)),
    "carbon": ((0.4, 1.5), (10, 60), (3.0, 10.0), (1.2, 3.5)),
}
KINDS = {
    "haemosiderin": 0.4,
    "haemosiderin_brown": 0.15,
    "formalin": 0.15,
    "melanin": 0.1,
    "carbon": 0.2,
}


def granules(size: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Optical-density amount map (size×size, ≥ 0) of one pigment's granules: 1–6 clumps
    (or one wide strewn field for formalin pigment) of Gaussian grains, drawn at 2× and
    averaged down so grains under a pixel stay faint specks."""
    (r_lo, r_hi), (n_lo, n_hi), (c_lo, c_hi), (d_lo, d_hi) = HABIT[kind]
    s = 2 * size
    yy, xx = np.mgrid[:s, :s].astype(np.float32)
    amount = np.zeros((s, s), np.float32)
    clumps = 1 if kind == "formalin" else int(rng.integers(1, 7))
    for _ in range(clumps):
        cy, cx = rng.uniform(0, s, 2)
        spread = 2 * rng.uniform(c_lo, c_hi)
        n = int(rng.integers(n_lo, n_hi + 1))
        ys = cy + rng.normal(0, spread / 2, n)
        xs = cx + rng.normal(0, spread / 2, n)
        radii = 2 * rng.uniform(r_lo, r_hi, n)
        depth = rng.uniform(d_lo, d_hi, n)
        for y, x, r, d in zip(ys, xs, radii, depth, strict=True):
            y0, y1 = max(int(y - 3 * r), 0), min(int(y + 3 * r) + 1, s)
            x0, x1 = max(int(x - 3 * r), 0), min(int(x + 3 * r) + 1, s)
            if y0 >= y1 or x0 >= x1:
                continue
            d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
            amount[y0:y1, x0:x1] += d * np.exp(-d2 / (2 * (r / 1.5) ** 2))
    amount = d_hi * np.tanh(amount / d_hi)  # piled-up grains saturate, as a clump does
    return amount.reshape(size, 2, size, 2).mean(axis=(1, 3))


def pigment(tile: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """``tile`` (real H&E, uint8) with pigment granules laid over it by Beer–Lambert: the
    eosin and haematoxylin stay, the granules absorb on top. ``kind`` from :data:`KINDS`
    (drawn when None)."""
    if kind is None:
        kind = str(rng.choice(list(KINDS), p=list(KINDS.values())))
    size = tile.shape[0]
    if tile.shape[:2] != (size, size):
        raise ValueError(f"pigment needs a square tile, got {tile.shape[:2]}")
    spectrum = np.array(SPECTRA[kind], np.float32) * rng.uniform(0.9, 1.1, 3)
    spectrum /= np.linalg.norm(spectrum)
    amount = granules(size, rng, kind)
    transmission = np.exp(-amount[..., None] * spectrum)
    out = tile.astype(np.float32) / 255.0 * transmission
    if rng.random() < 0.3:  # a slight blur: the grains are out of the focal plane
        im = PIL.Image.fromarray((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
        from PIL import ImageFilter

        return np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7))))
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
