"""The callback interface: the hooks the :class:`~histomodels.training.trainer.Trainer` calls.

Below every callback module (:mod:`~histomodels.training.callbacks`,
:mod:`~histomodels.training.levers`), so each can subclass it without importing the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from histomodels.training.result import TrainResult
    from histomodels.training.trainer import Trainer


class Callback:
    """No-op hooks; subclasses override what they need."""

    def setup(self, trainer: Trainer) -> None:
        """Model, optimizer and any resumed state are ready; the loop has not started."""

    def resume_stop(self, trainer: Trainer) -> str | None:
        """On resume: the reason the saved run had already stopped, if any."""
        return None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch(
        self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input and float targets of a training batch, before the forward pass
        (where mixup, cut-outs or label smoothing change them)."""
        return x, y

    def on_step_end(self, trainer: Trainer) -> bool | None:
        """After each optimizer step; True ends the epoch (then it is validated)."""
        return None

    def on_validate_start(self, trainer: Trainer) -> None:
        """Every rank, before ``eval_model`` scores the validation split."""

    def on_validate_end(self, trainer: Trainer) -> None: ...

    def should_stop(self, trainer: Trainer) -> str | None:
        """Rank 0, after validation: a stop reason, or None to go on."""
        return None

    def on_epoch_end(
        self, trainer: Trainer, row: dict[str, Any], improved: bool, stop: str | None
    ) -> None:
        """Rank 0: the epoch's history ``row`` is recorded; write what it needs."""

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None: ...

    def close(self, trainer: Trainer) -> None:
        """Always called (all ranks), also when training fails."""
