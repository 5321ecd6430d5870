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
import os
from pathlib import Path

import h5py
import numpy as np

from histomodels.data.base import DatasetError, PatchDataset

SPLITS = ("train", "valid", "test")
OFFICIAL = "camelyonpatch_level_2_split_{split}_{xy}.h5"


def cache_dir() -> Path:
    """Where decompressed files go when the source folder is read-only."""
    return Path(os.environ.get("HISTOMODELS_CACHE", Path.home() / ".cache" / "histomodels"))


def gunzip_once(path: Path, *, quiet: bool = False) -> Path:
    """Decompress ``x.h5.gz`` once to ``x.h5`` (temp file + rename) and return the plain path."""
    target = path.with_suffix("")  # drop .gz
    if not os.access(path.parent, os.W_OK):
        st = path.stat()
        target = cache_dir() / f"{target.stem}-{st.st_size}-{int(st.st_mtime)}{target.suffix}"
    if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    from histomodels.progress import transient_progress

    try:
        with (
            gzip.open(path, "rb") as src,
            open(tmp, "wb") as dst,
            transient_progress(quiet) as progress,
        ):
            task = progress.add_task(f"gunzip {path.name}", total=path.stat().st_size)
            raw = src.fileobj  # type: ignore[attr-defined]
            while chunk := src.read(1 << 22):
                dst.write(chunk)
                progress.update(task, completed=raw.tell())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{path}: corrupt gzip file ({exc})") from None
    tmp.replace(target)
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
        raise DatasetError(
            f"{folder}: holds PCam splits {sorted(present)}; choose one with split=<name>"
        )
    if split not in SPLITS:
        raise DatasetError(f"{folder}: unknown PCam split {split!r} (use {', '.join(SPLITS)})")
    if split not in present:
        raise DatasetError(f"{folder}: no {OFFICIAL.format(split=split, xy='x')}[.gz] here")
    return present[split]


class PCamDataset(PatchDataset):
    """Lazy reader for a PCam x/y pair (or one file holding both ``x`` and ``y``)."""

    def __init__(self, x_path: Path, y_path: Path | None = None) -> None:
        self.x_path = gunzip_once(x_path) if x_path.suffix == ".gz" else x_path
        if y_path is not None and y_path.suffix == ".gz":
            y_path = gunzip_once(y_path)
        self.y_path = y_path or self.x_path
        self.source = f"pcam:{x_path}"
        self._file: h5py.File | None = None
        x_shape = self._check_x()
        self.shape = x_shape
        self._labels = self._read_labels(x_shape[0])
        self._ids = self._read_ids(x_path, x_shape[0])

    # h5py handles cannot be pickled: open lazily, per process (DataLoader workers).
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def _x(self) -> h5py.Dataset:
        if self._file is None:
            self._file = h5py.File(self.x_path, "r")
        return self._file["x"]

    def _check_x(self) -> tuple[int, ...]:
        try:
            with h5py.File(self.x_path, "r") as f:
                if "x" not in f:
                    raise DatasetError(f"{self.x_path}: no 'x' dataset (found {sorted(f.keys())})")
                x = f["x"]
                shape, dtype = x.shape, x.dtype
        except OSError as exc:
            raise DatasetError(f"{self.x_path}: not a readable HDF5 file ({exc})") from None
        if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
            raise DatasetError(
                f"{self.x_path}: 'x' is {dtype} {list(shape)}, expected uint8 [N, H, W, 3]"
            )
        return shape

    def _read_labels(self, n: int) -> np.ndarray:
        try:
            with h5py.File(self.y_path, "r") as f:
                if "y" not in f:
                    raise DatasetError(f"{self.y_path}: no 'y' dataset (found {sorted(f.keys())})")
                y = np.asarray(f["y"][()])
        except OSError as exc:
            raise DatasetError(f"{self.y_path}: not a readable HDF5 file ({exc})") from None
        if y.ndim == 0 or y.shape[0] != n or y.size != n:
            raise DatasetError(
                f"{self.y_path}: 'y' has shape {list(y.shape)}, expected [{n}] labels"
            )
        y = y.reshape(n).astype(np.int64)
        bad = np.flatnonzero((y != 0) & (y != 1))
        if len(bad):
            raise DatasetError(
                f"{self.y_path}: row {bad[0]}: label {y[bad[0]]} is not 0/1 ({len(bad)} bad rows)"
            )
        return y

    @staticmethod
    def _read_ids(x_path: Path, n: int) -> list[str]:
        stem = x_path.name.split("_x.h5")[0] if "_x.h5" in x_path.name else x_path.stem
        meta = x_path.with_name(stem + "_meta.csv")
        if meta.exists():
            with meta.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            if len(rows) == n and rows and "patch_id" in rows[0]:
                return [r["patch_id"] for r in rows]
        return [f"{stem}_{i}" for i in range(n)]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return np.asarray(self._x()[index]), int(self._labels[index]), self._ids[index]

    def labels(self) -> np.ndarray:
        return self._labels

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._x()[start:stop])

    def ids(self) -> list[str]:
        return list(self._ids)

    def load_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Read everything in large sequential blocks (fast even for gzip-chunked files)."""
        from histomodels.progress import transient_progress

        n = len(self)
        out = np.empty(self.shape, dtype=np.uint8)
        x = self._x()
        block = max(1, (x.chunks[0] if x.chunks else 1024) * 32)
        with transient_progress() as progress:
            task = progress.add_task(f"reading {self.x_path.name}", total=n)
            for start in range(0, n, block):
                stop = min(n, start + block)
                x.read_direct(out, np.s_[start:stop], np.s_[start:stop])
                progress.update(task, completed=stop)
        return out, self._labels, list(self._ids)
