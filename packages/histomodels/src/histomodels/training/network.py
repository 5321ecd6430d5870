"""The network a run trains: built from the model registry (from the weights source on a
fresh run, from ``last.pt`` on resume) and wrapped for the optimizer step (backbone
freezing, DistributedDataParallel, ``torch.compile``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from histocore.errors import DomainError
from histomodels import distributed as D
from histomodels.checkpoint import build_with_weights
from histomodels.config import RECIPE_MODEL_DEFAULTS, ConfigError, TrainConfig
from histomodels.models import create_model
from histomodels.models.registry import ModelError, check_build, shown_config
from histomodels.training.schedule import set_backbone_frozen


def build_model(
    cfg: TrainConfig,
    device: torch.device,
    state: dict[str, Any] | None = None,
    state_path: str | Path = "last.pt",
    input_size: int | None = None,
) -> nn.Module:
    """``cfg.model`` on ``device``: with the weights of ``cfg.weights``, or of ``state`` (a
    resumed ``last.pt``, read from ``state_path``). Call
    :func:`~histomodels.models.registry.check_config` first.

    A fresh model is first built on the meta device and run on ``input_size`` px patches
    (:func:`~histomodels.models.registry.check_build`: no memory, so a config asking for
    30 GB is refused before it is allocated). When ``cfg.model_config`` holds values the
    user gave (:func:`given_config`), any exception that trial or the build raises is one
    ConfigError naming them; with the defaults alone it is a bug and keeps its traceback."""
    if state is not None:  # the config is the file's: the same rebuild as any checkpoint
        # no TypeError caught: check_config has matched the keys and value types against
        # the builder's signature, so one raised while building is a bug in the model code
        weights = state.get("train_state_dict") or state["state_dict"]
        model = build_with_weights(cfg.model, cfg.model_config, weights, state_path,
                                   config_checked=True)  # fmt: skip
    else:
        given = given_config(cfg)
        try:
            if input_size is not None:
                check_build(cfg.model, cfg.model_config, input_size)
            model = create_model(cfg.model, weights=cfg.weights, **cfg.model_config)
        except DomainError as exc:
            if isinstance(exc, ModelError):
                raise ConfigError(str(exc)) from None
            raise
        except Exception as exc:
            if not given:
                raise
            size = f" for {input_size}x{input_size} px patches" if input_size else ""
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ConfigError(
                f"model_config {shown_config(given)}: cannot build {cfg.model}{size} ({why})"
            ) from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def given_config(cfg: TrainConfig) -> dict[str, Any]:
    """The ``model_config`` values the user gave (a file, ``--model-config``, finetune's
    ``--input-size``): those the training recipe did not set
    (:data:`~histomodels.config.RECIPE_MODEL_DEFAULTS`)."""
    recipe = RECIPE_MODEL_DEFAULTS.get(cfg.model, {})
    return {k: v for k, v in cfg.model_config.items() if k not in recipe or recipe[k] != v}


def wrap_model(
    model: nn.Module, cfg: TrainConfig, info: D.DistInfo, device: torch.device, *, frozen: bool
) -> nn.Module:
    """The module the optimizer steps through: DDP and/or torch.compile around ``model``
    (whose backbone is frozen or unfrozen first when ``cfg.freeze_epochs`` is set)."""
    if cfg.freeze_epochs > 0:
        set_backbone_frozen(model, frozen)
    net: nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        net = DDP(model, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return net
