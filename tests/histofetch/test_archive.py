"""Figure decoding for archives: pixel limits checked on the header, alpha onto white."""

from __future__ import annotations

import pytest
from ncbi_server import image_bytes

from histofetch.archive import ArchiveError, decode_image


def test_image_pixel_limit_refuses_before_decoding() -> None:
    png = image_bytes("PNG", (100, 100), (1, 2, 3))
    with pytest.raises(ArchiveError, match="over the 5000 px limit"):
        decode_image(png, "fig.png", max_pixels=5000)
    assert decode_image(png, "fig.png", max_pixels=10_000).size == (100, 100)


def test_alpha_and_palette_figures_become_rgb_on_white() -> None:
    rgba = image_bytes("PNG", (4, 4), (255, 0, 0, 0), mode="RGBA")  # fully transparent red
    img = decode_image(rgba, "a.png", 10_000)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)
    grey = decode_image(image_bytes("PNG", (4, 4), 77, mode="L"), "g.png", 10_000)
    assert grey.mode == "RGB" and grey.getpixel((1, 1)) == (77, 77, 77)
    with pytest.raises(ArchiveError, match="cannot be decoded"):
        decode_image(b"GIF89a-not-really", "x.gif", 10_000)
