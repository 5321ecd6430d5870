"""Stochastic weight averaging (Izmailov et al., 2018) as a training callback.

With ``cfg.swa`` = s, the LR schedule (:class:`~histomodels.training.schedule.LRSchedule`)
anneals to ``swa_lr`` over the first share s of training and stays there; from then on the
weights at the end of every epoch join an equal-weight average
(:class:`torch.optim.swa_utils.AveragedModel`, parameters only). The average's BatchNorm
statistics are recomputed over un-augmented training patches before it is validated
(:func:`~histomodels.training.precise_bn.recompute_batchnorm`, as SWA requires), and it is
the model that validation, early stopping, ``best.pt`` and ``last.pt`` see; ``last.pt``
also keeps the trained weights to resume from. Each history row records how many epochs'
weights the validated model averages (``swa_models``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from torch.optim.swa_utils import AveragedModel

from histomodels import distributed as D
from histomodels.training.base import Callback
from histomodels.training.precise_bn import PreciseBN

if TYPE_CHECKING:
    from histomodels.training.result import TrainResult
    from histomodels.training.trainer import Trainer

log = logging.getLogger("histomodels.training")

#: patches the average's BatchNorm statistics are recomputed over when ``precise_bn`` is 0
DEFAULT_BN_PATCHES = 2048


class SWA(Callback):
    """Average the weights at the end of each epoch of the SWA phase (see the module)."""

    def __init__(self, bn_patches: int) -> None:
        #: recomputes the average's BatchNorm statistics; None when the PreciseBN callback
        #: (``cfg.precise_bn``) already recomputes ``eval_model``'s after this one
        self.bn = PreciseBN(bn_patches, "swa") if bn_patches else None
        self.avg: AveragedModel | None = None
        #: whether the epoch's last step was in the averaging phase (the same on every rank)
        self.phase = False

    def setup(self, trainer: Trainer) -> None:
        self.avg = AveragedModel(trainer.model)
        if self.bn is not None:
            self.bn.setup(trainer)
        state, history = trainer.state, trainer.history
        done = int(history[-1].get("swa_models", 0)) if history else 0
        if state is not None and done:  # resumed inside the averaging phase
            self.avg.module.load_state_dict(state["state_dict"])
            self.avg.n_averaged.fill_(done)  # type: ignore[operator]
            trainer.eval_model = self.avg.module

    def on_step_end(self, trainer: Trainer) -> None:
        averaging = trainer.schedule.averaging()
        if trainer.info.enabled and trainer.cfg.time_budget:
            # each rank measures its own share of the budget: every rank decides alike (here,
            # outside validation's D.together, which must not hold a collective)
            averaging = D.any_flag(averaging, trainer.info)
        self.phase = averaging

    def on_validate_start(self, trainer: Trainer) -> None:
        assert self.avg is not None
        if not self.phase:
            # before the phase; or a run resumed with more epochs, whose phase now starts
            # later: the average so far belongs to another schedule and starts anew
            self.avg.n_averaged.zero_()  # type: ignore[operator]
            trainer.eval_model = trainer.model
            return
        self.avg.update_parameters(trainer.model)
        trainer.eval_model = self.avg.module
        if self.bn is not None:
            self.bn.on_validate_start(trainer)

    def on_epoch_end(
        self, trainer: Trainer, row: dict[str, Any], improved: bool, stop: str | None
    ) -> None:
        if self.avg is not None and trainer.eval_model is self.avg.module:
            row["swa_models"] = int(self.avg.n_averaged)  # type: ignore[arg-type]

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        if not any(row.get("swa_models") for row in trainer.history):
            log.warning(
                "swa: training stopped (%s) before the averaging phase began; nothing was "
                "averaged (lower --swa, or train longer)",
                result.stop_reason,
            )


def swa_callback(swa: float, precise_bn: int) -> SWA | None:
    """The SWA callback for a config (None when ``swa`` is 0)."""
    if not swa:
        return None
    return SWA(0 if precise_bn else DEFAULT_BN_PATCHES)
