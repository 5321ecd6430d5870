"""The run folder's bookkeeping: what was there before a run, and what a run that failed
before its first checkpoint leaves behind (nothing: the folder as it was).

A run that fails before it wrote a checkpoint (bad input, a bug, Ctrl-C) has nothing new to
resume from: :meth:`RunFolder.discard` removes the folder when the run created it, else the
entries the run added (``config.json``, ``randstain.json``, ``history.*``...) and puts back
the ``config.json`` it rewrote, so a folder that existed before the command, such as a
resumable run, is left as it was. The teacher's soft targets (:data:`KEPT`) stay, in a
folder of their own if need be, for the rerun to reuse. Once this run's checkpoint is on
disk, it all stays.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
#: What stays even then: the teacher's soft targets (hours of scoring on a large set), valid
#: by their key for a rerun into the same folder; alone they do not look like a run.
KEPT = frozenset({"teacher_logits.npz"})


class RunFolder:
    """``path`` as it was when the run began."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: the names in the folder before the run (None: the run creates the folder)
        self.before: frozenset[str] | None = None
        self.config_before: bytes | None = None
        if path.is_dir():
            self.before = frozenset(os.listdir(path))
            config = path / CONFIG_NAME
            self.config_before = config.read_bytes() if config.is_file() else None
        #: a checkpoint of this run is on disk (from then on the folder is the run's)
        self.checkpointed = False

    def discard(self) -> None:
        """Undo what a run that failed before its first checkpoint wrote (nothing once it
        wrote one)."""
        from histocore.io import atomic_write_bytes

        if self.checkpointed or not self.path.is_dir():
            return
        names = set(os.listdir(self.path))
        if self.before is None and not names & KEPT:
            shutil.rmtree(self.path, ignore_errors=True)
            log.debug("removed %s: the run failed before its first checkpoint", self.path)
            return
        for name in sorted(names - (self.before or frozenset()) - KEPT):
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            log.debug("removed %s: the run failed before its first checkpoint", entry)
        config = self.path / CONFIG_NAME
        before = self.config_before
        if before is not None and config.is_file() and config.read_bytes() != before:
            atomic_write_bytes(config, before)
