"""Training material for histofetch's H&E classifier, made from real H&E by physics or drawn.

Used by ``benchmarks/train_he_classifier.py``; every function takes a seeded
``numpy.random.Generator`` and returns a uint8 RGB array, so a build is reproducible.

* Hard negatives from a real H&E tile: :func:`to_ihc` (HED deconvolution, eosin → DAB,
  nuclear DAB, or a haematoxylin-only counterstain with faint DAB), :func:`to_pas`,
  :func:`to_fluor`, :func:`overlay` (heatmaps, masks, filled contours over tissue).
* Drawn negatives: :func:`colour_field` (colour-mapped scalar fields), :func:`charts`.
* Harder positives (still H&E): :func:`harder_he` — blur, colour shift, black padding,
  JPEG, drawn annotations (:func:`annotate`: boxes, arrows, scale bars, panel letters,
  text), pigment granules by physics (he_classifier_pigment.pigment), dark
  haematoxylin-heavy scans — and
  :func:`low_magnification` (whole sources shrunk onto white, as slide thumbnails and
  low-power panels look) and :func:`composite` (low-power panels of several sources in a
  grid with gutters, as a compound figure that was not split looks).
"""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
from he_classifier_pigment import pigment
from PIL import ImageDraw, ImageFilter, ImageFont
from skimage.color import hed2rgb, rgb2hed

T = 64  # = histofetch.decide.classifier.TILE (asserted by the training script)

#: Annotation colours seen on published H&E: red, green, black, yellow, blue, white, cyan.
INK = [(230, 20, 20), (20, 200, 20), (0, 0, 0), (255, 230, 0), (20, 60, 230), (255, 255, 255)]
INK += [(0, 220, 230)]


def smooth(shape: tuple[int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """A smooth random field in 0…1 (bicubic upsampling of a cells×cells grid)."""
    small = (rng.random((cells, cells)) * 255).astype(np.uint8)
    big = np.asarray(
        PIL.Image.fromarray(small).resize((shape[1], shape[0]), PIL.Image.Resampling.BICUBIC)
    )
    return big.astype(np.float32) / 255


def u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


# -- hard negatives from real H&E ------------------------------------------------------------
IHC_MODES = {"cytoplasm": 0.3, "nuclear": 0.25, "faint": 0.25, "weak": 0.2}


def to_ihc(tile: np.ndarray, rng: np.random.Generator, mode: str | None = None) -> np.ndarray:
    """IHC from H&E by HED deconvolution: eosin → DAB, nuclear DAB, or (``faint``) the
    haematoxylin counterstain alone with a little DAB in a few cells, or (``weak``) a pale
    diffuse cytoplasmic DAB where the eosin was — IHC whose brown share is below any
    colour check, which only the missing eosin gives away (pigment in H&E keeps it:
    he_classifier_pigment.py)."""
    hed = rgb2hed(tile)
    new = hed.copy()
    if mode is None:
        mode = str(rng.choice(list(IHC_MODES), p=list(IHC_MODES.values())))
    if mode == "cytoplasm":  # cytoplasmic/membranous DAB in place of eosin
        share = rng.choice([0.3, 0.5, 0.8, 1.0])
        new[..., 2] = hed[..., 1] * share * rng.uniform(1.0, 2.5)
        new[..., 1] = hed[..., 1] * (1 - share) * 0.3
    elif mode == "nuclear":  # nuclear DAB (Ki-67/ER-like) in a random share of the nuclei
        share = rng.choice([0.3, 0.5, 0.8, 1.0])
        blobs = smooth(tile.shape[:2], rng, cells=8) > rng.uniform(0.3, 0.7)
        new[..., 2] = hed[..., 0] * blobs * share * 2.0
        new[..., 0] = hed[..., 0] * np.where(blobs, 1 - share, 1.0)
        new[..., 1] = hed[..., 1] * 0.2
    elif mode == "faint":  # haematoxylin counterstain, eosin gone, DAB in 2–20 % of the area
        blobs = smooth(tile.shape[:2], rng, cells=int(rng.integers(6, 14)))
        dab = blobs > np.quantile(blobs, 1 - rng.uniform(0.02, 0.2))
        new[..., 0] = hed[..., 0] * rng.uniform(0.7, 1.3)
        new[..., 1] = hed[..., 1] * rng.uniform(0.0, 0.08)
        new[..., 2] = dab * (hed[..., 0] + hed[..., 1]) * rng.uniform(0.3, 1.2)
    elif mode == "weak":  # pale tan cytoplasm: weak DAB replaces the eosin everywhere
        patchy = 0.5 + smooth(tile.shape[:2], rng, cells=int(rng.integers(3, 8)))
        new[..., 0] = hed[..., 0] * rng.uniform(0.6, 1.2)
        new[..., 1] = hed[..., 1] * rng.uniform(0.0, 0.1)
        new[..., 2] = np.clip(hed[..., 1], 0, None) * patchy * rng.uniform(0.3, 0.9)
    else:
        raise ValueError(f"unknown IHC mode: {mode}")
    return u8(hed2rgb(new))


def to_pas(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Eosin → magenta (PAS), with dark-magenta membranes along eosin edges."""
    hed = rgb2hed(tile)
    h, e = np.clip(hed[..., 0], 0, None), np.clip(hed[..., 1], 0, None)
    gy, gx = np.gradient(e)
    membrane = np.clip(np.hypot(gx, gy) * rng.uniform(4, 10), 0, 1.5)
    od_h = np.array([0.65, 0.70, 0.29]) * rng.uniform(0.8, 1.2)
    od_m = np.array([0.25, 0.95, 0.35]) * rng.uniform(0.9, 1.3)  # magenta absorbs green
    od = h[..., None] * od_h * 3.0 + (e * rng.uniform(2.0, 4.0) + membrane)[..., None] * od_m
    return u8(np.exp(-od))


def to_fluor(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fluorescence from H&E structure: dark background, bright nuclei/cytoplasm channels."""
    hed = rgb2hed(tile)
    h = np.clip(hed[..., 0] / max(hed[..., 0].max(), 1e-6), 0, 1)
    e = np.clip(hed[..., 1] / max(hed[..., 1].max(), 1e-6), 0, 1)
    colours = [(0.2, 0.4, 1.0), (0.1, 1.0, 0.2), (1.0, 0.1, 0.9), (1.0, 0.2, 0.1), (1, 1, 1)]
    c1, c2 = (np.array(colours[i]) for i in rng.choice(len(colours), 2, replace=False))
    img = h[..., None] ** 1.5 * c1 + e[..., None] ** 2 * c2 * rng.uniform(0, 1)
    return u8(np.clip(img * rng.uniform(0.7, 1.3), 0, 1))


def overlay(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A heatmap, mask, or filled contour map alpha-blended over tissue (0.25–0.7
    opacity): the colour covers the tissue. Thin lines on H&E (annotations) are
    positives, see :func:`annotate`."""
    import matplotlib

    field = smooth(tile.shape[:2], rng, cells=int(rng.integers(2, 6)))
    kind = rng.choice(["heat", "mask", "contour"])
    alpha = rng.uniform(0.25, 0.7)
    base = tile.astype(np.float32) / 255
    if kind == "heat":
        cmap = matplotlib.colormaps[
            rng.choice(["jet", "inferno", "magma", "viridis", "plasma", "RdPu", "coolwarm"])
        ]
        top = cmap(field)[..., :3]
        a = alpha
    elif kind == "mask":
        top = np.broadcast_to(
            np.array(rng.choice([(0, 1, 0), (1, 0, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)])),
            base.shape,
        )
        a = alpha * (field > rng.uniform(0.3, 0.6))[..., None]
    else:  # dense iso-lines over a translucent colour-mapped fill
        cmap = matplotlib.colormaps[rng.choice(["jet", "viridis", "coolwarm", "RdPu"])]
        levels = (field * rng.integers(5, 12)) % 1.0
        line = (levels < 0.15)[..., None]
        top = np.where(line, 0.0, cmap(field)[..., :3])
        a = np.where(line, min(1.0, alpha * 2), alpha)
    return u8(base * (1 - a) + top * a)


# -- harder positives: still H&E ---------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def annotate(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Marks authors draw on H&E: 1–3 of box, arrow(head), scale bar, panel letter, text.
    Drawn at 2× and shrunk, so lines are 0.5–2 px like in a resized figure."""
    up = PIL.Image.fromarray(tile).resize((2 * T, 2 * T), PIL.Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(up)
    s = 2 * T
    for kind in rng.choice(["box", "arrow", "scale", "letter", "text"], int(rng.integers(1, 4))):
        ink = INK[int(rng.integers(len(INK)))]
        width = int(rng.integers(1, 5))
        if kind == "box":
            x0, y0 = (int(v) for v in rng.integers(-s // 4, s * 3 // 4, 2))
            w, h = (int(v) for v in rng.integers(s // 5, s, 2))
            if rng.random() < 0.3:  # an ellipse/freehand-ish outline
                draw.ellipse((x0, y0, x0 + w, y0 + h), outline=ink, width=width)
            else:
                draw.rectangle((x0, y0, x0 + w, y0 + h), outline=ink, width=width)
        elif kind == "arrow":
            x, y = (int(v) for v in rng.integers(s // 6, s * 5 // 6, 2))
            ang = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(s / 6, s / 2)
            tail = (x + length * np.cos(ang), y + length * np.sin(ang))
            draw.line((x, y, *tail), fill=ink, width=width + 1)
            head = [
                (x, y),
                (x + 12 * np.cos(ang + 0.45), y + 12 * np.sin(ang + 0.45)),
                (x + 12 * np.cos(ang - 0.45), y + 12 * np.sin(ang - 0.45)),
            ]
            draw.polygon(head, fill=ink)
        elif kind == "scale":
            w = int(rng.integers(s // 6, s // 2))
            x, y = int(rng.integers(4, s - w - 4)), int(rng.integers(s * 2 // 3, s - 8))
            draw.rectangle((x, y, x + w, y + int(rng.integers(3, 8))), fill=ink)
            if rng.random() < 0.5:
                draw.text(
                    (x, y - 16), f"{rng.choice([20, 50, 100, 200])} µm", fill=ink, font=_font(14)
                )
        elif kind == "letter":
            size = int(rng.integers(14, 30))
            x, y = int(rng.integers(0, s // 4)), int(rng.integers(0, s // 4))
            if rng.random() < 0.4:  # letter on a box
                back = (255, 255, 255) if sum(ink) < 300 else (0, 0, 0)
                draw.rectangle((x, y, x + size, y + size + 2), fill=back)
            draw.text(
                (x + 2, y), str(rng.choice(list("ABCDEFGHabcdef"))), fill=ink, font=_font(size)
            )
        else:
            words = ["tumour", "LN", "x40", "H&E", "stroma", "10x", "*", "T", "N", "met"]
            x, y = (int(v) for v in rng.integers(0, s * 3 // 4, 2))
            draw.text(
                (x, y), str(rng.choice(words)), fill=ink, font=_font(int(rng.integers(12, 22)))
            )
    return np.asarray(up.resize((T, T), PIL.Image.Resampling.BILINEAR))


#: DAB optical density (skimage ``rgb2hed``) above which a pixel of real H&E counts as
#: pigment (brown haemosiderin/melanin or black carbon absorb blue light, as DAB does).
PIGMENT_OD = 0.12


def pigment_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of real pigment in H&E: high DAB optical density, or near-black."""
    dab = rgb2hed(rgb)[..., 2]
    return (dab > PIGMENT_OD) | (rgb.max(axis=-1) < 60)


def transfer_pigment(tile: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Real pigment on other H&E: the pigment pixels of ``donor`` (a crop of real pigmented
    H&E, same size), flipped/rotated, pasted over ``tile`` with a softened edge; the tile is
    returned unchanged when the donor crop holds no pigment."""
    donor = np.rot90(donor[:, ::-1] if rng.random() < 0.5 else donor, int(rng.integers(4)))
    mask = pigment_mask(donor).astype(np.float32)
    if mask.mean() < 0.005:
        return tile
    soft = (
        np.asarray(
            PIL.Image.fromarray(u8(mask)).filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32
        )[..., None]
        / 255.0
    )
    soft = np.maximum(soft, mask[..., None])
    return u8((tile / 255.0) * (1 - soft) + (donor / 255.0) * soft)


#: Kinds of :func:`harder_he` and how often each is drawn.
HARDER = {
    "blur": 0.12,
    "shift": 0.13,
    "pad": 0.1,
    "jpeg": 0.1,
    "annotate": 0.3,
    "pigment": 0.15,
    "dark": 0.1,
}


def harder_he(tile: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """Still H&E: blurred, colour-shifted, black-padded, JPEG-degraded, annotated,
    pigmented or darkened (haematoxylin-heavy, under-exposed); ``kind`` from
    :data:`HARDER`, drawn at random when None."""
    if kind is None:
        kind = str(rng.choice(list(HARDER), p=list(HARDER.values())))
    im = PIL.Image.fromarray(tile)
    if kind == "annotate":
        return annotate(tile, rng)
    if kind == "pigment":
        return pigment(tile, rng)
    if kind == "dark":
        hed = rgb2hed(tile)
        hed[..., 0] *= rng.uniform(1.2, 2.0)
        hed[..., 1] *= rng.uniform(0.5, 1.2)
        return u8(hed2rgb(hed) ** rng.uniform(1.0, 1.6))
    if kind == "blur":
        return np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0))))
    if kind == "shift":
        f = tile.astype(np.float32) * rng.uniform(0.85, 1.15, 3) + rng.uniform(-20, 20, 3)
        return np.clip(f, 0, 255).astype(np.uint8)
    if kind == "pad":
        out = np.zeros_like(tile)
        k = int(rng.integers(8, 24))
        small = np.asarray(im.resize((T - 2 * k, T - 2 * k)))
        off = int(rng.integers(0, k + 1))  # padding on one side or all around
        out[off : off + T - 2 * k, k : T - k] = small
        return out
    if kind != "jpeg":
        raise ValueError(f"unknown kind of harder H&E: {kind}")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(15, 40)))
    return np.asarray(PIL.Image.open(buf).convert("RGB"))


def low_magnification(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slide-thumbnail / low-power tile: 1–3 pieces of a real H&E source shrunk to
    16–56 px, cut to an irregular tissue outline, on a white (or light-grey) background."""
    bg = int(rng.integers(235, 256))
    canvas = np.full((T, T, 3), bg, np.uint8)
    h, w = rgb.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        size = int(rng.integers(16, 57))
        side = min(h, w, int(rng.integers(min(h, w) // 3 + 1, min(h, w) + 1)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        piece = PIL.Image.fromarray(np.ascontiguousarray(rgb[y : y + side, x : x + side]))
        piece = np.asarray(piece.resize((size, size), PIL.Image.Resampling.LANCZOS))
        shape = smooth((size, size), rng, cells=4)
        yy, xx = np.mgrid[:size, :size] / max(size - 1, 1) - 0.5
        inside = (shape - np.hypot(yy, xx) * rng.uniform(0.8, 1.6)) > rng.uniform(-0.2, 0.1)
        oy, ox = int(rng.integers(0, T - size + 1)), int(rng.integers(0, T - size + 1))
        region = canvas[oy : oy + size, ox : ox + size]
        region[inside] = piece[inside]
    return canvas


def composite(pieces: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A compound figure at low power: 2–4 cells separated by white (or black) gutters of
    1–4 px, each filled by a real H&E source (one of ``pieces``) shrunk 4–16× onto it."""
    gutter = int(rng.integers(1, 5))
    colour = 0 if rng.random() < 0.15 else int(rng.integers(235, 256))
    canvas = np.full((T, T, 3), colour, np.uint8)
    rows, cols = [(1, 2), (2, 1), (2, 2), (1, 3)][int(rng.integers(4))]
    ch, cw = (T - (rows - 1) * gutter) // rows, (T - (cols - 1) * gutter) // cols
    for r in range(rows):
        for c in range(cols):
            src = pieces[int(rng.integers(len(pieces)))]
            h, w = src.shape[:2]
            factor = float(rng.uniform(4, 16))
            sh, sw = min(h, round(ch * factor)), min(w, round(cw * factor))
            y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
            piece = PIL.Image.fromarray(np.ascontiguousarray(src[y : y + sh, x : x + sw]))
            cell = np.asarray(piece.resize((cw, ch), PIL.Image.Resampling.LANCZOS))
            y0, x0 = r * (ch + gutter), c * (cw + gutter)
            canvas[y0 : y0 + ch, x0 : x0 + cw] = cell
    return canvas


# -- drawn negatives ---------------------------------------------------------------------------
def colour_field(rng: np.random.Generator) -> np.ndarray:
    """A colour-mapped smooth scalar field (feature/likelihood maps), T×T."""
    import matplotlib

    names = ["magma", "inferno", "plasma", "RdPu", "PuRd", "BuPu", "jet", "viridis"]
    cmap = matplotlib.colormaps[rng.choice([*names, "twilight", "cool", "spring"])]
    field = smooth((T, T), rng, cells=int(rng.integers(2, 10)))
    field = field + rng.normal(0, rng.uniform(0, 0.08), field.shape)
    return u8(cmap(np.clip(field, 0, 1))[..., :3])


def charts(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """UMAP-like scatters, bar charts, line plots and heatmaps in pink/purple palettes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    palettes = ["RdPu", "PuRd", "BuPu", "magma", "plasma", "spring", "cool", "Purples"]
    for _ in range(n):
        fig, ax = plt.subplots(figsize=(2.2, 2.2), dpi=int(rng.integers(60, 120)))
        cmap = matplotlib.colormaps[rng.choice(palettes)]
        kind = rng.choice(["umap", "bar", "line", "heat"])
        if kind == "umap":
            k = int(rng.integers(3, 9))
            centres = rng.normal(0, 5, (k, 2))
            pts = np.concatenate(
                [c + rng.normal(0, 1, (int(rng.integers(50, 300)), 2)) for c in centres]
            )
            lab = np.repeat(np.arange(k), len(pts) // k + 1)[: len(pts)]
            ax.scatter(pts[:, 0], pts[:, 1], c=lab, cmap=cmap, s=float(rng.uniform(2, 12)))
        elif kind == "bar":
            vals = rng.uniform(1, 10, int(rng.integers(3, 9)))
            colours = cmap(rng.uniform(0.3, 0.9, len(vals)))
            ax.bar(range(len(vals)), vals, color=colours, yerr=vals * 0.1)
        elif kind == "line":
            for j in range(int(rng.integers(1, 4))):
                ax.plot(np.cumsum(rng.normal(0, 1, 50)), color=cmap(0.3 + 0.2 * j))
        else:
            im = ax.imshow(rng.normal(0, 1, (20, 30)), cmap=cmap, aspect="auto")
            fig.colorbar(im, ax=ax)
        if rng.random() < 0.5:
            ax.set_title("cluster")
            ax.set_xlabel("UMAP1")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out.append(np.asarray(PIL.Image.open(buf).convert("RGB")))
    return out
