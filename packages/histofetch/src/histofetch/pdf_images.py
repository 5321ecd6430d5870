"""Every distinct raster image of an open PDF, decoded to 8-bit RGB (the extract stage's core).

Decoded with PyMuPDF whatever the colour space; soft masks and alpha composited onto white;
an xref drawn again, or another xref with the same pixels, is one image with its further
placements in ``extra["also_at"]``; images over :data:`MAX_IMAGE_PIXELS` declared pixels
(theirs or their masks') are refused undecoded; a PDF over :data:`PDF_TIME_BUDGET_S` of
CPU time decoding fails its record. See :mod:`histofetch.extract` for the stage around it.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pymupdf

from histofetch.pdf_captions import caption_blocks, find_caption
from histofetch.stage import StageFailure

#: Refuse (do not decode) embedded images with more pixels than this (about 8000 × 8000).
#: Checked on the declared size of the image *and* of its soft mask / mask before decoding
#: (PyMuPDF decodes them; PIL's global limit is left alone).
MAX_IMAGE_PIXELS = 64_000_000
#: CPU seconds one PDF may spend decoding images before the record fails (a hostile file
#: must fail its record, and be recorded as failed, rather than hang every re-run). CPU
#: time of the thread doing the work (MuPDF, Pillow and numpy run in it), not wall time: a
#: process starved by other work on the machine must not fail a good PDF (the real ones
#: take 0.1-10 s; one needed 346 s of wall time at nice 10 beside nice -19 training jobs).
PDF_TIME_BUDGET_S = 300.0


def extract_images(
    doc: pymupdf.Document,
    *,
    min_size: int = 32,
    where: Path | str = "PDF",
    budget_s: float | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All distinct raster images of ``doc`` as dicts with an ``rgb`` uint8 array.

    Returns the images and counts for the record (``pymupdf_images``: image XObjects per
    page, summed, ``duplicates``, ``small_dropped``, ``refused_images``). MuPDF failing on
    a broken file (a page it cannot load, a mangled resource tree) is a
    :class:`StageFailure` naming the file.
    """
    try:
        return _extract_images(doc, min_size, where, budget_s)
    except Exception as exc:
        if not _raised_in_mupdf(exc):
            raise
        raise StageFailure(f"corrupt PDF, MuPDF cannot read it ({exc}): {where}") from None


def _extract_images(
    doc: pymupdf.Document, min_size: int, where: Path | str, budget_s: float | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`extract_images` without the guard for MuPDF's own errors."""
    by_xref: dict[int, dict[str, Any]] = {}
    by_pixels: dict[str, dict[str, Any]] = {}
    images: list[dict[str, Any]] = []
    info: dict[str, Any] = {"pymupdf_images": 0, "duplicates": 0, "small_dropped": 0}
    refused: list[str] = []
    # CPU time of this thread (load on the machine does not spend it), checked before each
    # page and each image: a PDF of many slow images stops; one decode that never returns is
    # the worker pool's --record-timeout's to stop
    deadline = time.thread_time() + (PDF_TIME_BUDGET_S if budget_s is None else budget_s)
    for page in doc:
        pno = (page.number or 0) + 1  # pymupdf types number as optional; pages have one
        if time.thread_time() > deadline:
            raise StageFailure(f"over the time budget, stopped at page {pno}: {where}")
        captions = caption_blocks(page)
        n_on_page = 0
        seen_here: set[int] = set()
        for entry in page.get_images(full=True):
            xref, smask, width, height = entry[0], entry[1], entry[2], entry[3]
            if xref in seen_here:
                continue
            if time.thread_time() > deadline:
                raise StageFailure(f"over the time budget, stopped at page {pno}: {where}")
            seen_here.add(xref)
            info["pymupdf_images"] += 1
            rects = _rects(page, xref)
            bbox = rects[0] if rects else None
            place = {"page": pno, "bbox": bbox}
            more = [{"page": pno, "bbox": r} for r in rects[1:]]  # drawn again on this page
            if xref in by_xref:
                by_xref[xref]["extra"].setdefault("also_at", []).extend([place, *more])
                info["duplicates"] += 1 + len(more)
                continue
            if min(width, height) < min_size:
                info["small_dropped"] += 1
                continue
            too_big = oversized_parts(doc, xref, smask)
            if width * height > MAX_IMAGE_PIXELS or too_big:
                why = too_big or f"{width}x{height} px exceeds the pixel limit"
                refused.append(f"p{pno} xref {xref}: {why}")
                continue
            try:
                rgb = decode_rgb(doc, xref, smask)
            except Exception as exc:  # one undecodable image must not lose the others
                refused.append(f"p{pno} xref {xref}: cannot decode ({exc})")
                continue
            digest = hashlib.sha256(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()
            if digest in by_pixels:
                by_pixels[digest]["extra"].setdefault("also_at", []).extend([place, *more])
                by_xref[xref] = by_pixels[digest]
                info["duplicates"] += 1 + len(more)
                continue
            n_on_page += 1
            info["duplicates"] += len(more)
            item = {
                "rgb": rgb,
                "page": pno,
                "n": n_on_page,
                "bbox": bbox,
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "caption": find_caption(captions, bbox),
                "extra": {
                    "xref": xref,
                    "pixel_sha256": digest,
                    **({"also_at": more} if more else {}),
                },
            }
            by_xref[xref] = by_pixels[digest] = item
            images.append(item)
    if refused:
        info["refused_images"] = refused
    return images, info


def _rects(page: pymupdf.Page, xref: int) -> list[list[float]]:
    try:
        rects = page.get_image_rects(xref)
    except Exception:
        return []
    return [[round(float(v), 2) for v in r] for r in rects if not r.is_empty]


def decode_rgb(doc: pymupdf.Document, xref: int, smask: int = 0) -> np.ndarray:
    """Decode an image xref to an 8-bit RGB array, compositing any soft mask onto white."""
    pix = pymupdf.Pixmap(doc, xref)
    alpha = None
    if pix.colorspace is None:  # stencil /ImageMask: painted pixels come back as alpha
        painted = _pix_array(pix)[..., 0]
        return np.repeat((255 - painted)[..., None], 3, axis=2)
    if pix.alpha:  # e.g. JPX with alpha: split the alpha channel off
        arr = _pix_array(pix)
        alpha = arr[..., -1]
        pix = pymupdf.Pixmap(pix, 0)  # drop alpha
    cs = pix.colorspace
    if cs is None or cs.n != 3 or cs.name not in ("DeviceRGB",):
        pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
    rgb = _pix_array(pix)[..., :3]
    if smask:
        mask = pymupdf.Pixmap(doc, smask)
        if mask.colorspace is not None and mask.colorspace.n != 1:
            mask = pymupdf.Pixmap(pymupdf.csGRAY, mask)
        m = _pix_array(mask)[..., 0]
        if m.shape != rgb.shape[:2]:
            m = np.asarray(
                PIL.Image.fromarray(m).resize(
                    (rgb.shape[1], rgb.shape[0]), PIL.Image.Resampling.BILINEAR
                )
            )
        alpha = m if alpha is None else np.minimum(alpha, m)
    if alpha is not None and alpha.min() < 255:
        rgb = composite_on_white(rgb, alpha)
    return np.ascontiguousarray(rgb)


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``rgb·a + 255·(1−a)`` with integer rounding (the formula the tests check against)."""
    a = alpha.astype(np.uint32)[..., None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _pix_array(pix: pymupdf.Pixmap) -> np.ndarray:
    arr = np.frombuffer(pix.samples, dtype=np.uint8)
    return arr.reshape(pix.height, pix.stride)[:, : pix.width * pix.n].reshape(
        pix.height, pix.width, pix.n
    )


def encode_png(rgb: np.ndarray) -> bytes:
    """An RGB array as PNG bytes."""
    buf = io.BytesIO()
    PIL.Image.fromarray(rgb, "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def declared_pixels(doc: pymupdf.Document, xref: int) -> tuple[int, int]:
    """Width and height an image XObject declares (JPX: its codestream's, which MuPDF uses)."""

    def number(key: str) -> int:
        kind, value = doc.xref_get_key(xref, key)
        try:
            return int(float(value)) if kind == "int" or kind == "real" else 0
        except ValueError:
            return 0

    width, height = number("Width"), number("Height")
    if "JPXDecode" in doc.xref_get_key(xref, "Filter")[1]:
        raw = doc.xref_stream_raw(xref) or b""
        siz = raw.find(b"\xff\x51", 0, 4096)  # SIZ marker: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz
        if siz >= 0 and len(raw) >= siz + 20:
            width = max(width, int.from_bytes(raw[siz + 6 : siz + 10], "big"))
            height = max(height, int.from_bytes(raw[siz + 10 : siz + 14], "big"))
    return width, height


def oversized_parts(doc: pymupdf.Document, xref: int, smask: int = 0) -> str | None:
    """Why an image (with its /SMask or /Mask image) is over the pixel limit, else None."""
    parts = [("image", xref)]
    if smask:
        parts.append(("soft mask", smask))
    kind, value = doc.xref_get_key(xref, "Mask")
    if kind == "xref":
        parts.append(("mask", int(value.split()[0])))
    for what, ref in parts:
        width, height = declared_pixels(doc, ref)
        if width * height > MAX_IMAGE_PIXELS or width < 0 or height < 0:
            return f"{what} {width}x{height} px exceeds the pixel limit"
    return None


def _raised_in_mupdf(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is PyMuPDF's own code.

    MuPDF answers a broken PDF with many exception types (its ``FzError*``, RuntimeError,
    ValueError, even TypeError from its warning path); those are bad input, while the same
    types raised by our own code stay programmer bugs with their traceback.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("pymupdf")
