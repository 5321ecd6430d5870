"""DistributedDataParallel support that switches itself on under ``torchrun``.

``torchrun --nproc_per_node N -m histomodels train ...`` sets RANK/WORLD_SIZE; then
each process trains on its own shard of every epoch's permutation, gradients are
averaged by DDP (gloo on CPU, nccl on GPU), validation predictions are gathered, and
only rank 0 writes files. Without those variables everything here is a no-op. The
trainer destroys the process group it joined when training ends (:func:`cleanup`), so a
process can train again or exit cleanly.

Ranks may also be started by hand (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT`` and optionally ``LOCAL_RANK`` in each one's environment); rank 0 then hosts
the rendezvous store. One rank's failure stops every rank promptly, whoever launched them:

- before joining (bad options, a missing file on one node): :func:`report_early_failure`
  posts it to the rendezvous store, where :func:`init_distributed` of the others reads it
  (they would otherwise wait in the join for :func:`join_timeout`, 10 minutes);
- after joining: everything a rank can fail at between two collectives runs in
  :func:`together`, which ends with every rank agreeing (one small all-reduce) whether any
  failed; then the failed rank raises its own error and the others :class:`RankFailed`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from histocore.errors import DomainError

log = logging.getLogger(__name__)

#: how long ranks wait for each other to join, unless ``HISTOMODELS_JOIN_TIMEOUT`` (seconds)
#: says otherwise: torchrun's own rendezvous default. It was torch's process-group timeout,
#: 30 minutes, which rank 0 waited out for a rank that failed before rank 0's store was up
#: (its report found no store to post to).
JOIN_TIMEOUT = timedelta(minutes=10)
#: the environment variable that sets the join wait (seconds), for ranks started further apart
JOIN_TIMEOUT_VAR = "HISTOMODELS_JOIN_TIMEOUT"
#: the range of ``HISTOMODELS_JOIN_TIMEOUT`` seconds: ``MIN <= seconds < MAX``
JOIN_TIMEOUT_MIN, JOIN_TIMEOUT_MAX = 0.001, 10**7
#: how long a rank that failed before joining waits to tell the others (then it exits)
REPORT_WAIT = timedelta(seconds=60)


class RankFailed(DomainError, RuntimeError):
    """Another rank failed (its own error line says why): this one stops too."""


class DistError(DomainError, ValueError):
    """The environment does not describe a usable process group."""


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


def _env() -> tuple[int, int] | None:
    """(rank, world size) from the environment; None for a single process."""
    world = os.environ.get("WORLD_SIZE", "1")
    try:
        if int(world) <= 1:
            return None
        return int(os.environ["RANK"]), int(world)
    except (KeyError, ValueError):
        raise DistError(
            f"WORLD_SIZE={world} needs RANK (0 to WORLD_SIZE - 1) as well: start the ranks "
            "with torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each"
        ) from None


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that torchrun (or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set
    by hand) describes; a no-op for a single process. Raises :class:`RankFailed` when
    another rank failed before joining (:func:`report_early_failure`)."""
    env = _env()
    if env is None:
        return DistInfo()
    rank, world = env
    local = int(os.environ.get("LOCAL_RANK", rank))
    owns = not dist.is_initialized()  # a caller's own group is used, and left to it
    if owns:
        store = _start(rank, world, failure=None)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        prefixed = dist.PrefixStore("default_pg", store)  # as init_process_group's own
        dist.init_process_group(backend=backend, store=prefixed, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, owns_group=owns)


_started = False  # this process has posted its start status (joined, or reported failure)
_joins = 0  # process groups this process joined (each join has its own store keys)


def join_timeout() -> timedelta:
    """How long ranks wait for each other to join: ``HISTOMODELS_JOIN_TIMEOUT`` seconds
    (from 1 ms, under 116 days) when set, else :data:`JOIN_TIMEOUT`."""
    raw = os.environ.get(JOIN_TIMEOUT_VAR, "").strip()
    if not raw:
        return JOIN_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    # NaN fails too; TCPStore counts whole milliseconds (below 1 ms it times out after
    # "0ms" at once), and 10^7 s (116 days) keeps timedelta sane
    if not JOIN_TIMEOUT_MIN <= seconds < JOIN_TIMEOUT_MAX:
        raise DistError(
            f"{JOIN_TIMEOUT_VAR}={raw}: expected a positive number of seconds, "
            f"at least {JOIN_TIMEOUT_MIN:g} (1 ms) and under {JOIN_TIMEOUT_MAX} (116 days)"
        )
    return timedelta(seconds=seconds)


def _store(rank: int, world: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store: torchrun's agent store, else one rank 0 hosts (not waiting in
    C++ for the others, so the join below stays interruptible)."""
    try:
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        raise DistError(
            "MASTER_ADDR and MASTER_PORT (rank 0's address and a free port) must be set in "
            "every rank's environment when ranks are started by hand"
        ) from None
    return dist.TCPStore(
        addr, port, world, is_master=_hosts_store(rank), timeout=timeout,
        wait_for_workers=False, multi_tenant=True,
    )  # fmt: skip


def _store_up(timeout: timedelta) -> bool:
    """Whether the rendezvous store at MASTER_ADDR:MASTER_PORT accepts connections within
    ``timeout``; polled in Python, where torch's client, whose connect gives up only after
    ``timeout``, prints a C++ error and stack on stderr for every failed try."""
    try:
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        return True  # _store says what is missing
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        try:
            with socket.create_connection((addr, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _agent_store() -> bool:
    """torchrun's agent hosts the store (at MASTER_ADDR:MASTER_PORT)."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def _hosts_store(rank: int) -> bool:
    """Rank 0 hosts the store, unless torchrun's agent does."""
    return rank == 0 and not _agent_store()


def _start(rank: int, world: int, failure: str | None) -> dist.Store:
    """Post this rank's start status (None: ready) to the rendezvous store and read every
    rank's; raise :class:`RankFailed` when one failed. Rank 0 hosting the store, or under
    torchrun every rank (torchrun stops the others once one exits), waits until all ranks
    have read them, so none leaves before the others know."""
    global _started, _joins
    # first: a bad HISTOMODELS_JOIN_TIMEOUT fails this rank before it starts, so its
    # report (with REPORT_WAIT) still tells the others
    timeout = join_timeout() if failure is None else REPORT_WAIT
    _started, _joins = True, _joins + 1
    if failure is not None and not _hosts_store(rank) and not _store_up(timeout):
        raise DistError(f"the rendezvous store did not come up within {timeout}")
    store = _store(rank, world, timeout)
    run = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # torchrun's store outlives a try
    box = dist.PrefixStore(f"histomodels/start/{run}/{_joins}", store)
    box.set(str(rank), failure or "")
    keys = [str(r) for r in range(world)]
    _wait(lambda: box.check(keys), timeout, f"all {world} ranks did not join")
    failed = [(r, box.get(str(r)).decode()) for r in range(world)]
    box.add("read", 1)
    if _hosts_store(rank) or _agent_store():  # none leaves before all have read them
        _wait(lambda: int(box.add("read", 0)) >= world, timeout, "a rank left while joining")
    failed = [(r, why) for r, why in failed if why and r != rank]
    if failed and failure is None:
        r, why = failed[0]
        raise RankFailed(f"rank {r} of {world} failed before joining the process group: {why}")
    return store


def _wait(done: Callable[[], bool], timeout: timedelta, problem: str) -> None:
    """Poll ``done`` (in Python, so Ctrl-C stops the wait) until ``timeout``."""
    deadline = time.monotonic() + timeout.total_seconds()
    while not done():
        if time.monotonic() > deadline:
            raise DistError(
                f"{problem} within {timeout}: start every rank with the same WORLD_SIZE, "
                f"MASTER_ADDR and MASTER_PORT (and each its own RANK); {JOIN_TIMEOUT_VAR}="
                "SECONDS waits longer for ranks started further apart"
            )
        time.sleep(0.05)


def report_early_failure(exc: BaseException) -> None:
    """Tell the other ranks that this one fails with ``exc`` before joining the process
    group (so they stop instead of waiting for it), and wait until they have read it; a
    no-op for a single process or a clean exit, or once this process joined or reported."""
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return
    if _started or dist.is_initialized():
        return
    try:
        env = _env()
    except DistError:
        return
    if env is None:
        return
    why = "see its own error line" if isinstance(exc, SystemExit) else _describe(exc)
    try:
        _start(*env, failure=why)
    except (DomainError, RuntimeError) as err:  # the store is gone or never came: give up
        # quietly: the rank's own error line is all it prints (a rank 0 started later still
        # waits for it in the join; -v shows this line)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.debug("could not tell the other ranks that this one failed (%s)", first)


@contextlib.contextmanager
def failing_early() -> Iterator[None]:
    """Run a rank's start (options, config, file checks) and report a failure in it to the
    other ranks (:func:`report_early_failure`); the failure itself goes on unchanged."""
    try:
        yield
    except BaseException as exc:
        report_early_failure(exc)
        raise


def _describe(exc: BaseException) -> str:
    """A failure as the other ranks report it: a domain error's message, a bug's type."""
    from histocore.errors import describe
    from histomodels.training.result import TrainingError

    if isinstance(exc, DomainError | OSError | TrainingError):
        return describe(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__} (a bug: see its traceback)"


@contextlib.contextmanager
def together(info: DistInfo) -> Iterator[None]:
    """Run the block on every rank, then agree whether it failed on any: a rank whose block
    raised re-raises its error, every other rank raises :class:`RankFailed` naming the
    first that failed. One small all-reduce when all went well. The block must not hold a
    collective itself (a failed rank would not reach it)."""
    try:
        yield
    except Exception as exc:
        _settle(exc, info)
        raise
    _settle(None, info)


def _settle(error: BaseException | None, info: DistInfo) -> None:
    if not info.enabled:
        return
    flag = torch.tensor([0.0 if error is None else 1.0], device=_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() == 0:
        return
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, None if error is None else _describe(error))
    if error is None:
        rank, why = next((r, w) for r, w in enumerate(parts) if w is not None)
        raise RankFailed(f"rank {rank} of {info.world_size} failed: {why}")


def _device() -> torch.device:
    """Where a collective's tensors live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
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
