"""Decoding one image file (or its bytes) into a checked uint8 RGB array.

Every reader goes through :func:`decode_image`, so a corrupt file, a grayscale or RGBA
patch, or a wrong size gives the same one-line :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from histomodels.data.base import DatasetError

#: Refuse images above this many pixels (decompression bombs); figures are far smaller.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

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
    With ``convert`` any mode (L, RGBA, CMYK, P...) is converted to RGB (used for
    figures); without it only RGB images are accepted, as a patch dataset should hold.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.width * im.height > MAX_PIXELS:
                raise DatasetError(f"{where}: image of {im.width}x{im.height} is too large")
            if im.mode != "RGB":
                if not convert:
                    raise DatasetError(f"{where}: image mode {im.mode}, expected RGB")
                if im.mode in ("RGBA", "LA", "PA") or (
                    im.mode == "P" and "transparency" in im.info
                ):
                    im = im.convert("RGBA")
                    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(white, im)
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{where}: file not found") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{where}: cannot decode image ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"{where}: decoded shape {arr.shape}, expected [H, W, 3]")
    if size is not None and arr.shape[:2] != tuple(size):
        raise DatasetError(
            f"{where}: image is {arr.shape[1]}x{arr.shape[0]} px, expected {size[1]}x{size[0]}"
        )
    return arr
