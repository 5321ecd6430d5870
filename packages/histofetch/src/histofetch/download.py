"""Stage 2: one PDF per record, from the most reliable source that has it.

Routes, in order (the first real PDF wins):

1. ``pmc-oa`` / ``pmc-oa-package`` — the PMC OA web service (oa.fcgi). It links a PDF for
   some articles; for most it offers only a ``.tar.gz`` package, from which the PDF is
   taken and, in every case, the original figure files are kept as ``source="package"``
   images (full resolution, better than the copies embedded in the PDF).
2. ``europepmc`` — Europe PMC's rendered PDF (``/articles/PMCxxxx?pdf=render``).
3. ``pubmed2pdf`` — the publisher page NCBI links (elink ``prlinks``), searched for a PDF
   link with the finders of the ``pubmed2pdf`` package, fetched with our client.

A body is accepted only if it starts with ``%PDF`` and opens in PyMuPDF with pages; HTML
pages and error bodies are reasons, never files. Every failure reason starts with a
short category (``not open access``, ``not a PDF``, ``network``, ``no PMCID``, ...) that
``histofetch status`` counts; docs/histofetch-network.md lists them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

import pymupdf

from histocore.io import atomic_write_bytes, record_slug
from histocore.manifest import Image, Manifest, Record
from histofetch.archive import (
    ArchiveError,
    ArchiveLimits,
    decode_image,
    figure_captions,
    pdfs_in,
    pick_figures,
    read_tar,
)
from histofetch.http import NetClient, NetConfig, NetError
from histofetch.resolve import ServiceError, oa_lookup, publisher_links
from histofetch.stage import StageFailure, StageSummary, run_per_record

#: The pubmed2pdf finders that only parse the page we give them (the others fetch
#: more pages themselves with ``requests`` or hard-code www.ncbi.nlm.nih.gov).
PUBMED2PDF_FINDERS = (
    "genericCitationLabelled",
    "acsPublications",
    "uchicagoPress",
    "nejm",
    "futureMedicine",
)


class NotAPdf(ValueError):
    """A body that is not a usable PDF; the message says what it looked like."""


def check_pdf(data: bytes) -> int:
    """Page count of a real PDF, or :class:`NotAPdf` with what the body looks like."""
    head = data[:1024].lstrip()
    if not head.startswith(b"%PDF"):
        if not data:
            raise NotAPdf("empty body")
        lowered = head[:512].lower()
        if b"<html" in lowered or b"<!doctype html" in lowered or b"<?xml" in lowered:
            kind = "an HTML/XML page"
        else:
            kind = f"{len(data)} bytes starting {data[:8]!r}"
        raise NotAPdf(f"got {kind}, not a PDF")
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # pymupdf raises several types for broken files
        raise NotAPdf(f"PDF header but PyMuPDF cannot open it ({exc})") from None
    try:
        if doc.page_count < 1:
            raise NotAPdf("PDF without pages")
        return doc.page_count
    finally:
        doc.close()


@dataclass
class Attempts:
    """What each route said, to build one honest failure reason."""

    notes: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)

    def add(self, route: str, category: str, detail: str) -> None:
        self.categories.append(category)
        self.notes.append(f"{route}: {detail}")

    def reason(self) -> str:
        # The most actionable category wins: something was fetched but was not a PDF,
        # then network trouble (retry later), then "not available" kinds.
        order = (
            "not a PDF",
            "bad package",
            "network",
            "not open access",
            "no PMCID",
            "no PDF link",
        )
        cats = [c for c in order if c in self.categories] or self.categories or ["no PDF"]
        return f"{cats[0]}: " + "; ".join(self.notes)


class _Page:
    """The ``req`` object pubmed2pdf's finders expect (``.url`` as str, ``.content``)."""

    def __init__(self, url: str, content: bytes) -> None:
        self.url = url
        self.content = content


def find_pdf_link(page_url: str, html: bytes) -> str | None:
    """A PDF URL on a publisher page, using pubmed2pdf's finders (meta citation_pdf_url...)."""
    from bs4 import BeautifulSoup
    from pubmed2pdf import utils as p2p

    soup = BeautifulSoup(html, "html.parser")
    page = _Page(page_url, html)
    for name in PUBMED2PDF_FINDERS:
        try:
            found = getattr(p2p, name)(page, soup, {})
        except Exception:  # a finder tripping over unusual markup is "not found"
            continue
        if found:
            found = str(found).strip()
            # Finders prefix the site root to relative links; urljoin also handles
            # absolute and protocol-relative ones.
            root = "/".join(page_url.split("/")[:3])
            if found.startswith(root + "http"):
                found = found[len(root) :]
            return urljoin(page_url, found)
    return None


class Downloader:
    """Fetches PDFs (and OA package figures) for records of one manifest."""

    def __init__(
        self, manifest: Manifest, client: NetClient, limits: ArchiveLimits | None = None
    ) -> None:
        self.manifest = manifest
        self.client = client
        self.limits = limits or ArchiveLimits()

    def __call__(self, rec: Record) -> None:
        attempts = Attempts()
        if not rec.pmcid:
            attempts.add("pmc-oa/europepmc", "no PMCID", "record has no PMCID (not in PMC)")
        data = self._pmc_oa(rec, attempts) if rec.pmcid else None
        if data is None and rec.pmcid:
            data = self._europepmc(rec, attempts)
        if data is None and rec.pmid:
            data = self._publisher(rec, attempts)
        if data is None:
            if any(i.source == "package" for i in self.manifest.images_of(rec.id)):
                # The OA package gave figures but no route gave a PDF: keep the record
                # going (extract and filter work on the package figures).
                rec.extra["pdf_missing"] = attempts.reason()
                return
            raise StageFailure(attempts.reason())
        pdf_bytes, source = data
        path = self.manifest.run_dir / "pdfs" / f"{record_slug(rec.id)}.pdf"
        atomic_write_bytes(path, pdf_bytes)
        rec.pdf_path = self.manifest.relative(path)
        rec.pdf_sha256 = hashlib.sha256(pdf_bytes).hexdigest()
        rec.pdf_source = source
        rec.extra.pop("pdf_missing", None)

    # -- routes ----------------------------------------------------------------------------
    def _fetch_pdf(self, url: str, route: str, attempts: Attempts, *, ncbi: bool = False):
        try:
            body, _ = self.client.get_bytes(url, ncbi=ncbi)
        except NetError as exc:
            category = "no PDF link" if exc.status in (403, 404, 410) else "network"
            attempts.add(route, category, str(exc))
            return None
        try:
            check_pdf(body)
        except NotAPdf as exc:
            attempts.add(route, "not a PDF", f"{exc} from {url}")
            return None
        return body

    def _pmc_oa(self, rec: Record, attempts: Attempts) -> tuple[bytes, str] | None:
        try:
            oa = oa_lookup(self.client, rec.pmcid or "")
        except (NetError, ServiceError) as exc:
            attempts.add("pmc-oa", "network", str(exc))
            return None
        rec.open_access = oa.open_access
        if oa.license:
            rec.license = oa.license
        if not oa.open_access:
            attempts.add("pmc-oa", "not open access", oa.error or oa.error_code or "not in OA")
            return None
        if "pdf" in oa.links:
            body = self._fetch_pdf(oa.links["pdf"], "pmc-oa", attempts, ncbi=True)
            if body is not None:
                return body, "pmc-oa"
        if "tgz" in oa.links:
            return self._package(rec, oa.links["tgz"], attempts)
        if "pdf" not in oa.links:
            attempts.add("pmc-oa", "no PDF link", "OA record lists no pdf or tgz link")
        return None

    def _package(self, rec: Record, url: str, attempts: Attempts) -> tuple[bytes, str] | None:
        try:
            body, _ = self.client.get_bytes(url, ncbi=True)
        except NetError as exc:
            attempts.add("pmc-oa-package", "network", str(exc))
            return None
        try:
            files = read_tar(body, self.limits)
        except ArchiveError as exc:
            attempts.add("pmc-oa-package", "bad package", f"{exc} ({url})")
            return None
        self._keep_figures(rec, files)
        for name in pdfs_in(files):
            try:
                check_pdf(files[name])
            except NotAPdf as exc:
                attempts.add("pmc-oa-package", "not a PDF", f"{name}: {exc}")
                continue
            rec.extra["package_pdf"] = name
            return files[name], "pmc-oa-package"
        attempts.add("pmc-oa-package", "no PDF link", "package holds no usable PDF")
        return None

    def _keep_figures(self, rec: Record, files: dict[str, bytes]) -> None:
        """Save the package's figure files as RGB PNG ``source="package"`` image rows."""
        for key in [
            k
            for k, i in self.manifest.images.items()
            if i.record_id == rec.id and i.source == "package"
        ]:
            del self.manifest.images[key]
        captions = figure_captions(files)
        out_dir = self.manifest.run_dir / "images" / record_slug(rec.id)
        refused: list[str] = []
        seen: set[str] = set()
        for name in pick_figures(list(files)):
            try:
                rgb = decode_image(files[name], name, self.limits.max_image_pixels)
            except ArchiveError as exc:
                refused.append(str(exc))
                continue
            buf = io.BytesIO()
            rgb.save(buf, format="PNG")
            png = buf.getvalue()
            digest = hashlib.sha256(png).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            stem = record_slug(PurePosixPath(name).stem)
            path = out_dir / f"pkg_{stem}.png"
            atomic_write_bytes(path, png)
            self.manifest.add_image(
                Image(
                    id=f"{rec.id}/pkg_{stem}",
                    record_id=rec.id,
                    path=self.manifest.relative(path),
                    sha256=digest,
                    width=rgb.width,
                    height=rgb.height,
                    page=None,
                    source="package",
                    caption=captions.get(PurePosixPath(name).stem),
                    extra={"package_member": name},
                )
            )
        if refused:
            rec.extra["refused_package_figures"] = refused

    def _europepmc(self, rec: Record, attempts: Attempts) -> tuple[bytes, str] | None:
        url = self.client.config.europepmc_url.rstrip("/") + f"/articles/{rec.pmcid}?pdf=render"
        body = self._fetch_pdf(url, "europepmc", attempts)
        return (body, "europepmc") if body is not None else None

    def _publisher(self, rec: Record, attempts: Attempts) -> tuple[bytes, str] | None:
        try:
            links = publisher_links(self.client, rec.pmid or "")
        except (NetError, ServiceError) as exc:
            attempts.add("pubmed2pdf", "network", f"elink prlinks: {exc}")
            return None
        if not links:
            attempts.add("pubmed2pdf", "no PDF link", "PubMed lists no publisher link")
            return None
        for link in links[:3]:
            try:
                page, response = self.client.get_bytes(link)
            except NetError as exc:
                category = "no PDF link" if exc.status in (401, 403, 404, 410) else "network"
                attempts.add("pubmed2pdf", category, str(exc))
                continue
            if page[:1024].lstrip().startswith(b"%PDF"):  # the link is the PDF itself
                try:
                    check_pdf(page)
                    return page, "pubmed2pdf"
                except NotAPdf as exc:
                    attempts.add("pubmed2pdf", "not a PDF", f"{exc} from {link}")
                    continue
            pdf_url = find_pdf_link(str(response.url), page)
            if not pdf_url:
                attempts.add("pubmed2pdf", "no PDF link", f"no PDF link on {response.url}")
                continue
            body = self._fetch_pdf(pdf_url, "pubmed2pdf", attempts)
            if body is not None:
                return body, "pubmed2pdf"
        return None


def run_download(
    run_dir: Path,
    *,
    net: NetConfig,
    retry_failed: bool = False,
    progress: bool = True,
    limits: ArchiveLimits | None = None,
) -> StageSummary:
    """Download a PDF for every searched record not yet downloaded (resumable)."""
    manifest = Manifest.load(run_dir)
    with NetClient(net) as client:
        work = Downloader(manifest, client, limits)
        return run_per_record(
            manifest, "downloaded", work, progress=progress, retry_failed=retry_failed
        )
