"""A small run folder for the review page tests: H&E-like figures with real-style captions."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import PIL.Image
from pdf_factory import he_like

from histocore.io import unique_stem
from histocore.manifest import Image, Manifest, Record
from histofetch.filter import run_filter

HOSTILE = "Lymph node <img src=x onerror=\"document.title='pwned'\"> & <script>bad()</script>"
CAPTIONS = {
    "pmid:1/fig1": "Figure 1. Metastatic carcinoma in an axillary lymph node (H&E, x100).",
    "pmid:1/fig2": "Figure 2. No evidence of metastatic carcinoma in the sentinel lymph node.",
    "pmid:2/fig1": "Fig. 3. (A) Primary breast carcinoma. (B) Isolated tumour cells in a node.",
    "pmid:2/fig2": HOSTILE,
}


def make_run(root: Path, *, size: int = 300, figures: int = 4, filtered: bool = True) -> Path:
    """Four kept figures in two articles (the first ``figures``), weak-labelled by ``histofetch
    filter`` unless not ``filtered`` (the store closed: an open connection leaves
    run.sqlite-wal/-shm until the collector runs)."""
    run = root / "run"
    m = Manifest(run_dir=run, query="lymph node metastasis")
    title = "Sentinel nodes <b>in</b> breast cancer"  # markup in a title must stay text
    m.add_record(
        Record(id="pmid:1", pmid="1", pmcid="PMC111", title=title, year=2021, license="CC BY",
               stage="extracted")
    )  # fmt: skip
    m.add_record(
        Record(id="pmid:2", pmid="2", doi="10.1/x", title="Axillary staging", year=2019,
               license="CC BY-NC", stage="extracted")
    )  # fmt: skip
    (run / "images").mkdir(parents=True, exist_ok=True)
    for n, (image_id, caption) in enumerate(list(CAPTIONS.items())[:figures]):
        rel = f"images/{n}.png"
        PIL.Image.fromarray(he_like(size, size + 40 * n, seed=n)).save(run / rel)
        m.add_image(
            Image(id=image_id, record_id=image_id.split("/")[0], path=rel, sha256="0",
                  width=size + 40 * n, height=size, caption=caption)
        )  # fmt: skip
    m.save()
    m.close()
    if filtered:
        run_filter(run, sheet=False)
    return run


def make_scores(run: Path, root: Path) -> Path:
    """What ``histomodels eval --manifest`` writes that the page reads: scores, heatmaps."""
    out = root / "eval"
    (out / "heatmaps").mkdir(parents=True)
    rows = ["image_id,record_id,label,weak_label,leakage,max,topk_mean"]
    for n, image_id in enumerate(CAPTIONS):
        score = (0.9, 0.8, 0.7, 0.4)[n]  # fig2 of pmid:1: weak says negative, model positive
        rows.append(f"{image_id},{image_id.split('/')[0]},-1,,,{score},{score - 0.05}")
        PIL.Image.fromarray(he_like(120, 120, seed=9)).save(
            out / "heatmaps" / f"{unique_stem(image_id)}.png"
        )
    (out / "image_scores.csv").write_text("\n".join(rows) + "\n")
    return out


def answer_filter_cases() -> list[dict[str, Any]]:
    """Every combination of the filters an answer can take a figure off the list by (the
    review status, disagreements between the weak label and the review, the review label)
    with a figure's weak label and review label: the page's ``stillMatches`` (review.js)
    and the server's ``matches`` are checked against each other on each."""
    from histocore.manifest import IMAGE_LABELS, WEAK_LABELS

    return [
        {"status": s, "disagree": d, "label_filter": f, "label": label, "weak_label": weak}
        for s, d, f, label, weak in itertools.product(
            ("unreviewed", "all", "reviewed"),
            ("", "review"),
            ("", *IMAGE_LABELS, "unreviewed"),
            (None, *IMAGE_LABELS),
            (None, *WEAK_LABELS),
        )
    ]
