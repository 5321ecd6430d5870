"""Stage 1: PubMed (or PMC) search → one manifest record per article with its metadata.

esearch runs on NCBI's history server (``usehistory=y``) and is paged with
WebEnv/query_key/retstart, so every hit is collected, not only the first page. Metadata
comes from esummary (POSTed, because GET URLs with hundreds of ids get HTTP 414), PMCIDs
from the ID Converter, and open-access status from a second esearch restricted to the
PMC open-access subset (one paged query instead of one request per article).
``db="pmc"`` searches PMC itself with ``open_access[Filter]``, so every hit is in the
PMC Cloud Service; its esummary names PMID and PMCID directly.
"""

from __future__ import annotations

import io
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from Bio import Entrez

from histocore.errors import UsageError
from histocore.io import loads_json
from histocore.manifest import Manifest, Record, RenameRefused
from histocore.progress import task
from histofetch.choices import Database
from histofetch.http import NetClient, NetConfig, NetError
from histofetch.resolve import IdRow, ServiceError, canonical_pmcid, pmids_to_pmcids
from histofetch.shard import in_shard
from histofetch.stage import StageSummary

log = logging.getLogger(__name__)

#: PubMed's own filter for articles in the PMC open-access subset.
OA_FILTER = '"pubmed pmc open access"[filter]'
#: PMC's filter for its open-access subset (the articles in the PMC Cloud Service).
PMC_OA_FILTER = "open_access[Filter]"
#: Databases ``search`` can query.
DATABASES: tuple[str, ...] = get_args(Database)
#: esearch will not page past the first 10,000 PubMed hits (retstart + retmax <= 10000).
ESEARCH_LIMIT = 10_000
ESUMMARY_BATCH = 200


@dataclass
class SearchResult:
    count: int
    pmids: list[str] = field(default_factory=list)
    webenv: str | None = None
    query_key: str | None = None
    translation: str | None = None


def _eutil(net: NetConfig, name: str) -> str:
    return net.eutils_url.rstrip("/") + f"/{name}.fcgi"


def parse_esearch(body: bytes) -> dict[str, Any]:
    """An esearch XML answer as a dict (Biopython's parser; ``<ERROR>`` raises)."""
    try:
        result: Any = Entrez.read(io.BytesIO(body))
        return result
    except RuntimeError as exc:
        raise ServiceError(f"esearch: {exc}") from None
    except Exception as exc:  # old/unknown DTD (Biopython refuses), HTML, truncated XML
        bio_error = exc
    # Fallback: plain XML reading of the few elements we use.
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise ServiceError(
            f"esearch: unreadable answer ({type(bio_error).__name__}: not esearch XML)"
        ) from None
    if root.tag != "eSearchResult":
        raise ServiceError(f"esearch: unexpected answer <{root.tag}>")
    error = root.findtext("ERROR")
    if error:
        raise ServiceError(f"esearch: {error.strip()}")
    lists: dict[str, dict[str, list[str]]] = {}
    for name in ("ErrorList", "WarningList"):
        by_tag = lists[name] = {}
        for child in root.iterfind(f"{name}/*"):  # a tag may repeat: one per word
            by_tag.setdefault(child.tag, []).append(child.text or "")
    return {
        "Count": root.findtext("Count", "0"),
        "IdList": [e.text for e in root.iterfind("IdList/Id") if e.text],
        "WebEnv": root.findtext("WebEnv"),
        "QueryKey": root.findtext("QueryKey"),
        "QueryTranslation": root.findtext("QueryTranslation"),
        **lists,
    }


#: What NCBI left out of a query, by the esearch element that says so.
_LEFT_OUT = {
    "PhraseNotFound": "not found",
    "FieldNotFound": "field not found",
    "QuotedPhraseNotFound": "quoted phrase not found",
    "PhraseIgnored": "ignored",
}


def left_out(answer: dict[str, Any]) -> list[str]:
    """The parts of the query NCBI did not search (``'fleegle[MeSH Terms]' not found``),
    from an esearch answer's ErrorList and WarningList."""
    found = []
    for name in ("ErrorList", "WarningList"):
        for tag, texts in dict(answer.get(name) or {}).items():
            if tag in _LEFT_OUT:
                found += [f"{str(t).strip()!r} {_LEFT_OUT[tag]}" for t in texts if str(t).strip()]
    return found


def esearch_all(
    client: NetClient,
    term: str,
    *,
    max_results: int | None = None,
    mindate: str | None = None,
    maxdate: str | None = None,
    page_size: int = 1000,
    db: str = "pubmed",
    warn_left_out: bool = True,
) -> SearchResult:
    """All ids matching ``term`` (up to ``max_results``), paging via the history server.

    Words NCBI left out of ``term`` are logged as one warning unless ``warn_left_out`` is
    False (a follow-up query built from words already warned about).
    """
    url = _eutil(client.config, "esearch")
    params: dict[str, Any] = {"db": db, "term": term, "usehistory": "y", "retmode": "xml"}
    if mindate or maxdate:
        params.update(datetype="pdat", mindate=mindate or "1800", maxdate=maxdate or "3000")
    first = parse_esearch(client.ncbi("POST", url, {**params, "retmax": page_size}).content)
    result = SearchResult(
        count=int(first.get("Count", 0)),
        pmids=[str(i) for i in first.get("IdList", [])],
        webenv=first.get("WebEnv"),
        query_key=first.get("QueryKey"),
        translation=first.get("QueryTranslation"),
    )
    # NCBI drops words it cannot find and searches the rest, silently
    if warn_left_out and (missing := left_out(first)):
        service, what = "PubMed" if db == "pubmed" else "PMC", "; ".join(missing[:5])
        if result.count:
            log.warning(
                "%s left part of the query out (%s) and searched %s: %d hits; check the spelling",
                service, what, result.translation, result.count,
            )  # fmt: skip
        else:
            log.warning("%s found no articles (%s); check the spelling", service, what)
    seen = set(result.pmids)
    wanted = min(result.count, ESEARCH_LIMIT)
    if max_results is not None:
        wanted = min(wanted, max_results)
    while len(result.pmids) < wanted:
        page_params = {
            "db": db,
            "WebEnv": result.webenv,
            "query_key": result.query_key,
            "retstart": len(result.pmids),
            "retmax": min(page_size, wanted - len(result.pmids)),
            "usehistory": "y",
            "retmode": "xml",
        }
        if not result.webenv:  # no history server answer: page the plain query instead
            page_params.update(params)
            page_params.pop("WebEnv")
            page_params.pop("query_key")
        page = parse_esearch(client.ncbi("POST", url, page_params).content)
        ids = [str(i) for i in page.get("IdList", [])]
        if not ids:
            break
        fresh = [i for i in ids if i not in seen]
        if not fresh:  # the server keeps answering the same page: stop, do not loop
            break
        seen.update(fresh)
        result.pmids.extend(fresh)
    del result.pmids[wanted:]
    # An id is a number: an empty or garbled one (a proxy's rewrite) became a record "pmid:"
    ids = list(dict.fromkeys(result.pmids))
    result.pmids = [i for i in ids if i.isascii() and i.isdigit()]
    if len(result.pmids) < len(ids):
        bad = [i for i in ids if i not in result.pmids]
        log.warning(
            "esearch answered %d id(s) that are not numbers (%s); left out",
            len(bad), ", ".join(repr(i[:20]) for i in bad[:5]),
        )  # fmt: skip
    return result


def parse_esummary_json(body: bytes) -> dict[str, dict[str, Any]]:
    """uid → {title, journal, year, doi, pmcid, pmid} from esummary ``retmode=json``.

    Handles both PubMed (``articleids`` with ``pubmed``/``pmc``) and PMC (``pmid``/
    ``pmcid``) summaries.
    """
    try:
        data = loads_json(body.decode("utf-8-sig", errors="replace"))  # a BOM is allowed
    except ValueError:
        raise ServiceError("esummary: not JSON (an HTML error page?)") from None
    try:
        return _esummary_docs(data)
    except (AttributeError, TypeError):  # a list where a mapping belongs, and so on
        raise ServiceError("esummary: JSON of another shape than an esummary answer") from None


def _esummary_docs(data: Any) -> dict[str, dict[str, Any]]:
    if "error" in data:
        raise ServiceError(f"esummary: {data['error']}")
    result = data.get("result")
    if not isinstance(result, dict):
        msgs = data.get("esummaryresult") or ["no result"]
        raise ServiceError(f"esummary: {'; '.join(map(str, msgs))}")
    out: dict[str, dict[str, Any]] = {}
    for uid in result.get("uids", []):
        doc = result.get(uid) or {}
        if doc.get("error"):
            continue
        ids = {a.get("idtype"): str(a.get("value", "")) for a in doc.get("articleids", [])}
        pmcid = ids.get("pmc") or ids.get("pmcid") or ""
        # "PMC123" or "pmc-id: PMC123;": the first PMC<digits>, then canonical_pmcid's rule
        match = re.search(r"PMC[0-9]+", pmcid, re.IGNORECASE)  # \d: other scripts' digits
        out[str(uid)] = {
            "title": (doc.get("title") or "").strip() or None,
            "journal": doc.get("fulljournalname") or doc.get("source") or None,
            "year": _year(doc.get("pubdate") or doc.get("sortpubdate") or doc.get("sortdate")),
            "doi": ids.get("doi") or None,
            "pmcid": canonical_pmcid(match.group(0)) if match else None,
            "pmid": _pmid(ids.get("pubmed") or ids.get("pmid")),
            "retracted": "Retracted Publication" in (doc.get("pubtype") or []),
        }
    return out


def _pmid(value: str | None) -> str | None:
    """A PMID is a number above 0: PMC's esummary writes ``"pmid": "0"`` for an article
    without one (57 of 200 in the recorded answer), which made every such hit the record
    ``pmid:0`` (the first kept, the others counted already done)."""
    value = (value or "").strip()
    return value if value.isascii() and value.isdigit() and int(value) > 0 else None


def esummary(client: NetClient, pmids: list[str], db: str = "pubmed") -> dict[str, dict[str, Any]]:
    """Metadata for many ids, POSTed in batches (a long GET URL fails with HTTP 414)."""
    url = _eutil(client.config, "esummary")
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(pmids), ESUMMARY_BATCH):
        batch = pmids[start : start + ESUMMARY_BATCH]
        params = {"db": db, "id": ",".join(batch), "retmode": "json", "version": "2.0"}
        out.update(parse_esummary_json(client.ncbi("POST", url, params).content))
    return out


def _year(text: object) -> int | None:
    match = re.search(r"\b(1[89]\d\d|20\d\d)\b", str(text or ""))
    return int(match.group(1)) if match else None


def search_key(
    query: str,
    max_results: int | None,
    mindate: str | None,
    maxdate: str | None,
    open_access_only: bool,
    db: str = "pubmed",
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The parameters that define a search (stored in the manifest header); a shard adds
    ``"shard": "K/N"``."""
    key: dict[str, Any] = {
        "db": db,
        "query": query,
        "max_results": max_results,
        "mindate": mindate,
        "maxdate": maxdate,
        "open_access_only": open_access_only,
    }
    if shard is not None:
        key["shard"] = f"{shard[0]}/{shard[1]}"
    return key


def check_query(query: str) -> str:
    """``query``, or a :class:`UsageError` when it is empty or blank (an unset shell
    variable): not a search NCBI is asked to run."""
    if not query.strip():
        raise UsageError("the query is empty; give search words, e.g. 'lymph node'")
    return query


def run_search(
    run_dir: Path,
    query: str,
    *,
    max_results: int | None = None,
    mindate: str | None = None,
    maxdate: str | None = None,
    open_access_only: bool = False,
    net: NetConfig,
    page_size: int = 1000,
    db: str = "pubmed",
    shard: tuple[int, int] | None = None,
) -> StageSummary:
    """Search PubMed (or PMC) and add one ``searched`` record per hit to the run's manifest.

    ``shard=(K, N)`` keeps only the hits of shard K of N (:mod:`histofetch.shard`).

    Re-running is safe: records are keyed ``pmid:<PMID>`` (``pmcid:<PMCID>`` for a PMC
    article without a PMID); existing records are left as they are (progress and
    metadata) and only new PMIDs are added and looked up.
    """
    if db not in DATABASES:
        raise UsageError(f"unknown database {db!r} (choose from {', '.join(DATABASES)})")
    check_query(query)
    summary = StageSummary("searched")
    key = search_key(query, max_results, mindate, maxdate, open_access_only, db, shard)
    # closed on the way out, also when a request fails: no -wal file left behind
    with Manifest.load(Path(run_dir), create=True) as manifest:
        if db == "pmc":
            found = _search_pmc(manifest, query, summary, net, max_results, mindate, maxdate, shard)
        else:
            found = _search_pubmed(
                manifest, query, summary, net, max_results, mindate, maxdate, shard,
                open_access_only=open_access_only, page_size=page_size,
            )  # fmt: skip
        _remember(manifest, query, found, key)
    summary.note = _nothing_found(found, db, open_access_only, mindate, maxdate, shard)
    return summary


def _nothing_found(
    found: SearchResult,
    db: str,
    open_access_only: bool,
    mindate: str | None,
    maxdate: str | None,
    shard: tuple[int, int] | None,
) -> str:
    """What the summary line says when the search gave no article: where it looked (a bare
    ``searched: 0 done, 0 already done, 0 failed`` read like a failure); else ""."""
    if found.pmids:
        return ""
    if found.count and shard:  # hits, none of them this shard's
        n = f"{found.count} article{'s' if found.count != 1 else ''}"
        return f"the query matched {n}, none in shard {shard[0]}/{shard[1]}"
    where = "PMC's open-access subset" if db == "pmc" else "PubMed"
    if db != "pmc" and open_access_only:
        where = "PubMed's open-access articles"
    if mindate or maxdate:
        where += f" (dates {mindate or 'any'} to {maxdate or 'any'})"
    return f"the query matched no articles in {where}"


def _search_pubmed(
    manifest: Manifest,
    query: str,
    summary: StageSummary,
    net: NetConfig,
    max_results: int | None,
    mindate: str | None,
    maxdate: str | None,
    shard: tuple[int, int] | None,
    *,
    open_access_only: bool,
    page_size: int,
) -> SearchResult:
    """PubMed: esearch, esummary + idconv for the new PMIDs, and which are open access."""
    term = f"({query}) AND {OA_FILTER}" if open_access_only else query
    with NetClient(net) as client:
        found = esearch_all(
            client,
            term,
            max_results=max_results,
            mindate=mindate,
            maxdate=maxdate,
            page_size=page_size,
        )
        found.pmids = [p for p in found.pmids if in_shard(f"pmid:{p}", shard)]
        new = [p for p in found.pmids if f"pmid:{p}" not in manifest.records]
        meta: dict[str, dict[str, Any]] = {}
        ids: dict[str, IdRow] = {}
        batches = [new[i : i + ESUMMARY_BATCH] for i in range(0, len(new), ESUMMARY_BATCH)]
        with task("search metadata", len(batches)) as shown:
            for batch in batches:
                meta.update(esummary(client, batch))
                try:
                    ids.update(pmids_to_pmcids(client, batch))
                except (ServiceError, NetError) as exc:  # esummary's PMCIDs still stand
                    summary.reasons[f"idconv unavailable, PMCIDs from esummary only ({exc})"] += 1
                shown.advance()
        if open_access_only:
            oa = set(found.pmids)
        elif new:
            oa = set(
                esearch_all(
                    client,
                    f"({query}) AND {OA_FILTER}",
                    mindate=mindate,
                    maxdate=maxdate,
                    page_size=5000,
                    warn_left_out=False,  # the user's query was warned about above
                ).pmids
            )
        else:
            oa = set()
    if found.count > ESEARCH_LIMIT and (max_results is None or max_results > ESEARCH_LIMIT):
        summary.reasons[
            f"PubMed returns only the first {ESEARCH_LIMIT} of {found.count} hits; "
            "narrow the query with --mindate/--maxdate"
        ] += 1
    manifest.query = manifest.query or query
    earlier = _pmid_less(manifest)
    for pmid in found.pmids:
        rid = f"pmid:{pmid}"
        if rid in manifest.records:
            summary.skipped += 1
            continue
        m = meta.get(pmid, {})
        idrow = ids.get(pmid)
        pmcid = idrow.pmcid if idrow and idrow.pmcid else m.get("pmcid")
        # the article's record from a --db pmc search made when it had no PMID: the first
        # new PMID of its PMCID in this search takes it (renamed, or kept under its id when
        # refused); a second one is a record of its own
        old = earlier.pop(canonical_pmcid(pmcid) or "", None)
        if old is not None:
            now = _adopt(manifest, old, rid, pmid)
            if now == rid or (now in manifest.records and _is_pmid_less(manifest.records[now])):
                summary.skipped += 1
                continue
            # another search gave it another PMID meanwhile: this one is a record of its own
        manifest.add_record(
            Record(
                id=rid,
                query=query,
                pmid=pmid,
                pmcid=pmcid,
                doi=m.get("doi") or (idrow.doi if idrow else None),
                title=m.get("title"),
                journal=m.get("journal"),
                year=m.get("year"),
                open_access=pmid in oa,
                is_retracted=m.get("retracted") or None,
                stage="searched",
            )
        )
        summary.done += 1
    return found


def _search_pmc(
    manifest: Manifest,
    query: str,
    summary: StageSummary,
    net: NetConfig,
    max_results: int | None,
    mindate: str | None,
    maxdate: str | None,
    shard: tuple[int, int] | None = None,
) -> SearchResult:
    """PMC's open-access subset: esearch ``db=pmc`` + esummary (PMID, PMCID, DOI)."""
    with NetClient(net) as client:
        found = esearch_all(
            client,
            f"({query}) AND {PMC_OA_FILTER}",
            max_results=max_results,
            mindate=mindate,
            maxdate=maxdate,
            db="pmc",
        )
        found.pmids = [u for u in found.pmids if in_shard(f"PMC{u}", shard)]
        meta = esummary(client, found.pmids, db="pmc")
    manifest.query = manifest.query or query
    earlier = _pmid_less(manifest)
    known = _by_pmcid(manifest)
    for uid in found.pmids:
        m = meta.get(uid, {})
        pmcid = m.get("pmcid") or f"PMC{uid}"
        rid = f"pmid:{m['pmid']}" if m.get("pmid") else f"pmcid:{pmcid}"
        old = earlier.get(pmcid)
        if old is not None and old != rid and rid not in manifest.records:
            now = _adopt(manifest, old, rid, m.get("pmid"))
            # another search gave it another PMID meanwhile: a hit with its own PMID is a
            # record of its own (below); a hit without one is that record's article
            other_pmid = now != rid and not _is_pmid_less(manifest.records.get(now))
            old = None if other_pmid and m.get("pmid") else now
        # the article's record under its PMID (a PubMed search, or one renamed by it), while
        # PMC's esummary still writes "pmid": "0" for it (a hit with a PMID is its own record,
        # as a second PMID of one PMCID is on the PubMed path)
        other = None if m.get("pmid") else known.get(canonical_pmcid(pmcid) or pmcid)
        if rid in manifest.records or old in manifest.records or other in manifest.records:
            summary.skipped += 1
            continue
        manifest.add_record(
            Record(
                id=rid,
                query=query,
                pmid=m.get("pmid"),
                pmcid=pmcid,
                doi=m.get("doi"),
                title=m.get("title"),
                journal=m.get("journal"),
                year=m.get("year"),
                open_access=True,
                stage="searched",
            )
        )
        summary.done += 1
    return found


#: The record a search before 617df23 made of a PMC article without a PMID (esummary's
#: ``"pmid": "0"``): the first such hit, under a PMID that is none.
STALE_ID = "pmid:0"


def _pmid_less(manifest: Manifest) -> dict[str, str]:
    """``{PMCID: record id}`` of the records made of a PMC article without a PMID: the
    stale ``pmid:0`` and every ``pmcid:PMCn``."""
    out: dict[str, str] = {}
    for rid, rec in manifest.records.items():
        pmcid = canonical_pmcid(rec.pmcid)
        if pmcid and _is_pmid_less(rec):
            out.setdefault(pmcid, rid)
    return out


def _is_pmid_less(rec: Record | None) -> bool:
    """Whether ``rec`` is a record made of a PMC article without a PMID (``pmid:0`` or
    ``pmcid:PMCn``), one a search renames ``pmid:NNN`` when the article has a PMID."""
    pmcid = canonical_pmcid(rec.pmcid) if rec is not None else None
    return rec is not None and pmcid is not None and rec.id in (STALE_ID, f"pmcid:{pmcid}")


def _by_pmcid(manifest: Manifest) -> dict[str, str]:
    """``{PMCID: record id}`` of every record that names its PMCID (the first, in run order)."""
    out: dict[str, str] = {}
    for rid, rec in manifest.records.items():
        pmcid = canonical_pmcid(rec.pmcid)
        if pmcid:
            out.setdefault(pmcid, rid)
    return out


def _adopt(manifest: Manifest, old: str, rid: str, pmid: str | None) -> str:
    """Give the record ``old`` of this article (``pmid:0``, or ``pmcid:PMCn`` of an article
    that has a PMID now) its id ``rid``: renamed in place in the store (its place in the run
    kept), so re-searching never adds the article twice. Returns the record's id now.

    Refused while anything is keyed by the old id (image rows: their files, labels, review
    log lines, scores CSVs; files an attempt left under images/; a claim, live or dead): the
    record keeps its id (returned) and one warning line says why, the first time the run
    meets that refusal (a later search meeting it says it with ``-v`` only). When another
    search renamed it since this one read the run, the id it got there is followed: a
    PMID-less id is renamed on to ``rid``, as this search's hit implies; another
    ``pmid:NNN`` stays as it is (returned)."""
    seen = {old}
    while True:
        try:
            manifest.rename_record(old, rid, pmid=pmid)
        except RenameRefused as exc:
            now = exc.renamed
            if now is None:
                say = log.debug if exc.repeated else log.warning
                say("record %s keeps its id (not renamed %s): %s", old, rid, exc)
                return old
            log.info("record %s is %s now (renamed by another search meanwhile)", old, now)
            if now in seen or not _is_pmid_less(manifest.records.get(now)):
                return now
            seen.add(now)
            old = now
            continue
        log.info("record %s (a PMC article without a PMID then) is now %s", old, rid)
        return rid


def _remember(manifest: Manifest, query: str, found: SearchResult, key: dict[str, Any]) -> None:
    """Store what was searched (so `histofetch run` can skip a search already done)."""
    manifest.header_extra["last_search"] = key | {"count": found.count, "records": len(found.pmids)}
    if query != manifest.query:
        manifest.header_extra.setdefault("queries", [])
        if query not in manifest.header_extra["queries"]:
            manifest.header_extra["queries"].append(query)
    manifest.save()
