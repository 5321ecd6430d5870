"""histomodels reads a run from its exported manifest.jsonl alone exactly as from the store,
and reading a JSONL-only folder writes nothing into it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from histocore.manifest import MANIFEST_NAME, STORE_NAME, Image, Manifest, Record
from histomodels.data import open_dataset
from histomodels.data.manifest_tiles import ManifestTileDataset
from histomodels.synthetic import make_figure


def test_export_only_folder_reads_like_the_store(tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = Manifest.load(run, create=True)
    m.add_record(Record(id="pmid:1", stage="filtered"))
    (run / "images").mkdir(parents=True)
    for n, label in enumerate(("metastasis", "no_metastasis", None)):
        rgb = make_figure(1, 2, seed=n, tumour=label != "no_metastasis")
        PILImage.fromarray(rgb).save(run / "images" / f"f{n}.png")
        h, w = rgb.shape[:2]
        m.add_image(Image(id=f"f{n}", record_id="pmid:1", path=f"images/f{n}.png", sha256="0",
                          width=w, height=h, kept=True, label=label))  # fmt: skip
    m.save()
    m.update_image("f2", label="metastasis")  # committed to the store...
    Manifest.load(run).export()  # ...and exported

    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(run / MANIFEST_NAME, copy / MANIFEST_NAME)
    shutil.copytree(run / "images", copy / "images")
    from_store, from_jsonl = open_dataset(run, scale=1.0), open_dataset(copy, scale=1.0)
    assert isinstance(from_store, ManifestTileDataset)
    assert isinstance(from_jsonl, ManifestTileDataset)
    assert from_store.ids() == from_jsonl.ids() and len(from_store.ids()) > 0
    assert [t.label for t in from_store.tiles] == [t.label for t in from_jsonl.tiles]
    assert {t.label for t in from_jsonl.tiles if t.image_id == "f2"} == {1}
    assert np.array_equal(from_store.images, from_jsonl.images)
    assert not (copy / STORE_NAME).exists()  # reading created no store
