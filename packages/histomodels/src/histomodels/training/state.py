"""What a run saves (checkpoint contents) and what ``--resume`` reads back."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from histocore.io import json_safe
from histomodels.checkpoint import CheckpointError, make_checkpoint, read_checkpoint
from histomodels.config import (
    RESUME_OVERRIDES,
    TrainConfig,
    pin_pre_recipe,
    saved_run_config,
    validate,
)
from histomodels.models.registry import ModelError, check_config
from histomodels.preprocess import IMAGENET_MEAN, IMAGENET_STD
from histomodels.training.result import TrainingError

if TYPE_CHECKING:
    from histomodels.training.trainer import Trainer

log = logging.getLogger(__name__)


def resume_state(cfg: TrainConfig, run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The saved config (with ``cfg``'s :data:`RESUME_OVERRIDES`) and ``last.pt``'s state."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise TrainingError(f"{last}: nothing to resume (no last.pt in the run folder)")
    state = read_checkpoint(last)
    saved = TrainConfig(**saved_run_config(pinned_architecture(state)))
    try:  # its model_config as a config file's is judged: the line names last.pt
        check_config(saved.model, saved.model_config)
    except ModelError as exc:
        raise CheckpointError(f"{last}: {exc}") from None
    keep = {k: getattr(cfg, k) for k in RESUME_OVERRIDES}
    return validate(saved.replace(**keep)), state


def pinned_architecture(state: dict[str, Any]) -> dict[str, Any]:
    """``state``'s train config with the network ``state`` holds: its ``model_config``, any
    recipe key it lacks pinned by :func:`~histomodels.config.pin_pre_recipe`, so a recipe
    default added after the run began (centre pooling) does not change the network."""
    saved = dict(state["train_config"])
    model = saved.get("model") or state["model"]
    arch = dict(state.get("model_config", saved.get("model_config") or {}))
    return {**saved, "model_config": pin_pre_recipe(model, arch)}


def checkpoint(trainer: Trainer, *, resumable: bool = False, finished: str = "") -> dict[str, Any]:
    """The checkpoint of ``trainer.eval_model`` after the last epoch; ``resumable`` adds the
    optimizer, schedule, history, best-so-far, elapsed time, RNG and, when the evaluated
    weights are not the trained ones (EMA), the trained ones as ``train_state_dict``."""
    t, cfg = trainer, trainer.cfg
    extra: dict[str, Any] = {}
    if resumable:
        extra = dict(
            optimizer=t.optimizer.state_dict(),
            scheduler=t.schedule.state_dict(),
            history=t.history,
            best_auc=t.best_auc,
            best_epoch=t.best_epoch,
            best_metrics=t.best_metrics,
            elapsed_seconds=t.epoch_elapsed,
            rng=torch.get_rng_state(),
            # dropout on a GPU draws from the device's generator: without its state a
            # resumed CUDA run drew other masks than the run it continues
            cuda_rng=torch.cuda.get_rng_state(t.device) if t.device.type == "cuda" else None,
            finished=finished,
        )
        if t.eval_model is not t.model:
            extra["train_state_dict"] = {
                k: v.detach().cpu() for k, v in t.model.state_dict().items()
            }
    return make_checkpoint(
        t.eval_model,
        cfg.model,
        dict(cfg.model_config),
        metrics=t.last_metrics,
        epoch=t.epoch,
        input_size=int(t.x_train.shape[1]),
        normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        train_config=json_safe(cfg.to_dict()),
        world_size=t.info.world_size,
        stain=t.stain.to_dict() if t.stain is not None else None,
        **extra,
    )


def restore_rng(state: dict[str, Any], device: torch.device, last: Path) -> None:
    """Continue the generators :func:`checkpoint` saved: the CPU's (a state torch refuses is
    a TrainingError naming ``last``) and, on CUDA, the device's, which draws dropout masks
    there (one torch refuses is warned, and the seed's draws go on)."""
    if "rng" in state:
        try:
            torch.set_rng_state(state["rng"])
        except (RuntimeError, TypeError) as exc:  # a damaged or foreign last.pt
            raise TrainingError(
                f"{last}: its random generator state cannot be restored ({exc}); "
                "--overwrite trains anew"
            ) from None
    cuda_rng = state.get("cuda_rng")
    if device.type == "cuda" and cuda_rng is not None:
        try:
            torch.cuda.set_rng_state(cuda_rng, device)
        except (RuntimeError, TypeError) as exc:
            log.warning("%s: its CUDA generator state cannot be restored (%s); dropout draws "
                        "differ from the run's", last, exc)  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
