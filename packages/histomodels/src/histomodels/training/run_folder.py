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
run reads its data, :func:`refuse_to_replace` refuses a file of those names that the run
did not write (a caller's own ``config.json``, ``history.json``...): the one rule, which
``histomodels train`` also asks before it starts the run, in its own words (``--out``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from histocore.io import make_folders, remove_empty

if TYPE_CHECKING:
    from histomodels.config import TrainConfig

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


#: The most bytes read of a ``config.json`` (judged here, and read by ``train --resume``):
#: a run writes a few KB.
MAX_RUN_CONFIG_BYTES = 4 << 20
#: Keys every ``config.json`` a run wrote holds, from the first version on (it writes the
#: whole ``TrainConfig``; these fields have been there since the first): how
#: :func:`run_config` tells it from a hand-written config, which gives a few
RUN_CONFIG_KEYS = frozenset(
    {"model", "model_config", "weights", "data", "val", "epochs", "patience", "time_budget",
     "batch_size", "eval_batch_size", "lr", "weight_decay", "schedule", "warmup_epochs",
     "min_lr_ratio", "label_smoothing", "grad_clip", "freeze_epochs", "backbone_lr_mult",
     "aug_strength", "hed_jitter", "seed", "bf16", "channels_last", "compile", "threads",
     "device", "progress"}
)  # fmt: skip
#: How a refusal ends unless the caller words it (``histomodels train``: ``--out``).
WOULD = "training would replace it: choose another output folder"


def config_text(cfg: TrainConfig) -> str:
    """The text of a run's ``config.json``: its whole config."""
    import json

    from histocore.io import json_safe

    return json.dumps(json_safe(cfg.to_dict()), indent=2)


def run_config(path: Path) -> bool:
    """Whether ``path`` is a ``config.json`` a training run wrote (the whole ``TrainConfig``
    as a JSON object), judged by its keys, not its bytes: every key a config key
    (:data:`~histomodels.config.FIELDS`) and every key of :data:`RUN_CONFIG_KEYS` there (a
    run writes them all; a hand-written ``--config`` file gives only some). Up to
    :data:`MAX_RUN_CONFIG_BYTES` read; not otherwise."""
    from histocore.io import loads_json, read_capped
    from histomodels.config import FIELDS

    try:
        obj = loads_json(read_capped(path, MAX_RUN_CONFIG_BYTES))
    except (OSError, ValueError):  # RefusedFile, NotJSON: ValueErrors
        return False
    return (
        isinstance(obj, dict)
        and all(isinstance(k, str) and k in FIELDS for k in obj)
        and obj.keys() >= RUN_CONFIG_KEYS
    )


def holds_text(path: Path, text: str) -> bool:
    """Whether the file ``path`` holds exactly ``text`` (read no further than that): a
    ``config.json`` that is the very one a run of that config writes."""
    data = text.encode()
    with open(path, "rb") as fh:
        return fh.read(len(data) + 1) == data


def refuse_to_replace(
    path: Path, config_text: str, teacher: bool, *, would: str = WOULD
) -> None:  # fmt: skip
    """A :class:`~histomodels.training.result.TrainingError` naming the file where a new
    run into ``path`` would replace one it did not write, ending ``<would>, or remove it
    first``. In a folder that holds no trained run (no ``best.pt`` or ``last.pt``): any
    file at one of the names in :data:`WRITTEN` but a ``config.json`` of this very text
    (``config_text``, what the run writes: replacing it loses nothing, say one a run killed
    before its first checkpoint left); a run's ``config.json`` with other settings gets its
    own line (:func:`run_config`: a run's leftover, or a run's config copied there and
    edited, is never replaced). In any folder: a pipe or device at one of those names, and
    with a ``teacher`` a ``teacher_logits.npz`` that is not a run's cache
    (:func:`~histomodels.training.distill.written_by_a_run`: a file of the user's own
    there was taken for a damaged cache and replaced). A library caller's
    ``train(cfg, out=folder)`` got the files of a folder of its own replaced (``config.json``,
    ``history.json``...) when the command line's check was the only one. A trained run's
    files are its own to replace."""
    from histocore.io import holds_a_file, replace_only_ours
    from histomodels.training.distill import CACHE_NAME, written_by_a_run
    from histomodels.training.result import TrainingError

    held = any((path / name).is_file() for name in CHECKPOINTS)
    for name in sorted(WRITTEN):
        target = path / name
        if held or name in CHECKPOINTS:  # only a pipe or device is refused

            def refused(problem: str, target: Path = target) -> TrainingError:
                return TrainingError(f"{target}: {problem}; {would}")

            holds_a_file(target, refused)
            continue

        def ours(file: Path, name: str = name) -> bool:
            return name == CONFIG_NAME and holds_text(file, config_text)

        not_ours = (
            "is not from a run that reached its first checkpoint (no best.pt or last.pt "
            "beside it; a run killed before then leaves its config.json: remove it to "
            "start again)"
        )
        if name == CONFIG_NAME and run_config(target):
            not_ours = (
                "holds a training config with other settings than this run's, and no "
                "best.pt or last.pt beside it (a run killed before its first checkpoint "
                "leaves one; so does a copied run config)"
            )
        replace_only_ours(target, ours, TrainingError, not_ours=not_ours, would=would)
    if teacher:
        replace_only_ours(
            path / CACHE_NAME, written_by_a_run, TrainingError,
            not_ours="is not the teacher's soft targets a run wrote (a numpy .npz of "
            "their key and logits)",
            would=would,
        )  # fmt: skip


def _written(name: str) -> bool:
    """A file a run writes, or the temporary file of its atomic write."""
    from histocore.io import atomic_temp_target

    return name in WRITTEN or atomic_temp_target(name) in WRITTEN | KEPT


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
