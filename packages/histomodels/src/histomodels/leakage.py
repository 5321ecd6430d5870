"""Leakage guard for the external set: mined figures that reprint training patches.

Papers that use PCam or CAMELYON often show example patches. If the model was trained on
those patches, scoring their reprints is not an external test. ``histomodels eval
--manifest RUN --train-data PATH`` hashes every training patch and every tissue tile of
every figure with the same 64-bit difference hash histofetch uses for near-duplicates
(``imagehash.dhash``), and flags a figure ``training_duplicate`` when one of its tiles is
within :data:`MAX_DISTANCE` bits of a training patch. Flagged figures are left out of the
external metrics unless ``--include-leaky``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from histocore.progress import task
from histomodels.data.base import PatchDataset

#: Hamming distance (of 64 bits) at or under which a tile counts as a training patch.
#: Tighter than histofetch's figure-level 6: tiles are many, so chance matches must be rare.
MAX_DISTANCE = 4
BLOCK = 4096


def dhash(rgb: np.ndarray) -> int:
    """64-bit dHash of one RGB image (the same bits as ``imagehash.dhash(..., 8)``)."""
    import imagehash
    from PIL import Image

    return int(str(imagehash.dhash(Image.fromarray(rgb), hash_size=8)), 16)


def hash_array(images: np.ndarray) -> np.ndarray:
    """dHash of each image in a uint8 ``[N, H, W, 3]`` array, as uint64."""
    return np.array([dhash(im) for im in images], dtype=np.uint64)


def hash_dataset(ds: PatchDataset, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """dHash of every patch of a dataset, read in blocks (never all of it in memory)."""
    parts = []
    for start in range(0, len(ds), BLOCK):
        block = ds.read_range(start, min(len(ds), start + BLOCK))
        parts.append(hash_array(block))
        if progress:
            progress(len(block))
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def nearest(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each query hash, the smallest Hamming distance to any reference hash."""
    if len(reference) == 0:
        return np.full(len(query), 64, dtype=np.int64)
    ref = np.unique(reference.astype(np.uint64))
    out = np.empty(len(query), dtype=np.int64)
    for n, q in enumerate(query.astype(np.uint64)):
        out[n] = int(np.bitwise_count(np.bitwise_xor(ref, q)).min())
    return out


def training_duplicates(
    tile_images: np.ndarray,
    tile_image_ids: list[str],
    train: PatchDataset,
    *,
    max_distance: int = MAX_DISTANCE,
) -> dict[str, int]:
    """Figure id → smallest tile-to-training-patch distance, for figures at or under
    ``max_distance``."""
    with task("hashing training patches", len(train)) as shown:
        reference = hash_dataset(train, shown.advance)
    distance = nearest(hash_array(tile_images), reference)
    out: dict[str, int] = {}
    for image_id, d in zip(tile_image_ids, distance, strict=True):
        if d <= max_distance:
            out[image_id] = min(int(d), out.get(image_id, 64))
    return out
