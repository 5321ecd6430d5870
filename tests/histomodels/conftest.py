"""On a CUDA machine (benchmarks/gpu_check.sh), the tests that compare two runs bit for bit
(same seed, resume, prefetch) need deterministic kernels: cuDNN and cuBLAS pick
non-deterministic ones by default. The CPU path is deterministic as it is and is left alone."""

from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts

import torch

if torch.cuda.is_available():
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
