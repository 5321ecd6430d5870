"""The official PatchCamelyon HDF5 files, read lazily.

``camelyonpatch_level_2_split_{train,valid,test}_x.h5`` holds ``x`` uint8 [N, 96, 96, 3];
the matching ``_y.h5`` holds ``y`` uint8 [N, 1, 1, 1]. The train x file is ~7 GB, so
patches are read on demand (or in large blocks by :meth:`PCamDataset.load_all`). HDF5
needs random access, so a gzipped ``.h5.gz`` is decompressed once (next to the original
when that folder is writable, else in the cache folder) and the plain file is read.
A single HDF5 file holding both ``x`` and ``y`` is accepted too.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import stat
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from histocore.io import RefusedFile, atomic_writer, read_capped
from histocore.progress import task
from histomodels.choices import PCAM_SPLITS
from histomodels.data.base import (
    MAX_LABELS_CSV_BYTES,
    DatasetError,
    KnownLabels,
    binary_labels,
    check_patch_shape,
)
from histomodels.data.cache import require_memory
from histomodels.data.h5safe import check_stored, dataset, open_h5, reading
from histomodels.data.ids import check_ids

log = logging.getLogger(__name__)

SPLITS = PCAM_SPLITS
OFFICIAL = "camelyonpatch_level_2_split_{split}_{xy}.h5"
#: The largest ``<stem>_meta.csv`` read (PCam's train split's has 262,144 rows, far less):
#: the readers' cap, the Kaggle labels CSV's too.
MAX_META_BYTES = MAX_LABELS_CSV_BYTES


def cache_dir() -> Path:
    """Where decompressed files go when the source folder is read-only."""
    return Path(os.environ.get("HISTOMODELS_CACHE", Path.home() / ".cache" / "histomodels"))


#: A gzip member may expand to at most this many times its size (PCam's x files: ~3.5x,
#: its y files ~100x), and never past :data:`GUNZIP_MAX_BYTES`; small files get 64 MB.
GUNZIP_MAX_RATIO = 200
GUNZIP_MIN_CAP = 64 * 1024 * 1024
GUNZIP_MAX_BYTES = 16 * 1024**3


def gunzip_cap(compressed: int) -> int:
    """Most bytes a ``compressed``-byte gzip file may expand to (see the constants)."""
    return min(GUNZIP_MAX_BYTES, max(GUNZIP_MIN_CAP, GUNZIP_MAX_RATIO * compressed))


def gunzip_once(path: Path) -> Path:
    """Decompress ``x.h5.gz`` once to ``x.h5`` (temp file + rename) and return the plain path.

    The output is capped (:func:`gunzip_cap`) and written through
    :func:`histocore.io.atomic_writer`: each call writes its own temp file, removed on any
    failure, so two processes decompressing the same file into the shared cache at once never
    write into one file (the last rename wins, with the same bytes). A corrupt stream and a
    full disk give different one-line :class:`DatasetError` messages.
    """
    import errno
    import zlib

    if not stat.S_ISREG(path.stat().st_mode):
        raise DatasetError(f"{path}: not a regular file")
    target = path.with_suffix("")  # drop .gz
    if not os.access(path.parent, os.W_OK):
        st = path.stat()
        target = cache_dir() / f"{target.stem}-{st.st_size}-{int(st.st_mtime)}{target.suffix}"
    if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    cap = gunzip_cap(path.stat().st_size)

    written = 0
    with (
        gzip.open(path, "rb") as src,
        atomic_writer(target) as dst,
        task(f"gunzip {path.name}", path.stat().st_size, unit="bytes") as shown,
    ):
        raw: Any = src.fileobj  # type: ignore[attr-defined]
        while True:
            try:
                chunk = src.read(1 << 22)
            except (OSError, EOFError, zlib.error) as exc:
                raise DatasetError(f"{path}: corrupt gzip file ({exc})") from None
            if not chunk:
                break
            written += len(chunk)
            if written > cap:
                raise DatasetError(
                    f"{path}: expands past {cap} bytes ({cap // max(1, path.stat().st_size)}x "
                    "its size); refused as a possible gzip bomb"
                )
            try:
                dst.write(chunk)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DatasetError(
                        f"{path}: disk full while writing {target} ({written >> 20} MB written)"
                    ) from None
                raise DatasetError(f"{path}: cannot write {target} ({exc})") from None
            shown.update(completed=raw.tell())  # type: ignore[union-attr]
    return target


def pair_of(path: Path) -> tuple[Path, Path]:
    """``(x_path, y_path)`` for either member of a ``*_x.h5`` / ``*_y.h5`` pair (.gz too)."""
    name = path.name
    for gz in (".gz", ""):
        for me, other in (("_x.h5", "_y.h5"), ("_y.h5", "_x.h5")):
            if name.endswith(me + gz):
                stem = name[: -len(me + gz)]
                candidates = [path.with_name(stem + other + g) for g in ("", ".gz")]
                found = next((c for c in candidates if c.exists()), None)
                if found is None:
                    raise DatasetError(f"{path}: no matching {stem + other}[.gz] beside it")
                return (path, found) if me == "_x.h5" else (found, path)
    raise DatasetError(f"{path}: not a PCam *_x.h5 / *_y.h5 file")


class SplitNotChosen(DatasetError):
    """A PCam folder holds several splits and none was chosen.

    The message names each split's x file, which every command and ``open_dataset`` take
    as a dataset path (it said "choose one with split=<name>", the keyword argument, to
    ``train``/``eval`` users, who have no such option); ``open_dataset(folder, split=...)``
    and ``histomodels data info --split`` choose one too.
    """

    def __init__(self, folder: Path, present: dict[str, Path]) -> None:
        self.folder = folder
        self.present = present
        files = ", ".join(str(present[s]) for s in SPLITS if s in present)
        super().__init__(
            f"{folder}: holds PCam splits {sorted(present)}; give one split's x file: {files}"
        )


def find_split(folder: Path, split: str | None) -> Path:
    """The x file of an official split inside ``folder``."""
    present = {
        s: p
        for s in SPLITS
        for p in (
            folder / OFFICIAL.format(split=s, xy="x"),
            folder / (OFFICIAL.format(split=s, xy="x") + ".gz"),
        )
        if p.exists()
    }
    if split is None:
        if len(present) == 1:
            return next(iter(present.values()))
        raise SplitNotChosen(folder, present)
    if split not in SPLITS:
        raise DatasetError(f"{folder}: unknown PCam split {split!r} (use {', '.join(SPLITS)})")
    if split not in present:
        raise DatasetError(f"{folder}: no {OFFICIAL.format(split=split, xy='x')}[.gz] here")
    return present[split]


class PCamDataset(KnownLabels):
    """Lazy reader for a PCam x/y pair (or one file holding both ``x`` and ``y``)."""

    def __init__(
        self, x_path: Path, y_path: Path | None = None, *, patch_size: int | None = 96
    ) -> None:
        self.x_path = gunzip_once(x_path) if x_path.suffix == ".gz" else x_path
        if y_path is not None and y_path.suffix == ".gz":
            y_path = gunzip_once(y_path)
        self.y_path = y_path or self.x_path
        self.source = f"pcam:{self.x_path}"  # the file read: a .gz's decompressed copy
        self.patch_size = patch_size
        self._file: h5py.File | None = None
        self._xds: h5py.Dataset | None = None
        x_shape = self._check_x()
        self.shape = x_shape
        self._labels = self._read_labels(x_shape[0])
        self._ids = self._read_ids(x_path, x_shape[0])

    # h5py handles cannot be pickled: open lazily, per process (DataLoader workers).
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = state["_xds"] = None
        return state

    def _x(self) -> h5py.Dataset:
        if self._file is None or self._xds is None:
            self._file = open_h5(self.x_path)
            self._xds = dataset(self._file, "x", self.x_path)
        return self._xds

    def _check_x(self) -> tuple[int, ...]:
        with open_h5(self.x_path) as f:
            x = dataset(f, "x", self.x_path)
            shape, dtype = x.shape, x.dtype
            if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
                raise DatasetError(
                    f"{self.x_path}: 'x' is {dtype} {list(shape)}, expected uint8 [N, H, W, 3]"
                )
            if shape[0] == 0:
                raise DatasetError(f"{self.x_path}: 'x' holds no patches")
            check_patch_shape(shape, self.patch_size, str(self.x_path))
            check_stored(x, self.x_path, "x")
        return shape

    def _read_labels(self, n: int) -> np.ndarray:
        with open_h5(self.y_path) as f:
            ds = dataset(f, "y", self.y_path)
            if ds.size != n or not ds.shape or ds.shape[0] != n:
                raise DatasetError(
                    f"{self.y_path}: 'y' has shape {list(ds.shape)}, expected [{n}] labels"
                )
            with reading(self.y_path, "y", ds):
                y = np.asarray(ds[()])
        return binary_labels(y, str(self.y_path))

    @staticmethod
    def _read_ids(x_path: Path, n: int) -> list[str]:
        stem = x_path.name.split("_x.h5")[0] if "_x.h5" in x_path.name else x_path.stem
        meta = x_path.with_name(stem + "_meta.csv")
        if meta.is_file():
            try:  # capped as the Kaggle labels CSV is: a multi-GB file was read whole
                text = read_capped(meta, MAX_META_BYTES).decode("utf-8-sig")
                reader = csv.DictReader(io.StringIO(text, newline=""))
                rows, columns = list(reader), reader.fieldnames or []
            except RefusedFile as exc:
                raise DatasetError(f"{meta}: {exc}, not a PCam meta CSV") from None
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"{meta}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from None
            except csv.Error as exc:  # a field over csv's 128 KB limit
                raise DatasetError(f"{meta}: unreadable CSV ({exc})") from None
            # one row per patch, in order: another count is another pair's file (its ids
            # were dropped for <stem>_<row> without a word)
            rows_said = f"{len(rows)} row" + ("" if len(rows) == 1 else "s")
            counted = f"{rows_said} for the {n} patches of {x_path.name}"
            if "patch_id" in columns:
                if len(rows) != n:
                    raise DatasetError(
                        f"{meta}: {counted}; its patch_id gives one id per patch, in order "
                        "(is it another file's? remove it to number the patches)"
                    )
                ids = [r["patch_id"] or "" for r in rows]  # None: a short row
                check_ids(ids, meta, first_line=2)  # as an encoded .h5's patch_id
                return ids
            if len(rows) != n:  # not read (no ids in it), but it says the pair is mixed up
                log.warning("%s: %s; not read (no patch_id column)", meta, counted)
        return [f"{stem}_{i}" for i in range(n)]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        index = self._row(index)
        x = self._x()
        with reading(self.x_path, "x", x):
            patch = np.asarray(x[index])
        return patch, int(self._labels[index]), self._ids[index]

    def read_range(self, start: int, stop: int) -> np.ndarray:
        x = self._x()
        with reading(self.x_path, "x", x):
            return np.asarray(x[start:stop])

    def load_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Read everything in large sequential blocks (fast even for gzip-chunked files)."""

        n = len(self)
        require_memory(int(np.prod(self.shape, dtype=np.int64)), str(self.x_path))
        out = np.empty(self.shape, dtype=np.uint8)
        x = self._x()
        block = max(1, (x.chunks[0] if x.chunks else 1024) * 32)
        with task(f"reading {self.x_path.name}", n) as shown:
            for start in range(0, n, block):
                stop = min(n, start + block)
                with reading(self.x_path, "x", x):
                    x.read_direct(out, np.s_[start:stop], np.s_[start:stop])
                shown.update(completed=stop)
        return out, self._labels, list(self._ids)
