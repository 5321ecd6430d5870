"""A real HTTP server on 127.0.0.1 that plays NCBI E-utilities, idconv, the PMC Cloud
Service bucket (``s3_server.FakeBucket`` under ``/pmc-oa-opendata/``), Europe PMC (REST
and web site) and publisher pages, for the network tests.

Responses are hand-built in the services' formats, or the recorded real bodies from
``../shared/fixtures/ncbi`` when a test asks for them. Every request is logged (time,
method, path, parameters) so tests can check paging, POST use and the rate limit.
Faults (429 with Retry-After, 500s, slow answers) are queued per path with ``inject``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import pytest
from s3_server import PREFIX as BUCKET_PATH
from s3_server import FakeBucket

from histofetch.http import NetConfig


@dataclass
class Logged:
    time: float
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Article:
    pmid: str
    title: str = "A title"
    journal: str = "J Test Pathol"
    year: int = 2021
    doi: str | None = None
    pmcid: str | None = None
    retracted: bool = False


@dataclass
class FakeNcbi:
    """State behind the server; tests fill it in, the handler reads it."""

    base: str = ""
    articles: dict[str, Article] = field(default_factory=dict)
    #: esearch term → PMIDs (in order); unknown terms get no hits.
    searches: dict[str, list[str]] = field(default_factory=dict)
    #: Raw bodies for the first esearch page of a term (replays a recorded answer).
    first_page_body: dict[str, bytes] = field(default_factory=dict)
    #: The PMC Cloud Service bucket.
    bucket: FakeBucket = field(default_factory=FakeBucket)
    #: path → (status, content type, body) for plain files (Europe PMC, publishers).
    files: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    #: PMID → publisher URLs listed by elink prlinks.
    prlinks: dict[str, list[str]] = field(default_factory=dict)
    #: idconv bodies to replay for a given ``ids`` value.
    idconv_bodies: dict[str, bytes] = field(default_factory=dict)
    #: db → a recorded esummary JSON body: its documents are replayed for the uids asked
    #: (the answer holds those, in the recorded shape), before ``articles`` are looked at.
    esummary_recorded: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(list))
    #: path → seconds: the next GET of it sends its headers and 1,000 of 1,000,000 bytes,
    #: then nothing for that long (a server gone silent mid-body); ``stalled`` lists them
    stalls: dict[str, float] = field(default_factory=dict)
    stalled: list[str] = field(default_factory=list)
    log: list[Logged] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: path → a function the server runs once, before it answers the first request of that
    #: path (another process's work landing while a command waits on the network)
    before: dict[str, Callable[[], None]] = field(default_factory=dict)

    # -- test helpers ---------------------------------------------------------------------
    def config(self, **overrides: Any) -> NetConfig:
        """A NetConfig pointing every service here, with fast retries."""
        values: dict[str, Any] = dict(
            eutils_url=f"{self.base}/eutils/",
            idconv_url=f"{self.base}/idconv/",
            pmc_cloud_url=f"{self.base}{BUCKET_PATH}",
            europepmc_url=f"{self.base}/europepmc/rest/",
            europepmc_render_url=f"{self.base}/europepmc/",
            api_key=None,
            email="tests@example.org",
            timeout=2.0,
            max_retries=3,
            backoff=0.01,
            ncbi_rate=1000.0,
            pmc_cloud_rate=1000.0,
            europepmc_rate=1000.0,
            other_rate=1000.0,
        )
        values.update(overrides)
        return NetConfig(**values)

    def env(self) -> dict[str, str]:
        """Environment variables that point the CLI here."""
        return {
            "HISTOFETCH_EUTILS_URL": f"{self.base}/eutils/",
            "HISTOFETCH_IDCONV_URL": f"{self.base}/idconv/",
            "HISTOFETCH_PMC_CLOUD_URL": f"{self.base}{BUCKET_PATH}",
            "HISTOFETCH_EUROPEPMC_URL": f"{self.base}/europepmc/rest/",
            "HISTOFETCH_EUROPEPMC_RENDER_URL": f"{self.base}/europepmc/",
            "HISTOFETCH_PMC_CLOUD_RATE": "1000",
            "HISTOFETCH_EUROPEPMC_RATE": "1000",
            "HISTOFETCH_BACKOFF": "0.01",
            "HISTOFETCH_TIMEOUT": "5",
            "NCBI_EMAIL": "tests@example.org",
            "NCBI_API_KEY": "",
        }

    def inject(self, path: str, *faults: tuple[Any, ...]) -> None:
        """Serve these before the normal answer: ``(status, headers, body)`` or
        ``("sleep", seconds)``."""
        self.faults[path].extend(faults)

    def add_article(self, art: Article) -> Article:
        self.articles[art.pmid] = art
        return art

    def requests_to(self, path: str) -> list[Logged]:
        return [r for r in self.log if r.path == path]

    # -- service answers ------------------------------------------------------------------
    def answer(self, method: str, path: str, params: dict[str, str]) -> tuple[int, dict, bytes]:
        with self.lock:
            queued = self.faults.get(path)
            fault = queued.pop(0) if queued else None
            meanwhile = self.before.pop(path, None)
        if meanwhile is not None:
            meanwhile()
        if fault is not None:
            if fault[0] == "sleep":
                time.sleep(fault[1])
            else:
                return fault  # type: ignore[return-value]
        if path == "/eutils/esearch.fcgi":
            return self.esearch(params)
        if path == "/eutils/esummary.fcgi":
            return self.esummary(method, params)
        if path == "/eutils/elink.fcgi":
            return self.elink(params)
        if path == "/eutils/einfo.fcgi":
            return 200, {"Content-Type": "text/xml"}, b"<eInfoResult/>"
        if path == "/idconv/":
            return self.idconv(params)
        if path.startswith(BUCKET_PATH):
            return self.bucket.answer(path[len(BUCKET_PATH) :], params)
        if path in self.files:
            status, ctype, body = self.files[path]
            return status, {"Content-Type": ctype}, body
        return 404, {"Content-Type": "text/html"}, b"<html><body>Not Found</body></html>"

    def esearch(self, params: dict[str, str]) -> tuple[int, dict, bytes]:
        retstart = int(params.get("retstart", 0))
        retmax = int(params.get("retmax", 20))
        if "WebEnv" in params:
            term = _webenv_term(params["WebEnv"], params.get("query_key", ""))
            if term is None:
                return 200, XML, b"<eSearchResult><ERROR>Unknown WebEnv</ERROR></eSearchResult>"
        else:
            term = params.get("term", "")
            if retstart == 0 and term in self.first_page_body:
                return 200, XML, self.first_page_body[term]
        pmids = self.searches.get(term, [])
        page = pmids[retstart : retstart + retmax]
        ids = "".join(f"<Id>{p}</Id>\n" for p in page)
        body = (
            '<?xml version="1.0" encoding="UTF-8" ?>\n'
            '<!DOCTYPE eSearchResult PUBLIC "-//NLM//DTD esearch 20060628//EN" '
            '"https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20060628/esearch.dtd">\n'
            f"<eSearchResult><Count>{len(pmids)}</Count><RetMax>{len(page)}</RetMax>"
            f"<RetStart>{retstart}</RetStart><QueryKey>1</QueryKey>"
            f"<WebEnv>{_webenv_for(term)}</WebEnv><IdList>\n{ids}</IdList>"
            f"<TranslationSet/><QueryTranslation>{escape(term)}</QueryTranslation>"
            "</eSearchResult>"
        )
        return 200, XML, body.encode()

    def esummary(self, method: str, params: dict[str, str]) -> tuple[int, dict, bytes]:
        ids = [i for i in params.get("id", "").split(",") if i]
        if not ids:
            return 200, JSON, b'{"error": "Neither query_key nor id specified"}'
        result: dict[str, Any] = {"uids": ids}
        recorded = self.esummary_recorded.get(params.get("db", "pubmed"))
        if recorded is not None:
            docs = json.loads(recorded)["result"]
            for uid in ids:
                result[uid] = docs.get(uid) or {"uid": uid, "error": "cannot get document summary"}
            data = {"header": {"type": "esummary", "version": "0.3"}, "result": result}
            return 200, JSON, json.dumps(data).encode()
        if params.get("db") == "pmc":
            return self.esummary_pmc(ids, result)
        for pmid in ids:
            art = self.articles.get(pmid)
            if art is None:
                result[pmid] = {"uid": pmid, "error": "cannot get document summary"}
                continue
            aids = [{"idtype": "pubmed", "idtypen": 1, "value": pmid}]
            if art.doi:
                aids.append({"idtype": "doi", "idtypen": 3, "value": art.doi})
            if art.pmcid:
                aids.append({"idtype": "pmc", "idtypen": 8, "value": art.pmcid})
                aids.append({"idtype": "pmcid", "idtypen": 5, "value": f"pmc-id: {art.pmcid};"})
            result[pmid] = {
                "uid": pmid,
                "pubdate": f"{art.year} Mar 4",
                "source": art.journal[:10],
                "fulljournalname": art.journal,
                "title": art.title,
                "articleids": aids,
                "pubtype": ["Journal Article"]
                + (["Retracted Publication"] if art.retracted else []),
                "sortpubdate": f"{art.year}/03/04 00:00",
            }
        data = {"header": {"type": "esummary", "version": "0.3"}, "result": result}
        return 200, JSON, json.dumps(data).encode()

    def esummary_pmc(self, uids: list[str], result: dict[str, Any]) -> tuple[int, dict, bytes]:
        """``db=pmc`` summaries: uids are PMC numbers; ids in the recorded PMC v2 shape."""
        by_pmc = {a.pmcid: a for a in self.articles.values() if a.pmcid}
        for uid in uids:
            art = by_pmc.get(f"PMC{uid}")
            if art is None:
                result[uid] = {"uid": uid, "error": "cannot get document summary"}
                continue
            aids: list[dict[str, str | None]] = (
                [{"idtype": "pmid", "value": art.pmid}] if art.pmid else []
            )
            if art.doi:
                aids.append({"idtype": "doi", "value": art.doi})
            aids.append({"idtype": "pmcid", "value": art.pmcid})
            result[uid] = {
                "uid": uid,
                "pubdate": f"{art.year} Dec 16",
                "source": art.journal[:10],
                "title": art.title,
                "articleids": aids,
                "fulljournalname": art.journal,
                "sortdate": f"{art.year}/12/16 00:00",
            }
        data = {"header": {"type": "esummary", "version": "0.3"}, "result": result}
        return 200, JSON, json.dumps(data).encode()

    def idconv(self, params: dict[str, str]) -> tuple[int, dict, bytes]:
        ids = params.get("ids", "")
        if ids in self.idconv_bodies:
            return 200, JSON, self.idconv_bodies[ids]
        records = []
        for pmid in ids.split(","):
            art = self.articles.get(pmid)
            if art and art.pmcid:
                records.append({"pmcid": art.pmcid, "pmid": pmid, "doi": art.doi})
            else:
                records.append({"pmid": pmid, "errmsg": "invalid article id"})
        data = {"status": "ok", "responseDate": "2026-11-27 10:00:00", "records": records}
        return 200, JSON, json.dumps(data, indent=1).encode()

    def elink(self, params: dict[str, str]) -> tuple[int, dict, bytes]:
        pmid = params.get("id", "")
        urls = "".join(
            f"<ObjUrl><Url>{escape(u)}</Url><Category>Full Text Sources</Category>"
            "<Provider><Name>Test Publisher</Name><NameAbbr>tp</NameAbbr><Id>1</Id></Provider>"
            "</ObjUrl>"
            for u in self.prlinks.get(pmid, [])
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8" ?>\n'
            '<!DOCTYPE eLinkResult PUBLIC "-//NLM//DTD elink 20101123//EN" '
            '"https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20101123/elink.dtd">\n'
            "<eLinkResult><LinkSet><DbFrom>pubmed</DbFrom><IdUrlList><IdUrlSet>"
            f"<Id>{pmid}</Id>{urls}</IdUrlSet></IdUrlList></LinkSet></eLinkResult>"
        )
        return 200, XML, body.encode()


XML = {"Content-Type": "text/xml; charset=UTF-8"}
JSON = {"Content-Type": "application/json; charset=UTF-8"}


def _webenv_for(term: str) -> str:
    return "MCID_" + term.encode().hex()


def _webenv_term(webenv: str, query_key: str) -> str | None:
    if query_key != "1" or not webenv.startswith("MCID_"):
        return None
    try:
        return bytes.fromhex(webenv[5:]).decode()
    except ValueError:
        return RECORDED_WEBENV.get(webenv)


#: WebEnvs that appear in recorded first pages → the term they stand for in the tests.
RECORDED_WEBENV: dict[str, str] = {}


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # pyright: ignore[reportIncompatibleVariableOverride]  # only _Server serves it

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            form = self.rfile.read(length).decode()
            params.update({k: v[-1] for k, v in parse_qs(form, keep_blank_values=True).items()})
        app = self.server.app
        with app.lock:
            app.log.append(
                Logged(
                    time.monotonic(),
                    method,
                    parts.path,
                    params,
                    {k.lower(): v for k, v in self.headers.items()},
                )
            )
        with app.lock:
            stall = app.stalls.pop(parts.path, None)
        if stall is not None:
            self._stall(parts.path, stall)
            return
        if len(self.path) > 4000:  # what NCBI's Apache does with long GET URLs
            status, headers, body = 414, {"Content-Type": "text/html"}, URI_TOO_LONG
        else:
            status, headers, body = app.answer(method, parts.path, params)
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout test)
            pass

    def _stall(self, path: str, seconds: float) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        with self.server.app.lock:
            self.server.app.stalled.append(path)
        time.sleep(seconds)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


URI_TOO_LONG = b"<html><head><title>Submitted URI too large!</title></head></html>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: FakeNcbi


@pytest.fixture(name="ncbi")
def ncbi_fixture() -> Iterator[FakeNcbi]:
    """A FakeNcbi served on a free 127.0.0.1 port for the duration of one test."""
    server = _Server(("127.0.0.1", 0), _Handler)
    app = FakeNcbi()
    server.app = app
    app.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield app
    finally:
        server.shutdown()
        server.server_close()


# -- test material built on the fly (no binary files in the repository) -------------------
def make_pdf(text: str = "A test article", pages: int = 1) -> bytes:
    """A small real PDF written by PyMuPDF."""
    import pymupdf

    doc = pymupdf.open()
    for n in range(pages):
        page = doc.new_page(width=300, height=300)
        page.insert_text((40, 60), f"{text} p{n + 1}")
    data = doc.tobytes()
    doc.close()
    return data


def image_bytes(fmt: str, size: tuple[int, int], colour: int | tuple[int, ...], mode: str = "RGB"):
    """An encoded image of one colour (PIL), for package figures."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return buf.getvalue()
