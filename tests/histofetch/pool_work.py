"""Work functions for pool tests: module-level, so spawned worker processes can import them."""

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
