"""histofetch run folders as patch datasets: each kept figure cut into 96 px tiles at ~PCam scale.

Scale. PCam patches are level-2 crops of Camelyon16 slides (~0.97 um/px, "10x"); figures in
papers come at any magnification. Unless ``scale`` is given, each figure is resized by
``PCAM_NUCLEUS_PX / d`` where ``d`` is its typical nucleus diameter in pixels, measured as
the peak of a scale-normalised Laplacian-of-Gaussian response on the haematoxylin channel
(``skimage.color.rgb2hed``). ``PCAM_NUCLEUS_PX`` is the same measurement on 400 real PCam
patches (median 4.4 px; on Camelyon16 40x tiles it reads 16-20 px, i.e. the expected ~4x).
When the measurement is implausible the figure is used at scale 1 (``scale_source``
"default"). The estimate is approximate (+-30 %): pass ``scale=`` when you know it.
Figures that are themselves patch-sized (every side 64-160 px, as when a paper shows PCam
examples) are taken as one patch: resized so the short side is 96 (``scale_source`` "patch").

Tiles are a non-overlapping grid on the resized figure, starting where tissue starts (the
tiler and tissue test of :mod:`histocore.imaging`, shared with ``histomodels predict``); tiles whose
tissue fraction (saturated, not black: not white glass, grey ink or borders) is below
``min_tissue`` are skipped. Ids are
``<image_id>#r<row>c<col>``; :attr:`ManifestTileDataset.tiles` gives each tile's parent image,
grid position and box in the original figure's pixels (for image-level scores and heatmaps).

Labels come from the manifest's ``Image.label``: metastasis = 1, no_metastasis = 0,
unlabelled = -1; not_usable figures are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from histocore.imaging import rescale, tile
from histocore.imaging import tissue_fraction as tissue_fraction  # the one tissue test
from histocore.progress import task
from histomodels.data.base import ArrayDataset, DatasetError
from histomodels.data.images import decode_image

TILE = 96
#: Figures whose sides all lie in this range (px) are treated as single PCam-like patches.
PATCH_LIKE = (64, 160)
#: Typical nucleus diameter (px) in real PCam patches, by :func:`nucleus_diameter`.
PCAM_NUCLEUS_PX = 4.4
LABELS = {"metastasis": 1, "no_metastasis": 0, None: -1}


@dataclass(frozen=True)
class Tile:
    """Where one tile came from."""

    id: str
    image_id: str
    record_id: str
    row: int
    col: int
    #: Box in the ORIGINAL figure's pixels: x0, y0, x1, y1.
    box: tuple[float, float, float, float]
    scale: float
    scale_source: str
    tissue: float
    label: int


def nucleus_diameter(rgb: np.ndarray) -> float:
    """Typical nucleus diameter in pixels (scale-space LoG peak on haematoxylin); 0 if none."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    factor = 1
    while max(rgb.shape[:2]) // factor > 1024:
        factor *= 2
    if factor > 1:
        h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
        rgb = np.asarray(PILImage.fromarray(rgb).resize((w, h), PILImage.Resampling.BOX))
    haem = rgb2hed(rgb)[..., 0].astype(np.float32)
    sigmas = 2.0 ** np.arange(0.25, 4.01, 0.25)
    resp = np.array([np.percentile(-(s * s) * ndi.gaussian_laplace(haem, s), 97) for s in sigmas])
    if not np.max(resp) > 1e-3:  # no haematoxylin blobs to measure (blank or unstained)
        return 0.0
    i = int(np.argmax(resp))
    off = 0.0
    if 0 < i < len(sigmas) - 1:
        a, b, c = resp[i - 1], resp[i], resp[i + 1]
        denom = a - 2 * b + c
        off = 0.5 * (a - c) / denom if denom != 0 else 0.0
    sigma = 2 ** (np.log2(sigmas[i]) + 0.25 * off)
    return float(sigma * np.sqrt(2) * 2 * factor)


def estimate_scale(rgb: np.ndarray) -> tuple[float, str]:
    """``(resize factor to PCam scale, "estimated" | "default")``."""
    d = nucleus_diameter(rgb)
    scale = PCAM_NUCLEUS_PX / d if d > 0 else 0.0
    if not 1 / 12 <= scale <= 3:
        return 1.0, "default"
    return scale, "estimated"


def figure_scale(rgb: np.ndarray) -> tuple[float, str]:
    """Scale for one figure: patch-sized figures are taken as one PCam patch, else estimated.

    ML papers often show dataset examples as ~96 px images; the nucleus-size estimate on so
    few nuclei is noisy and a factor below 1 leaves them smaller than one tile (no score).
    """
    h, w = rgb.shape[:2]
    if PATCH_LIKE[0] <= min(h, w) and max(h, w) <= PATCH_LIKE[1]:
        return TILE / min(h, w), "patch"
    return estimate_scale(rgb)


def tile_figure(
    rgb: np.ndarray, scale: float, min_tissue: float = 0.5
) -> tuple[np.ndarray, list[tuple[int, int, tuple[float, float, float, float], float]]]:
    """Resize by ``scale``, cut tissue tiles: ``(uint8 [T,96,96,3], [(row, col, box, tissue)])``.

    Resizing, grid and tissue test are :mod:`histocore.imaging`'s, as in ``histomodels
    predict --scale``, so both keep the same tiles of a figure.
    """
    tiles = tile(rescale(rgb, scale), TILE, min_tissue=min_tissue)
    info = []
    for (r, c), (x, y, _, _), frac in zip(tiles.grid, tiles.boxes, tiles.tissue, strict=True):
        x0, y0 = x / scale, y / scale
        info.append((int(r), int(c), (x0, y0, x0 + TILE / scale, y0 + TILE / scale), float(frac)))
    return tiles.patches, info


class ManifestTileDataset(ArrayDataset):
    """Tissue tiles of every kept, usable figure of a histofetch run (decoded in memory)."""

    def __init__(
        self, run_dir: Path, *, scale: float | None = None, min_tissue: float = 0.5
    ) -> None:
        from histocore.manifest import Manifest, ManifestError

        if scale is not None and not 0 < scale <= 16:
            raise DatasetError(f"{run_dir}: scale {scale} out of range (0, 16]")
        try:
            with Manifest.load(run_dir) as manifest:  # what follows needs only memory
                images = sorted(manifest.kept_images(), key=lambda i: i.id)
        except ManifestError as exc:
            raise DatasetError(str(exc)) from None
        self.run_dir = run_dir
        self.tiles: list[Tile] = []
        #: image id -> dict(path, label, scale, scale_source, n_tiles, width, height)
        self.figures: dict[str, dict] = {}
        chunks: list[np.ndarray] = []
        with task("tiling figures", len(images)) as shown:
            for img in images:
                shown.advance()
                where = f"{manifest.path}: image {img.id}"
                if img.label == "not_usable":
                    continue
                if img.label not in LABELS:
                    raise DatasetError(
                        f"{where}: label {img.label!r} is not one of metastasis/no_metastasis/"
                        "not_usable"
                    )
                label = LABELS[img.label]
                try:  # never a file outside the run folder (the manifest is untrusted)
                    path = manifest.image_file(img.path)
                except ManifestError as exc:
                    raise DatasetError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
                if not path.is_file():
                    raise DatasetError(f"{where}: image file {path} not found")
                rgb = decode_image(path, f"{where} ({path})", convert=True)
                s, source = (scale, "given") if scale is not None else figure_scale(rgb)
                tiles, info = tile_figure(rgb, s, min_tissue)
                self.figures[img.id] = {
                    "path": str(path),
                    "record_id": img.record_id,
                    "label": label,
                    "scale": s,
                    "scale_source": source,
                    "width": rgb.shape[1],
                    "height": rgb.shape[0],
                    "n_tiles": len(tiles),
                }
                chunks.append(tiles)
                for r, c, box, frac in info:
                    self.tiles.append(
                        Tile(
                            f"{img.id}#r{r}c{c}",
                            img.id,
                            img.record_id,
                            r,
                            c,
                            box,
                            s,
                            source,
                            frac,
                            label,
                        )
                    )
        if not self.tiles:
            raise DatasetError(
                f"{manifest.path}: no tissue tiles (kept figures: {len(images)}); "
                "run histofetch filter, or lower min_tissue"
            )
        super().__init__(
            np.concatenate(chunks),
            np.array([t.label for t in self.tiles], dtype=np.int64),
            [t.id for t in self.tiles],
            source=f"manifest:{run_dir}",
        )
