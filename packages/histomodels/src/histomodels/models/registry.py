"""timm-style registry: ``@register_model`` on a builder, ``create_model(name, **cfg)``.

This module holds only the table and its lookups; the zoo modules (``cnn``, ``timm_zoo``,
``torchvision_zoo``, ``ensemble``) import it to register their builders, and the package's
``__init__`` imports the zoo, so the table is full whenever ``histomodels.models`` (or any
module in it) has been imported.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import operator
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Interval, MaxLen, MinLen
from torch import nn

from histocore.errors import DomainError
from histocore.io import text_shown
from histomodels.choices import MAX_INPUT_SIZE, MIN_INPUT_SIZE

log = logging.getLogger(__name__)


class ModelError(DomainError, ValueError):
    """An unknown model name."""


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}
#: prefix → what is wrong with the name after ``prefix/`` (None: fine), without building it
_NAME_CHECKS: dict[str, Callable[[str], str | None]] = {}
#: name (or prefix) → the named weight sources its builder takes as ``weights=``
_SOURCES: dict[str, tuple[str, ...]] = {}


def register_model(
    name: str,
    *,
    prefix: bool = False,
    name_check: Callable[[str], str | None] | None = None,
    weight_sources: tuple[str, ...] = (),
) -> Callable:
    """Register ``fn(**cfg) -> nn.Module`` under ``name`` (or every ``name/<x>`` if prefix;
    ``name_check(x)`` then says what is wrong with ``x``, or None). ``weight_sources``: the
    names the builder takes as ``weights=`` besides a file path (``imagenet``...)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        (_PREFIXES if prefix else _REGISTRY)[name] = fn
        if prefix and name_check is not None:
            _NAME_CHECKS[name] = name_check
        _SOURCES[f"{name}/<name>" if prefix else name] = weight_sources
        return fn

    return deco


def weight_sources(name: str) -> tuple[str, ...]:
    """The named weight sources model ``name``'s builder takes (none: a file only)."""
    head, _, rest = name.partition("/")
    return _SOURCES.get(f"{head}/<name>" if rest and head in _PREFIXES else name, ())


def weights_problem(name: str, weights: Any) -> str | None:
    """What is wrong with ``weights=`` for model ``name``: a weight source of other models
    (``imagenet`` for the ``cnn``, ``lite0-imagenet`` for a torchvision model) that is no
    file either, said with the sources the model takes and the models that take it; None
    for a source it takes or anything else (a path: its reader says what is wrong)."""
    if not isinstance(weights, str) or weights in weight_sources(name):
        return None
    takers = sorted(model for model, sources in _SOURCES.items() if weights in sources)
    if not takers or Path(weights).exists():
        return None
    own = weight_sources(name)
    takes = f"it takes {', '.join(own)} or a file" if own else "it takes a weights file only"
    return (
        f"no such weights file, and not a weight source of {name} ({takes}); "
        f"{weights!r} is a weight source of {', '.join(takers)}"
    )


#: The files of a source's name already warned about (once per file and process).
_UNREAD_LOCAL: set[str] = set()


def local_weights(name: str, weights: Any) -> Any:
    """``weights`` as model ``name``'s builder is to read it. A name that is one of
    ``name``'s own weight sources (``imagenet``...) is always that source: a file or folder
    of that name in the working folder is not read, and a warning says so once
    (``./imagenet`` reads it), as a shipped model's name always means the shipped model
    (:func:`histomodels.pretrained.shipped_name`). Anything else, as it is (a path)."""
    if not isinstance(weights, str) or not Path(weights).exists():
        return weights
    here = os.path.join(os.curdir, weights)
    if weights in weight_sources(name):  # the source; the builder reads only a path
        seen = os.path.abspath(weights)
        if seen not in _UNREAD_LOCAL:
            _UNREAD_LOCAL.add(seen)
            log.warning(
                "weights %r: %s's weight source of that name; %s in the working folder is "
                "not read (give %s to read it)",
                weights, name, here, here,
            )  # fmt: skip
    return weights


def check_weights(name: str, weights: Any) -> None:
    """:func:`weights_problem` as a WeightsError naming ``weights``, the would-be file."""
    from histomodels.models.weights import WeightsError

    problem = weights_problem(name, weights)
    if problem:
        raise WeightsError(f"{weights}: {problem}")


def name_problem(name: str) -> str | None:
    """What is wrong with model name ``name`` (not registered; a ``prefix/<x>`` whose
    builder does not know ``x``), found without building it; None when it is fine."""
    if name in _REGISTRY:
        return None
    head, _, rest = name.partition("/")
    if rest and head in _PREFIXES:
        check = _NAME_CHECKS.get(head)
        return check(rest) if check is not None else None
    known = ", ".join(list_models() + [f"{p}/<name>" for p in _PREFIXES])
    return f"unknown model; known: {known}"


def list_models(pretrained: bool = False) -> list[str]:
    """The registered model names (``create_model``'s ``name``; ``timm/<name>`` besides),
    sorted. ``pretrained=True``: the names of the models shipped with trained weights
    instead (``["pcam-cnn"]``), each given as ``weights=`` to the architecture it was
    trained as (``create_model("cnn", weights="pcam-cnn")``), or as a checkpoint to
    :meth:`histomodels.inference.Predictor.load`, ``eval``, ``predict`` and ``export``."""
    if pretrained:
        from histomodels import pretrained as shipped

        return shipped.available()
    return sorted(_REGISTRY)


def _shipped(weights: Any) -> str | None:
    """``weights`` when it names a model shipped in :mod:`histomodels.pretrained`, also
    where a file or folder of that name is in the working folder (a warning; ``./pcam-cnn``
    reads that one: :func:`histomodels.pretrained.shipped_name`); None otherwise."""
    from histomodels import pretrained as shipped

    return shipped.shipped_name(weights)


def _create_shipped(name: str, weights: str, cfg: dict[str, Any]) -> nn.Module:
    """Model ``name`` built with shipped model ``weights``'s architecture config (``cfg``'s
    keys win: weights that then do not fit are a WeightsError) and loaded with its weights,
    in training mode like any ``create_model``."""
    from histomodels import pretrained as shipped
    from histomodels.models.weights import WeightsError

    meta = shipped.sidecar(weights)
    if meta.get("model") != name:
        raise WeightsError(
            f"{weights}: shipped weights of model {meta.get('model')!r}, not of {name!r}; "
            f"use create_model({meta.get('model')!r}, weights={weights!r})"
        )
    if cfg.pop("pretrained", False):
        raise WeightsError(f"{weights}: give weights={weights!r} without pretrained=True")
    ckpt = shipped.checkpoint_dict(weights)
    model = create_model(name, **{**ckpt["model_config"], **cfg})
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        config = {**ckpt["model_config"], **cfg}
        raise WeightsError(
            f"{weights}: its weights do not fit {name} built with {shown_config(config)} "
            f"(shipped config: {shown_config(ckpt['model_config'])}): "
            f"{state_dict_mismatch(model, ckpt['state_dict']) or str(exc).splitlines()[0]}"
        ) from None
    return model


def _first(keys: list[str], shown: int = 3) -> str:
    """``a, b, c`` or ``a, b, c and 4 more``: the first ``shown`` of ``keys``, each cut and
    escaped (:func:`histocore.io.text_shown`: a key is the weights file's text)."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(text_shown(str(k)) for k in keys[:shown]) + more


def state_dict_mismatch(model: nn.Module, state_dict: dict[str, Any]) -> str:
    """Why ``state_dict`` does not load into ``model`` strictly, in one bounded line: the
    counts of missing, unexpected and other-shaped tensors, each with its first few keys
    (torch's message puts them on lines of their own, all of them); "" when it fits."""
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(target[k].shape)}"
        for k in target
        if k in state_dict
        and hasattr(state_dict[k], "shape")
        and tuple(state_dict[k].shape) != tuple(target[k].shape)
    ]
    parts = [
        f"{len(keys)} {what} ({_first(keys)})"
        for what, keys in (
            ("missing from the weights", missing),
            ("unexpected in the weights", unexpected),
            ("of another shape (weights vs model)", shapes),
        )
        if keys
    ]
    return "; ".join(parts)


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model with a single-logit head, in training mode.

    ``create_model(name, pretrained=False, weights=None, **config)``: ``weights`` is None
    (random init), a weights file, a source name the model's builder takes
    (``imagenet``...; one it does not take: a WeightsError, :func:`weights_problem`), or
    the name of a shipped trained model (``list_models(pretrained=True)``:
    ``create_model("cnn", weights="pcam-cnn")`` builds the shipped architecture config,
    ``centre="pool"``, and loads its weights; a file or folder of that name in the working
    folder is read as ``weights="./pcam-cnn"``, or any Path). For scoring patches with the
    shipped model's temperature and threshold, use
    :meth:`histomodels.inference.Predictor.load`."""
    shipped = _shipped(cfg.get("weights"))
    if shipped is not None:
        return _create_shipped(name, shipped, {k: v for k, v in cfg.items() if k != "weights"})
    if "weights" in cfg:  # a file named like a source of the model: the source (a warning)
        cfg = {**cfg, "weights": local_weights(name, cfg["weights"])}
    check_weights(name, cfg.get("weights"))
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
        "global_pool", "dynamic_img_size", "qkv_bias", "drop_rate", "drop_path_rate", "centre",
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


def config_defaults(name: str) -> dict[str, Any]:
    """The default of each :func:`config_keys` key of model ``name`` that its builder's
    signature states: what a ``model_config`` without that key builds. A ``timm/<name>``
    model's keys other than ``input_size`` and ``centre`` go to timm (``**kwargs``), whose
    defaults depend on the architecture: they are not listed."""
    fn, _ = _builder(name)
    params = inspect.signature(fn).parameters
    return {
        key: params[key].default
        for key in config_keys(name)
        if key in params and params[key].default is not inspect.Parameter.empty
    }


def check_config(name: str, config: dict[str, Any]) -> None:
    """Refuse a ``model_config`` key model ``name`` does not accept (:func:`config_keys`):
    a model trained with it could not be built again from its checkpoint; then a value of
    the wrong type for its builder's parameter or outside the range or choices its
    annotation states (:func:`_fits`), or a required parameter left out, so that a
    ``TypeError`` while building is a bug in the model code, never the user's config. An
    unknown name (:func:`name_problem`) comes first."""
    problem = name_problem(name)
    if problem:
        raise ModelError(f"model {name!r}: {problem}")
    allowed = config_keys(name)
    for key in config:
        if key not in allowed:
            takes = ", ".join(sorted(allowed)) or "none"
            raise ModelError(
                f"model_config key {key!r}, which {name} does not accept (it takes: {takes})"
            )
    expected = _expected_types(name)
    for key, value in config.items():
        if key in expected and not _fits(value, expected[key]):
            raise ModelError(
                f"model_config {key!r} is {value!r}; {name} takes {_describe(expected[key])}"
            )
    fn, head = _builder(name)
    try:
        inspect.signature(fn).bind(*head, **config)
    except TypeError as exc:  # a required parameter left out
        raise ModelError(f"model_config for {name}: {exc}") from None


#: The types of the ``timm/<name>`` architecture keys (:data:`TIMM_CONFIG_KEYS`), with
#: their ranges (a ``depth`` of 0 or a ``drop_rate`` of 1 is refused as a config is read;
#: the upper bounds are far past any published model, and keep a 2 KB config from asking
#: for tens of GB: ``img_size: 100000``, ``reg_tokens: 100000000``).
_SIDE = Annotated[int, Interval(ge=1, le=4096)]
_RATE = Annotated[float, Interval(ge=0, lt=1)]
_TIMM_TYPES: dict[str, Any] = {
    "input_size": Annotated[int, Interval(ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)],
    "img_size": _SIDE | Annotated[list[_SIDE], MinLen(1), MaxLen(2)],
    "patch_size": _SIDE, "embed_dim": Annotated[int, Interval(ge=1, le=16384)],
    "depth": Annotated[int, Interval(ge=1, le=256)],
    "num_heads": Annotated[int, Interval(ge=1, le=1024)],
    "mlp_ratio": Annotated[float, Interval(gt=0, le=64)], "init_values": float | None,
    "reg_tokens": Annotated[int, Interval(ge=0, le=1024)], "no_embed_class": bool,
    "class_token": bool, "global_pool": str, "dynamic_img_size": bool, "qkv_bias": bool,
    "drop_rate": _RATE, "drop_path_rate": _RATE,
}  # fmt: skip


def _builder(name: str) -> tuple[Callable[..., nn.Module], tuple[str, ...]]:
    """The builder of ``name`` and the positional arguments :func:`create_model` gives it."""
    if name in _REGISTRY:
        return _REGISTRY[name], ()
    head, _, rest = name.partition("/")
    return _PREFIXES[head], (rest,)


def _expected_types(name: str) -> dict[str, Any]:
    """Parameter → annotation of the builder of ``name`` (and the timm keys for timm/)."""
    fn, _ = _builder(name)
    found: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        annotation = p.annotation
        if isinstance(annotation, str):  # postponed: the builder module's own names
            try:
                annotation = eval(annotation, getattr(fn, "__globals__", {}))
            except (NameError, AttributeError, SyntaxError, TypeError):
                continue  # a name it imports only for type checkers: not judged
        if annotation is not p.empty:
            found[p.name] = annotation
    if name.startswith("timm/"):
        found = {**_TIMM_TYPES, **found}
    return found


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a config value (a JSON value) fits a builder's parameter annotation; an
    annotation this does not know (a class, ``Any``) accepts anything. The annotation may
    hold the value's range: ``Literal[...]`` (one of these values) and ``Annotated[int,
    annotated_types.Ge(1)]`` (or ``Gt``, ``Le``, ``Lt``, ``Interval``), so each model's
    builder states its own rules, and a ``width: 0`` is found when a config is read."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *rules = typing.get_args(annotation)
        return _fits(value, base) and all(_within(value, rule) for rule in rules)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, a) for a in typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:  # JSON's Infinity and NaN are no size or rate
        return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple) or annotation in (list, tuple):
        args = typing.get_args(annotation)[:1]
        return isinstance(value, list | tuple) and all(_fits(v, args[0]) for v in value if args)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


#: The bounds an ``annotated_types`` rule may hold: attribute, as written, test.
_BOUNDS: tuple[tuple[str, str, Callable[[Any, Any], bool]], ...] = (
    ("ge", ">=", operator.ge),
    ("gt", ">", operator.gt),
    ("le", "<=", operator.le),
    ("lt", "<", operator.lt),
)


def _bounds(rule: Any) -> list[tuple[str, Any, Callable[[Any, Any], bool]]]:
    """``rule``'s bounds as (written, bound, test): none for metadata without them."""
    return [
        (op, getattr(rule, a), test)
        for a, op, test in _BOUNDS
        if getattr(rule, a, None) is not None
    ]


def _within(value: Any, rule: Any) -> bool:
    """Whether ``value`` keeps ``rule``'s bounds (a number: NaN and infinity keep none,
    ``Gt(0)`` included) or lengths (``MinLen``/``MaxLen``, of a list)."""
    if isinstance(rule, MinLen | MaxLen):
        n = len(value) if isinstance(value, list | tuple) else 0
        return n >= rule.min_length if isinstance(rule, MinLen) else n <= rule.max_length
    bounds = _bounds(rule)
    return not bounds or (_finite(value) and all(test(value, b) for _, b, test in bounds))


def _finite(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _count(lengths: list[Any]) -> str:
    """``1 or 2``, ``1 to 4``, ``at least 1`` or ``at most 3``: a list's length rules."""
    low = max((r.min_length for r in lengths if isinstance(r, MinLen)), default=None)
    high = min((r.max_length for r in lengths if isinstance(r, MaxLen)), default=None)
    if low is not None and high is not None:
        return f"{low} {'or' if high - low == 1 else 'to'} {high}" if high != low else f"{low}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _describe_rule(rule: Any) -> str:
    """``>= 1``, or ``in [0, 1)`` for a lower and an upper bound."""
    if isinstance(rule, MinLen):
        return f"(at least {rule.min_length} long)"
    if isinstance(rule, MaxLen):
        return f"(at most {rule.max_length} long)"
    found = _bounds(rule)
    if len(found) == 2:
        (low_op, low, _), (high_op, high, _) = found
        return f"in {'[' if low_op == '>=' else '('}{low}, {high}{']' if high_op == '<=' else ')'}"
    return " ".join(f"{op} {bound}" for op, bound, _ in found)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *rules = typing.get_args(annotation)
        lengths = [r for r in rules if isinstance(r, MinLen | MaxLen)]
        if lengths and typing.get_origin(base) in (list, tuple) and typing.get_args(base):
            return f"a list of {_count(lengths)} {_describe(typing.get_args(base)[0])}"
        return " ".join([_describe(base), *filter(None, map(_describe_rule, rules))])
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return "null"
    if origin in (list, tuple) and typing.get_args(annotation):
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


#: The most values (parameters and buffers) a model built from a user's config may hold:
#: 10^9, 4 GB in float32 before gradients and optimizer state; twice the largest backbone
#: the toolkit fine-tunes (ViT-L/16 holds 3 x 10^8).
MAX_MODEL_VALUES = 1_000_000_000


class ModelTooLarge(ModelError):
    """A config that builds a model of more than :data:`MAX_MODEL_VALUES` values."""

    def __init__(self, name: str, values: int) -> None:
        super().__init__(
            f"builds a {name} of {values:,} values, over the {MAX_MODEL_VALUES:,} a model may "
            "hold; refused"
        )
        self.values = values


def check_build(name: str, config: dict[str, Any], input_size: int) -> None:
    """Build model ``name`` from ``config`` on PyTorch's meta device (shapes only: no memory,
    no weights read) and run one batch of ``input_size`` px patches through it, before the
    real build: a model of more than :data:`MAX_MODEL_VALUES` values is a
    :class:`ModelTooLarge` (a ``img_size: 100000`` ViT asked for 30 GB); whatever else the
    builder or the forward pass raises (timm's AssertionError for ``embed_dim: 7``, the
    cnn's ``Output size is too small`` for 8 stages on 96 px) propagates as raised, for the
    caller to word, since only it knows whether the config was the user's. Run
    :func:`check_config` first: its bounds keep this build short.

    Cost: 0.02 s (cnn) to 0.2 s (ViT-B) in a process that has imported timm, as the
    training commands have. The meta device's weight initialisers import ``torch._dynamo``
    (1-3 s) the first time; importing timm (through torchvision) has already done so."""
    import torch

    with torch.device("meta"):
        model = create_model(name, **config)
        values = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
        if values > MAX_MODEL_VALUES:
            raise ModelTooLarge(name, values)
        model.train()
        model(torch.zeros(2, 3, input_size, input_size))


def shown_config(config: dict[str, Any]) -> str:
    """``config`` as one short line of JSON for a message, cut as
    :func:`histocore.io.text_shown` cuts a value."""
    return text_shown(json.dumps(config, ensure_ascii=False, default=str))
