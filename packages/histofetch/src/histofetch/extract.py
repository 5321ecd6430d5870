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
  more than :data:`~histofetch.pdf_images.MAX_IMAGE_PIXELS` declared pixels are refused
  without being decoded (decompression bombs) and listed in the record's
  ``extra["refused_images"]``.
* Corrupt, truncated and encrypted PDFs fail the record with a one-line reason; the run goes on.
* A local PDF's record is titled by the PDF's own metadata title (``/Title``) when that is a
  plausible article title (:func:`metadata_title`), else by its file name without ``.pdf``.
  The title is read when the PDF is opened for extraction (in the worker, under the record's
  time limit), not at ingest, so a hostile file is never opened outside that guard; it is
  set only when the extraction succeeds.
* Rows with another source (``"jats"``: figure files named by the article's JATS, added by
  ``download``) are kept untouched, and a record that has them is not extracted from its
  PDF at all: each figure appears once, at the resolution it was published.

This module is the stage (local PDFs ingested, one record extracted); the PDF work is in
``pdf_checks.py`` (bytes checked, opened), ``pdf_images.py`` (images decoded),
``pdf_captions.py`` (their captions) and ``pdf_crosscheck.py`` (pdfplumber's count).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import stat
import unicodedata
from pathlib import Path

from histocore.errors import DomainError
from histocore.io import atomic_write_bytes, file_sha256, not_there, record_slug
from histocore.manifest import Image, Manifest, Record
from histofetch.canary import pdf_canary
from histofetch.pdf_checks import check_page_objects, check_pdf_bytes, open_pdf
from histofetch.pdf_crosscheck import pdfplumber_count
from histofetch.pdf_images import encode_png, extract_images
from histofetch.pool import run_records
from histofetch.record_time import DEFAULT_RECORD_TIMEOUT_S
from histofetch.stage import StageFailure, StageSummary

log = logging.getLogger(__name__)

PDF_SUFFIXES = {".pdf"}


class ExtractError(DomainError, ValueError):
    """Bad input to the extract stage (a path that does not exist, a folder without PDFs)."""


#: Longest metadata title taken (characters). A longer one is cut at its last word break
#: when that keeps at least :data:`MIN_WORD_CUT_CHARS` of them, else cut hard; either way it
#: ends in "…" and is at most this long.
MAX_TITLE_CHARS = 300
MIN_WORD_CUT_CHARS = 200

#: Metadata titles that name a tool's placeholder or a typesetting job, not the article:
#: "Microsoft Word - x.docx", "Word Pro - paper.lwp", "PowerPoint Presentation", "Adobe
#: Photoshop PDF", "untitled", "Untitled document", "Article title", "Author Manuscript",
#: "HHS Public Access", "PII: S0046-8177(18)30123-4" (Elsevier's item identifier), "Layout 1",
#: "pone.0107412 1..10" (a job name with its page range), a file name ("paper_final.pdf").
_JUNK_TITLE_RES = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^microsoft (word|powerpoint|excel)\b",
        r"^(word pro|wordperfect|powerpoint|adobe|acrobat|indesign|quarkxpress)\b",
        r"^untitled\b",
        r"^(untitled|title|document|none|null|unknown|no title|layout|doc|paper|article|"
        r"manuscript|slide|page|print)\b[\s\d._-]*$",
        r"^(article|paper|manuscript|document|chapter)\s+title$",
        r"^(author manuscript|accepted manuscript|hhs public access)$",
        r"^pii\b",
        r"\.(pdf|docx?|rtf|odt|tex|dvi|ps|indd|qxd|pages|txt|html?|xml|lwp|wpd|pptx?|xlsx?)$",
        r"^\S+\s+\d+\.\.\d+$",
    )
]


#: A journal's name and a year, as some publishers' metadata titles give it ("Journal of
#: Pathology 2019", "The American Journal of Surgical Pathology (2019)", "Annals of Oncology,
#: 2019", "The Breast Journal 2019", "Acta Neuropathologica 2020"): capitalised words
#: (joining words lower case) shaped as "… Journal|Annals|Archives|Proceedings|Bulletin|
#: Transactions of …", "… Journal" or "Acta …", and the year last. Conservative: a
#: lower-case word ("… in 2019"), anything after the year, or another shape ("Modern
#: Pathology 2019", "Breast Cancer Journal Club Review 2019") and the title is taken.
_CAP = r"[A-Z][\w'&.-]*"
_NAME = rf"{_CAP}(?:\s+(?:{_CAP}|of|and|for|in|on|the|de|&))*"
_JOURNAL_YEAR_RE = re.compile(
    rf"(?:The\s+|THE\s+)?(?:{_CAP}\s+)*?"
    rf"(?:(?i:journal|annals|archives?|proceedings|bulletin|transactions)\s+(?i:of)\s+"
    rf"(?:(?i:the)\s+)?{_NAME}|(?i:journal)|(?i:acta)\s+{_NAME})"
    r"[\s,.;:-]*\(?(?:19|20)\d\d\)?\.?"
)
#: Only a title this short is matched against :data:`_JOURNAL_YEAR_RE` (the longest
#: journal name and year is ~90 characters); the pattern backtracks over every capitalised
#: word, so a crafted 40 KB title of ``Acta Acta …`` took 10+ s, quadratic in its length.
_JOURNAL_YEAR_MAX_CHARS = 120


def metadata_title(raw: object, stem: str) -> str | None:
    """The PDF metadata title ``raw`` when it is a plausible article title, else None.

    Hostile input: control and format characters (bidi overrides, NUL) are dropped and all
    whitespace runs become one space, so the title is one line; it is capped at
    :data:`MAX_TITLE_CHARS`. Refused: empty, the file's own name ``stem`` (spaces, ``_``
    and ``-`` alike), a tool's placeholder or a typesetting job name (:data:`_JUNK_TITLE_RES`),
    a journal's name and a year (:data:`_JOURNAL_YEAR_RE`), or fewer than two words with
    letters.
    """
    if not isinstance(raw, str):
        return None
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in raw
        if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )
    title = " ".join(kept.split())
    if not title:
        return None

    def plain(text: str) -> str:
        return " ".join(re.sub(r"[\s_\-.]+", " ", text).casefold().split())

    if plain(title) == plain(stem) or any(r.search(title) for r in _JUNK_TITLE_RES):
        return None
    if len(title) <= _JOURNAL_YEAR_MAX_CHARS and _JOURNAL_YEAR_RE.fullmatch(title):
        return None
    if sum(any(c.isalpha() for c in w) for w in title.split()) < 2:
        return None
    if len(title) > MAX_TITLE_CHARS:
        cut = title[: MAX_TITLE_CHARS - 1]
        at_word = cut.rsplit(" ", 1)[0]
        title = (at_word if len(at_word) >= MIN_WORD_CUT_CHARS else cut).rstrip() + "…"
    return title


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
    record_timeout: float | None = DEFAULT_RECORD_TIMEOUT_S,
    isolate: bool = False,
) -> StageSummary:
    """Extract images of the run's downloaded PDFs; with ``paths``, ingest local PDFs first.

    ``paths`` may name PDF files or folders (searched recursively for ``*.pdf``). Each local
    PDF becomes a record ``local:<sha256[:16]>`` at stage "downloaded", so ingesting the same
    file twice never duplicates it. Resumable: records already extracted are skipped.
    ``record_timeout``: seconds one PDF may take in a worker (``jobs`` > 1, or
    ``isolate``: one job in one worker process), see :mod:`histofetch.record_time`.
    """
    run_dir = Path(run_dir)
    with Manifest.load(run_dir, create=True) as manifest:  # closed: no -wal file left behind
        if paths:
            ingest_local(manifest, paths)
            manifest.save()

        work = functools.partial(extract_record, min_size=min_size)  # picklable for --jobs
        # guard_attempts: a PDF whose reading hung or killed the process is not retried forever
        return run_records(
            manifest, "extracted", work, jobs=jobs, retry_failed=retry_failed,
            guard_attempts=True, canary=pdf_canary,  # a broken machine told from bad PDFs
            record_timeout=record_timeout, isolate=isolate,  # a PDF that makes MuPDF loop: stopped
        )  # fmt: skip


def pdfs_in_folder(folder: Path) -> list[Path]:
    """The PDFs under ``folder`` that ``extract FOLDER`` reads, sorted: regular files (or
    links to one) named ``.pdf`` at any depth; a link that leads nowhere or to itself is
    none of them."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PDF_SUFFIXES)


def ingest_local(manifest: Manifest, paths: list[Path]) -> list[Record]:
    """Add a record per local PDF (files or folders). Raises ExtractError on bad paths."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ExtractError(not_there(path))  # a link loop on the way: named
        if path.is_dir():
            found = pdfs_in_folder(path)
            if not found:
                raise ExtractError(f"{path}: folder holds no .pdf files")
            files += found
        elif not stat.S_ISREG(path.stat().st_mode):  # a FIFO or /dev/zero would hang hashing
            raise ExtractError(f"{path}: not a regular file")
        else:
            files.append(path)
    added = []
    # a record's PDF given again (``extract --run R R/``: its downloaded pdfs/) is that
    # record's, not a new article whose figures would be extracted a second time
    known = {r.pdf_sha256 for r in manifest.records.values() if r.pdf_sha256}
    theirs = []
    for path in files:
        digest = file_sha256(path)
        rec_id = f"local:{digest[:16]}"
        if rec_id in manifest.records:  # the same bytes ingested before: keep its progress
            continue
        if digest in known:
            theirs.append(path)
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
    if theirs:  # said once: a run's whole pdfs/ folder may be given
        log.info(
            "%d PDF(s) given are a record's own PDF already (same bytes, e.g. %s): not added "
            "again", len(theirs), theirs[0],
        )  # fmt: skip
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
        stem = Path(rec.pdf_path).stem
        title = rec.title
        if rec.pdf_source == "local" and rec.title in (None, stem):  # a title set by hand is kept
            title = metadata_title((doc.metadata or {}).get("title"), stem) or stem
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
    rec.title = title  # only now: a record whose PDF fails keeps the title it had
