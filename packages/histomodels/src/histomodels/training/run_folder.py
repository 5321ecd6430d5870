"""The run folder's bookkeeping: what was there before a run, and what a run that failed
before its first checkpoint leaves behind (nothing: the folder as it was).

A run that fails before it wrote a checkpoint (bad input, a bug, Ctrl-C) has nothing new to
resume from: :meth:`RunFolder.discard` removes the files a run writes (:data:`WRITTEN`, and
the temporary files of their atomic writes) that were not there before, puts back those
that were (an earlier run's config, history, curve, as regular files: a link there is
replaced by the run's file and not put back; not its checkpoints, which a run writes
only at its first checkpoint), and removes the folders the command created once they are
empty. Only those names are touched: anything else in the folder (another program's files,
even ones made while the run was going) stays, so ``--out`` may point at a folder of your
own. The teacher's soft targets (:data:`KEPT`) stay, in a folder of their own if need be,
for the rerun to reuse. Once this run's checkpoint is on disk, it all stays. Before a new
run reads its data, :meth:`RunFolder.refuse_to_replace` refuses a file of those names that
the run did not write (a Python caller's own ``config.json``, ``history.json``...).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from histocore.io import make_folders, remove_empty

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
#: What a run writes into its folder (histomodels.training): all a failed run may remove.
WRITTEN = frozenset(
    {
        CONFIG_NAME,
        "randstain.json",
        "history.json",
        "history.csv",
        "learning_curve.png",
        "best.pt",
        "last.pt",
    }
)
#: Written last, and from then on the folder is the new run's: never put back.
CHECKPOINTS = frozenset({"best.pt", "last.pt"})
#: What stays even then: the teacher's soft targets (hours of scoring on a large set), valid
#: by their key for a rerun into the same folder; alone they do not look like a run.
KEPT = frozenset({"teacher_logits.npz"})


def _written(name: str) -> bool:
    """A file a run writes, or the temporary file of its atomic write."""
    from histocore.io import atomic_temp_target

    return name in WRITTEN or atomic_temp_target(name) in WRITTEN | KEPT


def _holds(path: Path, text: bytes) -> bool:
    """Whether the file ``path`` holds exactly ``text`` (read no further than that)."""
    with open(path, "rb") as fh:
        return fh.read(len(text) + 1) == text


class RunFolder:
    """``path`` as it was when the run began."""

    def __init__(self, path: Path) -> None:
        self.path = path
        #: the names in the folder before the run (None: the run creates the folder)
        self.before: frozenset[str] | None = None
        #: the small run files there before (config, history, curve...): put back if changed
        self.saved: dict[str, bytes] = {}
        #: the folders the run created, deepest first (``path`` and missing parents), as
        #: :meth:`make` made them: one another process made meanwhile is not among them
        self.created: list[Path] = []
        if path.is_dir():
            self.before = frozenset(os.listdir(path))
            for name in sorted(self.before & (WRITTEN - CHECKPOINTS)):
                entry = path / name
                if entry.is_file() and not entry.is_symlink():
                    self.saved[name] = entry.read_bytes()
        #: a checkpoint of this run is on disk (from then on the folder is the run's)
        self.checkpointed = False

    def refuse_to_replace(self, config_text: str, teacher: bool) -> None:
        """A :class:`~histomodels.training.result.TrainingError` naming the file where a new
        (not resumed) run would replace one it did not write: in a folder that holds no
        trained run (no ``best.pt`` or ``last.pt``), any file at one of the names in
        :data:`WRITTEN` but a ``config.json`` of this very text (``config_text``, what the
        run writes: replacing it loses nothing); with a ``teacher``, a
        ``teacher_logits.npz`` that is not a run's cache
        (:func:`~histomodels.training.distill.written_by_a_run`), in any folder; and a pipe
        or device at one of those names. A library caller's ``train(cfg, out=folder)`` got
        the files of a folder of its own replaced (``config.json``, ``history.json``...):
        the command line's check (``cli/train.py``, which also knows ``--config`` and
        ``--overwrite``) was the only one. A trained run's files are its own to replace."""
        from histocore.io import replace_only_ours
        from histomodels.training.distill import CACHE_NAME, written_by_a_run
        from histomodels.training.result import TrainingError

        would = "training would replace it: choose another output folder"
        if not any((self.path / name).is_file() for name in CHECKPOINTS):
            for name in sorted(WRITTEN - CHECKPOINTS):

                def ours(path: Path, name: str = name) -> bool:
                    return name == CONFIG_NAME and _holds(path, config_text.encode())

                replace_only_ours(
                    self.path / name, ours, TrainingError,
                    not_ours="is not from a run that reached its first checkpoint (no best.pt "
                    "or last.pt beside it; a run killed before then leaves its config.json: "
                    "remove it to start again)",
                    would=would,
                )  # fmt: skip
        if teacher:
            replace_only_ours(
                self.path / CACHE_NAME, written_by_a_run, TrainingError,
                not_ours="is not the teacher's soft targets a run wrote (a numpy .npz of "
                "their key and logits)",
                would=would,
            )  # fmt: skip

    def make(self) -> None:
        """Make the folder (and missing parents), noting those this call made: only they
        go when the run fails. Listed before the run and made later, a folder another
        process made in between was counted as the run's, and removed with it."""
        self.created = make_folders(self.path) + self.created

    def discard(self) -> None:
        """Undo what a run that failed before its first checkpoint wrote (nothing once it
        wrote one)."""
        from histocore.io import atomic_write_bytes

        if self.checkpointed or not self.path.is_dir():
            return
        before = self.before or frozenset()
        for name in sorted(set(os.listdir(self.path)) - before):
            entry = self.path / name
            if _written(name) and (entry.is_symlink() or not entry.is_dir()):
                entry.unlink(missing_ok=True)
                log.debug("removed %s: the run failed before its first checkpoint", entry)
        for name, old in self.saved.items():  # an earlier run's files, as they were
            entry = self.path / name
            if not entry.is_file() or entry.read_bytes() != old:
                atomic_write_bytes(entry, old)
        for folder in remove_empty(self.created):  # a folder that holds anything stays
            log.debug("removed %s: the run failed before its first checkpoint", folder)
