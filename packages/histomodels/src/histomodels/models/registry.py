"""timm-style registry: ``@register_model`` on a builder, ``create_model(name, **cfg)``.

This module holds only the table and its lookups; the zoo modules (``cnn``, ``timm_zoo``,
``torchvision_zoo``, ``ensemble``) import it to register their builders, and the package's
``__init__`` imports the zoo, so the table is full whenever ``histomodels.models`` (or any
module in it) has been imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from histocore.errors import DomainError


class ModelError(DomainError, ValueError):
    """An unknown model name."""


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, *, prefix: bool = False) -> Callable:
    """Register ``fn(**cfg) -> nn.Module`` under ``name`` (or every ``name/<x>`` if prefix)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        (_PREFIXES if prefix else _REGISTRY)[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model with a single-logit head."""
    if name in _REGISTRY:
        return _REGISTRY[name](**cfg)
    head, _, rest = name.partition("/")
    if rest and head in _PREFIXES:
        return _PREFIXES[head](rest, **cfg)
    known = ", ".join(list_models() + [f"{p}/<name>" for p in _PREFIXES])
    raise ModelError(f"unknown model {name!r}; known: {known}")


#: Keyword arguments a checkpoint may pass to ``timm.create_model`` for ``timm/<name>``:
#: architecture shape only. Anything else (``pretrained_cfg_overlay``, ``checkpoint_path``,
#: ``pretrained``...) could make timm read another file or go to the hub.
TIMM_CONFIG_KEYS = frozenset(
    {
        "input_size", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
        "mlp_ratio", "init_values", "reg_tokens", "no_embed_class", "class_token",
        "global_pool", "dynamic_img_size", "qkv_bias", "drop_rate", "drop_path_rate",
    }
)  # fmt: skip
#: Builder arguments that fetch weights: never taken from a file.
_WEIGHT_KEYS = frozenset({"pretrained", "weights"})


def config_keys(name: str) -> frozenset[str]:
    """Architecture keyword arguments model ``name`` accepts from a checkpoint's config."""
    if name in _REGISTRY:
        params = inspect.signature(_REGISTRY[name]).parameters.values()
        named = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
        return frozenset(named - _WEIGHT_KEYS)
    head, _, rest = name.partition("/")
    if rest and head == "timm":
        return TIMM_CONFIG_KEYS
    if rest and head in _PREFIXES:
        params = list(inspect.signature(_PREFIXES[head]).parameters.values())[1:]
        named = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
        return frozenset(named - _WEIGHT_KEYS)
    raise ModelError(f"unknown model {name!r}")


def check_config(name: str, config: dict[str, Any]) -> None:
    """Refuse a ``model_config`` key model ``name`` does not accept (:func:`config_keys`):
    a model trained with it could not be built again from its checkpoint."""
    allowed = config_keys(name)
    for key in config:
        if key not in allowed:
            takes = ", ".join(sorted(allowed)) or "none"
            raise ModelError(
                f"model_config key {key!r}, which {name} does not accept (it takes: {takes})"
            )
