"""The training loop as a :class:`Trainer`: :meth:`~Trainer.setup` once, then per epoch
:meth:`~Trainer.fit_epoch` and :meth:`~Trainer.validate` (their passes are in
:mod:`histomodels.training.epoch`), with callbacks (:mod:`histomodels.training.callbacks`)
for everything around them. The trainer itself is the run's bookkeeping: setup, resume,
the per-epoch record, stop decisions, checkpoints and the run folder.

Each epoch writes the history and then ``last.pt`` (everything needed to resume: weights,
optimizer, schedule, history, RNG, elapsed time), so every ``last.pt`` on disk has its
history beside it; ``best.pt`` when validation AUC improves. A time budget stops cleanly,
reserving time for the final validation. Under ``torchrun`` the same code runs
DistributedDataParallel (see :mod:`histomodels.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histomodels import distributed as D
from histomodels.checkpoint import save_checkpoint
from histomodels.config import TrainConfig, validate
from histomodels.device import (
    deterministic_algorithms,
    grad_scaler,
    pick_device,
    set_threads,
    use_bf16,
)
from histomodels.models.registry import check_config, check_weights
from histomodels.training import epoch as E
from histomodels.training.callbacks import Callback, default_callbacks
from histomodels.training.data import (
    DataSpec,
    describe_split,
    fit_stain_stats,
    prepare_splits,
    warn_shared_patches,
)
from histomodels.training.network import build_model, fit_input_size, given_config, wrap_model
from histomodels.training.prefetch import use_prefetch
from histomodels.training.result import EpochStats, TrainResult
from histomodels.training.run_folder import RunFolder, config_text, refuse_to_replace
from histomodels.training.schedule import LRSchedule, param_groups
from histomodels.training.state import checkpoint, restore_rng, resume_state, seed_everything

log = logging.getLogger(__name__)


class Trainer:
    """Train ``cfg.model`` on ``train_data`` (or ``cfg.data``) into the run folder ``out``.

    ``callbacks`` are added after :func:`~histomodels.training.callbacks.default_callbacks`.
    The per-epoch lines go to the ``histomodels.training.trainer`` logger (a CLI shows them,
    :func:`histocore.cli.setup_logging`) and the progress of each epoch to
    :func:`histocore.progress.task` (shown inside :func:`histocore.cli.progress`).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | Path,
        *,
        train_data: DataSpec | None = None,
        val_data: DataSpec | None = None,
        resume: bool = False,
        callbacks: Sequence[Callback] = (),
        warn_shared: bool = True,
    ) -> None:
        self.cfg = validate(cfg)
        self.warn_shared = warn_shared
        self.run_dir = Path(out)
        self.resume = resume
        self.folder = RunFolder(self.run_dir)  # undone if the run fails before a checkpoint
        self.extra_callbacks = list(callbacks)
        self.callbacks: list[Callback] = []
        self._data = (train_data, val_data)
        self.info = D.DistInfo()
        self.state: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.epoch = self.current_epoch = self.best_epoch = 0
        self.best_auc = -1.0
        self.best_metrics: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self.stop_reason = "epochs"
        self.elapsed_before = self.epoch_elapsed = self.val_seconds = 0.0
        self.t_start = time.perf_counter()
        self.loss_sum, self.bce_sum, self.seen, self.batches_per_epoch = 0.0, 0.0, 0, 0
        self.train_patches, self.train_seconds = 0, 0.0
        self.frozen = False
        self.prefetch = False  # batches made in a background thread (setup: use_prefetch)
        self.stain_stats: Any = None  # randstain's template distribution (fit at setup)
        self.splits_line = ""  # "training on N patches (T tumour), validating on ..." (setup)
        self._ready = False
        self._settings = contextlib.ExitStack()  # process-wide torch settings of this run

    # ------------------------------------------------------------------------- setup

    def setup(self) -> None:
        """Resolve resume, device and precision; load data; build model and optimizer. The
        run's process-wide torch settings (``deterministic``) hold from here until
        :meth:`fit` ends, or are given back at once if setup fails."""
        try:
            self._setup()
        except BaseException:
            self._settings.close()
            raise

    def _setup(self) -> None:
        with D.failing_early():  # ranks waiting for this one to join learn that it failed
            if self.resume:
                self.cfg, self.state = resume_state(self.cfg, self.run_dir)
            else:  # before any data is read: a file of the caller's own is not replaced
                refuse_to_replace(self.run_dir, config_text(self.cfg), bool(self.cfg.teacher))
            # before the run's first CUDA op (the cuBLAS workspace); undone when fit ends
            self._settings.enter_context(deterministic_algorithms(self.cfg.deterministic))
            check_config(self.cfg.model, self.cfg.model_config)  # before any data is decoded
            check_weights(self.cfg.model, self.cfg.weights)
            self.device = pick_device(self.cfg.device)
            self.prefetch = use_prefetch(self.cfg.prefetch, self.device)
        self.info = D.init_distributed(self.device)
        with D.together(self.info):  # data one rank cannot read stops every rank
            set_threads(self.cfg.threads)
            self.bf16 = use_bf16(self.cfg.model, self.device, self.cfg.bf16)
            seed_everything(int(self.cfg.seed))
            (self.x_train, self.y_train), (self.x_val, self.y_val), self.stain = prepare_splits(
                self.cfg, *self._data, say=self.say
            )
            #: said once training starts (:meth:`_fit`), after every up-front input check
            #: (streamed data is decoded as it is read: a bad row of it can still stop a run)
            self.splits_line = (
                f"training on {describe_split(self.y_train)}, "
                f"validating on {describe_split(self.y_val)}"
            )
            if self.info.is_main:  # the first write (randstain, teacher cache, config)
                self.folder.make()  # the folders it made go if the run fails
            main_dir = self.run_dir if self.info.is_main else None
            self.stain_stats = fit_stain_stats(self.cfg, self.x_train, main_dir)
        if self.cfg.teacher:  # [N, 2] targets: label, teacher probability (training/distill.py)
            from histomodels.training.distill import distill_targets

            self.y_train = distill_targets(
                self.cfg,
                self.x_train,
                self.y_train,
                self.run_dir,  # every rank reads the cache; rank 0 alone writes it
                device=self.device,
                say=self.say,
                info=self.info,  # each rank scores its block of the patches
            )
        with D.together(self.info):  # e.g. rank 0 unable to write the run folder
            self._setup_rest()
        if self.info.is_main and self.warn_shared:  # once the run can start: after any data,
            warn_shared_patches(self.x_train, self.x_val)  # model or weights error
        self._ready = True

    def _setup_rest(self) -> None:
        """Model, optimizer, resumed state, callbacks and ``config.json`` (rank 0)."""
        per_rank = len(self.x_train) // self.info.world_size
        #: patches per step: ``batch_size``, or all of a process's share when it is smaller.
        #: ``config.json`` keeps the size asked for: the same command resumes and reproduces.
        self.batch_size = max(1, min(self.cfg.batch_size, per_rank))
        self._setup_model()
        self._setup_optimizer()
        if self.state is not None:
            self._restore(self.state)
        elif self.info.is_main and (why := self.schedule.no_warmup()):
            log.warning(why)  # once, before the first step (not again on --resume)
        self.callbacks = [*default_callbacks(self.cfg), *self.extra_callbacks]
        if self.info.is_main:
            from histocore.io import atomic_write_text

            self.folder.make()  # the folders it made go if the run fails
            atomic_write_text(self.run_dir / "config.json", config_text(self.cfg))
        for cb in self.callbacks:
            cb.setup(self)

    def _setup_model(self) -> None:
        size = int(self.x_train.shape[1])  # the patches the model will see
        given = given_config(self.cfg)  # the user's keys, not fit_input_size's img_size
        if self.state is None:  # a resumed run keeps the config it was built with
            self.cfg = fit_input_size(self.cfg, size)
        model = build_model(
            self.cfg, self.device, self.state, self.run_dir / "last.pt", size, given=given
        )
        self.model: nn.Module = model
        #: the weights validated and saved (callbacks such as EMA replace it)
        self.eval_model: nn.Module = model
        self.net: nn.Module = model

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        n = len(D.shard(torch.arange(len(self.x_train)), self.info))
        self.schedule = LRSchedule(cfg, max(1, n // self.batch_size))
        self.scaler = grad_scaler(self.device, self.bf16)
        self.loss_fn: nn.Module = nn.BCEWithLogitsLoss()
        if cfg.teacher:
            from histomodels.training.distill import DistillLoss

            self.loss_fn = DistillLoss(cfg.distill_weight, cfg.distill_temperature)

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.history = list(state.get("history", []))
        self.epoch = int(state["epoch"])
        self.best_auc = float(state.get("best_auc", -1.0))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.best_metrics = dict(state.get("best_metrics", {}))
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        restore_rng(state, self.device, self.run_dir / "last.pt")
        self.say(f"resuming {self.run_dir} after epoch {self.epoch}")

    # --------------------------------------------------------------------------- loop

    def fit(self) -> TrainResult:
        """Train until the epochs run out or a callback stops it; returns the summary.
        The process group joined under torchrun is destroyed at the end, also on failure; a
        run that fails before its first checkpoint leaves its run folder as it was
        (:meth:`.RunFolder.discard`)."""
        try:
            if not self._ready:
                self.setup()
            return self._fit()
        except BaseException:
            if self.info.is_main:
                self.folder.discard()
            raise
        finally:
            self._settings.close()
            D.cleanup(self.info)

    def _fit(self) -> TrainResult:
        last_epoch = self._last_epoch()
        try:
            self.net = self._wrap(self.epoch < self.cfg.freeze_epochs)
            if self.epoch < last_epoch:  # not before an error: every check of the input ran
                self.say(self.splits_line)
            self.t_start = time.perf_counter()
            for epoch in range(self.epoch + 1, last_epoch + 1):
                if (epoch <= self.cfg.freeze_epochs) != self.frozen:
                    self.net = self._wrap(not self.frozen)
                    self.say("unfreezing the backbone")
                stats = self.fit_epoch(epoch)
                metrics = self.validate()
                stop = None
                with D.together(self.info):  # rank 0 failing to write stops all ranks
                    if metrics is not None:  # rank 0
                        stop = self._end_epoch(epoch, stats, metrics)
                stop, auc = D.broadcast((stop, self.last_metrics.get("val_auc")), self.info)
                if not self.info.is_main:  # ranks keep the same plateau schedule as rank 0
                    self.epoch = epoch
                    self.schedule.epoch_end(auc)
                if stop:
                    self.stop_reason = stop
                    break
        finally:
            for cb in self.callbacks:
                cb.close(self)
        return self._finish()

    def _last_epoch(self) -> int:
        """``cfg.epochs``, or the saved epoch when a resumed run had already stopped."""
        if self.state is None:
            return self.cfg.epochs
        for cb in self.callbacks:
            reason = cb.resume_stop(self)
            if reason:
                self.stop_reason = reason
                break
        last = self.epoch if self.stop_reason != "epochs" else self.cfg.epochs
        if self.epoch >= last:
            self.say(f"{self.run_dir}: already finished ({self.stop_reason}); nothing to do")
        return last

    def _wrap(self, frozen: bool) -> nn.Module:
        """The module the optimizer steps through (:func:`.network.wrap_model`)."""
        self.frozen = frozen
        return wrap_model(self.model, self.cfg, self.info, self.device, frozen=frozen)

    def fit_epoch(self, epoch: int) -> EpochStats:
        """One pass over this rank's shard of a fresh permutation of the training data."""
        return E.fit_epoch(self, epoch)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimizer step on uint8 NHWC ``images``; returns the LR factor it used."""
        return E.train_step(self, images, labels)

    def validate(self) -> dict[str, float] | None:
        """Score ``eval_model`` on the validation split (rank 0 gets the metrics)."""
        return E.validate(self)

    def _end_epoch(self, epoch: int, stats: EpochStats, m: dict[str, float]) -> str | None:
        """Rank 0: record the epoch, ask the callbacks whether to stop, let them write."""
        self.schedule.epoch_end(m["val_auc"])
        self.epoch, self.last_metrics = epoch, m
        self.epoch_elapsed = self.elapsed()
        row = {
            "epoch": epoch,
            "train_loss": round(stats.loss, 5),
            **({} if stats.bce is None else {"train_bce": round(stats.bce, 5)}),
            "val_loss": round(m["val_loss"], 5),
            "val_auc": round(m["val_auc"], 5),
            "val_accuracy": round(m["val_accuracy"], 5),
            "lr": float(f"{stats.lr:.3g}"),
            "epoch_seconds": round(stats.seconds + self.val_seconds, 2),
            "elapsed_seconds": round(self.epoch_elapsed, 2),
            "train_patches_per_s": round(self._rate(stats.seen, stats.seconds), 1),
            "val_patches_per_s": round(self.val_rate, 1),
            "frozen_backbone": self.frozen,
        }
        self.history.append(row)
        improved = m["val_auc"] > self.best_auc
        if improved:
            self.best_auc, self.best_epoch, self.best_metrics = m["val_auc"], epoch, m
        stop = next((r for cb in self.callbacks if (r := cb.should_stop(self))), None)
        if stop is None and epoch >= self.cfg.epochs:
            stop = "epochs"
        for cb in self.callbacks:
            cb.on_epoch_end(self, row, improved, stop)
        return stop

    def _finish(self) -> TrainResult:
        result = TrainResult(
            run_dir=self.run_dir,
            best_epoch=self.best_epoch,
            best_metrics=self.best_metrics,
            epochs_run=len(self.history) if self.info.is_main else self.epoch,
            stop_reason=self.stop_reason,
            history=self.history,
            train_patches_per_s=self.train_patches / max(self.train_seconds, 1e-9),
            val_patches_per_s=self.val_rate,
            train_seconds=self.train_seconds,
        )
        with D.together(self.info):  # also the barrier: every rank waits for rank 0's files
            if self.info.is_main:
                for cb in self.callbacks:
                    cb.on_fit_end(self, result)
        return result

    # ------------------------------------------------------------------------ helpers

    def save(self, path: Path, *, resumable: bool = False, finished: str = "") -> Path:
        """Write ``eval_model`` as a checkpoint; ``resumable`` adds what ``--resume`` needs."""
        written = save_checkpoint(path, checkpoint(self, resumable=resumable, finished=finished))
        self.folder.checkpointed = True
        return written

    def say(self, msg: str) -> None:
        """A line for the user (rank 0), logged at INFO."""
        if self.info.is_main:
            log.info(msg)

    def elapsed(self) -> float:
        """Seconds of this run so far, including those before a resume."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def time_fraction(self) -> float:
        return self.elapsed() / (self.cfg.time_budget * 60.0) if self.cfg.time_budget else 0.0

    @property
    def distilled(self) -> bool:
        """Training on the teacher's soft targets too (a ``distill_weight`` of 0 trains on
        the BCE against the labels alone): the training loss is then not that BCE, which is
        kept beside it (``train_bce``)."""
        return bool(self.cfg.teacher) and self.cfg.distill_weight > 0

    @property
    def val_rate(self) -> float:
        return len(self.x_val) / max(self.val_seconds, 1e-9) if self.val_seconds else 0.0

    def _rate(self, seen: int, seconds: float) -> float:
        return seen * self.info.world_size / max(seconds, 1e-9)


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    train_data: DataSpec | None = None,
    val_data: DataSpec | None = None,
    callbacks: Sequence[Callback] = (),
    warn_shared: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` on ``train_data`` (or ``cfg.data``) and write the run to ``out``.

    ``resume=True`` continues from ``out/last.pt`` (its saved config wins over ``cfg``
    except for :data:`RESUME_OVERRIDES`). ``warn_shared=False``: the caller has said
    whether validation patches are also training patches (``tune``, once for its trials).
    """
    trainer = Trainer(
        cfg,
        out,
        train_data=train_data,
        val_data=val_data,
        resume=resume,
        callbacks=callbacks,
        warn_shared=warn_shared,
    )
    return trainer.fit()
