"""Reading untrusted image files under an explicit pixel limit, and cutting images into tiles.

Pixel limits. Every reader names its own limit per call (``max_pixels``); the size an image
*declares* in its header is compared with it before any pixel is decoded, so a small file
declaring gigapixels (a decompression bomb) costs nothing. ``PIL.Image.MAX_IMAGE_PIXELS`` is
never changed: Pillow's warning above it is silenced inside these calls (our own check
decides), and Pillow's process-wide refusal above twice it stays a ceiling that no per-call
limit can lift (an application that needs larger images raises Pillow's setting itself; the
error then says so, it is never silent). A file that is missing, truncated, corrupt or not
an image raises one :class:`ImageError` whose one-line message names the file.

Tiles. :func:`tile` is the one tiler (``histomodels predict`` and the manifest tile dataset
behind ``histomodels eval --manifest`` both use it, so they keep the same tiles of a figure):
a grid every ``stride`` px whose phase follows where tissue starts (a figure's white margin
does not cut every tile; tissue at the corner gives the plain grid from ``(0, 0)``); pixels
beyond the last full tile are not covered. :func:`tissue_fraction` is the one tissue test
for tiles: the share of pixels with HSV saturation above 0.07 that are not near-black (value
above 0.15), as in common whole-slide tissue masks; white glass, grey chart ink and black
borders are not tissue.
(histofetch's H&E filter judges blocks with its own, stricter H&E colour rule, and its
shipped classifier keeps the input grid it was trained on; neither is a tissue test.)
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import PIL.TiffImagePlugin

from histocore.errors import DomainError

#: What can be read: a path, or the encoded bytes of a file.
Source = str | Path | bytes

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageError(DomainError, ValueError):
    """An image file that cannot be used (unreadable, truncated, not an image, too large)."""

    def __init__(self, what: str, problem: str, reason: str | None = None) -> None:
        super().__init__(f"{what}: {problem}")
        self.what, self.problem = what, problem
        #: The decoder's own one-line reason, for callers that word the problem themselves.
        self.reason = reason or problem


class ImageTooLarge(ImageError):
    """An image declaring more pixels than the limit; nothing of it was decoded."""

    def __init__(
        self,
        what: str,
        limit: int,
        size: tuple[int, int] | None,
        pixels: int | None,
        problem: str | None = None,
    ) -> None:
        self.limit, self.size = limit, size
        self.pixels = size[0] * size[1] if size else pixels
        #: ``"WxH"`` when the header was read, else ``"N"`` (Pillow refused it first).
        self.declared = f"{size[0]}x{size[1]}" if size else str(pixels or "too many")
        super().__init__(
            what,
            problem
            or f"{self.declared} pixels exceeds the limit of {limit} (possible decompression bomb)",
        )


def pil_ceiling() -> int | None:
    """Pillow's process-wide refusal threshold (twice ``PIL.Image.MAX_IMAGE_PIXELS``), if any."""
    limit = PIL.Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * limit


def _name(source: Source, what: str | None) -> str:
    if what is not None:
        return what
    return "image" if isinstance(source, bytes) else str(source)


def _reason(exc: BaseException) -> str:
    """``exc``'s first line; an OSError with a file name gives its problem alone (its text
    repeats the path the message names already: ``loop.png: cannot decode image ([Errno
    40] Too many levels of symbolic links: 'loop.png')``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    return text or type(exc).__name__


#: The first bytes of the formats whose damaged header Pillow reports as "not identified".
_MAGIC = {
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF", b"BM": "BMP",
}  # fmt: skip


def _unreadable(source: Source) -> str:
    """Why Pillow identified no format: an empty file (cut to nothing, an empty download),
    a known format whose header it cannot read (a partial download, damage, or a variant
    it has no mode for), or not an image format."""
    try:
        if isinstance(source, bytes):
            head = source[:8]
        else:
            with open(source, "rb") as f:
                head = f.read(8)
    except OSError:
        return "not an image format Pillow reads"
    if not head:
        return "empty file"
    kind = next((k for m, k in _MAGIC.items() if head.startswith(m)), None)
    if kind is None or (kind == "BMP" and len(head) < 8):
        return "not an image format Pillow reads"
    return f"{kind} header Pillow cannot read (cut short, damaged or an unsupported variant)"


def _raised_in(exc: BaseException, package: str) -> bool:
    """True when the innermost Python frame of ``exc`` is in ``package``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return module == package or module.startswith(package + ".")


def raised_in_pil(exc: BaseException) -> bool:
    """True when the innermost Python frame of ``exc`` is Pillow's (bad input, not our bug)."""
    return _raised_in(exc, "PIL")


def _bad_input(exc: BaseException) -> bool:
    """Exceptions that mean the file is broken or hostile (the others are programmer bugs)."""
    import struct
    import zlib

    broken = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error)
    return isinstance(exc, broken) or raised_in_pil(exc)


def _refused(name: str, max_pixels: int, exc: PIL.Image.DecompressionBombError) -> ImageTooLarge:
    """Pillow's own ceiling refused the header: say which limit it was."""
    found = _BOMB_PIXELS.search(str(exc))
    pixels = int(found.group(1)) if found else None
    ceiling = pil_ceiling()
    if pixels is not None and pixels <= max_pixels and ceiling is not None:
        why = (
            f"{pixels} pixels is within the limit of {max_pixels} but over Pillow's "
            f"process-wide limit of {ceiling} (raise PIL.Image.MAX_IMAGE_PIXELS to read it)"
        )
        return ImageTooLarge(name, ceiling, None, pixels, why)
    return ImageTooLarge(name, max_pixels, None, pixels)


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Pillow's warnings silenced while a file is opened and used: its bomb warning (our
    own limit decides) and the ``UserWarning`` lines it prints on stderr about damaged files
    ("Truncated File Read", "Corrupt EXIF data"...), beside the one error line or for a file
    that reads anyway. Filters only (nothing recorded): ``catch_warnings`` is process-wide,
    so with threads reading at once one thread's exit can let another's Pillow warning
    through, or leave these two narrow filters in place; nothing worse."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def _check_regular(path: str | Path, name: str) -> None:
    """Refuse a FIFO, socket or device before opening it: opening a FIFO blocks until a
    writer comes (a named pipe among a folder's images hung every reader), and a device
    such as ``/dev/zero`` never ends. Links are followed: their target is checked."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageError(name, "file not found") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ImageError(name, f"cannot decode image ({_reason(exc)})", _reason(exc)) from None
    if stat.S_ISDIR(mode):
        raise ImageError(name, "is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageError(name, "not a regular file (a pipe, socket or device)")


@contextmanager
def open_image(
    source: Source, *, max_pixels: int, what: str | None = None
) -> Iterator[PIL.Image.Image]:
    """Open ``source`` lazily after checking its declared size against ``max_pixels``.

    Nothing is decoded yet: use the image inside the ``with`` block (``draft``, ``convert``,
    ``thumbnail``...); errors raised there are the caller's (use :func:`read_rgb` to have
    decoding errors mapped too). ``what`` names the file in messages (default: the path).
    Raises :class:`ImageTooLarge` or :class:`ImageError`.
    """
    name = _name(source, what)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    if not isinstance(source, bytes):
        _check_regular(source, name)
    try:
        with _quiet_pillow():
            im = PIL.Image.open(fp)
    except PIL.Image.DecompressionBombError as exc:
        raise _refused(name, max_pixels, exc) from None
    except FileNotFoundError:
        raise ImageError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageError(name, "is a folder, not an image file") from None
    except PIL.UnidentifiedImageError:  # its text repeats the path, or names a BytesIO's address
        reason = _unreadable(source)
        raise ImageError(name, f"cannot decode image ({reason})", reason) from None
    except Exception as exc:
        if not _bad_input(exc):
            raise
        raise ImageError(name, f"cannot decode image ({_reason(exc)})", _reason(exc)) from None
    with im:
        if isinstance(im, PIL.ImageFile.StubImageFile):  # identified, never decoded (HDF5…)
            reason = f"{im.format} data, not an image"
            raise ImageError(name, f"cannot decode image ({reason})", reason)
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError(name, f"cannot decode image (declares a size of {width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(name, max_pixels, (width, height), None)
        with _quiet_pillow():
            yield im


def read_rgb(
    source: Source,
    *,
    max_pixels: int,
    what: str | None = None,
    max_side: int | None = None,
    rgb_only: bool = False,
) -> np.ndarray:
    """Decode ``source`` to uint8 RGB ``[H, W, 3]`` under ``max_pixels`` (declared size).

    Transparency is composited onto white (what a reader sees on a page). ``max_side``
    shrinks the image so its longest side is at most that (JPEG decodes at reduced size,
    then bilinear). ``rgb_only`` refuses any mode but RGB (patch datasets). 16-bit grey,
    unsigned or signed, and 16-bit colour TIFF keep 8 of the bits they use (negative values
    are black: :func:`_grey16_to_8`); 32-bit grey is refused. An EXIF/TIFF orientation is
    applied once, as ``PIL.ImageOps.exif_transpose`` applies it. Raises :class:`ImageTooLarge` or
    :class:`ImageError` naming the file.
    """
    return read_rgb_sized(
        source, max_pixels=max_pixels, what=what, max_side=max_side, rgb_only=rgb_only
    )[0]


def read_rgb_sized(
    source: Source,
    *,
    max_pixels: int,
    what: str | None = None,
    max_side: int | None = None,
    rgb_only: bool = False,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_rgb`, and the ``(width, height)`` of the file (before ``max_side``; after
    its orientation)."""
    name = _name(source, what)
    with open_image(source, max_pixels=max_pixels, what=name) as im:
        if rgb_only and im.mode != "RGB":
            raise ImageError(name, f"image mode {im.mode}, expected RGB")
        return _decoded(im, name, source, max_side, max_pixels)


def pil_to_rgb(im: PIL.Image.Image, *, what: str = "image") -> np.ndarray:
    """A PIL image (opened from a file or made in memory) as uint8 RGB ``[H, W, 3]``,
    decoded as :func:`read_rgb` decodes a file, so an image scores the same however it is
    handed over: transparency composited onto white, 16-bit grey scaled by the depth it
    uses, the EXIF orientation applied; 32-bit grey (modes ``I``, ``F``) is refused, as
    is a 16-bit colour TIFF opened from bytes (Pillow keeps each sample's top byte: give
    its path). ``Image.convert("RGB")`` turned alpha 128 black, clipped 12-bit grey at
    255 and made [0, 1] floats black. Raises :class:`ImageError` naming ``what``."""
    with _quiet_pillow():
        return _decoded(im, what, None, None, None)[0]


def _decoded(
    im: PIL.Image.Image,
    name: str,
    source: Source | None,
    max_side: int | None,
    max_pixels: int | None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_rgb_sized`'s decoding of the open ``im`` (``source``: its file, None for
    an image handed over in memory), shared with :func:`pil_to_rgb`."""
    signed = _signed16(im, name)
    if im.mode in ("I", "F") and not signed:  # convert("RGB") would clip at 255
        kind = "float" if im.mode == "F" else "integer"
        raise ImageError(
            name,
            f"32-bit {kind} grey image (mode {im.mode}) has no 8-bit scale; save it as 8-bit",
        )
    size = im.size
    try:
        if _colour16(im):  # tifffile's pixels, as stored; Pillow's size is already turned
            turn = _orientation(im)  # (not loaded by Pillow: its tag is still there)
            stored = (size[1], size[0]) if turn in _SWAPS_SIDES else size
            source = source if source is not None else getattr(im, "filename", None) or None
            if source is None:  # opened from bytes: its 16-bit samples are not at hand
                raise ImageError(
                    name,
                    "16-bit colour TIFF opened from memory cannot be read at full depth; "
                    "give its path",
                )
            rgb = _decode_colour16(source, name, im.mode, stored, max_side)
            return _orient(rgb, turn), size
        rgb = _decode(im, max_side, signed)
    except PIL.Image.DecompressionBombError as exc:  # a later frame or tile over Pillow's
        if max_pixels is None:  # an image handed over: Pillow's own limit refused it
            raise ImageError(name, f"cannot decode image ({_reason(exc)})") from None
        raise _refused(name, max_pixels, exc) from None
    except ImageError:
        raise
    except Exception as exc:
        if not _bad_input(exc):
            raise
        reason = _reason(exc)
        raise ImageError(name, f"cannot decode image ({reason})", reason) from None
    # read once decoded: a PNG's eXIf may follow its pixels (getexif() would load them,
    # outside the error mapping above), and Pillow turns a TIFF itself as it loads it
    # (then drops the tag; a 16-bit grey one it loads as stored, its size at open
    # notwithstanding: the loaded size is the TIFF's, which has no draft)
    if isinstance(im, PIL.TiffImagePlugin.TiffImageFile):
        size = im.size
    turn = _orientation(im)
    if turn in _SWAPS_SIDES:
        size = (size[1], size[0])
    return _orient(rgb, turn), size


#: EXIF/TIFF orientation -> the transposition that shows the image as a viewer does
#: (``PIL.ImageOps.exif_transpose``'s table)
_TRANSPOSE = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT,
    3: PIL.Image.Transpose.ROTATE_180,
    4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    5: PIL.Image.Transpose.TRANSPOSE,
    6: PIL.Image.Transpose.ROTATE_270,
    7: PIL.Image.Transpose.TRANSVERSE,
    8: PIL.Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (5, 6, 7, 8)


def _orientation(im: PIL.Image.Image) -> int:
    """The image's EXIF (or TIFF) orientation, 1 (as stored) when absent or unreadable:
    a camera's portrait JPEG is stored sideways with 6 or 8, which viewers turn. Read it
    after decoding (Pillow has then turned a TIFF itself and dropped its tag)."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception as exc:  # a damaged EXIF block is no reason to refuse the pixels
        if not _bad_input(exc):
            raise
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _orient(rgb: np.ndarray, turn: int) -> np.ndarray:
    """``rgb`` turned by the orientation ``turn`` (see :func:`_orientation`)."""
    if turn not in _TRANSPOSE:
        return rgb
    return np.asarray(PIL.Image.fromarray(rgb).transpose(_TRANSPOSE[turn]), dtype=np.uint8)


def _decode(im: PIL.Image.Image, max_side: int | None, signed16: bool = False) -> np.ndarray:
    if max_side is not None:
        im.draft("RGB", (max_side, max_side))
    if im.mode.startswith("I;16") or signed16:  # 16-bit grey (convert() clips at 255)
        im = PIL.Image.fromarray(_grey16_to_8(np.asarray(im)), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = PIL.Image.alpha_composite(white, rgba)
    if im.mode != "RGB" or max_side is not None:
        im = im.convert("RGB")  # loaded and detached: thumbnail must not re-draft the file
    if max_side is not None and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), PIL.Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _colour16(im: PIL.Image.Image) -> bool:
    """Whether ``im`` (not yet loaded) is a TIFF of 16-bit colour samples, interleaved or
    planar, which Pillow decodes to 8 bits by keeping each sample's top byte (it has no
    16-bit colour mode): 12-bit camera data came out near-black."""
    if not isinstance(im, PIL.TiffImagePlugin.TiffImageFile) or im.mode == "CMYK":
        return False
    bits = im.tag_v2.get(258)  # BitsPerSample, one per sample
    bits = bits if isinstance(bits, tuple) else (bits,)
    return len(bits) >= 3 and all(b == 16 for b in bits)


#: Rows converted at a time from 16 to 8 bits (16-bit colour TIFFs).
_BAND_ROWS = 256


def _decode_colour16(
    source: Source, name: str, mode: str, size: tuple[int, int], max_side: int | None
) -> np.ndarray:
    """The first page of a 16-bit colour TIFF read by tifffile, scaled to 8 bits by
    :func:`_grey16_to_8`'s depth rule over the colour samples (one depth for all three, so
    colours keep their balance). Alpha (Pillow's ``mode`` RGBA; premultiplied or not)
    keeps its top byte and is composited onto white; an unspecified extra sample (RGBX) is
    ignored, as Pillow does. Pillow has checked the declared size; tifffile must agree."""
    import tifffile

    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    compression = "its"
    try:
        with tifffile.TiffFile(fp) as tif:
            page = tif.pages.first
            compression = getattr(page.compression, "name", "its")
            shape = (page.imagelength, page.imagewidth)
            if shape != size[::-1] or page.dtype != np.uint16:
                raise ImageError(name, "cannot decode image (its 16-bit TIFF tags disagree)")
            values = page.asarray()
            premultiplied = tuple(page.extrasamples[:1]) == (1,)  # ExtraSamples ASSOCALPHA
            if page.axes.startswith("S"):  # planar: one plane per sample
                values = np.moveaxis(values, 0, -1)
    except ImageError:
        raise
    except Exception as exc:
        if not (_bad_input(exc) or _raised_in(exc, "tifffile")):
            raise
        if "imagecodecs" in str(exc):  # LZW, JPEG...: tifffile decodes only a few itself
            raise ImageError(
                name,
                f"16-bit colour TIFF with {compression} compression needs the imagecodecs "
                "package to be read at full depth: pip install imagecodecs, or save it as 8-bit",
            ) from None
        raise ImageError(name, f"cannot decode image ({_reason(exc)})", _reason(exc)) from None
    if values.shape[:2] != shape or values.ndim != 3 or values.shape[2] < 3:
        raise ImageError(name, f"cannot decode image (16-bit TIFF of shape {values.shape})")
    shift = _shift16(values[..., :3])
    rgb = np.empty((*shape, 3), np.uint8)
    for top in range(0, shape[0], _BAND_ROWS):  # row bands: no full-size temporaries
        band = values[top : top + _BAND_ROWS]
        colour = band[..., :3] >> shift
        if mode == "RGBA":  # onto white, as _decode does for 8-bit images
            alpha = band[..., 3:4] >> 8
            own = colour if premultiplied else colour * alpha // 255
            colour = np.minimum(own + (255 - alpha), 255)
        rgb[top : top + _BAND_ROWS] = colour
    return _decode(PIL.Image.fromarray(rgb, "RGB"), max_side)


def _signed16(im: PIL.Image.Image, name: str) -> bool:
    """Whether ``im`` (not yet loaded) decodes signed 16-bit samples: Pillow has no signed
    16-bit image mode and opens them (TIFF SampleFormat 2) as 32-bit mode ``I`` with raw
    mode ``I;16S``/``I;16BS``; only the tile says so. A big-endian one that libtiff
    decodes (compressed) comes out byte-swapped: :class:`ImageError`."""
    if im.mode != "I" or not isinstance(im, PIL.ImageFile.ImageFile) or not im.tile:
        return False
    codec, args = im.tile[0][0], im.tile[0][3]
    rawmode = args if isinstance(args, str) else args[0] if args else None
    if codec == "libtiff" and rawmode == "I;16BS":  # libtiff hands over native order
        raise ImageError(
            name,
            "big-endian compressed signed 16-bit TIFF (Pillow swaps its bytes); save it "
            "uncompressed, unsigned or as 8-bit",
        )
    return rawmode in ("I;16S", "I;16BS", "I;16NS")


def _grey16_to_8(values: np.ndarray) -> np.ndarray:
    """16-bit grey (unsigned, or signed as ``int16``/``int32``) as 8 bits. Microscope cameras
    store 10-, 12- or 14-bit values in 16-bit files (no header says so): keeping the file's
    top byte made a 12-bit image near-black. The depth taken is the smallest of 8, 10, 12,
    14 or 16 bits that holds the brightest value, and its top 8 bits are kept: full-range
    16-bit data (brightest value 16384 or more) keeps its top byte as before, and one hot
    pixel cannot change a 12-bit image's scale (it still fits 12 bits).

    Signed data: negative values (noise below a subtracted dark frame) are clipped to 0,
    black, and the depth is at most 15 bits (its largest value, 32767, is white); shifting
    by 32768 instead would make every 12-bit signed image a flat mid-grey."""
    signed = np.issubdtype(values.dtype, np.signedinteger)
    values = np.maximum(values, 0).astype(np.uint16) if signed else values.astype(np.uint16)
    return (values >> _shift16(values, signed)).astype(np.uint8)


def _shift16(values: np.ndarray, signed: bool = False) -> int:
    """How far :func:`_grey16_to_8`'s depth rule shifts ``values`` right (its depth - 8)."""
    used = int(values.max(initial=0)).bit_length()
    return min(15 if signed else 16, max(8, used + used % 2)) - 8  # rounded up to an even depth


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize uint8 ``[H, W, 3]`` by ``scale`` (sides rounded, at least 1 px): box filter
    when shrinking, Lanczos when enlarging; the same array when the size does not change."""
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return image
    resample = PIL.Image.Resampling.BOX if scale < 1 else PIL.Image.Resampling.LANCZOS
    return np.asarray(PIL.Image.fromarray(image).resize((nw, nh), resample))


def tissue_fraction(patches: np.ndarray) -> np.ndarray:
    """Share of each patch's pixels that look like stained tissue, ``float [N]``.

    ``patches`` is uint8 ``[N, H, W, 3]``. A pixel is tissue when its HSV saturation is above
    0.07 and its value above 0.15 (not white glass, not grey ink, not a black border).
    """
    x = patches.astype(np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    tissue = (sat > 0.07) & (mx > 0.15)
    return tissue.reshape(len(patches), -1).mean(1)


@dataclass
class Tiles:
    """Square tiles cut from one image, with where they came from."""

    patches: np.ndarray  # uint8 [N, size, size, 3]
    boxes: np.ndarray  # int64 [N, 4]: x0, y0, x1, y1 in the image's pixels
    tissue: np.ndarray  # float [N]: tissue_fraction of each tile
    size: int
    stride: int
    origin: tuple[int, int] = (0, 0)  # x, y where the grid starts

    @property
    def xy(self) -> np.ndarray:
        """Top-left corners ``int64 [N, 2]`` (x, y)."""
        return self.boxes[:, :2]

    @property
    def grid(self) -> np.ndarray:
        """Row and column of each tile on the stride grid, ``int64 [N, 2]``."""
        return (self.boxes[:, [1, 0]] - np.array(self.origin[::-1])) // self.stride


#: A row or column with at least this share of tissue pixels is where tissue starts.
TISSUE_EDGE_SHARE = 0.05


def tissue_origin(image: np.ndarray, stride: int) -> tuple[int, int]:
    """Grid phase ``(x, y)``: where tissue starts, modulo ``stride``; ``(0, 0)`` without tissue.

    Tissue starts at the first column (row) in which at least :data:`TISSUE_EDGE_SHARE` of
    the pixels pass the :func:`tissue_fraction` test, so a figure's white margin does not
    cut every tile at its edge. Computed in row bands to keep memory small.
    """
    h, w = image.shape[:2]
    rows, cols = np.zeros(h, np.int64), np.zeros(w, np.int64)
    for y in range(0, h, 512):
        band = image[y : y + 512]
        mx, mn = band.max(-1).astype(np.int32), band.min(-1).astype(np.int32)
        tissue = (mx > 38) & ((mx - mn) * 100 > 7 * mx)  # sat > 0.07, value > 0.15
        rows[y : y + len(band)] = tissue.sum(1)
        cols += tissue.sum(0)
    ys, xs = (
        np.flatnonzero(rows >= TISSUE_EDGE_SHARE * w),
        np.flatnonzero(cols >= TISSUE_EDGE_SHARE * h),
    )
    if not len(ys) or not len(xs):
        return 0, 0
    return int(xs[0]) % stride, int(ys[0]) % stride


def tile(
    image: np.ndarray,
    size: int = 96,
    stride: int | None = None,
    min_tissue: float = 0.0,
    *,
    origin: tuple[int, int] | None = None,
) -> Tiles:
    """Cut uint8 ``[H, W, 3]`` into ``size`` px tiles every ``stride`` px (default ``size``:
    non-overlapping), in row-major order.

    The grid starts at ``origin`` (x, y), by default :func:`tissue_origin`: where tissue
    starts, modulo the stride (``(0, 0)`` for an image with tissue at its corner or none);
    pixels before it and beyond the last full tile are not covered. Tiles whose
    :func:`tissue_fraction` is below ``min_tissue`` are left out. An image smaller than one
    tile gives no tiles.
    """
    stride = stride or size
    if size < 1 or stride < 1:
        raise ValueError(f"tile size and stride must be >= 1, got {size} and {stride}")
    h, w = image.shape[:2]
    ox, oy = tissue_origin(image, stride) if origin is None else origin
    if h - oy < size or w - ox < size:
        ox, oy = 0, 0  # too little room after the margin: the plain grid, if it fits
    if h < size or w < size:
        empty = np.empty((0, 4), np.int64)
        return Tiles(np.empty((0, size, size, 3), np.uint8), empty, np.empty(0), size, stride)
    ys, xs = np.arange(oy, h - size + 1, stride), np.arange(ox, w - size + 1, stride)
    window = np.lib.stride_tricks.sliding_window_view(image[oy:, ox:], (size, size, 3))
    view = window[::stride, ::stride, 0]
    patches = view.reshape(-1, size, size, 3)  # a copy: the window view is not contiguous
    tissue = tissue_fraction(patches)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    x0, y0 = xx.ravel(), yy.ravel()
    if min_tissue > 0:
        keep = np.flatnonzero(tissue >= min_tissue)
        patches, tissue, x0, y0 = patches[keep], tissue[keep], x0[keep], y0[keep]
    boxes = np.stack([x0, y0, x0 + size, y0 + size], axis=1).astype(np.int64)
    if not (patches.flags.writeable and patches.flags.c_contiguous):
        patches = patches.copy()  # a reshape that could stay a read-only window view
    return Tiles(patches, boxes, tissue, size, stride, (int(ox), int(oy)))
