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
from histomodels.config import ConfigError, TrainConfig
from histomodels.models import create_model
from histomodels.training.schedule import set_backbone_frozen


def build_model(
    cfg: TrainConfig,
    device: torch.device,
    state: dict[str, Any] | None = None,
    state_path: str | Path = "last.pt",
) -> nn.Module:
    """``cfg.model`` on ``device``: with the weights of ``cfg.weights``, or of ``state`` (a
    resumed ``last.pt``, read from ``state_path``). Call
    :func:`~histomodels.models.registry.check_config` first."""
    # no TypeError caught on either path: check_config has matched the keys and value types
    # against the builder's signature, so one raised while building is a bug in the model code
    if state is not None:  # the config is the file's: the same rebuild as any checkpoint
        weights = state.get("train_state_dict") or state["state_dict"]
        model = build_with_weights(cfg.model, cfg.model_config, weights, state_path,
                                   config_checked=True)  # fmt: skip
    else:
        try:
            model = create_model(cfg.model, weights=cfg.weights, **cfg.model_config)
        except DomainError:
            raise
        except ValueError as exc:  # accepted keys and types, unusable values
            raise ConfigError(f"model_config: cannot build {cfg.model!r} ({exc})") from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


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
