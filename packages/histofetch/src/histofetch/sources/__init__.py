"""Routes from a record to its article files, one module per route.

Each route turns a record into :class:`ArticleFiles` (JATS figures with their captions,
a PDF, the licence and flags it learnt) or raises :class:`Miss` with a category and a
one-line detail. ``download`` tries them in order: ``pmc_cloud`` (the PMC Cloud Service),
``europepmc`` (JATS + inline images), then ``pdf_routes`` (Europe PMC render, publisher
page via pubmed2pdf's finders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from histofetch.jats import Figure
from histofetch.licence import allowed


class Miss(Exception):
    """A route that has nothing for this record; ``category`` is what status counts.

    ``final`` misses stop the record (retracted, licence refused): later routes would
    fetch the same article.
    """

    def __init__(
        self, category: str, detail: str, *, final: bool = False, files: ArticleFiles | None = None
    ) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail
        self.final = final
        #: What the route learnt before it stopped (licence, flags), for the record.
        self.files = files


@dataclass
class FigureFile:
    """One verified image file named by a ``<graphic>`` of a ``<fig>``."""

    figure: Figure
    href: str
    name: str  # object key or ZIP member the href resolved to
    data: bytes
    md5: str | None = None


@dataclass
class ArticleFiles:
    """What one route got for a record."""

    route: str
    figures: list[FigureFile] = field(default_factory=list)
    pdf: bytes | None = None
    licence: str | None = None
    open_access: bool | None = None
    is_retracted: bool | None = None
    is_manuscript: bool | None = None
    citation: str | None = None
    version: int | None = None
    #: Why ``version`` is not the newest open-access version (e.g. that one has no JATS).
    version_note: str | None = None
    #: Identifiers and title the source states (fill a record's gaps, never overwrite).
    ids: dict[str, str] = field(default_factory=dict)
    #: One line per file that was named but not kept (missing, MD5 mismatch, too large).
    failures: list[str] = field(default_factory=list)
    #: How many of those failed their MD5 check twice (the route's miss is then
    #: ``checksum`` when it keeps nothing, not ``no figures``).
    checksum_failures: int = 0


class Route(Protocol):
    """A route: ``route(key)`` with a PMCID (or a PMID for ``pubmed2pdf``)."""

    name: str

    def __call__(self, key: str, /) -> ArticleFiles: ...


@dataclass(frozen=True)
class Policy:
    """What the user accepts: ``--licence`` and ``--include-retracted``."""

    licence: str = "any"
    include_retracted: bool = False

    def check(self, files: ArticleFiles) -> None:
        """Raise a final :class:`Miss` for a retracted article or a refused licence."""
        if files.is_retracted and not self.include_retracted:
            raise Miss(
                "retracted",
                "the article is retracted (--include-retracted keeps it)",
                final=True,
                files=files,
            )
        if not allowed(files.licence, self.licence):
            raise Miss(
                "licence",
                f"{files.licence or 'unknown licence'} is not allowed by --licence {self.licence}",
                final=True,
                files=files,
            )
