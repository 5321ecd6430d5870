"""HDF5 files of encoded image bytes: the compact layout of ``../shared/data/pcam_real/dev``.

Datasets: ``encoded`` (vlen uint8: a JPEG/WebP/PNG file per row), ``y`` (uint8 [N]),
optional ``patch_id`` (str) and ``stored_codec``. Patches are decoded on demand; use
``load_all`` to decode once into memory.

A ``manifest.csv`` beside the file (columns ``file``, ``row``, ``origin_split``...) lets
you keep only rows of some origin splits, e.g. ``origin_split=("kaggle_train", "pcam_train")``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from histocore.progress import task
from histomodels.choices import origin_splits
from histomodels.data.base import DatasetError, KnownLabels, binary_labels
from histomodels.data.cache import require_memory
from histomodels.data.h5safe import dataset, open_h5, reading
from histomodels.data.ids import check_ids
from histomodels.data.images import decode_image


def rows_of_origin(path: Path, origin_split: str | Iterable[str]) -> np.ndarray:
    """Row numbers of ``path`` whose ``origin_split`` (in ``manifest.csv`` beside it) matches."""
    wanted = origin_splits(origin_split)
    manifest = path.parent / "manifest.csv"
    if not manifest.exists():
        raise DatasetError(f"{path}: origin_split filter needs {manifest}, which is absent")
    rows: list[int] = []
    first_line: dict[int, tuple[int, str]] = {}  # row -> the line naming it first, its split
    seen: set[str] = set()
    with manifest.open(newline="", encoding="utf-8-sig", errors="strict") as fh:
        try:
            text = fh.read()
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{manifest}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        reader = csv.DictReader(text.splitlines())
        try:
            missing = {"file", "row", "origin_split"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(f"{manifest}: missing column(s) {sorted(missing)}")
            for lineno, rec in enumerate(reader, start=2):
                if rec["file"] != path.name:
                    continue
                seen.add(rec["origin_split"])
                row = _manifest_row(rec["row"] or "", f"{manifest}:{lineno}")
                # every row of the file is checked, kept or not: a row listed under two
                # origin splits (train on one, eval on the other) shared a patch silently;
                # -1 read the file's last row, a row listed twice was read twice
                if row in first_line:
                    first, first_split = first_line[row]
                    split = rec["origin_split"]
                    other = "" if first_split == split else f" as {first_split}, here {split}"
                    raise DatasetError(
                        f"{manifest}:{lineno}: row {row} of {path.name} is listed again "
                        f"(first on line {first}{other})"
                    )
                first_line[row] = (lineno, rec["origin_split"])
                if rec["origin_split"] in wanted:
                    rows.append(row)
        except csv.Error as exc:  # a field over csv's 128 KB limit
            raise DatasetError(f"{manifest}: unreadable CSV ({exc})") from None
    if not rows:
        raise DatasetError(
            f"{path}: no rows with origin_split in {sorted(wanted)} (present: {sorted(seen)})"
        )
    return np.array(sorted(rows), dtype=np.int64)


#: the largest row number a manifest may name (int64, as the rows are kept)
_MAX_ROW = 2**63 - 1


def _manifest_row(text: str, where: str) -> int:
    """A ``manifest.csv`` ``row`` field's number: plain ASCII digits only (``int`` took
    ``1_0``, `` 1 `` and other scripts' digits), at most :data:`_MAX_ROW` (a larger one
    was an OverflowError traceback); else a :class:`DatasetError` naming ``where``."""
    if text[:1] == "-" and text[1:].isascii() and text[1:].isdigit() and int(text[1:]):
        raise DatasetError(f"{where}: row {text} is negative")
    if not (text.isascii() and text.isdigit()):
        raise DatasetError(f"{where}: row {text!r} is not an integer (digits 0-9 only)")
    if len(text) > 19 or int(text) > _MAX_ROW:
        raise DatasetError(f"{where}: row {text} is larger than any HDF5 row (2**63 - 1)")
    return int(text)


def _text_ids(ds: h5py.Dataset, path: Path) -> list[str]:
    """``patch_id`` values as text (bytes must be UTF-8)."""
    with reading(path, "patch_id", ds):
        raw = ds[()]
    try:
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in raw]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: 'patch_id' is not UTF-8 text ({exc.reason})") from None
    check_ids(ids, path)
    return ids


class EncodedH5Dataset(KnownLabels):
    """Encoded-bytes HDF5 reader; ``rows`` restricts it to a subset of rows."""

    def __init__(
        self,
        path: Path,
        *,
        origin_split: str | Iterable[str] | None = None,
        patch_size: int | None = 96,
    ) -> None:
        self.path = path
        self.source = f"encoded:{path}"
        self.size = None if patch_size is None else (patch_size, patch_size)
        self._file: h5py.File | None = None
        with open_h5(path) as f:
            enc = dataset(f, "encoded", path)
            if h5py.check_vlen_dtype(enc.dtype) != np.dtype(np.uint8) or enc.ndim != 1:
                raise DatasetError(
                    f"{path}: 'encoded' is {enc.dtype} {list(enc.shape)}, expected [N] of "
                    "variable-length uint8 (one image file per row)"
                )
            n = enc.shape[0]
            if n == 0:
                raise DatasetError(f"{path}: 'encoded' holds no patches")
            y_ds = dataset(f, "y", path)
            if y_ds.size != n:
                raise DatasetError(f"{path}: {n} encoded patches but {y_ds.size} labels in 'y'")
            with reading(path, "y", y_ds):
                y_raw = np.asarray(y_ds[()]).reshape(-1)  # checked below: the rows kept
            ids = (
                _text_ids(dataset(f, "patch_id", path), path)
                if "patch_id" in f
                else [f"{path.stem}_{i}" for i in range(n)]
            )
        if len(ids) != n:
            raise DatasetError(f"{path}: {n} encoded patches but {len(ids)} patch_id values")
        self.rows = (
            np.arange(n, dtype=np.int64)
            if origin_split is None
            else rows_of_origin(path, origin_split)
        )
        if len(self.rows) and self.rows[-1] >= n:
            raise DatasetError(
                f"{path}: manifest.csv names row {self.rows[-1]} but the file has {n}"
            )
        # only the rows kept are checked: a bad label in a row the filter drops (an origin
        # 'unknown' row) failed the whole read
        self._labels = binary_labels(y_raw[self.rows], f"{path} 'y'", self.rows)
        self._ids = [ids[r] for r in self.rows]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        index = self._row(index)
        if self._file is None:
            self._file = open_h5(self.path)
        row = int(self.rows[index])
        enc: Any = self._file["encoded"]  # checked to be a stored dataset when opened
        with reading(self.path, "encoded", enc):
            data = enc[row]
        img = decode_image(data.tobytes(), f"{self.path} row {row}", size=self.size)
        return img, int(self._labels[index]), self._ids[index]

    def load_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Read all bytes in one go, decode on a small thread pool (PIL releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        n = len(self.rows)
        if n == 0:
            raise DatasetError(f"{self.path}: no patches")
        with open_h5(self.path) as f:
            enc = dataset(f, "encoded", self.path)
            require_memory(enc.id.get_storage_size(), str(self.path), "encoded bytes")
            with reading(self.path, "encoded", enc):
                encoded = enc[()]

        def work(i: int) -> np.ndarray:
            row = int(self.rows[i])
            return decode_image(encoded[row].tobytes(), f"{self.path} row {row}", size=self.size)

        first = work(0)
        require_memory(n * first.nbytes, str(self.path))
        images = np.empty((n, *first.shape), dtype=np.uint8)
        images[0] = first
        with (
            ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool,
            task(f"decoding {self.path.name}", n) as shown,
        ):
            for i, img in enumerate(pool.map(work, range(1, n), chunksize=256), start=1):
                if img.shape != first.shape:
                    raise DatasetError(
                        f"{self.path} row {self.rows[i]}: shape {img.shape}, expected {first.shape}"
                    )
                images[i] = img
                if i % 1024 == 0:
                    shown.update(completed=i)
        return images, self._labels, list(self._ids)
