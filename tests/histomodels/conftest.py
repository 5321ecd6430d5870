"""On a CUDA machine (benchmarks/gpu_check.sh), the tests that compare two runs bit for bit
(same seed, resume, prefetch) need deterministic kernels: cuDNN and cuBLAS pick
non-deterministic ones by default (``warn_only``: an op with no deterministic kernel warns
instead of failing). On a CPU-only machine nothing is changed; on a GPU machine the setting
is process-wide, so its CPU tests run with it too (``torch.empty`` then fills with NaN)."""

from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts

import torch

if torch.cuda.is_available():
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
