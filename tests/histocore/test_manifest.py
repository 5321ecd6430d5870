"""The manifest: round trip, stable order, atomic writes, and bad files named by file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from histocore.io import atomic_write_text, record_slug
from histocore.manifest import (
    MANIFEST_NAME,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    Image,
    Manifest,
    ManifestError,
    Record,
)


def _sample(run_dir: Path) -> Manifest:
    m = Manifest.load(run_dir, create=True)
    m.query = "lymph node metastasis"
    m.header_extra["last_search"] = {"max": 5}
    rec = m.add_record(
        Record(
            id="pmid:1", pmid="1", title="T", year=2020, stage="extracted", pdf_path="pdfs/1.pdf"
        )
    )
    m.add_record(Record(id="pmid:2", pmid="2"))
    m.records["pmid:2"].fail("downloaded", "HTTP 404: not found\nsecond line")
    m.add_image(Image(id="pmid:1/p002_001", record_id=rec.id, path="images/pmid_1/p002_001.png",
                      sha256="a" * 64, width=96, height=96, page=2, bbox=[1.0, 2.0, 3.0, 4.0],
                      purple_ratio=0.5, he_score=0.6, tissue_fraction=0.7, kept=True))  # fmt: skip
    m.add_image(Image(id="pmid:1/fig1", record_id=rec.id, path="images/pmid_1/fig1.jpg",
                      sha256="b" * 64, width=900, height=700, source="package"))  # fmt: skip
    m.add_image(Image(id="pmid:1/p001_001", record_id=rec.id, path="images/pmid_1/p001_001.png",
                      sha256="c" * 64, width=50, height=40, page=1, kept=False))  # fmt: skip
    return m


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    m = _sample(tmp_path)
    m.save()
    again = Manifest.load(tmp_path)
    assert again.query == m.query and again.header_extra == m.header_extra
    assert again.records == m.records and again.images == m.images
    assert again.records["pmid:2"].reason == "HTTP 404: not found"  # one line only
    again.save()
    assert (tmp_path / MANIFEST_NAME).read_text() == m.path.read_text()  # byte-stable


def test_rows_read_are_the_objects_their_class_makes(tmp_path: Path) -> None:
    """Rows are read without the dataclasses' ``__init__`` (a fifth of a large run's read):
    each is the object ``Image(**row)`` makes, its fields in the class's order, defaults
    filled, and a ``default_factory`` field (``extra``) its own, not shared."""
    import dataclasses

    from histocore.jsonl import read_jsonl_whole

    _sample(tmp_path).save()
    lines = (tmp_path / MANIFEST_NAME).read_text().splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    for row in rows:  # rows without the keys of their defaults, extra among them
        if row["id"] in ("pmid:1/fig1", "pmid:1/p001_001", "pmid:2"):
            for key in ("extra", "status", "caption"):
                row.pop(key, None)
    (tmp_path / "run.sqlite").unlink()
    (tmp_path / MANIFEST_NAME).write_text("\n".join([lines[0], *map(json.dumps, rows)]) + "\n")
    parsed, _ = read_jsonl_whole(tmp_path / MANIFEST_NAME, lambda: Manifest(run_dir=tmp_path))
    for row in rows:
        cls = Image if row["kind"] == "image" else Record
        got = (parsed.images if cls is Image else parsed.records)[row["id"]]
        made = cls(**row)
        assert got == made and list(vars(got).items()) == list(vars(made).items())
        assert list(vars(got)) == [f.name for f in dataclasses.fields(cls)]
    parsed.images["pmid:1/fig1"].extra["x"] = 1
    assert parsed.images["pmid:1/p001_001"].extra == {} == parsed.records["pmid:2"].extra


def test_rows_are_records_then_their_images_pdf_first_by_page(tmp_path: Path) -> None:
    lines = _sample(tmp_path).save().read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["kind"], header["schema"], header["version"]) == (
        "header", SCHEMA_NAME, SCHEMA_VERSION,
    )  # fmt: skip
    ids = [json.loads(line)["id"] for line in lines[1:]]
    assert ids == ["pmid:1", "pmid:1/p001_001", "pmid:1/p002_001", "pmid:1/fig1", "pmid:2"]
    assert [r["id"] for r in Manifest.load(tmp_path).rows()] == ids


def test_kept_images_resolve_and_relative(tmp_path: Path) -> None:
    m = _sample(tmp_path)
    assert [i.id for i in m.kept_images()] == ["pmid:1/p002_001"]
    assert m.resolve("images/x.png") == tmp_path / "images/x.png"
    assert m.resolve("/abs/x.png") == Path("/abs/x.png") and m.resolve(None) is None
    assert m.relative(tmp_path / "images" / "x.png") == "images/x.png"
    outside = tmp_path.parent / "elsewhere.pdf"
    assert m.relative(outside) == str(outside.resolve())


def test_add_record_twice_does_not_duplicate(tmp_path: Path) -> None:
    m = _sample(tmp_path)
    m.add_record(Record(id="pmid:1", pmid="1", title="new title"))
    assert len(m.records) == 2 and m.records["pmid:1"].title == "new title"
    m.drop_images_of("pmid:1")
    assert m.images_of("pmid:1") == []


def test_unknown_fields_from_a_newer_minor_version_are_kept(tmp_path: Path) -> None:
    m = _sample(tmp_path)
    m.save()
    lines = m.path.read_text().splitlines()
    row = json.loads(lines[1])
    row["future_field"] = 42
    lines[1] = json.dumps(row)
    m.path.write_text("\n".join(lines) + "\n")
    assert Manifest.load(tmp_path).records["pmid:1"].extra["future_field"] == 42


@pytest.mark.parametrize(
    ("line_no", "text", "message"),
    [
        (2, "{not json", "not valid JSON"),
        (2, "[1, 2]", "expected a JSON object"),
        (3, '{"kind": "banana", "id": "x"}', "unknown row kind 'banana'"),
        (2, '{"kind": "record"}', "missing 1 required positional argument: 'id'"),
        (1, '{"kind": "header", "schema": "other"}', "not a histofetch.manifest header"),
        (1, '{"kind": "header", "schema": "histofetch.manifest", "version": 99}', "newer"),
    ],
)
def test_bad_lines_raise_manifest_error_naming_file_and_line(
    tmp_path: Path, line_no: int, text: str, message: str
) -> None:
    path = _sample(tmp_path).save()
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as err:
        Manifest.load(tmp_path)
    assert str(err.value).startswith(f"{path}:{line_no}: ")
    assert message in str(err.value)


def test_missing_and_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest here"):
        Manifest.load(tmp_path)
    assert Manifest.load(tmp_path, create=True).records == {}
    (tmp_path / MANIFEST_NAME).write_text("")
    with pytest.raises(ManifestError, match="empty file"):
        Manifest.load(tmp_path)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]
    assert target.stat().st_mode & 0o644 == 0o644  # readable like a normal file


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    m = _sample(tmp_path)
    m.save()
    before = m.path.read_text()
    m.records["pmid:1"].extra["bad"] = object()  # not JSON-serialisable
    with pytest.raises(TypeError):
        m.save()
    assert m.path.read_text() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_record_slug_is_filesystem_safe() -> None:
    assert record_slug("pmid:123") == "pmid_123"
    assert record_slug("doi:10.1/ab c") == "doi_10.1_ab_c"
    assert record_slug("../../etc") == "etc"
    assert record_slug("...") == "record"
    assert len(record_slug("x" * 500)) == 120


def test_a_nul_byte_in_a_row_is_named_with_its_column(tmp_path: Path) -> None:
    """A NUL byte in manifest.jsonl was 'not valid JSON (Invalid control character at)',
    json's message cut before the position it names; now the column is given."""
    path = _sample(tmp_path).save()
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10] + "\x00" + lines[1][10:]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as err:
        Manifest.load(tmp_path)
    assert str(err.value) == f"{path}:2: not valid JSON (Invalid control character, column 11)"


def test_an_image_path_no_file_can_have_is_said_so_not_called_a_loop(tmp_path: Path) -> None:
    """An image row whose path holds a NUL character (``"images/x\\u0000.png"`` is valid
    JSON) was refused as ``cannot be resolved (symlink loop)``: ``resolve`` raises
    ValueError for it, read as the loop's failure. It is said now, and so is a lone
    surrogate; a real loop is still a loop."""
    from histocore.errors import UnnameablePath, UnresolvablePath

    m = _sample(tmp_path)
    said = {"images/x\x00.png": "a NUL character", "images/\ud800.png": "a character the file"}
    for rel, why in said.items():
        with pytest.raises(UnnameablePath) as err:
            m.image_file(rel)
        assert str(err.value).startswith(
            f"{m.path}: image path {rel!r} names no file (it holds {why}"
        )
        assert "loop" not in str(err.value)
    (tmp_path / "loop.png").symlink_to("loop.png")
    with pytest.raises(UnresolvablePath, match=r"cannot be resolved \(symlink loop\)"):
        m.image_file("loop.png")


def test_commit_header_commits_the_header_keys_only(tmp_path: Path) -> None:
    """A header key said after a full commit (filter: its sheets written) cost a second
    full commit, every row compared again. commit_header writes the changed header keys
    alone: a row changed in memory is not written by it, and is by the next commit."""
    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="q")
    m.add_record(Record(id="pmid:1", pmid="1", stage="filtered"))
    m.save()
    m.header_extra["filter_sheets"] = True
    m.records["pmid:1"].title = "changed in memory"
    m.commit_header()
    with Manifest.load(run) as other:
        assert other.header_extra["filter_sheets"] is True
        assert other.records["pmid:1"].title is None
    m.commit()
    with Manifest.load(run) as other:
        assert other.records["pmid:1"].title == "changed in memory"
    m.close()


@pytest.mark.parametrize("commit", ["commit", "commit_header"])
def test_a_header_its_readers_refuse_is_not_committed(tmp_path: Path, commit: str) -> None:
    """commit and commit_header wrote the header unchecked: a caller's non-bool
    filter_sheets made the run unreadable (the reader checks it). Now the commit raises a
    ValueError (a caller's bug, not one ManifestError line) and writes nothing."""
    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="q")
    m.add_record(Record(id="pmid:1", pmid="1", stage="filtered"))
    m.save()
    m.header_extra["filter_sheets"] = "yes"
    m.records["pmid:1"].title = "changed in memory"
    with pytest.raises(ValueError, match="header 'filter_sheets' is 'yes'") as err:
        getattr(m, commit)()
    assert not isinstance(err.value, ManifestError)
    # the value is the caller's, not the store's (it read 'run.sqlite: header …')
    assert str(err.value).startswith("the header to commit: header 'filter_sheets'"), err.value
    assert str(err.value).endswith(f"not committed to {run / 'run.sqlite'}"), err.value
    m.close()
    with Manifest.load(run) as other:
        assert "filter_sheets" not in other.header_extra
        assert other.records["pmid:1"].title is None


def test_load_takes_the_manifest_file_for_its_run_folder(tmp_path: Path) -> None:
    """``Manifest.load("runs/mine/manifest.jsonl")`` (the file a researcher sees) said
    ``…/manifest.jsonl/manifest.jsonl: no manifest here``; the file now stands for its
    folder, and another file is refused as no run folder."""
    run = tmp_path / "run"
    _sample(run).save()
    for given in (run / MANIFEST_NAME, run / "run.sqlite", str(run / MANIFEST_NAME)):
        m = Manifest.load(given)
        assert m.run_dir == run and m.query == "lymph node metastasis"
        assert "pmid:1" in m.records
        m.close()
    other = run / "notes.txt"
    other.write_text("x")
    with pytest.raises(ManifestError, match=r"notes\.txt: is a file, not a run folder"):
        Manifest.load(other)


def test_changed_by_others_sees_another_connections_commit_not_its_own(tmp_path: Path) -> None:
    """A long-lived reader (the review server) reads the run again when another process
    commits to it, and only then: its own answers leave it current."""
    _sample(tmp_path).save()
    with Manifest.load(tmp_path) as mine:
        assert not mine.changed_by_others()
        mine.update_image("pmid:1/fig1", label="metastasis")  # our own commit
        assert not mine.changed_by_others()
        with Manifest.load(tmp_path) as other:  # another connection (process)
            other.update_image("pmid:1/fig1", label="not_usable")
            assert not other.changed_by_others()
        assert mine.changed_by_others()
        assert mine.changed_by_others()  # until it is read again
    with Manifest.load(tmp_path) as again:
        assert not again.changed_by_others()
        assert again.images["pmid:1/fig1"].label == "not_usable"


def test_changed_by_others_sees_a_commit_made_while_the_run_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 52: the baseline is taken before the read's snapshot, so a commit landing while
    the run is read (after the snapshot began) is not in the rows read and is still said;
    taken after the read, it was counted as seen. The wrapper of ``RunStore.image_data``
    calls the real reader; it only makes a real commit from another connection first."""
    from histocore.store import RunStore

    _sample(tmp_path).save()
    real, done = RunStore.image_data, []

    def image_data(self: RunStore):
        if not done:  # the snapshot is taken (header, records read): another process commits
            done.append(1)
            with Manifest.load(tmp_path) as other:
                other.update_image("pmid:1/fig1", label="not_usable")
        return real(self)

    monkeypatch.setattr(RunStore, "image_data", image_data)
    m = Manifest.load(tmp_path)
    monkeypatch.setattr(RunStore, "image_data", real)
    try:
        assert done and m.images["pmid:1/fig1"].label is None  # the snapshot's
        assert m.changed_by_others()
    finally:
        m.close()


def test_changed_by_others_of_a_run_read_from_its_jsonl_is_a_store_appearing(
    tmp_path: Path,
) -> None:
    (tmp_path / "src").mkdir()
    path = _sample(tmp_path / "src").save()
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST_NAME).write_bytes(path.read_bytes())  # a folder with no store yet
    jsonl_only = Manifest.load(run)
    assert not jsonl_only.changed_by_others()
    with Manifest.load(run) as other:
        other.update_image("pmid:1/fig1", label="metastasis")  # makes the store
    assert jsonl_only.changed_by_others()


def test_the_store_a_runs_own_first_commit_makes_is_no_change_by_others(tmp_path: Path) -> None:
    """A run holding only ``manifest.jsonl``: the first commit makes the store from the rows
    read (the migration), which is this manifest's own write, not another's (the review
    page read the whole run again after its first answer); another process's commit after
    it is still said."""
    (tmp_path / "src").mkdir()
    path = _sample(tmp_path / "src").save()
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST_NAME).write_bytes(path.read_bytes())
    with Manifest.load(run) as mine:
        mine.update_image("pmid:1/fig1", label="metastasis")  # makes the store
        assert (run / "run.sqlite").is_file()
        assert not mine.changed_by_others()
        with Manifest.load(run) as other:
            assert other.images["pmid:1/fig1"].label == "metastasis"
            other.update_image("pmid:1/fig1", label="not_usable")
        assert mine.changed_by_others()
