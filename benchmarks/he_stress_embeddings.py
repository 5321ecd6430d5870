"""Stress kinds for the H&E decision: patches as ML papers and reports embed them.

Used by ``benchmarks/he_decision_stress.py`` (round 5 of issue 14, docs/benchmarks.md). A
deep-learning report rarely shows a 96 px PCam patch as it is: it draws it with matplotlib
(axes, ticks, a title such as "label 1, p=0.93"), in grids of patches with subplot titles
and white gutters, upscaled (nearest-neighbour, blocky, or bilinear) or shrunk to a
thumbnail, JPEG-compressed, with a box round the central 32×32 label region or a thin
green/red frame (right/wrong), with text written on it, or beside its saliency map.

Each function here takes one 96 px source patch (uint8 RGB) and returns the image as a
PDF would embed it. They apply to H&E (the decision should keep them) and to IHC/PAS,
real and made (it should not). ``saliency`` is a mixed figure: an H&E patch beside a
colour-mapped saliency field. The evaluation labels call a composite with at least one
H&E micrograph H&E (tests/histofetch/data/README.md), so the H&E version is a positive
(the filter should keep it for its H&E panel) and the IHC/PAS version a negative.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib
import numpy as np
import PIL.Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import ImageDraw, ImageFont

#: Patch side as reports show it (PCam).
SIDE = 96
#: The embeddings, in the order the stress set makes them.
EMBEDDINGS = ("mpl-axes", "mpl-grid", "up-nearest", "up-bilinear", "down", "jpeg",
              "centre-box", "frame", "text", "saliency", "report-mix")  # fmt: skip
#: Frame/box colours reports use (green/red = right/wrong, PCam's label region in yellow…).
COLOURS = [(0, 200, 0), (230, 0, 0), (255, 215, 0), (0, 90, 255), (0, 0, 0), (255, 255, 255)]
TITLES = ["label 1, p=0.93", "label 0, p=0.12", "tumour", "normal", "y=1 y_hat=0.87",
          "GT: 1 / pred: 0", "p(tumour)=0.71", "0", "1", "FN", "TP", "id 4213"]  # fmt: skip


def _resize(rgb: np.ndarray, size: tuple[int, int], resample=PIL.Image.Resampling.LANCZOS):
    return np.asarray(PIL.Image.fromarray(np.ascontiguousarray(rgb)).resize(size, resample))


def window(
    rgb: np.ndarray, rng: np.random.Generator, lo: float, hi: float, min_side: int = 32
) -> np.ndarray:
    """A random square crop whose side is ``lo``–``hi`` of the shorter side (at least
    ``min_side``)."""
    h, w = rgb.shape[:2]
    side = max(min_side, int(min(h, w) * rng.uniform(lo, hi)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return rgb[y : y + side, x : x + side]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _render(fig: Figure, dpi: float) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _interp(rng: np.random.Generator) -> str:
    return str(rng.choice(["antialiased", "nearest", "bilinear"]))


def mpl_axes(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``plt.imshow(patch); plt.title(…)`` with ticks (sometimes a colour bar-less xlabel)."""
    w = rng.uniform(2.0, 4.0)
    fig = Figure(figsize=(w, w * rng.uniform(0.9, 1.15)))
    ax = fig.add_subplot()
    ax.imshow(patch, interpolation=_interp(rng))
    ax.set_title(str(rng.choice(TITLES)), fontsize=float(rng.uniform(8, 12)))
    if rng.random() < 0.3:
        ax.set_xlabel("x (px)")
    if rng.random() < 0.3:
        ax.axis("off")
    return _render(fig, float(rng.uniform(60, 150)))


def mpl_grid(patches: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A grid of patches with subplot titles, axes off, white gutters (plt.subplots)."""
    n = len(patches)
    cols = int(min(n, rng.integers(2, 6)))
    rows = -(-n // cols)
    cell = rng.uniform(1.2, 2.2)
    fig = Figure(figsize=(cols * cell, rows * cell * 1.15))
    fig.subplots_adjust(wspace=float(rng.uniform(0.05, 0.4)), hspace=float(rng.uniform(0.15, 0.5)))
    interp = _interp(rng)
    titled = rng.random() < 0.8
    for k, patch in enumerate(patches):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(patch, interpolation=interp)
        ax.axis("off")
        if titled:
            ax.set_title(str(rng.choice(TITLES)), fontsize=float(rng.uniform(6, 10)))
    return _render(fig, float(rng.uniform(60, 130)))


def upscale(patch: np.ndarray, rng: np.random.Generator, nearest: bool) -> np.ndarray:
    factor = float(rng.choice([2, 3, 4])) if nearest else rng.uniform(2, 4)
    side = round(SIDE * factor)
    how = PIL.Image.Resampling.NEAREST if nearest else PIL.Image.Resampling.BILINEAR
    return _resize(patch, (side, side), how)


def down(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(32, 65))
    return _resize(patch, (side, side), PIL.Image.Resampling.BILINEAR)


def jpeg(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG at quality 20–60, at the patch's size or after a ×1.5–3 upscale."""
    if rng.random() < 0.5:
        side = round(SIDE * rng.uniform(1.5, 3))
        patch = _resize(patch, (side, side), PIL.Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    PIL.Image.fromarray(patch).save(buf, "JPEG", quality=int(rng.integers(20, 61)))
    return np.asarray(PIL.Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _scaled(patch: np.ndarray, rng: np.random.Generator) -> tuple[PIL.Image.Image, int]:
    k = int(rng.choice([1, 2, 3]))
    how = PIL.Image.Resampling.NEAREST if rng.random() < 0.5 else PIL.Image.Resampling.BILINEAR
    return PIL.Image.fromarray(patch).resize((SIDE * k, SIDE * k), how), k


def centre_box(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A coloured box round the central 32×32 region (PCam's label region)."""
    im, k = _scaled(patch, rng)
    lo, hi = 32 * k, 64 * k - 1
    ink = COLOURS[int(rng.integers(4))]
    ImageDraw.Draw(im).rectangle((lo, lo, hi, hi), outline=ink, width=int(rng.integers(1, 3)) * k)
    return np.asarray(im)


def frame(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A thin green or red frame round the patch (inside it or round it)."""
    im, _ = _scaled(patch, rng)
    ink = COLOURS[int(rng.integers(2))]
    width = int(rng.integers(2, 7))
    if rng.random() < 0.5:
        ImageDraw.Draw(im).rectangle((0, 0, im.width - 1, im.height - 1), outline=ink, width=width)
        return np.asarray(im)
    out = PIL.Image.new("RGB", (im.width + 2 * width, im.height + 2 * width), ink)
    out.paste(im, (width, width))
    return np.asarray(out)


def text(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A label or probability written on the patch (white, black or coloured, maybe boxed)."""
    im, k = _scaled(patch, rng)
    draw = ImageDraw.Draw(im)
    size = int(rng.integers(10, 18)) * k
    label = str(rng.choice(TITLES))
    x, y = int(rng.integers(0, im.width // 3)), int(rng.choice([2, im.height - size - 4]))
    ink = COLOURS[int(rng.integers(len(COLOURS)))]
    if rng.random() < 0.4:
        back = (0, 0, 0) if sum(ink) > 300 else (255, 255, 255)
        draw.rectangle(draw.textbbox((x, y), label, font=_font(size)), fill=back)
    draw.text((x, y), label, fill=ink, font=_font(size))
    return np.asarray(im)


def saliency(patch: np.ndarray, field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The patch beside its colour-mapped saliency/Grad-CAM field, as one image (gap 0–12 px)."""
    cmap = matplotlib.colormaps[str(rng.choice(["jet", "inferno", "viridis", "hot", "magma"]))]
    sal = (cmap(np.clip(field, 0, 1))[..., :3] * 255).astype(np.uint8)
    sal = _resize(sal, (SIDE, SIDE), PIL.Image.Resampling.BILINEAR)
    gap = int(rng.choice([0, 0, 2, 6, 12]))
    out = np.full((SIDE, 2 * SIDE + gap, 3), 255, np.uint8)
    first, second = (patch, sal) if rng.random() < 0.8 else (sal, patch)
    out[:, :SIDE], out[:, SIDE + gap :] = first, second
    k = float(rng.choice([1, 1.5, 2, 3]))
    return _resize(out, (round(out.shape[1] * k), round(SIDE * k)), PIL.Image.Resampling.BILINEAR)


def report_mix(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two or three of the above in a row: scale, mark, compress."""
    if rng.random() < 0.6:
        patch = [centre_box, frame, text][int(rng.integers(3))](patch, rng)
    if rng.random() < 0.7:
        factor = rng.uniform(0.6, 3)
        size = (round(patch.shape[1] * factor), round(patch.shape[0] * factor))
        patch = _resize(patch, size, PIL.Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    PIL.Image.fromarray(patch).save(buf, "JPEG", quality=int(rng.integers(30, 80)))
    return np.asarray(PIL.Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def embed(
    name: str,
    draw_patch: Callable[[], np.ndarray],
    field: Callable[[], np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Embedding ``name`` of patches drawn by ``draw_patch`` (96 px RGB; several for a grid)."""
    if name == "mpl-grid":
        return mpl_grid([draw_patch() for _ in range(int(rng.integers(2, 13)))], rng)
    if name == "saliency":
        return saliency(draw_patch(), field(), rng)
    patch = draw_patch()
    one = {
        "mpl-axes": mpl_axes,
        "up-nearest": lambda p, r: upscale(p, r, nearest=True),
        "up-bilinear": lambda p, r: upscale(p, r, nearest=False),
        "down": down,
        "jpeg": jpeg,
        "centre-box": centre_box,
        "frame": frame,
        "text": text,
        "report-mix": report_mix,
    }
    return one[name](patch, rng)


def content(rgb: np.ndarray) -> float:
    """Share of pixels that are not white/light-grey background (as the classifier counts)."""
    t = rgb.astype(np.float32) / 255.0
    v = t.max(axis=-1)
    s = (v - t.min(axis=-1)) / np.maximum(v, 1e-6)
    return float(1.0 - ((v >= 0.88) & (s < 0.10)).mean())
