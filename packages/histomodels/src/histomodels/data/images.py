"""Decoding one image file (or its bytes) into a checked uint8 RGB array.

Every reader goes through :func:`decode_image`, so a corrupt file, a grayscale or RGBA
patch, or a wrong size gives the same one-line :class:`DatasetError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histocore.imaging import ImageError, read_rgb
from histomodels.data.base import DatasetError

#: Refuse images above this many pixels (decompression bombs); figures are far smaller.
#: Checked per call on the declared size (PIL's global limit is left alone).
MAX_PIXELS = 64_000_000

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")


def decode_image(
    source: bytes | Path,
    where: str,
    *,
    size: tuple[int, int] | None = None,
    convert: bool = False,
) -> np.ndarray:
    """Decode to uint8 ``[H, W, 3]``.

    ``where`` names the file (and row) for error messages. ``size`` = expected (H, W).
    With ``convert`` any mode (L, RGBA, CMYK, P...) is converted to RGB, transparency onto
    white (used for figures); without it only RGB images are accepted, as a patch dataset
    should hold.
    """
    try:
        arr = read_rgb(source, max_pixels=MAX_PIXELS, what=where, rgb_only=not convert)
    except ImageError as exc:
        raise DatasetError(str(exc)) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"{where}: decoded shape {arr.shape}, expected [H, W, 3]")
    if size is not None and arr.shape[:2] != tuple(size):
        raise DatasetError(
            f"{where}: image is {arr.shape[1]}x{arr.shape[0]} px, expected {size[1]}x{size[0]}"
        )
    # PIL's buffer is read-only: a copy (27 KB for a 96 px patch, far less than decoding)
    # keeps DataLoader's collate from warning "NumPy array is not writable" in every worker
    return arr if arr.flags.writeable else arr.copy()
