"""Caption weak labels: written edge cases, real captions read by hand, and the filter stage."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import PIL.Image
import pytest
from conftest import shared_path
from pdf_factory import he_like

from histocore.manifest import Image, Manifest, Record
from histofetch.captions import normalise
from histofetch.filter import run_filter
from histofetch.labels import RULES_VERSION, read_caption


@pytest.mark.parametrize(
    ("caption", "label", "site", "evidence"),
    [
        ("Metastatic carcinoma in a lymph node (H&E, x100).", "metastasis", "lymph_node",
         "Metastatic carcinoma"),
        ("Sentinel lymph node with isolated tumour cells.", "metastasis", "lymph_node",
         "isolated tumour cells"),
        ("Micrometastasis in an axillary lymph node.", "metastasis", "lymph_node",
         "Micrometastasis"),
        ("Tumor deposits in the subcapsular sinus of the node.", "metastasis", "lymph_node",
         "Tumor deposits"),
        ("Lymph node replaced by squamous cell carcinoma.", "metastasis", "lymph_node",
         "squamous cell carcinoma"),
        ("No evidence of metastatic carcinoma in the sentinel lymph node.", "no_metastasis",
         "lymph_node", "No evidence of metastatic carcinoma"),
        ("Negative sentinel lymph node, H&E.", "no_metastasis", "lymph_node",
         "Negative sentinel lymph node"),
        ("Reactive lymph node with follicular hyperplasia.", "no_metastasis", "lymph_node",
         "Reactive lymph node"),
        ("Axillary node: metastases were not identified.", "no_metastasis", "lymph_node",
         "metastases were not identified"),
        ("Sentinel node without metastasis or isolated tumour cells.", "no_metastasis",
         "lymph_node", "without metastasis or isolated tumour cells"),
        ("Nonmetastatic lymph node (x400).", "no_metastasis", "lymph_node", "Nonmetastatic"),
        # a positive finding wins; negating "extranodal extension" says nothing about the node
        ("Lymph node with metastatic carcinoma; no extranodal extension.", "metastasis",
         "lymph_node", "metastatic carcinoma"),
        # silence is never negative
        ("Lymph node, H&E x200.", "abstain", "lymph_node", None),
        ("Lymph node from a patient with breast cancer showing sinus histiocytosis.",
         "abstain", "lymph_node", None),
        # not asserted: comparisons, questions, patients rather than the image
        ("The pattern enables distinction from a lymph node metastasis.", "abstain",
         "lymph_node", None),
        ("Is this a lymph node metastasis?", "abstain", "lymph_node", None),
        ("CK19 expression in patients with lymph node metastasis.", "abstain", "lymph_node",
         None),
        # the site matters: a primary or another organ is never weak-labelled
        ("Primary invasive ductal carcinoma of the breast.", "abstain", "breast", None),
        ("Liver metastasis of breast cancer (H&E).", "abstain", "other", None),
        ("Primary tumour; the lymph nodes were negative.", "abstain", "other", None),
        ("Metastatic tumour cells, H&E.", "abstain", "unknown", None),
        ("", "abstain", "unknown", None),
    ],
)  # fmt: skip
def test_written_captions(caption: str, label: str, site: str, evidence: str | None) -> None:
    r = read_caption(caption)
    assert (r.label, r.site) == (label, site), r.evidence
    texts = [e["text"] for e in r.evidence if e["kind"] == label]
    if evidence:
        assert evidence in texts
    for e in r.evidence:  # offsets point at the text they name
        assert normalise(caption)[e["start"] : e["end"]] == e["text"]


PANELS = (
    "Figure 2. Axillary staging. (A) Primary breast carcinoma. (B) Sentinel lymph node "
    "metastasis. (C) Reactive lymph node. (D) Higher magnification of (B), CK19."
)


def test_panels_are_read_from_their_own_text() -> None:
    assert read_caption(PANELS, "A").label == "abstain"
    assert read_caption(PANELS, "A").site == "breast"
    assert read_caption(PANELS, "b").label == "metastasis"
    assert read_caption(PANELS, "C").label == "no_metastasis"
    assert read_caption(PANELS, "D").label == "abstain"  # "of (B)" is a reference, no finding
    assert read_caption(PANELS, "E").label == "abstain"  # the caption does not name E
    whole = read_caption(PANELS)  # a whole figure shows a metastasis when any panel does
    assert (whole.label, whole.site) == ("metastasis", "lymph_node")
    b = read_caption(PANELS, "B")
    assert any(e["text"] == "metastasis" for e in b.evidence)


def test_a_stored_label_follows_the_panel_letter_stored_beside_it() -> None:
    """The label is read from the row's own caption and panel letter under one rule set:
    reading letters (scorer 5) changed the input, not the rules, so no RULES_VERSION bump."""
    from histofetch.labels import label_image

    row = Image("r/f1_panel03", "r", "x.png", "0" * 64, 10, 10, caption=PANELS, kept=True)
    label_image(row)  # no letter read: the whole caption
    assert (row.weak_label, row.weak_label_rules) == ("metastasis", RULES_VERSION)
    row.panel_letter = "C"  # its letter read: its own part
    label_image(row)
    assert (row.weak_label, row.weak_label_rules) == ("no_metastasis", RULES_VERSION)
    assert row.weak_label == read_caption(row.caption, row.panel_letter).label


def test_shared_title_gives_the_panels_their_site_and_finding() -> None:
    cap = "Sentinel lymph node. (A) Isolated tumour cells, H&E. (B) Cytokeratin stain."
    assert read_caption(cap, "A").label == "metastasis"
    assert read_caption(cap, "B").label == "abstain"
    assert read_caption(cap, "B").site == "lymph_node"
    cap = "Metastatic carcinoma in an axillary lymph node. (A) H&E, x40. (B) CK19, x200."
    assert read_caption(cap).label == "metastasis"


def test_hostile_captions() -> None:
    assert read_caption("<script>alert(1)</script> metastasis").label == "abstain"
    long = "lymph node metastasis " * 20_000 + "?"
    r = read_caption(long)
    assert r.label in ("metastasis", "abstain")
    assert all(isinstance(e["start"], int) for e in r.evidence)


# -- real captions -----------------------------------------------------------------------

#: First measurement of the rules on the 88 hand-read captions (docs/weak-labels.md).
MIN_AGREEMENT = 0.80


def _hand_read() -> list[dict[str, str]]:
    path = shared_path("fixtures", "jats_ln", "captions.tsv")
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.realdata
def test_real_captions_agree_with_the_hand_readings() -> None:
    rows = _hand_read()
    assert len(rows) == 88
    got = [read_caption(r["caption"], r["panel"] or None) for r in rows]
    pairs = Counter((r["caption_says"], g.label) for r, g in zip(rows, got, strict=True))
    agree = sum(v for (a, b), v in pairs.items() if a == b)
    wrong = [
        f"{r['caption_says']}->{g.label}: {r['caption'][:80]} ({r['note']})"
        for r, g in zip(rows, got, strict=True)
        if r["caption_says"] != g.label
    ]
    assert agree / len(rows) >= MIN_AGREEMENT, "\n".join(wrong)
    # never the dangerous error: a caption read as metastasis by hand called negative
    assert pairs[("metastasis", "no_metastasis")] == 0
    assert pairs[("abstain", "no_metastasis")] == 0
    # both real negative captions are found
    assert pairs[("no_metastasis", "no_metastasis")] == 2


@pytest.mark.realdata
def test_real_jats_captions_are_never_lymph_node_labels() -> None:
    """None of these articles shows a lymph node: every figure must abstain."""
    folder = shared_path("fixtures", "jats")
    n = 0
    for path in sorted(folder.glob("*.*xml")):
        root = ElementTree.fromstring(path.read_bytes())
        for fig in root.iter("fig"):
            caption = " ".join("".join(fig.itertext()).split())
            r = read_caption(caption)
            assert r.label == "abstain", (path.name, caption[:120], r.evidence)
            n += 1
    assert n >= 15


# -- the filter stage writes the fields ----------------------------------------------------


def _run_with_captions(tmp_path: Path, captions: dict[str, str]) -> Path:
    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="q")
    for n, (image_id, caption) in enumerate(captions.items()):
        rec = Record(id=f"pmid:{n}", title=f"Paper {n}", stage="extracted")
        m.add_record(rec)
        rel = f"images/{n}.png"
        (run / "images").mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(he_like(160, 160, seed=n)).save(run / rel)
        m.add_image(
            Image(
                id=image_id,
                record_id=rec.id,
                path=rel,
                sha256="0",
                width=160,
                height=160,
                caption=caption,
            )
        )
    m.save()
    m.close()  # no open store (run.sqlite-wal/-shm) left for the collector
    return run


def test_filter_writes_weak_labels_and_relabels(tmp_path: Path) -> None:
    run = _run_with_captions(
        tmp_path,
        {
            "pos": "Metastatic carcinoma in a sentinel lymph node.",
            "neg": "Sentinel lymph node negative for metastasis.",
            "none": "Lymph node.",
            "cam": "CAMELYON16 lymph node slide with metastasis.",
        },
    )
    run_filter(run, sheet=False)
    m = Manifest.load(run)
    assert all(i.kept for i in m.images.values())
    assert {k: i.weak_label for k, i in m.images.items()} == {
        "pos": "metastasis", "neg": "no_metastasis", "none": "abstain", "cam": "metastasis"
    }  # fmt: skip
    assert m.images["cam"].leakage == ["camelyon"] and m.images["pos"].leakage is None
    assert all(i.weak_label_rules == RULES_VERSION for i in m.images.values())
    assert m.images["pos"].site == "lymph_node"
    assert m.header_extra["weak_labels"]["metastasis"] == 2
    # top-level keys of the JSONL row, not buried in "extra"
    row = next(
        json.loads(line)
        for line in (run / "manifest.jsonl").read_text().splitlines()
        if '"id": "neg"' in line
    )
    assert row["weak_label"] == "no_metastasis" and row["weak_label_evidence"]
    assert {"site", "weak_label_rules", "phash"} <= row.keys()
    # re-running re-labels from the (changed) caption
    m.images["none"].caption = "Lymph node with micrometastasis."
    m.save()
    run_filter(run, sheet=False)
    assert Manifest.load(run).images["none"].weak_label == "metastasis"
