"""DistributedDataParallel support that switches itself on under ``torchrun``.

``torchrun --nproc_per_node N -m histomodels train ...`` sets RANK/WORLD_SIZE; then
each process trains on its own shard of every epoch's permutation, gradients are
averaged by DDP (gloo on CPU, nccl on GPU), validation predictions are gathered, and
only rank 0 writes files. Without those variables everything here is a no-op. The
trainer destroys the process group it joined when training ends (:func:`cleanup`), so a
process can train again or exit cleanly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: this process created the process group (and so destroys it in :func:`cleanup`)
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    owns = not dist.is_initialized()  # a caller's own group is used, and left to it
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, owns_group=owns)


def shard(indices: torch.Tensor, info: DistInfo, *, drop_tail: bool = True) -> torch.Tensor:
    """This rank's share of ``indices``.

    For training the tail is dropped so every rank runs the same number of steps; for
    validation (``drop_tail=False``) every index goes to exactly one rank.
    """
    if not info.enabled:
        return indices
    n = len(indices) // info.world_size * info.world_size if drop_tail else len(indices)
    return indices[:n][info.rank :: info.world_size]


def span(n: int, info: DistInfo) -> tuple[int, int]:
    """This rank's contiguous block ``[lo, hi)`` of ``range(n)``: every index in exactly one
    rank's block, the blocks in rank order (so :func:`gather_cat` of per-block results is
    in the original order) and their sizes within one of each other."""
    return n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when any rank's ``flag`` is true (keeps budget stops in step)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate a (variable-length) CPU tensor from every rank, in rank order."""
    if not info.enabled:
        return t
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (used for stop decisions so ranks stay in step)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Destroy the process group :func:`init_distributed` created (not a caller's own)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
