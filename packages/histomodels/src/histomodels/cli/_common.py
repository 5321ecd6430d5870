"""What every ``histomodels`` command shares: options, the error line, progress, threads.

``fail``, ``errors``, ``progress`` and ``setup_logging`` are the ones both command lines use
(:mod:`histocore.cli`); command modules import them from here and never from
``histomodels.cli`` itself, so the package's ``__init__`` can assemble the app from them.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from histocore.cli import errors, fail, progress, setup_logging

#: Shared by every command that runs a model.
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 [auto: CUDA if available].")]


def use_cpu_cores() -> None:
    """Inference on CPU: use the cores we have (torch's default may oversubscribe)."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


__all__ = ["Device", "errors", "fail", "progress", "setup_logging", "use_cpu_cores"]
