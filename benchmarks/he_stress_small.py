"""Small stress kinds for the H&E decision: images 32–63 px on their shorter side.

Used by ``benchmarks/he_decision_stress.py`` (round 6 of issue 14, docs/benchmarks.md).
``histofetch extract`` keeps images from 32 px; the decision rejects those under
``min_side`` (64 px) as "too small to judge". Round 5 found the H&E it loses that way
(PCam patches shrunk to a thumbnail), but the stress set had no small image that is *not*
H&E, so a lower ``min_side`` could not be chosen. This module makes both sides at those
sizes, from training-side material only (never the evaluation papers' images):

* H&E (keep): PCam train patches (evaluation twins out) and Camelyon16 / ``he_other``
  tiles shrunk to 32–63 px by the resamplers PDF producers use, low-power views of the
  2048 px Camelyon17 tiles, and shrunk patches saved as JPEG;
* negatives (reject): real IHC, PAS/special stains and cytology shrunk; IHC and special
  stains made from real H&E (he_classifier_material/special.py) shrunk; real
  immunofluorescence (training-side ``stain_types/if`` only) shrunk or cropped; FISH-like
  fluorescence made from it (DAPI-like nuclei plus bright red/green/magenta spots);
  fluorescence and heatmap overlays made from H&E; matplotlib charts (whole or cropped);
  drawn icons and logo-like badges; text crops; grey, black and white crops (flat, noise,
  gradients, greyscale micrographs, table rules); colour-mapped fields.

:func:`small_items` returns ``(kind, is_he, held_out, rgb)`` tuples; kinds are named
``he:small-…`` and ``neg:small-…`` so ``--kinds he:small,neg:small`` measures them alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import he_classifier_material as M
import matplotlib
import numpy as np
import PIL.Image
from he_stress_embeddings import _font, _resize
from he_stress_embeddings import window as _window
from PIL import ImageDraw

#: Shorter side of the small images (px), inclusive.
SMALL = (32, 63)
#: Resamplers a PDF producer, LaTeX or a slide deck shrinks with.
RESAMPLERS = (
    PIL.Image.Resampling.BILINEAR,
    PIL.Image.Resampling.BICUBIC,
    PIL.Image.Resampling.LANCZOS,
    PIL.Image.Resampling.BOX,
)
HE_KINDS = ("pcam", "tile", "lowpower", "jpeg")
NEG_KINDS = ("ihc", "pas", "ihc-made", "special-made", "cytology", "if", "fish",
             "fluor-made", "overlay", "field", "chart", "icon", "logo", "text", "grey")  # fmt: skip
Pool = list[tuple[bool, np.ndarray]]
Item = tuple[str, bool, bool, np.ndarray]

#: Where each pool's images come from, under ``--shared`` (named when a pool is empty).
POOL_FOLDERS = {
    "pcam": "data/pcam_real/dev/train.h5",
    "he": "data/camelyon16_tiles_didsr",  # and stain_types he_other
    "he_large": "data/camelyon17_centre_tiles",
    "ihc": "data/stain_types",
    "pas_special": "data/stain_types",
    "cytology_gross_other": "data/stain_types",
    "if": "data/stain_types",
}


class EmptyPool(ValueError):
    """A pool the stress set draws from holds no image (data missing under ``--shared``)."""

    def __init__(self, pool: str, what: str = "images", *, problem: str | None = None) -> None:
        self.folder = POOL_FOLDERS.get(pool, "data")
        self.problem = problem or f"no {what} for the stress set's {pool!r} pool"
        super().__init__(f"{self.folder}: {self.problem}")


def check_pools(pools: dict[str, Pool]) -> None:
    """Raise :class:`EmptyPool` for the first pool of :data:`POOL_FOLDERS` with no image
    (for ``if``: none from a training-side source), before anything is made from them."""
    for name in POOL_FOLDERS:
        if name == "if":
            if not any(not held for held, _ in pools.get(name, [])):
                raise EmptyPool(name, "training-side images (held-out sources excluded)")
        elif not pools.get(name):
            raise EmptyPool(name)


def small_size(rng: np.random.Generator, aspect: float = 1.0) -> tuple[int, int]:
    """(width, height) with the shorter side in :data:`SMALL`; ``aspect`` = width / height,
    and 30 % of the time a random aspect up to 1.6 either way."""
    short = int(rng.integers(SMALL[0], SMALL[1] + 1))
    if rng.random() < 0.3:
        aspect = float(rng.uniform(1 / 1.6, 1.6))
    if aspect >= 1:
        return round(short * aspect), short
    return short, round(short / aspect)


def shrink(rgb: np.ndarray, rng: np.random.Generator, keep_aspect: bool = True) -> np.ndarray:
    """``rgb`` shrunk so its shorter side is 32–63 px (aspect kept, or a random one)."""
    h, w = rgb.shape[:2]
    size = small_size(rng, w / h if keep_aspect else 1.0)
    how = RESAMPLERS[int(rng.integers(len(RESAMPLERS)))]
    return _resize(rgb, size, how)


def window(rgb: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return _window(rgb, rng, lo, hi, min_side=8)


def jpeg(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    quality = int(rng.integers(30, 86))
    PIL.Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "JPEG", quality=quality)
    return np.asarray(PIL.Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


# -- made negatives ---------------------------------------------------------------------------
def _grey(rgb: np.ndarray) -> np.ndarray:
    g = rgb.astype(np.float32).mean(axis=-1) / 255
    lo, hi = np.percentile(g, [1, 99.5])
    return np.clip((g - lo) / max(hi - lo, 1e-3), 0, 1)


def fish(nuclei: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """FISH-like fluorescence: a DAPI-like nuclear channel (a real fluorescence image's
    intensity, blue or grey, sometimes absent) and bright diffraction-limited spots in one
    or two probe colours (red, green, magenta, yellow, white) on black, 128 px."""
    side = 128
    dapi = _grey(_resize(window(nuclei, rng, 0.3, 1.0), (side, side)))
    blue = np.array(rng.choice([(0.15, 0.3, 1.0), (0.5, 0.5, 0.9), (0.0, 0.1, 0.7)]))
    img = dapi[..., None] * blue * rng.uniform(0.0, 0.9)
    probes = [(1, 0.1, 0.1), (0.1, 1, 0.2), (1, 0.1, 0.9), (1, 0.9, 0.1), (1, 1, 1), (1, 0.3, 0.6)]
    yy, xx = np.mgrid[:side, :side]
    for c in rng.choice(len(probes), int(rng.integers(1, 3)), replace=False):
        n = int(rng.integers(15, 250))
        where = dapi > np.quantile(dapi, 0.5) if rng.random() < 0.6 else np.ones_like(dapi, bool)
        ys, xs = np.nonzero(where)
        pick = rng.integers(len(ys), size=n)
        spots = np.zeros((side, side), np.float32)
        r = rng.uniform(0.8, 2.5)
        for y, x, a in zip(ys[pick], xs[pick], rng.uniform(0.4, 1.0, n), strict=True):
            y0, y1, x0, x1 = max(0, y - 8), min(side, y + 9), max(0, x - 8), min(side, x + 9)
            d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
            spots[y0:y1, x0:x1] += a * np.exp(-d2 / (2 * r * r))
        img = img + np.clip(spots, 0, 1.2)[..., None] * np.array(probes[int(c)])
    img = img + rng.normal(0, rng.uniform(0, 0.04), img.shape)  # camera noise
    return M.u8(img)


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    """A graphic colour, pinks and purples often (the hard ones for a colour rule)."""
    if rng.random() < 0.5:
        cmap = matplotlib.colormaps[str(rng.choice(["RdPu", "PuRd", "BuPu", "Purples", "spring"]))]
        return tuple(int(v * 255) for v in cmap(rng.uniform(0.3, 1.0))[:3])  # type: ignore[return-value]
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def icon(rng: np.random.Generator) -> np.ndarray:
    """A drawn icon: circles, squares, triangles, arrows or stars, filled and outlined."""
    side = int(rng.integers(96, 200))
    back = (255, 255, 255) if rng.random() < 0.7 else _ink(rng)
    im = PIL.Image.new("RGB", (side, side), back)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = (int(v) for v in rng.integers(0, side // 2, 2))
        x1, y1 = (int(v) for v in rng.integers(side // 2, side, 2))
        shape = str(rng.choice(["ellipse", "rect", "triangle", "arrow", "star"]))
        fill, line = _ink(rng), _ink(rng)
        width = int(rng.integers(0, 6))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=line, width=width)
        elif shape == "rect":
            draw.rounded_rectangle((x0, y0, x1, y1), int(rng.integers(0, 20)), fill=fill,
                                   outline=line, width=width)  # fmt: skip
        elif shape == "triangle":
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill, outline=line)
        elif shape == "arrow":
            ym = (y0 + y1) // 2
            t = max(2, (y1 - y0) // 6)
            draw.polygon([(x0, ym - t), ((x0 + x1) // 2, ym - t), ((x0 + x1) // 2, y0), (x1, ym),
                          ((x0 + x1) // 2, y1), ((x0 + x1) // 2, ym + t), (x0, ym + t)],
                         fill=fill)  # fmt: skip
        else:
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
            ang = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
            rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
            draw.polygon([(float(cx + a * np.cos(t)), float(cy + a * np.sin(t)))
                          for a, t in zip(rad, ang, strict=True)], fill=fill)  # fmt: skip
    return np.asarray(im)


def logo(rng: np.random.Generator) -> np.ndarray:
    """A logo-like badge: a gradient or flat disc/band with a letter or short word, as
    journal and institution logos and "open access" marks are drawn."""
    w, h = int(rng.integers(96, 240)), int(rng.integers(64, 160))
    a, b = np.array(_ink(rng), np.float32), np.array(_ink(rng), np.float32)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    ramp = a + (b - a) * t[:, None]
    grad = np.broadcast_to(ramp[None, :] if len(t) == w else ramp[:, None], (h, w, 3))
    im = PIL.Image.fromarray(grad.astype(np.uint8)) if rng.random() < 0.6 else (
        PIL.Image.new("RGB", (w, h), tuple(int(v) for v in a)))  # fmt: skip
    if rng.random() < 0.5:  # a disc on white
        disc = PIL.Image.new("L", (w, h), 0)
        ImageDraw.Draw(disc).ellipse((w // 2 - h // 2, 0, w // 2 + h // 2, h - 1), fill=255)
        im = PIL.Image.composite(im, PIL.Image.new("RGB", (w, h), (255, 255, 255)), disc)
    word = str(rng.choice(["A", "OA", "JP", "Cell", "AI", "BMC", "P", "Lab", "H", "NIH"]))
    size = int(h * rng.uniform(0.35, 0.7))
    ink = (255, 255, 255) if rng.random() < 0.6 else _ink(rng)
    ImageDraw.Draw(im).text((w // 2, h // 2), word, fill=ink, font=_font(size), anchor="mm")
    return np.asarray(im)


WORDS = ["tumour", "normal", "lymph", "node", "metastasis", "patch", "slide", "model", "AUC",
         "figure", "scale", "bar", "pathologist", "region", "label", "score", "Ki-67", "H&E",
         "staining", "cohort", "p < 0.05", "mean"]  # fmt: skip


def text_crop(rng: np.random.Generator) -> np.ndarray:
    """A few lines of words (dark, or coloured, on white or a light tint), as a crop of a
    figure's labels or a table."""
    size = int(rng.integers(9, 18))
    lines = [
        " ".join(rng.choice(WORDS, int(rng.integers(1, 5)))) for _ in range(int(rng.integers(2, 5)))
    ]
    w = int(max(len(s) for s in lines) * size * 0.62) + 8
    h = len(lines) * (size + 4) + 6
    back = (
        (255, 255, 255) if rng.random() < 0.7 else tuple(int(v) for v in rng.integers(225, 256, 3))
    )
    im = PIL.Image.new("RGB", (w, h), back)
    draw = ImageDraw.Draw(im)
    ink = (0, 0, 0) if rng.random() < 0.5 else _ink(rng)
    for k, line in enumerate(lines):
        draw.text((4, 3 + k * (size + 4)), line, fill=ink, font=_font(size))
    return np.asarray(im)


def grey(rgb_he: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey, black or white: flat with noise, a gradient, a greyscale micrograph, rules."""
    kind = str(rng.choice(["flat", "gradient", "micrograph", "rules"]))
    side = 128
    if kind == "flat":
        level = float(rng.choice([0, 0.05, 0.5, 0.75, 0.95, 1.0, rng.uniform(0, 1)]))
        out = np.full((side, side), level) + rng.normal(0, rng.uniform(0, 0.05), (side, side))
    elif kind == "gradient":
        out = np.linspace(rng.uniform(0, 0.5), rng.uniform(0.5, 1), side)[None, :].repeat(side, 0)
        if rng.random() < 0.5:
            out = out.T
    elif kind == "micrograph":
        out = _grey(_resize(window(rgb_he, rng, 0.4, 1.0), (side, side)))
        if rng.random() < 0.4:
            out = 1 - out  # dark-field / inverted
    else:  # table rules and boxes on white
        out = np.ones((side, side))
        for _ in range(int(rng.integers(2, 8))):
            pos, width = int(rng.integers(0, side)), int(rng.integers(1, 4))
            shade = rng.uniform(0, 0.7)
            if rng.random() < 0.5:
                out[pos : pos + width] = shade
            else:
                out[:, pos : pos + width] = shade
    return M.u8(np.repeat(np.clip(out, 0, 1)[..., None], 3, axis=-1))


def field(rng: np.random.Generator) -> np.ndarray:
    names = ["magma", "inferno", "plasma", "RdPu", "PuRd", "BuPu", "jet", "viridis", "cool"]
    cmap = matplotlib.colormaps[str(rng.choice([*names, "spring"]))]
    f = M.smooth((128, 128), rng, cells=int(rng.integers(2, 10)))
    return M.u8(cmap(np.clip(f + rng.normal(0, rng.uniform(0, 0.08), f.shape), 0, 1))[..., :3])


# -- the set -----------------------------------------------------------------------------------
def small_items(
    pools: dict[str, Pool], made: dict[str, Pool], rng: np.random.Generator, per_kind: int = 60
) -> list[Item]:
    """H&E and negatives at 32–63 px (module docstring); ``per_kind`` H&E images per H&E
    kind, two thirds as many per negative kind. ``made`` holds the "ihc" and "special"
    images made from real H&E (he_decision_stress.py makes them). An empty pool raises
    :class:`EmptyPool` before anything is made."""
    items: list[Item] = []
    if per_kind <= 0:
        return items
    check_pools(pools)
    if_train = [(held, rgb) for held, rgb in pools["if"] if not held]  # training-side only
    he_small = pools["pcam"] + pools["he"]
    large = pools["he_large"]

    def pick(pool: Pool) -> tuple[bool, np.ndarray]:
        return pool[int(rng.integers(len(pool)))]

    def from_pool(pool: Pool, fn: Callable[[np.ndarray], np.ndarray]) -> tuple[bool, np.ndarray]:
        held, rgb = pick(pool)
        return held, fn(rgb)

    he_makers: dict[str, Callable[[], tuple[bool, np.ndarray]]] = {
        "pcam": lambda: from_pool(pools["pcam"], lambda p: shrink(p, rng)),
        "tile": lambda: from_pool(pools["he"], lambda p: shrink(window(p, rng, 0.3, 1.0), rng)),
        "lowpower": lambda: from_pool(large, lambda p: shrink(window(p, rng, 0.3, 1.0), rng)),
        "jpeg": lambda: from_pool(he_small, lambda p: jpeg(shrink(p, rng), rng)),
    }
    for name, make in he_makers.items():
        for _ in range(per_kind):
            held, rgb = make()
            items.append((f"he:small-{name}", True, held, rgb))

    def made_from_he(fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]):
        def one(p: np.ndarray) -> np.ndarray:
            return shrink(fn(_resize(window(p, rng, 0.5, 1.0), (128, 128)), rng), rng)

        return lambda: from_pool(he_small, one)

    def crop_or_shrink(p: np.ndarray) -> np.ndarray:
        if rng.random() < 0.3 and min(p.shape[:2]) >= 128:  # a native crop of a bigger image
            w, h = small_size(rng)
            y, x = (
                int(rng.integers(0, p.shape[0] - h + 1)),
                int(rng.integers(0, p.shape[1] - w + 1)),
            )
            return p[y : y + h, x : x + w]
        return shrink(window(p, rng, 0.3, 1.0), rng)

    neg_makers: dict[str, Callable[[], tuple[bool, np.ndarray]]] = {
        "ihc": lambda: from_pool(pools["ihc"], crop_or_shrink),
        "pas": lambda: from_pool(pools["pas_special"], crop_or_shrink),
        "ihc-made": lambda: from_pool(made["ihc"], lambda p: shrink(p, rng)),
        "special-made": lambda: from_pool(made["special"], lambda p: shrink(p, rng)),
        "cytology": lambda: from_pool(pools["cytology_gross_other"], crop_or_shrink),
        "if": lambda: from_pool(if_train, crop_or_shrink),
        "fish": lambda: from_pool(if_train, lambda p: shrink(fish(p, rng), rng, keep_aspect=False)),
        "fluor-made": made_from_he(M.to_fluor),
        "overlay": made_from_he(M.overlay),
        "field": lambda: (False, shrink(field(rng), rng, keep_aspect=False)),
        "chart": lambda: (False, shrink(window(M.charts(rng, 1)[0], rng, 0.3, 1.0), rng)),
        "icon": lambda: (False, shrink(icon(rng), rng)),
        "logo": lambda: (False, shrink(logo(rng), rng)),
        "text": lambda: (False, shrink(text_crop(rng), rng)),
        "grey": lambda: from_pool(he_small, lambda p: shrink(grey(p, rng), rng, keep_aspect=False)),
    }
    for name, make in neg_makers.items():
        for _ in range(per_kind * 2 // 3):
            held, rgb = make()
            items.append((f"neg:small-{name}", False, held, rgb))
    return items
