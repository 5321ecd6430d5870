"""Device and precision choices: the "auto" bf16 rule and the autocast/scaler it implies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from histocore.errors import UsageError
from histomodels.device import autocast, grad_scaler, pick_device, set_threads, use_bf16


def test_auto_bf16_on_cpu_only_for_the_scratch_cnn() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("cnn", cpu, None) is True
    assert use_bf16("mobilenetv3_small_100", cpu, None) is False  # depthwise convs slow down
    assert use_bf16("cnn", cpu, False) is False  # an explicit choice wins
    assert use_bf16("efficientnet_b0", cpu, True) is True
    assert use_bf16("efficientnet_b0", torch.device("cuda"), None) is True  # AMP on CUDA


def test_autocast_runs_in_bf16_only_when_enabled() -> None:
    cpu = pick_device("cpu")
    assert cpu == torch.device("cpu")
    a, b = torch.ones(4, 4), torch.ones(4, 4)
    with autocast(cpu, True):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(cpu, False):
        assert (a @ b).dtype == torch.float32
    assert grad_scaler(cpu, True) is None  # bf16 on CPU needs no loss scaling


def test_set_threads_limits_torch_and_none_leaves_it() -> None:
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_device_this_machine_lacks_is_one_usage_error() -> None:
    with pytest.raises(UsageError, match="not a device histomodels runs on"):
        pick_device("cdua")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(UsageError, match="no CUDA GPU" if n == 0 else "numbered from 0"):
        pick_device(f"cuda:{n}")
    for other in ("xla", "meta"):  # names torch knows, devices histomodels does not run on
        with pytest.raises(UsageError, match="not a device histomodels runs on"):
            pick_device(other)
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cli_device_cuda_without_a_gpu_is_one_error_line(tmp_path: Path) -> None:
    """It was PyTorch's driver traceback once the model moved to the GPU."""
    from PIL import Image
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    data = write_h5(tmp_path / "t.h5", 8, seed=1)
    Image.new("RGB", (96, 96), (200, 120, 200)).save(tmp_path / "p.png")
    for cmd in (
        ["eval", "--model", "pcam-cnn", "--data", str(data)],
        ["predict", "--model", "pcam-cnn", str(tmp_path / "p.png")],
    ):
        r = CliRunner().invoke(app, [*cmd, "--device", "cuda", "--out", str(tmp_path / "o")])
        assert r.exit_code == 1, r.output
        assert r.output.startswith("error: --device cuda: no CUDA GPU is usable here"), r.output
        assert len(r.output.splitlines()) == 1 and not (tmp_path / "o").exists()


#: What CUDA libraries raise through PyTorch when their allocations fail, as users met them
#: (NCCL under DDP, cuBLAS creating its handle): none said "out of memory" in a way the
#: classifier knew, so a run that ran out of GPU memory in DDP or in its first matmul ended
#: in a traceback, or a checkpoint was blamed for its config.
NCCL_ALLOC = (
    "NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled cuda error "
    "(run with NCCL_DEBUG=INFO for details), NCCL version 2.20.5\n"
    "ncclUnhandledCudaError: Call to CUDA function failed.\n"
    "Last error:\n"
    "Failed to CUDA calloc 6291456 bytes"
)
NCCL_OOM = NCCL_ALLOC.replace("Failed to CUDA calloc 6291456 bytes", "Cuda failure 'out of memory'")
NCCL_OTHER = NCCL_ALLOC.replace(
    "Failed to CUDA calloc 6291456 bytes", "Cuda failure 1 'invalid argument'"
)
CUBLAS_ALLOC = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
CUDNN_ALLOC = "cuDNN error: CUDNN_STATUS_ALLOC_FAILED"


@pytest.mark.parametrize(
    ("exc", "oom"),
    [
        (torch.distributed.DistBackendError(NCCL_ALLOC), True),
        (torch.distributed.DistBackendError(NCCL_OOM), True),
        (RuntimeError(CUBLAS_ALLOC), True),
        (RuntimeError(CUDNN_ALLOC), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (MemoryError(), True),
        # not memory: another NCCL failure, another cuBLAS status, a shape bug
        (torch.distributed.DistBackendError(NCCL_OTHER), False),
        (
            RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"),
            False,
        ),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x4 and 3x1)"), False),
        (ValueError(CUBLAS_ALLOC), False),  # only torch's RuntimeErrors carry these
    ],
)
def test_out_of_memory_knows_the_cuda_libraries_allocation_failures(
    exc: BaseException, oom: bool
) -> None:
    from histomodels.device import out_of_memory

    assert out_of_memory(exc) is oom
