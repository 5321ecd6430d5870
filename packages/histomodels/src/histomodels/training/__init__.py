"""Training: a :class:`Trainer` with callbacks, its data loading and LR schedule.

``train(cfg, out, ...)`` is the one-call entry; :class:`Trainer` and
:mod:`~histomodels.training.callbacks` are for changing what happens around the loop.
"""

from histomodels.config import FINETUNE_DEFAULTS
from histomodels.training.callbacks import HISTORY_FIELDS, Callback, default_callbacks
from histomodels.training.data import DataSpec, load_split
from histomodels.training.result import TrainingError, TrainingOutOfMemory, TrainResult
from histomodels.training.trainer import Trainer, train

__all__ = [
    "FINETUNE_DEFAULTS",
    "HISTORY_FIELDS",
    "Callback",
    "DataSpec",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "TrainingOutOfMemory",
    "default_callbacks",
    "load_split",
    "train",
]
