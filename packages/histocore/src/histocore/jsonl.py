"""``manifest.jsonl``, the run's interchange file: read it, and write it from the store.

The file is JSON Lines, UTF-8: a header object, then records in the order they were first
added, each followed by its images (PDF images by page, then the others), images whose
record is missing last; keys sorted in every line. Written from the store through a temp
file, ``fsync`` and ``os.replace``, so it is always one whole, consistent state.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from histocore.errors import ManifestError
from histocore.io import (
    RefusedFile,
    atomic_writer,
    file_sha256,
    open_regular,
    size_text,
    text_shown,
)
from histocore.schema import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    Image,
    Record,
    _from_dict,
    _names,
    _stored,
    check_header,
    row_of,
)
from histocore.store import RunStore, dumps

if TYPE_CHECKING:
    from histocore.manifest import Manifest


@contextmanager
def bulk() -> Iterator[None]:
    """No cyclic garbage collection while hundreds of thousands of rows are built (the
    rows hold no cycles; collecting as they pile up makes a large load several times slower)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: The longest line :func:`read_jsonl_whole` reads (rows are a few KB; a record's ``extra`` may
#: list many refused images): a multi-GB line (``/dev/zero`` copied in, a damaged file) is
#: one error, not a ``MemoryError``. The file itself is streamed line by line, any size.
MAX_LINE_BYTES = 16 << 20


#: How many times :func:`read_jsonl_whole` reads a ``manifest.jsonl`` that changes while
#: it is read before it refuses it.
READ_TRIES = 3


def read_jsonl_whole(
    path: Path, empty: Callable[[], Manifest], tries: int = READ_TRIES
) -> tuple[Manifest, dict[str, Any]]:
    """A ``manifest.jsonl`` parsed into ``empty()``, with the fingerprint of the bytes
    parsed (:func:`file_fingerprint`'s fields, taken from the open file as it is read: the
    same as it gives for a file left alone). A file rewritten in place while it is read
    (its size or modification time moved between the first and last byte) is read again,
    up to ``tries`` times, then refused with one :class:`ManifestError` line: the rows
    were stored torn under a fingerprint taken afterwards by path, so the rewrite was
    never imported."""
    for _ in range(tries):
        manifest = empty()
        fingerprint = _read_once(path, manifest)
        if fingerprint is not None:
            return manifest, fingerprint
    raise ManifestError(
        f"{path}: changed while it was read ({tries} times); not imported: read it again "
        "when nothing is writing it"
    )


def _read_once(path: Path, manifest: Manifest) -> dict[str, Any] | None:
    """Parse ``path`` into ``manifest``; the fingerprint of the bytes read, or None when
    the file changed while it was read (also when it failed to parse: what was wrong may
    be the rewrite's, not the file's)."""
    try:  # a FIFO was read forever (a hang), a link to /dev/zero too (MemoryError)
        fh = open_regular(path)
    except RefusedFile:
        raise ManifestError(f"{path}: not a regular file") from None
    with fh, bulk():
        before = os.fstat(fh.fileno())
        hashed = _Hashing(fh)
        try:
            lines = _text_lines(path, hashed)
            first = next(lines, None)
            if first is None:
                raise ManifestError(f"{path}: empty file, expected a header line")
            _read_lines(path, itertools.chain([first], lines), manifest)
        except ManifestError:
            # a rewrite in place mid-read tears lines apart (a made-up "not valid JSON"),
            # a truncation reads as empty: only a file left alone has the error it reports
            after = os.fstat(fh.fileno())
            if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
                return None
            raise
        after = os.fstat(fh.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None
    if hashed.size != after.st_size:  # grown and cut back within one time stamp
        return None
    return {
        "ino": after.st_ino,
        "size": after.st_size,
        "mtime_ns": after.st_mtime_ns,
        "sha256": hashed.digest.hexdigest(),
    }


class _Hashing:
    """``fh``'s lines, hashed (sha256) and counted as they are read."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.digest, self.size = fh, hashlib.sha256(), 0

    def readline(self, limit: int) -> bytes:
        raw = self.fh.readline(limit)
        self.digest.update(raw)
        self.size += len(raw)
        return raw


def _text_lines(path: Path, fh: _Hashing) -> Iterator[str]:
    """The lines of ``fh`` as text, each read under :data:`MAX_LINE_BYTES`; a byte-order
    mark before the first is allowed."""
    for lineno in itertools.count(1):
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw or (lineno == 1 and raw == b"\xef\xbb\xbf"):  # a BOM only: empty too
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise ManifestError(
                f"{path}:{lineno}: line over {size_text(MAX_LINE_BYTES)}, not a manifest row"
            )
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{path}:{lineno}: not UTF-8 text ({exc.reason})") from None
        yield text.rstrip("\r\n")


def _read_lines(path: Path, lines: Iterable[str], manifest: Manifest) -> None:
    first: dict[tuple[str, str], int] = {}  # (kind, id) -> line: a second row is ambiguous
    for lineno, line in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            # json's "Invalid control character at" (a NUL byte) ends where its position was
            what = exc.msg.removesuffix(" at")
            raise ManifestError(f"{where}: not valid JSON ({what}, column {exc.colno})") from None
        except ValueError:  # an integer over Python's 4300-digit limit for str -> int
            raise ManifestError(
                f"{where}: not usable JSON (a number with too many digits)"
            ) from None
        except RecursionError:  # arrays or objects nested thousands deep
            raise ManifestError(f"{where}: not usable JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: expected a JSON object")
        if lineno == 1:
            _read_header(manifest, obj, where)
            continue
        kind = obj.get("kind")
        key = (str(kind), str(obj.get("id")))
        if key in first:  # which row is meant? (the later one silently replaced the earlier)
            raise ManifestError(
                f"{where}: duplicate {kind} id {text_shown(repr(obj.get('id')))} (first on "
                f"line {first[key]})"
            )
        first[key] = lineno
        if kind == "record":
            rec = _from_dict(Record, obj, where)
            manifest.records[rec.id] = rec
        elif kind == "image":
            img = _from_dict(Image, obj, where)
            manifest.images[img.id] = img
        else:
            raise ManifestError(f"{where}: unknown row kind {kind!r}")


def _read_header(manifest: Manifest, obj: dict[str, Any], where: str) -> None:
    if obj.get("schema") != SCHEMA_NAME:
        raise ManifestError(f"{where}: not a {SCHEMA_NAME} header")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ManifestError(f"{where}: schema version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: schema version {version} is newer than this reader "
            f"(reads up to {SCHEMA_VERSION}); upgrade histocore"
        )
    extra = {k: v for k, v in obj.items() if k not in {"kind", "schema", "version", "query"}}
    check_header(obj.get("query"), extra, where)
    manifest.query = obj.get("query")
    manifest.header_extra = extra


def file_fingerprint(path: Path) -> dict[str, Any] | None:
    try:
        st = path.stat()
        digest = file_sha256(path)  # in blocks: a manifest may be large
    except FileNotFoundError:
        return None
    return {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def fingerprint_matches(path: Path, recorded: str | None) -> bool:
    """Is ``path`` absent, or the file the store last wrote (same inode/size/mtime, or
    failing that the same bytes)?"""
    try:
        st = path.stat()
    except FileNotFoundError:
        return True
    if recorded is None:
        return False
    want = json.loads(recorded) or {}
    if (st.st_ino, st.st_size, st.st_mtime_ns) == (
        want.get("ino"), want.get("size"), want.get("mtime_ns"),
    ):  # fmt: skip
        return True
    if st.st_size != want.get("size"):
        return False
    return file_sha256(path) == want.get("sha256")


def export_lines(store: RunStore) -> Iterator[str]:
    """The lines of ``manifest.jsonl`` for what ``store`` holds now (call in a transaction).

    Rows stored by an older writer are normalised through the current dataclasses (new
    fields get their defaults, unknown keys move to ``extra``), exactly as a load and save
    would write them.
    """
    return (line for line, _ in export_rows(store))


def export_rows(store: RunStore) -> Iterator[tuple[str, dict[str, Any]]]:
    """:func:`export_lines`, each line with the object it holds (the header first): each
    row's JSON parsed once (the CSV export parsed each line again, and each record's line a
    third time here to find its images)."""
    head = store.header()
    header = {"kind": "header", "schema": SCHEMA_NAME, "version": SCHEMA_VERSION}
    header = header | {"query": head.pop("query", None)} | head
    yield dumps(header), header
    images = _normalised(store.image_data(), Image, store)
    pending = next(images, None)
    for line, rec in _normalised(store.record_data(), Record, store):
        yield line, rec
        rec_id = rec["id"]
        while pending is not None and pending[1].get("record_id") == rec_id:
            yield pending
            pending = next(images, None)
    while pending is not None:  # images without a record row
        yield pending
        pending = next(images, None)


def _normalised(
    rows: Iterator[tuple[str, str]], cls: type, store: RunStore
) -> Iterator[tuple[str, dict[str, Any]]]:
    names = set(_names(cls))
    for row_id, data in rows:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):  # _stored says what is wrong, naming the row
            obj = None
        if not isinstance(obj, dict) or obj.keys() != names:
            data = dumps(row_of(_stored(cls, data, str(store.path), row_id)))
            obj = json.loads(data)  # the line's object, as a reader of the line gets it
        yield data, obj


def write_jsonl(store: RunStore, path: Path) -> dict[str, Any]:
    """Write the store's rows to ``path`` atomically; returns the file's fingerprint."""
    digest = hashlib.sha256()
    with atomic_writer(path) as fh:
        for line in export_lines(store):
            data = (line + "\n").encode("utf-8")
            digest.update(data)
            fh.write(data)
        fh.flush()
        st = os.fstat(fh.fileno())  # this file's, whatever replaces ``path`` after it
    return {
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest.hexdigest(),
    }
