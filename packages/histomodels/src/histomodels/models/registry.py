"""timm-style registry: ``@register_model`` on a builder, ``create_model(name, **cfg)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, *, prefix: bool = False) -> Callable:
    """Register ``fn(**cfg) -> nn.Module`` under ``name`` (or every ``name/<x>`` if prefix)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        (_PREFIXES if prefix else _REGISTRY)[name] = fn
        return fn

    return deco


def _load_builtin() -> None:
    # Importing the modules runs their @register_model decorators.
    from histomodels.models import cnn, ensemble, timm_zoo, torchvision_zoo  # noqa: F401


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model with a single-logit head."""
    _load_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name](**cfg)
    head, _, rest = name.partition("/")
    if rest and head in _PREFIXES:
        return _PREFIXES[head](rest, **cfg)
    known = ", ".join(list_models() + [f"{p}/<name>" for p in _PREFIXES])
    raise ValueError(f"unknown model {name!r}; known: {known}")
