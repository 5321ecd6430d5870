"""How :class:`histocore.manifest.Manifest` stays in step with the run store.

Everything a ``Manifest`` does with ``run.sqlite`` lives here: reading it (and importing a
``manifest.jsonl`` edited by someone else, or migrating a JSONL-only folder on the first
commit), turning in-memory changes into field-level :class:`~histocore.store.Delta`\\ s,
applying them and adopting other writers' values, and the claims of per-record stages.
The ``_seen_*`` maps hold each row's JSON as this process last read or wrote it: a row
whose JSON differs now was changed here, and only its changed fields are written.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from histocore.image_table import ImageTable
from histocore.jsonl import bulk, fingerprint_matches, read_jsonl_whole
from histocore.schema import (
    MANIFEST_NAME,
    Image,
    Record,
    _image,
    _names,
    _record,
    check_header,
    row_of,
)
from histocore.store import STORE_NAME, Change, Delta, RenameRefused, RunStore, dumps

if TYPE_CHECKING:
    from histocore.manifest import Manifest

log = logging.getLogger("histocore.manifest")


class StoreSync:
    """The store side of ``Manifest`` (a base class; the fields live on ``Manifest``)."""

    run_dir: Path
    query: str | None
    records: dict[str, Record]
    images: Any
    header_extra: dict[str, Any]
    _store: RunStore | None
    _seen_rec: dict[str, str]
    _seen_img: dict[str, str]
    _seen_head: dict[str, str]
    _owner: str
    _migrate: dict[str, Any] | None
    _read_version: object

    @property
    def path(self) -> Path:
        """The run's ``manifest.jsonl``."""
        return self.run_dir / MANIFEST_NAME

    @property
    def store_path(self) -> Path:
        return self.run_dir / STORE_NAME

    def _header_items(self) -> dict[str, Any]:
        return {"query": self.query, **self.header_extra}

    def images_of(self, record_id: str) -> list[Image]:
        raise NotImplementedError

    def _empty(self) -> Manifest:
        """A new, empty manifest of the same run (to parse an edited export into)."""
        raise NotImplementedError

    def _read_store(self) -> None:
        store = self._db()
        where = str(self.store_path)
        # before the read's snapshot: a commit between the two reads the run again, once
        self._read_version = store.version()
        with store.read(), bulk():
            head = store.header()
            check_header(head.get("query"), head, where)
            self.query = head.pop("query", None)
            self.header_extra = head
            self._seen_head = {k: dumps(v) for k, v in self._header_items().items()}
            self.records, self._seen_rec = {}, {}
            for rid, data in store.record_data():
                rec = _record(data, where, rid)
                self.records[rec.id], self._seen_rec[rec.id] = rec, data
            table, self._seen_img = ImageTable(), {}
            for iid, data in store.image_data():
                img = _image(data, where, iid)
                table[img.id], self._seen_img[img.id] = img, data
            self.images = table

    def _import_if_edited(self) -> None:
        """Import ``manifest.jsonl`` into the store unless the store itself wrote it."""
        store = self._db()
        if fingerprint_matches(self.path, store.meta("export")):
            return
        with store.write():  # re-check under the write lock: an export may just have landed
            if fingerprint_matches(self.path, store.meta("export")):
                return
            parsed, fingerprint = read_jsonl_whole(self.path, self._empty)  # as it was read
            had_rows = store.count("records") + store.count("images")
            store.replace_all(
                parsed._header_items(),
                (row_of(r) for r in parsed.records.values()),
                (row_of(i) for i in parsed.images.values()),
            )
            store.set_meta("export", json.dumps(fingerprint))
        if had_rows:
            log.warning("%s was changed outside the run store; imported it", self.path)

    def changed_by_others(self) -> bool:
        """Whether another connection (another process) committed to the run's store since
        this manifest read it (:meth:`RunStore.version`; this manifest's own commits do
        not count, nor the store its first commit makes of a run read from
        ``manifest.jsonl`` alone: :meth:`_migrate_into`); for a manifest read from
        ``manifest.jsonl`` alone, or closed since, whether the folder has a store now
        (another process's). A store that cannot be asked counts as changed. An edit of
        ``manifest.jsonl`` by hand is not seen here (compare the file)."""
        if self._read_version is None or self._store is None:
            return os.path.lexists(self.store_path)
        try:
            return self._store.version() != self._read_version
        except (sqlite3.Error, OSError):
            return True

    def open_store(self) -> None:
        """Open the run store now, making it in a folder that has none, with every check
        opening it makes (links, foreign files): for work outside the store that must come
        after those checks and before the first commit (merge's review log lines)."""
        self._db()

    def _db(self) -> RunStore:
        if self._store is None:
            store = RunStore(self.run_dir, create=True)
            if self._migrate:
                self._migrate_into(store)
            self._store = store
        return self._store

    def _migrate_into(self, store: RunStore) -> None:
        """Put the rows read from ``manifest.jsonl`` into a new store (unless another
        process did first), remembering the file as the store's own export. When this
        manifest's rows are the ones put there, the store holds what it read: its
        :meth:`changed_by_others` counts from then on (the review page's first answer to a
        run holding only ``manifest.jsonl`` made the store, and the next request read the
        whole run again, as if another process had written it)."""
        with store.write():
            if store.count("records") or store.count("images") or store.meta("export"):
                return  # another process's store: this manifest's read is not what it holds
            store.replace_all(
                {k: json.loads(v) for k, v in self._seen_head.items()},
                (json.loads(v) for v in self._seen_rec.values()),
                (json.loads(v) for v in self._seen_img.values()),
            )
            store.set_meta("export", json.dumps(self._migrate))
            # under the write lock: no other connection commits until ours has
            self._read_version = store.version()

    def close(self) -> None:
        """Close the store connection (also closed when the object is collected). The last
        connection to close folds the WAL into ``run.sqlite`` and removes ``run.sqlite-wal``
        and ``-shm``, so the folder can be copied or shared read-only. Using the manifest
        again reopens the store."""
        if self._store is not None:
            self._store.close()
            self._store = None
        self._read_version = None  # a connection's own count: a new one starts its own

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _header_delta(self) -> Delta:
        delta = Delta()
        now = {k: dumps(v) for k, v in self._header_items().items()}
        delta.header_set = {k: json.loads(v) for k, v in now.items() if self._seen_head.get(k) != v}
        delta.header_del = set(self._seen_head) - set(now)
        return delta

    def _apply(self, delta: Delta) -> None:
        if not delta:
            return
        store = self._db()
        merged = store.apply(delta, owner=self._owner)
        for change in delta.records:
            self._seen_rec[change.row["id"]] = self._adopt(
                self.records.get(change.row["id"]), merged.get(("records", change.row["id"]))
            ) or (change.text or dumps(change.row))
        for change in delta.images:
            self._seen_img[change.row["id"]] = self._adopt(
                self.images.get(change.row["id"]), merged.get(("images", change.row["id"]))
            ) or (change.text or dumps(change.row))
        for rid in delta.deleted_records:
            self._seen_rec.pop(rid, None)
        for iid in delta.deleted_images:
            self._seen_img.pop(iid, None)
        for key, value in delta.header_set.items():
            self._seen_head[key] = dumps(value)
        for key in delta.header_del:
            self._seen_head.pop(key, None)

    @staticmethod
    def _adopt(obj: Record | Image | None, row: dict[str, Any] | None) -> str | None:
        """Take over the values another writer stored for a row we changed too."""
        if obj is None or row is None:
            return None
        for key in _names(type(obj)):
            if key in row:
                setattr(obj, key, row[key])
        return dumps(row)

    def claim(self, record_id: str, stage: str) -> bool:
        """Take a record for ``stage`` unless another live process works on it; rows another
        writer changed since this process read them are refreshed from the store (rows it
        did not change are kept as they are here). False: skip it."""
        claim = self._db().claim(record_id, stage, self._owner)
        if claim.renamed is not None:  # its row, as read here, must not be written back
            log.warning(
                "%s: record %s is now %s (renamed by a search since this process read the "
                "run); skipped here, the next run takes it",
                self.run_dir,
                record_id,
                claim.renamed,
            )
            self._forget(record_id)
        if not claim.taken:
            return False
        if claim.record is None:  # not committed yet (a row this process just added)
            return True
        where = str(self.store_path)
        if claim.record != self._seen_rec.get(record_id):
            self.records[record_id] = _record(claim.record, where, record_id)
            self._seen_rec[record_id] = claim.record
        stored = dict(claim.images)
        for img in self.images_of(record_id):
            if img.id not in stored:
                del self.images[img.id]
                self._seen_img.pop(img.id, None)
        for iid, data in stored.items():  # rows changed by another writer since we read them
            if data != self._seen_img.get(iid) or iid not in self.images:
                self.images[iid], self._seen_img[iid] = _image(data, where, iid), data
        return True

    def _forget(self, record_id: str) -> None:
        """Drop a record and its images from memory (not from the store)."""
        self.records.pop(record_id, None)
        self._seen_rec.pop(record_id, None)
        for img in self.images_of(record_id):
            del self.images[img.id]
            self._seen_img.pop(img.id, None)

    def rename_record(self, old: str, new: str, **values: Any) -> Record:
        """Rename record ``old`` to ``new`` in the store, in place and at once (one
        transaction, its place in the run kept; ``values`` set on it), and here.
        :class:`~histocore.store.RenameRefused` while image rows, files or a claim (live or
        dead) are keyed by ``old`` (see :meth:`RunStore.rename_record`); nothing changes then,
        save that a record another process renamed to another id first (``.renamed``) is
        held here under that id, as stored now, in its place."""
        try:
            text = self._db().rename_record(old, new, values)
        except RenameRefused as exc:
            if exc.renamed is not None:
                self._take_renamed(old, exc.renamed)
            raise
        rec = _record(text, str(self.store_path), new)
        items = [(new, rec) if rid == old else (rid, r) for rid, r in self.records.items()]
        self.records.clear()
        self.records.update(items)
        self._seen_rec.pop(old, None)
        self._seen_rec[new] = text
        return rec

    def rename_notes(self) -> dict[str, str]:
        """The store's ``renamed:<old id>`` and ``rename_refused:<old id>`` rows (see
        :meth:`RunStore.rename_record`); none for a folder without a store (reading never
        creates one)."""
        return {} if self._store is None else self._store.rename_notes()

    def add_rename_notes(self, notes: dict[str, str]) -> None:
        """Add the rename rows (from :meth:`rename_notes` of another run) this store lacks."""
        self._db().add_rename_notes(notes)

    def _take_renamed(self, old: str, now: str) -> None:
        """Hold record ``old``, renamed ``now`` by another process since this one read the
        run, as the store holds it now (its row and images), in ``old``'s place."""
        data, images = self._db().rows_of(now)
        where = str(self.store_path)
        rec = None if data is None else _record(data, where, now)  # None: deleted since
        others = [(rid, r) for rid, r in self.records.items() if rid != now]
        items = [(now, rec) if rid == old else (rid, r) for rid, r in others]
        if old not in self.records:
            items.append((now, rec))
        self._forget(old)
        self._forget(now)
        self.records.clear()
        self.records.update((rid, r) for rid, r in items if r is not None)
        if data is None:
            return
        self._seen_rec[now] = data
        for iid, text in images:
            img = _image(text, where, iid)
            self.images[img.id], self._seen_img[img.id] = img, text

    def release(self, record_ids: Iterable[str]) -> None:
        """Give up claims without committing (e.g. on Ctrl-C)."""
        self._db().release(record_ids, self._owner)

    def revert_images_of(self, record_id: str) -> None:
        """Forget in-memory changes to a record's images: take them as the store holds them
        (after a failed step; the record is claimed, so nobody else changed them)."""
        for img in self.images_of(record_id):
            del self.images[img.id]
            self._seen_img.pop(img.id, None)
        _, stored = self._db().rows_of(record_id)
        for iid, data in stored:
            img = _image(data, str(self.store_path), iid)
            self.images[img.id], self._seen_img[img.id] = img, data


def change_of(obj: Record | Image, seen: str | None, *, new: bool = False) -> Change | None:
    """What to write for one row: nothing if unchanged, the fields changed since ``seen``,
    or the whole row (``new``: insert only if no other writer added it first)."""
    row = row_of(obj)
    text = dumps(row)
    if seen is None:
        return Change(row, new=new, text=text)
    if text == seen:
        return None
    before = json.loads(seen)
    patch = {k: v for k, v in row.items() if before.get(k, ...) != v}
    return Change(row, patch=patch, text=text, base=seen)
