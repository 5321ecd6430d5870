"""``histomodels predict``: probabilities for image files, folders, or large images tiled
into patches at the model's input size (96 px).

Every input's header is checked before any inference runs (readable, a sane size after
``--scale``, not a decompression bomb). A file that cannot be scored (there, or when its
pixels fail to decode) is skipped and the others are scored: the CSV (written once,
atomically, at the end) holds every row of every file that could be scored and none of the
others, and :func:`predict_paths` then raises :class:`SkippedInputs` naming each file left
out (the command: one ``error:`` line each, exit 1).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import io
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import numpy as np

if TYPE_CHECKING:
    from histomodels.inference import Predictor

from histocore import imaging
from histocore.csvcells import safe_cell
from histocore.errors import DomainError, UsageError, describe
from histocore.imaging import Tiles, rescale, tile
from histocore.imaging import tissue_fraction as tissue_fraction  # the one tissue test
from histocore.io import (
    make_parents,
    not_there,
    number_text,
    path_shown,
    replace_only_ours,
)
from histocore.progress import task

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}
#: Refuse images above this many pixels (8k x 8k: far beyond any figure or exported
#: region; whole-slide images need a WSI reader, not this command). ``--max-pixels``,
#: checked per call on the declared size (PIL's global limit is left alone).
MAX_PIXELS = 64_000_000
#: ``eval --scale``: a resized image under this many px a side is refused (PCam's label is
#: about the central 32x32 px of a patch: a smaller image holds less than that region)
MIN_SCALED_SIDE = 32
#: Magnification check: the nucleus size of the first images (a centre crop of each, after
#: ``--scale``) against PCam's; a median factor outside this band gets one warning.
SCALE_CHECK_IMAGES, SCALE_CHECK_CROP, SCALE_CHECK_BAND = 8, 256, (0.5, 2.0)
#: Greyscale check: a grey image counts only when at least this share of its pixels is
#: darker than white glass (grey level under 0.8 of full scale) and it is not one flat
#: shade (standard deviation at least GREY_CONTENT_STD levels): blank background tiles
#: (white, near-white JPEG, a black or flat grey tile) have R=G=B too.
GREY_CONTENT_SHARE, GREY_CONTENT_BELOW, GREY_CONTENT_STD = 0.05, 204, 2.0

#: The CSV's columns; new ones are appended, so readers by position keep working.
CSV_COLUMNS = ["path", "x", "y", "size", "tissue_fraction", "probability", "threshold", "tumour"]

log = logging.getLogger(__name__)


class PredictInputError(DomainError, ValueError):
    """An input that cannot be used; the message names the file."""


class OverPixelLimit(PredictInputError):
    """An image, or its size at ``scale``, over the caller's ``max_pixels`` (what the CLI's
    ``--max-pixels`` raises; Pillow's own process-wide ceiling is a plain
    :class:`PredictInputError`)."""


class TooSmall(PredictInputError):
    """An image smaller than one patch after ``scale``; ``scaled`` is its (width, height)
    then, ``size`` the patch's side."""

    def __init__(self, message: str, scaled: tuple[int, int], size: int) -> None:
        super().__init__(message)
        self.scaled, self.size = scaled, size

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (process pools)
        return type(self), (str(self), self.scaled, self.size)


class SkippedInputs(PredictInputError):
    """Files that could not be scored (``problems``: one error per file, in input order);
    the rest were, and ``summary`` is :func:`predict_paths`'s summary of them (its ``csv``
    is None when no file could be scored: nothing was written then)."""

    def __init__(self, problems: list[PredictInputError], summary: dict[str, Any]) -> None:
        self.problems, self.summary = problems, summary
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        done = summary.get("files") or 0
        wrote = f"; the other {done} file(s) were scored into {summary['csv']}" if done else ""
        super().__init__(f"{problems[0]}{more}{wrote}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (process pools): rebuilt from both
        return type(self), (self.problems, self.summary)


def _too_large(exc: imaging.ImageTooLarge, max_pixels: int) -> PredictInputError:
    kind = OverPixelLimit if exc.limit == max_pixels else PredictInputError
    return kind(str(exc))


def tile_image(image: np.ndarray, size: int = 96, stride: int | None = None) -> Tiles:
    """Cut ``image`` (uint8 HxWx3) into ``size`` patches every ``stride`` px (default:
    non-overlapping) with :func:`histocore.imaging.tile`, the tiler ``eval --manifest`` uses
    too. Every tile is kept (``tissue`` says how much tissue each holds)."""
    stride = stride or size
    if stride < 1:
        raise UsageError(f"tile stride must be >= 1, got {stride}")
    h, w = image.shape[:2]
    if h < size or w < size:
        raise PredictInputError(f"image is {w}x{h}, smaller than one {size}px patch")
    return tile(image, size, stride)


def image_tiles(
    image: np.ndarray, where: Path, *, size: int = 96, scale: float = 1.0, stride: int | None = None
) -> tuple[np.ndarray, Tiles]:
    """The image resized by ``scale`` (as ``--scale`` does) and its tiles (x/y in its pixels).
    An image under one patch is a :class:`TooSmall` naming ``where``: also one whose header
    (all :func:`check_inputs` reads) gave a size it does not decode to."""
    if scale != 1.0:
        image = scaled(image, scale, where, size)
    h, w = image.shape[:2]
    if h < size or w < size:  # tile_image's line names no file
        raise TooSmall(
            f"{where}: decodes to {w}x{h}, smaller than one {size}px patch", (w, h), size
        )
    return image, tile_image(image, size, stride)


def read_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image to uint8 RGB, refusing bombs and unreadable files with one line."""
    with _one_line(path, max_pixels):
        return imaging.read_rgb(path, max_pixels=max_pixels, what=str(path))


@contextlib.contextmanager
def _one_line(path: Path, max_pixels: int) -> Iterator[None]:
    """Reading ``path``'s image: its errors as one :class:`PredictInputError` line."""
    try:
        yield
    except imaging.ImageTooLarge as exc:
        raise _too_large(exc, max_pixels) from None
    except imaging.ImageError as exc:
        raise PredictInputError(f"{path_shown(path)}: cannot read image ({exc.reason})") from None
    except OSError as exc:  # a file that cannot be opened (permissions, I/O error)
        raise PredictInputError(describe(exc)) from None


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders walked recursively for image files (sorted)."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():  # a folder named like an image (slide1.tif/) is walked, not read
            found = sorted(
                f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir()
            )
            if not found:
                raise PredictInputError(f"{p}: folder holds no image files")
            files += found
        elif p.exists():  # a pipe or device too: the image reader refuses it with its reason
            files.append(p)
        else:
            raise PredictInputError(not_there(p))  # a link loop on the way: named
    return files


def check_inputs(
    files: list[Path],
    size: int,
    max_pixels: int = MAX_PIXELS,
    *,
    scale: float = 1.0,
    stride: int | None = None,
    tiles: dict[Path, int] | None = None,
) -> dict[Path, PredictInputError]:
    """Cheap header-only pass so a file that cannot be scored is known before any work.

    Returns those files, each with its problem (one that cannot be read, is over
    ``max_pixels``, or is smaller than one patch, all after ``scale``: ``--scale 16`` makes
    256x more pixels). The tiles at ``stride`` must fit the memory budget (``--tile-stride
    1`` makes ~size² more): a file over it stops the run (:class:`DatasetError`), since the
    option, not the file, is what to change. ``tiles``, when given, gets each other file's
    number of tiles (by its header: more than one gets a heatmap).
    """
    from histomodels.data.cache import require_memory

    step = stride or size
    if step < 1:
        raise PredictInputError(f"tile stride must be >= 1, got {step}")
    problems: dict[Path, PredictInputError] = {}
    several: list[tuple[Path, str]] = []  # files of several pages or frames
    for f in files:
        try:
            pages, unit, (sw, sh) = _check_file(f, size, max_pixels, scale)
        except PredictInputError as exc:
            problems[f] = exc
            continue
        if pages > 1:
            several.append((f, unit))
        n = ((sh - size) // step + 1) * ((sw - size) // step + 1)
        if tiles is not None:
            tiles[f] = n
        # uint8 patches + their float32 copy for the tissue fraction
        require_memory(n * size * size * 3 * 5, str(f), f"{n} tiles at stride {step}")
    _warn_pages(several, len(files) - len(problems))
    return problems


def _check_file(
    f: Path, size: int, max_pixels: int, scale: float
) -> tuple[int, str, tuple[int, int]]:
    """(1, or 2 for several pages, "pages" or "frames", (width, height) after ``scale``) of
    one file from its header; raises :class:`PredictInputError` when it cannot be scored."""
    with _one_line(f, max_pixels), imaging.open_image(f, max_pixels=max_pixels, what=str(f)) as im:
        w, h = im.size
        # a PSD's frames are its layers; what is read and scored is the flattened image
        pages = 1 if im.format == "PSD" else _pages(im)
        unit = "pages" if im.format == "TIFF" else "frames"
        sw, sh = scaled_size(f, w, h, scale, max_pixels)
        if sw < size or sh < size:  # after scale only: --scale 2 makes a 50 px image 100 px
            # too small in any orientation (a turn swaps the sides); said as the image is
            # seen and scored, after its EXIF/TIFF orientation (a portrait photo stored
            # sideways) when the header gives it, never by decoding the pixels (a 60x10^6
            # PNG cost 1.7 s and 0.46 GB more than this check)
            turn = _header_turn(im, f)
            if turn in (5, 6, 7, 8):
                w, h = h, w
            sw, sh = round(w * scale), round(h * scale)
            stored = " as stored" if turn is None else ""
            at = " is" if scale == 1 else f" at scale {number_text(scale)} is {sw}x{sh},"
            raise TooSmall(
                f"{f}: {w}x{h}{stored}{at} smaller than one {size}px patch", (sw, sh), size
            )
    return pages, unit, (sw, sh)


#: PNG chunks walked for an eXIf after the pixels (12 bytes read each): past this many, the
#: orientation is not looked for (a PNG can hold millions of tiny IDAT chunks)
MAX_PNG_CHUNKS = 100_000


def _header_turn(im: Any, f: Path) -> int | None:
    """The EXIF/TIFF orientation (1-8; 1 when absent or damaged, as the decoder takes it) of
    open image ``im`` (file ``f``) without decoding its pixels, or None when it cannot be
    read so. Pillow gives a TIFF's size already turned (1 here); a PNG's orientation is
    that of its last eXIf chunk, before or after the pixels (Pillow decodes with the last
    one it reads), found by walking the chunk headers; without one, or when that eXIf has
    no orientation tag, that of its XMP packet (``tiff:Orientation``, which the decoder
    falls back on as ``exif_transpose`` does) when its text chunks all come before the
    pixels (Pillow has read them at open), else None."""
    import PIL.Image

    if im.format == "TIFF":
        return 1
    try:
        if im.format == "PNG":  # not getexif(): the eXIf before the pixels, or a decode
            found = _png_exif_chunk(f)
            if found is None:
                return None
            data, text_after_pixels = found
            exif = PIL.Image.Exif()
            if data:
                exif.load(data)
            if 0x0112 not in exif:  # the decoder falls back on XMP (getexif's rule)
                if text_after_pixels:  # an XMP orientation there is known only once decoded
                    return None
                if data:  # an eXIf without an orientation: the XMP read at open
                    exif[0x0112] = _xmp_turn(im.info)
                else:  # the base class's: its XMP fallback over the text read at open
                    exif = PIL.Image.Image.getexif(im)
        else:
            exif = im.getexif()
        value = exif.get(0x0112, 1)
    except Exception as exc:  # a damaged EXIF block: the decoder ignores it too
        if isinstance(exc, MemoryError) or not imaging.raised_in_pil(exc):
            raise
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _xmp_turn(info: dict[str, Any]) -> int:
    """The ``tiff:Orientation`` of the XMP packet in an open image's ``info`` (1 when none),
    found as Pillow's ``Image.getexif`` finds it when the EXIF has no orientation."""
    import re

    xmp: Any = info.get("XML:com.adobe.xmp")
    pattern: Any = r'tiff:Orientation(="|>)([0-9])'
    if not xmp and (xmp := info.get("xmp")):
        pattern = rb'tiff:Orientation(="|>)([0-9])'
    match = re.search(pattern, xmp) if xmp else None
    return int(match[2]) if match else 1


def _png_exif_chunk(f: Path) -> tuple[bytes, bool] | None:
    """The data of PNG ``f``'s last eXIf chunk (the one Pillow's decoder keeps), ``b""``
    when it has none, and whether a text chunk (which may hold XMP) follows the pixels; or
    None when that is not known from its first :data:`MAX_PNG_CHUNKS` chunk headers (or a
    truncated file): only the headers are read, other chunks' data skipped."""
    import struct

    last, pixels, text_after = b"", False, False
    with open(f, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        for _ in range(MAX_PNG_CHUNKS):
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return last, text_after
            pixels = pixels or kind == b"IDAT"
            text_after = text_after or (pixels and kind in (b"iTXt", b"tEXt", b"zTXt"))
            skip = length
            if kind == b"eXIf":
                data = fh.read(min(length, 1 << 20))  # an orientation is in the first bytes
                last, skip = data.removeprefix(b"Exif\x00\x00"), length - len(data)
            fh.seek(skip + 4, 1)  # the (rest of the) data and its CRC
    return None


def scaled_size(
    where: Path | str, w: int, h: int, scale: float, max_pixels: int
) -> tuple[int, int]:
    """(width, height) of a ``w`` x ``h`` image resized by ``scale``, or an
    :class:`OverPixelLimit` naming ``where`` when that is over ``max_pixels``: the one check
    of ``predict --scale`` (before decoding) and ``eval --data --scale`` (before resizing)."""
    sw, sh = round(w * scale), round(h * scale)
    if sw * sh > max_pixels:
        raise OverPixelLimit(
            f"{where}: {w}x{h} at scale {number_text(scale)} is {sw}x{sh} pixels, "
            f"over the limit of {max_pixels}"
        )
    return sw, sh


def _pages(im: Any) -> int:
    """2 when an open image holds more than one page (TIFF) or frame (animated WebP, PNG,
    GIF), else 1. Only the second page is looked for: Pillow's ``n_frames`` walks every page
    of a TIFF to count them (slow on very many). A second page that cannot be read (a
    damaged page chain) counts as none: the first page is what is read, and is checked on
    decoding. MemoryError, interruptions and errors not raised inside Pillow propagate."""
    first = im.tell()  # 0, but 1 for a PSD: Pillow numbers its layers from 1
    try:
        im.seek(first + 1)
    except EOFError:
        return 1
    except Exception as exc:
        if isinstance(exc, MemoryError) or not imaging.raised_in_pil(exc):
            raise
        # The file is untrusted and the count is only a hint for a warning: Pillow's page
        # walk raises whatever a damaged IFD provokes (KeyError for an unknown compression
        # code, TypeError "Missing dimensions", struct.error, OSError ...).
        return 1
    with contextlib.suppress(EOFError):  # back to the first page (only its size is read)
        im.seek(first)
    return 2


def _warn_pages(several: list[tuple[Path, str]], n_files: int) -> None:
    """One warning when files hold several pages: only the first is read and scored."""
    if not several:
        return
    f, unit = several[0]
    if len(several) == 1:
        log.warning("%s: only the first of several %s is scored", f, unit)
    else:
        log.warning(
            "%d of %d file(s) hold several pages or frames: only the first of each is scored "
            "(e.g. %s)", len(several), n_files, f,
        )  # fmt: skip


#: PNG text chunk of every heatmap predict draws; its text is the CSV's absolute path
HEATMAP_MARK = "histomodels-predict-csv"


def _heatmap(img: np.ndarray, tiles: Tiles, probs: np.ndarray, size: int, target: Path,
             title: str, mark: str) -> None:  # fmt: skip
    from histomodels.plots import overlay_heatmap

    boxes = [
        (int(x), int(y), int(x) + size, int(y) + size, float(p))
        for (x, y), p in zip(tiles.xy, probs, strict=True)
    ]
    overlay_heatmap(img, boxes, target, title=title, metadata={HEATMAP_MARK: mark})


def _heatmap_mark(path: Path) -> str | None:
    """The text of the :data:`HEATMAP_MARK` chunk of the PNG file ``path`` (the CSV its
    heatmap was drawn for), read from its header only; None for a file without one or that
    is no readable PNG (not a PNG, a broken one, a bomb). A file that cannot be opened
    raises its ``OSError``: whether it holds the mark cannot be told."""
    from PIL import Image

    with open(path, "rb") as fh:
        try:  # PIL's UnidentifiedImageError is an OSError
            with Image.open(fh, formats=["PNG"]) as im:
                mark = im.info.get(HEATMAP_MARK)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
    return mark if isinstance(mark, str) else None


def _drawn_for(path: Path, mark: str) -> bool:
    """Whether ``path`` is a regular PNG file that predict drew for the CSV ``mark`` (its
    text chunk says so): the only kind of file a run removes that it did not write."""
    try:
        return not path.is_symlink() and path.is_file() and _heatmap_mark(path) == mark
    except OSError:
        return False


def is_a_heatmap(path: Path) -> bool:
    """Whether the regular file ``path`` is a PNG that predict drew (it carries the text
    chunk :data:`HEATMAP_MARK`, for whichever CSV): the only kind of file a heatmap is
    drawn over. A file that cannot be opened raises its ``OSError`` (whether it is a
    heatmap cannot be told); one that is not a readable PNG is not a heatmap."""
    return _heatmap_mark(path) is not None


def _refuse_to_draw_over_what_predict_did_not_draw(
    targets: dict[Path, Path], tiles: dict[Path, int]
) -> None:
    """A heatmap replaces only a heatmap predict drew earlier (:func:`is_a_heatmap`), an
    empty file or nothing: a PNG of the user's own at ``<heatmaps>/<stem>.png`` was
    replaced. Judged for every input that gets a heatmap (more than one tile, by its
    header) before anything is drawn, so a run refused stops before any work: one
    :class:`PredictInputError` naming the file."""
    for f, target in targets.items():
        if tiles.get(f, 0) > 1:
            _refuse_over_theirs(f, target)


def _refuse_over_theirs(f: Path, target: Path) -> None:
    """The check of :func:`_refuse_to_draw_over_what_predict_did_not_draw` for the heatmap
    of ``f`` at ``target``; run again right before the staged heatmaps are renamed."""
    replace_only_ours(
        target, is_a_heatmap, PredictInputError,
        not_ours=f"is not a heatmap predict drew (its PNG text chunk {HEATMAP_MARK!r} is "
        "missing)",
        would=f"the heatmap of {path_shown(f)} would replace it: give another --heatmaps or "
        "--no-heatmaps",
    )  # fmt: skip


def check_scale(scale: float) -> None:
    """A resize factor of ``predict --scale`` / ``eval --scale``: in (0, 16] (NaN fails too),
    else a :class:`UsageError`."""
    if not 0 < scale <= 16:
        raise UsageError(f"scale must be in (0, 16], got {scale}")


def predict_paths(
    checkpoint: str | Path,
    paths: Iterable[str | Path],
    out_csv: str | Path | TextIO,
    *,
    stride: int | None = None,
    scale: float = 1.0,
    heatmap_dir: str | Path | None = None,
    draw_heatmaps: bool = True,
    batch_size: int = 256,
    tta: bool = False,
    precision: str = "fp32",
    device: str | None = None,
    max_pixels: int = MAX_PIXELS,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Write one CSV row per patch (path, x, y, size, tissue_fraction, probability,
    threshold, tumour) and a heatmap PNG per image larger than one patch (unless
    ``draw_heatmaps`` is False: drawing one costs ~0.5 s, far more than scoring a small
    image). Returns a summary dict (with ``threshold`` and ``threshold_source``; ``files``:
    how many were scored). A heatmap is drawn only over nothing, an empty file or a heatmap
    predict drew (:func:`is_a_heatmap`): any other file at its name is a
    :class:`PredictInputError`, raised before anything is drawn or written.

    A file that cannot be scored (unreadable, over ``max_pixels``, smaller than one patch
    after ``scale``) is skipped and the others are scored and written; then
    :class:`SkippedInputs` is raised, naming each file left out, with the summary. No CSV
    is written when no file could be scored.

    ``tumour`` is ``yes`` when the probability reaches ``threshold`` (both as the row shows
    them, to 6 decimals): the one given, else
    the one shipped with the model (pretrained models), else 0.5.
    ``scale`` resizes each image first so it matches the model's training magnification
    (PCam is ~10x, ~0.97 um/px: use 0.25 for 40x tiles); x/y are then in resized pixels.

    ``out_csv`` may be an open text stream (``predict --out -``: standard output): the CSV
    is written to it whole once every file is scored, and heatmaps are drawn only into a
    ``heatmap_dir`` given (a stream has no folder to put them beside), marked as drawn for
    :data:`STREAM_MARK`; no earlier heatmap is removed (there is no CSV file whose they
    were); ``csv`` in the summary is then ``-``."""
    from histocore.io import atomic_write_text
    from histomodels.checkpoint import decision_threshold
    from histomodels.inference import Predictor

    check_scale(scale)
    if threshold is not None and not 0 <= threshold <= 1:  # NaN fails too
        raise UsageError(f"threshold must be in [0, 1], got {threshold}")
    files = collect_inputs(paths)
    stream = None if isinstance(out_csv, (str, Path)) else out_csv
    if stream is None:
        out_csv = Path(cast("str | Path", out_csv))
        _refuse_to_replace_what_is_read(out_csv, checkpoint, files)
        heat_dir = (Path(heatmap_dir) if heatmap_dir
                    else out_csv.with_name(out_csv.stem + "_heatmaps"))  # fmt: skip
        mark = str(out_csv.resolve())
    else:  # heatmaps only into a folder given, marked as drawn for no CSV file
        out_csv, mark = Path(STREAM), STREAM_MARK
        heat_dir = Path(heatmap_dir or ".")
        draw_heatmaps = draw_heatmaps and heatmap_dir is not None
    targets = heatmap_targets(files, heat_dir) if draw_heatmaps else {}
    if draw_heatmaps and stream is None:
        _refuse_csv_among_heatmaps(out_csv, heat_dir, targets)
    pred = Predictor.load(checkpoint, device=device, precision=precision)
    size = int(pred.ckpt.get("input_size", 96))
    cut, cut_source = decision_threshold(pred.ckpt, threshold)
    if threshold is None and pred.ckpt.get("threshold") is None:  # eval --val keeps only T
        cut_source = (
            "default 0.5 (the model ships no threshold; eval --val does not store the one it "
            "chose: give it as --threshold)"
        )
    tiles: dict[Path, int] = {}
    problems = check_inputs(files, size, max_pixels, scale=scale, stride=stride, tiles=tiles)
    _refuse_to_draw_over_what_predict_did_not_draw(targets, tiles)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    n_rows, scored, heatmaps = 0, 0, []
    staged: dict[Path, Path] = {}  # target: the file it is drawn into until the CSV is written
    try:
        n_rows, scored = _predict_files(pred, files, problems, w, targets, heatmaps, mark,
                                staged, size=size, scale=scale, stride=stride,
                                max_pixels=max_pixels, batch_size=batch_size, tta=tta,
                                threshold=cut)  # fmt: skip
        # judged again right before they go with the CSV: a file made at a heatmap's name
        # while later inputs were scored (minutes) was replaced by the rename
        for f, target in targets.items():
            if target in staged:
                _refuse_over_theirs(f, target)
        if scored and stream is not None:
            stream.write(buf.getvalue())
            stream.flush()
        elif scored:
            make_parents(out_csv)
            atomic_write_text(out_csv, buf.getvalue())
        for target, part in list(staged.items()):  # the heatmaps go with the CSV
            os.replace(part, target)
            del staged[target]
    except BaseException:  # nothing half written: an earlier run's heatmaps stay as they were
        for part in staged.values():
            part.unlink(missing_ok=True)
        raise
    if scored and stream is None:  # an input's heatmap for this CSV is now this run's or none
        drawn = set(heatmaps)
        for target in targets.values():
            if str(target) not in drawn and _drawn_for(target, mark):
                target.unlink(missing_ok=True)
    summary = {"files": scored, "rows": n_rows, "csv": str(out_csv) if scored else None,
               "heatmaps": heatmaps, "threshold": cut, "threshold_source": cut_source,
               "scale": scale, "scores_small_whole": _scores_small_whole(pred)}  # fmt: skip
    if problems:
        raise SkippedInputs([problems[f] for f in dict.fromkeys(files) if f in problems], summary)
    return summary


def _refuse_to_replace_what_is_read(out: Path, checkpoint: str | Path, files: list[Path]) -> None:
    """The CSV must not be written over the checkpoint (``predict RUN IMG --out
    RUN/best.pt`` replaced the trained weights with the CSV), its calibration sidecar, nor an
    input image, nor any file that is not an earlier predictions CSV: a
    :class:`PredictInputError` naming ``out``, before anything is read or written. An
    earlier run's CSV at ``out`` is replaced, as ``eval`` and ``export`` replace their
    earlier output. Judged by real path (a file not there yet: the sidecar before
    ``eval --val`` writes one, which a CSV there then made unreadable) and by file identity
    (a hard link), never by spelling."""
    from histocore.io import same_file
    from histomodels import pretrained
    from histomodels.calibration import calibration_path
    from histomodels.checkpoint import resolve_checkpoint

    target = out.resolve()

    def names(path: Path) -> bool:
        return target == path.resolve() or same_file(out, path)

    read = resolve_checkpoint(checkpoint)  # a shipped model's name: its weights in the package
    shipped = pretrained.shipped_name(checkpoint) is not None
    models = (read,) if shipped else tuple(dict.fromkeys((Path(checkpoint), read)))
    named = pretrained.shown(out)  # a file pcam-cnn is ./pcam-cnn: the name is the shipped one
    for model in models:
        if names(model):
            raise PredictInputError(
                f"{named}: is the checkpoint predict reads; the CSV would replace it: choose "
                "another --out"
            )
        if names(calibration_path(model)):
            raise PredictInputError(
                f"{named}: is the calibration file of the checkpoint predict reads; the CSV "
                "would replace it: choose another --out"
            )
    for f in files:
        if names(f):
            raise PredictInputError(
                f"{named}: is one of the images to score; the CSV would replace it: choose "
                "another --out"
            )
    _refuse_to_replace_what_predict_did_not_write(out)


def _refuse_to_replace_what_predict_did_not_write(out: Path) -> None:
    """The CSV replaces only an earlier predictions CSV (its first line predict's header,
    :data:`CSV_COLUMNS` or, from an older version, the first of them; a UTF-8 BOM before it,
    as Excel saves one, allowed; only that line is judged) or an empty file: any
    other file there, links followed, is a :class:`PredictInputError` naming ``out``.
    ``--out RUN/last.pt`` (``history.json``, ``config.json``, an ensemble's member, the
    shipped weights of ``--model``) replaced what predict never reads; a pipe or device
    there (``/dev/stdout``) had its node replaced by a file. A folder is left to the
    writer's own error."""
    not_ours = "is not a predictions CSV (its first line is not predict's header)"
    replace_only_ours(out, is_predictions_csv, PredictInputError, not_ours=not_ours,
                      would="the CSV would replace it: choose another --out")  # fmt: skip


#: ``predict --out -``: the CSV goes to standard output (the summary's ``csv``, the mark in
#: the heatmaps drawn for it)
STREAM = "-"
#: The mark (:data:`HEATMAP_MARK`) of a heatmap drawn for a CSV on standard output: no
#: path (it was ``-``, a CSV file of that name to a reader of the PNG); such a run has no
#: CSV file whose earlier heatmaps it could remove, and removes none
STREAM_MARK = "standard output"


#: The first columns every predictions CSV has had (the others were appended later)
_FIRST_COLUMNS = 6


def is_predictions_csv(path: Path) -> bool:
    """Whether the regular file ``path`` starts with a header predict writes, after a UTF-8
    BOM if any (a CSV saved by Excel has one); only its first 4 KB are read. A file that
    cannot be opened or read raises its ``OSError`` (``<file>: permission denied``):
    whether it is a predictions CSV cannot be told."""
    with open(path, "rb") as fh:
        head = fh.read(4096).removeprefix(codecs.BOM_UTF8)
    try:
        line = head.split(b"\n", 1)[0].removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        return False
    cells = next(csv.reader([line]), [])
    n = min(len(cells), len(CSV_COLUMNS))
    return n >= _FIRST_COLUMNS and cells[:n] == CSV_COLUMNS[:n]


def _refuse_csv_among_heatmaps(out: Path, heat_dir: Path, targets: dict[Path, Path]) -> None:
    """A :class:`UsageError` naming ``out`` when the CSV and the heatmaps would take one
    path, before anything is read: ``--heatmaps hm --out hm`` scored everything, then
    failed (``hm: is a folder``) and left an empty ``hm/``; ``--out hm/big.png`` was
    replaced by big.png's heatmap (the CSV lost, exit 0). Judged by real path and by file
    identity."""
    from histocore.io import same_file

    target, folder = out.resolve(), heat_dir.resolve()
    if target == folder or target in folder.parents:  # a CSV beside the heatmaps is not
        where = "is the heatmap folder" if target == folder else f"would hold {heat_dir}"
        raise UsageError(
            f"{out}: {where}, and the CSV a file: give --out a file outside it, or another "
            "--heatmaps"
        )
    for f, drawn in targets.items():
        if target == drawn.resolve() or same_file(out, drawn):
            raise UsageError(
                f"{out}: is where the heatmap of {f} is drawn; it would replace the CSV: "
                "choose another --out or --heatmaps"
            )


def _scores_small_whole(pred: Predictor) -> bool:
    """Whether ``eval --data --scale`` would score an image under one patch whole with this
    model (one that does not enlarge its input to a fixed size itself)."""
    from histomodels.inference import pixels_seen

    # a model resizing its input (evaluate.resizes_input: a backbone's input_size, an
    # ensemble member) sees a 1 px image at its own size; evaluate imports this module
    return pixels_seen(pred.model, 1, 1) == 1


def _predict_files(
    pred: Predictor,
    files: list[Path],
    problems: dict[Path, PredictInputError],
    w: Any,
    targets: dict[Path, Path],
    heatmaps: list[str],
    mark: str,
    staged: dict[Path, Path],
    *,
    size: int,
    scale: float,
    stride: int | None,
    max_pixels: int,
    batch_size: int,
    tta: bool,
    threshold: float,
) -> tuple[int, int]:
    """Score the tiles of every file not in ``problems`` into the CSV writer ``w`` (a file
    whose pixels cannot be used joins ``problems``, and has no row); a file of more than one
    patch gets its heatmap for ``targets[file]`` (none drawn when it has no target), whose
    paths go to ``heatmaps``; each is drawn into a hidden file beside it, ``staged[target]``,
    for the caller to rename over it once the CSV is written. Returns the number of rows and
    of files scored."""
    from histomodels.inference import sigmoid

    n_rows, factors, grey, shapes = 0, [], [], []
    todo = [f for f in files if f not in problems]
    with task("predicting", len(todo)) as shown:
        for f in todo:
            try:
                img = read_rgb(f, max_pixels)
                shape = (img.shape[1], img.shape[0])  # its own width and height, before --scale
                img, tiles = image_tiles(img, f, size=size, scale=scale, stride=stride)
            except PredictInputError as exc:
                problems[f] = exc
                shown.advance()
                continue
            if len(factors) < SCALE_CHECK_IMAGES:
                measured = nucleus_scale(img, size)
                factors += measured
                if measured:
                    shapes.append(shape)
            if _is_grey(img):
                grey.append(f)
            logits = pred.logits(tiles.patches, batch_size=batch_size, tta=tta)
            probs = sigmoid(logits, pred.temperature)
            cut = cut_text(threshold)
            for (x, y), t, p in zip(tiles.xy, tiles.tissue, probs, strict=True):
                call = bool(p >= threshold)  # unrounded; the row's texts show the same call
                w.writerow([safe_cell(str(f)), int(x), int(y), size, f"{t:.3f}",
                            probability_text(float(p), threshold), cut,
                            "yes" if call else "no"])  # fmt: skip
            n_rows += len(probs)
            if len(probs) > 1 and f in targets:
                target = targets[f]
                # judged again as decoded: a header of one patch skipped the check before
                _refuse_over_theirs(f, target)
                make_parents(target)
                if target.is_dir():  # refused now: the rename over it would fail after the CSV
                    raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(target))
                fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                            suffix=".part")  # fmt: skip
                os.close(fd)
                staged[target] = Path(part)
                _heatmap(img, tiles, probs, size, Path(part), f"{f.name}: max "
                         f"{probs.max():.2f}, mean {probs.mean():.2f}", mark)  # fmt: skip
                heatmaps.append(str(target))
            shown.advance()
    whole = _scores_small_whole(pred) if shapes else False
    warn_magnification(factors, scale, patch=(shapes, size, whole) if shapes else None)
    scored = sum(f not in problems for f in todo)  # each input given, as the CSV's rows
    if grey:
        log.warning(
            "%d of %d image(s) are greyscale (e.g. %s): the model knows colour H&E only, so "
            "their scores are not meaningful", len(grey), scored, grey[0],
        )  # fmt: skip
    return n_rows, scored


def cut_text(threshold: float) -> str:
    """The CSV's ``threshold`` cell: 6 decimals when they are the threshold exactly, else
    its shortest exact text (``--threshold 0.9999996`` was written ``1.000000``)."""
    text = f"{threshold:.6f}"
    return text if float(text) == threshold else repr(float(threshold))


def probability_text(p: float, threshold: float) -> str:
    """The CSV's ``probability`` cell: 6 decimals, or as many more as it takes for the
    row to read as its call (``p >= threshold``, made on the unrounded values): p =
    0.9999997 at a threshold of 1 is ``0.9999997``, ``no`` (it was rounded to
    ``1.000000`` before the comparison, and called tumour)."""
    call = p >= threshold
    for digits in range(6, 18):
        text = f"{p:.{digits}f}"
        if (float(text) >= threshold) == call:
            return text
    return repr(p)


def _is_grey(img: np.ndarray) -> bool:
    """Grey tissue: no colour at all (a greyscale file, or grey pixels stored as RGB:
    fluorescence, electron micrographs, a scan without stain) and enough grey content that
    is neither background nor one flat shade (see :data:`GREY_CONTENT_SHARE`)."""
    if not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])):
        return False
    h, w = img.shape[:2]
    step = max(1, int((h * w / 1_000_000) ** 0.5))  # about a million pixels are plenty
    g = img[::step, ::step, 0]
    not_glass = float(np.mean(g < GREY_CONTENT_BELOW))
    return not_glass >= GREY_CONTENT_SHARE and float(g.std()) >= GREY_CONTENT_STD


def nucleus_scale(img: np.ndarray, size: int) -> list[float]:
    """``[factor to PCam scale]`` measured on a centre crop (``eval --manifest``'s nucleus
    size estimate), or ``[]`` for patch-sized images and crops without measurable nuclei."""
    from histomodels.data.manifest_tiles import estimate_scale

    h, w = img.shape[:2]
    if min(h, w) < 2 * size:  # a patch or two: too few nuclei to measure
        return []
    c = min(SCALE_CHECK_CROP, h, w)
    y, x = (h - c) // 2, (w - c) // 2
    factor, source = estimate_scale(np.ascontiguousarray(img[y : y + c, x : x + c]))
    return [factor] if source == "estimated" else []


def warn_magnification(
    factors: list[float],
    scale: float,
    where: str = "",
    option: str = "--scale",
    patch: tuple[list[tuple[int, int]], int, bool] | None = None,
) -> None:
    """One warning when the images' nuclei (:func:`nucleus_scale` of each) say they are not
    at PCam's magnification: the model then scores tissue at a scale it never saw (a 40x
    tile at ``--scale 1`` comes out as tumour almost everywhere). ``where`` (a dataset, for
    ``eval --data``/``--val``) starts the line when given; ``option`` is the one that sets
    the scale (``--val-scale`` for ``eval --val``). ``patch`` (``predict``: the checked
    images' own width and height, before ``scale``; the patch side; whether the model
    scores an image under one patch whole, :func:`_scores_small_whole`) adds, when the
    scale suggested would make the smallest such image smaller than one patch, that it
    would, how large a region it takes and, where eval would take them
    (:func:`eval_whole_hint`), eval's way to score them whole: the suggestion alone led to
    ``error: … smaller than one 96px patch`` (the 256 px Camelyon16 tiles at 40x: ``try
    --scale 0.27``, then 69x69)."""
    if not factors:
        return
    factor = float(np.median(factors))
    if SCALE_CHECK_BAND[0] <= factor <= SCALE_CHECK_BAND[1]:
        return
    suggested = float(f"{scale * factor:.2g}")  # as said, and as the user will pass it
    too_small = ""
    if patch is not None and patch[0]:
        shapes, size, whole = patch
        side = min(min(shape) for shape in shapes)  # the image's own side, before --scale
        if round(side * suggested) < size:
            small = [
                (round(w * suggested), round(h * suggested))
                for w, h in shapes
                if round(min(w, h) * suggested) < size
            ]
            eval_hint = eval_whole_hint(small, size, suggested, whole)
            too_small = (
                f"; but at {option} {suggested:g} an image {side} px a side is "
                f"{round(side * suggested)} px, smaller than one {size}px patch: give "
                f"regions of at least {least_side(size, suggested)} px a side at this "
                f"magnification{f', or, {eval_hint}' if eval_hint else ''}"
            )
    log.warning(
        "%sthe nuclei in %d checked image(s) look %.1fx %s than in PCam patches (~10x, 0.97 "
        "µm/px) at %s %s: scores at another magnification are not meaningful; try "
        "%s %g (a rough estimate from nucleus size, ±30%%)%s",
        f"{where}: " if where else "", len(factors), 1 / factor if factor < 1 else factor,
        "larger" if factor < 1 else "smaller", option, number_text(scale), option,
        suggested, too_small,
    )  # fmt: skip


def least_side(size: int, scale: float) -> int:
    """The smallest side that is at least ``size`` px at ``scale``, as :func:`scaled`
    rounds it (``round(side * scale)``): 354 for 96 px at 0.27 (not ``ceil(96 / 0.27)``,
    356)."""
    side = max(1, math.floor((size - 0.5) / scale))
    while side > 1 and round((side - 1) * scale) >= size:
        side -= 1
    while round(side * scale) < size:
        side += 1
    return side


def eval_whole_hint(
    scaled_sizes: list[tuple[int, int]], size: int, scale: float, scores_small_whole: bool
) -> str:
    """``to score such tiles whole (labelled, one folder per class) use eval --data FOLDER
    --scale F`` for images too small for one ``size`` px patch at ``scale``
    (``scaled_sizes``: their width and height at it), when ``eval --data --scale`` scores
    them whole: the model does not enlarge its input itself (``scores_small_whole``), each
    is at least PCam's 32 px label region at the scale and a tile, no side more than twice
    the other (eval cuts a side longer than a patch to its central patch: a 128x75 tile is
    scored at 96x75), not a strip such as 60x10^6 px, and all come out at one size there,
    after that cut (eval refuses a folder whose images come out at 2 sizes); else ``""``.
    The one rule for ``predict``'s too-small error and its ``--scale`` warning."""
    whole = all(min(s) >= MIN_SCALED_SIDE and max(s) <= 2 * min(s) for s in scaled_sizes)
    # eval refuses 2 sizes in a folder, as its ScaledPatches fits them (cut to one patch)
    one_size = len({tuple(min(side, size) for side in s) for s in scaled_sizes}) == 1
    if not (scaled_sizes and scores_small_whole and whole and one_size):
        return ""
    return (
        "to score such tiles whole (labelled, one folder per class) use eval --data FOLDER "
        f"--scale {number_text(scale)}"
    )


def scaled(
    img: np.ndarray, scale: float, where: Path | str, size: int, what: str | None = None
) -> np.ndarray:
    """``img`` resized by ``scale`` (``histocore.imaging.rescale``; unchanged at 1): the
    resize of ``predict --scale`` and ``eval --data --scale``. A result under ``size`` px a
    side is a :class:`PredictInputError` naming ``where`` and ``what`` it is smaller than
    (default: one ``size`` px patch)."""
    h, w = img.shape[:2]
    sw, sh = round(w * scale), round(h * scale)
    if sh < size or sw < size:  # said with the size compared, as check_inputs says it
        what = what or f"one {size}px patch"
        raise TooSmall(
            f"{where}: {w}x{h} at scale {number_text(scale)} is {sw}x{sh}, smaller than {what}",
            (sw, sh),
            size,
        )
    return img if scale == 1.0 else rescale(img, scale)


def heatmap_targets(files: list[Path], heat_dir: Path) -> dict[Path, Path]:
    """Each input's heatmap file in ``heat_dir``: ``<stem>.png``, ``<folder>_<stem>.png``
    when stems clash, then ``_2``, ``_3``... until unique, so no heatmap is drawn over
    another; the suffixes go in the order of the inputs' absolute paths, whatever order
    they were given in. One that would be an input itself (``--heatmaps`` naming a PNG's
    own folder) is a :class:`PredictInputError`: the image would be lost."""
    given = list(dict.fromkeys(files))
    stems = Counter(f.stem for f in given)
    named: dict[Path, Path] = {}
    taken: set[str] = set()
    for f in sorted(given, key=lambda f: (os.path.abspath(f), str(f))):
        name = f.stem if stems[f.stem] == 1 else f"{f.parent.name}_{f.stem}"
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}_{n}"
        taken.add(unique)
        named[f] = heat_dir / f"{unique}.png"
    targets = {f: named[f] for f in given}  # in the inputs' order, as they are scored
    inputs = {key: f for f in targets if (key := _file_key(f))}
    for target in targets.values():
        if (key := _file_key(target)) in inputs:
            raise PredictInputError(
                f"{inputs[key]}: its heatmap would be written over it (the heatmap folder is "
                f"{heat_dir}); give another --heatmaps, or --no-heatmaps"
            )
    return targets


def _file_key(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, to tell when two paths name one file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino
