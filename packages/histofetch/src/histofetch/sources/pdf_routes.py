"""The PDF fallback routes, for articles with no JATS figure files anywhere.

``europepmc-pdf``: Europe PMC's rendered PDF (``/articles/PMCxxxx?pdf=render``; in 2026
it often answers 403 or a JavaScript challenge to scripts). ``pubmed2pdf``: the publisher
page NCBI links (elink ``prlinks``), searched for a PDF link with the finders of the
``pubmed2pdf`` package and fetched with our client. A body is accepted only if it starts
with ``%PDF`` and opens in PyMuPDF with pages, without a password; HTML, error pages and
PDFs that need a password are reasons, never files (the next route is tried).
"""

from __future__ import annotations

from urllib.parse import urljoin

from histofetch.http import NetClient, NetError
from histofetch.pdf_checks import UnreadablePdf, open_document
from histofetch.resolve import ServiceError, publisher_links
from histofetch.sources import ArticleFiles, Miss

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
    """A body that is not a usable PDF; the message says what it looked like, ``category``
    is the route miss's (what ``histofetch status`` counts)."""

    category = "not a PDF"


class EncryptedPdf(NotAPdf):
    """A PDF that needs a password to open (one encrypted with an empty user password
    opens without one and is a usable PDF)."""

    category = "encrypted PDF"


def check_pdf(data: bytes) -> None:
    """Nothing for a PDF with pages that PyMuPDF opens without a password, else
    :class:`NotAPdf` (:class:`EncryptedPdf` for one that needs a password) with what the
    body looks like."""
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
        doc, pages = open_document(data)
    except UnreadablePdf as exc:
        what = "read its page tree" if exc.opened else "open it"
        raise NotAPdf(f"PDF header but PyMuPDF cannot {what} ({exc.detail})") from None
    doc.close()
    if pages is None:  # extract could not read it either: the next route may have a copy
        raise EncryptedPdf("got an encrypted PDF that needs a password")
    if pages == 0:
        raise NotAPdf("PDF without pages")


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


def _category(exc: NetError) -> str:
    """A PDF route's miss for a failed request: refused (``no PDF link``), a body over the
    size limit (``bad file``: as large next time), else ``network`` (a later run retries)."""
    if exc.status in (401, 403, 404, 410):
        return "no PDF link"
    return "bad file" if exc.too_large else "network"


def fetch_pdf(client: NetClient, url: str) -> bytes:
    """A checked PDF from ``url`` or a :class:`Miss` saying what came instead."""
    try:
        body, _ = client.get_bytes(url)
    except NetError as exc:
        raise Miss(_category(exc), str(exc)) from None
    try:
        check_pdf(body)
    except NotAPdf as exc:
        raise Miss(exc.category, f"{exc} from {url}") from None
    return body


class EuropePmcPdf:
    """Route ``europepmc-pdf``: Europe PMC's rendered PDF of a PMC article."""

    name = "europepmc-pdf"

    def __init__(self, client: NetClient) -> None:
        self.client = client

    def __call__(self, pmcid: str) -> ArticleFiles:
        base = self.client.config.europepmc_render_url.rstrip("/")
        pdf = fetch_pdf(self.client, f"{base}/articles/{pmcid}?pdf=render")
        return ArticleFiles(route=self.name, pdf=pdf)


class Publisher:
    """Route ``pubmed2pdf``: a PDF link on the publisher page that PubMed links to."""

    name = "pubmed2pdf"

    def __init__(self, client: NetClient) -> None:
        self.client = client

    def __call__(self, pmid: str) -> ArticleFiles:
        try:
            links = publisher_links(self.client, pmid)
        except (NetError, ServiceError) as exc:
            raise Miss("network", f"elink prlinks: {exc}") from None
        if not links:
            raise Miss("no PDF link", "PubMed lists no publisher link")
        misses: list[Miss] = []
        for link in links[:3]:
            try:
                return ArticleFiles(route=self.name, pdf=self._from_link(link))
            except Miss as miss:
                misses.append(miss)
        order = ("encrypted PDF", "not a PDF", "network", "no PDF link")
        misses.sort(key=lambda m: order.index(m.category) if m.category in order else 9)
        raise Miss(misses[0].category, "; ".join(m.detail for m in misses))

    def _from_link(self, link: str) -> bytes:
        try:
            page, response = self.client.get_bytes(link)
        except NetError as exc:
            raise Miss(_category(exc), str(exc)) from None
        if page[:1024].lstrip().startswith(b"%PDF"):  # the link is the PDF itself
            try:
                check_pdf(page)
            except NotAPdf as exc:
                raise Miss(exc.category, f"{exc} from {link}") from None
            return page
        pdf_url = find_pdf_link(str(response.url), page)
        if not pdf_url:
            raise Miss("no PDF link", f"no PDF link on {response.url}")
        return fetch_pdf(self.client, pdf_url)
