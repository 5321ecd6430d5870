"""histocore.imaging: per-call pixel limits (no PIL global), hostile files, one tiler."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from abuse.make_corpus import png_declaring  # a PNG header declaring W x H, no data

from histocore.errors import DomainError
from histocore.imaging import (
    ImageError,
    ImageTooLarge,
    open_image,
    read_rgb,
    rescale,
    tile,
    tissue_fraction,
)


def png_bytes(rgb: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(rgb, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_limit_is_per_call_whatever_was_imported_first() -> None:
    """Importing every reader leaves PIL's global alone; each reader applies its own limit."""
    code = """
import PIL.Image
before = PIL.Image.MAX_IMAGE_PIXELS
import histofetch.extract, histofetch.decide.colour, histofetch.archive, histofetch.filter
import histomodels.data.images, histomodels.predict, histomodels.data.manifest_tiles
assert PIL.Image.MAX_IMAGE_PIXELS == before, PIL.Image.MAX_IMAGE_PIXELS
from histocore.imaging import ImageTooLarge
from histofetch.archive import ArchiveError, decode_image as archive_decode
from histofetch.decide.colour import load_rgb
from histomodels.data.images import decode_image
from histomodels.data.base import DatasetError
import sys
png = sys.stdin.buffer.read()  # declares 12000 x 12000 = 144 MP
try:
    decode_image(png, "fig")
    raise SystemExit("histomodels read a 144 MP image over its 64 MP limit")
except DatasetError as exc:
    assert "exceeds the limit of 64000000" in str(exc), exc
try:
    archive_decode(png, "fig.png", 99_000_000)
    raise SystemExit("the archive read a 144 MP image over a 99 MP limit")
except ArchiveError as exc:
    assert "over the 99000000 px limit" in str(exc), exc
try:  # under the 400 MP archive limit (once capped at 128 MP): only the empty data fails
    archive_decode(png, "fig.png", 400_000_000)
except ArchiveError as exc:
    assert "cannot be decoded" in str(exc), exc
assert PIL.Image.MAX_IMAGE_PIXELS == before
print("ok")
"""
    for first in ("histomodels.data.images", "histofetch.extract"):
        src = f"import {first}\n" + code
        run = subprocess.run(
            [sys.executable, "-c", src],
            input=png_declaring(12_000, 12_000),
            capture_output=True,
            timeout=120,
        )
        assert run.returncode == 0 and run.stdout.strip() == b"ok", run.stderr.decode()[-2000:]


def test_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(30_000, 30_000))  # 900 MP in ~100 bytes
    assert bomb.stat().st_size < 200
    before = PIL.Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLarge) as info:
        read_rgb(bomb, max_pixels=64_000_000)
    err = info.value
    assert isinstance(err, DomainError) and err.limit == 64_000_000
    assert str(err).startswith(f"{bomb}: ") and "decompression bomb" in str(err)
    assert "\n" not in str(err)
    # a limit above Pillow's own ceiling cannot be granted: said, never silent
    with pytest.raises(ImageTooLarge, match="process-wide limit"):
        read_rgb(bomb, max_pixels=1_000_000_000)
    assert before == PIL.Image.MAX_IMAGE_PIXELS


def test_limit_on_the_declared_size(tmp_path: Path) -> None:
    rgb = np.full((100, 120, 3), 7, np.uint8)
    data = png_bytes(rgb)
    with pytest.raises(ImageTooLarge, match=r"fig: 120x100 pixels exceeds the limit of 11999"):
        read_rgb(data, max_pixels=11_999, what="fig")
    assert read_rgb(data, max_pixels=12_000).shape == (100, 120, 3)
    with open_image(data, max_pixels=12_000) as im:  # header only, nothing decoded yet
        assert im.size == (120, 100)
    with pytest.raises(ImageTooLarge), open_image(data, max_pixels=100):
        pass


def test_truncated_corrupt_and_missing_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = png_bytes(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageError, match=r"cut\.png: cannot decode image \(") as info:
        read_rgb(cut, max_pixels=10**6)
    assert "\n" not in str(info.value)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    with pytest.raises(ImageError, match="cannot decode image"):
        read_rgb(buf.getvalue()[:300], max_pixels=10**6, what="cut.jpg")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ImageError, match=r"junk\.png: cannot decode image"):
        read_rgb(junk, max_pixels=10**6)
    with pytest.raises(ImageError, match=r"nope\.png: file not found"):
        read_rgb(tmp_path / "nope.png", max_pixels=10**6)
    with pytest.raises(ImageError, match="not an image file"):
        read_rgb(tmp_path, max_pixels=10**6)


def test_pipe_or_device_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    """A FIFO named like an image blocked ``open`` until a writer came (a named pipe among a
    folder's images hung ``histomodels predict`` and ``data info`` for good); ``/dev/zero``
    never ends. Both are one ImageError now, and a folder still says so."""
    import os
    import threading

    fifo = tmp_path / "patch.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            read_rgb(fifo, max_pixels=10**6)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the reader (a writer that closes at once), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("reading a FIFO blocked until a writer came")
    assert isinstance(outcome[0], ImageError)
    assert "patch.png: not a regular file" in str(outcome[0])
    with pytest.raises(ImageError, match=r"/dev/zero: not a regular file"):
        read_rgb("/dev/zero", max_pixels=10**6)
    with pytest.raises(ImageError, match=r"is a folder, not an image file"):
        read_rgb(tmp_path, max_pixels=10**6)
    # os.stat's ValueError for a NUL in the path (review: it escaped the check)
    with pytest.raises(ImageError, match=r"embedded null byte"):
        read_rgb("a\x00b.png", max_pixels=10**6)


def test_unidentified_and_empty_files_say_so_once(tmp_path: Path) -> None:
    """Pillow's 'cannot identify image file ...' repeated the path, or named the memory
    address of a BytesIO (``<_io.BytesIO object at 0x7fe9...>``, in download's failed-file
    list for every empty or SVG figure file): now the problem alone, said once."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"/>'
    with pytest.raises(ImageError) as info:
        read_rgb(svg, max_pixels=10**6, what="figure 'f8.svg'")
    assert (
        str(info.value) == "figure 'f8.svg': cannot decode image (not an image format Pillow reads)"
    )
    assert info.value.reason == "not an image format Pillow reads"
    with pytest.raises(ImageError) as info:
        read_rgb(b"", max_pixels=10**6, what="figure 'f4.tif'")
    assert str(info.value) == "figure 'f4.tif': cannot decode image (empty file)"
    (tmp_path / "f.png").write_bytes(svg)
    (tmp_path / "e.png").write_bytes(b"")
    for name, why in [("f.png", "not an image format Pillow reads"), ("e.png", "empty file")]:
        with pytest.raises(ImageError) as info:
            read_rgb(tmp_path / name, max_pixels=10**6)
        assert str(info.value) == f"{tmp_path / name}: cannot decode image ({why})"


def test_a_format_pillow_only_identifies_is_not_an_image(tmp_path: Path) -> None:
    """Pillow identifies HDF5 (and GRIB, BUFR, ...) with a stub of size 0x0 and no decoder:
    ``predict train.h5`` said 'cannot decode image (declares a size of 0x0)'."""
    path = tmp_path / "train.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(504))  # HDF5's signature, as h5py writes
    with pytest.raises(ImageError) as info:
        read_rgb(path, max_pixels=10**6)
    assert str(info.value) == f"{path}: cannot decode image (HDF5 data, not an image)"
    assert info.value.reason == "HDF5 data, not an image"


def test_modes_transparency_and_shrinking() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # fully transparent red: white on a page
    assert (read_rgb(png_bytes(rgba, "RGBA"), max_pixels=100) == 255).all()
    grey = png_bytes(np.full((4, 4), 77, np.uint8), "L")
    assert (read_rgb(grey, max_pixels=100) == 77).all()
    with pytest.raises(ImageError, match="image mode L, expected RGB"):
        read_rgb(grey, max_pixels=100, rgb_only=True)
    big = png_bytes(np.full((300, 600, 3), 90, np.uint8))
    assert read_rgb(big, max_pixels=10**6, max_side=200).shape == (100, 200, 3)


def test_tiles_cover_the_image_from_the_top_left() -> None:
    img = np.full((250, 400, 3), 255, np.uint8)
    img[96:192, 192:288] = (150, 60, 140)  # one tissue tile
    t = tile(img, 96)
    assert t.boxes.tolist() == [
        [x, y, x + 96, y + 96] for y in (0, 96) for x in (0, 96, 192, 288)
    ]  # 250 % 96 and 400 % 96 px at the bottom and right are not covered
    assert t.grid.tolist() == [[r, c] for r in (0, 1) for c in range(4)]
    for (x0, y0, x1, y1), patch in zip(t.boxes, t.patches, strict=True):
        np.testing.assert_array_equal(patch, img[y0:y1, x0:x1])
    assert t.tissue.tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
    kept = tile(img, 96, min_tissue=0.5)
    assert kept.boxes.tolist() == [[192, 96, 288, 192]] and kept.grid.tolist() == [[1, 2]]
    half = tile(img, 96, stride=48)
    assert len(half.boxes) == 4 * 7 and half.boxes[1].tolist() == [48, 0, 144, 96]
    none = tile(img[:50], 96)  # smaller than one tile
    assert none.boxes.shape == (0, 4) and none.patches.shape == (0, 96, 96, 3)
    with pytest.raises(ValueError, match="stride"):
        tile(img, 96, stride=-1)


def test_grid_follows_where_tissue_starts() -> None:
    """A figure's white margin does not cut every tile: the grid phase follows the tissue."""
    img = np.full((30 + 2 * 96 + 50, 40 + 3 * 96 + 20, 3), 255, np.uint8)
    img[30:222, 40:328] = (150, 60, 140)
    img[5, 5] = (200, 0, 0)  # a stray coloured pixel (a panel letter) does not move the grid
    t = tile(img, 96)
    assert t.origin == (40, 30)
    assert t.boxes[0].tolist() == [40, 30, 136, 126] and t.grid.tolist() == [
        [r, c] for r in (0, 1) for c in range(3)
    ]
    assert t.tissue.tolist() == [1.0] * 6  # every tile is all tissue
    corner = tile(img, 96, origin=(0, 0))
    assert corner.boxes[0].tolist() == [0, 0, 96, 96] and (corner.tissue == 1.0).sum() == 2
    overlap = tile(img, 96, stride=48)
    assert overlap.origin == (40 % 48, 30 % 48) and overlap.boxes[0].tolist()[:2] == [40, 30]


def test_tissue_test_ignores_glass_ink_and_borders() -> None:
    patches = np.stack(
        [
            np.full((8, 8, 3), (200, 120, 180), np.uint8),  # eosin / haematoxylin pink
            np.full((8, 8, 3), 250, np.uint8),  # white glass
            np.full((8, 8, 3), 128, np.uint8),  # grey chart ink
            np.zeros((8, 8, 3), np.uint8),  # black border
        ]
    )
    assert tissue_fraction(patches).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_rescale_is_box_down_lanczos_up() -> None:
    img = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    assert rescale(img, 1.0) is img
    down = rescale(img, 0.5)
    want = PIL.Image.fromarray(img).resize((8, 8), PIL.Image.Resampling.BOX)
    np.testing.assert_array_equal(down, np.asarray(want))
    assert rescale(img, 2.5).shape == (40, 40, 3) and rescale(img, 0.01).shape == (1, 1, 3)


def test_high_bit_depth_grey_is_scaled_or_refused_never_clipped(tmp_path) -> None:
    """``convert("RGB")`` clips 16- and 32-bit grey at 255: a 16-bit PNG came out nearly
    white and was scored as if it were the figure. 16-bit keeps the top 8 of the bits it
    uses; 32-bit integer or float grey (no known range) is refused."""
    from histocore.imaging import ImageError, read_rgb

    values = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    PIL.Image.fromarray(values).save(tmp_path / "g16.png")  # mode I;16
    rgb = read_rgb(tmp_path / "g16.png", max_pixels=10**6)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert np.array_equal(rgb[..., 0], (values >> 8).astype(np.uint8))
    # a 12-bit camera image in a 16-bit file (0..4095) spans 0..255, not 0..15 (near-black)
    twelve = (values >> 4).astype(np.uint16)
    PIL.Image.fromarray(twelve).save(tmp_path / "g12.png")
    rgb12 = read_rgb(tmp_path / "g12.png", max_pixels=10**6)[..., 0]
    assert np.array_equal(rgb12, (twelve >> 4).astype(np.uint8)) and rgb12.max() == 255
    # the depth is rounded up to 10/12/14/16 bits: dim 12-bit data, with or without one
    # hot pixel, keeps one scale; dim full-range 16-bit data (max 30000) keeps its top byte
    dim = np.full((8, 8), 1500, np.uint16)
    hot = dim.copy()
    hot[0, 0] = 4095
    for name, arr in (("dim", dim), ("hot", hot)):
        PIL.Image.fromarray(arr).save(tmp_path / f"{name}.png")
    assert read_rgb(tmp_path / "dim.png", max_pixels=10**6)[1, 1, 0] == 1500 >> 4
    assert read_rgb(tmp_path / "hot.png", max_pixels=10**6)[1, 1, 0] == 1500 >> 4
    full = np.full((8, 8), 30000, np.uint16)
    PIL.Image.fromarray(full).save(tmp_path / "full.png")
    assert read_rgb(tmp_path / "full.png", max_pixels=10**6)[0, 0, 0] == 30000 >> 8
    # 8-bit values in a 16-bit file stay as they are; an all-black one stays black
    eight = (values >> 8).astype(np.uint16)
    PIL.Image.fromarray(eight).save(tmp_path / "g8.png")
    assert np.array_equal(read_rgb(tmp_path / "g8.png", max_pixels=10**6)[..., 0], eight)
    PIL.Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "g0.png")
    assert read_rgb(tmp_path / "g0.png", max_pixels=10**6).max() == 0
    for mode in ("I", "F"):
        path = tmp_path / f"grey_{mode}.tif"
        PIL.Image.fromarray(values).convert(mode).save(path)
        with pytest.raises(ImageError, match=f"^{path}: 32-bit .* grey image .*no 8-bit scale"):
            read_rgb(path, max_pixels=10**6)


def test_signed_16_bit_grey_is_scaled_with_negatives_black(tmp_path) -> None:
    """A signed 16-bit TIFF (SampleFormat 2; Pillow opens it as mode I, raw mode I;16S:
    there is no I;16S image mode) was refused as a "32-bit integer" image. Negative values
    are clipped to black, and the positive range (at most 15 bits) is scaled like unsigned
    16-bit: the top 8 bits of the smallest 8/10/12/14/15-bit depth holding the maximum."""
    from histocore.imaging import read_rgb

    def signed_tiff(name: str, values: np.ndarray) -> Path:
        path = tmp_path / name
        # Pillow writes no signed 16-bit mode; the bytes of I;16 with SampleFormat=2 are one
        PIL.Image.fromarray(values.astype("<i2").view("<u2")).save(path, tiffinfo={339: 2})
        with PIL.Image.open(path) as im:  # what a camera's signed file opens as
            args = im.tile[0][3]
            assert im.mode == "I" and args is not None and args[0] == "I;16S"
            assert np.array_equal(np.asarray(im), values)
        return path

    full = np.array([[-32768, -100, 0, 100], [1000, 16384, 32000, 32767]])
    got = read_rgb(signed_tiff("full.tif", full), max_pixels=10**6)
    assert got.dtype == np.uint8 and got.shape == (2, 4, 3)
    assert got[..., 0].tolist() == [[0, 0, 0, 100 >> 7], [1000 >> 7, 128, 32000 >> 7, 255]]
    # 12-bit camera data with negative noise (dark-frame subtraction): 0..4095 → 0..255
    twelve = np.array([[-5, -1, 0, 16], [1000, 2048, 4000, 4095]])
    got12 = read_rgb(signed_tiff("twelve.tif", twelve), max_pixels=10**6)[..., 0]
    assert got12.tolist() == [[0, 0, 0, 1], [1000 >> 4, 128, 4000 >> 4, 255]]
    # all negative is black, not white (the values wrapped to 65535 when read as unsigned)
    assert read_rgb(signed_tiff("neg.tif", np.full((2, 2), -7)), max_pixels=10**6).max() == 0


def _big_endian_deflate_signed16_tiff(values: np.ndarray) -> bytes:
    """A one-strip big-endian ("MM") Deflate TIFF of signed 16-bit samples (Pillow writes
    compressed TIFFs little-endian only)."""
    import struct
    import zlib

    h, w = values.shape
    strip = zlib.compress(values.astype(">i2").tobytes())
    tags = [  # (tag, type SHORT=3 / LONG=4, value)
        (256, 4, w), (257, 4, h), (258, 3, 16), (259, 3, 8), (262, 3, 1),
        (273, 4, 0), (277, 3, 1), (278, 4, h), (279, 4, len(strip)), (339, 3, 2),
    ]  # fmt: skip
    ifd_size = 2 + 12 * len(tags) + 4
    offset = 8 + ifd_size  # the strip follows the IFD
    ifd = struct.pack(">H", len(tags))
    for tag, kind, value in tags:
        value = offset if tag == 273 else value
        packed = struct.pack(">HH", value, 0) if kind == 3 else struct.pack(">I", value)
        ifd += struct.pack(">HHI", tag, kind, 1) + packed
    return b"MM\x00\x2a" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0) + strip


def test_big_endian_compressed_signed_16_bit_is_refused_not_misread(tmp_path) -> None:
    """Pillow 11-13 decode such a file byte-swapped (-100 came out as -25345, 4095 as -241:
    a garbled image scored as a figure; raw mode ``I;16BS``); it is one error line instead.
    Pillow 10.3 opens it as native order (``I;16NS``) and decodes it right: it is read."""
    from histocore.imaging import ImageError, read_rgb

    values = np.array([[-100, 0, 4095, 2048]])
    path = tmp_path / "mm.tif"
    path.write_bytes(_big_endian_deflate_signed16_tiff(values))
    with PIL.Image.open(path) as im:  # the file is what it says: Pillow reads its header
        codec, args = im.tile[0][0], im.tile[0][3]
        assert (im.mode, im.size, codec) == ("I", (4, 1), "libtiff")
        assert args is not None and args[0] in ("I;16BS", "I;16NS")
        swapped = args[0] == "I;16BS"
    if not swapped:  # Pillow 10.x
        assert read_rgb(path, max_pixels=10**6)[..., 0].tolist() == [[0, 0, 255, 128]]
        return
    with pytest.raises(ImageError, match=f"^{path}: big-endian compressed signed 16-bit"):
        read_rgb(path, max_pixels=10**6)


def test_16_bit_colour_tiff_is_scaled_like_16_bit_grey(tmp_path) -> None:
    """Pillow has no 16-bit colour mode: it decoded a TIFF of 16-bit RGB samples by keeping
    each sample's top byte, so 12-bit colour camera data came out near-black (max 15 of 255).
    tifffile reads the 16 bits and the grey depth rule scales them, one depth for the three
    channels; byte order and Deflate compression do not matter; 16-bit alpha is composited
    onto white; ``max_side`` still shrinks."""
    import tifffile

    from histocore.imaging import read_rgb

    rng = np.random.default_rng(0)
    twelve = rng.integers(0, 4096, (40, 50, 3), dtype=np.uint16)
    twelve[0, 0] = 4095  # the brightest value sets the 12-bit depth
    for name, kwargs in {
        "le.tif": {},
        "be.tif": {"byteorder": ">"},
        "deflate.tif": {"compression": "zlib"},
    }.items():
        tifffile.imwrite(tmp_path / name, twelve, photometric="rgb", **kwargs)
        got = read_rgb(tmp_path / name, max_pixels=10**6)
        assert got.dtype == np.uint8 and got.shape == (40, 50, 3)
        assert np.array_equal(got, (twelve >> 4).astype(np.uint8)), name
    # one depth for all channels: a dim channel stays dim beside a bright one
    tinted = np.zeros((8, 8, 3), np.uint16)
    tinted[..., 0], tinted[..., 2] = 4000, 1000
    tifffile.imwrite(tmp_path / "tint.tif", tinted, photometric="rgb")
    assert read_rgb(tmp_path / "tint.tif", max_pixels=10**6)[0, 0].tolist() == [250, 0, 62]
    # full-range 16-bit keeps its top byte (what Pillow's decoding gave)
    full = rng.integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    full[0, 0] = 65535
    tifffile.imwrite(tmp_path / "full.tif", full, photometric="rgb")
    assert np.array_equal(read_rgb(tmp_path / "full.tif", max_pixels=10**6), full >> 8)
    # 16-bit alpha: transparent is white, opaque is the colour
    rgba = np.zeros((2, 2, 4), np.uint16)
    rgba[..., :3] = 4095
    rgba[0, 0] = [0, 0, 0, 0]
    rgba[1, 1] = [0, 0, 0, 65535]
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    got = read_rgb(tmp_path / "rgba.tif", max_pixels=10**6)
    assert got[0, 0].tolist() == [255] * 3 and got[1, 1].tolist() == [0] * 3
    # the pixel limit is checked first, on the declared size; max_side shrinks the result
    with pytest.raises(ImageTooLarge):
        read_rgb(tmp_path / "le.tif", max_pixels=1000)
    assert read_rgb(tmp_path / "le.tif", max_pixels=10**6, max_side=25).shape == (20, 25, 3)


def test_16_bit_colour_tiff_that_cannot_be_read_is_one_line(tmp_path) -> None:
    """A truncated 16-bit colour TIFF, and one compressed by a codec that tifffile decodes
    only with imagecodecs (LZW, JPEG...), are one ImageError naming the file, never a
    traceback or the near-black top-byte image."""
    import tifffile

    from histocore.imaging import read_rgb

    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.full((30, 30, 3), 4000, np.uint16), photometric="rgb")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"^{path}: cannot decode image"):
        read_rgb(path, max_pixels=10**6)
    if importlib.util.find_spec("imagecodecs") is not None:
        pytest.skip("imagecodecs is installed: tifffile decodes LZW itself")
    # an uncompressed file whose Compression tag says LZW
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        offset = tif.pages.first.tags["Compression"].valueoffset
    lzw = bytearray(data)
    lzw[offset : offset + 2] = (5).to_bytes(2, "little")
    (tmp_path / "lzw.tif").write_bytes(bytes(lzw))
    with pytest.raises(ImageError, match="LZW compression needs the imagecodecs package"):
        read_rgb(tmp_path / "lzw.tif", max_pixels=10**6)


def test_cut_header_is_named_and_pillow_warnings_stay_quiet(tmp_path) -> None:
    """Pillow warns ("Truncated File Read", "Corrupt EXIF data ...") before it gives up on a
    cut TIFF header; the warning was printed on stderr as two lines of Python source
    location beside our error line, whose reason said only "not an image format Pillow
    reads". The reason now names the format whose header is cut, and nothing else is
    printed; threads reading at once leave Python's warning machinery as it was (recording
    Pillow's warnings per call once left every later warning of the process in a list)."""
    import threading
    import warnings

    from histocore.imaging import read_rgb

    data = io.BytesIO()
    PIL.Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(data, "TIFF")
    for cut in (100, 20):
        path = tmp_path / f"cut{cut}.tif"
        path.write_bytes(data.getvalue()[:cut])
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(ImageError) as info:
                read_rgb(path, max_pixels=10**6)
        assert str(info.value) == (
            f"{path}: cannot decode image "
            "(TIFF header Pillow cannot read (cut short, damaged or an unsupported variant))"
        )
        assert [str(w.message) for w in seen] == []
    png = io.BytesIO()
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, "PNG")
    shown = warnings.showwarning

    def read_many(source: bytes) -> None:
        for _ in range(300):
            with contextlib.suppress(ImageError):
                read_rgb(source, max_pixels=10**6)

    sources = [data.getvalue()[:40], png.getvalue()] * 2
    threads = [threading.Thread(target=read_many, args=(b,)) for b in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.showwarning is shown
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn("ours", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["ours"]


def test_16_bit_colour_tiff_layouts(tmp_path) -> None:
    """Planar 16-bit colour (one plane per sample) was not recognised (Pillow's tiles say
    R, G, B) and came out garbled; an unspecified extra sample (RGBX) was taken for alpha
    (a white image); premultiplied alpha is read too."""
    import tifffile

    from histocore.imaging import read_rgb

    colour = np.zeros((6, 7, 3), np.uint16)
    colour[...] = (4000, 2000, 1000)
    want = [4000 >> 4, 2000 >> 4, 1000 >> 4]
    planes = np.moveaxis(colour, -1, 0)  # (3, H, W)
    tifffile.imwrite(tmp_path / "planar.tif", planes, photometric="rgb", planarconfig="separate")
    with PIL.Image.open(tmp_path / "planar.tif") as im:  # what Pillow made of it
        assert [(t[3] or ("",))[0] for t in im.tile] == ["R", "G", "B"]
    assert (read_rgb(tmp_path / "planar.tif", max_pixels=10**6) == want).all()
    extra = np.concatenate([colour, np.zeros((6, 7, 1), np.uint16)], axis=2)
    tifffile.imwrite(tmp_path / "rgbx.tif", extra, photometric="rgb", extrasamples=["unspecified"])
    with PIL.Image.open(tmp_path / "rgbx.tif") as im:
        assert im.mode in ("RGB", "RGBX")  # Pillow ignores the extra sample: so do we
    assert (read_rgb(tmp_path / "rgbx.tif", max_pixels=10**6) == want).all()
    half = extra.copy()
    half[..., :3] //= 2  # premultiplied by an alpha of one half
    half[..., 3] = 32768
    tifffile.imwrite(
        tmp_path / "rgba_pre.tif", half, photometric="rgb", extrasamples=["assocalpha"]
    )
    got = read_rgb(tmp_path / "rgba_pre.tif", max_pixels=10**6)[0, 0]
    # depth from the brightest premultiplied value (2000: 12 bits), then white under half
    assert got.tolist() == [min(255, (2000 >> 4) + 127), (1000 >> 4) + 127, (500 >> 4) + 127]


def test_tifffile_log_lines_are_quiet_in_the_command_lines(tmp_path, capfd, fresh_logging) -> None:
    """tifffile logs what it skips in a damaged file (here a tag of unknown type 99) while
    the image still reads; Python's last-resort handler printed it bare on stderr in
    ``histomodels predict``. The command lines' logging setup shows it only with -v."""
    import tifffile

    from histocore.cli import setup_logging
    from histocore.imaging import read_rgb

    path = tmp_path / "tag99.tif"
    colour = np.full((8, 8, 3), 4000, np.uint16)
    tifffile.imwrite(path, colour, photometric="rgb", extratags=[(50000, "I", 1, 7, False)])
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages.first.tags[50000].offset
    data = bytearray(path.read_bytes())
    data[entry + 2 : entry + 4] = (99).to_bytes(2, "little")  # the tag's type field
    path.write_bytes(bytes(data))
    setup_logging()
    capfd.readouterr()
    assert (read_rgb(path, max_pixels=10**6) == 4000 >> 4).all()
    assert capfd.readouterr().err == ""
    setup_logging(verbose=True)
    read_rgb(path, max_pixels=10**6)
    assert "invalid data type 99" in capfd.readouterr().err


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied_as_a_viewer_does(tmp_path: Path, orientation: int) -> None:
    """A phone's portrait JPEG is stored sideways with EXIF orientation 6: ``predict`` scored
    and drew it unturned, so its tiles and heatmap did not match what a viewer shows (fuzz
    audit). Every orientation now gives what ``PIL.ImageOps.exif_transpose`` gives, at full
    size and shrunk, and the size is the turned one."""
    import PIL.Image
    import PIL.ImageOps

    from histocore.imaging import read_rgb_sized

    rng = np.random.default_rng(orientation)
    pixels = np.repeat(np.repeat(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8), 16, 0), 16, 1)
    path = tmp_path / "photo.png"  # lossless, so the comparison is exact
    im = PIL.Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif)
    with PIL.Image.open(path) as opened:
        shown = np.asarray(PIL.ImageOps.exif_transpose(opened).convert("RGB"))
    rgb, size = read_rgb_sized(path, max_pixels=10**6)
    assert np.array_equal(rgb, shown)
    assert size == (shown.shape[1], shown.shape[0])
    small, _ = read_rgb_sized(path, max_pixels=10**6, max_side=48)
    assert small.shape[:2] == ((48, 32) if orientation < 5 else (32, 48))


@pytest.mark.parametrize("orientation", [1, 2, 3, 6, 8])
@pytest.mark.parametrize("kind", ["rgb8", "grey16", "rgb16"])
def test_a_tiff_is_turned_once(tmp_path: Path, orientation: int, kind: str) -> None:
    """Pillow turns a TIFF by its orientation tag as it loads it (and drops the tag): the
    reader turned it a second time (review of bc1baad: 2-5 and 7 came out as stored, 6 and
    8 upside down). Compared with what Pillow's own exif_transpose shows."""
    import PIL.Image
    import PIL.ImageOps
    import tifffile

    from histocore.imaging import read_rgb_sized

    rng = np.random.default_rng(orientation)
    if kind == "rgb8":
        pixels = np.repeat(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8), 8, 0)
    elif kind == "rgb16":  # read by tifffile, turned by us (review 4: 5-8 were refused)
        pixels = np.repeat(rng.integers(0, 65536, (6, 4, 3), dtype=np.uint16), 8, 0)
    else:
        pixels = np.repeat(rng.integers(0, 65536, (6, 4), dtype=np.uint16), 8, 0)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, pixels, extratags=[(274, "H", 1, orientation, True)])
    rgb, size = read_rgb_sized(path, max_pixels=10**6)
    with PIL.Image.open(path) as opened:
        shown = PIL.ImageOps.exif_transpose(opened)
        assert shown is not None
        expected_size = shown.size
        if kind == "rgb8":
            assert np.array_equal(rgb, np.asarray(shown.convert("RGB")))
    assert size == expected_size == (rgb.shape[1], rgb.shape[0])
    if kind != "grey16":  # (Pillow 13 loads a 16-bit grey TIFF as stored and drops its tag;
        turned = orientation in (5, 6, 7, 8)  # its own exif_transpose shows it so too)
        assert rgb.shape[:2] == ((4, 48) if turned else (48, 4))
    if kind == "rgb16":  # the same turn as Pillow gives the 8-bit copy of the pixels
        copy = tmp_path / "copy8.tif"
        tifffile.imwrite(
            copy, (pixels >> 8).astype(np.uint8), extratags=[(274, "H", 1, orientation, True)]
        )
        assert np.array_equal(rgb, read_rgb_sized(copy, max_pixels=10**6)[0])


def test_a_damaged_png_with_exif_is_refused_not_half_decoded(tmp_path: Path) -> None:
    """Reading the EXIF orientation before decoding made Pillow load a PNG inside the
    orientation check, whose error was swallowed; the later decode then returned the
    half-filled buffer (review of bc1baad: 268 of 300 rows black, scored as an image)."""
    import PIL.Image

    from histocore.imaging import ImageError, read_rgb

    rng = np.random.default_rng(0)
    path = tmp_path / "d.png"
    PIL.Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    idat = data.find(b"IDAT")
    data[idat + 200] ^= 0xFF  # a byte inside the compressed pixels
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"d\.png: cannot decode image"):
        read_rgb(path, max_pixels=10**6)


def test_an_os_error_names_the_file_once(tmp_path: Path) -> None:
    """An OSError's text repeats its path: a link loop among the images said
    ``loop.png: cannot decode image ([Errno 40] Too many levels of symbolic links:
    'loop.png')``; now the problem alone, the file named once."""
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(ImageError) as info:
        read_rgb(loop, max_pixels=10**6)
    assert str(info.value) == f"{loop}: cannot decode image (too many levels of symbolic links)"
    assert str(loop) not in info.value.reason
