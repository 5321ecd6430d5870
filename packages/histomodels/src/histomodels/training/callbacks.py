"""Trainer callbacks: everything around the loop that is not the loop.

A callback overrides any of the :class:`~histomodels.training.base.Callback` hooks. The defaults
(:func:`default_callbacks`) give a run its time budget, early stopping, ``history.json`` /
``history.csv``, ``learning_curve.png``, ``best.pt`` / ``last.pt``, per-epoch lines, the
progress bar and, with ``ema``, an exponential moving average of the weights (``swa``:
:mod:`~histomodels.training.swa`). New training levers (gradient accumulation, mixup, ...)
are new callbacks, not edits of the loop.

Hook order per epoch: ``on_epoch_start`` → ``on_batch`` (may change a batch's input and
targets) and ``on_step_end`` after every optimizer step
(return True to end the epoch early) → ``on_validate_end`` (all ranks) → ``should_stop``
and ``on_epoch_end`` (rank 0 only; in list order, so history is on disk before
``last.pt`` names it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from histocore.progress import Task, task
from histomodels import distributed as D
from histomodels.config import TrainConfig
from histomodels.training.base import Callback as Callback  # re-exported
from histomodels.training.levers import Mixup
from histomodels.training.precise_bn import PreciseBN
from histomodels.training.swa import swa_callback

#: The last line of a fit, its result (library callers see it at INFO); ``train``,
#: ``finetune`` and ``tune`` print their result on stdout themselves, and quieten this
#: logger: stdout has the result, stderr the progress (it was said on both).
RESULT_LOG = logging.getLogger("histomodels.training.result")

if TYPE_CHECKING:
    from histomodels.training.trainer import Trainer

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_bce",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "lr",
    "epoch_seconds",
    "elapsed_seconds",
    "train_patches_per_s",
    "val_patches_per_s",
    "frozen_backbone",
)


class TimeBudget(Callback):
    """Stop when the next validation would overrun ``minutes`` (training + validation)."""

    def __init__(self, minutes: float) -> None:
        self.budget_s = minutes * 60.0
        self.reserve = 0.0
        self.hit = False

    def setup(self, trainer: Trainer) -> None:
        self.reserve = len(trainer.x_val) / 500.0  # a first guess of validation seconds

    def resume_stop(self, trainer: Trainer) -> str | None:
        return "budget" if trainer.elapsed_before >= self.budget_s else None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.hit = False

    def on_step_end(self, trainer: Trainer) -> bool:
        self.hit = D.any_flag(trainer.elapsed() + self.reserve >= self.budget_s, trainer.info)
        return self.hit

    def on_validate_end(self, trainer: Trainer) -> None:
        self.reserve = trainer.val_seconds * 1.2 + 1.0  # measured now

    def should_stop(self, trainer: Trainer) -> str | None:
        over = trainer.epoch_elapsed + self.reserve >= self.budget_s
        return "budget" if self.hit or over else None


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a better validation AUC."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def resume_stop(self, trainer: Trainer) -> str | None:
        return self.should_stop(trainer)

    def should_stop(self, trainer: Trainer) -> str | None:
        return "early" if trainer.epoch - trainer.best_epoch >= self.patience else None


class History(Callback):
    """``history.json`` and ``history.csv`` (one row per epoch, written atomically)."""

    def on_epoch_end(self, trainer, row, improved, stop) -> None:
        write_history(trainer.run_dir, trainer.history)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """history.json and history.csv (the columns of :data:`HISTORY_FIELDS`; ``train_bce``
    only where an epoch has it: a run with distillation)."""
    from histocore.io import atomic_write_text

    atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
    fields = [k for k in HISTORY_FIELDS if k != "train_bce" or any(k in r for r in history)]
    lines = [",".join(fields)]
    for row in history:
        lines.append(",".join(str(row.get(k, "")) for k in fields))
    atomic_write_text(run_dir / "history.csv", "\n".join(lines) + "\n")


class Curves(Callback):
    """``learning_curve.png``: losses, validation AUC and accuracy per epoch; with a teacher
    the BCE against the labels (``train_bce``) beside the total loss, as the report's
    curves show it (the total alone, ~1.7 with distillation beside a ``val_loss`` of ~0.7,
    read as overfitting)."""

    KEYS = ("epoch", "train_loss", "train_bce", "val_loss", "val_auc", "val_accuracy")

    def on_epoch_end(self, trainer, row, improved, stop) -> None:
        from histomodels.plots import curves_plot

        rows = [{k: r[k] for k in self.KEYS if k in r} for r in trainer.history]
        curves_plot(rows, trainer.run_dir / "learning_curve.png", title=trainer.cfg.model)


class Checkpoints(Callback):
    """``best.pt`` when validation AUC improves; ``last.pt`` (resumable) every epoch."""

    def on_epoch_end(self, trainer, row, improved, stop) -> None:
        if improved:
            trainer.save(trainer.run_dir / "best.pt")
        trainer.save(trainer.run_dir / "last.pt", resumable=True, finished=stop or "")


class EpochLog(Callback):
    """One line per epoch through :meth:`Trainer.say`, and a last one (``stopped (…); best val
    AUC … → best.pt``, rank 0 only) to :data:`RESULT_LOG`, its own logger, which the CLIs
    quieten as they print the result themselves. With a teacher (and
    a ``distill_weight`` over 0) the training loss includes the distillation term
    (``w·T²·BCE`` on the soft targets: ~1.7 beside a ``val_loss`` of ~0.7, which is the BCE
    alone), and the line says so and gives the BCE against the labels alone beside it:
    ``loss (with distillation) 1.7012  bce 0.5231``."""

    def on_epoch_end(self, trainer, row, improved, stop) -> None:
        # the validation metrics unrounded, as the last line and the CLI's print them: the
        # row's 5-digit values rounded again read 0.6822 for an accuracy of 0.682146
        m = {**row, **trainer.last_metrics}
        # a weight of 0 leaves the BCE alone
        loss = "loss (with distillation)" if trainer.distilled else "loss"
        bce = f"  bce {row['train_bce']:.4f}" if "train_bce" in row else ""
        trainer.say(
            f"epoch {row['epoch']:3d}  {loss} {row['train_loss']:.4f}{bce}"
            f"  val_loss {m['val_loss']:.4f}"
            f"  val_auc {m['val_auc']:.4f}  acc {m['val_accuracy']:.4f}"
            f"  lr {row['lr']:.2g}  {row['train_patches_per_s']:.0f} p/s"
            f"{'  *' if improved else ''}"
        )

    def on_fit_end(self, trainer, result) -> None:
        if trainer.info.is_main:  # the result: its own logger, which the CLIs quieten
            RESULT_LOG.info(
                "stopped (%s); best val AUC %.4f at epoch %s → %s",
                result.stop_reason, trainer.best_auc, result.best_epoch,
                trainer.run_dir / "best.pt",
            )  # fmt: skip


class ProgressBar(Callback):
    """Each epoch's batches as a :func:`histocore.progress.task` on rank 0 (shown on stderr
    when a CLI wraps training in :func:`histocore.cli.progress`; silent otherwise)."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.task: Task | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if trainer.info.is_main:
            desc = f"epoch {epoch}/{trainer.cfg.epochs}"
            self.task = self.stack.enter_context(task(desc, trainer.batches_per_epoch))

    def on_step_end(self, trainer: Trainer) -> None:
        if self.task is not None:
            loss = trainer.loss_sum / max(trainer.seen, 1)
            desc = f"epoch {trainer.current_epoch}/{trainer.cfg.epochs} loss {loss:.3f}"
            if trainer.distilled:
                desc += f" bce {trainer.bce_sum / max(trainer.seen, 1):.3f}"
            self.task.advance()
            self.task.update(description=desc)

    def on_validate_end(self, trainer: Trainer) -> None:
        self.task = None
        self.stack.close()  # the epoch's batches are done: its last line (if any) shows

    def close(self, trainer: Trainer) -> None:
        """Also called while an error (divergence, out of memory, Ctrl-C) ends training: the
        epoch's task then exits with that error, so it prints no "done" line before the
        ``error:`` line."""
        self.task = None
        self.stack.__exit__(*sys.exc_info())


class LabelSmoothing(Callback):
    """Pull training targets toward 0.5: ``y (1 - amount) + amount / 2``."""

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def on_batch(self, trainer, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        if y.ndim == 2:  # distillation: (label, teacher probability); smooth the label only
            return x, torch.cat([y[:, :1] * (1 - self.amount) + 0.5 * self.amount, y[:, 1:]], 1)
        return x, y * (1 - self.amount) + 0.5 * self.amount


class EMA(Callback):
    """Exponential moving average of the weights (timm ``ModelEmaV3``, decay warm-up on).

    With it, validation, early stopping, ``best.pt`` and ``last.pt`` use the averaged
    weights; ``last.pt`` also keeps the raw weights (``train_state_dict``) to resume from.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema: Any = None

    def setup(self, trainer: Trainer) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(trainer.model, decay=self.decay, use_warmup=True)
        state = trainer.state
        if state is not None and "train_state_dict" in state:  # resumed: state_dict is EMA
            self.ema.module.load_state_dict(state["state_dict"])
        trainer.eval_model = self.ema.module

    def on_step_end(self, trainer: Trainer) -> None:
        self.ema.update(trainer.model, step=trainer.schedule.step_count)


def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    """The callbacks every run gets, in order (stop reasons: budget before early)."""
    cbs: list[Callback] = []
    if cfg.label_smoothing:
        cbs.append(LabelSmoothing(cfg.label_smoothing))
    if cfg.mixup:
        cbs.append(Mixup(cfg.mixup))
    if cfg.ema:
        cbs.append(EMA(cfg.ema))
    if swa := swa_callback(cfg.swa, cfg.precise_bn):
        cbs.append(swa)
    if cfg.precise_bn:  # after EMA/SWA: it recomputes the statistics of the averaged weights
        cbs.append(PreciseBN(cfg.precise_bn))
    if cfg.time_budget:
        cbs.append(TimeBudget(cfg.time_budget))
    cbs += [EarlyStopping(cfg.patience), History(), Curves(), Checkpoints(), EpochLog()]
    if cfg.progress:
        cbs.append(ProgressBar())
    return cbs
