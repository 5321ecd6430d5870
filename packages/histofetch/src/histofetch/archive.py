"""Limits for untrusted archives, and safe decoding of the figure files they hold.

The Europe PMC inline-image ZIP (:func:`histofetch.sources.europepmc.read_zip`) is read
under :class:`ArchiveLimits`; any hostile member makes the whole package unusable
(:class:`ArchiveError`). Figures are decoded with an explicit pixel limit so a
decompression bomb fails before it is expanded.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image as PILImage

from histocore.errors import DomainError
from histocore.imaging import ImageError, ImageTooLarge, read_rgb


class ArchiveError(DomainError, ValueError):
    """An archive that is unreadable or breaks a safety rule; the message says which."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 2000
    max_member_bytes: int = 200 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    #: Largest figure decoded, in pixels (a 20k × 20k scan is 400 MP).
    max_image_pixels: int = 400_000_000


def decode_image(data: bytes, name: str, max_pixels: int) -> PILImage.Image:
    """Decode one figure to RGB (transparency onto white), refusing images over
    ``max_pixels`` from their header, before anything is expanded."""
    try:
        rgb = read_rgb(data, max_pixels=max_pixels, what=f"figure {name!r}")
    except ImageTooLarge as exc:
        whose = "" if exc.limit == max_pixels else " (Pillow's PIL.Image.MAX_IMAGE_PIXELS × 2)"
        raise ArchiveError(
            f"figure {name!r} is {exc.declared} px, over the {exc.limit} px limit{whose}"
        ) from None
    except ImageError as exc:
        raise ArchiveError(f"figure {name!r} cannot be decoded ({exc.reason})") from None
    return PILImage.fromarray(rgb)
