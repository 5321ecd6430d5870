"""Near-duplicate figures across articles, by perceptual hash (a leakage guard).

The same micrograph often appears in several papers (a review reprints it, a group reuses
it). Counted twice, it inflates the external test set; if it is a CAMELYON/PCam image it
leaks training data into the test. Every kept image gets a 64-bit difference hash
(``imagehash.dhash``, stored as hex in ``Image.phash``; ``filter`` computes it from the copy
it already decoded for scoring, so the file is read once); two kept images of
*different* articles within :data:`MAX_DISTANCE` bits are both flagged
``near_duplicate:<other image id>`` in ``Image.leakage``. Within one article, a panel and
its figure overlap by design and are not flagged. ``histomodels eval --manifest
--train-data`` compares the same hashes against training patches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import PIL.Image

from histocore.errors import ManifestError
from histocore.manifest import Image, Manifest

log = logging.getLogger(__name__)

#: Hamming distance (of 64 bits) at or under which two images count as the same picture.
MAX_DISTANCE = 6
HASH_SIZE = 8  # dHash of an 8x9 grey thumbnail → 64 bits


def rgb_hash(rgb: np.ndarray) -> str:
    """Hex dHash of a decoded RGB image (uint8 ``[H, W, 3]``)."""
    import imagehash

    return str(imagehash.dhash(PIL.Image.fromarray(rgb), hash_size=HASH_SIZE))


def image_hash(path: str) -> str | None:
    """Hex dHash of an image file, read as ``filter`` reads it for scoring (transparency on
    white, at most ``PANEL_SIDE`` px), so it matches the hash ``filter`` stores;
    ``None`` when it cannot be read."""
    from histofetch.decide.colour import PANEL_SIDE, load_rgb_sized

    try:
        return rgb_hash(load_rgb_sized(path, PANEL_SIDE)[0])
    except Exception as exc:  # unreadable/corrupt file: no hash, no flag (filter failed it)
        log.warning("cannot hash %s: %s", path, exc)
        return None


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def hash_images(manifest: Manifest, images: Iterable[Image]) -> None:
    """Store ``phash`` on every given image that lacks one (rows ``filter`` scored have it;
    this reads the file only for rows from elsewhere)."""
    for img in images:
        if img.phash is None:
            try:  # never a file outside the run folder
                path = manifest.image_file(img.path)
            except ManifestError:
                continue
            img.phash = image_hash(str(path))


def flag_near_duplicates(manifest: Manifest, max_distance: int = MAX_DISTANCE) -> int:
    """Hash the kept images and flag cross-article near-duplicates; returns how many."""
    kept = [i for i in manifest.images.values() if i.kept and i.status == "ok"]
    hash_images(manifest, kept)
    for img in manifest.images.values():  # re-flag from scratch (kept set may change)
        if img.leakage:
            img.leakage = [f for f in img.leakage if not f.startswith("near_duplicate:")] or None
    hashed = [(i, int(i.phash, 16)) for i in kept if i.phash]
    flagged = 0
    for n, (a, ha) in enumerate(hashed):  # O(n^2) on ints: ~1 s for 5,000 kept images
        for b, hb in hashed[n + 1 :]:
            if a.record_id == b.record_id or (ha ^ hb).bit_count() > max_distance:
                continue
            for x, y in ((a, b), (b, a)):
                flags = set(x.leakage or [])
                flagged += not any(f.startswith("near_duplicate:") for f in flags)
                x.leakage = sorted(flags | {f"near_duplicate:{y.id}"})
    return flagged
