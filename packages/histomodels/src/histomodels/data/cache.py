"""Memory budgets for decoded data: how much may be decoded into memory at once.

Decoding JPEG/WebP/TIFF per sample, or reading gzip-chunked HDF5 at random, cannot keep
two training cores fed (~100 patches/s); a uint8 array in memory serves thousands per
second, so readers decode everything once (``PatchDataset.load_all``) when it fits
:func:`default_budget`, and refuse (:func:`require_memory`) a file that declares more
patches than the machine can hold.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from histomodels.data.errors import DatasetError

if TYPE_CHECKING:
    from histomodels.data.base import PatchDataset


def available_memory() -> int:
    """Bytes of memory available now (Linux /proc/meminfo; a conservative 4 GiB elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def _address_space_left() -> int | None:
    """Bytes of address space left under ``RLIMIT_AS`` (None when unlimited or unknown)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as fh:
            used = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        return max(0, soft - used)
    except (ImportError, OSError, StopIteration, ValueError):
        return None


def memory_budget() -> int:
    """Largest single allocation allowed for decoded data, in bytes.

    ``HISTOMODELS_MEMORY_BUDGET`` when set, else 80% of the memory available now (and of
    the address space left under ``ulimit -v``), so a file that declares more patches than
    the machine can hold is refused with a message instead of a MemoryError or the OOM killer.
    """
    env = os.environ.get("HISTOMODELS_MEMORY_BUDGET")
    if env:
        return int(float(env))
    room = available_memory()
    left = _address_space_left()
    return int(0.8 * (room if left is None else min(room, left)))


def require_memory(nbytes: int, where: str, what: str = "decoded patches") -> None:
    """Raise :class:`DatasetError` naming ``where`` and the budget if ``nbytes`` is over it."""
    budget = memory_budget()
    if nbytes > budget:
        raise DatasetError(
            f"{where}: {what} need {nbytes / 1e9:.2f} GB of memory, over the budget of "
            f"{budget / 1e9:.2f} GB (set HISTOMODELS_MEMORY_BUDGET=<bytes> to change it)"
        )


def default_budget() -> int:
    """Memory a decoded cache may take: ``HISTOMODELS_CACHE_BYTES`` or half of what is free."""
    env = os.environ.get("HISTOMODELS_CACHE_BYTES")
    return int(env) if env else available_memory() // 2


def decoded_bytes(ds: PatchDataset) -> int:
    """Size of the decoded uint8 array (from the first patch's shape)."""
    if len(ds) == 0:
        return 0
    return len(ds) * int(np.prod(ds[0][0].shape))
