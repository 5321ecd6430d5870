"""The run manifest: the schema shared by histofetch and histomodels, and its API.

A run's rows live in its store, ``RUN/run.sqlite`` (:mod:`histocore.store`), which every
writer commits to in short transactions; ``RUN/manifest.jsonl`` is the interchange export
of the same rows: line 1 is a header object, every other line one row, either an article
(``kind == "record"``) or an image taken from it (``kind == "image"``), keyed by ``id``.
:class:`Manifest` loads a run into memory (migrating a folder that has only a JSONL
manifest), commits changes (:meth:`Manifest.save`, or one record at a time with
:meth:`Manifest.commit_record`) and writes the export atomically. The schema is documented
in ``docs/manifest.md``; bump ``SCHEMA_VERSION`` on any incompatible change.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from histocore.errors import ManifestError, UnnameablePath, UnresolvablePath
from histocore.image_table import ImageTable
from histocore.io import path_shown, resolved, unnameable
from histocore.jsonl import read_jsonl_whole, write_jsonl
from histocore.schema import IMAGE_LABELS as IMAGE_LABELS
from histocore.schema import MANIFEST_NAME as MANIFEST_NAME
from histocore.schema import SCHEMA_NAME as SCHEMA_NAME
from histocore.schema import SCHEMA_VERSION as SCHEMA_VERSION
from histocore.schema import STAGES as STAGES
from histocore.schema import WEAK_LABELS as WEAK_LABELS
from histocore.schema import Image as Image
from histocore.schema import Record as Record
from histocore.schema import _names, check_header, row_of
from histocore.store import STORE_NAME as STORE_NAME  # re-exported: the run store's file
from histocore.store import Delta, RenameRefused, RunStore, dumps  # noqa: F401 (re-exported)
from histocore.sync import StoreSync, change_of


def run_folder(run_dir: str | Path) -> Path:
    """The run folder ``run_dir`` names: the folder itself, or the folder of its
    ``manifest.jsonl`` or ``run.sqlite`` file. Every function that takes a run path and
    derives the run's other paths from it calls this first, before any guard on them:
    ``export_run('run/manifest.jsonl', 'csv', 'run/run.sqlite')`` checked the output against
    ``run/manifest.jsonl/run.sqlite`` and replaced the store. Another file is a
    :class:`ManifestError` (give the run folder)."""
    path = Path(run_dir)
    if not path.is_file():
        return path
    if path.name not in (MANIFEST_NAME, STORE_NAME):
        raise ManifestError(
            f"{path_shown(path)}: is a file, not a run folder (give the "
            f"histofetch run folder, the one holding {MANIFEST_NAME})"
        )
    return path.parent


@dataclass
class Manifest(StoreSync):
    """A run in memory, backed by its store (``run.sqlite``).

    Stages and tools change ``records``/``images`` and then either commit one record at a
    time (:meth:`commit_record`: the record row plus its image rows, one transaction) or
    everything that changed (:meth:`save`, which also writes ``manifest.jsonl``). Only the
    fields a process changed are written, so processes working on one run keep each
    other's rows. A folder holding only a ``manifest.jsonl`` (version 1 or 2) gets a store
    on first use.
    """

    run_dir: Path
    query: str | None = None
    records: dict[str, Record] = field(default_factory=dict)
    images: MutableMapping[str, Image] = field(default_factory=ImageTable)
    header_extra: dict[str, Any] = field(default_factory=dict)
    # what the store held when last read or written, to commit only real changes
    _store: RunStore | None = field(default=None, repr=False, compare=False)
    _seen_rec: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _seen_img: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _seen_head: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _owner: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False, compare=False)
    #: the fingerprint of the ``manifest.jsonl`` read, for a folder without a store yet
    _migrate: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: :meth:`RunStore.version` just before the store was last read (None: not read)
    _read_version: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if not isinstance(self.images, ImageTable):
            self.images = ImageTable(dict(self.images).items())

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path, *, create: bool = False) -> Manifest:
        """Load a run folder; with ``create`` a folder without a run is a new, empty run.

        The store is read when there is one; a ``manifest.jsonl`` changed by someone else
        since the store last wrote it is imported into the store first (the edit wins). A
        folder with only a ``manifest.jsonl`` (version 1 or 2) is read from it, and gets a
        store holding those rows on its first commit: reading never writes.

        ``run_dir`` may also be the run's ``manifest.jsonl`` or ``run.sqlite`` file: its
        folder is loaded (another file is refused: give the run folder).
        """
        manifest = cls(run_dir=run_folder(run_dir))
        path = manifest.path
        if os.path.lexists(manifest.store_path):  # a link or FIFO there: the store refuses it
            manifest._store = RunStore(manifest.run_dir)
            try:
                if not manifest._store.readonly:
                    manifest._import_if_edited()
                manifest._read_store()
            except BaseException:  # a bad row: close, so no -wal/-shm outlive the error
                manifest.close()
                raise
        elif path.exists():
            parsed, fingerprint = read_jsonl_whole(path, manifest._empty)
            manifest.query, manifest.header_extra = parsed.query, parsed.header_extra
            manifest.records, manifest.images = parsed.records, parsed.images
            manifest._seen_head = {k: dumps(v) for k, v in manifest._header_items().items()}
            manifest._seen_rec = {k: dumps(row_of(r)) for k, r in manifest.records.items()}
            manifest._seen_img = {k: dumps(row_of(i)) for k, i in manifest.images.items()}
            manifest._migrate = fingerprint  # the bytes read, not the file when migrated
        elif not create and not os.path.lexists(manifest.run_dir):  # a typo: say the folder
            raise ManifestError(
                f"{path_shown(manifest.run_dir)}: no such folder (give a histofetch run folder)"
            )
        elif not create:
            raise ManifestError(
                f"{path_shown(path)}: no manifest here (is this a histofetch run folder?)"
            )
        return manifest

    def _empty(self) -> Manifest:
        return Manifest(run_dir=self.run_dir)

    # -- header --------------------------------------------------------------------------
    def _header_items(self) -> dict[str, Any]:
        return {"query": self.query, **self.header_extra}

    def header(self) -> dict[str, Any]:
        return {"kind": "header", "schema": SCHEMA_NAME, "version": SCHEMA_VERSION}.__or__(
            {"query": self.query, **self.header_extra}
        )

    def rows(self) -> Iterator[dict[str, Any]]:
        """The in-memory rows in export order: records as added, each followed by its images."""
        done: set[str] = set()
        for rec in self.records.values():
            done.add(rec.id)
            yield row_of(rec)
            for img in self.images_of(rec.id):
                yield row_of(img)
        orphans = [i for i in self.images.values() if i.record_id not in done]
        for img in sorted(orphans, key=lambda i: (i.record_id, *_image_order(i))):
            yield row_of(img)

    # -- committing ----------------------------------------------------------------------
    def save(self) -> Path:
        """Commit every change since the last load/commit (one transaction), then write
        ``manifest.jsonl`` from the store. Returns the JSONL path."""
        self.commit()
        return self.export()

    def _check_header(self) -> None:
        """The header to commit holds what its readers accept (:func:`check_header`): a
        non-bool ``filter_sheets`` committed made the run unreadable. A ValueError (not a
        ManifestError, which a command line says in one line): a caller's bug, with its
        traceback, raised before anything is written."""
        try:
            check_header(self.query, self.header_extra, "the header to commit")
        except ManifestError as exc:
            raise ValueError(f"{exc}; not committed to {self.store_path}") from None

    def commit(self) -> None:
        """Commit every row (and header key) this process changed, in one transaction."""
        self._check_header()
        delta = self._header_delta()
        for rid, rec in self.records.items():
            change = change_of(rec, self._seen_rec.get(rid), new=True)
            if change:
                delta.records.append(change)
        for iid, img in self.images.items():
            change = change_of(img, self._seen_img.get(iid), new=True)
            if change:
                delta.images.append(change)
        delta.deleted_records = set(self._seen_rec) - set(self.records)
        delta.deleted_images = set(self._seen_img) - set(self.images)
        self._apply(delta)

    def commit_header(self) -> None:
        """Commit only the header keys this process changed (one small transaction): the
        rows are not compared, nor written. For a header change after :meth:`commit` (a key
        saying work outside the store is done), where a full commit would compare every
        row again."""
        self._check_header()
        self._apply(self._header_delta())

    def commit_record(self, record_id: str, *, release: bool = True) -> None:
        """Commit one record and its image rows as one transaction: the record row, and its
        stored image rows replaced by the ones in memory (fields changed here only)."""
        delta = Delta()
        rec = self.records.get(record_id)
        if rec is not None:
            change = change_of(rec, self._seen_rec.get(record_id))
            if change:
                delta.records.append(change)
        mine = self.images_of(record_id)
        for img in mine:
            change = change_of(img, self._seen_img.get(img.id))
            if change:
                delta.images.append(change)
        delta.replace_images_of[record_id] = {i.id for i in mine}
        if release:
            delta.release.add(record_id)
        self._apply(delta)

    def update_image(self, image_id: str, **values: Any) -> Image:
        """Change some fields of one image and commit just those (e.g. a label)."""
        img = self.images[image_id]
        for key, value in values.items():
            if key not in _names(Image) or key in ("id", "record_id", "kind"):
                raise ValueError(f"Image has no settable field {key!r}")
            setattr(img, key, value)
        change = change_of(img, self._seen_img.get(image_id))
        if change:
            self._apply(Delta(images=[change]))
        return img

    # -- export --------------------------------------------------------------------------
    def export(self, path: str | Path | None = None) -> Path:
        """Write the store's rows as JSON Lines (default ``manifest.jsonl``), atomically and
        in a byte-stable order. The store is locked while the file is written, so the
        export is one consistent state."""
        target = Path(path) if path is not None else self.path
        store = self._db()
        with store.write():
            fingerprint = write_jsonl(store, target)
            if target == self.path:
                store.set_meta("export", json.dumps(fingerprint))
        return target

    # -- convenience -----------------------------------------------------------------------
    def add_record(self, record: Record) -> Record:
        """Insert or replace a record (keyed by id, so re-adding never duplicates)."""
        self.records[record.id] = record
        return record

    def add_image(self, image: Image) -> Image:
        self.images[image.id] = image
        return image

    def images_of(self, record_id: str) -> list[Image]:
        if not isinstance(self.images, ImageTable):  # someone assigned a plain dict
            self.images = ImageTable(dict(self.images).items())
        return sorted(self.images.of(record_id), key=_image_order)

    def drop_images_of(self, record_id: str) -> None:
        for img in self.images_of(record_id):
            del self.images[img.id]

    def kept_images(self) -> list[Image]:
        """Kept images to use downstream: a split figure is represented by its kept panels."""
        return [i for i in self.images.values() if i.kept and i.status == "ok" and not i.n_panels]

    def panels_of(self, image_id: str) -> list[Image]:
        """The panel rows split from figure ``image_id``, in reading order."""
        return sorted(
            (i for i in self.images.values() if i.parent_id == image_id), key=lambda i: i.id
        )

    @overload
    def resolve(self, rel: str) -> Path: ...
    @overload
    def resolve(self, rel: None) -> None: ...
    @overload
    def resolve(self, rel: str | None) -> Path | None: ...
    def resolve(self, rel: str | None) -> Path | None:
        """Absolute path of a file the manifest names relative to the run folder."""
        if rel is None:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.run_dir / p

    def image_file(self, rel: str | None) -> Path:
        """The file an image row names, symlinks resolved, only when it lies inside the run
        folder. A manifest is untrusted: a row naming ``/etc/passwd``, ``../../x.png`` or a
        file link that points out must not make a reader open (or write beside) another
        local file, so such a path is a :class:`ManifestError`. Folders inside the run that
        are links (``images/`` moved to a bigger disk) are the local user's and are followed;
        an absolute row inside such a folder's target is one older versions wrote. (PDF
        paths may lie outside: a user's local PDFs are recorded with their absolute path.)
        A path whose links cannot be resolved (a link loop) is a :class:`ManifestError`
        too: it names no usable file (:class:`UnresolvablePath`), and so is one no file can
        have (:class:`UnnameablePath`: a NUL character; it was said to be a symlink loop)."""
        if rel is None:
            raise ManifestError(f"{self.path}: the image row names no file")
        if why := unnameable(rel):
            raise UnnameablePath(f"{self.path}: image path {rel!r} names no file (it holds {why})")
        text = Path(rel)
        path = resolved(self.resolve(rel))
        if path is None:  # a link loop: the one way a non-strict resolve fails now
            raise UnresolvablePath(
                f"{self.path}: image path {rel!r} cannot be resolved (symlink loop)"
            )
        if path.is_relative_to(self.run_dir.resolve()):
            return path
        if text.is_absolute():
            inside = any(path.is_relative_to(target) for target in self._linked_folders())
        else:  # through linked folders, but no ``..`` and not a file link of its own
            inside = ".." not in text.parts and not (self.run_dir / text).is_symlink()
        if not inside:
            raise ManifestError(f"{self.path}: image path {rel!r} is outside the run folder")
        return path

    def _linked_folders(self) -> list[Path]:
        """The resolved targets of the folder links directly inside the run folder."""
        try:
            entries = list(self.run_dir.iterdir())
        except OSError:
            return []
        return [e.resolve() for e in entries if e.is_symlink() and e.is_dir()]

    def relative(self, path: str | Path) -> str:
        """Path as stored in the manifest: relative to the run folder when inside it (as
        written, so a file under a linked ``images/`` folder stays ``images/...``)."""
        given, run = Path(os.path.abspath(path)), Path(os.path.abspath(self.run_dir))
        if given.is_relative_to(run):
            return given.relative_to(run).as_posix()
        path = Path(path)
        try:
            return path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())


def _image_order(img: Image) -> tuple[Any, ...]:
    return (img.source != "pdf", img.page or 0, img.id)
