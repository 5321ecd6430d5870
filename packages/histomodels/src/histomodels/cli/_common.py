"""What every ``histomodels`` command shares: options, the error line, progress, threads.

``fail``, ``errors``, ``progress`` and ``setup_logging`` are the ones both command lines use
(:mod:`histocore.cli`); command modules import them from here and never from
``histomodels.cli`` itself, so the package's ``__init__`` can assemble the app from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from histocore.cli import errors, fail, log_level, progress, setup_logging

#: Shared by every command that runs a model.
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 \\[auto: CUDA if available].")]


def require_paths(*paths: str | Path | None, role: str | None = None) -> None:
    """Fail at once when an input path given on the command line does not exist, before
    PyTorch is imported (seconds): the line the library would give later (``role``: the
    trainer's ``<path>: <role> data not found``; else ``<path>: no such file or folder``)."""
    for raw in paths:
        if raw is None:
            continue
        path = Path(raw) if role else Path(raw).expanduser()
        if not path.exists():
            fail(f"{path}: {role} data not found" if role else f"{path}: no such file or folder")


def use_cpu_cores() -> None:
    """Inference on CPU: use the cores we have (torch's default may oversubscribe)."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


__all__ = [
    "Device",
    "errors",
    "fail",
    "log_level",
    "progress",
    "require_paths",
    "setup_logging",
    "use_cpu_cores",
]
