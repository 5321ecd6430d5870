"""Property-based fuzzing (Hypothesis) of every parser of untrusted input.

The property is always the same: a parser either returns a well-typed result or raises
its own one-line error type (ManifestError, DatasetError, CheckpointError, StageFailure,
JatsError...), never anything else. Example counts and deadlines are bounded so the whole
file runs in well under a minute.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_corpus import image_pdf, manifest_lines, nested_forms_pdf

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

RECORD_FIELDS = ["id", "stage", "status", "year", "open_access", "pdf_path", "n_images", "extra"]
IMAGE_FIELDS = ["id", "record_id", "path", "sha256", "width", "height", "bbox", "kept", "label",
                "he_score", "caption", "extra"]  # fmt: skip


def _row(kind: str, keys: list[str]):
    return st.fixed_dictionaries(
        {"kind": st.just(kind)},
        optional={
            k: json_value | st.sampled_from(["filtered", "metastasis", "a.png"]) for k in keys
        },
    )


@FAST
@given(rows=st.lists(_row("record", RECORD_FIELDS) | _row("image", IMAGE_FIELDS), max_size=4))
def test_manifest_rows(rows: list[dict]) -> None:
    from histocore.manifest import IMAGE_LABELS, STAGES, Manifest, ManifestError

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest.jsonl").write_text(manifest_lines(rows))
        try:
            manifest = Manifest.load(tmp)
        except ManifestError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(tmp)
            return
    for rec in manifest.records.values():
        assert rec.stage in STAGES and isinstance(rec.extra, dict)
    for img in manifest.images.values():
        assert img.kept in (None, True, False) and img.label in (None, *IMAGE_LABELS)
        assert isinstance(img.path, str) and isinstance(img.width, int)
    manifest.kept_images()


@FAST
@given(body=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_kaggle_label_csv(body: bytes) -> None:
    from PIL import Image

    from histomodels.data.base import DatasetError
    from histomodels.data.kaggle import KaggleDataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train").mkdir()
        Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(root / "train" / "a.tif")
        (root / "train_labels.csv").write_bytes(b"id,label\n" + body)
        try:
            ds = KaggleDataset(root)
        except DatasetError as exc:
            assert "\n" not in str(exc)
            return
        assert set(ds.labels().tolist()) <= {0, 1} and len(ds) == len(ds.ids()) >= 1


@FAST
@given(
    y=st.lists(st.floats(allow_nan=True) | st.integers(-3, 3), min_size=1, max_size=8),
)
def test_binary_labels(y: list[float]) -> None:
    from histomodels.data.base import DatasetError, binary_labels

    arr = np.asarray(y, dtype=np.float64)
    try:
        out = binary_labels(arr, "f.h5")
    except DatasetError as exc:
        assert str(exc).startswith("f.h5: ")
        assert not np.isin(arr, (0, 1)).all()
        return
    assert np.array_equal(out, arr) and out.dtype == np.int64


CKPT_KEYS = ["model", "model_config", "state_dict", "normalization", "input_size",
             "temperature", "version"]  # fmt: skip


@FAST
@given(
    overrides=st.dictionaries(
        st.sampled_from(CKPT_KEYS),
        json_value
        | st.sampled_from(["cnn", "timm/resnet18", "nope"])
        | st.fixed_dictionaries({"mean": json_value, "std": json_value})
        | st.dictionaries(st.sampled_from(["depth", "width", "weights", "img_size"]), json_value),
        max_size=3,
    )
)
def test_checkpoint_dicts(overrides: dict) -> None:
    from make_corpus import checkpoint_dict

    from histomodels.checkpoint import CheckpointError, check_checkpoint

    ckpt = checkpoint_dict(**overrides)
    try:
        check_checkpoint(ckpt, "best.pt")
    except CheckpointError as exc:
        assert str(exc).startswith("best.pt: ") and "\n" not in str(exc)
        return
    from histomodels.models.registry import config_keys

    assert set(ckpt.get("model_config", {})) <= config_keys(ckpt["model"])
    assert "weights" not in ckpt.get("model_config", {})


JATS = b"""<?xml version="1.0"?>
<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>
<article-id pub-id-type="pmcid">PMC1</article-id><permissions><license
xlink:href="https://creativecommons.org/licenses/by/4.0/"/></permissions></article-meta></front>
<body><fig id="F1"><label>Figure 1</label><caption><p>H&amp;E of a lymph node.</p></caption>
<graphic xlink:href="fig1"/></fig></body></article>"""


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for pos, cut, insert in edits:
        pos %= max(1, len(out))
        out[pos : pos + cut] = insert
    return bytes(out)


edits = st.lists(
    st.tuples(st.integers(0, 1 << 20), st.integers(0, 40), st.binary(max_size=12)),
    min_size=1,
    max_size=4,
)


@FAST
@given(edit=edits)
def test_jats_xml(edit) -> None:
    jats = pytest.importorskip("histofetch.jats")
    data = _mutate(JATS, edit)
    try:
        article = jats.read_article(data)
    except jats.JatsError as exc:
        assert "\n" not in str(exc)
        return
    for fig in article.figures:
        assert all(isinstance(h, str) for h in fig.hrefs)


LISTING = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>pmc-oa-opendata</Name>
<Prefix>PMC1.1/</Prefix><IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken>
<Contents><Key>PMC1.1/PMC1.1.xml</Key><ETag>"abc"</ETag></Contents>
<CommonPrefixes><Prefix>PMC1.1/figs/</Prefix></CommonPrefixes></ListBucketResult>"""


@FAST
@given(edit=edits)
def test_s3_listing_xml(edit) -> None:
    cloud = pytest.importorskip("histofetch.sources.pmc_cloud")
    from histofetch.sources import Miss

    try:
        page, token = cloud.parse_listing(_mutate(LISTING, edit))
    except Miss as exc:
        assert "\n" not in str(exc)
        return
    assert all(isinstance(k, str) for k in page.keys) and (token is None or isinstance(token, str))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(["images", "nested"]), edit=edits)
def test_pdf_bytes_mutated_from_fixtures(base: str, edit) -> None:
    from histofetch.pdf_checks import check_page_objects, check_pdf_bytes, open_pdf
    from histofetch.pdf_crosscheck import pdfplumber_count
    from histofetch.pdf_images import extract_images
    from histofetch.stage import StageFailure

    data = _mutate(image_pdf(n_pages=2, side=40) if base == "images" else nested_forms_pdf(), edit)
    try:
        check_pdf_bytes(data, Path("m.pdf"))
        doc = open_pdf(data, Path("m.pdf"))
    except StageFailure:
        return
    try:
        check_page_objects(doc, Path("m.pdf"))
        images, info = extract_images(doc, min_size=8, where="m.pdf", budget_s=20)
    except StageFailure as exc:
        assert "m.pdf" in str(exc)
        return
    finally:
        doc.close()
    assert all(img["rgb"].dtype == np.uint8 and img["rgb"].ndim == 3 for img in images)
    assert info["pymupdf_images"] >= len(images)
    assert isinstance(pdfplumber_count(data), dict)
