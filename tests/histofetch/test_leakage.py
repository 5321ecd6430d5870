"""Near-duplicate figures across articles (perceptual hash) and CAMELYON/PCam mentions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
from pdf_factory import he_like

from histocore.manifest import Image, Manifest, Record
from histofetch.labels import label_manifest, leakage_flags
from histofetch.leakage import flag_near_duplicates, hamming, image_hash


def _add(m: Manifest, image_id: str, record_id: str, rgb: np.ndarray) -> None:
    rel = f"images/{image_id}.png"
    (m.run_dir / "images").mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(rgb).save(m.run_dir / rel)
    m.add_record(Record(id=record_id))
    h, w = rgb.shape[:2]
    m.add_image(
        Image(id=image_id, record_id=record_id, path=rel, sha256="", width=w, height=h, kept=True)
    )


def test_reprinted_figure_is_flagged_across_articles_only(tmp_path: Path) -> None:
    m = Manifest(run_dir=tmp_path / "run")
    base = he_like(200, 240, seed=1)
    # the same micrograph reprinted: re-encoded as JPEG, slightly rescaled, brighter
    jpeg = tmp_path / "r.jpg"
    PIL.Image.fromarray(base).resize((300, 250)).save(jpeg, quality=70)
    reprint = np.clip(np.asarray(PIL.Image.open(jpeg)).astype(int) + 12, 0, 255).astype(np.uint8)
    _add(m, "a1", "pmid:1", base)
    _add(m, "b1", "pmid:2", reprint)
    _add(m, "b2", "pmid:2", he_like(200, 240, seed=2))  # a different micrograph
    _add(m, "a2", "pmid:1", base[:, ::-1].copy())  # same article: not flagged
    assert flag_near_duplicates(m) == 2
    assert m.images["a1"].leakage == ["near_duplicate:b1"]
    assert m.images["b1"].leakage == ["near_duplicate:a1"]
    assert m.images["b2"].leakage is None and m.images["a2"].leakage is None
    assert m.images["a1"].phash is not None
    assert m.images["b1"].phash is not None
    assert hamming(m.images["a1"].phash, m.images["b1"].phash) <= 6
    assert m.images["b2"].phash is not None
    assert hamming(m.images["a1"].phash, m.images["b2"].phash) > 6
    # flags are recomputed, not accumulated: drop the reprint and they go
    m.images["b1"].kept = False
    assert flag_near_duplicates(m) == 0 and m.images["a1"].leakage is None


def test_unreadable_image_gets_no_hash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    assert image_hash(str(bad)) is None


def test_camelyon_mentions() -> None:
    assert leakage_flags("Patches from the CAMELYON16 challenge.", None) == ["camelyon"]
    assert leakage_flags(None, "Deep learning on PatchCamelyon") == ["camelyon"]
    assert leakage_flags("Examples from the PCam benchmark", None) == ["camelyon"]
    assert leakage_flags("Sentinel lymph node metastasis", "A cohort study") == []


def test_local_pdf_file_name_is_read_by_the_camelyon_check(tmp_path: Path) -> None:
    """A local PDF titled by its metadata title is still flagged when its file name says it
    shows CAMELYON/PCam data; a downloaded PDF's name (made by histofetch) is not read."""
    m = Manifest(run_dir=tmp_path / "run")
    named = {
        "local:1": ("camelyon16_tumor_001_report.pdf", "local"),
        "local:2": ("pcam_review.pdf", "local"),
        "local:3": ("nodal_paper.pdf", "local"),
        "pmid:4": ("pdfs/camelyon_4.pdf", "pmc-cloud"),
    }
    for n, (rid, (name, source)) in enumerate(named.items()):
        _add(m, f"i{n}", rid, he_like(200, 240, seed=10 + 5 * n))
        rec = m.records[rid]
        rec.title, rec.pdf_path, rec.pdf_source = "Lymph node metastasis detection", name, source
        m.images[f"i{n}"].caption = "Lymph node with metastatic carcinoma."
    assert label_manifest(m)["camelyon"] == 2
    assert {i: m.images[i].leakage for i in ("i0", "i1", "i2", "i3")} == {
        "i0": ["camelyon"], "i1": ["camelyon"], "i2": None, "i3": None
    }  # fmt: skip
