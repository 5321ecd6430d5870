"""Device, precision and thread choices for training and inference.

On CPU, bf16 autocast with channels_last roughly doubles training speed of the plain
scratch CNN (~100 → ~260 patches/s on 2 cores) but slows depthwise-conv networks
(MobileNet, EfficientNet), so "auto" enables it only for the ``cnn`` model. On CUDA,
"auto" means AMP: bf16 where the GPU supports it, else fp16 with a gradient scaler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

import torch

from histocore.errors import UsageError
from histomodels.choices import check_device

log = logging.getLogger(__name__)


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else the local CUDA device (per rank under torchrun), else CPU.

    A requested device this machine does not have (``cuda`` without a GPU, ``cuda:3`` with
    two, a misspelt name) is a :class:`~histocore.errors.UsageError` naming it, not
    PyTorch's driver error when the first tensor moves there."""
    if requested:
        return _checked(requested)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def _checked(requested: str) -> torch.device:
    try:  # the name's syntax: choices.check_device; torch's own parser as the backstop
        device = torch.device(check_device(requested))
    except RuntimeError as exc:
        raise UsageError(f"--device {requested!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {requested}: no CUDA GPU is usable here (torch "
                f"{torch.__version__}); leave --device out to use the CPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s), numbered from 0"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {requested}: Apple MPS is not available here")
    return device


#: What PyTorch needs for deterministic cuBLAS (its reproducibility notes); read when cuBLAS
#: makes its first workspace, so it must be set before the run's first CUDA matmul.
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """While it is open: ``torch.use_deterministic_algorithms(True, warn_only=True)``,
    cuDNN's deterministic kernels without autotuning, and ``CUBLAS_WORKSPACE_CONFIG`` (unless
    already set); the previous settings come back at the end. A no-op when not ``enabled``.

    ``warn_only``: an op with no deterministic CUDA kernel warns (once) instead of failing.
    The one such op in the scratch CNN, the 1x1 adaptive average pool's backward, adds each
    gradient once per input element, so its atomic adds cannot reorder; its warning is
    silenced here."""
    if not enabled:
        yield
        return
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():  # cuBLAS may have chosen its workspace already
            log.warning(
                "deterministic: CUDA was in use before CUBLAS_WORKSPACE_CONFIG was set, so "
                "cuBLAS may stay non-deterministic in this process; set "
                "CUBLAS_WORKSPACE_CONFIG=%s before the first CUDA operation",
                CUBLAS_WORKSPACE,
            )
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="adaptive_avg_pool2d_backward_cuda does not have a deterministic"
            )
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def use_bf16(model_name: str, device: torch.device, requested: bool | None) -> bool:
    """Resolve the ``bf16`` setting (None = auto)."""
    if requested is not None:
        return bool(requested)
    if device.type == "cuda":
        return True
    return model_name == "cnn"


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """Autocast context for ``device`` (a no-op context when disabled)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """A loss scaler only for fp16 autocast on CUDA (bf16 needs none)."""
    if not (amp and device.type == "cuda") or torch.cuda.is_bf16_supported():
        return None
    scaler = torch.amp.GradScaler("cuda")
    return scaler if scaler.is_enabled() else None


def set_threads(threads: int | None) -> None:
    """Limit intra-op threads (use the core count you actually have; see docs)."""
    if threads:
        torch.set_num_threads(int(threads))


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``torch.OutOfMemoryError`` (CUDA, MPS),
    the plain ``RuntimeError`` the CPU allocator raises, or Python's ``MemoryError``."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(m in text for m in _OOM_MESSAGES)


def memory_reason(exc: BaseException) -> str:
    """``exc``'s type and the first line of its message, for a one-line error."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


#: What PyTorch's allocators say when memory runs out (CPU: ``DefaultCPUAllocator: can't
#: allocate memory``; backends without their own error class: ``out of memory``), and what
#: the CUDA libraries say through it when theirs fail: cuBLAS, cuDNN, cuSOLVER and cuFFT
#: (``CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)```), and
#: NCCL under DDP (a ``DistBackendError`` whose ``Last error:`` is ``Cuda failure 'out of
#: memory'`` or ``Failed to CUDA calloc 6291456 bytes``).
_OOM_MESSAGES = (
    "DefaultCPUAllocator",
    "can't allocate memory",
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUFFT_ALLOC_FAILED",
    "Failed to CUDA calloc",
    "Failed to CUDA malloc",
)
