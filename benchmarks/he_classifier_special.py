"""Special stains made from real H&E by physics, for histofetch's H&E classifier material.

The ``pas`` class holds PAS and the other special stains a pathology paper shows next to
H&E. Each is made from a real H&E tile by HED deconvolution (skimage ``rgb2hed``): the
haematoxylin and eosin optical densities say where nuclei, cytoplasm and the edges of
eosin-stained structures (basement membranes, fibres) are, and the tile is recomposed by
Beer–Lambert with the dyes of the special stain instead:

* :func:`to_silver` — Jones methenamine silver: black, thin basement membranes along the
  eosin edges over a pale counterstain (light green, or weak H&E);
* :func:`to_trichrome` — Masson trichrome: iron-haematoxylin nuclei (black-brown),
  cytoplasm and muscle red (Biebrich scarlet), collagen blue or green (aniline blue or
  light green) — the eosin-stained area split into the two by a smooth field;
* :func:`to_sirius` — picrosirius red: collagen red (Sirius red) on a picric-acid yellow
  cytoplasm, nuclei faint or brown-black;
* :func:`to_special` draws one of these or PAS (he_classifier_material.to_pas).
"""

from __future__ import annotations

import he_classifier_material as M
import numpy as np
from skimage.color import rgb2hed
from skimage.filters import gaussian

#: Optical density per unit amount (R, G, B) of the dyes used.
SILVER = (0.55, 0.58, 0.6)  # reduced silver: neutral black-brown
LIGHT_GREEN = (0.85, 0.15, 0.5)  # absorbs red (and some blue): green
IRON_HAEMATOXYLIN = (0.55, 0.6, 0.58)  # black-brown nuclei
SCARLET = (0.05, 0.85, 0.55)  # absorbs green and blue: red
ANILINE_BLUE = (0.8, 0.55, 0.1)  # absorbs red and green: blue
SIRIUS_RED = (0.1, 0.9, 0.45)  # absorbs green, some blue: red
PICRIC = (0.05, 0.15, 0.98)  # absorbs blue: yellow
M_H = (0.65, 0.70, 0.29)  # haematoxylin (skimage's vector), for a weak H&E counterstain
M_E = (0.07, 0.99, 0.11)  # eosin
#: How often :func:`to_special` draws each stain.
SPECIAL = {"pas": 0.5, "silver": 0.2, "trichrome": 0.15, "sirius": 0.15}


def _compose(layers: list[tuple[np.ndarray, tuple[float, float, float]]]) -> np.ndarray:
    """uint8 RGB from (amount map, dye OD vector) layers by Beer–Lambert."""
    od = sum(amount[..., None] * np.asarray(dye) for amount, dye in layers)
    return M.u8(np.exp(-np.asarray(od)))


def _stains(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Haematoxylin and eosin amounts of ``tile`` (smoothed a little against the JPEG noise
    deconvolution amplifies in dark pixels, then scaled so that their 95th percentile is
    1) and the eosin edge strength (0…1)."""
    hed = gaussian(rgb2hed(tile), sigma=0.7, channel_axis=-1)
    h, e = (np.clip(hed[..., c], 0, None) for c in (0, 1))
    # floors: about the lowest quarter of PCam's 95th percentiles (0.05, 0.03), so that a
    # near-empty tile is not inflated into a stained one
    h = np.clip(h / max(float(np.percentile(h, 95)), 0.05), 0, 1.5)
    e = np.clip(e / max(float(np.percentile(e, 95)), 0.03), 0, 1.5)
    gy, gx = np.gradient(e)
    edge = np.hypot(gx, gy)
    return h, e, np.clip(edge / max(float(np.percentile(edge, 95)), 0.05), 0, 1.5)


def to_silver(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Jones silver: black membranes along the eosin edges, a pale counterstain."""
    h, e, edge = _stains(tile)
    membrane = np.clip(edge - rng.uniform(0.3, 0.7), 0, None) * rng.uniform(2.0, 4.0)
    layers = [(membrane, SILVER), (h * rng.uniform(0.5, 1.2), M_H)]
    if rng.random() < 0.5:  # light green counterstain
        layers.append((e * rng.uniform(0.2, 0.6), LIGHT_GREEN))
    else:  # a weak H&E counterstain
        layers.append((e * rng.uniform(0.2, 0.5), M_E))
    return _compose(layers)


def to_trichrome(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Masson trichrome: black nuclei, red cytoplasm, blue/green collagen."""
    h, e, _ = _stains(tile)
    collagen = M.smooth(tile.shape[:2], rng, cells=int(rng.integers(3, 8)))
    collagen = collagen > rng.uniform(0.3, 0.7)
    fibre = LIGHT_GREEN if rng.random() < 0.3 else ANILINE_BLUE
    scale = rng.uniform(0.4, 1.0)
    return _compose(
        [
            (h * rng.uniform(1.0, 1.8), IRON_HAEMATOXYLIN),
            (e * scale * ~collagen, SCARLET),
            (e * scale * collagen, fibre),
        ]
    )


def to_sirius(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Picrosirius red: fibres (the eosin edges and a random share of the eosin area) red,
    everything stained yellow by picric acid, nuclei faint or dark."""
    h, e, edge = _stains(tile)
    fibres = M.smooth(tile.shape[:2], rng, cells=int(rng.integers(4, 10))) > rng.uniform(0.5, 0.8)
    red = np.clip(edge * rng.uniform(0.6, 1.2) + e * fibres * rng.uniform(0.3, 0.8), 0, 2)
    tissue = np.clip(e + h, 0, 1.5)
    return _compose(
        [
            (red, SIRIUS_RED),
            (tissue * rng.uniform(0.25, 0.6), PICRIC),
            (h * rng.uniform(0.2, 0.9), IRON_HAEMATOXYLIN),
        ]
    )


def to_special(tile: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A special stain of :data:`SPECIAL` (drawn when ``kind`` is None) from H&E."""
    if kind is None:
        kind = str(rng.choice(list(SPECIAL), p=list(SPECIAL.values())))
    if kind == "pas":
        return M.to_pas(tile, rng)
    if kind == "silver":
        return to_silver(tile, rng)
    if kind == "trichrome":
        return to_trichrome(tile, rng)
    if kind == "sirius":
        return to_sirius(tile, rng)
    raise ValueError(f"unknown special stain: {kind}")
