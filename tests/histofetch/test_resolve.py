"""ID Converter, OA service and elink parsing: recorded real answers, then the local server."""

from __future__ import annotations

import pytest
from conftest import shared_path
from ncbi_server import Article, FakeNcbi, ncbi_fixture  # noqa: F401 (fixture)

from histofetch.http import NetClient
from histofetch.resolve import (
    ServiceError,
    parse_idconv,
    parse_prlinks,
    pmids_to_pmcids,
    publisher_links,
)


def _fixture(name: str) -> bytes:
    return shared_path("fixtures", "ncbi", name).read_bytes()


def test_recorded_idconv_json_and_xml() -> None:
    (row,) = parse_idconv(_fixture("idconv_json_doi_ok.json"))
    assert (row.pmid, row.pmcid, row.doi) == ("20495566", "PMC2883744", "10.1038/ng.590")
    (row,) = parse_idconv(_fixture("idconv_xml_PMC3479421_versions.xml"))
    assert (row.pmid, row.pmcid) == ("22676651", "PMC3479421")


def test_recorded_idconv_error_is_decoded() -> None:
    with pytest.raises(ServiceError, match="ID type 'doi' mismatch for '28371833'"):
        parse_idconv(_fixture("idconv_json_error_idtype_mismatch_http404.json"))


def test_recorded_prlinks() -> None:
    assert parse_prlinks(_fixture("elink_prlinks_xml.xml")) == [
        "https://academic.oup.com/brain/article-lookup/doi/10.1093/brain/123.1.171"
    ]


def test_idconv_batches_of_200_against_server(ncbi: FakeNcbi) -> None:
    pmids = [str(100 + i) for i in range(450)]
    for i, pmid in enumerate(pmids):
        ncbi.add_article(Article(pmid, pmcid=f"PMC{i}" if i % 3 == 0 else None, doi=f"10.1/{i}"))
    with NetClient(ncbi.config()) as client:
        rows = pmids_to_pmcids(client, pmids)
    assert len(rows) == 150 and rows["100"].pmcid == "PMC0" and rows["103"].doi == "10.1/3"
    calls = ncbi.requests_to("/idconv/")
    assert [len(c.params["ids"].split(",")) for c in calls] == [200, 200, 50]
    assert all(c.params["idtype"] == "pmid" and c.params["tool"] == "histofetch" for c in calls)


def test_idconv_replays_recorded_answer(ncbi: FakeNcbi) -> None:
    ncbi.idconv_bodies["20495566"] = _fixture("idconv_json_doi_ok.json")
    with NetClient(ncbi.config()) as client:
        rows = pmids_to_pmcids(client, ["20495566"])
    assert rows["20495566"].pmcid == "PMC2883744"


def test_prlinks_against_server(ncbi: FakeNcbi) -> None:
    ncbi.prlinks["42"] = ["https://publisher.example/a/42"]
    with NetClient(ncbi.config()) as client:
        assert publisher_links(client, "42") == ["https://publisher.example/a/42"]
        assert publisher_links(client, "43") == []


_ENTITIES = b"".join(
    b'<!ENTITY a%d "%s">' % (i, (b"&a%d;" % (i - 1) if i > 1 else b"&a;") * 10)
    for i in range(1, 10)
)
LAUGHS = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "lol">' + _ENTITIES
LAUGHS += b"]><pmcids><record pmid='&a9;'/></pmcids>"
HOSTILE_ANSWERS = {
    "cut-off XML": b"<pmcids><record pmid='1'",
    "HTML page": b"<html><body>502 Bad Gateway",
    "billion laughs": LAUGHS,
    "external entity": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    b"<pmcids><record pmid='&e;'/></pmcids>",
    "not JSON": b"{status: ok",
    "JSON list records": b'{"records": [1, 2]}',
    "JSON records string": b'{"records": "x"}',
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ANSWERS))
def test_hostile_idconv_answer_is_a_service_error(case: str) -> None:
    """A cut-off or foreign answer raised ``ParseError``/``JSONDecodeError``/``AttributeError``
    out of ``histofetch search`` (a traceback); now the search notes idconv as unavailable."""
    with pytest.raises(ServiceError, match=r"^idconv: ") as err:
        parse_idconv(HOSTILE_ANSWERS[case])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("body", [b"<html>oops", b"<eLinkResult><LinkSet>", LAUGHS, b"{}"])
def test_hostile_prlinks_answer_is_a_service_error(body: bytes) -> None:
    with pytest.raises(ServiceError, match=r"^elink: "):
        parse_prlinks(body)


def test_idconv_and_esummary_pmcids_that_are_not_pmc_and_digits_are_dropped() -> None:
    """A PMCID from a service goes into URL paths later: idconv's was kept as it came
    ('PMC../x', 'PMC１２' with full-width digits), and esummary's regex took full-width
    digits too (re's \\d is Unicode). Now only PMC and ASCII digits are a PMCID."""
    import json

    from histofetch.search import parse_esummary_json

    records = [
        {"pmid": "1", "pmcid": "PMC../x"},
        {"pmid": "2", "pmcid": "PMC１２"},
        {"pmid": "3", "pmcid": " pmc33 "},
    ]
    rows = parse_idconv(json.dumps({"status": "ok", "records": records}).encode())
    assert [(r.pmid, r.pmcid) for r in rows] == [("1", None), ("2", None), ("3", "PMC33")]
    doc = {"uid": "4", "articleids": [{"idtype": "pmc", "value": "PMC１２"}]}
    body = json.dumps({"result": {"uids": ["4"], "4": doc}}).encode()
    assert parse_esummary_json(body)["4"]["pmcid"] is None
