"""JATS figures, captions and licences from the real files in ../shared/fixtures/jats, and
hostile XML refused."""

from __future__ import annotations

import pytest
from conftest import shared_path
from s3_server import FALLBACK_JATS

from histofetch.jats import JatsError, match_href, parse_xml, read_article
from histofetch.licence import allowed, normalise, reuse_rank


def test_pmc_nxml_figures_without_extensions() -> None:
    data = shared_path("fixtures", "jats", "pmc_mds526_annonc_breast_stage.nxml").read_bytes()
    article = read_article(data)
    assert article.licence == "CC BY-NC"
    assert [(f.id, f.label, f.hrefs) for f in article.figures] == [
        ("MDS526F1", "Figure 1.", ["mds52601"]),
        ("MDS526F2", "Figure 2.", ["mds52602"]),
    ]
    assert article.figures[1].caption is not None
    assert article.figures[1].caption.startswith("Age inequalities in advanced stage")
    assert "≥65" in article.figures[1].caption  # numeric character references decoded


def test_plos_jats_with_undeclared_html_entities() -> None:
    data = shared_path("fixtures", "jats", "plos_ppat.0020025.xml").read_bytes()
    assert b"&rsqb;" in data  # the entity expat does not know
    article = read_article(data)
    assert article.licence == "CC BY" and len(article.figures) == 9
    fig7 = article.figures[6]
    assert fig7.label == "Figure 7"
    assert fig7.hrefs == ["info:doi/10.1371/journal.ppat.0020025.g007"]
    assert fig7.caption is not None
    assert "H&E" in fig7.caption
    # The caption title and paragraphs are separate blocks, not glued together.
    assert article.figures[0].caption is not None
    assert article.figures[0].caption.startswith("XMRV Detection by DNA Microarrays and RT-PCR (A)")


def test_public_domain_licence_and_the_fallback_jats() -> None:
    data = shared_path("fixtures", "jats", "pmc_ehp-116-1694.nxml").read_bytes()
    assert read_article(data).licence == "public domain"
    fallback = read_article(FALLBACK_JATS)
    assert fallback.licence == "CC BY-NC" and len(fallback.figures) == 2


def test_hostile_xml_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">'
        b'<!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;&x;&x;">]><article>&y;</article>'
    )
    with pytest.raises(JatsError, match="refused"):
        parse_xml(bomb)
    external = (
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<article>&e;</article>"
    )
    with pytest.raises(JatsError, match="refused"):
        parse_xml(external)
    with pytest.raises(JatsError, match="too large"):
        parse_xml(b"<article/>" + b" " * 200, max_bytes=100)
    with pytest.raises(JatsError, match="not well-formed"):
        parse_xml(b"<article><fig></article>")


def test_hrefs_resolve_to_files() -> None:
    names = ["P.1/mds52601.gif", "P.1/mds52601.jpg", "P.1/mds52601.tif", "P.1/PMC1.1.pdf"]
    assert match_href("mds52601", names) == "P.1/mds52601.tif"  # full size first
    assert match_href("mds52601.gif", names) == "P.1/mds52601.gif"  # an explicit extension
    assert match_href("mds52602", names) is None
    plos = ["P.1/journal.ppat.0020025.g007.jpg"]
    assert match_href("info:doi/10.1371/journal.ppat.0020025.g007", plos) == plos[0]
    assert match_href("PMC1.1", names) is None  # the PDF is not a figure


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("CC BY", "CC BY"),
        ("cc by-nc-nd", "CC BY-NC-ND"),
        ("CC0", "CC0"),
        ("TDM", "TDM"),
        ("http://creativecommons.org/licenses/by-sa/4.0/", "CC BY-SA"),
        ("https://creativecommons.org/publicdomain/zero/1.0/", "CC0"),
        ("This article is distributed under the Creative Commons Attribution License", "CC BY"),
        ("none", None),
        (None, None),
        # spelt otherwise, ranked unknown before (merge's licence rule: reuse_rank)
        ("cc_by", "CC BY"),
        ("CC-BY-4.0", "CC BY"),
        ("CC-BY-NC-ND-4.0", "CC BY-NC-ND"),
        ("CC BY-NC-SA 3.0 IGO", "CC BY-NC-SA"),
        ("CC BY 3.0 US", "CC BY"),
        ("CC BY NC license", "CC BY-NC"),
        ("CC BY 4.0 licence", "CC BY"),
        ("cc by-nc 4.0", "CC BY-NC"),
        ("Elsevier user license", "Elsevier user license"),
    ],
)
def test_licence_codes(given: str | None, code: str | None) -> None:
    assert normalise(given) == code


def test_spellings_of_one_licence_rank_alike() -> None:
    from histofetch.licence import reuse_rank

    assert [reuse_rank(x) for x in ("cc_by", "CC-BY-4.0", "CC BY")] == [2, 2, 2]
    assert [reuse_rank(x) for x in ("CC BY-NC-SA 3.0 IGO", "CC BY NC license")] == [1, 1]
    assert [normalise(x) for x in ("CC BY 3.0 US", "cc by-sa 4.0 de")] == ["CC BY", "CC BY-SA"]


@pytest.mark.parametrize("text", ["CC BY 4.0 NC", "cc by 4.0 nc license", "CC BY 3.0 SA"])
def test_a_licence_element_after_the_version_is_no_port(text: str) -> None:
    """A two-letter port after the version ('CC BY 3.0 US') took 'nc', 'sa' and 'nd' too:
    'CC BY 4.0 NC' read as CC BY and passed ``--licence commercial``. Such a spelling is
    left unknown, refused by both policies, as before the spellings were read."""
    assert normalise(text) != "CC BY" and reuse_rank(text) == 0
    assert not allowed(text, "commercial") and not allowed(text, "noncommercial")


def test_licence_policy() -> None:
    assert allowed("CC BY", "commercial") and allowed("CC0", "commercial")
    assert not allowed("CC BY-NC", "commercial") and allowed("CC BY-NC", "noncommercial")
    for policy in ("commercial", "noncommercial"):
        assert not allowed("TDM", policy) and not allowed(None, policy)
    assert allowed("TDM", "any") and allowed(None, "any")
