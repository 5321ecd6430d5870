"""Prepare the next training batch in a background thread while the current one trains.

What a ``DataLoader`` with a worker does, kept to what the trainer needs: batch ``b + 1``
is made (indexed, augmented and, for CUDA, copied into pinned memory so the host-to-device
copy can be ``non_blocking``) while the caller trains on batch ``b``. One worker makes the
batches strictly in order, so an augmentation's private generator is drawn from exactly
as without prefetch and the trained weights are the same bit for bit; a batch made ahead
of an early end of the epoch (a time budget) is thrown away, and the next epoch's
augmentation has a fresh generator anyway.

An exception in the worker is raised in the caller when it asks for that batch, with the
worker's traceback. Leaving the ``with`` block (end of epoch, early end, error, Ctrl-C)
waits for the batch in flight, discards it and joins the thread: none outlives an epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

T = TypeVar("T")

THREAD_PREFIX = "histomodels-prefetch"


class Prefetcher(Generic[T]):
    """Iterate ``make(0), ..., make(n - 1)``, making the next item in a background thread
    (``enabled``) or inline (not ``enabled``, the same items in the same order).

    ``device``: a CUDA device is made current in the worker, as in the caller (a new thread
    would start on device 0, creating a context there under ``torchrun``). Use as a context
    manager; iterate once.
    """

    def __init__(
        self,
        make: Callable[[int], T],
        n: int,
        *,
        enabled: bool = True,
        device: torch.device | None = None,
    ) -> None:
        if device is not None and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # the caller's
        self.make, self.n, self.enabled, self.device = make, int(n), enabled, device
        self._pool: ThreadPoolExecutor | None = None
        self._next: Future[T] | None = None

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        if not self.enabled:
            for b in range(self.n):
                yield self.make(b)
            return
        if self.n == 0:
            return
        pool = self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=THREAD_PREFIX, initializer=self._init_worker
        )
        nxt: Future[T] | None = pool.submit(self._make, 0)
        self._next = nxt
        for b in range(self.n):
            assert nxt is not None
            item = nxt.result()  # re-raises the worker's exception, traceback kept
            nxt = self._next = pool.submit(self._make, b + 1) if b + 1 < self.n else None
            yield item

    def close(self) -> None:
        """Discard the batch in flight (waiting for it) and join the worker thread."""
        pool, nxt = self._pool, self._next
        self._pool = self._next = None
        if nxt is not None:
            nxt.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _init_worker(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _make(self, b: int) -> T:
        with torch.no_grad():
            return self.make(b)


def pin(
    images: torch.Tensor, labels: torch.Tensor, on: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch in page-locked memory when ``on`` (for ``non_blocking`` copies to CUDA)."""
    return (images.pin_memory(), labels.pin_memory()) if on else (images, labels)


def use_prefetch(requested: bool | None, device: torch.device) -> bool:
    """``requested``, or by default (None) on for CUDA, where the GPU would otherwise wait
    for the CPU's augmentation, and off on a CPU (measured in docs/histomodels-training.md)."""
    if requested is not None:
        return bool(requested)
    return device.type == "cuda"
