"""``train(config, out, ...)``: the one-call training entry (the loop lives in
:mod:`histomodels.training`)."""

from __future__ import annotations

from histomodels.training import DataSpec, TrainingError, TrainResult, load_split, train

__all__ = ["DataSpec", "TrainResult", "TrainingError", "load_split", "train"]
