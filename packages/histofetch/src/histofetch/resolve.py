"""Identifier look-ups and the parsers for NCBI's answers (idconv, elink prlinks).

Parsers take the response bytes exactly as the services send them (the recorded
responses in ``../shared/fixtures/ncbi`` are replayed in the tests), so a change in a
service's format shows up as a test failure rather than as silently empty fields.
"""

from __future__ import annotations

import codecs
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from Bio import Entrez

from histocore.errors import DomainError
from histocore.io import loads_json
from histofetch.http import NetClient

#: The ID Converter accepts at most 200 ids per request.
IDCONV_BATCH = 200
#: A PMCID: ``PMC`` and ASCII digits (the prefix in any case; PMC numbers have 8 digits).
_PMCID = re.compile(r"PMC([0-9]{1,12})", re.IGNORECASE)


def canonical_pmcid(value: object) -> str | None:
    """``PMC<digits>`` for a PMCID (surrounding whitespace and the prefix's case ignored),
    ``None`` for anything else: the value goes into URL paths and S3 prefixes, so a
    manifest's or a service's ``PMC../../x``, ``PMC1?x=1`` or ``PMC１２`` is no PMCID."""
    if not isinstance(value, str):
        return None
    match = _PMCID.fullmatch(value.strip())
    return f"PMC{match.group(1)}" if match else None


class ServiceError(DomainError):
    """A service answered, but with an error document instead of data."""


# -- ID converter -------------------------------------------------------------------------
@dataclass
class IdRow:
    pmid: str | None = None
    pmcid: str | None = None
    doi: str | None = None


def parse_idconv(body: bytes) -> list[IdRow]:
    """Rows of an ID Converter answer, JSON (``format=json``) or XML (the default).

    A body that is neither (a cut-off answer, a proxy's error page) or whose JSON has the
    wrong shape is a :class:`ServiceError`, never a parser's traceback."""
    try:
        return _idconv_rows(body)
    except ET.ParseError as exc:
        raise ServiceError(f"idconv: unreadable XML answer ({exc})") from None
    except (ValueError, TypeError, AttributeError) as exc:  # JSON: not JSON, wrong shape
        raise ServiceError(f"idconv: unreadable JSON answer ({type(exc).__name__})") from None


def _idconv_rows(body: bytes) -> list[IdRow]:
    body = body.removeprefix(codecs.BOM_UTF8)  # a leading BOM, as json.loads(bytes) allows
    text = body.lstrip()
    if text.startswith(b"{"):
        data = loads_json(body.decode("utf-8", errors="replace"))
        if data.get("status") == "error":
            raise ServiceError(f"idconv: {_unquote(str(data.get('message', 'error')))}")
        return [
            IdRow(
                pmid=_clean(r.get("pmid")),
                pmcid=canonical_pmcid(r.get("pmcid")),
                doi=_clean(r.get("doi")),
            )
            for r in data.get("records", [])
            if not r.get("errmsg") and (r.get("pmcid") or r.get("pmid"))
        ]
    root = ET.fromstring(body)
    if root.get("status") == "error":
        raise ServiceError(f"idconv: {root.findtext('message') or 'error'}")
    return [
        IdRow(
            pmid=_clean(r.get("pmid")),
            pmcid=canonical_pmcid(r.get("pmcid")),
            doi=_clean(r.get("doi")),
        )
        for r in root.iter("record")
        if r.get("status") != "error" and (r.get("pmcid") or r.get("pmid"))
    ]


def pmids_to_pmcids(client: NetClient, pmids: Iterable[str]) -> dict[str, IdRow]:
    """PMID → (PMCID, DOI) for every PMID that PMC knows, in batches of 200."""
    pmids = [p for p in dict.fromkeys(pmids) if p]
    out: dict[str, IdRow] = {}
    for start in range(0, len(pmids), IDCONV_BATCH):
        batch = pmids[start : start + IDCONV_BATCH]
        params = {"ids": ",".join(batch), "idtype": "pmid", "format": "json", "versions": "no"}
        response = client.ncbi("GET", client.config.idconv_url, params, ok_statuses=(404,))
        try:
            rows = parse_idconv(response.content)
        except ServiceError:
            if response.status_code == 404:  # "no ids found" answers come back as 404s
                continue
            raise
        for row in rows:
            if row.pmid:
                out[row.pmid] = row
    return out


# -- elink prlinks (publisher full-text links) -----------------------------------------
def parse_prlinks(body: bytes) -> list[str]:
    """Publisher URLs from ``elink.fcgi?cmd=prlinks`` (XML), best first."""
    try:
        result: Any = Entrez.read(io.BytesIO(body))
    except RuntimeError as exc:  # Biopython raises on <ERROR> elements
        raise ServiceError(f"elink: {exc}") from None
    except ValueError as exc:  # NotXMLError, CorruptedXMLError, ValidationError (HTML, cut off)
        raise ServiceError(f"elink: unreadable answer ({type(exc).__name__})") from None
    urls: list[str] = []
    try:
        for linkset in result:
            for idurlset in linkset.get("IdUrlList", {}).get("IdUrlSet", []):
                for obj in idurlset.get("ObjUrl", []):
                    url = str(obj.get("Url", "")).strip()
                    if url:
                        urls.append(url)
    except (AttributeError, TypeError):  # XML of another shape than eLinkResult
        raise ServiceError("elink: answer is not an eLinkResult") from None
    return urls


def publisher_links(client: NetClient, pmid: str) -> list[str]:
    params = {"dbfrom": "pubmed", "id": pmid, "cmd": "prlinks", "retmode": "xml"}
    response = client.ncbi("GET", client.config.eutils_url.rstrip("/") + "/elink.fcgi", params)
    return parse_prlinks(response.content)


def _clean(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)
