"""Extract stage: every embedded raster image of every PDF → RGB PNG + an Image row.

Decisions (documented in docs/histofetch.md):

* Images are decoded with PyMuPDF (``pymupdf.Pixmap``) and converted to 8-bit RGB whatever
  their colour space (CMYK, indexed, greyscale, 16-bit, ICC).
* A soft mask (SMask) or alpha channel is *composited onto white*, i.e. the PNG shows what
  a reader sees on a white page. Transparent pixels carry arbitrary colour underneath, so
  keeping the raw base colours would feed invisible pixels to the H&E filter.
* One row per distinct image: an xref drawn again, or another xref with the same RGB pixels,
  is not saved twice; its further placements are listed in ``extra["also_at"]``.
* Images with a side below ``min_size`` px (icons, rules, logos) are dropped; images with
  more than :data:`MAX_IMAGE_PIXELS` declared pixels are refused without being decoded
  (decompression bombs) and listed in the record's ``extra["refused_images"]``.
* Corrupt, truncated and encrypted PDFs fail the record with a one-line reason; the run goes on.
* Rows with another source (``"jats"``: figure files named by the article's JATS, added by
  ``download``) are kept untouched, and a record that has them is not extracted from its
  PDF at all: each figure appears once, at the resolution it was published.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pymupdf

from histocore.errors import DomainError
from histocore.io import atomic_write_bytes, file_sha256, record_slug
from histocore.manifest import Image, Manifest, Record
from histofetch.pool import run_records
from histofetch.stage import StageFailure, StageSummary

#: Refuse (do not decode) embedded images with more pixels than this (about 8000 × 8000).
#: Checked on the declared size of the image *and* of its soft mask / mask before decoding
#: (PyMuPDF decodes them; PIL's global limit is left alone).
MAX_IMAGE_PIXELS = 64_000_000
#: Most resource dictionaries one page's object walk may visit (forms nested in forms).
MAX_WALK_NODES = 10_000
#: Seconds one PDF may spend decoding images before the record fails (a hostile file
#: must fail its record, and be recorded as failed, rather than hang every re-run).
PDF_TIME_BUDGET_S = 300.0

#: A caption block starts with "Fig. 3", "Figure 3:", "FIGURE 3." ...
CAPTION_RE = re.compile(r"^\s*(fig\.?|figure)\s*[A-Z]?\d+[A-Za-z]?\s*[:.|\-–—)]", re.IGNORECASE)

PDF_SUFFIXES = {".pdf"}


class ExtractError(DomainError, ValueError):
    """Bad input to the extract stage (a path that does not exist, a folder without PDFs)."""


# ---------------------------------------------------------------------------------------------
# Stage entry point
# ---------------------------------------------------------------------------------------------


def run_extract(
    run_dir: Path,
    paths: list[Path] | None = None,
    *,
    min_size: int = 32,
    retry_failed: bool = False,
    jobs: int = 1,
) -> StageSummary:
    """Extract images of the run's downloaded PDFs; with ``paths``, ingest local PDFs first.

    ``paths`` may name PDF files or folders (searched recursively for ``*.pdf``). Each local
    PDF becomes a record ``local:<sha256[:16]>`` at stage "downloaded", so ingesting the same
    file twice never duplicates it. Resumable: records already extracted are skipped.
    """
    run_dir = Path(run_dir)
    with Manifest.load(run_dir, create=True) as manifest:  # closed: no -wal file left behind
        if paths:
            ingest_local(manifest, paths)
            manifest.save()

        work = functools.partial(extract_record, min_size=min_size)  # picklable for --jobs
        # guard_attempts: a PDF whose reading hung or killed the process is not retried forever
        return run_records(
            manifest, "extracted", work, jobs=jobs, retry_failed=retry_failed, guard_attempts=True
        )


def ingest_local(manifest: Manifest, paths: list[Path]) -> list[Record]:
    """Add a record per local PDF (files or folders). Raises ExtractError on bad paths."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ExtractError(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PDF_SUFFIXES
            )
            if not found:
                raise ExtractError(f"{path}: folder holds no .pdf files")
            files += found
        elif not stat.S_ISREG(path.stat().st_mode):  # a FIFO or /dev/zero would hang hashing
            raise ExtractError(f"{path}: not a regular file")
        else:
            files.append(path)
    added = []
    for path in files:
        digest = file_sha256(path)
        rec_id = f"local:{digest[:16]}"
        if rec_id in manifest.records:  # the same bytes ingested before: keep its progress
            continue
        rec = Record(
            id=rec_id,
            pdf_path=manifest.relative(path),
            pdf_sha256=digest,
            pdf_source="local",
            stage="downloaded",
            title=path.stem,
        )
        added.append(manifest.add_record(rec))
    return added


# ---------------------------------------------------------------------------------------------
# One record
# ---------------------------------------------------------------------------------------------


def extract_record(manifest: Manifest, rec: Record, *, min_size: int = 32) -> None:
    """Extract one record's PDF into images/<slug>/ and replace its ``source="pdf"`` rows."""
    # Forget earlier PDF rows of this record (a re-extract); JATS figures stay.
    for img in manifest.images_of(rec.id):
        if img.source == "pdf":
            del manifest.images[img.id]
    package_rows = len(manifest.images_of(rec.id))
    for key in (
        "refused_images",
        "pdfplumber_images",
        "pdfplumber_error",
        "pdfplumber_repaired",
        "count_mismatch",
    ):
        rec.extra.pop(key, None)
    if package_rows:  # download kept the JATS figure files: the PDF would repeat them
        rec.n_images = package_rows
        return
    if not rec.pdf_path:
        raise StageFailure("no PDF to extract (record has no pdf_path)")
    pdf = manifest.resolve(rec.pdf_path)
    assert pdf is not None
    if not pdf.exists():
        raise StageFailure(f"PDF file missing: {pdf}")
    if not stat.S_ISREG(pdf.stat().st_mode):
        raise StageFailure(f"not a regular file: {pdf}")
    data = pdf.read_bytes()
    check_pdf_bytes(data, pdf)
    doc = open_pdf(data, pdf)
    try:
        check_page_objects(doc, pdf)
        images, info = extract_images(doc, min_size=min_size, where=pdf)
    finally:
        doc.close()
    out_dir = manifest.run_dir / "images" / record_slug(rec.id)
    for item in images:
        png = encode_png(item.pop("rgb"))
        name = f"p{item['page']:03d}_{item['n']:03d}.png"
        atomic_write_bytes(out_dir / name, png)
        manifest.add_image(
            Image(
                id=f"{rec.id}/{Path(name).stem}",
                record_id=rec.id,
                path=manifest.relative(out_dir / name),
                sha256=hashlib.sha256(png).hexdigest(),
                width=item["width"],
                height=item["height"],
                page=item["page"],
                bbox=item["bbox"],
                source="pdf",
                caption=item["caption"],
                extra=item["extra"],
            )
        )
    rec.extra.update(info)
    plumber = pdfplumber_count(data)
    rec.extra.update(plumber)
    if "pdfplumber_images" in plumber:
        rec.extra["count_mismatch"] = plumber["pdfplumber_images"] != info["pymupdf_images"]
    rec.n_images = len(images) + package_rows


def check_pdf_bytes(data: bytes, path: Path) -> None:
    """Cheap structural checks PyMuPDF's silent repair would hide."""
    if not data:
        raise StageFailure(f"empty file, not a PDF: {path}")
    if not data[:1024].lstrip().startswith(b"%PDF-"):
        raise StageFailure(f"not a PDF (no %PDF- header): {path}")
    if b"%%EOF" not in data[-2048:]:
        raise StageFailure(f"truncated PDF (no %%EOF at end of file): {path}")


def open_pdf(data: bytes, path: Path) -> pymupdf.Document:
    """Open PDF bytes or raise StageFailure with the reason (corrupt, encrypted, empty)."""
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # pymupdf raises its own FileDataError, RuntimeError, ...
        raise StageFailure(f"corrupt PDF, cannot open: {path}: {exc}") from None
    if doc.needs_pass:
        doc.close()
        raise StageFailure(f"encrypted PDF, needs a password: {path}")
    if doc.page_count == 0:
        doc.close()
        raise StageFailure(f"corrupt PDF, no pages: {path}")
    return doc


#: ``1 0 R`` style references inside a PDF dictionary or array, as PyMuPDF prints them.
_REF_RE = re.compile(r"(\d+) 0 R")


def check_page_objects(doc: pymupdf.Document, path: Path) -> None:
    """Refuse a repaired PDF whose pages name objects that are absent (a cut-off file).

    A half file with ``%%EOF`` appended passes the tail check and PyMuPDF silently repairs
    it into fewer images; the page tree still names the lost objects, which we detect.
    """
    if not doc.is_repaired:
        return
    n = doc.xref_length()
    for page in doc:
        refs = [page.xref]
        try:
            for key in ("Contents", "Resources", "Resources/XObject"):
                refs += [int(m) for m in _REF_RE.findall(doc.xref_get_key(page.xref, key)[1])]
            lost = [r for r in refs if not 0 < r < n or doc.xref_object(r).strip() == "null"]
        except Exception:  # PyMuPDF raises on objects it cannot load (broken object streams)
            lost = refs
        if lost:
            raise StageFailure(
                f"truncated PDF (page {(page.number or 0) + 1} names missing object {lost[0]}): "
                f"{path}"
            )


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
        raise StageFailure(f"{where}: MuPDF cannot read it ({exc})") from None


def _extract_images(
    doc: pymupdf.Document, min_size: int, where: Path | str, budget_s: float | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`extract_images` without the guard for MuPDF's own errors."""
    by_xref: dict[int, dict[str, Any]] = {}
    by_pixels: dict[str, dict[str, Any]] = {}
    images: list[dict[str, Any]] = []
    info: dict[str, Any] = {"pymupdf_images": 0, "duplicates": 0, "small_dropped": 0}
    refused: list[str] = []
    deadline = time.monotonic() + (PDF_TIME_BUDGET_S if budget_s is None else budget_s)
    for page in doc:
        pno = (page.number or 0) + 1  # pymupdf types number as optional; pages have one
        if time.monotonic() > deadline:
            raise StageFailure(f"over the time budget, stopped at page {pno}: {where}")
        captions = _caption_blocks(page)
        n_on_page = 0
        seen_here: set[int] = set()
        for entry in page.get_images(full=True):
            xref, smask, width, height = entry[0], entry[1], entry[2], entry[3]
            if xref in seen_here:
                continue
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
    buf = io.BytesIO()
    PIL.Image.fromarray(rgb, "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------


def _caption_blocks(page: pymupdf.Page) -> list[tuple[pymupdf.Rect, str]]:
    out = []
    for block in page.get_text("blocks"):
        text = " ".join(str(block[4]).split())
        if block[6] == 0 and CAPTION_RE.match(text):
            out.append((pymupdf.Rect(block[:4]), text[:4000]))
    return out


def find_caption(captions: list[tuple[pymupdf.Rect, str]], bbox: list[float] | None) -> str | None:
    """The "Fig./Figure" block for an image on the page.

    Nearest below it in the same columns, else nearest above, else a caption beside it
    (overlapping rows), else the page's only caption; None when nothing fits.
    """
    if not captions:
        return None
    if bbox is None:
        return captions[0][1] if len(captions) == 1 else None
    img = pymupdf.Rect(bbox)

    def overlaps(r: pymupdf.Rect) -> bool:
        return min(r.x1, img.x1) - max(r.x0, img.x0) > 0

    below = [(r.y0 - img.y1, t) for r, t in captions if r.y0 >= img.y1 - 2 and overlaps(r)]
    if below:
        return min(below)[1]
    above = [(img.y0 - r.y1, t) for r, t in captions if r.y1 <= img.y0 + 2 and overlaps(r)]
    if above:
        return min(above)[1]
    # side captions (journals that set the legend in a column beside the figure)
    side = [
        (min(abs(r.x0 - img.x1), abs(img.x0 - r.x1)), t)
        for r, t in captions
        if min(r.y1, img.y1) - max(r.y0, img.y0) > 0
    ]
    if side:
        return min(side)[1]
    return captions[0][1] if len(captions) == 1 else None


# ---------------------------------------------------------------------------------------------
# pdfplumber cross-check
# ---------------------------------------------------------------------------------------------


class WalkBudgetExceeded(RuntimeError):
    """An object walk visited more nodes than :data:`MAX_WALK_NODES` (a hostile file)."""


def pdfplumber_count(data: bytes) -> dict[str, Any]:
    """Image XObjects per page as pdfplumber's parser (pdfminer) sees them, summed.

    This walks each page's resources (and nested form XObjects) instead of
    ``page.images``, which lays out every character and takes minutes on long articles.
    Files pdfplumber cannot parse are retried on a copy PyMuPDF rewrote (pdfplumber's own
    ``repair=True`` needs ghostscript, which is often absent). A walk over its work budget
    gives ``pdfplumber_error`` at once (a repaired copy would hold the same object graph).
    """
    import pdfplumber

    def count(blob: bytes) -> int:
        with pdfplumber.open(io.BytesIO(blob)) as pdf:
            return sum(_count_xobject_images(p.page_obj.resources) for p in pdf.pages)

    try:
        return {"pdfplumber_images": count(data)}
    except WalkBudgetExceeded as exc:
        return {"pdfplumber_error": str(exc)}
    except Exception as first:
        try:
            with pymupdf.open(stream=data, filetype="pdf") as doc:
                repaired = doc.tobytes(garbage=1, clean=True)
            return {"pdfplumber_images": count(repaired), "pdfplumber_repaired": True}
        except Exception:
            return {"pdfplumber_error": f"{type(first).__name__}: {first}"[:300]}


def _count_xobject_images(resources: Any, depth: int = 0) -> int:
    """Distinct image XObjects reachable from a resource dict (forms followed, 8 deep).

    Each form is walked once (a visited set keyed by object id), and the walk stops with
    :class:`WalkBudgetExceeded` after :data:`MAX_WALK_NODES` resource dictionaries, so a
    small file of forms linking to forms cannot make the work grow exponentially.
    """
    from pdfminer.pdftypes import resolve1

    seen: set[int] = set()
    visited: set[int] = set()
    budget = [MAX_WALK_NODES]

    def walk(res: Any, level: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise WalkBudgetExceeded(f"object walk over {MAX_WALK_NODES} resource dictionaries")
        res = resolve1(res)
        xobjects = resolve1(res.get("XObject")) if isinstance(res, dict) else None
        if not isinstance(xobjects, dict):
            return
        for ref in xobjects.values():
            obj = resolve1(ref)
            key = getattr(ref, "objid", id(obj))
            attrs = getattr(obj, "attrs", {})
            subtype = getattr(resolve1(attrs.get("Subtype")), "name", None)
            if subtype == "Image":
                seen.add(key)
            elif subtype == "Form" and level < 8 and key not in visited:
                visited.add(key)
                walk(attrs.get("Resources"), level + 1)

    walk(resources, depth)
    return len(seen)
