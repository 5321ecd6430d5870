"""Out-of-core training data: read a dataset in contiguous blocks, shuffle blocks and windows.

A dataset too large to decode into memory (PCam's 7 GB train file on a small machine) cannot
be read at random either: gzip-chunked HDF5 read patch by patch serves ~100 patches/s. So
:class:`BlockImages` reads contiguous blocks (one sequential read each, kept in a small
cache) and :meth:`BlockImages.order` visits the blocks in random order, shuffling patches
within a window of ``window`` blocks: every block is read once per epoch while each batch
still mixes patches from ``window`` random places in the file. Memory: ``window + 1``
blocks (default 8 + 1 blocks of 2,048 PCam patches ≈ 250 MB).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from histomodels.data.base import DatasetError, PatchDataset


class BlockImages:
    """Array-like uint8 ``[N, H, W, 3]`` view of a :class:`PatchDataset`, read in blocks.

    Supports ``len``, ``.shape``, slicing and indexing with an integer tensor/array (both
    return a uint8 torch tensor), which is all the trainer needs of its image array.
    """

    def __init__(
        self,
        ds: PatchDataset,
        block: int = 2048,
        window: int = 8,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if block < 1 or window < 1:
            raise ValueError(f"block and window must be >= 1 (got {block}, {window})")
        if len(ds) == 0:
            raise DatasetError(f"{ds.source or 'dataset'}: no patches")
        self.ds, self.block, self.window = ds, int(block), int(window)
        self.transform = transform  # uint8 [n, H, W, 3] -> same, per block read (e.g. stain)
        first = np.asarray(ds[0][0])
        self.shape = (len(ds), *first.shape)
        if first.dtype != np.uint8 or first.ndim != 3 or first.shape[-1] != 3:
            raise DatasetError(
                f"{ds.source}: expected uint8 [H, W, 3] patches, got {first.dtype} {first.shape}"
            )
        self.n_blocks = -(-len(ds) // self.block)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.reads = 0  # blocks read so far (for tests and diagnostics)

    def __len__(self) -> int:
        return self.shape[0]

    def _get_block(self, b: int) -> np.ndarray:
        if b in self._cache:
            self._cache.move_to_end(b)
            return self._cache[b]
        start, stop = b * self.block, min(len(self), (b + 1) * self.block)
        data = np.asarray(self.ds.read_range(start, stop))
        if data.shape != (stop - start, *self.shape[1:]) or data.dtype != np.uint8:
            raise DatasetError(
                f"{self.ds.source}: rows {start}-{stop - 1} read as {data.dtype} "
                f"{list(data.shape)}, expected uint8 {[stop - start, *self.shape[1:]]}"
            )
        self.reads += 1
        if self.transform is not None:
            data = self.transform(data)
        self._cache[b] = data
        while len(self._cache) > self.window + 1:
            self._cache.popitem(last=False)
        return data

    def __getitem__(self, index: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} patches")
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        blocks = idx // self.block
        for b in np.unique(blocks):
            sel = np.flatnonzero(blocks == b)
            out[sel] = self._get_block(int(b))[idx[sel] - b * self.block]
        return torch.from_numpy(out)

    def order(self, generator: torch.Generator) -> torch.Tensor:
        """An epoch's permutation: blocks in random order, patches shuffled within each run
        of ``window`` consecutive (shuffled) blocks."""
        n = len(self)
        parts = []
        blocks = torch.randperm(self.n_blocks, generator=generator)
        for w in range(0, self.n_blocks, self.window):
            idx = torch.cat(
                [
                    torch.arange(b * self.block, min(n, (b + 1) * self.block))
                    for b in blocks[w : w + self.window].tolist()
                ]
            )
            parts.append(idx[torch.randperm(len(idx), generator=generator)])
        return torch.cat(parts)
