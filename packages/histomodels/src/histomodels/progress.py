"""Transient progress bars for long reads and decodes."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress


def transient_progress(quiet: bool = False) -> Progress:
    """A rich bar on stderr that disappears when done; off when ``quiet`` or when stderr is
    not a terminal (so logs of batch jobs get no blank lines or control codes)."""
    console = Console(stderr=True)
    return Progress(transient=True, console=console, disable=quiet or not console.is_terminal)
