"""Route ``pmc-cloud``: the PMC Cloud Service, the S3 bucket ``pmc-oa-opendata``.

Since NCBI retired oa.fcgi and the FTP packages (2026), the bucket is where PMC's
open-access articles are: one key prefix per article version (``PMC123.2/``) with the
JATS XML, a metadata JSON (licence, retraction, manuscript flag, the MD5 of every file),
the PDF when the licence allows, and the figure files as published. Everything is read
with plain unsigned GETs through :class:`~histofetch.http.NetClient` (the bucket's rate
limit, retries on ``503 SlowDown``). Pitfalls handled here: a missing PMCID answers 200
with ``KeyCount`` 0 (not 404), the listing echoes the request's own prefix, listings are
paged with continuation tokens, and versions have no documented order.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, unquote, urlsplit

from histocore.io import loads_json
from histofetch.http import NetClient, NetError
from histofetch.jats import JatsError, match_href, parse_xml, read_article
from histofetch.licence import normalise
from histofetch.sources import ArticleFiles, FigureFile, Miss, Policy
from histofetch.sources.pdf_routes import NotAPdf, check_pdf

log = logging.getLogger(__name__)

ROUTE = "pmc-cloud"
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: Most listing pages followed for one prefix (1,000 keys each).
MAX_PAGES = 50
_VERSION_PREFIX = re.compile(r"^(PMC\d+)\.(\d+)/$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Listing:
    """Keys (with their ETags) and common prefixes under one prefix, all pages joined."""

    keys: dict[str, str | None] = field(default_factory=dict)
    prefixes: list[str] = field(default_factory=list)


def _url(client: NetClient, key: str = "") -> str:
    """The HTTPS URL of an object (its key percent-encoded: file names may hold spaces)."""
    return client.config.pmc_cloud_url.rstrip("/") + "/" + quote(key, safe="/")


def parse_listing(body: bytes) -> tuple[Listing, str | None]:
    """One ListObjectsV2 page → its keys/prefixes and the next continuation token."""
    try:
        root = parse_xml(body, max_bytes=16 * 1024 * 1024)
    except JatsError as exc:
        raise Miss("network", f"bucket listing unreadable ({exc})") from None
    if root.tag != f"{S3_NS}ListBucketResult":
        raise Miss("network", f"bucket answered <{root.tag}>, not an S3 ListBucketResult")
    page = Listing()
    for item in root.iterfind(f"{S3_NS}Contents"):
        key = item.findtext(f"{S3_NS}Key")
        if key:
            etag = (item.findtext(f"{S3_NS}ETag") or "").strip('" ').lower() or None
            page.keys[key] = etag
    for item in root.iterfind(f"{S3_NS}CommonPrefixes"):
        prefix = item.findtext(f"{S3_NS}Prefix")
        if prefix:
            page.prefixes.append(prefix)
    truncated = (root.findtext(f"{S3_NS}IsTruncated") or "").strip().lower() == "true"
    token = root.findtext(f"{S3_NS}NextContinuationToken") if truncated else None
    if truncated and not token:
        raise Miss("network", "bucket listing is truncated but gives no continuation token")
    return page, token


def list_prefix(client: NetClient, prefix: str, *, delimiter: str | None = None) -> Listing:
    """Every key/common prefix under ``prefix`` (ListObjectsV2, following continuation)."""
    out = Listing()
    params: dict[str, str] = {"list-type": "2", "prefix": prefix}
    if delimiter:
        params["delimiter"] = delimiter
    for _ in range(MAX_PAGES):
        body, _response = client.get_bytes(_url(client), params=params)
        page, token = parse_listing(body)
        out.keys.update(page.keys)
        out.prefixes += [p for p in page.prefixes if p not in out.prefixes]
        if token is None:
            return out
        params["continuation-token"] = token
    raise Miss("network", f"bucket listing of {prefix!r} longer than {MAX_PAGES} pages")


def versions(client: NetClient, pmcid: str) -> list[int]:
    """The article's version numbers in the bucket, highest first (empty: not there)."""
    listing = list_prefix(client, f"{pmcid}.", delimiter="/")
    found = set()
    for prefix in listing.prefixes:  # the listing also echoes the request's own prefix
        match = _VERSION_PREFIX.match(prefix)
        if match and match.group(1) == pmcid:
            found.add(int(match.group(2)))
    return sorted(found, reverse=True)


def s3_key(uri: str) -> tuple[str, str | None]:
    """``s3://pmc-oa-opendata/<key>?md5=<hex>`` → (key, md5)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.path.strip("/"):
        raise ValueError(f"not an s3:// object URI: {uri[:120]!r}")
    md5 = (parse_qs(parts.query).get("md5") or [None])[-1]
    md5 = md5.lower() if md5 and _MD5.match(md5.lower()) else None
    return unquote(parts.path.lstrip("/")), md5


def get_object(client: NetClient, key: str, md5: str | None) -> bytes:
    """An object's bytes, checked against its MD5 (one re-download on a mismatch)."""
    if ".." in key.split("/") or key.startswith("/"):
        raise Miss("bad file", f"refusing object key {key[:120]!r}")
    for attempt in (1, 2):
        body, _ = client.get_bytes(_url(client, key))
        if md5 is None or hashlib.md5(body).hexdigest() == md5:
            return body
        log.warning("MD5 mismatch for %s (attempt %d)", key, attempt)
    raise Miss("checksum", f"MD5 mismatch for {key} (expected {md5}, twice)")


class UnreadableMetadata(Miss):
    """A version's metadata JSON that is not a JSON object (an HTML page: maybe a proxy's
    passing error page): ``network``, so the record is tried again; ``download`` makes the
    same answer at the record's next attempt a miss for good (``bad file``)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__("network", detail)
        #: the version, ``PMCn.v``
        self.name = name


def read_metadata(
    client: NetClient, pmcid: str, version: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A version's metadata JSON (``{}`` when the version has none: ``NoSuchKey``), its
    yes/no flags as bools, and the flags that could not be read with their raw values: such
    a flag is its safe side in the JSON (used for this download, never recorded as a fact;
    :func:`warn_unreadable` says so once per article)."""
    name = f"{pmcid}.{version}"
    try:
        body, _ = client.get_bytes(_url(client, f"{name}/{name}.json"))
    except NetError as exc:
        if exc.status == 404:
            log.warning("%s has no metadata JSON", name)
            return {}, {}
        if exc.too_large:  # as large next time: this version's miss for good
            raise Miss("bad file", f"metadata {name}.json: {exc}") from None
        raise
    try:
        meta = loads_json(body)
    except ValueError:  # NotJSON
        raise UnreadableMetadata(name, f"metadata {name}.json is not JSON") from None
    if not isinstance(meta, dict):
        raise UnreadableMetadata(name, f"metadata {name}.json is not a JSON object")
    unsure: dict[str, Any] = {}
    for flag, safe in _FLAGS.items():
        if flag not in meta:
            continue
        value = _read_flag(meta[flag])
        if value is None:
            unsure[flag], value = meta[flag], safe
        meta[flag] = value
    return meta, unsure


def warn_unreadable(pmcid: str, unsures: dict[int, dict[str, Any]]) -> None:
    """One warning per flag for an article's versions (highest first) whose flag could not
    be read (it warned once per version: an article with 3 such versions, 3 warnings)."""
    for flag, safe in _FLAGS.items():
        found = [(v, u[flag]) for v, u in unsures.items() if flag in u]
        if not found:
            continue
        names = ", ".join(f"{pmcid}.{v}.json" for v, _ in found)
        values = ", ".join(dict.fromkeys(repr(raw) for _, raw in found))
        log.warning(
            "%s: %s=%s is not true or false; taken as %s", names, flag, values, str(safe).lower()
        )


#: The metadata's yes/no fields, and what an unreadable value is taken as (the safe side).
_FLAGS = {"is_pmc_openaccess": False, "is_retracted": True, "is_manuscript": True}
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def _read_flag(value: Any) -> bool | None:
    """A metadata flag as a bool: JSON true/false (what the bucket writes), 1/0, or the
    text true/false, yes/no, 1/0 in any case; ``None`` is false; anything else is ``None``,
    unreadable (``bool("no")`` made an article retracted)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    return None


def _candidates(metas: dict[int, dict[str, Any]]) -> list[int]:
    """The versions a choice is made among, highest first: the open-access ones that are
    not author manuscripts, else (none published) the open-access manuscripts."""
    oa = sorted((v for v, m in metas.items() if m.get("is_pmc_openaccess") is True), reverse=True)
    published = [v for v in oa if not metas[v].get("is_manuscript")]
    return published or oa


def choose_version(metas: dict[int, dict[str, Any]]) -> int | None:
    """The highest open-access, non-manuscript version with JATS (``xml_url``), else the
    highest such version without; only when no published open-access version exists, an
    author manuscript by the same rule. ``None``: no open-access version."""
    pool = _candidates(metas)
    with_jats = [v for v in pool if metas[v].get("xml_url")]
    return (with_jats or pool or [None])[0]


def version_note(pmcid: str, metas: dict[int, dict[str, Any]], newest: int, chosen: int) -> str:
    """Why ``chosen`` (with JATS) was taken, not ``newest`` (the newest version it was chosen
    among, without JATS). Newer versions with JATS outside the choice (not open access, an
    author manuscript beside published versions) are named: ``chosen`` is then the newest
    of its kind with JATS, not the newest version with JATS."""
    pool = _candidates(metas)
    left = []
    for v in sorted(metas, reverse=True):
        if v > chosen and v not in pool and metas[v].get("xml_url"):
            oa = metas[v].get("is_pmc_openaccess") is True
            left.append(
                f"{pmcid}.{v} has JATS but is {'an author manuscript' if oa else 'not open access'}"
            )
    took = f"{pmcid}.{newest}.json names no xml_url (no JATS); took {pmcid}.{chosen}, the newest "
    if not left:
        return took + "version with JATS"
    manuscript = metas[chosen].get("is_manuscript")
    kind = "open-access author manuscript" if manuscript else "published open-access version"
    return took + f"{kind} with JATS ({'; '.join(left)})"


class PmcCloud:
    """The route: versions → metadata → policy → JATS → figure files (+ PDF)."""

    name = ROUTE

    def __init__(self, client: NetClient, policy: Policy) -> None:
        self.client = client
        self.policy = policy
        #: the versions (``PMCn.v``) whose metadata JSON the last call read (or found absent)
        self.metadata_read: set[str] = set()

    def __call__(self, pmcid: str) -> ArticleFiles:
        self.metadata_read = set()
        try:
            return self._fetch(pmcid)
        except NetError as exc:  # a body over the size limit is as large next time
            raise Miss("bad file" if exc.too_large else "network", str(exc)) from None

    def _fetch(self, pmcid: str) -> ArticleFiles:
        found = versions(self.client, pmcid)
        if not found:
            raise Miss("not in bucket", f"{pmcid} is not in the PMC Cloud Service (KeyCount 0)")
        metas: dict[int, dict[str, Any]] = {}
        unsures: dict[int, dict[str, Any]] = {}  # per version: flags it could not read
        passed_over = ""  # an older version whose metadata JSON could not be read
        for version in found:  # highest first; stop at a published OA version with JATS
            try:
                metas[version], unsures[version] = read_metadata(self.client, pmcid, version)
                self.metadata_read.add(f"{pmcid}.{version}")
            except (Miss, NetError) as exc:  # its JSON is not a JSON object, too large,
                # or refused for good (403, 410...); trouble a later try may not meet (5xx,
                # no answer) is re-raised: the record is fetched again later
                if isinstance(exc, NetError) and exc.transient:
                    raise
                if not _candidates(metas):  # the version read first: the route's miss
                    if isinstance(exc, NetError):  # refused for good: so next time too
                        raise Miss("bad file", f"metadata {pmcid}.{version}.json: {exc}") from None
                    raise
                # an older version looked at only for its JATS: the newer one stands
                why = exc.detail if isinstance(exc, Miss) else f"metadata: {exc}"
                passed_over = f"{why}: version {version} passed over; "
                log.warning("%s.%s: %s", pmcid, version, passed_over.removesuffix("; "))
                break
            meta = metas[version]
            published = meta.get("is_pmc_openaccess") is True and not meta.get("is_manuscript")
            if published and meta.get("xml_url"):
                break
        warn_unreadable(pmcid, unsures)
        chosen = choose_version(metas)
        if chosen is None:
            top = metas[found[0]]
            raise Miss(
                "not open access",
                f"{pmcid}: no open-access version in the bucket (versions "
                f"{', '.join(map(str, sorted(found)))}; licence {top.get('license_code')})",
            )
        newest = _candidates(metas)[0]  # newer than chosen: it has no JATS
        newer = None
        if newest != chosen:  # its retraction is the article's; its licence is its own
            retraction = Policy(include_retracted=self.policy.include_retracted)
            newer = self._checked_files(pmcid, newest, metas[newest], unsures[newest], retraction)
        try:
            files = self._checked_files(pmcid, chosen, metas[chosen], unsures[chosen])
        except Miss as miss:  # the older version's licence or retraction flag refuses it
            if newer is None:
                raise
            self.policy.check(newer)  # the newest version on its own terms: its PDF
            done = f"{pmcid}.{chosen} (JATS) refused: {miss.detail}; "
            self._pdf_only(f"{pmcid}.{newest}", metas[newest], newer, before=done)
        if newer is not None:
            files.version_note = version_note(pmcid, metas, newest, chosen)
            log.info("%s", files.version_note)
        refused = None
        try:
            refused = self._article_files(pmcid, chosen, metas[chosen], files, passed_over)
        except Miss as miss:  # the older version's JATS is unusable: the newest's PDF
            if newest == chosen or miss.final:
                raise
            files.failures.append(f"{miss.category}: {miss.detail}")
        if files.figures or files.pdf is not None:
            return files
        if newer is not None and metas[newest].get("pdf_url"):
            # No figures and no usable PDF from the version with JATS: the newest version's
            # PDF, held as a route without JATS holds it (pmc-cloud-pdf).
            self.policy.check(newer)
            newer.failures = files.failures
            newer.checksum_failures = files.checksum_failures  # a checksum miss, not no JATS
            got = f"no usable PDF ({refused.detail})" if refused else "no PDF"
            done = f"{pmcid}.{chosen} (JATS) {_gave(files)} and {got}; "
            self._pdf_only(f"{pmcid}.{newest}", metas[newest], newer, before=done)
        if refused is not None:  # its own miss (encrypted PDF...), not "no figures"
            failed = [f for f in files.failures if not f.startswith("PDF: ")]
            detail = f"{pmcid}.{chosen} {_gave(files)}; its PDF: {refused.detail}"
            if failed:
                detail += " (" + "; ".join(failed[:5]) + ")"
            raise Miss(refused.category, detail, files=files)
        return files

    def _checked_files(
        self,
        pmcid: str,
        version: int,
        meta: dict[str, Any],
        unsure: dict[str, Any],
        policy: Policy | None = None,
    ) -> ArticleFiles:
        """A version's facts as :class:`ArticleFiles`, refused by ``policy`` (the route's
        by default; a final :class:`Miss`) when retracted or under a licence it refuses."""
        policy = policy or self.policy
        files = ArticleFiles(  # a flag read_metadata could not read is not a fact: None
            route=ROUTE,
            licence=normalise(meta.get("license_code")),
            open_access=True,
            is_retracted=None if "is_retracted" in unsure else bool(meta.get("is_retracted")),
            is_manuscript=None if "is_manuscript" in unsure else bool(meta.get("is_manuscript")),
            citation=str(meta["citation"])[:500] if meta.get("citation") else None,
            version=version,
            ids={k: str(meta[k]) for k in ("pmid", "doi", "title") if meta.get(k)},
        )
        if "is_retracted" in unsure and not policy.include_retracted:
            # Policy.check's rule, for a value that is unknown rather than true: refused the
            # same way, but the record's is_retracted stays empty (a retry reads it again)
            raise Miss(
                "retracted",
                f"{pmcid}.{version}.json: is_retracted={unsure['is_retracted']!r} cannot be "
                "read; skipped as if retracted (--include-retracted keeps it)",
                final=True,
                files=files,
            )
        policy.check(files)
        return files

    def _article_files(
        self, pmcid: str, version: int, meta: dict, files: ArticleFiles, note: str = ""
    ) -> Miss | None:
        """The version's figure files and checked PDF into ``files``; returns why its PDF was
        refused (needs a password, not a PDF), ``None`` otherwise. ``note`` starts the miss
        of a version without JATS."""
        name = f"{pmcid}.{version}"
        if not meta.get("xml_url"):
            self._pdf_only(name, meta, files, before=note)
        try:  # the JSON is untrusted: an http:// or file:// URL is not fetched
            xml_key, xml_md5 = s3_key(str(meta["xml_url"]))
        except ValueError as exc:
            raise Miss("bad file", f"{name}.json: xml_url: {exc}") from None
        try:
            article = read_article(get_object(self.client, xml_key, xml_md5))
        except JatsError as exc:
            raise Miss("bad file", f"{xml_key}: {exc}") from None
        if files.licence is None:
            files.licence = article.licence
        media: dict[str, str | None] = {}
        urls = meta.get("media_urls")
        for uri in urls if isinstance(urls, list) else []:  # another shape: list the objects
            try:
                key, md5 = s3_key(str(uri))
            except ValueError:
                continue
            media[key] = md5
        wanted = [(fig, href) for fig in article.figures for href in fig.hrefs]
        if wanted and not media:  # a JSON without media_urls: list the version's objects
            listing = list_prefix(self.client, f"{name}/")
            media = {k: (e if e and _MD5.match(e) else None) for k, e in listing.keys.items()}
        for fig, href in wanted:
            key = match_href(href, list(media))
            if key is None:
                files.failures.append(f"{fig.label or fig.id}: no file for href {href!r}")
                continue
            try:
                data = get_object(self.client, key, media[key])
            except (Miss, NetError) as exc:
                _file_failure(files, f"{fig.label or fig.id}", exc)
                continue
            files.figures.append(FigureFile(fig, href, key, data, media[key]))
        if not meta.get("pdf_url"):
            return None
        try:
            pdf_key, pdf_md5 = s3_key(str(meta["pdf_url"]))
            pdf = get_object(self.client, pdf_key, pdf_md5)
        except ValueError as exc:
            files.failures.append(f"PDF: pdf_url: {exc}")
            return None
        except (Miss, NetError) as exc:
            _file_failure(files, "PDF", exc)
            return None
        try:  # the same check as every PDF route's: one that needs a password is refused
            check_pdf(pdf)
        except NotAPdf as exc:
            refused = Miss(exc.category, f"{exc} from {pdf_key}")
            files.failures.append(f"PDF: {refused.detail}")
            return refused
        files.pdf = pdf
        return None

    def _pdf_only(
        self, name: str, meta: dict, files: ArticleFiles, *, before: str = ""
    ) -> NoReturn:
        """A version without JATS: a miss (no figures), holding its checked PDF when it
        has one (``files.pdf``), which download keeps as the first PDF route. ``before``
        starts the miss's detail (what an older version with JATS gave)."""
        why = f"{before}{name}.json names no xml_url (no JATS, no figures)"
        # the older version's figure files failed their MD5 check twice: that names the miss
        no_jats = "checksum" if files.checksum_failures else "no JATS"
        if not meta.get("pdf_url"):
            raise Miss(no_jats, f"{why} and no pdf_url", files=files)
        try:
            pdf_key, pdf_md5 = s3_key(str(meta["pdf_url"]))
        except ValueError as exc:
            raise Miss("bad file", f"{why}; pdf_url: {exc}", files=files) from None
        try:
            pdf = get_object(self.client, pdf_key, pdf_md5)
        except Miss as miss:  # MD5 mismatch twice, an unsafe key
            raise Miss(miss.category, f"{why}; its PDF: {miss.detail}", files=files) from None
        except NetError as exc:  # other network trouble stops the route (retried later)
            if exc.status not in (403, 404) and not exc.too_large:
                raise
            raise Miss(no_jats, f"{why}; its PDF: {exc}", files=files) from None
        try:
            check_pdf(pdf)
        except NotAPdf as exc:
            raise Miss(exc.category, f"{why}; its PDF: {exc} from {pdf_key}", files=files) from None
        files.pdf = pdf
        raise Miss(no_jats, f"{why}; its PDF is taken if no figure route has figures", files=files)


def _gave(files: ArticleFiles) -> str:
    """What a version with JATS gave that kept no figure: none named, or MD5 failures."""
    n = files.checksum_failures
    if not n:
        return "gave no figure files"
    what = f"{n} file{'s' if n != 1 else ''} failed {'their' if n != 1 else 'its'} MD5 check"
    return f"kept no figure ({what} twice)"


def _file_failure(files: ArticleFiles, what: str, exc: Exception) -> None:
    """Record a file that is not kept; network trouble other than 403/404 and a body over
    the size limit stops the route (the record fails and a later run fetches it again)."""
    if isinstance(exc, NetError) and exc.status not in (403, 404) and not exc.too_large:
        raise exc
    files.failures.append(f"{what}: {exc}")
    if isinstance(exc, Miss) and exc.category == "checksum":
        files.checksum_failures += 1
