"""The tiles histofetch's H&E classifier trains and validates on (train_he_classifier.py).

Real images from ``../shared`` (``$HISTO_SHARED``): PCam patches (a random draw plus the
darkest), Camelyon16/17 tiles, the TIAToolbox target, ``stain_types/`` (all five classes),
the sinanbertan report's figures and text pages, page renders of the image-less fixture
PDFs; each real H&E tile spawns a hard negative made by physics and, half of the time, a
harder positive, and each H&E source gives low-magnification tiles
(he_classifier_material.py); drawn charts and colour fields are added. Validation is held
out by source (:data:`VAL_SOURCES`, and everything made from them).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packages" / "histofetch" / "src"))
from histofetch.decide import classifier as C  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import he_classifier_material as M  # noqa: E402
import he_classifier_special as S  # noqa: E402

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
assert M.T == T
#: PCam patches used (2 crops each): enough to learn from, few enough that one dataset's
#: scanner and stain do not stand for all of H&E; plus the darkest ones (pigment, dense
#: nuclei, under-exposure), which a random draw rarely holds.
PCAM_IMAGES = 600
PCAM_DARK = 150
#: Hard negatives made from each real H&E tile, by kind (he_classifier_material.py).
NEGATIVES = {"ihc": 0.35, "pas": 0.2, "fluor": 0.15, "overlay": 0.3}
#: Share of real H&E tiles that also give a harder positive (blur, annotations, pigment…).
HARDER_SHARE = 0.5
#: Low-magnification tiles per real H&E source image (PCam: one per third patch).
LOWMAG_PER_IMAGE = 2
#: Real pigment: PCam train patches whose 99th percentile of DAB optical density reaches
#: this (deposits in lymph node, looked at: 11 of 7,602 patches once :data:`EVAL_TWINS` are
#: left out, one golden-brown and ten black/anthracotic) are all used, with more crops …
PIGMENT_P99 = 0.165
PIGMENT_CROPS = 20
#: … and their pigment is pasted onto this share of the other real H&E training tiles
#: (he_classifier_material.transfer_pigment): drawn granules alone do not look real.
REAL_PIGMENT_SHARE = 0.15
#: Share of real H&E training tiles that also give an explicit pair from the same tile:
#: pigment granules over the kept eosin (``he``) and pale DAB in place of the eosin
#: (``ihc``, the weak or faint mode) — the difference the classifier must learn.
PAIR_SHARE = 0.25
#: Low-power compound tiles (he_classifier_material.composite) per split.
COMPOSITES = {"train": 400, "val": 60}
#: PCam train patches that are also images of the evaluation PDFs (or within the twin
#: distance of one, e.g. near-blank patches; the konrad-gerlach report shows two of them
#: as sample patches, one pigmented): never used, so that the evaluation stays
#: on unseen images. Found by :func:`eval_twins` (tests/histofetch/test_he_material.py
#: checks this list against it when ``../shared`` is there).
EVAL_TWINS = frozenset(
    {
        "532314e354dad684a2cb340050bd1360e1f6a258",
        "611262c918ef86bab28de2e953edbb25a11f85f0",
        "96974eeef9a45bdc6335734620d6c60620a633f0",
        "b1b00669e7d74011a8fdcb6314259435d972aa96",
        "bb1a2d8a5f431e4ad4fd32f75e1bf52670078961",
        "d6b7ff3cdd55cac2a03a5a440ccad715318353da",
        "e5d32f02cd8d88cc53e1fe511483ebdf3681537b",
        "pcam_train_0003227",
        "pcam_train_0006310",
        "pcam_train_0007808",
        "pcam_train_0013616",
    }
)
#: The evaluation PDFs (as benchmarks/he_filter_eval.py reads them).
EVAL_PDFS = ("data/pdfs/konrad-gerlach_report.pdf", "fixtures/pdfs")


# -- real sources ---------------------------------------------------------------------------
def load_rgb(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as im:
        im.draft("RGB", (1024, 1024))
        im = im.convert("RGB")
        im.thumbnail((1024, 1024))
        return np.asarray(im)


def real_sources(shared: Path, rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    """(class, source, image) for every real image used."""
    out: list[tuple[str, str, np.ndarray]] = []
    ids, patches = pcam_train(shared)
    idx = set(rng.choice(len(patches), size=min(PCAM_IMAGES, len(patches)), replace=False).tolist())
    # the darkest others (a mean under 70 is a black frame, not tissue)
    brightness = np.array([p.mean() for p in patches])
    brightness[[i for i, pid in enumerate(ids) if pid in EVAL_TWINS]] = 0  # never used
    pigmented = set(pigmented_patches(patches, brightness))
    idx = {i for i in idx if brightness[i] > 0} - pigmented
    dark = [i for i in np.argsort(brightness) if brightness[i] >= 70 and i not in idx | pigmented]
    idx |= set(dark[:PCAM_DARK])
    out += [("he", "pcam", patches[i]) for i in sorted(idx)]
    out += [("he", "pcam-pigment", patches[i]) for i in sorted(pigmented)]
    for p in sorted((shared / "data/camelyon16_tiles_didsr").rglob("*.webp")):
        out.append(("he", "camelyon16", load_rgb(p)))
    for p in sorted((shared / "data/camelyon17_centre_tiles").glob("*.jpeg")):
        out.append(("he", "camelyon17", load_rgb(p)))
    out.append(
        (
            "he",
            "tiatoolbox",
            load_rgb(shared / "data/external_he_images/tiatoolbox_target_image.png"),
        )
    )
    base = shared / "data/stain_types"
    with (base / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            out.append(
                (STAIN_CLASS[row["class"]], row["source_repo"], load_rgb(base / row["file"]))
            )
    out += pdf_sources(shared)
    return out


def pcam_train(shared: Path) -> tuple[list[str], list[np.ndarray]]:
    """Patch ids and RGB arrays of PCam ``dev/train.h5``."""
    import h5py

    from histomodels.data.h5safe import dataset

    src = shared / "data/pcam_real/dev/train.h5"
    with h5py.File(src, "r") as fh:
        blobs = dataset(fh, "encoded", src)[:]  # encoded PNG/JPEG bytes per patch
        ids = [
            v.decode() if isinstance(v, bytes) else str(v) for v in dataset(fh, "patch_id", src)[:]
        ]
    patches = []
    for blob in blobs:
        with PIL.Image.open(io.BytesIO(bytes(blob))) as im:
            patches.append(np.asarray(im.convert("RGB")))
    return ids, patches


def eval_twins(shared: Path, max_diff: float = 7.0) -> set[str]:
    """Ids of the PCam train patches that an evaluation PDF embeds (mean absolute
    difference under ``max_diff`` of 255 after resizing the embedded image to 96 px;
    re-encoded twins differ by 4–6, the next closest patches by more than 10)."""
    import pymupdf

    ids, patches = pcam_train(shared)
    stack = np.stack(patches)  # uint8; only the few candidates are compared in full
    # Cheap passes first: the mean absolute difference of block means never exceeds that
    # of the pixels (|mean| <= mean of ||), so each pass only drops patches the full
    # comparison would drop: 6 px means of 16×16 blocks, 24 px means of 4×4 blocks.
    rows = stack.reshape(len(stack), 24, 4, 96 * 3).sum(axis=2, dtype=np.uint16)
    coarse = rows.reshape(len(stack), 24, 24, 4, 3).sum(axis=3, dtype=np.uint16) / np.float32(16)
    coarser = coarse.reshape(len(stack), 6, 4, 6, 4, 3).mean(axis=(2, 4))
    coarser_flat = coarser.reshape(len(stack), -1)
    found: set[str] = set()
    pdfs = [shared / EVAL_PDFS[0], *sorted((shared / EVAL_PDFS[1]).glob("*.pdf"))]
    for pdf in pdfs:
        with pymupdf.open(pdf) as doc:
            if doc.needs_pass:
                continue
            for page in doc:
                for entry in page.get_images(full=True):
                    pix = pymupdf.Pixmap(doc, entry[0])
                    if pix.colorspace is None or not 32 <= min(pix.width, pix.height) <= 400:
                        continue
                    if pix.colorspace.n != 3 or pix.alpha:
                        pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
                    with PIL.Image.open(io.BytesIO(pix.tobytes("png"))) as im:
                        small = np.asarray(im.convert("RGB").resize((96, 96)), np.float32)
                    mid = small.reshape(24, 4, 24, 4, 3).mean(axis=(1, 3))
                    low = mid.reshape(6, 4, 6, 4, 3).mean(axis=(1, 3)).ravel()
                    near = np.flatnonzero(np.abs(coarser_flat - low).mean(axis=1) < max_diff)
                    near = near[np.abs(coarse[near] - mid).mean(axis=(1, 2, 3)) < max_diff]
                    diff = np.abs(stack[near].astype(np.float32) - small).mean(axis=(1, 2, 3))
                    found |= {ids[i] for i in near[diff < max_diff]}
    return found


def pigmented_patches(patches: list[np.ndarray], brightness: np.ndarray) -> list[int]:
    """Indices of the patches with real pigment (:data:`PIGMENT_P99`; not black frames)."""
    from skimage.color import rgb2hed

    return [
        i
        for i, rgb in enumerate(patches)
        if brightness[i] >= 70 and np.percentile(rgb2hed(rgb)[..., 2], 99) >= PIGMENT_P99
    ]


def pdf_sources(shared: Path) -> list[tuple[str, str, np.ndarray]]:
    """The sinanbertan report's figures (labelled here by eye) and text-page renders."""
    import pymupdf

    out: list[tuple[str, str, np.ndarray]] = []
    sinan = shared / "data/pdfs/sinanbertan_report.pdf"
    he_pages = {26, 42}  # its two H&E sample grids (looked at; every other figure is not H&E)
    with pymupdf.open(sinan) as doc:
        for number, page in enumerate(doc.pages()):
            for entry in page.get_images(full=True):
                pix = pymupdf.Pixmap(doc, entry[0])
                if pix.colorspace is None or min(pix.width, pix.height) < 64:
                    continue
                if pix.colorspace.n != 3 or pix.alpha:
                    pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
                rgb = np.asarray(PIL.Image.open(io.BytesIO(pix.tobytes("png"))).convert("RGB"))
                cls = "he" if number + 1 in he_pages else "graphic"
                out.append((cls, "sinanbertan", rgb))
            if number % 4 == 0:  # text pages and page layouts
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
        tile = np.asarray(window.resize((T, T), PIL.Image.Resampling.BILINEAR))
        if C.content_fraction(tile[None])[0] >= min_content:
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            return np.ascontiguousarray(np.rot90(tile, int(rng.integers(4))))
    return None


# -- dataset ----------------------------------------------------------------------------------
def build(
    shared: Path, seed: int, per_image: int
) -> dict[str, tuple[np.ndarray, np.ndarray, list[str], list[str]]]:
    """{"train"|"val": (tiles uint8 N×T×T×3, labels N, derivation names, groups)}; a group
    names the source image and derivation of a tile, so that validation can score images
    as the decision does (the mean H&E probability of an image's tiles)."""
    rng = np.random.default_rng(seed)
    sources = real_sources(shared, rng)
    donors = [rgb for _, source, rgb in sources if source == "pcam-pigment"]
    split: dict[str, list[tuple[np.ndarray, int, str, str]]] = {"train": [], "val": []}
    he = CLASSES.index("he")
    make = {"ihc": M.to_ihc, "pas": S.to_special, "fluor": M.to_fluor, "overlay": M.overlay}
    for k, (cls, source, rgb) in enumerate(sources):
        part = "val" if source in VAL_SOURCES else "train"
        rows = split[part]
        n = {"pcam": 2, "pcam-pigment": PIGMENT_CROPS}.get(source, per_image)
        for _ in range(n):
            tile = random_crop(rgb, rng)
            if tile is None:
                continue
            rows.append((tile, CLASSES.index(cls), f"real:{cls}", f"{k}"))
            if cls != "he":
                continue
            # each real H&E tile spawns one hard negative, and half of them a harder positive
            kind = str(rng.choice(list(NEGATIVES), p=list(NEGATIVES.values())))
            label = "graphic" if kind == "overlay" else kind
            rows.append(
                (make[kind](tile, rng), CLASSES.index(label), f"made:{kind}", f"{k}:{kind}")
            )
            if rng.random() < HARDER_SHARE:
                kind = str(rng.choice(list(M.HARDER), p=list(M.HARDER.values())))
                rows.append((M.harder_he(tile, rng, kind), he, f"made:he-{kind}", f"{k}:{kind}"))
            if rng.random() < PAIR_SHARE:
                rows.append((M.pigment(tile, rng), he, "made:he-pigment-pair", f"{k}:pair-he"))
                mode = "weak" if rng.random() < 0.6 else "faint"
                ihc = CLASSES.index("ihc")
                rows.append((M.to_ihc(tile, rng, mode), ihc, "made:ihc-pair", f"{k}:pair-ihc"))
            if part == "train" and donors and rng.random() < REAL_PIGMENT_SHARE:
                donor = random_crop(donors[int(rng.integers(len(donors)))], rng, min_content=0.0)
                if donor is not None:
                    made = M.transfer_pigment(tile, donor, rng)
                    rows.append((made, he, "made:he-realpigment", f"{k}:realpigment"))
        # whole sources shrunk onto white: slide thumbnails and low-power panels
        if cls == "he" and (source != "pcam" or k % 3 == 0):
            for _ in range(1 if source == "pcam" else LOWMAG_PER_IMAGE):
                rows.append((M.low_magnification(rgb, rng), he, "made:he-lowmag", f"{k}:lowmag"))
    for part, n in COMPOSITES.items():  # compound figures at low power, gutters included
        pieces = [
            rgb
            for cls, source, rgb in sources
            if cls == "he"
            and not source.startswith("pcam")
            and (source in VAL_SOURCES) == (part == "val")
        ]
        for j in range(n):
            split[part].append((M.composite(pieces, rng), he, "made:he-composite", f"m{j}"))
    for part, n in (("train", 500), ("val", 120)):
        for j, chart in enumerate(M.charts(rng, n // 5)):
            for _ in range(3):
                tile = random_crop(chart, rng, min_content=0.1)
                if tile is not None:
                    split[part].append((tile, CLASSES.index("graphic"), "drawn:chart", f"c{j}"))
        for j in range(n // 2):
            field = M.colour_field(rng)
            split[part].append((field, CLASSES.index("graphic"), "drawn:field", f"f{j}"))
    out = {}
    for part, rows in split.items():
        order = rng.permutation(len(rows))
        out[part] = (
            np.stack([rows[i][0] for i in order]),
            np.array([rows[i][1] for i in order]),
            [rows[i][2] for i in order],
            [rows[i][3] for i in order],
        )
    return out
