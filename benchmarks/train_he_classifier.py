"""Train histofetch's H&E image check and write ``histofetch/pretrained/he_classifier.safetensors``.

    nice -n 10 python benchmarks/train_he_classifier.py [--shared ../shared] [--epochs 6]

Reads ``/work/shared`` (``$HISTO_SHARED``) at train time only; nothing from it is committed.
Deterministic for a given ``--seed`` on one machine (CPU, fixed thread count).

Classes: ``he`` (H&E), ``ihc``, ``pas`` (PAS and other special stains), ``fluor`` (IF,
FISH, greyscale fluorescence), ``cyto`` (cytology, blood smears, gross photos), ``graphic``
(plots, heatmaps and overlays on tissue, colour maps, diagrams, text pages).

Material (see docs/he_classifier.md for sizes):

* real: PCam patches, Camelyon16 tiles, Camelyon17 centre tiles, the TIAToolbox target,
  ``stain_types/`` (all five classes), the sinanbertan report's figures and text pages,
  text pages of the image-less fixture PDFs;
* made from real H&E by physics: IHC (HED deconvolution, eosin → DAB at several shares,
  and DAB in nuclei), PAS-like (eosin → magenta + dark-magenta membranes), fluorescence,
  alpha-blended heatmaps/masks/contours at several opacities;
* drawn: colour-mapped scalar fields and matplotlib UMAP/scatter/bar charts in pink and
  purple palettes;
* H&E made harder (stays ``he``): blur, colour shift, black padding, low magnification.

The evaluation PDFs (the konrad-gerlach report and the article PDFs in
``fixtures/pdfs``) are NOT used, so docs/benchmarks.md reports on unseen papers.
Validation is held out by source: whole datasets/repositories (listed in ``VAL_SOURCES``)
and everything derived from them.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
from skimage.color import hed2rgb, rgb2hed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packages" / "histofetch" / "src"))
from histofetch.decide import classifier as C  # noqa: E402

CLASSES = ["he", "ihc", "pas", "fluor", "cyto", "graphic"]
STAIN_CLASS = {
    "he_other": "he",
    "ihc": "ihc",
    "pas_special": "pas",
    "if": "fluor",
    "cytology_gross_other": "cyto",
}
#: Held out for validation: whole sources, never seen in training.
VAL_SOURCES = {
    "petebankhead/2022-qupath-cell-detection",
    "Borda/BIRL",
    "camelyon17",
    "zeeshannisar/resource-effecient-multi-stain-kidney-glomeruli-segmentation",
    "CellProfiler/examples",
    "MathWorks-Teaching-Resources/Biosciences-Image-Processing",
    "pages:neg_drageset",
}
T = C.TILE
#: PCam patches used (2 crops each): enough to learn from, few enough that one dataset's
#: scanner and stain do not stand for all of H&E.
PCAM_IMAGES = 600


# -- real sources ---------------------------------------------------------------------------
def _rgb(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as im:
        im.draft("RGB", (1024, 1024))
        im = im.convert("RGB")
        im.thumbnail((1024, 1024))
        return np.asarray(im)


def real_sources(shared: Path, rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    """(class, source, image) for every real image used."""
    import h5py

    out: list[tuple[str, str, np.ndarray]] = []
    with h5py.File(shared / "data/pcam_real/dev/train.h5", "r") as fh:
        n = fh["encoded"].shape[0]  # encoded PNG/JPEG bytes per patch
        idx = np.sort(rng.choice(n, size=min(PCAM_IMAGES, n), replace=False))
        for blob in fh["encoded"][idx]:
            with PIL.Image.open(io.BytesIO(bytes(blob))) as im:
                out.append(("he", "pcam", np.asarray(im.convert("RGB"))))
    for p in sorted((shared / "data/camelyon16_tiles_didsr").rglob("*.webp")):
        out.append(("he", "camelyon16", _rgb(p)))
    for p in sorted((shared / "data/camelyon17_centre_tiles").glob("*.jpeg")):
        out.append(("he", "camelyon17", _rgb(p)))
    out.append(
        ("he", "tiatoolbox", _rgb(shared / "data/external_he_images/tiatoolbox_target_image.png"))
    )
    base = shared / "data/stain_types"
    with (base / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            out.append((STAIN_CLASS[row["class"]], row["source_repo"], _rgb(base / row["file"])))
    out += pdf_sources(shared)
    return out


def pdf_sources(shared: Path) -> list[tuple[str, str, np.ndarray]]:
    """The sinanbertan report's figures (labelled here by eye) and text-page renders."""
    import pymupdf

    out: list[tuple[str, str, np.ndarray]] = []
    sinan = shared / "data/pdfs/sinanbertan_report.pdf"
    he_pages = {26, 42}  # its two H&E sample grids (looked at; every other figure is not H&E)
    with pymupdf.open(sinan) as doc:
        for page in doc:
            for entry in page.get_images(full=True):
                pix = pymupdf.Pixmap(doc, entry[0])
                if pix.colorspace is None or min(pix.width, pix.height) < 64:
                    continue
                if pix.colorspace.n != 3 or pix.alpha:
                    pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
                rgb = np.asarray(PIL.Image.open(io.BytesIO(pix.tobytes("png"))).convert("RGB"))
                cls = "he" if page.number + 1 in he_pages else "graphic"
                out.append((cls, "sinanbertan", rgb))
            if page.number % 4 == 0:  # text pages and page layouts
                out.append(("graphic", "pages:sinanbertan", _page(page)))
    for name in (
        "neg_datta2010_jtmo_4_1_review_no_images.pdf",
        "neg_drageset2015_peerj_1120_no_images.pdf",
    ):
        with pymupdf.open(shared / "fixtures/pdfs" / name) as doc:
            for page in doc:
                out.append(("graphic", f"pages:{name[:12]}", _page(page)))
    return out


def _page(page) -> np.ndarray:
    pix = page.get_pixmap(dpi=40)
    return np.asarray(PIL.Image.open(io.BytesIO(pix.tobytes("png"))).convert("RGB"))


# -- crops ------------------------------------------------------------------------------------
def random_crop(
    rgb: np.ndarray, rng: np.random.Generator, min_content: float = 0.3
) -> np.ndarray | None:
    """A TILE crop at a random scale (shorter side 64…320 px, as inference sees images)."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    target = float(np.exp(rng.uniform(np.log(T), np.log(max(T, min(short * 1.5, 320))))))
    scale = target / short
    side = min(h, w, max(1, round(T / scale)))  # the source window that becomes one tile
    for _ in range(6):
        y = rng.integers(0, h - side + 1)
        x = rng.integers(0, w - side + 1)
        window = PIL.Image.fromarray(np.ascontiguousarray(rgb[y : y + side, x : x + side]))
        tile = np.asarray(window.resize((T, T), PIL.Image.BILINEAR))
        if C.content_fraction(tile[None])[0] >= min_content:
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            return np.ascontiguousarray(np.rot90(tile, rng.integers(4)))
    return None


# -- physics: hard negatives and harder positives from real H&E -----------------------------
def to_ihc(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HED deconvolution, part of the eosin (or of nuclear haematoxylin) → DAB, recomposed."""
    hed = rgb2hed(tile)
    share = rng.choice([0.3, 0.5, 0.8, 1.0])
    new = hed.copy()
    if rng.random() < 0.5:  # cytoplasmic/membranous DAB in place of eosin
        new[..., 2] = hed[..., 1] * share * rng.uniform(1.0, 2.5)
        new[..., 1] = hed[..., 1] * (1 - share) * 0.3
    else:  # nuclear DAB (Ki-67/ER-like) in a random share of the nuclei
        blobs = _smooth(tile.shape[:2], rng, cells=8) > rng.uniform(0.3, 0.7)
        new[..., 2] = hed[..., 0] * blobs * share * 2.0
        new[..., 0] = hed[..., 0] * np.where(blobs, 1 - share, 1.0)
        new[..., 1] = hed[..., 1] * 0.2
    return _u8(hed2rgb(new))


def to_pas(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Eosin → magenta (PAS), with dark-magenta membranes along eosin edges."""
    hed = rgb2hed(tile)
    h, e = np.clip(hed[..., 0], 0, None), np.clip(hed[..., 1], 0, None)
    gy, gx = np.gradient(e)
    membrane = np.clip(np.hypot(gx, gy) * rng.uniform(4, 10), 0, 1.5)
    od_h = np.array([0.65, 0.70, 0.29]) * rng.uniform(0.8, 1.2)
    od_m = np.array([0.25, 0.95, 0.35]) * rng.uniform(0.9, 1.3)  # magenta absorbs green
    od = h[..., None] * od_h * 3.0 + (e * rng.uniform(2.0, 4.0) + membrane)[..., None] * od_m
    return _u8(np.exp(-od))


def to_fluor(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fluorescence from H&E structure: dark background, bright nuclei/cytoplasm channels."""
    hed = rgb2hed(tile)
    h = np.clip(hed[..., 0] / max(hed[..., 0].max(), 1e-6), 0, 1)
    e = np.clip(hed[..., 1] / max(hed[..., 1].max(), 1e-6), 0, 1)
    colours = [(0.2, 0.4, 1.0), (0.1, 1.0, 0.2), (1.0, 0.1, 0.9), (1.0, 0.2, 0.1), (1, 1, 1)]
    c1, c2 = (np.array(colours[i]) for i in rng.choice(len(colours), 2, replace=False))
    img = h[..., None] ** 1.5 * c1 + e[..., None] ** 2 * c2 * rng.uniform(0, 1)
    return _u8(np.clip(img * rng.uniform(0.7, 1.3), 0, 1))


def overlay(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Heatmap, mask or dense contours alpha-blended over tissue (0.25–0.7 opacity)."""
    import matplotlib

    field = _smooth(tile.shape[:2], rng, cells=int(rng.integers(2, 6)))
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
    else:
        levels = (field * rng.integers(5, 12)) % 1.0
        top = np.broadcast_to(
            np.array(rng.choice([(0, 1, 0), (1, 1, 0), (0, 0, 0), (0, 0.6, 1)])), base.shape
        )
        a = np.minimum(1.0, alpha * 2) * (levels < 0.15)[..., None]
    return _u8(base * (1 - a) + top * a)


def harder_he(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Still H&E: blurred, colour-shifted, black-padded or JPEG-degraded."""
    kind = rng.choice(["blur", "shift", "pad", "jpeg"])
    im = PIL.Image.fromarray(tile)
    if kind == "blur":
        from PIL import ImageFilter

        return np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0))))
    if kind == "shift":
        f = tile.astype(np.float32) * rng.uniform(0.85, 1.15, 3) + rng.uniform(-20, 20, 3)
        return np.clip(f, 0, 255).astype(np.uint8)
    if kind == "pad":
        out = np.zeros_like(tile)
        k = int(rng.integers(8, 24))
        small = np.asarray(im.resize((T - 2 * k, T - 2 * k)))
        out[k : T - k, k : T - k] = small
        return out
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(15, 40)))
    return np.asarray(PIL.Image.open(buf).convert("RGB"))


def colour_field(rng: np.random.Generator) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps[
        rng.choice(
            [
                "magma",
                "inferno",
                "plasma",
                "RdPu",
                "PuRd",
                "BuPu",
                "jet",
                "viridis",
                "twilight",
                "cool",
                "spring",
            ]
        )
    ]
    field = _smooth((T, T), rng, cells=int(rng.integers(2, 10)))
    field = field + rng.normal(0, rng.uniform(0, 0.08), field.shape)
    return _u8(cmap(np.clip(field, 0, 1))[..., :3])


def charts(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """UMAP-like scatters, bar charts and line plots in pink/purple palettes."""
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
            ax.bar(
                range(len(vals)),
                vals,
                color=cmap(rng.uniform(0.3, 0.9, len(vals))),
                yerr=vals * 0.1,
            )
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


def _smooth(shape: tuple[int, int], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    small = (rng.random((cells, cells)) * 255).astype(np.uint8)
    big = np.asarray(PIL.Image.fromarray(small).resize((shape[1], shape[0]), PIL.Image.BICUBIC))
    return big.astype(np.float32) / 255


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


# -- dataset ----------------------------------------------------------------------------------
def build(
    shared: Path, seed: int, per_image: int
) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """{"train"|"val": (tiles uint8 N×T×T×3, labels N, derivation names)}."""
    rng = np.random.default_rng(seed)
    sources = real_sources(shared, rng)
    split: dict[str, list[tuple[np.ndarray, int, str]]] = {"train": [], "val": []}
    for cls, source, rgb in sources:
        part = "val" if source in VAL_SOURCES else "train"
        n = 2 if source == "pcam" else per_image
        for _ in range(n):
            tile = random_crop(rgb, rng)
            if tile is None:
                continue
            split[part].append((tile, CLASSES.index(cls), f"real:{cls}"))
            if cls != "he":
                continue
            # each real H&E tile spawns one derived tile of a random kind
            kind = rng.choice(
                ["ihc", "pas", "fluor", "overlay", "harder"], p=[0.25, 0.2, 0.15, 0.2, 0.2]
            )
            make = {
                "ihc": to_ihc,
                "pas": to_pas,
                "fluor": to_fluor,
                "overlay": overlay,
                "harder": harder_he,
            }[kind]
            label = {"overlay": "graphic", "harder": "he"}.get(kind, kind)
            split[part].append((make(tile, rng), CLASSES.index(label), f"made:{kind}"))
    for part, n in (("train", 500), ("val", 120)):
        for chart in charts(rng, n // 5):
            for _ in range(3):
                tile = random_crop(chart, rng, min_content=0.1)
                if tile is not None:
                    split[part].append((tile, CLASSES.index("graphic"), "drawn:chart"))
        for _ in range(n // 2):
            split[part].append((colour_field(rng), CLASSES.index("graphic"), "drawn:field"))
    out = {}
    for part, rows in split.items():
        order = rng.permutation(len(rows))
        out[part] = (
            np.stack([rows[i][0] for i in order]),
            np.array([rows[i][1] for i in order]),
            [rows[i][2] for i in order],
        )
    return out


# -- model ------------------------------------------------------------------------------------
def make_model():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [3, 16, 32, 64, 64]
            self.convs = nn.ModuleList(
                nn.Conv2d(a, b, 3, padding=1) for a, b in itertools.pairwise(widths)
            )
            self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
            self.fc = nn.Linear(2 * widths[-1], len(CLASSES))
            self.drop = nn.Dropout(0.2)

        def forward(self, x):
            x = (x / 255.0 - C.MEAN) / C.STD
            for k, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
                x = torch.relu(norm(conv(x)))
                if k < len(self.convs) - 1:
                    x = torch.max_pool2d(x, 2)
            pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
            return self.fc(self.drop(pooled))

    return Net()


def folded(model) -> dict[str, np.ndarray]:
    """Conv weights with batch norm folded in (eval mode), as the numpy forward expects."""
    out = {}
    for name, conv, norm in zip(C.CONV_LAYERS, model.convs, model.norms, strict=True):
        scale = (norm.weight / (norm.running_var + norm.eps).sqrt()).detach()
        out[f"{name}.weight"] = (conv.weight.detach() * scale[:, None, None, None]).numpy()
        out[f"{name}.bias"] = (
            (conv.bias.detach() - norm.running_mean) * scale + norm.bias.detach()
        ).numpy()
    out["fc.weight"] = model.fc.weight.detach().numpy()
    out["fc.bias"] = model.fc.bias.detach().numpy()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def colour_jitter(x, gen):
    """Scanner/stain variation (0…255 tensors): per-image channel gains, brightness,
    contrast and gamma; small enough that DAB stays brown and eosin pink."""
    import torch

    n = x.shape[0]

    def u(lo: float, hi: float, *shape: int):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    x = x / 255.0
    x = x * u(0.9, 1.1, 3, 1, 1) + u(-0.06, 0.06, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.8, 1.2, 1, 1, 1) + mean
    x = x.clamp(0, 1) ** u(0.8, 1.25, 1, 1, 1)
    return x * 255.0


def train(data, epochs: int, seed: int):
    import torch

    torch.manual_seed(seed)
    x, y, _ = data["train"]
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    yt = torch.from_numpy(y).long()
    counts = np.bincount(y, minlength=len(CLASSES))
    weight = torch.tensor(
        (counts.sum() / np.maximum(counts, 1) / len(CLASSES)) ** 0.5, dtype=torch.float32
    )
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 128 + 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        t0 = time.time()
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            batch = colour_jitter(xt[idx], gen)
            loss = torch.nn.functional.cross_entropy(
                model(batch), yt[idx], weight=weight, label_smoothing=0.05
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.time() - t0:.0f}s)",
            file=sys.stderr,
        )
    model.eval()
    return model


def report(tensors: dict[str, np.ndarray], data) -> dict:
    """Per-class accuracy and binary H&E precision/recall on the held-out sources."""
    x, y, names = data["val"]
    logits = np.concatenate([C.forward(tensors, x[i : i + 256]) for i in range(0, len(x), 256)])
    pred = logits.argmax(1)
    p_he = C.softmax(logits)[:, 0]
    out: dict = {"val_tiles": len(x), "per_class": {}, "per_derivation": {}}
    for k, cls in enumerate(CLASSES):
        m = y == k
        out["per_class"][cls] = {
            "n": int(m.sum()),
            "accuracy": round(float((pred[m] == k).mean()), 4) if m.any() else None,
        }
    for name in sorted(set(names)):
        m = np.array([n == name for n in names])
        he_true = y[m] == 0
        called = p_he[m] >= 0.5
        out["per_derivation"][name] = {
            "n": int(m.sum()),
            "called_he": round(float(called.mean()), 4),
            "correct_he_call": round(float((called == he_true).mean()), 4),
        }
    he, called = y == 0, p_he >= 0.5
    tp = int((he & called).sum())
    out["he_precision"] = round(tp / max(int(called.sum()), 1), 4)
    out["he_recall"] = round(tp / max(int(he.sum()), 1), 4)
    out["operating_points"] = operating_points(p_he, he)
    return out


def operating_points(p_he: np.ndarray, he: np.ndarray) -> dict:
    """Precision/recall of ``p_he ≥ t`` on the validation tiles, and the highest ``t`` that
    keeps recall ≥ 0.9 (``p_keep`` of decide/rules.py is set from it, never from the
    evaluation papers)."""
    grid = [round(t, 2) for t in np.arange(0.05, 0.96, 0.05)]
    points = {}
    for t in grid:
        called = p_he >= t
        tp = int((called & he).sum())
        points[str(t)] = {
            "precision": round(tp / max(int(called.sum()), 1), 4),
            "recall": round(tp / max(int(he.sum()), 1), 4),
        }
    ok = [t for t in grid if points[str(t)]["recall"] >= 0.9]
    return {"p_keep_at_recall_0.9": max(ok) if ok else None, "grid": points}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("HISTO_SHARED", ROOT.parent / "shared"))
    )
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-image", type=int, default=12, help="Crops per real image (PCam: 2).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="Keep built tiles here (.npz); reuse.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "packages/histofetch/src/histofetch/pretrained" / C.WEIGHTS_NAME,
    )
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/he_classifier.json")
    args = ap.parse_args()
    import torch
    from safetensors.numpy import save_file

    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.cache and args.cache.exists():
        with np.load(args.cache, allow_pickle=False) as z:
            data = {p: (z[f"{p}_x"], z[f"{p}_y"], list(z[f"{p}_names"])) for p in ("train", "val")}
    else:
        data = build(args.shared, args.seed, args.per_image)
        if args.cache:
            arrays = {
                f"{part}_{key}": np.asarray(value)
                for part, d in data.items()
                for key, value in zip(("x", "y", "names"), d, strict=True)
            }
            np.savez(args.cache, **arrays)
    sizes = {p: {c: int((d[1] == k).sum()) for k, c in enumerate(CLASSES)} for p, d in data.items()}
    print(f"data: {json.dumps(sizes)} ({time.time() - t0:.0f}s)", file=sys.stderr)
    model = train(data, args.epochs, args.seed)
    tensors = folded(model)
    with torch.no_grad():
        xv = torch.from_numpy(data["val"][0][:64]).permute(0, 3, 1, 2).float()
        diff = float(np.abs(model(xv).numpy() - C.forward(tensors, data["val"][0][:64])).max())
    metrics = report(tensors, data)
    metrics |= {
        "tiles": sizes,
        "numpy_vs_torch_max_abs_diff": diff,
        "seed": args.seed,
        "epochs": args.epochs,
        "seconds": round(time.time() - t0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors,
        str(args.out),
        metadata={
            "classes": json.dumps(CLASSES),
            "tile": str(T),
            "trained_by": "benchmarks/train_he_classifier.py",
            "seed": str(args.seed),
        },
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
