"""Work functions for pool tests (module-level, so spawned worker processes can import them)
and the child set-up of the Ctrl-C tests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from histocore.manifest import Manifest, Record


def die_reading(manifest: Manifest, rec: Record, *, victim: str) -> None:
    """Kill the worker process reading ``victim`` (what a PDF that crashes MuPDF or eats all
    memory does to its reader: SIGKILL, no exception, no cleanup); others take a moment."""
    if rec.id == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)


def default_sigint() -> None:
    """``preexec_fn`` of a child that a test sends Ctrl-C: SIGINT back to its default.

    A shell starts background jobs (``cmd &``, ``nohup``, a CI runner's) with SIGINT ignored,
    children inherit that, and Python then never raises KeyboardInterrupt — right for a
    user's background job, but the test means a foreground terminal's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish_while_another_dies(manifest: Manifest, rec: Record, *, folder: str) -> None:
    """``good`` ends once the parent is busy (it wrote ``go``); ``victim`` then kills its
    worker (after ``good``'s result is on its way back); the others end at once."""
    marks = Path(folder)
    if rec.id == "good":
        _wait_for(marks / "go")
        (marks / "good-done").touch()
    elif rec.id == "victim":
        _wait_for(marks / "good-done")
        time.sleep(0.5)  # good's result is sent back meanwhile
        (marks / "victim-dying").touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _wait_for(path: Path, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
