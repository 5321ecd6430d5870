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
    # the review page's /api/item answered 500 (TypeError: 'int' object is not iterable)
    "evidence int": (RECORD, {**IMAGE, "weak_label_evidence": 5}, "'weak_label_evidence' is 5"),
    "evidence strings": (
        RECORD,
        {**IMAGE, "weak_label_evidence": ["x"]},
        "field 'weak_label_evidence' is [\"x\"], expected list[dict",
    ),
    # a string: its characters read as flags (the page's JS: leakage.join is not a function)
    "leakage string": (RECORD, {**IMAGE, "leakage": "camelyon"}, "field 'leakage' is \"camelyon\""),
    "leakage ints": (RECORD, {**IMAGE, "leakage": [5]}, "is [5], expected list[str]"),
    # two bad fields: the first in the row class's order is said, whatever the row's order
    "two bad fields": (RECORD, {"bbox": "x", **IMAGE, "width": "9"}, "field 'width' is \"9\""),
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


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1" + "0" * 5000, "not usable JSON (a number with too many digits)"),
        ("[" * 100_000 + "]" * 100_000, "not usable JSON (nested too deeply)"),
    ],
)
def test_json_python_cannot_parse_is_one_error_naming_file_and_line(
    tmp_path: Path, value: str, message: str
) -> None:
    """A hand-edited row with a 5001-digit number, or arrays nested 100,000 deep, escaped
    json.loads as ValueError / RecursionError: every command printed a traceback."""
    text = manifest_lines([RECORD, IMAGE]).replace('"width": 96', f'"width": {value}')
    (tmp_path / "manifest.jsonl").write_text(text)
    with pytest.raises(ManifestError) as err:
        Manifest.load(tmp_path)
    assert str(err.value) == f"{tmp_path / 'manifest.jsonl'}:3: {message}"


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


def _escaping_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run whose image rows name a file outside it three ways (absolute, ``..``, a link
    pointing out), next to one good figure; and the outside file (a real PNG)."""
    import numpy as np
    import PIL.Image

    from histocore.manifest import Image, Record

    secret = tmp_path / "secret" / "private.png"
    secret.parent.mkdir()
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(secret)
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    PIL.Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(
        run / "images" / "good.png"
    )
    (run / "images" / "link.png").symlink_to(secret)
    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id="r1", stage="extracted"))
        paths = ["images/good.png", str(secret), "../secret/private.png", "images/link.png"]
        for n, path in enumerate(paths):
            m.add_image(Image(id=f"r1/f{n}", record_id="r1", path=path, sha256=str(n),
                              width=200, height=200, kept=True, status="ok"))  # fmt: skip
        m.save()
    return run, secret


def test_image_paths_outside_the_run_are_refused(tmp_path: Path) -> None:
    run, secret = _escaping_run(tmp_path)
    with Manifest.load(run) as m:
        assert m.image_file("images/good.png") == (run / "images" / "good.png").resolve()
        for rel in (str(secret), "../secret/private.png", "images/link.png", "/etc/passwd"):
            with pytest.raises(ManifestError, match="is outside the run folder"):
                m.image_file(rel)


def test_an_images_folder_linked_to_another_disk_is_still_read(tmp_path: Path) -> None:
    """``images/`` moved to a bigger disk behind a link is the local user's setup: rows the
    tool writes there stay ``images/...`` and are read, as are the absolute rows older
    versions wrote for them; a file link of its own pointing out is still refused."""
    import numpy as np
    import PIL.Image

    from histocore.manifest import Image, Record
    from histofetch.filter import run_filter

    rng = np.random.default_rng(0)
    run, disk = tmp_path / "run", tmp_path / "bigdisk"
    (disk / "r1").mkdir(parents=True)
    run.mkdir()
    (run / "images").symlink_to(disk, target_is_directory=True)
    for name in ("a.png", "b.png"):
        PIL.Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(
            disk / "r1" / name
        )
    (tmp_path / "secret.png").write_bytes((disk / "r1" / "a.png").read_bytes())
    (disk / "r1" / "out.png").symlink_to(tmp_path / "secret.png")
    with Manifest.load(run, create=True) as m:
        assert m.relative(run / "images" / "r1" / "a.png") == "images/r1/a.png"
        m.add_record(Record(id="r1", stage="extracted"))
        paths = ["images/r1/a.png", str(disk / "r1" / "b.png"), "images/r1/out.png"]
        for n, path in enumerate(paths):
            m.add_image(Image(id=f"r1/f{n}", record_id="r1", path=path, sha256=str(n),
                              width=200, height=200))  # fmt: skip
        m.save()
        assert m.image_file(paths[0]) == (disk / "r1" / "a.png").resolve()
        assert m.image_file(paths[1]) == (disk / "r1" / "b.png").resolve()
        with pytest.raises(ManifestError, match="is outside the run folder"):
            m.image_file(paths[2])
    run_filter(run, sheet=False)
    with Manifest.load(run) as m:
        rows = {i.id: i for i in m.images.values() if i.parent_id is None}
    assert "outside" not in (rows["r1/f0"].reason or "") and rows["r1/f0"].status != "failed"
    assert "outside" not in (rows["r1/f1"].reason or "") and rows["r1/f1"].status != "failed"
    assert rows["r1/f2"].status == "failed" and "outside" in (rows["r1/f2"].reason or "")


def test_filter_never_reads_an_image_outside_the_run(tmp_path: Path) -> None:
    """``filter`` read, scored and kept ``/abs/private.png``, ``../x.png`` and a link
    pointing out (and would cut panels beside them): each row now fails, the run goes on."""
    from histofetch.filter import run_filter

    run, secret = _escaping_run(tmp_path)
    run_filter(run, sheet=False)
    with Manifest.load(run) as m:
        rows = {i.id: i for i in m.images.values() if i.parent_id is None}
    assert rows["r1/f0"].status == "ok" and rows["r1/f0"].reason is None
    for n in (1, 2, 3):
        row = rows[f"r1/f{n}"]
        assert row.status == "failed" and not row.kept, row
        assert "is outside the run folder" in (row.reason or ""), row.reason
        # the path once: it read "cannot read image RUN/../secret/private.png: image path
        # '../secret/private.png' is outside the run folder"
        name = "link.png" if n == 3 else "private.png"
        assert (row.reason or "").count(name) == 1, row.reason
        assert (row.reason or "").startswith("cannot read image: image path "), row.reason
    assert sorted(p.name for p in secret.parent.iterdir()) == ["private.png"]


def test_merge_never_links_a_file_from_outside_the_run(tmp_path: Path) -> None:
    """A ``../`` path was hard-linked from outside the source run to the same ``../`` place
    beside the merged folder (a file written outside the output folder)."""
    from histofetch.merge import merge_runs

    run, _ = _escaping_run(tmp_path)
    out = tmp_path / "out" / "merged"
    out.parent.mkdir()
    merge_runs([run], out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]
    assert not (tmp_path / "out" / "secret").exists()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["good.png"]


def test_merge_never_writes_outside_its_output_through_a_dotdot_path(tmp_path: Path) -> None:
    """A ``..`` path that leads back into the source run (``../../a/run/images/x.png``)
    passed the source check, and its link was made at the same ``..`` place from the
    merged folder: ``b/c/merged/../../a/run/...``, i.e. ``b/a/run/images/x.png``, outside
    the output. Such a row is merged as it is (readers refuse it) and nothing is linked."""
    import numpy as np
    import PIL.Image

    from histocore.manifest import Image, Record
    from histofetch.merge import merge_runs

    run = tmp_path / "a" / "run"
    (run / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("good.png", "x.png"):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(run / "images" / name)
    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id="r1", stage="extracted"))
        for n, path in enumerate(["images/good.png", "../../a/run/images/x.png"]):
            m.add_image(Image(id=f"r1/f{n}", record_id="r1", path=path, sha256=str(n),
                              width=64, height=64))  # fmt: skip
        m.save()
    out = tmp_path / "b" / "c" / "merged"
    out.parent.mkdir(parents=True)
    merge_runs([run], out)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["c"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["good.png"]
    with Manifest.load(out) as m:
        assert m.images["r1/f1"].path == "../../a/run/images/x.png"  # kept, never read


def test_eval_manifest_never_reads_an_image_outside_the_run(tmp_path: Path) -> None:
    from histomodels.data import DatasetError
    from histomodels.data.manifest_tiles import ManifestTileDataset

    run, _ = _escaping_run(tmp_path)
    with Manifest.load(run) as m:
        for img in m.images.values():
            img.label = "metastasis" if img.id != "r1/f0" else "not_usable"
        m.save()
    with pytest.raises(DatasetError, match=r"image r1/f1: image path .* is outside the run folder"):
        ManifestTileDataset(run)


@pytest.mark.parametrize("kind", ["record", "image"])
def test_duplicate_ids_are_one_error_naming_both_lines(tmp_path: Path, kind: str) -> None:
    """Two rows with one id: the later silently replaced the earlier (a label, a path
    lost without a word)."""
    rows = [RECORD, IMAGE, {**IMAGE, "path": "images/r1/other.png"}]  # lines 2-4
    if kind == "record":
        rows = [RECORD, IMAGE, {**RECORD, "stage": "searched"}]
    (tmp_path / "manifest.jsonl").write_text(manifest_lines(rows))
    first = 2 if kind == "record" else 3
    with pytest.raises(ManifestError, match=rf"jsonl:4: duplicate {kind} id .* line {first}\)"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(
    ("table", "text", "why"),
    [
        ("images", "{oops", r"image r1/p001_001: not valid JSON \(Expecting property name"),
        ("images", "[" * 100_000 + "]" * 100_000, r"image r1/p001_001: not usable JSON \(nested"),
        ("records", '{"id": ' + "9" * 5000 + "}", r"record r1: not usable JSON \(a number with"),
        ("header", "[" * 100_000 + "]" * 100_000, r"header: not usable JSON \(nested too deep"),
        ("records", '{"id": 5}', r"record r1: field 'id' is 5, expected str$"),
        ("images", '{"kind": "image"}', r"image r1/p001_001: Image.__init__\(\) missing 6"),
    ],
    ids=["invalid", "deep", "bigint", "header", "bad-field", "no-fields"],
)
def test_run_store_rows_that_are_not_json(tmp_path: Path, table: str, text: str, why: str) -> None:
    """A run.sqlite from elsewhere whose row text is not usable JSON: histofetch status,
    export and filter each raised json's JSONDecodeError, RecursionError or ValueError; the
    message then named the store but not the row (a bad field named the id inside the
    JSON, as 'row 5')."""
    import sqlite3

    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.jsonl").write_text(manifest_lines([RECORD, IMAGE]))
    with Manifest.load(run) as manifest:  # the store is made from the JSONL
        manifest.save()
    column = "value" if table == "header" else "data"
    with sqlite3.connect(run / "run.sqlite") as db:
        db.execute(
            f"UPDATE {table} SET {column} = ? WHERE rowid = (SELECT min(rowid) FROM {table})",
            (text,),
        )
    db.close()
    with pytest.raises(ManifestError, match=rf"run\.sqlite: {why}"):
        Manifest.load(run)


def _stored_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.jsonl").write_text(manifest_lines([RECORD, IMAGE]))
    with Manifest.load(run) as manifest:  # the store is made from the JSONL
        manifest.save()
    return run


@pytest.mark.parametrize("table", ["records", "images"])
@pytest.mark.parametrize("text", ["[1, 2]", '"pmid:1"', "5", "null"])
def test_run_store_rows_that_are_json_but_not_objects(tmp_path: Path, table, text) -> None:
    """A row whose JSON is an array, a string, a number or null (histofetch merge of such a
    shard, status, export): AttributeError: 'list' object has no attribute 'get'. The
    error names the row by its key in the store."""
    import sqlite3

    run = _stored_run(tmp_path)
    with sqlite3.connect(run / "run.sqlite") as db:
        db.execute(f"UPDATE {table} SET data = ?", (text,))
    db.close()
    said = r"run\.sqlite: (record r1|image r1/p001_001): row is not a JSON object$"
    with pytest.raises(ManifestError, match=said):
        Manifest.load(run)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("DROP TABLE images", "no table images"),
        ("DROP TABLE claims", "no table claims"),
        (
            "DROP INDEX records_pmcid; ALTER TABLE records DROP COLUMN pmcid",
            "table records lacks pmcid",
        ),
        ("DROP TABLE records; CREATE TABLE records (x)", "table records lacks seq"),
        # the version row: missing, or not a number, said "version '' is newer than this
        # reader ... upgrade histocore"; a blob (SQLite keeps its type) was read as a version
        ("DELETE FROM store_meta WHERE key = 'version'", "no version row"),
        (
            "UPDATE store_meta SET value = X'31' WHERE key = 'version'",
            "version b'1' is not a number",
        ),
        (
            "UPDATE store_meta SET value = 'x1' WHERE key = 'version'",
            "version 'x1' is not a number",
        ),
    ],
)
def test_run_store_missing_a_table_or_column(tmp_path: Path, change: str, said: str) -> None:
    """A hand-edited run.sqlite (or a shard from elsewhere) whose format and version rows
    are right but a table or column is missing: histofetch merge, status and export ended in
    sqlite3.OperationalError: no such table: images."""
    import sqlite3

    run = _stored_run(tmp_path)
    with sqlite3.connect(run / "run.sqlite") as db:
        db.executescript(change)
    db.close()
    with pytest.raises(ManifestError, match=rf"run\.sqlite: not a usable run store \({said}\)$"):
        Manifest.load(run)
    assert sorted(p.name for p in run.iterdir()) == ["manifest.jsonl", "run.sqlite"]


@pytest.mark.parametrize("with_store", [False, True])
def test_manifest_jsonl_that_is_a_fifo_is_refused_unread(tmp_path: Path, with_store) -> None:
    """``manifest.jsonl`` as a FIFO (or a link to /dev/zero): every reader of the run
    (histofetch merge of such a shard, status, review) blocked reading it, or read until
    MemoryError. A writer here answers the read that main made, so that main fails (the load
    succeeds) rather than hangs; the reader now never opens it."""
    import contextlib
    import os
    import threading

    run = _stored_run(tmp_path) if with_store else tmp_path / "run"
    run.mkdir(exist_ok=True)
    fifo = run / "manifest.jsonl"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)

    done = threading.Event()

    def feed() -> None:
        while not done.is_set():  # each open of the FIFO (main read it twice) gets the run
            with contextlib.suppress(BrokenPipeError), open(fifo, "w") as fh:  # waits for one
                fh.write(manifest_lines([RECORD, IMAGE]))

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        with pytest.raises(ManifestError, match=r"manifest\.jsonl: not a regular file$"):
            Manifest.load(run)
    finally:  # let the writer's open return: a reader, open until the writer is done
        done.set()
        for _ in range(600):  # once seen hung in its open on a loaded machine: a reader each turn
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            writer.join(timeout=0.5)
            os.close(reader)
            if not writer.is_alive():
                break
    assert not writer.is_alive(), "the FIFO's writer never returned"
