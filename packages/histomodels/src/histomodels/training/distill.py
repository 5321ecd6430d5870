"""Knowledge distillation from a teacher checkpoint with offline, TTA-averaged soft targets.

Cheapest correct form on a CPU: at setup the teacher (any checkpoint, run folder or shipped
model ``histomodels`` can load, e.g. a fine-tuned EfficientNet-Lite0 ``best.pt`` or an
ensemble) scores every *un-augmented* training patch once, averaging the logits of the 8
dihedral views (:mod:`histomodels.inference`, the path eval uses, with the teacher's own
normalisation and stain settings). The logits are cached in ``RUN/teacher_logits.npz``,
keyed by a hash of the training patches and of the teacher file and by the precision
(bf16 autocast or fp32) and device type the teacher ran with, so a resumed run (or a rerun
on the same data and hardware) does not score them again, and one moved to a GPU, or to a
CPU with other bf16 support, does not reuse targets computed at another precision. Under
``torchrun`` every rank loads the teacher and reads the cache itself; when it must score,
each rank scores its own contiguous block of the patches (the same per-patch TTA), the
logits are gathered in the original order on every rank and rank 0 writes the cache, so no
rank waits in a collective longer than the slowest block takes.

The training targets then carry two columns, the label and the teacher's probability
``sigmoid(teacher / T)``; mixup mixes both, label smoothing touches only the label, and
:class:`DistillLoss` is ``(1 - w) BCE(student, y) + w T^2 BCE(student / T, teacher prob)``.
Because the soft targets come from un-augmented patches, they describe the patch, not the
particular augmented view the student sees.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histomodels import distributed as D
from histomodels.distributed import DistInfo

log = logging.getLogger(__name__)

CACHE_NAME = "teacher_logits.npz"
#: the cache's format: bump when what is cached changes meaning
CACHE_VERSION = "tta8-v1"
#: The most a cache's ``key.npy`` may inflate to (its key is a short string, a few hundred
#: bytes): a larger one declared is refused unread, not inflated (a zip bomb; review 45).
MAX_KEY_BYTES = 1 << 16
#: Room for a ``.npy`` header beside ``n`` float64 logits (the cache holds float32).
NPY_HEADER_BYTES = 4096


class DistillLoss(nn.Module):
    """BCE-with-logits on ``[n, 2]`` targets (label, teacher probability at ``T``).

    ``hard`` holds the last batch's BCE against the labels alone (detached, unweighted: the
    loss ``val_loss`` is), which the trainer reports beside the total."""

    def __init__(self, weight: float, temperature: float) -> None:
        super().__init__()
        self.weight, self.temperature = float(weight), float(temperature)
        self.hard: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        hard = F.binary_cross_entropy_with_logits(logits, target[:, 0])
        soft = F.binary_cross_entropy_with_logits(logits / t, target[:, 1])
        self.hard = hard.detach()
        return (1 - self.weight) * hard + self.weight * t * t * soft


def data_digest(images: Any, chunk: int = 2048) -> str:
    """sha256 of uint8 patches ``[N, H, W, 3]`` (a tensor or a streamed BlockImages)."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    for i in range(0, len(images), chunk):
        part = (
            images[i : i + chunk]
            if isinstance(images, torch.Tensor)
            else images[torch.arange(i, min(i + chunk, len(images)))]
        )
        digest.update(np.ascontiguousarray(part.numpy()).tobytes())
    return digest.hexdigest()


def teacher_digest(teacher: str) -> str:
    """What identifies the teacher: its checkpoint file's sha256, or for a shipped model its
    name and the sha256 of its weights and sidecar (a rebuilt model is another teacher)."""
    from histocore.io import file_sha256
    from histomodels import pretrained
    from histomodels.checkpoint import resolve_checkpoint

    name = pretrained.shipped_name(teacher)  # also where a file of that name is here
    if name is None:
        return file_sha256(resolve_checkpoint(teacher))
    files = (pretrained.HERE / f"{name}{suffix}" for suffix in (".safetensors", ".json"))
    return f"pretrained:{name}:" + ":".join(file_sha256(f) for f in files)


def teacher_logits(
    teacher: str,
    images: Any,
    run_dir: Path | None,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    precision: str = "auto",
    say: Callable[[str], None] = log.info,
    info: DistInfo | None = None,
) -> np.ndarray:
    """The teacher's 8-view TTA logits for ``images``, from ``run_dir``'s cache when it
    matches (same patches, same teacher, same resolved precision and device type), else
    computed and cached there.

    Under ``torchrun`` (``info``) every rank loads the teacher and reads the cache itself
    (a teacher that fails on any rank stops them all: :func:`.distributed.together`); a
    rank that has no valid copy (another node's disk) takes rank 0's. Without one anywhere,
    each rank scores its block of the patches (:func:`histomodels.distributed.span`), every
    rank receives all the logits in order, and rank 0 writes the cache."""
    from histomodels.inference import Predictor

    info = info or DistInfo()
    cache = run_dir / CACHE_NAME if run_dir is not None else None
    with D.together(info):  # a teacher or cache that fails on one rank stops every rank
        pred = Predictor.load(teacher, device=str(device), precision=precision)
        key = ":".join(
            [
                CACHE_VERSION,
                data_digest(images),
                teacher_digest(teacher),
                pred.precision,  # bf16 autocast or fp32, as "auto" resolved on this machine
                pred.device.type,
            ]
        )
        cached = None
        if cache is not None and cache.is_file():
            cached = read_cache(cache, key, len(images), warn=info.is_main)
    if D.any_flag(cached is None, info):  # short: every rank only hashed and read
        cached = D.broadcast(cached, info)  # rank 0's copy, or None: score
    if cached is not None:
        say(f"teacher soft targets: reusing {cache}")
        return cached
    shared = f", split over {info.world_size} processes" if info.enabled else ""
    say(
        f"teacher soft targets: scoring {len(images)} training patches with {teacher} "
        f"(8-view TTA, {pred.precision} on {pred.device.type}{shared})"
    )
    lo, hi = D.span(len(images), info)

    def batches():
        for i in range(lo, hi, batch_size):
            j = min(i + batch_size, hi)
            part = images[i:j] if isinstance(images, torch.Tensor) else images[torch.arange(i, j)]
            yield part.numpy()

    with D.together(info):  # a rank that fails on its block stops all before the gather
        mine = pred.logits(batches(), tta=True).astype(np.float32)
    logits = D.gather_cat(torch.from_numpy(mine), info).numpy()
    if len(logits) != len(images):  # a programmer error: the blocks must tile the patches
        raise RuntimeError(f"gathered {len(logits)} teacher logits for {len(images)} patches")
    with D.together(info):  # rank 0 failing to write the cache stops the others too
        if cache is not None and info.is_main:
            from histocore.io import atomic_write_bytes

            buf = io.BytesIO()
            np.savez(buf, key=np.array(key), logits=logits)
            atomic_write_bytes(cache, buf.getvalue())  # makes the folder (make_parents)
    return logits


def oversized(cache: Path, n: int | None) -> str | None:
    """What in ``cache`` (a zip) declares more than its key (:data:`MAX_KEY_BYTES`) or ``n``
    logits (float64 and a header at most; ``n`` None: the key alone) can take, read from
    its central directory before anything is inflated; None when all fits. Raises what
    opening the zip raises."""
    limits = {"key.npy": MAX_KEY_BYTES}
    if n is not None:
        limits["logits.npy"] = 8 * n + NPY_HEADER_BYTES
    with zipfile.ZipFile(cache) as z:
        for info in z.infolist():
            limit = limits.get(info.filename)
            if limit is not None and info.file_size > limit:
                return f"{info.filename} declares {info.file_size} bytes, more than {limit}"
    return None


def written_by_a_run(path: Path) -> bool:
    """Whether ``path`` is a ``teacher_logits.npz`` a run wrote (:func:`teacher_logits`):
    a zip archive of exactly ``key.npy`` and ``logits.npy``, its key no larger than a key
    is (:func:`oversized`), or one cut short (a full disk, a copy stopped half-way: its zip
    directory lost) that begins as every cache does, with ``key.npy`` stored as ``.npy``
    holding one string (:func:`_begins_as_a_cache`). Only the directory or those first
    bytes are read: one of ours damaged inside is still ours, scored again with a warning
    (:func:`read_cache`).
    One that cannot be opened raises its ``OSError``."""
    try:
        with zipfile.ZipFile(path) as z:
            if sorted(z.namelist()) != ["key.npy", "logits.npy"]:
                return False
        return oversized(path, None) is None
    except (zipfile.BadZipFile, EOFError, ValueError):
        return _begins_as_a_cache(path)


def _begins_as_a_cache(path: Path) -> bool:
    """Whether ``path`` starts as ``np.savez`` starts a cache: a zip's first local header
    naming ``key.npy``, its data stored (not compressed), an ``.npy`` whose header declares
    what a run writes there, one unicode string (``np.array(key)``: dtype ``<U…``, shape
    ``()``). A file of the user's own named so would have to be a numpy archive whose
    ``key`` is a single string."""
    import struct

    from numpy.lib import format as npy

    with open(path, "rb") as fh:
        head = fh.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            return False
        method, name_len, extra_len = (*struct.unpack("<H", head[8:10]),
                                       *struct.unpack("<HH", head[26:30]))  # fmt: skip
        if method != zipfile.ZIP_STORED or fh.read(name_len) != b"key.npy":
            return False
        fh.seek(extra_len, 1)
        try:
            version = npy.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                return False
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read(fh, max_header_size=NPY_HEADER_BYTES)
        except (ValueError, EOFError, SyntaxError, TypeError):
            return False
        return shape == () and dtype.kind == "U"


def read_cache(cache: Path, key: str, n: int, *, warn: bool = True) -> np.ndarray | None:
    """``cache``'s logits when it holds ``n`` of them for ``key``; None for another key (a
    change of data, teacher, precision or device: scored again), and None with a warning
    for a damaged file: truncated or corrupt (the zip's CRC-32 is checked as the logits are
    read), another layout, a member declaring more bytes than its key or ``n`` logits take
    (:func:`oversized`: not inflated), or logits that are not ``n`` finite floats. (A file
    that is not a run's, :func:`written_by_a_run`, is refused before this, by the CLI and
    by the trainer.) The scoring that
    follows replaces the file atomically. ``warn=False``: no warning (a rank other than 0).
    """
    try:
        if too_large := oversized(cache, n):
            raise ValueError(too_large)
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            logits = z["logits"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        if logits.shape == (n,) and logits.dtype.kind == "f" and np.isfinite(logits).all():
            return logits.astype(np.float32)
        problem = f"logits {logits.dtype} {tuple(logits.shape)} for {n} patches, or not finite"
    if warn:
        log.warning("%s: damaged teacher cache (%s); scoring again", cache, problem)
    return None


def distill_targets(
    cfg: Any,
    images: Any,
    labels: torch.Tensor,
    run_dir: Path | None,
    *,
    device: torch.device | str = "cpu",
    say: Callable[[str], None] = log.info,
    info: DistInfo | None = None,
) -> torch.Tensor:
    """``[N, 2]`` training targets: the labels and the teacher's probabilities at
    ``cfg.distill_temperature``, the same on every rank under ``torchrun`` (``info``: the
    ranks score their blocks of the patches, see :func:`teacher_logits`)."""
    logits = teacher_logits(
        cfg.teacher,
        images,
        run_dir,
        device=device,
        batch_size=cfg.eval_batch_size,
        say=say,
        info=info,
    )
    soft = torch.sigmoid(torch.from_numpy(logits) / cfg.distill_temperature)
    return torch.stack([labels.float(), soft.float()], 1)
