"""The dataset interface every reader implements.

A :class:`PatchDataset` has a length and returns ``(image, label, id)`` where image is a
uint8 ``[H, W, 3]`` array (96x96 for PCam), label is 0/1 (or -1 when unknown) and id is a
string that names the patch in reports and ``predictions.csv``.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from histocore.progress import task
from histomodels.data.cache import require_memory
from histomodels.data.errors import DatasetError as DatasetError  # re-exported
from histomodels.data.ids import shown_id

#: The largest labels CSV a reader reads (Kaggle's ``train_labels.csv``, about 10 MB, and
#: PCam's ``<stem>_meta.csv``, far less): a multi-GB file, a FIFO or a link to
#: ``/dev/zero`` named so is one line, not a hang or a ``MemoryError``.
MAX_LABELS_CSV_BYTES = 64 << 20


def pixel_digests(images: np.ndarray) -> list[bytes]:
    """One digest per patch's pixels (uint8 ``[N, H, W, 3]``), in order: the same patch in
    two datasets, whatever its format or id (a train/validation/test overlap check)."""
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest()
            for im in images]  # fmt: skip


def rows_also_in(digests: list[bytes], other: list[bytes]) -> int:
    """How many patches of ``digests`` (each row, duplicates too) have the pixels of a patch
    in ``other`` (:func:`pixel_digests` of both)."""
    found = set(other)
    return sum(d in found for d in digests)


def binary_labels(y: np.ndarray, where: str, rows: np.ndarray | None = None) -> np.ndarray:
    """``y`` as int64 0/1 labels, refusing anything else (0.5, NaN, 2, b"x") with one line.
    ``rows``: the file's row of each of ``y`` (a subset's), for the line to name.

    A plain ``astype(int64)`` would turn 0.5 and 0.9 into 0 and train on all-negative data.
    """
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: labels are {y.dtype}, expected integers 0/1")
    flat = y.reshape(-1)
    bad = np.flatnonzero((flat != 0) & (flat != 1))  # NaN compares unequal: bad too
    if len(bad):
        # numpy's own text: the shortest that reads back in the label's dtype (float32's
        # 1.0000001 too), as histocore.io.number_text; ':g' named it 'label 1'
        label = str(flat[bad[0]]).removesuffix(".0")
        row = bad[0] if rows is None else rows[bad[0]]
        rows_bad = f"{len(bad)} bad row{'' if len(bad) == 1 else 's'}"
        raise DatasetError(f"{where}: row {row}: label {label} is not 0/1 ({rows_bad})")
    return flat.astype(np.int64)


def check_patch_shape(shape: tuple[int, ...], size: int | None, where: str) -> None:
    """Refuse patches that are not ``size`` x ``size`` RGB (None: any size at least 8 px)."""
    h, w = shape[-3], shape[-2]
    if size is not None and (h, w) != (size, size):
        raise DatasetError(f"{where}: patches are {w}x{h} px, expected {size}x{size}")
    if min(h, w) < 8:
        raise DatasetError(f"{where}: patches are {w}x{h} px, too small to be a patch")


if TYPE_CHECKING:  # what a DataLoader takes; at run time no torch import (see below)
    from torch.utils.data import Dataset

    _DatasetBase = Dataset[tuple[np.ndarray, int, str]]
else:
    _DatasetBase = object


class PatchDataset(ABC, _DatasetBase):
    """Random access to labelled RGB patches: ``ds[i]`` is ``(uint8 [H, W, 3], label, id)``.

    A map-style ``torch.utils.data.Dataset[tuple[np.ndarray, int, str]]`` to type checkers,
    so ``DataLoader(open_dataset(path))`` type-checks. At run time it is a plain class
    (importing a reader does not import PyTorch: the command lines check their paths
    first), which a ``DataLoader`` takes as it is (it needs ``__len__`` and
    ``__getitem__`` only); it pickles, and so goes to worker processes, as before."""

    #: Where the data came from (shown in reports).
    source: str = ""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]: ...

    def labels(self) -> np.ndarray:
        """All labels as int64 (readers override this when labels are cheap to read)."""
        return np.array([self[i][1] for i in range(len(self))], dtype=np.int64)

    def ids(self) -> list[str]:
        return [self[i][2] for i in range(len(self))]

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` as uint8 ``[n, H, W, 3]`` (readers override this with one
        sequential read; used to stream data too large to decode into memory)."""
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            items = list(pool.map(self.__getitem__, range(start, stop)))
        shapes = {np.shape(img) for img, _, _ in items}
        if len(shapes) > 1:
            odd = next(pid for img, _, pid in items if np.shape(img) != np.shape(items[0][0]))
            raise DatasetError(
                f"{self.source}: patch {odd!r} differs in shape from the others {sorted(shapes)}"
            )
        return np.stack([np.asarray(img) for img, _, _ in items])

    def load_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Decode everything once: ``(uint8 [N, H, W, 3], int64 [N], ids)``.

        Files are decoded on a small thread pool (image codecs release the GIL), reporting
        progress (:mod:`histocore.progress`); the first bad patch raises
        :class:`DatasetError` here, in the main process, not deep inside a DataLoader worker.
        """
        n = len(self)
        if n == 0:
            raise DatasetError(f"{self.source or 'dataset'}: no patches")
        first = self[0][0]
        require_memory(n * first.nbytes, self.source or "dataset")
        images = np.empty((n, *first.shape), dtype=np.uint8)
        labels = np.empty(n, dtype=np.int64)
        ids: list[str] = []
        workers = min(4, os.cpu_count() or 1)
        with (
            ThreadPoolExecutor(workers) as pool,
            task(f"decoding {self.source or 'dataset'}", n) as shown,
        ):
            for i, (img, label, pid) in enumerate(pool.map(self.__getitem__, range(n))):
                if img.shape != first.shape:
                    raise DatasetError(
                        f"{self.source}: patch {shown_id(pid)} has shape {img.shape}, "
                        f"expected {first.shape}"
                    )
                images[i], labels[i] = img, label
                ids.append(pid)
                if i % 256 == 0:
                    shown.update(completed=i)
        return images, labels, ids


class KnownLabels(PatchDataset):
    """A reader that reads every label and id when it opens (``_labels``: int64 ``[N]``,
    ``_ids``): :meth:`labels` and :meth:`ids` are those, no patch decoded."""

    _labels: np.ndarray
    _ids: list[str]

    def labels(self) -> np.ndarray:
        return self._labels

    def ids(self) -> list[str]:
        return list(self._ids)

    def _row(self, index: int) -> int:
        """``index`` from 0 (a negative one counts from the end, as for a list), or
        :class:`IndexError` outside the dataset (what ends iteration over it)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(index)
        return index % n


class ArrayDataset(KnownLabels):
    """Patches already in memory (decoded caches, synthetic data, tests)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        ids: list[str] | None = None,
        source: str = "array",
    ) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DatasetError(
                f"{source}: expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        n = len(images)
        self.images = images
        self._labels = (
            np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, np.int64)
        )
        if len(self._labels) != n:
            raise DatasetError(f"{source}: {n} images but {len(self._labels)} labels")
        self._ids = ids if ids is not None else [f"{i}" for i in range(n)]
        self.source = source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        return self.images[index], int(self._labels[index]), self._ids[index]

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return self.images[start:stop]

    def load_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        return self.images, self._labels, list(self._ids)
