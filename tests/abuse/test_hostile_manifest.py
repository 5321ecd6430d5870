"""Hostile manifest rows: a ManifestError naming the file and line, never a wrong result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from make_corpus import manifest_lines

from histocore.manifest import SCHEMA_VERSION, Manifest, ManifestError

RECORD = {"kind": "record", "id": "r1", "stage": "filtered", "pdf_path": "a.pdf"}
IMAGE = {
    "kind": "image",
    "id": "r1/p001_001",
    "record_id": "r1",
    "path": "images/r1/p001_001.png",
    "sha256": "0" * 64,
    "width": 96,
    "height": 96,
    "kept": True,
}

CASES = {
    "bad stage": ({**RECORD, "stage": "exploded"}, None, "stage 'exploded' is not one of"),
    "list label": (RECORD, {**IMAGE, "label": ["metastasis"]}, "field 'label' is [\"metastasis\"]"),
    "unknown label": (RECORD, {**IMAGE, "label": "maybe"}, "label 'maybe' is not one of"),
    "integer path": (RECORD, {**IMAGE, "path": 7}, "field 'path' is 7, expected str"),
    "kept string": (RECORD, {**IMAGE, "kept": "false"}, "field 'kept' is \"false\", expected"),
    "string width": (RECORD, {**IMAGE, "width": "96"}, "field 'width' is \"96\", expected int"),
    "bool year": ({**RECORD, "year": True}, None, "field 'year' is true, expected int"),
    "bbox strings": (RECORD, {**IMAGE, "bbox": ["a"]}, "field 'bbox' is [\"a\"]"),
    "extra list": ({**RECORD, "extra": []}, None, "field 'extra' is [], expected dict"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_rows_are_one_error_naming_file_and_line(tmp_path: Path, case: str) -> None:
    record, image, message = CASES[case]
    rows = [record] + ([image] if image else [])
    (tmp_path / "manifest.jsonl").write_text(manifest_lines(rows))
    with pytest.raises(ManifestError) as err:
        Manifest.load(tmp_path)
    line = 3 if image else 2
    assert str(err.value).startswith(f"{tmp_path / 'manifest.jsonl'}:{line}: ")
    assert message in str(err.value)


def test_kept_false_string_is_never_counted_as_kept(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text(manifest_lines([RECORD, {**IMAGE, "kept": "false"}]))
    with pytest.raises(ManifestError):
        Manifest.load(tmp_path).kept_images()


def test_valid_rows_still_load(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text(
        manifest_lines([RECORD, {**IMAGE, "bbox": [1, 2.5, 3, 4]}])
    )
    manifest = Manifest.load(tmp_path)
    assert [i.id for i in manifest.kept_images()] == ["r1/p001_001"]


NEXT = SCHEMA_VERSION + 1


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (NEXT, f"schema version {NEXT} is newer than this reader (reads up to {SCHEMA_VERSION})"),
        ("1", "schema version '1' is not a positive integer"),
    ],
)
def test_schema_version_messages_read_correctly(tmp_path: Path, version, message: str) -> None:
    header = {"kind": "header", "schema": "histofetch.manifest", "version": version}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(header) + "\n")
    with pytest.raises(ManifestError) as err:
        Manifest.load(tmp_path)
    assert message in str(err.value)


def test_a_manifest_failing_its_check_leaves_no_store_behind(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text(manifest_lines([{**RECORD, "stage": "exploded"}]))
    with pytest.raises(ManifestError):
        Manifest.load(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]
