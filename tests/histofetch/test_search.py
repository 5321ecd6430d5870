"""Search stage against the local E-utilities server (recorded answers replayed where present)."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import ncbi_server
import pytest
from conftest import shared_path
from ncbi_server import Article, FakeNcbi, ncbi_fixture  # noqa: F401 (fixture)

from histocore.manifest import Manifest
from histofetch.resolve import ServiceError
from histofetch.search import (
    OA_FILTER,
    PMC_OA_FILTER,
    parse_esearch,
    parse_esummary_json,
    run_search,
)

QUERY = "lymph node metastasis breast cancer"


def _populate(ncbi: FakeNcbi, n: int, *, oa_every: int = 3) -> list[str]:
    pmids = [str(30000000 + i) for i in range(n)]
    for i, pmid in enumerate(pmids):
        ncbi.add_article(
            Article(
                pmid,
                title=f"Article {i}",
                year=2000 + i % 20,
                doi=f"10.1000/test.{i}",
                pmcid=f"PMC{900000 + i}" if i % 2 == 0 else None,
            )
        )
    ncbi.searches[QUERY] = pmids
    ncbi.searches[f"({QUERY}) AND {OA_FILTER}"] = pmids[::oa_every]
    return pmids


def test_search_pages_through_all_results(ncbi: FakeNcbi, tmp_path: Path) -> None:
    pmids = _populate(ncbi, 250)
    summary = run_search(tmp_path, QUERY, net=ncbi.config(), page_size=100)
    assert summary.done == 250 and summary.failed == 0

    manifest = Manifest.load(tmp_path)
    assert manifest.query == QUERY
    assert list(manifest.records) == [f"pmid:{p}" for p in pmids]
    rec = manifest.records[f"pmid:{pmids[4]}"]
    assert (rec.title, rec.journal, rec.year, rec.doi) == (
        "Article 4",
        "J Test Pathol",
        2004,
        "10.1000/test.4",
    )
    assert rec.pmcid == "PMC900004" and rec.stage == "searched" and rec.query == QUERY
    assert manifest.records[f"pmid:{pmids[1]}"].pmcid is None
    assert [r.open_access for r in list(manifest.records.values())[:4]] == [
        True,
        False,
        False,
        True,
    ]

    # paging used the history server: later pages carry WebEnv/query_key and retstart
    main = [
        h
        for h in ncbi.requests_to("/eutils/esearch.fcgi")
        if h.params.get("term") == QUERY or ("WebEnv" in h.params and "term" not in h.params)
    ]
    assert [h.params.get("retstart", "0") for h in main][:3] == ["0", "100", "200"]
    assert main[0].params["usehistory"] == "y"
    assert all("WebEnv" in h.params and h.params["query_key"] == "1" for h in main[1:3])
    # esummary is POSTed (a GET with 200 ids is an HTTP 414 at NCBI), in batches
    summaries = ncbi.requests_to("/eutils/esummary.fcgi")
    assert summaries and all(h.method == "POST" for h in summaries)
    assert sum(len(h.params["id"].split(",")) for h in summaries) == 250
    assert all(h.params["tool"] == "histofetch" for h in ncbi.log)


def test_search_again_adds_nothing_twice(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _populate(ncbi, 30)
    run_search(tmp_path, QUERY, net=ncbi.config(), page_size=10)
    first = Manifest.load(tmp_path).path.read_text()
    again = run_search(tmp_path, QUERY, net=ncbi.config(), page_size=10)
    assert (again.done, again.skipped) == (0, 30)
    lines = Manifest.load(tmp_path).path.read_text().splitlines()
    assert len(lines) == 31 and "\n".join(lines) + "\n" == first
    # no metadata requests for records the run already has
    assert len(ncbi.requests_to("/eutils/esummary.fcgi")) == 1  # the first run only


def test_max_results_and_dates(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _populate(ncbi, 50)
    summary = run_search(
        tmp_path,
        QUERY,
        max_results=15,
        mindate="2010",
        maxdate="2020/12",
        net=ncbi.config(),
        page_size=10,
    )
    assert summary.done == 15
    first = ncbi.requests_to("/eutils/esearch.fcgi")[0].params
    assert (first["datetype"], first["mindate"], first["maxdate"]) == ("pdat", "2010", "2020/12")
    assert len(Manifest.load(tmp_path).records) == 15


def test_open_access_only_uses_the_pmc_oa_filter(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _populate(ncbi, 12)
    summary = run_search(tmp_path, QUERY, open_access_only=True, net=ncbi.config())
    assert summary.done == 4
    manifest = Manifest.load(tmp_path)
    assert all(r.open_access for r in manifest.records.values())
    assert ncbi.requests_to("/eutils/esearch.fcgi")[0].params["term"].endswith(OA_FILTER)


def test_db_pmc_searches_the_open_access_subset(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.add_article(Article("33328347", title="With PMID", pmcid="PMC7771231", doi="10.1/a"))
    ncbi.add_article(Article("", title="No PMID", pmcid="PMC7771232"))
    ncbi.searches[f"({QUERY}) AND {PMC_OA_FILTER}"] = ["7771231", "7771232"]
    summary = run_search(tmp_path, QUERY, net=ncbi.config(), db="pmc")
    assert summary.done == 2
    first = ncbi.requests_to("/eutils/esearch.fcgi")[0].params
    assert (first["db"], first["term"]) == ("pmc", f"({QUERY}) AND open_access[Filter]")
    assert ncbi.requests_to("/eutils/esummary.fcgi")[0].params["db"] == "pmc"
    manifest = Manifest.load(tmp_path)
    ids = {r.id: (r.pmid, r.pmcid, r.open_access) for r in manifest.records.values()}
    assert ids == {
        "pmid:33328347": ("33328347", "PMC7771231", True),
        "pmcid:PMC7771232": (None, "PMC7771232", True),
    }
    assert manifest.header_extra["last_search"]["db"] == "pmc"
    again = run_search(tmp_path, QUERY, net=ncbi.config(), db="pmc")
    assert (again.done, again.skipped) == (0, 2)
    with pytest.raises(ValueError, match="unknown database"):
        run_search(tmp_path, QUERY, net=ncbi.config(), db="embase")


def test_retracted_publication_is_flagged(ncbi: FakeNcbi, tmp_path: Path) -> None:
    ncbi.add_article(Article("1", pmcid="PMC1", retracted=True))
    ncbi.add_article(Article("2", pmcid="PMC2"))
    ncbi.searches[QUERY] = ["1", "2"]
    run_search(tmp_path, QUERY, net=ncbi.config())
    records = Manifest.load(tmp_path).records
    assert (records["pmid:1"].is_retracted, records["pmid:2"].is_retracted) == (True, None)


def test_no_hits_is_an_empty_run_not_an_error(ncbi: FakeNcbi, tmp_path: Path) -> None:
    summary = run_search(tmp_path, "abcXYZ nothing", net=ncbi.config())
    assert (summary.done, summary.failed) == (0, 0)
    assert Manifest.load(tmp_path).records == {}
    # said plainly, and where it looked (it read only "searched: 0 done, 0 already done,
    # 0 failed", as if the search had not run)
    assert summary.line() == (
        "searched: 0 done, 0 already done, 0 failed; the query matched no articles in PubMed"
    )
    pmc = run_search(tmp_path, "abcXYZ nothing", net=ncbi.config(), db="pmc")
    assert pmc.line().endswith("; the query matched no articles in PMC's open-access subset")
    dated = run_search(
        tmp_path, "abcXYZ nothing", net=ncbi.config(), open_access_only=True, mindate="2020"
    )
    assert dated.line().endswith(
        "; the query matched no articles in PubMed's open-access articles (dates 2020 to any)"
    )


def test_hits_none_in_this_shard_say_so(ncbi: FakeNcbi, tmp_path: Path) -> None:
    from histofetch.shard import in_shard

    _populate(ncbi, 1)
    shard = next((k, 4) for k in range(1, 5) if not in_shard("pmid:30000000", (k, 4)))
    summary = run_search(tmp_path, QUERY, net=ncbi.config(), shard=shard)
    assert summary.done == 0
    assert summary.line().endswith(f"; the query matched 1 article, none in shard {shard[0]}/4")
    found = run_search(tmp_path / "all", QUERY, net=ncbi.config())
    assert found.line() == "searched: 1 done, 0 already done, 0 failed"  # no note with hits


def _esearch_dropping(kept: str, dropped: str, pmids: list[str]) -> bytes:
    """An esearch answer (current DTD) where NCBI searched ``kept`` and did not find
    ``dropped``: the shape of the recorded esearch8.xml, with hits."""
    ids = "".join(f"<Id>{p}</Id>" for p in pmids)
    warnings = (
        "" if pmids else "<WarningList><OutputMessage>No items found.</OutputMessage></WarningList>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<!DOCTYPE eSearchResult PUBLIC "-//NLM//DTD '
        'esearch 20060628//EN" "https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20060628/esearch.dtd">'
        f"\n<eSearchResult><Count>{len(pmids)}</Count><RetMax>{len(pmids)}</RetMax><RetStart>0"
        f"</RetStart><IdList>{ids}</IdList><TranslationSet/><QueryTranslation>{kept}"
        f"</QueryTranslation><ErrorList><PhraseNotFound>{dropped}</PhraseNotFound></ErrorList>"
        f"{warnings}</eSearchResult>"
    ).encode()


def test_words_ncbi_left_out_of_the_query_are_one_warning(
    ncbi: FakeNcbi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NCBI drops words it cannot find (a typo) and searches the rest: a search for
    'lymph node brest' gave the hits of 'lymph node' with nothing said. Now one warning
    names what was left out and what was searched; no hits at all says so too. The
    open-access lookup (the same words AND the OA filter) warned a second time."""
    pmids = _populate(ncbi, 3)
    term = "lymph node brest"
    ncbi.first_page_body[term] = _esearch_dropping('"lymph node"[All Fields]', "brest", pmids)
    # the open-access lookup repeats the typo; NCBI says so again, but the user hears it once
    ncbi.first_page_body[f"({term}) AND {OA_FILTER}"] = _esearch_dropping(
        f'"lymph node"[All Fields] AND {OA_FILTER}', "brest", pmids[:1]
    )
    with caplog.at_level("WARNING", logger="histofetch.search"):
        summary = run_search(tmp_path / "a", term, net=ncbi.config())
    assert summary.done == 3
    records = Manifest.load(tmp_path / "a").records
    assert [records[f"pmid:{p}"].open_access for p in pmids] == [True, False, False]
    assert [r.getMessage() for r in caplog.records] == [
        "PubMed left part of the query out ('brest' not found) and searched "
        '"lymph node"[All Fields]: 3 hits; check the spelling'
    ]
    caplog.clear()
    ncbi.first_page_body["brest"] = _esearch_dropping("(brest[All Fields])", "brest", [])
    with caplog.at_level("WARNING", logger="histofetch.search"):
        run_search(tmp_path / "b", "brest", net=ncbi.config())
    assert [r.getMessage() for r in caplog.records] == [
        "PubMed found no articles ('brest' not found); check the spelling"
    ]


def test_recorded_answers_name_what_ncbi_left_out() -> None:
    """Both parsers (Biopython's, and the plain one for the old DTD) keep the ErrorList."""
    from histofetch.search import left_out

    old = shared_path("fixtures", "ncbi", "eutilsjson_esearch_phrase_not_found.xml")
    assert left_out(parse_esearch(old.read_bytes())) == ["'fleegle[MeSH Terms]' not found"]
    new = shared_path("fixtures", "ncbi", "esearch_protein_notfound_errorlist.xml")
    assert left_out(parse_esearch(new.read_bytes())) == ["'abcXYZ' not found"]
    plain = shared_path("fixtures", "ncbi", "esearch_pubmed_biopython.xml")
    assert left_out(parse_esearch(plain.read_bytes())) == []


def test_every_left_out_word_is_named_by_both_parsers() -> None:
    """Two misspelt words are two ``<PhraseNotFound>``: the plain parser (for answers
    Biopython refuses, here one without a DOCTYPE) kept only the last of each kind."""
    from histofetch.search import left_out

    errors = "<PhraseNotFound>brest</PhraseNotFound><PhraseNotFound>lymf</PhraseNotFound>"
    current = _esearch_dropping('"node"[All Fields]', "brest", ["1"]).replace(
        b"<PhraseNotFound>brest</PhraseNotFound>", errors.encode()
    )
    plain = b'<?xml version="1.0"?>\n' + current[current.index(b"<eSearchResult>") :]
    assert b"DOCTYPE" in current and b"DOCTYPE" not in plain
    for body in (current, plain):
        assert left_out(parse_esearch(body)) == ["'brest' not found", "'lymf' not found"]


def test_search_replays_recorded_esearch_page(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """The real esearch answer (usehistory=y, 42249 hits) as page 1, then history paging."""
    body = shared_path("fixtures", "ncbi", "esearch_pubmed_cancer_usehistory.xml").read_bytes()
    recorded = [str(i) for i in parse_esearch(body)["IdList"]]
    term = "cancer"
    ncbi.first_page_body[term] = body
    ncbi.searches[term] = recorded + [str(20000000 + i) for i in range(100)]
    ncbi_server.RECORDED_WEBENV["MCID_6927d6e7fee3e90f880ec190"] = term
    summary = run_search(tmp_path, term, max_results=150, net=ncbi.config(), page_size=100)
    assert summary.done == 150
    ids = [r.pmid for r in Manifest.load(tmp_path).records.values()]
    assert ids[:100] == recorded and ids[0] == "41297076" and ids[100] == "20000000"
    page2 = ncbi.requests_to("/eutils/esearch.fcgi")[1].params
    assert page2["WebEnv"] == "MCID_6927d6e7fee3e90f880ec190"
    assert (page2["retstart"], page2["retmax"]) == ("100", "50")


def test_recorded_esearch_error_answers() -> None:
    nothing = shared_path("fixtures", "ncbi", "esearch_protein_notfound_errorlist.xml")
    assert parse_esearch(nothing.read_bytes())["Count"] == "0"
    bad_db = shared_path("fixtures", "ncbi", "eutilsjson_esearch_invalid_db.xml")
    with pytest.raises(ServiceError, match="Invalid db name"):
        parse_esearch(bad_db.read_bytes())
    html = shared_path("fixtures", "ncbi", "esummary_pmc_http414_uri_too_long.html")
    with pytest.raises(ServiceError):
        parse_esearch(html.read_bytes())


def test_recorded_esummary_json() -> None:
    body = shared_path("fixtures", "ncbi", "esummary_pmc_v2_json_200ids.json").read_bytes()
    docs = parse_esummary_json(body)
    assert len(docs) == 200
    doc = docs["7771231"]
    assert doc["pmid"] == "33328347" and doc["pmcid"] == "PMC7771231"
    assert doc["doi"] == "10.1128/mSphere.00562-20" and doc["year"] == 2020
    assert doc["journal"] == "mSphere"
    assert doc["title"].startswith("Nasal Tissue Extraction")


def test_esummary_pmcids_follow_the_download_rule() -> None:
    """esummary's PMCIDs are read by ``canonical_pmcid``'s rule, as the ID Converter's
    (review): a 13-digit one was stored and then refused by download; ``pmc-id: PMC12;``
    (the ``pmcid`` article id) still gives PMC12."""

    def pmcid(value: str) -> str | None:
        doc = {"articleids": [{"idtype": "pmc", "value": value}]}
        body = json.dumps({"result": {"uids": ["1"], "1": doc}}).encode()
        return parse_esummary_json(body)["1"]["pmcid"]

    assert pmcid("PMC7771231") == "PMC7771231"
    assert pmcid("pmc-id: PMC12;") == "PMC12"
    assert pmcid("pmc33") == "PMC33"
    assert pmcid("PMC" + "1" * 13) is None
    assert pmcid("PMC１２") is None


def test_esummary_error_answer_is_a_clear_error() -> None:
    with pytest.raises(ServiceError, match="esummary: Neither"):
        parse_esummary_json(b'{"error": "Neither query_key nor id specified"}')
    with pytest.raises(ServiceError, match="not JSON"):
        parse_esummary_json(b"<html>Submitted URI too large!</html>")


def test_idconv_outage_falls_back_to_esummary_pmcids(ncbi: FakeNcbi, tmp_path: Path) -> None:
    _populate(ncbi, 4)
    ncbi.inject("/idconv/", *[(500, {}, b"down")] * 10)
    summary = run_search(tmp_path, QUERY, net=ncbi.config(max_retries=1))
    assert summary.done == 4
    assert any(r.startswith("idconv unavailable") for r in summary.reasons)
    assert Manifest.load(tmp_path).records["pmid:30000000"].pmcid == "PMC900000"


def test_a_search_that_fails_midway_closes_its_store(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """The store is closed on the way out of a failing search too (no ``-wal``/``-shm``
    beside ``run.sqlite`` while the error, and the frames it holds, are still alive)."""
    from histocore.store import STORE_NAME
    from histofetch.http import NetError

    _populate(ncbi, 4)
    assert run_search(tmp_path, QUERY, max_results=2, net=ncbi.config()).done == 2
    ncbi.inject("/eutils/esummary.fcgi", *[(500, {}, b"down")] * 10)
    gc.disable()  # a store left open must not be closed by the collector meanwhile
    try:
        with pytest.raises(NetError) as info:  # the next two PMIDs' metadata: no answer
            run_search(tmp_path, QUERY, net=ncbi.config(max_retries=1))
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(STORE_NAME + "-")]
        assert info.traceback  # (still holding the failed call's frames)
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'{"result": {"uids": ["1"], "1": ["not", "a", "doc"]}}',
        b'{"result": {"uids": ["1"], "1": {"articleids": [1]}}}',
        b'{"result": {"uids": 5}}',
    ],
)
def test_esummary_json_of_another_shape_is_a_service_error(body: bytes) -> None:
    """JSON that is not an esummary answer raised ``AttributeError``/``TypeError`` out of
    ``histofetch search`` (a traceback)."""
    with pytest.raises(ServiceError, match=r"^esummary: JSON of another shape"):
        parse_esummary_json(body)


def test_esearch_ids_that_are_not_numbers_make_no_record(
    ncbi: FakeNcbi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An esearch answer with an empty <Id/> (or a garbled one) became a record 'pmid:'
    that failed at download; a PMID listed twice cost a second esummary/idconv entry. Now
    ids are numbers, each once, and one warning names those left out."""
    pmids = _populate(ncbi, 3)
    ncbi.searches[QUERY] = [pmids[0], pmids[0], "", "PMC1", "１２", pmids[1], pmids[2]]
    with caplog.at_level("WARNING", logger="histofetch.search"):
        summary = run_search(tmp_path, QUERY, net=ncbi.config())
    assert (summary.done, summary.skipped) == (3, 0)
    with Manifest.load(tmp_path) as manifest:
        assert sorted(manifest.records) == sorted(f"pmid:{p}" for p in pmids)
    assert [r.getMessage() for r in caplog.records] == [
        "esearch answered 3 id(s) that are not numbers ('', 'PMC1', '１２'); left out"
    ]
