"""The run store behind Manifest: migration, export, field-level merges, claims, schema growth."""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from histocore.io import atomic_write_bytes
from histocore.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Image,
    Manifest,
    ManifestError,
    Record,
)
from histocore.store import STORE_NAME, RenameRefused, RunStore, dumps

V1 = Path(__file__).parent / "data" / "manifest_v1.jsonl"


def _v1_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(V1, run / MANIFEST_NAME)
    return run


def _defaults(cls: type) -> dict:
    return {f.name: None if f.default is MISSING else f.default for f in fields(cls)}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_version_1_manifest_is_migrated_on_first_use(tmp_path: Path) -> None:
    """A v1 file written by the code before the store: same rows after migration, the
    file untouched until the next save, then written as version 2 with the new field."""
    run = _v1_run(tmp_path)
    m = Manifest.load(run)
    assert sorted(p.name for p in run.iterdir()) == [MANIFEST_NAME]  # reading writes nothing
    assert (run / MANIFEST_NAME).read_bytes() == V1.read_bytes()
    old = _rows(V1)
    assert [r["id"] for r in old[1:]] == [r["id"] for r in m.rows()]
    assert sum(r["kind"] == "record" for r in old) == len(m.records) == 3
    assert m.header_extra["filter_thresholds"] == old[0]["filter_thresholds"]
    labelled = [i for i in m.images.values() if i.label == "metastasis"]
    assert len(labelled) == 1
    failed = [r for r in m.records.values() if r.status == "failed"]
    assert len(failed) == 1 and failed[0].transient is None  # v1 knew no transient failures

    m.save()  # the first write creates the store from the v1 rows
    assert (run / STORE_NAME).is_file()
    new = _rows(run / MANIFEST_NAME)
    assert new[0]["version"] == SCHEMA_VERSION == 2
    defaults = {"record": _defaults(Record), "image": _defaults(Image)}
    for before, after in zip(old[1:], new[1:], strict=True):
        if before["kind"] == "record":
            assert after["transient"] is None
        assert {k: after[k] for k in before} == before  # every v1 value kept
        added = set(after) - set(before)  # fields v1 did not have: their defaults
        assert {k: after[k] for k in added} == {k: defaults[before["kind"]][k] for k in added}
    again = Manifest.load(run)  # from the store now, same rows
    assert list(again.rows()) == list(m.rows())


def test_export_is_byte_stable_and_ordered(tmp_path: Path) -> None:
    run = _v1_run(tmp_path)
    first = Manifest.load(run).save().read_bytes()
    Manifest.load(run).save()
    assert (run / MANIFEST_NAME).read_bytes() == first
    m = Manifest.load(run)
    m.add_image(Image(id="orphan/x", record_id="gone", path="x.png", sha256="0", width=1, height=1))
    m.add_record(Record(id="pmid:9"))
    m.add_image(Image(id="pmid:9/pkg", record_id="pmid:9", path="p.png", sha256="1", width=1,
                      height=1, source="package"))  # fmt: skip
    m.add_image(Image(id="pmid:9/p002", record_id="pmid:9", path="q.png", sha256="2", width=1,
                      height=1, page=2))  # fmt: skip
    ids = [r["id"] for r in _rows(m.save())[1:]]
    assert ids[-4:] == ["pmid:9", "pmid:9/p002", "pmid:9/pkg", "orphan/x"]
    assert ids == [r["id"] for r in m.rows()]


def test_two_writers_keep_each_others_fields(tmp_path: Path) -> None:
    """A labeller and a filter holding the same run in memory change different fields of one
    image: both changes survive, whatever order they commit in."""
    run = _v1_run(tmp_path)
    labeller, filterer = Manifest.load(run), Manifest.load(run)
    image_id = next(iter(labeller.images))
    labeller.update_image(image_id, label="not_usable")
    filterer.images[image_id].kept = False
    filterer.images[image_id].filter_reason = "test"
    filterer.header_extra["note"] = "x"
    filterer.save()
    assert filterer.images[image_id].label == "not_usable"  # took the other writer's value
    img = Manifest.load(run).images[image_id]
    assert (img.label, img.kept, img.filter_reason) == ("not_usable", False, "test")
    assert Manifest.load(run).header_extra["note"] == "x"


def test_rows_added_by_two_writers_are_kept_once(tmp_path: Path) -> None:
    a, b = Manifest.load(tmp_path, create=True), Manifest.load(tmp_path, create=True)
    a.add_record(Record(id="r1", stage="extracted"))
    a.save()
    b.add_record(Record(id="r1"))  # added again by a writer that had not seen it: a's stands
    b.add_record(Record(id="r2"))
    b.save()
    got = Manifest.load(tmp_path)
    assert list(got.records) == ["r1", "r2"] and got.records["r1"].stage == "extracted"
    assert b.records["r1"].stage == "extracted"


def test_commit_record_replaces_that_records_images_only(tmp_path: Path) -> None:
    m = Manifest.load(tmp_path, create=True)
    for rid in ("a", "b"):
        m.add_record(Record(id=rid))
        for n in range(3):
            m.add_image(Image(id=f"{rid}/{n}", record_id=rid, path="x", sha256="s", width=1,
                              height=1, page=n))  # fmt: skip
    m.save()
    m.drop_images_of("a")
    m.add_image(Image(id="a/new", record_id="a", path="y", sha256="t", width=2, height=2))
    m.records["a"].stage = "downloaded"
    m.drop_images_of("b")  # not committed: only record a is
    m.commit_record("a")
    got = Manifest.load(tmp_path)
    assert [i.id for i in got.images_of("a")] == ["a/new"]
    assert len(got.images_of("b")) == 3 and got.records["a"].stage == "downloaded"


def test_new_and_unknown_fields_need_no_store_migration(tmp_path: Path) -> None:
    """Rows written before a field existed load with its default; fields this code does not
    know (a newer writer's) are kept in extra, and exports write the current fields."""
    store = RunStore(tmp_path, create=True)
    old = {"id": "r1", "kind": "record", "stage": "searched", "status": "ok"}  # no new fields
    newer = {"id": "r1/i", "kind": "image", "record_id": "r1", "path": "p", "sha256": "s",
             "width": 1, "height": 1, "panel_of": "fig1"}  # fmt: skip
    with store.write() as db:
        db.execute("INSERT INTO records (id, stage, status, data) VALUES ('r1', 'searched',"
                   " 'ok', ?)", (dumps(old),))  # fmt: skip
        db.execute("INSERT INTO images (id, record_id, data) VALUES ('r1/i', 'r1', ?)",
                   (dumps(newer),))  # fmt: skip
    store.close()
    m = Manifest.load(tmp_path)
    assert m.records["r1"].transient is None and m.records["r1"].pmcid is None
    assert m.images["r1/i"].extra == {"panel_of": "fig1"}
    rows = _rows(m.export())
    assert set(rows[1]) == {f for f in Record.__dataclass_fields__}
    assert rows[2]["extra"] == {"panel_of": "fig1"} and "panel_of" not in rows[2]


def test_jsonl_edited_by_hand_is_imported_and_bad_edits_named(tmp_path: Path) -> None:
    run = _v1_run(tmp_path)
    path = Manifest.load(run).save()
    rows = _rows(path)
    rows[1]["title"] = "edited by hand"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert next(iter(Manifest.load(run).records.values())).title == "edited by hand"
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ManifestError, match=rf"{MANIFEST_NAME}:{len(rows) + 1}: not valid JSON"):
        Manifest.load(run)


def test_store_ahead_of_its_export_is_not_overwritten(tmp_path: Path) -> None:
    """Per-record commits land in the store before the stage's export: loading must not
    take the older JSONL for an edit."""
    run = _v1_run(tmp_path)
    m = Manifest.load(run)
    m.save()
    rid = next(iter(m.records))
    m.records[rid].title = "newer"
    m.commit_record(rid)
    assert Manifest.load(run).records[rid].title == "newer"


def test_claims_keep_a_record_to_one_live_process(tmp_path: Path) -> None:
    m = Manifest.load(tmp_path, create=True)
    m.add_record(Record(id="r", stage="downloaded"))
    m.save()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with sqlite3.connect(tmp_path / STORE_NAME) as db:
            db.execute("INSERT INTO claims VALUES ('r', 'extracted', 'x', ?, ?, 0)",
                       (__import__("socket").gethostname(), other.pid))  # fmt: skip
        assert not Manifest.load(tmp_path).claim("r", "extracted")
    finally:
        other.kill()
        other.wait()
    again = Manifest.load(tmp_path)
    assert again.claim("r", "extracted")  # the holder is dead: taken over
    again.records["r"].stage = "extracted"
    again.commit_record("r")
    assert RunStore(tmp_path).count("claims") == 0


def test_not_a_store_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / STORE_NAME).write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ManifestError, match=f"{STORE_NAME}: not a usable run store"):
        Manifest.load(tmp_path)


def test_another_programs_database_is_refused_untouched(tmp_path: Path) -> None:
    """A ``run.sqlite`` that is another program's database got our tables added (and its
    journal switched to WAL), and ``status`` reported an empty run, exit 0."""
    run = tmp_path / "run"
    run.mkdir()
    db = sqlite3.connect(run / "run.sqlite")
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("INSERT INTO users VALUES ('ann')")
    db.commit()
    db.close()
    before = (run / "run.sqlite").read_bytes()
    with pytest.raises(ManifestError, match=r"run\.sqlite: an SQLite database of another program"):
        Manifest.load(run)
    assert (run / "run.sqlite").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["run.sqlite"]


def _store_with(path: Path, rid: str) -> bytes:
    """A run store at ``path`` holding record ``rid`` (closed); its bytes."""
    with Manifest.load(path.parent, create=True) as m:
        m.add_record(Record(id=rid, stage="searched"))
        m.save()
    return path.read_bytes()


def _write_to(run: Path) -> None:
    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id="pmid:666", stage="searched"))
        m.save()


@pytest.mark.parametrize("how", ["symlink", "dangling symlink", "hard link"])
def test_a_store_that_is_a_link_is_refused_untouched(tmp_path: Path, how: str) -> None:
    """A run folder from elsewhere whose ``run.sqlite`` was a symbolic link had every
    commit written through it to the file it named (any file of the user's; a dangling
    link created one outside the run folder), and one that was a hard link to another
    run's store (a ``cp -al`` copy) changed that run's rows. Both are refused as the store
    is opened, one line, the other file untouched. The new test fails on main."""
    other, run = tmp_path / "other" / STORE_NAME, tmp_path / "run"
    run.mkdir()
    before = _store_with(other, "pmid:1") if how != "dangling symlink" else None
    if how == "hard link":
        os.link(other, run / STORE_NAME)
    else:
        (run / STORE_NAME).symlink_to(other)
    said = "a symbolic link to " if "symlink" in how else "has 1 other name"
    with pytest.raises(ManifestError, match=f"{STORE_NAME}: {said}") as caught:
        _write_to(run)
    assert "\n" not in str(caught.value) and "not opened" in str(caught.value)
    if before is None:
        assert not other.exists() and not other.parent.exists()
    else:
        assert other.read_bytes() == before
        assert sorted(p.name for p in other.parent.iterdir()) == [MANIFEST_NAME, STORE_NAME]


@pytest.mark.parametrize("side", ["wal", "shm", "journal"])
def test_a_side_file_of_the_store_that_is_a_link_is_refused(tmp_path: Path, side: str) -> None:
    """SQLite writes ``run.sqlite-wal`` (and ``-shm``, ``-journal``) through their names as
    well: a hostile run folder's ``-wal`` linked to another file had the run's commits
    written there. The new test fails on main."""
    run = tmp_path / "run"
    _store_with(run / STORE_NAME, "pmid:1")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"the user's file")
    (run / f"{STORE_NAME}-{side}").symlink_to(outside)
    with pytest.raises(ManifestError, match=f"{STORE_NAME}-{side}: a symbolic link to "):
        _write_to(run)
    assert outside.read_bytes() == b"the user's file"
    (run / f"{STORE_NAME}-{side}").unlink()
    os.link(outside, run / f"{STORE_NAME}-{side}")
    with pytest.raises(ManifestError, match=f"{STORE_NAME}-{side}: has 1 other name"):
        _write_to(run)
    assert outside.read_bytes() == b"the user's file"


def test_a_store_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO named ``run.sqlite`` beside a ``manifest.jsonl`` was passed over as no store,
    and the first commit opened it: SQLite waited for a writer for ever. The new test
    fails on main."""
    run = tmp_path / "run"
    _store_with(run / STORE_NAME, "pmid:1")
    (run / STORE_NAME).unlink()
    os.mkfifo(run / STORE_NAME)
    with pytest.raises(ManifestError, match=f"{STORE_NAME}: not a regular file; not opened"):
        Manifest.load(run)


def test_new_store_waits_for_a_writer_holding_its_lock(tmp_path: Path) -> None:
    """Another process creating the same store holds its write lock while it switches the
    journal to WAL; our own switch answered "database is locked" at once instead of
    waiting like every other statement."""
    run = tmp_path / "run"
    run.mkdir()
    other = sqlite3.connect(run / STORE_NAME, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, other.execute, args=("COMMIT",)).start()
    began = time.monotonic()
    store = RunStore(run, create=True)
    assert time.monotonic() - began >= 0.4
    assert store.meta("format") == "histofetch.runstore"
    assert store.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()
    other.close()


def _open_new_store_in_step(
    root: Path, rounds: int, start: Barrier, errors: Queue[str | None]
) -> None:
    """One of the processes of the test below: opens ``root/<round>`` when all do."""
    for i in range(rounds):
        start.wait()
        try:
            RunStore(root / str(i), create=True).close()
        except ManifestError as exc:
            errors.put(str(exc))
    errors.put(None)


def test_processes_creating_one_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Switching a new store's journal to WAL returns "database is locked" at once (no
    busy wait) while another process holds its write lock: 6 processes creating one
    store at the same instant, 40 times, saw 5-14 of 240 opens refused."""
    procs, rounds = 8, 40
    ctx = multiprocessing.get_context("spawn")
    start, errors = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=_open_new_store_in_step, args=(tmp_path, rounds, start, errors))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    refused, done = [], 0
    while done < procs:
        message = errors.get(timeout=120)
        if message is None:
            done += 1
        else:
            refused.append(message)
    for w in workers:
        w.join(timeout=30)
    assert refused == []
    assert [w.exitcode for w in workers] == [0] * procs
    for i in range(rounds):  # each is a complete store
        store = RunStore(tmp_path / str(i))
        assert store.meta("format") == "histofetch.runstore"
        store.close()


def test_a_rename_another_process_made_first_is_taken_as_done(tmp_path: Path) -> None:
    """Two processes rename the same record (two searches of one run): the second found the
    row gone and refused with 'record pmid:0 is not in the run store', a warning about a
    rename that had happened; it now takes the renamed row, in its place."""
    with Manifest.load(tmp_path, create=True) as m:
        m.add_record(Record(id="pmid:0", pmid="0", pmcid="PMC5", stage="searched"))
        m.add_record(Record(id="pmid:9", pmid="9", stage="searched"))
        m.save()
    with Manifest.load(tmp_path) as first, Manifest.load(tmp_path) as second:
        first.rename_record("pmid:0", "pmcid:PMC5", pmid=None)
        rec = second.rename_record("pmid:0", "pmcid:PMC5", pmid=None)
        assert list(second.records) == ["pmcid:PMC5", "pmid:9"] and rec.pmid is None
        with pytest.raises(RenameRefused, match="pmcid:PMC5 is in the run already"):
            second.rename_record("pmid:9", "pmcid:PMC5", pmid=None)
    with Manifest.load(tmp_path) as m:
        assert list(m.records) == ["pmcid:PMC5", "pmid:9"]


def test_a_rename_renames_the_records_pdf_with_it(tmp_path: Path) -> None:
    """'pmid:0' renamed 'pmcid:PMC5' kept its PDF as 'pdfs/pmid_0.pdf': the file no longer
    said whose it was, and a merge of a shard with its own 'pmid:0' pointed that record at
    it. Now the PDF is renamed with the record (linked before the row's commit, the old name
    removed after); it keeps its name where another file has the new one or another row
    names it, and a PDF outside pdfs/ (a local file) is left alone."""
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    (pdfs / "pmid_0.pdf").write_bytes(b"%PDF PMC5")
    (pdfs / "pmid_1.pdf").write_bytes(b"%PDF PMC6")
    (pdfs / "pmid_88.pdf").write_bytes(b"another file")
    with Manifest.load(tmp_path, create=True) as m:
        m.add_record(Record(id="pmid:0", pmid="0", pmcid="PMC5", pdf_path="pdfs/pmid_0.pdf"))
        m.add_record(Record(id="pmid:1", pmcid="PMC6", pdf_path="pdfs/pmid_1.pdf"))
        m.add_record(Record(id="pmid:2", pmcid="PMC7", pdf_path="/elsewhere/pmid_2.pdf"))
        m.add_record(Record(id="pmid:3", pmcid="PMC8", pdf_path="pdfs/pmid_3.pdf"))
        m.add_record(Record(id="pmid:4", pmcid="PMC8", pdf_path="pdfs/pmid_3.pdf"))
        m.save()
    (pdfs / "pmid_3.pdf").write_bytes(b"%PDF PMC8")
    with Manifest.load(tmp_path) as m:
        assert m.rename_record("pmid:0", "pmcid:PMC5").pdf_path == "pdfs/pmcid_PMC5.pdf"
        assert m.rename_record("pmcid:PMC5", "pmid:88").pdf_path == "pdfs/pmcid_PMC5.pdf"
        assert m.rename_record("pmid:2", "pmcid:PMC7").pdf_path == "/elsewhere/pmid_2.pdf"
        assert m.rename_record("pmid:3", "pmcid:PMC8").pdf_path == "pdfs/pmid_3.pdf"
    assert (pdfs / "pmcid_PMC5.pdf").read_bytes() == b"%PDF PMC5"
    assert (pdfs / "pmid_88.pdf").read_bytes() == b"another file"
    assert sorted(p.name for p in pdfs.iterdir()) == [
        "pmcid_PMC5.pdf",
        "pmid_1.pdf",
        "pmid_3.pdf",
        "pmid_88.pdf",
    ]
    with Manifest.load(tmp_path) as m:
        assert m.records["pmid:88"].pdf_path == "pdfs/pmcid_PMC5.pdf"
        assert m.records["pmcid:PMC8"].pdf_path == m.records["pmid:4"].pdf_path


@contextmanager
def _at_line(func: Callable[..., object], line: str, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` as ``func`` reaches its (first) source line ``line``: a Ctrl-C, or
    another process's write, at that exact point (sys.settrace; what ``action`` raises is
    raised there)."""
    code = func.__code__  # type: ignore[attr-defined]
    source, start = inspect.getsourcelines(func)
    lineno = start + next(i for i, text in enumerate(source) if text.strip() == line)

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and frame.f_lineno == lineno:
            action()
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code is code else None

    before = sys.gettrace()
    sys.settrace(calls)
    try:
        yield
    finally:
        sys.settrace(before)


def _run_with_pmid_0(run: Path) -> Path:
    """A run whose 'pmid:0' (the article PMC5) has its PDF as 'pdfs/pmid_0.pdf'."""
    pdfs = run / "pdfs"
    pdfs.mkdir()
    (pdfs / "pmid_0.pdf").write_bytes(b"%PDF PMC5")
    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id="pmid:0", pmid="0", pmcid="PMC5", pdf_path="pdfs/pmid_0.pdf"))
        m.save()
    return pdfs


def test_a_rename_interrupted_after_its_commit_keeps_the_file_its_row_names(
    tmp_path: Path,
) -> None:
    """A Ctrl-C arriving just after the rename's COMMIT removed the new name as if the
    transaction had failed: the committed row named 'pdfs/pmcid_PMC5.pdf', which no longer
    existed. Now the new name is removed only when no row names it (the old one then)."""
    pdfs = _run_with_pmid_0(tmp_path)

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    at_commit = _at_line(RunStore._rename_row, "return text", ctrl_c)
    with Manifest.load(tmp_path) as m, at_commit, pytest.raises(KeyboardInterrupt):
        m.rename_record("pmid:0", "pmcid:PMC5")
    with Manifest.load(tmp_path) as m:
        rec = m.records["pmcid:PMC5"]
    assert rec.pdf_path == "pdfs/pmcid_PMC5.pdf"
    assert (tmp_path / rec.pdf_path).read_bytes() == b"%PDF PMC5"
    assert sorted(p.name for p in pdfs.iterdir()) == ["pmcid_PMC5.pdf"]


def test_a_rename_whose_commit_fails_keeps_the_file_its_row_names(tmp_path: Path) -> None:
    """A COMMIT that fails (SQLITE_BUSY: a journal that is not WAL, as on a network file
    system, and a reader holding its snapshot) left the transaction open, so the same
    connection saw its own uncommitted row, took the rename as done and removed the old
    name; the rollback then left the row naming 'pdfs/pmid_0.pdf', gone. Now the failed
    transaction is rolled back first: the row and its file stay as they were."""
    pdfs = _run_with_pmid_0(tmp_path)
    store = RunStore(tmp_path)
    assert store.db.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    store.db.execute("PRAGMA busy_timeout=200")
    reader = sqlite3.connect(tmp_path / STORE_NAME, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM records").fetchone()  # its shared lock held
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.rename_record("pmid:0", "pmcid:PMC5", {})
    assert not store.db.in_transaction
    reader.execute("COMMIT")
    reader.close()
    store.close()
    with Manifest.load(tmp_path) as m:
        rec = m.records["pmid:0"]
    assert (tmp_path / str(rec.pdf_path)).read_bytes() == b"%PDF PMC5"
    assert sorted(p.name for p in pdfs.iterdir()) == ["pmid_0.pdf"]


def test_a_write_that_fills_the_store_says_so(tmp_path: Path) -> None:
    """SQLite rolls a transaction back itself when the database is full: write() then ran a
    ROLLBACK that raised 'cannot rollback - no transaction is active' in place of the real
    error, so a full disk read as a bug (review 5)."""
    store = RunStore(tmp_path, create=True)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages + 2}")
    with pytest.raises(sqlite3.OperationalError, match="full"), store.write() as db:
        db.execute("CREATE TABLE filler (x)")
        for _ in range(200):
            db.execute("INSERT INTO filler VALUES (?)", ("x" * 4000,))
    assert not store.db.in_transaction
    store.close()


def test_a_rename_killed_before_its_commit_is_done_by_the_next(tmp_path: Path) -> None:
    """A rename killed between linking the PDF's new name and its COMMIT left both names
    and the row naming the old one; the next rename found the new name taken and kept
    'pdfs/pmid_0.pdf' for good (a later 'pmid:0' download overwrote it). Now a new name
    that is the same file and that no row names is taken; one a row names is not."""
    pdfs = _run_with_pmid_0(tmp_path)
    os.link(pdfs / "pmid_0.pdf", pdfs / "pmcid_PMC5.pdf")  # what the killed rename left
    (pdfs / "pmid_1.pdf").write_bytes(b"%PDF PMC6")
    os.link(pdfs / "pmid_1.pdf", pdfs / "pmcid_PMC6.pdf")
    with Manifest.load(tmp_path) as m:
        m.add_record(Record(id="pmid:1", pmcid="PMC6", pdf_path="pdfs/pmid_1.pdf"))
        m.add_record(Record(id="pmid:2", pmcid="PMC7", pdf_path="pdfs/pmcid_PMC6.pdf"))
        m.save()
        assert m.rename_record("pmid:0", "pmcid:PMC5").pdf_path == "pdfs/pmcid_PMC5.pdf"
        assert m.rename_record("pmid:1", "pmcid:PMC6").pdf_path == "pdfs/pmid_1.pdf"
    assert sorted(p.name for p in pdfs.iterdir()) == [
        "pmcid_PMC5.pdf",
        "pmcid_PMC6.pdf",
        "pmid_1.pdf",
    ]
    assert (pdfs / "pmcid_PMC5.pdf").read_bytes() == b"%PDF PMC5"


def test_a_rename_never_removes_a_file_written_under_the_old_name_meanwhile(
    tmp_path: Path,
) -> None:
    """The old name was removed after the commit whatever it then held: a PDF a download
    of a new 'pmid:0' wrote there between the rename's COMMIT and that unlink was lost.
    Now the old name is removed only while it is still the renamed record's file."""
    pdfs = _run_with_pmid_0(tmp_path)

    def download() -> None:
        atomic_write_bytes(pdfs / "pmid_0.pdf", b"%PDF PMC9")

    with Manifest.load(tmp_path) as m, _at_line(RunStore._rename_row, "return text", download):
        assert m.rename_record("pmid:0", "pmcid:PMC5").pdf_path == "pdfs/pmcid_PMC5.pdf"
    assert (pdfs / "pmcid_PMC5.pdf").read_bytes() == b"%PDF PMC5"
    assert (pdfs / "pmid_0.pdf").read_bytes() == b"%PDF PMC9"


def _claimed_by_a_dead_process(run: Path, record_id: str) -> None:
    """A stage attempt that claimed ``record_id`` and was killed before it committed."""
    code = (
        "import os\n"
        "from histocore.manifest import Manifest\n"
        f"m = Manifest.load({str(run)!r})\n"
        f"assert m.claim({record_id!r}, 'extracted')\n"
        "os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9


def test_an_unfinished_attempt_or_its_files_refuse_a_rename(tmp_path: Path) -> None:
    """A dead process's claim counts the record's unfinished attempts (a PDF that kills
    MuPDF fails it after MAX_UNFINISHED_ATTEMPTS): the rename deleted it, giving the PDF one
    attempt more, and left the PNGs that attempt wrote in images/pmid_0/ behind. Both now
    refuse the rename, like image rows, and nothing changes."""
    with Manifest.load(tmp_path, create=True) as m:
        m.add_record(Record(id="pmid:0", pmid="0", pmcid="PMC5", stage="downloaded"))
        m.save()
    _claimed_by_a_dead_process(tmp_path, "pmid:0")
    with Manifest.load(tmp_path) as m:
        with pytest.raises(RenameRefused, match=r"unfinished attempt .* counted on pmid:0"):
            m.rename_record("pmid:0", "pmcid:PMC5", pmid=None)
        assert list(m.records) == ["pmid:0"]
    store = RunStore(tmp_path)
    assert store.abandoned_claims("pmid:0") == [("pmid:0", "extracted")]
    store.db.execute("DELETE FROM claims")  # the attempt's claim gone (released), its files not
    store.db.commit()
    store.close()
    (tmp_path / "images" / "pmid_0").mkdir(parents=True)
    (tmp_path / "images" / "pmid_0" / "page001_img01.png").write_bytes(b"half")
    with (
        Manifest.load(tmp_path) as m,
        pytest.raises(RenameRefused, match=r"images/pmid_0/ are named by pmid:0"),
    ):
        m.rename_record("pmid:0", "pmcid:PMC5", pmid=None)
    with Manifest.load(tmp_path) as m:
        assert list(m.records) == ["pmid:0"]


def test_a_rename_to_another_id_first_says_where_the_record_went(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Search A renamed 'pmid:0' to 'pmcid:PMC5'; search B, which read the run before, then
    tried 'pmid:0' -> 'pmid:77' and warned 'record pmid:0 is pmid:77 now, but keeps its id:
    record pmid:0 is not in the run store' (it had been renamed). It now names the record's
    id now, following the renames; a record of another PMID is left as it is (no warning:
    the hit is a record of its own, as after the two searches one after the other), and
    search B holds it under its id now (it held 'pmid:0', gone from the store)."""
    from histofetch.search import _adopt

    caplog.set_level("INFO", logger="histofetch.search")

    with Manifest.load(tmp_path, create=True) as m:
        m.add_record(Record(id="pmid:0", pmid="0", pmcid="PMC5", stage="searched"))
        m.save()
    with Manifest.load(tmp_path) as first, Manifest.load(tmp_path) as second:
        first.rename_record("pmid:0", "pmcid:PMC5", pmid=None)
        first.rename_record("pmcid:PMC5", "pmid:88", pmid="88")
        with pytest.raises(RenameRefused, match="pmid:0 was renamed pmid:88 already") as caught:
            second.rename_record("pmid:0", "pmid:77", pmid="77")
        assert caught.value.renamed == "pmid:88"
        assert list(second.records) == ["pmid:88"] and second.records["pmid:88"].pmid == "88"
        caplog.clear()
        assert _adopt(second, "pmid:0", "pmid:77", "77") == "pmid:88"
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "pmid:" in r.getMessage()]
    assert len(said) == 1 and said[0][0] == "INFO" and "keeps its id" not in said[0][1], said
    assert "is pmid:88 now" in said[0][1] and "not in the run store" not in said[0][1], said


def test_a_stale_commit_names_the_record_once(tmp_path: Path) -> None:
    """A commit of a row renamed since it was read said 'run.sqlite: record pmid:0: record
    pmid:0 is now pmcid:PMC5 …', the record named twice."""
    with Manifest.load(tmp_path, create=True) as m:
        m.add_record(Record(id="pmid:0", pmid="0", pmcid="PMC5", stage="searched"))
        m.save()
    with Manifest.load(tmp_path) as first, Manifest.load(tmp_path) as second:
        first.rename_record("pmid:0", "pmcid:PMC5", pmid=None)
        second.records["pmid:0"].stage = "downloaded"
        with pytest.raises(ManifestError) as caught:
            second.commit()
    message = str(caught.value)
    assert message.count("pmid:0") == 1 and "record pmid:0 is now pmcid:PMC5" in message, message


def test_a_stale_process_names_the_id_a_chain_of_renames_ends_at(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """'pmid:0' renamed 'pmcid:PMC5' (a --db pmc search), then 'pmid:88' (a PubMed search):
    a process that read the run before warned 'record pmid:0 is now pmcid:PMC5' on claim and
    refused its commit the same way, one hop of the chain, though the run holds only
    'pmid:88'. Both now follow the renames to the id the record has."""
    with Manifest.load(tmp_path, create=True) as m:
        m.add_record(Record(id="pmid:0", pmid="0", pmcid="PMC5", stage="searched"))
        m.save()
    with (
        Manifest.load(tmp_path) as first,
        Manifest.load(tmp_path) as stale,
        Manifest.load(tmp_path) as other,
    ):
        first.rename_record("pmid:0", "pmcid:PMC5", pmid=None)
        first.rename_record("pmcid:PMC5", "pmid:88", pmid="88")
        assert not stale.claim("pmid:0", "downloaded")
        warned = [r.getMessage() for r in caplog.records if "pmid:0" in r.getMessage()]
        assert len(warned) == 1 and "record pmid:0 is now pmid:88" in warned[0], warned
        other.records["pmid:0"].stage = "downloaded"
        with pytest.raises(ManifestError) as caught:
            other.commit()
    message = str(caught.value)
    assert "record pmid:0 is now pmid:88" in message and "PMC5" not in message, message
    with Manifest.load(tmp_path) as m:
        assert list(m.records) == ["pmid:88"]


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("query", 5, "header 'query' is 5, expected text"),
        ("queries", 5, "header 'queries' is 5, expected a list of text"),
        ("queries", "abc", "header 'queries' is 'abc', expected a list of text"),
        ("merged_from", [1], "header 'merged_from' is [1], expected a list of text"),
        ("last_search", 5, "header 'last_search' is 5, expected an object"),
        ("filter_sheets", "false", "header 'filter_sheets' is 'false', expected true or false"),
        ("filter_sheets", 0, "header 'filter_sheets' is 0, expected true or false"),
        # a long one is cut as other quoted values are, and says so (cut bare at 80)
        ("queries", "q" * 300, f"header 'queries' is '{'q' * 199}…, expected a list of text"),
    ],
)
@pytest.mark.parametrize("edited", ["store", "export"])
def test_a_header_key_of_the_wrong_shape_is_one_error_as_the_run_is_read(
    tmp_path: Path, edited: str, key: str, value: object, said: str
) -> None:
    """Header keys the tools read back: a hand-edited 'queries': 5 was a TypeError traceback
    in search and merge ('abc' three one-letter queries), 'last_search': 5 an AttributeError
    in `histofetch run`. Now the read itself refuses, naming the file, in either format."""
    run = _v1_run(tmp_path)
    path = Manifest.load(run).save()
    if edited == "store":
        with sqlite3.connect(run / STORE_NAME) as db:
            db.execute("INSERT OR REPLACE INTO header VALUES (?, ?)", (key, json.dumps(value)))
        db.close()
        where = str(run / STORE_NAME)
    else:
        rows = _rows(path)
        rows[0][key] = value
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        where = f"{path}:1"
    with pytest.raises(ManifestError) as caught:
        Manifest.load(run)
    assert str(caught.value) == f"{where}: {said}"
