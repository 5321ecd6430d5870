"""Training levers that change a batch's input and targets (issue 11's recipe), as callbacks.

Each is off by default and switched on by its :class:`~histomodels.config.TrainConfig` key;
each draws from its own generator seeded by ``seed``, epoch and rank, so a run (and a
resumed run) is repeatable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from histomodels.training.base import Callback

if TYPE_CHECKING:
    from histomodels.training.trainer import Trainer


class Mixup(Callback):
    """mixup (Zhang et al., ICLR 2018) within a batch: each sample ``i`` becomes
    ``lam_i x_i + (1 - lam_i) x_j`` with targets mixed the same way, ``j`` a random
    permutation of the batch and ``lam_i ~ Beta(alpha, alpha)`` per sample. The targets are
    soft, which BCE-with-logits takes as they are (label smoothing, applied before, composes:
    both are affine in the targets)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.rng = np.random.default_rng(0)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        seed = int(trainer.cfg.seed)
        self.rng = np.random.default_rng([seed, epoch, trainer.info.rank, 0x6D1])

    def on_batch(self, trainer, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        if n < 2:
            return x, y
        lam = torch.from_numpy(self.rng.beta(self.alpha, self.alpha, n).astype(np.float32))
        perm = torch.from_numpy(self.rng.permutation(n)).to(x.device)
        lam = lam.to(x.device)
        lx = lam.view(n, *([1] * (x.ndim - 1))).to(x.dtype)
        ly = lam.view(n, *([1] * (y.ndim - 1))).to(y.dtype)
        return lx * x + (1 - lx) * x[perm], ly * y + (1 - ly) * y[perm]
