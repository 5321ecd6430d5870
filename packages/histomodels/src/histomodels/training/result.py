"""What a training run reports back, and the error it raises when it cannot run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


class TrainingOutOfMemory(TrainingError, MemoryError):
    """Memory ran out in a training or validation batch: the batch size is too large for
    the machine (the message names it), not a bug. ``what`` says what ran out and why,
    ``key`` the config key to lower (``batch_size``, ``eval_batch_size``); the message is
    ``what``, then how to lower it with ``train``'s options (``tune`` says its own)."""

    def __init__(self, what: str, key: str) -> None:
        self.what, self.key = what, key
        option = f" (--{key.replace('_', '-')})" if key == "batch_size" else ""
        super().__init__(f"{what}; try a smaller {key}{option}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: rebuilt from both
        return type(self), (self.what, self.key)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    stop_reason: str  # early | budget | epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    train_patches_per_s: float = 0.0
    val_patches_per_s: float = 0.0
    train_seconds: float = 0.0


@dataclass
class EpochStats:
    """One epoch's training pass (before validation)."""

    loss: float
    seen: int
    seconds: float
    lr: float
    budget_hit: bool = False
    #: with distillation: the BCE against the labels alone (the part of ``loss`` that is)
    bce: float | None = None
