"""A PDF's bytes checked and opened: what PyMuPDF's silent repair would hide, said plainly.

Empty, headerless, truncated (no ``%%EOF``, or a repaired file whose pages name objects
that are gone), corrupt and encrypted PDFs each fail their record with a one-line reason
(:class:`~histofetch.stage.StageFailure`) before any image is decoded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pymupdf

from histofetch.stage import StageFailure


def check_pdf_bytes(data: bytes, path: Path) -> None:
    """Cheap structural checks PyMuPDF's silent repair would hide."""
    if not data:
        raise StageFailure(f"empty file, not a PDF: {path}")
    if not data[:1024].lstrip().startswith(b"%PDF-"):
        raise StageFailure(f"not a PDF (no %PDF- header): {path}")
    if b"%%EOF" not in data[-2048:]:
        raise StageFailure(f"truncated PDF (no %%EOF at end of file): {path}")


class UnreadablePdf(Exception):
    """PyMuPDF could not open PDF bytes (``opened`` False) or read their page tree."""

    def __init__(self, detail: Exception, *, opened: bool) -> None:
        super().__init__(str(detail))
        self.detail, self.opened = detail, opened


def open_document(data: bytes) -> tuple[pymupdf.Document, int | None]:
    """PDF bytes opened by PyMuPDF and their page count, None for a file that needs a
    password (its page tree is not read: in encrypted object streams it counts 0 pages or
    fails); :class:`UnreadablePdf` otherwise. The one guard of extract's
    :func:`open_pdf` and the download routes' ``check_pdf`` (both refuse a PDF that needs a
    password; one encrypted with an empty user password opens without asking and is kept)."""
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # pymupdf raises its own FileDataError, RuntimeError, ...
        raise UnreadablePdf(exc, opened=False) from None
    try:
        return doc, None if doc.needs_pass else doc.page_count  # a broken page tree raises
    except Exception as exc:  # e.g. RuntimeError "code=7: Invalid number of pages"
        doc.close()
        raise UnreadablePdf(exc, opened=True) from None


def open_pdf(data: bytes, path: Path) -> pymupdf.Document:
    """Open PDF bytes or raise StageFailure with the reason (corrupt, encrypted, empty)."""
    try:
        doc, pages = open_document(data)
    except UnreadablePdf as exc:
        what = "cannot read its page tree" if exc.opened else "cannot open"
        raise StageFailure(f"corrupt PDF, {what} ({exc.detail}): {path}") from None
    if pages is None:
        doc.close()
        raise StageFailure(f"encrypted PDF, needs a password: {path}")
    if pages == 0:
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
    for pno in range(doc.page_count):
        try:
            page = doc.load_page(pno)
        except Exception as exc:  # a repaired page tree MuPDF still cannot walk (a /Kids loop)
            why = f"corrupt PDF, cannot load a page (page {pno + 1}: {exc})"
            raise StageFailure(f"{why}: {path}") from None
        refs = [page.xref]
        try:
            for key in ("Contents", "Resources", "Resources/XObject"):
                refs += [int(m) for m in _REF_RE.findall(doc.xref_get_key(page.xref, key)[1])]
            lost = [r for r in refs if not 0 < r < n or doc.xref_object(r).strip() == "null"]
        except Exception:  # PyMuPDF raises on objects it cannot load (broken object streams)
            lost = refs
        if lost:
            raise StageFailure(
                f"truncated PDF (page {pno + 1} names missing object {lost[0]}): {path}"
            )
