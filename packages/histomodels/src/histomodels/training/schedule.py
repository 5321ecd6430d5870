"""Learning-rate schedule and AdamW parameter groups (timm underneath where it does the job).

The cosine curve is timm's :class:`~timm.scheduler.CosineLRScheduler`; around it this
module adds what timm's schedulers lack: progress measured as the larger of steps done and
time-budget used (a budgeted run still anneals before it stops), a linear warm-up that
reaches the peak on the last warm-up step, and a resumable reduce-on-plateau.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from histocore.io import number_text
from histomodels.config import TrainConfig
from histomodels.models.weights import split_parameters


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: backbone/head x decay/no-decay (timm's rule: 1-d tensors, i.e. norms and
    biases, are not decayed). ``lr_mult`` scales each group's learning rate."""
    from timm.optim import param_groups_weight_decay  # timm's import (~4 CPU s) when used

    by_decay = sorted(
        param_groups_weight_decay(model, cfg.weight_decay, weight_decay_exclude_1d=True),
        key=lambda g: -g["weight_decay"],  # decayed group first, as checkpoints expect
    )
    try:
        _, head = split_parameters(model)
    except ValueError:
        head = []
    head_ids = {id(p) for p in head}
    groups = []
    for is_head, mult in ((False, cfg.backbone_lr_mult), (True, 1.0)):
        for g in by_decay:
            params = [p for p in g["params"] if (id(p) in head_ids) == is_head]
            if params:
                wd = g["weight_decay"]
                groups.append({"params": params, "weight_decay": wd, "lr_mult": mult})
    return groups


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Switch gradients of everything but the classifier head off (warm-up) or on."""
    backbone, _ = split_parameters(model)
    for p in backbone:
        p.requires_grad_(not frozen)


class LRSchedule:
    """A factor on each group's ``lr x lr_mult``: linear warm-up, then cosine decay (or
    constant, or reduce-on-plateau). Call :meth:`factor` before each optimizer step and
    count the step in ``step_count``; :meth:`epoch_end` feeds the plateau rule."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.total = max(1, cfg.epochs * steps_per_epoch)
        self.warmup = int(cfg.warmup_epochs * steps_per_epoch)
        self.step_count = 0
        self.plateau_scale = 1.0
        self.plateau_best = -math.inf
        self.plateau_bad = 0
        self._span = max(1, self.total - self.warmup)
        #: SWA (``cfg.swa``): the cosine anneals to ``swa_lr`` over the steps before the
        #: averaging phase and stays there; without it the span and floor are the usual ones
        self._swa_start = max(1, round(cfg.swa * self._span)) if cfg.swa else None
        cosine_span, floor = self._span, cfg.min_lr_ratio
        if self._swa_start is not None:
            cosine_span, floor = self._swa_start, cfg.swa_lr
        self._averaging = False
        from timm.scheduler import CosineLRScheduler  # timm's import only when used

        # timm's cosine on a unit learning rate: its value is the factor
        self._unit = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        # a span of one step (e.g. one epoch, all warm-up) makes timm warn that the cosine
        # "will have no effect", which is right and harmless; keep it off the user's screen
        timm_log = logging.getLogger("timm.scheduler.cosine_lr")
        level = timm_log.level
        timm_log.setLevel(logging.ERROR if cosine_span == 1 else level)
        try:
            self._cosine = CosineLRScheduler(
                self._unit, t_initial=cosine_span, lr_min=floor, t_in_epochs=False
            )
        finally:
            timm_log.setLevel(level)

    def factor(self, time_fraction: float = 0.0) -> float:
        """The factor for the next step; ``time_fraction``: share of the time budget used."""
        s = self.step_count
        self._averaging = False
        if self.warmup and s < self.warmup:
            return (s + 1) / self.warmup
        t = max(s - self.warmup, time_fraction * self._span)
        if self._swa_start is not None and t >= self._swa_start:
            self._averaging = True
            return self.cfg.swa_lr
        if self.cfg.schedule == "cosine":
            end = self._span if self._swa_start is None else self._swa_start
            self._cosine.step_update(num_updates=min(t, end))  # type: ignore[arg-type]
            return float(self._unit.param_groups[0]["lr"])
        return self.plateau_scale

    def no_warmup(self) -> str:
        """Why the warm-up ``cfg.warmup_epochs`` asks for does nothing here (its ramp reaches
        the full learning rate on its last step, so one step, or none, is no ramp); ``""``
        when it ramps or none was asked for."""
        if not self.cfg.warmup_epochs or self.warmup > 1:
            return ""
        per = self.total // max(1, self.cfg.epochs)
        steps = f"{per} step{'s' if per != 1 else ''} per epoch"
        what = (
            f"1 optimizer step at {steps}, at the full learning rate"
            if self.warmup
            else (f"no optimizer step at {steps}")
        )
        return (
            f"warmup_epochs {number_text(self.cfg.warmup_epochs)} is {what}: no warm-up; a "
            "longer warmup_epochs or a smaller batch_size gives one"
        )

    def averaging(self) -> bool:
        """Whether the last step was in the SWA phase (``cfg.swa``: its share of training
        after warm-up; never during warm-up)."""
        return self._averaging

    def epoch_end(self, val_auc: float) -> None:
        if self.cfg.schedule != "plateau":
            return
        if val_auc > self.plateau_best + 1e-4:
            self.plateau_best, self.plateau_bad = val_auc, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > max(1, self.cfg.patience // 3):
                self.plateau_scale = max(self.plateau_scale * 0.3, self.cfg.min_lr_ratio)
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, float]:
        return {
            "step_count": self.step_count,
            "plateau_scale": self.plateau_scale,
            "plateau_best": self.plateau_best,
            "plateau_bad": self.plateau_bad,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])
