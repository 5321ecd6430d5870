"""Stage 2: the article files of every record, from the best route that has them.

Routes, in order (see :mod:`histofetch.sources` and docs/histofetch-network.md):

1. ``pmc-cloud`` — the PMC Cloud Service (S3 bucket ``pmc-oa-opendata``): JATS, the
   figure files as published (MD5-checked) and the PDF when the licence allows.
2. ``europepmc`` — Europe PMC's ``fullTextXML`` and its inline-image ZIP.
3. ``europepmc-pdf`` then ``pubmed2pdf`` — a PDF only, for ``extract`` to take apart;
   before them ``pmc-cloud-pdf``, the bucket's PDF of a version without JATS (held by
   route 1's miss until route 2 has no figures either).

Figures named by JATS become ``source="jats"`` image rows (RGB PNG, caption, figure id and
label); a record that has them skips PDF image extraction, so each figure appears once.
Retracted articles and licences the ``--licence`` policy refuses stop the record with the
reason. Every miss is one line ``<category>: <route>: <detail>; ...``, the category being
what ``histofetch status`` counts.
"""

from __future__ import annotations

import errno
import hashlib
import io
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from histocore.io import (
    atomic_write_bytes,
    file_in_the_way,
    free_name,
    record_slug,
    write_new,
)
from histocore.manifest import Image, Manifest, Record
from histofetch.archive import ArchiveError, ArchiveLimits, decode_image
from histofetch.http import NetClient, NetConfig
from histofetch.licence import allowed
from histofetch.pool import run_records
from histofetch.resolve import canonical_pmcid
from histofetch.sources import ArticleFiles, Miss, Policy, Route
from histofetch.sources.europepmc import EuropePmc
from histofetch.sources.pdf_routes import EuropePmcPdf, NotAPdf, Publisher, check_pdf
from histofetch.sources.pmc_cloud import PmcCloud, UnreadableMetadata
from histofetch.stage import StageFailure, StageSummary

#: ``Record.route`` of a PMC Cloud Service version without JATS whose PDF was kept: taken
#: as the first PDF route, once the figure routes had no figures (``pdf_source`` pmc-cloud).
HELD_PDF_ROUTE = "pmc-cloud-pdf"

#: ``Record.extra`` key: the bucket version (``PMCn.v``) whose metadata JSON was not JSON
#: at the record's last attempt (network trouble then); the same again is a miss for good.
UNREADABLE_KEY = "unreadable_metadata"

#: Categories, most actionable first: the first one present names a record's failure.
CATEGORY_ORDER = (
    "retracted",
    "licence",
    "checksum",
    "bad file",
    "bad package",
    "encrypted PDF",
    "not a PDF",
    "network",
    "not open access",
    "no PMCID",
    "not in bucket",
    "no JATS",
    "no full text",
    "no figure files",
    "no figures",
    "no PDF link",
)


@dataclass
class Attempts:
    """What each route said, to build one honest failure reason."""

    notes: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)

    def add(self, route: str, category: str, detail: str) -> None:
        self.categories.append(category)
        self.notes.append(f"{route}: {detail}")

    def reason(self) -> str:
        cats = [c for c in CATEGORY_ORDER if c in self.categories] or self.categories
        return f"{(cats or ['no files'])[0]}: " + "; ".join(self.notes)


class Downloader:
    """Fetches article files for the records of one manifest."""

    def __init__(
        self,
        manifest: Manifest,
        client: NetClient,
        limits: ArchiveLimits | None = None,
        policy: Policy | None = None,
        pdf_names: PdfNames | None = None,
    ) -> None:
        self.manifest = manifest
        #: the PDF paths rows name, and the ids naming each (default: ``manifest``'s)
        self.pdf_names = pdf_names if pdf_names is not None else PdfNames(manifest)
        self.limits = limits or ArchiveLimits()
        self.policy = policy or Policy()
        self.cloud = PmcCloud(client, self.policy)
        self.figure_routes: tuple[Route, ...] = (
            self.cloud,
            EuropePmc(client, self.policy, self.limits),
        )
        self.pdf_by_pmcid: Route = EuropePmcPdf(client)
        self.pdf_by_pmid: Route = Publisher(client)

    def __call__(self, rec: Record) -> None:
        unreadable_before = rec.extra.pop(UNREADABLE_KEY, None)
        self.cloud.metadata_read = set()
        try:
            self._attempt(rec, unreadable_before)
        except StageFailure:
            # An attempt that never read that version's metadata (the bucket listing
            # answered 503...) keeps the earlier sight of it: a flaky bucket kept the record
            # failing, transient, for ever, the 'not JSON twice running' rule never met.
            kept = UNREADABLE_KEY in rec.extra or unreadable_before in self.cloud.metadata_read
            if unreadable_before and not kept:
                rec.extra[UNREADABLE_KEY] = unreadable_before
            raise

    def _attempt(self, rec: Record, unreadable_before: str | None) -> None:
        # A retry starts clean: rows and fields an earlier attempt of this stage wrote go.
        self.manifest.drop_images_of(rec.id)
        rec.route = rec.pdf_path = rec.pdf_sha256 = rec.pdf_source = None
        rec.extra.pop("failed_files", None)
        rec.extra.pop("route_misses", None)
        rec.extra.pop("pmc_version_note", None)
        if rec.is_retracted and not self.policy.include_retracted:
            raise StageFailure(
                "retracted: the article is marked retracted (--include-retracted keeps it)"
            )
        attempts = Attempts()
        routes: list[tuple[Route, str]] = []
        pmcid = canonical_pmcid(rec.pmcid)  # it goes into URLs: PMC and digits only
        if pmcid:
            rec.pmcid = pmcid  # " pmc123\n" in a hand-edited manifest → "PMC123"
            routes += [(route, pmcid) for route in self.figure_routes]
            routes.append((self.pdf_by_pmcid, pmcid))
        elif rec.pmcid:
            detail = f"record's PMCID {str(rec.pmcid)[:40]!r} is not PMC and digits (not used)"
            attempts.add("pmc-cloud/europepmc", "no PMCID", detail)
        else:
            attempts.add("pmc-cloud/europepmc", "no PMCID", "record has no PMCID (not in PMC)")
        if rec.pmid:
            routes.append((self.pdf_by_pmid, rec.pmid))
        figure_trouble = False
        held: ArticleFiles | None = None  # a figure route's checked PDF without figures
        failed: list[str] = []  # every route's files named but not kept, in route order
        for route, key in routes:
            name = route.name
            is_pdf_route = route in (self.pdf_by_pmcid, self.pdf_by_pmid)
            if is_pdf_route and held is not None:  # the first PDF route: the held PDF
                files, held = held, None
                if self._pdf_route_allowed(rec, HELD_PDF_ROUTE, attempts, figure_trouble):
                    self._keep(rec, files)  # checked by its route: it is kept
                    rec.route = HELD_PDF_ROUTE
                    rec.extra["route_misses"] = attempts.notes[:10]
                    return
            if is_pdf_route and not self._pdf_route_allowed(rec, name, attempts, figure_trouble):
                break
            try:
                files = route(key)
            except Miss as caught:
                miss = caught
                if isinstance(caught, UnreadableMetadata):
                    miss = _unreadable(rec, caught, unreadable_before)
                attempts.add(name, miss.category, miss.detail)
                figure_trouble |= miss.category == "network" and not is_pdf_route
                if miss.files is not None:
                    self._note(rec, miss.files)
                    failed += _routed(miss.files.route, miss.files.failures)  # encrypted PDF too
                    _failed_files(rec, failed)
                    if miss.files.pdf is not None and held is None and not is_pdf_route:
                        held = miss.files
                if miss.final:
                    raise StageFailure(f"{miss.category}: {name}: {miss.detail}") from None
                continue
            self._note(rec, files)
            kept, failures = self._keep(rec, files)
            if kept:
                if attempts.notes:  # why the better routes gave nothing (a corrupt ZIP...)
                    rec.extra["route_misses"] = attempts.notes[:10]
                return
            attempts.add(name, *_nothing_kept(files, failures))
            failed += _routed(files.route, failures)
            _failed_files(rec, failed)
        # A figure route out of reach for now kept the PDF routes from being tried: the
        # next run retries the record, whichever category leads its reason.
        raise StageFailure(attempts.reason(), transient=True if figure_trouble else None)

    def _pdf_route_allowed(
        self, rec: Record, name: str, attempts: Attempts, figure_trouble: bool
    ) -> bool:
        """A PDF route waits while a figure route had network trouble (its figures are
        better, and a ``network`` failure is retried), and needs a licence the policy takes."""
        if figure_trouble:
            attempts.add(name, "network", "not tried while a figure route has network trouble")
            return False
        if not allowed(rec.license, self.policy.licence):
            detail = f"licence {rec.license or 'unknown'}, not allowed by --licence "
            attempts.add(name, "licence", detail + self.policy.licence)
            return False
        return True

    # -- what a route learnt ---------------------------------------------------------------
    @staticmethod
    def _note(rec: Record, files: ArticleFiles) -> None:
        """Copy the article facts a route learnt onto the record (whether kept or not)."""
        if files.licence:
            rec.license = files.licence
        for name in ("open_access", "is_retracted", "is_manuscript", "citation"):
            value = getattr(files, name)
            if value is not None:
                setattr(rec, name, value)
        if files.version is not None:
            rec.pmc_version = files.version
        if files.version_note:
            rec.extra["pmc_version_note"] = files.version_note
        for name, value in files.ids.items():  # e.g. a `search --db pmc` hit without a PMID
            if getattr(rec, name) is None:
                setattr(rec, name, value)

    def _keep(self, rec: Record, files: ArticleFiles) -> tuple[bool, list[str]]:
        """Save the route's figures and PDF: whether anything was kept, and the files
        named but not kept (also the record's ``extra["failed_files"]``)."""
        failures = list(files.failures)
        kept_figures = self._keep_figures(rec, files, failures)
        kept_pdf = False
        if files.pdf is not None:
            try:
                check_pdf(files.pdf)
            except NotAPdf as exc:
                failures.append(f"PDF: {exc}")
            else:
                path = self.manifest.run_dir / self.pdf_names.write(rec.id, files.pdf)
                rec.pdf_path = self.manifest.relative(path)
                rec.pdf_sha256 = hashlib.sha256(files.pdf).hexdigest()
                rec.pdf_source = files.route
                kept_pdf = True
        if kept_figures or kept_pdf:  # the kept route's list replaces an earlier route's
            rec.extra.pop("failed_files", None)  # (whose story is in route_misses)
        _failed_files(rec, _routed(files.route, failures))
        if kept_figures or kept_pdf:
            rec.route = files.route
            return True, failures
        return False, failures

    def _keep_figures(self, rec: Record, files: ArticleFiles, failures: list[str]) -> bool:
        """One ``source="jats"`` row and PNG per distinct figure file; True if any was kept.

        A file named by several ``<fig>`` elements (or two files with the same pixels) is
        kept once, the other figures listed in its ``extra["also_figures"]``.
        """
        out_dir = self.manifest.run_dir / "images" / record_slug(rec.id)
        by_digest: dict[str, Image] = {}
        taken: set[str] = set()
        for ff in files.figures:
            try:
                rgb = decode_image(ff.data, ff.name, self.limits.max_image_pixels)
            except ArchiveError as exc:
                failures.append(f"{ff.figure.label or ff.figure.id}: {exc}")
                continue
            buf = io.BytesIO()
            rgb.save(buf, format="PNG")
            png = buf.getvalue()
            digest = hashlib.sha256(png).hexdigest()
            if digest in by_digest:
                also = {"figure_id": ff.figure.id, "figure_label": ff.figure.label}
                by_digest[digest].extra.setdefault("also_figures", []).append(
                    also | {"file": ff.name}
                )
                continue
            stem = figure_stem(ff.name, taken)
            path = out_dir / f"fig_{stem}.png"
            atomic_write_bytes(path, png)
            extra = {"file": ff.name, "href": ff.href, "route": files.route}
            if ff.md5:
                extra["md5"] = ff.md5
            by_digest[digest] = self.manifest.add_image(
                Image(
                    id=f"{rec.id}/fig_{stem}",
                    record_id=rec.id,
                    path=self.manifest.relative(path),
                    sha256=digest,
                    width=rgb.width,
                    height=rgb.height,
                    page=None,
                    source="jats",
                    caption=ff.figure.caption,
                    figure_id=ff.figure.id,
                    figure_label=ff.figure.label,
                    extra=extra,
                )
            )
        return bool(by_digest)


def _unreadable(rec: Record, miss: UnreadableMetadata, before: str | None) -> Miss:
    """A metadata JSON that is not JSON is network trouble the first time (the record is
    retried by the next run: a proxy's error page passes); the same version's again at the
    next attempt is the route's miss for good, and the next routes are tried (it failed the
    record as ``network`` on every run, the PDF routes never tried)."""
    rec.extra[UNREADABLE_KEY] = miss.name
    if before != miss.name:
        return miss
    return Miss("bad file", f"{miss.detail}, as on the run before: the next routes are tried")


def _routed(route: str, failures: list[str]) -> list[str]:
    """Failure lines naming their route (``pmc-cloud: Figure 1.: …``): two routes missing
    the same file wrote the same line, and the record's list kept it once."""
    return [f"{route}: {f}" for f in failures]


def _failed_files(rec: Record, failures: list[str]) -> None:
    """Files named but not kept, as ``extra["failed_files"]`` (each once, at most 50): the
    kept route's own, or, while no route kept anything, every route's in the order tried
    (it held only the last route's list: the bucket's MD5 failures vanished behind Europe
    PMC's missing files)."""
    if failures:
        rec.extra["failed_files"] = list(dict.fromkeys(failures))[:50]


def _nothing_kept(files: ArticleFiles, failures: list[str]) -> tuple[str, str]:
    """The miss (category, detail) of a route whose files were all refused. Figure files
    it fetched (MD5-checked) that could not be decoded are a ``bad file``, not the same as
    a route with no figures (it read 'no figure files', and Europe PMC's 'no full text'
    named the record's failure). Files that failed their MD5 check twice make it a
    ``checksum`` miss (every figure file failing it read 'no figures', as if none was
    named)."""
    listed = (" (" + "; ".join(failures[:5]) + ")") if failures else ""
    refused = files.pdf is not None or any(f.startswith("PDF: ") for f in failures)
    pdf = "no usable PDF" if refused else "no PDF"  # a PDF it had was refused, or none
    if files.checksum_failures:
        n = files.checksum_failures
        what = f"{n} file{'s' if n != 1 else ''} failed {'their' if n != 1 else 'its'} MD5 check"
        return "checksum", f"{what} twice, nothing kept, and {pdf}{listed}"
    if files.figures:  # each was decoded (and so kept) or refused: none was kept
        n = len(files.figures)
        what = (
            "its figure file could not be decoded"
            if n == 1
            else f"none of its {n} figure files could be decoded"
        )
        return "bad file", f"{what}, and {pdf}{listed}"
    return "no figures", f"no figure files and {pdf}{listed}"


#: How ``filter`` names a panel cut from figure ``<stem>`` (``<stem>_panel01``).
_PANEL_NAME = re.compile(r"_(panel\d+)$", re.IGNORECASE)


def figure_stem(name: str, taken: set[str]) -> str:
    """The PNG stem (and image id part) of figure file ``name``, unique in its record.

    Unique ignoring case (``Fig1.png`` and ``fig1.tif`` are one file on macOS and Windows
    disks): the first file of a stem keeps it, the next get ``_2``, ``_3``… in JATS order.
    A stem ending like a panel's (``fig1_panel01``) becomes ``fig1-panel01`` so that the
    panels ``filter`` cuts from ``fig1`` cannot overwrite it. ``taken`` holds the stems
    given so far (lower case) and is updated.
    """
    base = _PANEL_NAME.sub(r"-\1", record_slug(PurePosixPath(name).stem))
    stem, n = base, 1
    while stem.lower() in taken:  # a/fig1.jpg and b/fig1.tif: not one another's file
        n += 1
        stem = f"{base}_{n}"
    taken.add(stem.lower())
    return stem


class PdfNames:
    """The PDF paths the records of a run name, each with the ids naming it, and the names
    this download run gave since: one object for all of a run's records (and threads)."""

    def __init__(self, manifest: Manifest) -> None:
        self.run_dir = manifest.run_dir
        self.names: dict[str, set[str]] = {}
        for rec in manifest.records.values():
            if rec.pdf_path:
                self.names.setdefault(rec.pdf_path, set()).add(rec.id)
        self._lock = threading.Lock()

    def _take(self, record_id: str, data: bytes) -> tuple[str, bool]:
        """Where record ``record_id`` writes its PDF ``data``, and whether that name was
        this record's already (its row names it, or this process gave it to the record
        before): ``pdfs/<slug>.pdf``, or with ``-2``, ``-3``, … added where another
        record's row names that file (a record renamed from this id, or merged in, kept its
        PDF's name; writing there would replace that article's PDF), or another record of
        this run took it (ids that slug alike, ``x:1`` and ``x_1``: the names were read
        once, when the run began, and the second wrote over the first's PDF), or a file
        there holds other bytes than ``data`` and no row names it for this record (another
        process on the run wrote it since this one began; the same bytes are this
        record's, left by a run killed before its commit). The name is this record's from
        now on. Private: only :meth:`write` may take a name, as it writes the file there
        at once (a name taken and written later could be taken by another process
        meanwhile)."""

        def taken(p: PurePosixPath) -> bool:
            if self.names.get(str(p), set()) - {record_id}:
                return True
            if record_id in self.names.get(str(p), set()):
                return False
            return _holds(self.run_dir / p, data) is False

        with self._lock:
            rel = free_name(PurePosixPath(f"pdfs/{record_slug(record_id)}.pdf"), taken).as_posix()
            own = record_id in self.names.get(rel, set())
            self.names.setdefault(rel, set()).add(record_id)
            return rel, own

    def write(self, record_id: str, data: bytes) -> str:
        """Write record ``record_id``'s PDF ``data`` under the name :meth:`_take` gives, and
        return that name. Never over a file another download process puts there between
        the name's choice and the write (it chose the same free name: the write replaced
        its PDF, both rows naming one file): the file is written only where none is
        (:func:`histocore.io.write_new`), else the next free name is taken; a file there
        with the same bytes is this record's. A name that was the record's already (its row
        names it: a download again) is written over, as the record's own file."""
        while True:
            rel, own = self._take(record_id, data)
            path = self.run_dir / rel
            if own:
                atomic_write_bytes(path, data)
                return rel
            if write_new(path, data) or _holds(path, data):
                return rel
            with self._lock:  # another's since _take() looked: not this record's name
                self.names[rel].discard(record_id)


def _holds(path: Path, data: bytes) -> bool | None:
    """Whether the file at ``path`` holds ``data``: None when there is none; False for a
    FIFO, a link or a folder (not read), a file of another size, or one unreadable. A name
    that cannot be looked at is about its folder (``pdfs`` a file, a link loop, a folder
    not searchable): an OSError naming the folder in the way, or the lookup's own (every
    name was 'taken' then, and the download tried ``-2``, ``-3``, … for ever)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        in_the_way = file_in_the_way(path)
        if in_the_way is None:
            raise
        blocker, problem = in_the_way
        raise NotADirectoryError(errno.ENOTDIR, problem, str(blocker)) from exc
    if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
        return False
    try:
        return path.read_bytes() == data
    except OSError:  # unreadable: not a name to write to
        return False


def run_download(
    run_dir: Path,
    *,
    net: NetConfig,
    retry_failed: bool = False,
    limits: ArchiveLimits | None = None,
    policy: Policy | None = None,
    jobs: int = 1,
) -> StageSummary:
    """Fetch the article files of every searched record not yet downloaded (resumable)."""
    manifest = Manifest.load(run_dir)
    with manifest, NetClient(net) as client:  # thread-safe; one rate limiter per host
        pdf_names = PdfNames(manifest)  # a worker's manifest holds its record only

        def work(mini: Manifest, rec: Record) -> None:
            Downloader(mini, client, limits, policy, pdf_names)(rec)

        # Threads: records from different hosts download at once, each host at its rate.
        return run_records(
            manifest,
            "downloaded",
            work,
            jobs=jobs,
            threads=True,
            retry_failed=retry_failed,
            cancel=client.cancel,  # Ctrl-C: running downloads stop, nothing is committed
        )
