"""The run store: ``RUN/run.sqlite``, where every writer of a run folder commits its rows.

One SQLite database per run folder (standard library ``sqlite3``, WAL journal, a long busy
timeout, short ``BEGIN IMMEDIATE`` transactions), so any number of processes can read and
write one run at once: histofetch stages, the review page, ``histomodels label``.

Tables (schema documented in docs/manifest.md):

* ``header(key, value)``: the manifest header (``query`` and every other header key), JSON values;
* ``records(seq, id, stage, status, failed_stage, pmid, pmcid, data)`` and
  ``images(id, record_id, sha256, source, page, status, kept, label, data)``: ``data`` is the
  whole row as JSON (exactly the line the JSONL export holds), the other columns are indexed
  copies of the keys queries need. New dataclass fields therefore need no migration: they
  live in ``data``; only a key that must be *queried* needs a column.
* ``claims(record_id, stage, owner, host, pid, since)``: which process works on a record now;
* ``store_meta(key, value)``: the store's own format version and the fingerprint of the
  last ``manifest.jsonl`` written from it.

This module knows rows as dicts only; :mod:`histocore.manifest` maps them to dataclasses.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from histocore.errors import ManifestError
from histocore.io import NotJSON, loads_json, record_slug

STORE_NAME = "run.sqlite"
STORE_FORMAT = "histofetch.runstore"
STORE_VERSION = 1
#: Seconds a writer waits for another's transaction before "database is locked".
BUSY_TIMEOUT_S = 120.0
#: A claim by a process on another host counts as abandoned after this many seconds.
CLAIM_LEASE_S = 3600.0

#: ``store_meta`` key prefix: ``renamed:<old id>`` holds the id a record was renamed to
#: (:meth:`RunStore.rename_record`), so a process that read the old row cannot write it back.
RENAMED = "renamed:"
#: ``store_meta`` key prefix: ``rename_refused:<old id>`` holds ``<new id>: <why>`` of the
#: last refused rename of that record, so a later search that meets the same refusal can say
#: it was said before (:attr:`RenameRefused.repeated`); a rename that goes through drops it.
RENAME_REFUSED = "rename_refused:"

#: The files SQLite keeps beside ``run.sqlite`` (WAL, its index, a rollback journal): it
#: writes each through its name, as it writes the store.
SIDE_FILES = tuple(f"{STORE_NAME}-{end}" for end in ("wal", "shm", "journal"))

RECORD_COLUMNS = ("stage", "status", "failed_stage", "pmid", "pmcid")
IMAGE_COLUMNS = ("record_id", "sha256", "source", "page", "status", "kept", "label")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS header (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE, stage TEXT, status TEXT, failed_stage TEXT, pmid TEXT,"
    " pmcid TEXT, data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS records_stage ON records(stage, status)",
    "CREATE INDEX IF NOT EXISTS records_pmcid ON records(pmcid)",
    "CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, record_id TEXT NOT NULL,"
    " sha256 TEXT, source TEXT, page INTEGER, status TEXT, kept INTEGER, label TEXT,"
    " data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS images_record ON images(record_id)",
    "CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256)",
    "CREATE TABLE IF NOT EXISTS claims (record_id TEXT PRIMARY KEY, stage TEXT,"
    " owner TEXT NOT NULL, host TEXT, pid INTEGER, since REAL)",
)

#: The columns each table of a run store has (from :data:`_SCHEMA`): a hand-edited or
#: foreign store lacking one is refused when opened, not by a query's traceback later.
_COLUMNS = {
    "store_meta": ("key", "value"),
    "header": ("key", "value"),
    "records": ("seq", "id", *RECORD_COLUMNS, "data"),
    "images": ("id", *IMAGE_COLUMNS, "data"),
    "claims": ("record_id", "stage", "owner", "host", "pid", "since"),
}

#: Export order: records as added, each followed by its images (PDF images by page, then
#: the others), images whose record is missing last.
_IMAGES_IN_ORDER = (
    "SELECT i.id, i.data FROM images i LEFT JOIN records r ON r.id = i.record_id"
    " ORDER BY r.seq IS NULL, r.seq, i.record_id, i.source IS NOT 'pdf',"
    " COALESCE(i.page, 0), i.id"
)


def dumps(row: dict[str, Any]) -> str:
    """A row as stored and exported: compact key-sorted JSON (one JSONL line)."""
    return json.dumps(row, sort_keys=True)


def _column(value: Any) -> Any:
    """An indexed copy of a row value, as SQLite can bind it."""
    if value is None or isinstance(value, (str, int, float)):
        return value  # bool is an int
    return json.dumps(value, sort_keys=True)


@dataclass
class Change:
    """One row to write: the full row; or, with ``patch``, only the fields this writer
    changed, merged onto the stored row (concurrent writers of other fields keep theirs);
    or, with ``new``, a row this writer added, inserted only if no other writer did first."""

    row: dict[str, Any]
    patch: dict[str, Any] | None = None
    new: bool = False
    #: ``row`` serialised (saves a second ``dumps``), and the stored text ``patch`` was
    #: taken against: when the store still holds that text nobody else changed the row.
    text: str | None = None
    base: str | None = None


@dataclass
class Delta:
    """Everything one transaction writes."""

    header_set: dict[str, Any] = field(default_factory=dict)
    header_del: set[str] = field(default_factory=set)
    records: list[Change] = field(default_factory=list)
    images: list[Change] = field(default_factory=list)
    deleted_records: set[str] = field(default_factory=set)
    deleted_images: set[str] = field(default_factory=set)
    #: ``{record id: image ids}``: that record's stored image rows not listed are deleted.
    replace_images_of: dict[str, set[str]] = field(default_factory=dict)
    #: Claims (record ids) this owner gives up in the same transaction.
    release: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return any(
            (self.header_set, self.header_del, self.records, self.images, self.deleted_records)
        ) or bool(self.deleted_images or self.replace_images_of or self.release)


class RenameRefused(ManifestError):
    """:meth:`RunStore.rename_record` did not rename (the message says why)."""

    def __init__(self, message: str, *, renamed: str | None = None) -> None:
        super().__init__(message)
        #: the record's id now, when another process renamed it to another id first
        self.renamed = renamed
        #: the store met this refusal (the same new id and reason) before: said already
        self.repeated = False


@dataclass
class Claim:
    """The answer to :meth:`RunStore.claim`: taken or not, and the record's rows now."""

    taken: bool
    record: str | None
    images: list[tuple[str, str]]
    holder: str | None = None
    #: the record's id now, when it was renamed since this process read it (not taken)
    renamed: str | None = None


class RunStore:
    """An open connection to ``run_dir/run.sqlite`` (created with ``create=True``)."""

    def __init__(self, run_dir: str | Path, *, create: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        self._refuse_links()
        if not create and not self.path.is_file():
            raise ManifestError(f"{self.path}: no run store here")
        if create:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        exists = self.path.is_file()
        self.readonly = exists and not (
            os.access(self.path, os.W_OK) and os.access(self.run_dir, os.W_OK)
        )
        try:
            if self.readonly:
                self._open_readonly()
                return
            self.db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._refuse_foreign()  # before any pragma: WAL mode is written to the file
            self._journal_to_wal()
            # WAL + NORMAL: a commit survives a killed process (kill -9); only a power cut
            # can lose the last commits, never consistency.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._init_schema()
        except BaseException as exc:
            if getattr(self, "db", None) is not None:
                self.db.close()  # no -wal/-shm left behind by a store we refuse
            if isinstance(exc, sqlite3.DatabaseError):
                raise ManifestError(f"{self.path}: not a usable run store ({exc})") from None
            raise

    def _refuse_links(self) -> None:
        """``run.sqlite`` and the files SQLite keeps beside it are written through their
        names, so each must be a regular file of the run folder with no other name. A run
        folder from elsewhere may hold ``run.sqlite`` as a symbolic link to any file of the
        user's (SQLite wrote its pages there; a dangling link created the file outside the
        folder), as a FIFO (opening it hung), or as a hard link to another run's store (a
        ``cp -al`` copy: every commit changed that run too); its ``-wal`` the same. Checked
        before SQLite opens anything, in every mode (a run store read through a link is
        another run's rows, shown or exported as this one's)."""
        for path in (self.path, *(self.run_dir / name for name in SIDE_FILES)):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ManifestError(f"{path}: cannot be read ({exc.strerror})") from None
            if stat.S_ISLNK(st.st_mode):
                try:
                    where = f" to {os.readlink(path)}"
                except OSError:
                    where = ""
                raise ManifestError(
                    f"{path}: a symbolic link{where}, not a file of the run folder (the store "
                    "would be written through it); not opened"
                )
            if not stat.S_ISREG(st.st_mode):
                raise ManifestError(f"{path}: not a regular file; not opened")
            if st.st_nlink > 1:
                raise ManifestError(
                    f"{path}: has {st.st_nlink - 1} other name(s) (a hard link: another run's "
                    "store?); not opened: give it a file of its own (cp it to a new file, mv "
                    "that over it)"
                )

    def _open_readonly(self) -> None:
        """A store in a folder we may not write: read it as an immutable file."""
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.is_file() and wal.stat().st_size:
            raise ManifestError(
                f"{self.path}: read-only run folder with unfinished commits in {wal.name}; "
                "open it once with write access"
            )
        uri = "file:" + quote(str(self.path.resolve())) + "?mode=ro&immutable=1"
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._check_format()

    def _refuse_foreign(self) -> None:
        """Another program's database named ``run.sqlite`` is refused untouched (our
        tables were added to it, and the run read as empty)."""
        tables = [  # one read: another process may be creating our schema right now
            name
            for (name,) in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        if tables and "store_meta" not in tables:  # never add our tables to another's
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise ManifestError(
                f"{self.path}: an SQLite database of another program (tables: {shown}), "
                f"not a {STORE_FORMAT} run store"
            )

    def _journal_to_wal(self) -> None:
        """``PRAGMA journal_mode=WAL``, waiting for other writers as every statement does.

        Switching a new store to WAL upgrades a read transaction to a write one, and SQLite
        answers SQLITE_BUSY at once there instead of calling the busy handler (waiting
        could deadlock): a process opening a new store while another one was switching it
        got "database is locked". Once the file is in WAL mode the switch takes no lock.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = 0.001
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _init_schema(self) -> None:
        have = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='store_meta'"
        ).fetchone()
        if have:
            self._check_format()
            return
        with self.write():
            for statement in _SCHEMA:
                self.db.execute(statement)
            self.db.execute(
                "INSERT OR IGNORE INTO store_meta VALUES ('format', ?), ('version', ?)",
                (STORE_FORMAT, str(STORE_VERSION)),
            )
        self._check_format()

    def _check_format(self) -> None:
        meta = dict(self.db.execute("SELECT key, value FROM store_meta").fetchall())
        if meta.get("format") != STORE_FORMAT:
            raise ManifestError(f"{self.path}: not a {STORE_FORMAT} database")
        version = meta.get("version")
        if not (isinstance(version, str) and version.isascii() and version.isdigit()):
            what = "no version row" if version is None else f"version {version!r} is not a number"
            raise ManifestError(f"{self.path}: not a usable run store ({what})")
        if int(version) > STORE_VERSION:
            raise ManifestError(
                f"{self.path}: run store version {version!r} is newer than this reader "
                f"(reads up to {STORE_VERSION}); upgrade histocore"
            )
        for table, columns in _COLUMNS.items():
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in columns if c not in have]
            if missing:
                what = f"no table {table}" if not have else f"table {table} lacks {missing[0]}"
                raise ManifestError(f"{self.path}: not a usable run store ({what})")

    def close(self) -> None:
        self.db.close()

    def version(self) -> object:
        """What changes when another connection commits to the store, compared by equality:
        ``PRAGMA data_version`` of this connection (its own commits leave it as it is); of a
        store read as an immutable file (:meth:`_open_readonly`: SQLite never looks again)
        the size and time of ``run.sqlite`` and its ``-wal``."""
        if not self.readonly:
            return self.db.execute("PRAGMA data_version").fetchone()[0]
        out = []
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (``BEGIN IMMEDIATE``: waits for other writers)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:  # SQLite may have rolled back itself (SQLITE_FULL): the error
            self._roll_back()  # raised is the one the user sees, not 'cannot rollback'
            raise
        try:
            self.db.execute("COMMIT")
        except BaseException:  # SQLITE_BUSY (a journal that is not WAL), I/O, an interrupt:
            self._roll_back()  # never left open, where this connection sees its own rows
            raise

    def _roll_back(self) -> None:
        """End a transaction left open by a failed COMMIT (nothing to do when none is)."""
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs (WAL readers never block writers)."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    # -- reading -------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        rows = self.db.execute("SELECT key, value FROM header")
        try:
            return {k: loads_json(v) for k, v in rows}
        except NotJSON as exc:  # a store from elsewhere: any text may sit there
            raise ManifestError(f"{self.path}: header: {exc}") from None

    def record_data(self) -> Iterator[tuple[str, str]]:
        """Every record row ``(id, JSON)`` in the order records were first added."""
        yield from self.db.execute("SELECT id, data FROM records ORDER BY seq")

    def image_data(self) -> Iterator[tuple[str, str]]:
        """Every image row ``(id, JSON)`` in export order."""
        yield from self.db.execute(_IMAGES_IN_ORDER)

    def rows_of(self, record_id: str) -> tuple[str | None, list[tuple[str, str]]]:
        """One record's row and its image rows ``(id, data)``, as stored now."""
        rec = self.db.execute("SELECT data FROM records WHERE id = ?", (record_id,)).fetchone()
        imgs = self.db.execute(
            "SELECT id, data FROM images WHERE record_id = ? ORDER BY id", (record_id,)
        ).fetchall()
        return (rec[0] if rec else None), imgs

    def count(self, table: str, where: str = "", args: tuple[Any, ...] = ()) -> int:
        assert table in ("records", "images", "claims")
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int(self.db.execute(sql, args).fetchone()[0])

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM store_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a store_meta key; call inside :meth:`write`."""
        self.db.execute("INSERT OR REPLACE INTO store_meta VALUES (?, ?)", (key, value))

    def rename_notes(self) -> dict[str, str]:
        """The store's ``renamed:`` and ``rename_refused:`` rows (what a merge carries)."""
        rows = self.db.execute(
            "SELECT key, value FROM store_meta WHERE substr(key, 1, ?) = ?"
            " OR substr(key, 1, ?) = ?",
            (len(RENAMED), RENAMED, len(RENAME_REFUSED), RENAME_REFUSED),
        )
        return dict(rows.fetchall())

    def add_rename_notes(self, notes: dict[str, str]) -> None:
        """Add the ``renamed:``/``rename_refused:`` rows this store lacks (one transaction;
        a row it holds is kept: it is this run's own)."""
        rows = [(k, v) for k, v in notes.items() if k.startswith((RENAMED, RENAME_REFUSED))]
        if rows:
            with self.write() as db:
                db.executemany("INSERT OR IGNORE INTO store_meta VALUES (?, ?)", rows)

    # -- writing -------------------------------------------------------------------------
    def apply(
        self, delta: Delta, owner: str | None = None
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Write ``delta`` in one transaction. Returns the rows stored differently from the
        rows given (merged with other writers' values), keyed ``(table, id)``."""
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        with self.write() as db:
            for key, value in delta.header_set.items():
                db.execute("INSERT OR REPLACE INTO header VALUES (?, ?)", (key, dumps(value)))
            for key in delta.header_del:
                db.execute("DELETE FROM header WHERE key = ?", (key,))
            for change in delta.records:
                stored = self._stored(db, "records", change)
                if stored is None and change.patch is not None:
                    self._refuse_renamed(str(change.row["id"]), None)
                self._put_record(db, *self._merge("records", change, stored, merged))
            for rid in delta.deleted_records:
                db.execute("DELETE FROM records WHERE id = ?", (rid,))
            current = self._images_now(db, delta.images)
            for c in delta.images:
                if c.patch is not None and c.row["id"] not in current:
                    self._refuse_renamed(str(c.row.get("record_id")), f"image {c.row['id']}")
            rows = [
                self._merge("images", c, current.get(c.row["id"]), merged) for c in delta.images
            ]
            db.executemany(_PUT_IMAGE, [_image_params(row, text) for row, text in rows])
            for rid, keep in delta.replace_images_of.items():
                stored = db.execute("SELECT id FROM images WHERE record_id = ?", (rid,))
                delta.deleted_images |= {i for (i,) in stored.fetchall() if i not in keep}
            for iid in delta.deleted_images:
                db.execute("DELETE FROM images WHERE id = ?", (iid,))
            if delta.release and owner:
                db.executemany(
                    "DELETE FROM claims WHERE record_id = ? AND owner = ?",
                    [(rid, owner) for rid in delta.release],
                )
        return merged

    def _refuse_renamed(self, record_id: str, what: str | None) -> None:
        """A row this process read, gone from the store because its record was renamed:
        writing it would bring the old id back beside the new one (the article twice)."""
        new = self._renamed_to(record_id)
        if new is not None:
            where = f"{self.path}: " + (f"{what}: " if what else "")
            raise ManifestError(
                f"{where}record {record_id} is now {new} (renamed by a search since this "
                "process read the run); nothing was written, run the command again"
            )

    def rename_record(self, old: str, new: str, values: dict[str, Any]) -> str:
        """Rename record ``old`` to ``new`` in place (its ``seq``, so its place in the run,
        is kept), with ``values`` set on its row as stored now, and remember the rename
        (``renamed:<old>``) so that a process holding the old row cannot write it back.
        Refused (:class:`RenameRefused`, nothing written) while anything is keyed by the old
        id: image rows (their ids, files, labels, review log lines and scores CSVs name it),
        files under ``images/<old slug>/`` (an attempt left them), or a claim, a live
        process's or a dead one's (it counts the record's unfinished attempts). Its
        downloaded PDF ``pdfs/<old slug>.pdf`` is renamed with it (linked under the new
        name before the commit, the old name removed after). Returns the renamed row's
        JSON. A refusal of a record in the run is remembered
        (``rename_refused:<old>``): :attr:`RenameRefused.repeated` when it was met before."""
        try:
            return self._rename(old, new, values)
        except RenameRefused as exc:
            if exc.renamed is None and self.rows_of(old)[0] is not None:
                note = f"{new}: {exc}"
                with self.write():
                    exc.repeated = self.meta(RENAME_REFUSED + old) == note
                    self.set_meta(RENAME_REFUSED + old, note)
            raise

    def _rename(self, old: str, new: str, values: dict[str, Any]) -> str:
        linked: list[Path] = []  # the PDF's new name, linked before the commit
        old_pdf = self.run_dir / "pdfs" / f"{record_slug(old)}.pdf"
        try:
            text = self._rename_row(old, new, values, linked)
        except BaseException:
            self._roll_back()  # what the store holds now is what was committed
            for path in linked:  # (still in the transaction: the store cannot say)
                named = None if self.db.in_transaction else self._row_names(f"pdfs/{path.name}")
                if named is None:  # the store cannot say: both names stay
                    continue
                if named:  # committed, interrupted after
                    _drop_other_name(old_pdf, path)
                else:  # not renamed: the row still names the old file
                    path.unlink(missing_ok=True)
            raise
        if linked:
            _drop_other_name(old_pdf, linked[0])
        return text

    def _names_file(self, rel: str, but: str | None = None) -> bool:
        """Whether a stored record row (other than ``but``) names the file ``rel``; True
        when the store cannot say (a file it may name is never removed)."""
        named = self._row_names(rel, but)
        return True if named is None else named

    def _row_names(self, rel: str, but: str | None = None) -> bool | None:
        """Whether a stored record row (other than ``but``) names the file ``rel``; None
        when the store cannot say."""
        try:
            return (
                self.db.execute(
                    "SELECT 1 FROM records WHERE id IS NOT ? AND instr(data, ?) > 0 LIMIT 1",
                    (but, json.dumps(rel)),
                ).fetchone()
                is not None
            )
        except sqlite3.Error:
            return None

    def _move_pdf(self, data: dict[str, Any], old: str, new: str, linked: list[Path]) -> None:
        """The record's downloaded PDF (``pdfs/<old slug>.pdf``) linked as ``pdfs/<new
        slug>.pdf`` and named so in ``data``; kept under its old name when that cannot be
        (another file has the new name, another row names either name, no hard links
        here). A link to the same file that no row names (a rename killed before its
        commit) is taken as the new name."""
        rel = f"pdfs/{record_slug(old)}.pdf"
        if data.get("pdf_path") != rel:
            return
        src, dst = self.run_dir / rel, self.run_dir / "pdfs" / f"{record_slug(new)}.pdf"
        if src.is_symlink() or not src.is_file() or dst.is_symlink():
            return
        # another row names it too (a merge of a run renamed before)
        if self._names_file(rel, but=old) or self._names_file(f"pdfs/{dst.name}"):
            return
        if dst.exists():
            if not _same_file(src, dst):
                return
        else:
            try:
                os.link(src, dst)
            except OSError:
                return
        linked.append(dst)
        data["pdf_path"] = f"pdfs/{dst.name}"

    def _rename_row(self, old: str, new: str, values: dict[str, Any], linked: list[Path]) -> str:
        with self.write() as db:
            row = db.execute("SELECT data FROM records WHERE id = ?", (old,)).fetchone()
            now = self._renamed_to(old) if row is None else None
            if now == new:  # another process did it
                done = db.execute("SELECT data FROM records WHERE id = ?", (new,)).fetchone()
                if done is not None:
                    return str(done[0])
            if now is not None:
                raise RenameRefused(f"record {old} was renamed {now} already", renamed=now)
            if row is None:
                raise RenameRefused(f"record {old} is not in the run store")
            if db.execute("SELECT 1 FROM records WHERE id = ?", (new,)).fetchone():
                raise RenameRefused(f"record {new} is in the run already")
            n = self.count("images", "record_id = ?", (old,))
            if n:
                rows = f"{n} image row{'s' if n != 1 else ''}"
                verb = "are" if n != 1 else "is"
                raise RenameRefused(
                    f"its {rows} (files, labels, review log, scores) {verb} keyed by {old}"
                )
            held = db.execute(
                "SELECT host, pid, since FROM claims WHERE record_id = ?", (old,)
            ).fetchone()
            if held and _alive(*held):
                raise RenameRefused(f"a process ({held[0]}:{held[1]}) is working on it now")
            if held:  # dropping it would give the record an attempt more than allowed
                raise RenameRefused(
                    f"an unfinished attempt (process {held[0]}:{held[1]}, gone) is counted on {old}"
                )
            folder = self.run_dir / "images" / record_slug(old)
            if folder.is_dir() and any(folder.iterdir()):
                raise RenameRefused(
                    f"files an attempt left in images/{folder.name}/ are named by {old}"
                )
            data = json.loads(row[0]) | values | {"id": new}
            self._move_pdf(data, old, new, linked)
            text = dumps(data)
            cols = [_column(data.get(c)) for c in RECORD_COLUMNS]
            db.execute(
                "UPDATE records SET id = ?, stage = ?, status = ?, failed_stage = ?, pmid = ?,"
                " pmcid = ?, data = ? WHERE id = ?",
                (new, *cols, text, old),
            )
            self.set_meta(RENAMED + old, new)
            db.execute("DELETE FROM store_meta WHERE key = ?", (RENAME_REFUSED + old,))
        return text

    def _renamed_to(self, old: str) -> str | None:
        """The id record ``old`` has now, following its renames (``renamed:<id>``), or None
        when it was never renamed."""
        now, seen = self.meta(RENAMED + old), {old}
        while now is not None and now not in seen:
            seen.add(now)
            later = self.meta(RENAMED + now)
            if later is None:
                break
            now = later
        return now

    @staticmethod
    def _stored(db: sqlite3.Connection, table: str, change: Change) -> str | None:
        if change.patch is None and not change.new:
            return None
        found = db.execute(f"SELECT data FROM {table} WHERE id = ?", (change.row["id"],))
        row = found.fetchone()
        return row[0] if row else None

    @staticmethod
    def _images_now(db: sqlite3.Connection, changes: list[Change]) -> dict[str, str]:
        """Stored text of the image rows that ``patch``/``new`` changes merge onto (one
        indexed query per record)."""
        record_ids = {str(c.row.get("record_id")) for c in changes if c.patch is not None or c.new}
        now: dict[str, str] = {}
        for rid in record_ids:
            found = db.execute("SELECT id, data FROM images WHERE record_id = ?", (rid,))
            now.update(found.fetchall())
        return now

    @staticmethod
    def _merge(
        table: str,
        change: Change,
        stored: str | None,
        merged: dict[tuple[str, str], dict[str, Any]],
    ) -> tuple[dict[str, Any], str]:
        """The row to store for ``change`` given the stored text now, and its JSON."""
        text = change.text or dumps(change.row)
        if stored is None or (change.patch is None and not change.new):
            return change.row, text
        if change.patch is not None and stored == change.base:
            return change.row, text  # nobody else changed it since we read it
        row = json.loads(stored)
        if change.patch is not None:
            row |= change.patch
        if row == change.row:
            return change.row, text
        merged[(table, str(row["id"]))] = row
        return row, dumps(row)

    @staticmethod
    def _put_record(db: sqlite3.Connection, row: dict[str, Any], text: str | None = None) -> None:
        cols = [_column(row.get(c)) for c in RECORD_COLUMNS]
        db.execute(
            "INSERT INTO records (id, stage, status, failed_stage, pmid, pmcid, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET stage=excluded.stage,"
            " status=excluded.status, failed_stage=excluded.failed_stage,"
            " pmid=excluded.pmid, pmcid=excluded.pmcid, data=excluded.data",
            (str(row["id"]), *cols, text or dumps(row)),
        )

    @staticmethod
    def _put_image(db: sqlite3.Connection, row: dict[str, Any]) -> None:
        db.execute(_PUT_IMAGE, _image_params(row, dumps(row)))

    def replace_all(
        self,
        header: dict[str, Any],
        records: Iterable[dict[str, Any]],
        images: Iterable[dict[str, Any]],
    ) -> None:
        """Make the store hold exactly these rows (migration, re-import); call in :meth:`write`."""
        db = self.db
        for table in ("header", "records", "images"):
            db.execute(f"DELETE FROM {table}")
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'records'")
        for key, value in header.items():
            db.execute("INSERT INTO header VALUES (?, ?)", (key, dumps(value)))
        for row in records:
            self._put_record(db, row)
        for row in images:
            self._put_image(db, row)

    # -- claims: one process works on a record at a time ---------------------------------
    def claim(self, record_id: str, stage: str, owner: str) -> Claim:
        """Take ``record_id`` for ``stage`` unless a live process holds it; in the same
        transaction read the record's rows as they are now (another process may have
        finished it since this one loaded the run)."""
        with self.write() as db:
            held = db.execute(
                "SELECT owner, host, pid, since FROM claims WHERE record_id = ?", (record_id,)
            ).fetchone()
            if held and held[0] != owner and _alive(held[1], held[2], held[3]):
                return Claim(False, None, [], holder=f"{held[1]}:{held[2]}")
            renamed = self._renamed_to(record_id)
            if renamed is not None and self.rows_of(record_id)[0] is None:
                return Claim(False, None, [], renamed=renamed)
            db.execute(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                (record_id, stage, owner, socket.gethostname(), os.getpid(), time.time()),
            )
            rec, imgs = self.rows_of(record_id)
        return Claim(True, rec, imgs)

    def live_claims(self) -> list[tuple[str, str]]:
        """``(record_id, stage)`` of the records live processes are working on now."""
        return self._claims(alive=True)

    def abandoned_claims(self, record_id: str | None = None) -> list[tuple[str, str]]:
        """``(record_id, stage)`` of claims whose process died before it committed the
        record (killed, crashed, or hung and then killed): an attempt started, never ended."""
        return self._claims(alive=False, record_id=record_id)

    def _claims(self, *, alive: bool, record_id: str | None = None) -> list[tuple[str, str]]:
        sql = "SELECT record_id, stage, host, pid, since FROM claims"
        args: tuple[Any, ...] = ()
        if record_id is not None:
            sql, args = sql + " WHERE record_id = ?", (record_id,)
        rows = self.db.execute(sql, args).fetchall()
        return [(rid, st) for rid, st, *proc in rows if _alive(*proc) == alive]

    def release(self, record_ids: Iterable[str], owner: str) -> None:
        with self.write() as db:
            db.executemany(
                "DELETE FROM claims WHERE record_id = ? AND owner = ?",
                [(rid, owner) for rid in record_ids],
            )


_PUT_IMAGE = (
    "INSERT OR REPLACE INTO images (id, record_id, sha256, source, page, status, kept,"
    " label, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _image_params(row: dict[str, Any], text: str) -> tuple[Any, ...]:
    cols = [_column(row.get(c)) for c in IMAGE_COLUMNS]
    cols[0] = str(row.get("record_id"))
    return (str(row["id"]), *cols, text)


def _alive(host: str | None, pid: int | None, since: float | None) -> bool:
    """Is the process that made a claim still running? (Same host: ask the kernel; another
    host: trust the claim for :data:`CLAIM_LEASE_S`.)"""
    if host != socket.gethostname():
        return since is not None and time.time() - since < CLAIM_LEASE_S
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _drop_other_name(old: Path, new: Path) -> None:
    """Remove ``old`` when it is another name of the file ``new`` (a file written under
    that name since is kept); left where it cannot be: a file no row names, no harm."""
    with contextlib.suppress(OSError):
        if old.samefile(new):
            old.unlink()
