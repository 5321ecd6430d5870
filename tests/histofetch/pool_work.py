"""Work functions for pool tests (module-level, so spawned worker processes can import them)
and the child set-up of the Ctrl-C tests."""

from __future__ import annotations

import os
import signal
import time

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
