"""The search space of ``histomodels tune`` and the checks of its options, without PyTorch
or Ax imported (a command line checks ``--fix`` and the trial length before loading them).

:data:`SPACE` lists the dimensions; :func:`parse_fixed` checks pins (``--fix NAME=VALUE``);
:func:`search_space` gives Ax the unpinned ones; :func:`trial_config` turns one Ax
parameterisation plus the pins into a :class:`~histomodels.config.TrainConfig`.
"""

from __future__ import annotations

import math
from typing import Any

from histocore.errors import DomainError
from histomodels.config import TrainConfig


class TuneError(DomainError, RuntimeError):
    """A search that could not finish one trial."""


#: Trial length when neither epochs nor minutes are given.
DEFAULT_TRIAL_MINUTES = 2.0
#: Keys of the trial that are not part of a reusable training config.
_RUN_ONLY = ("data", "val", "time_budget", "progress", "threads", "device", "epochs", "patience")

#: The searched dimensions: ``(name, kind, bounds or values)``; ``kind`` is
#: ``log``/``float``/``int`` ranges or a ``choice`` (ordered when its values are numbers).
SPACE: tuple[tuple[str, str, tuple[Any, ...]], ...] = (
    ("lr", "log", (3e-4, 1e-2)),
    ("weight_decay", "log", (1e-4, 0.2)),
    ("width", "choice", (16, 24, 32, 48, 64)),
    ("depth", "int", (3, 5)),
    ("dropout", "float", (0.0, 0.5)),
    ("batch_size", "choice", (64, 128, 256)),
    ("aug_strength", "float", (0.0, 1.5)),
    ("centre", "choice", ("none", "pool", "branch")),  # model_config["centre"]
    ("cutout", "float", (0.0, 0.5)),  # probability per patch
    ("mixup", "float", (0.0, 0.4)),  # Beta alpha
    ("randstain", "float", (0.0, 0.5)),  # probability per patch
    ("jpeg_blur", "float", (0.0, 0.5)),  # probability per patch
    ("label_smoothing", "float", (0.0, 0.2)),
    ("ema", "choice", (0.0, 0.99, 0.999)),  # decay; 0 = off
)
#: Architecture keys among them (the rest are TrainConfig keys).
_ARCH = ("width", "depth", "dropout", "centre")
#: What a parameter missing from an older experiment's space means (else the base config).
_BEFORE = {"centre": "none"}


#: The models the search space is made for (its architecture dimensions are theirs).
MODELS = ("cnn",)


def check_base(base: TrainConfig, where: str = "base config") -> None:
    """Refuse a base config whose model the space does not search: its trials would
    silently train the scratch CNN instead. ``where`` names the config in the message."""
    if base.model not in MODELS:
        raise TuneError(
            f"{where}: model {base.model!r} cannot be tuned: the search space is the scratch "
            f"CNN's ({', '.join(MODELS)}; width, depth, centre...); use a config with model "
            f"'cnn' (or none), or train {base.model!r} with histomodels finetune/train"
        )


#: The architecture dimensions whose weights a weights file or shipped model fixes (dropout
#: has none): a search over them with ``weights`` set fails every trial.
_SHAPED = ("width", "depth", "centre")


def check_weights(base: TrainConfig, fixed: dict[str, Any], where: str = "base config") -> None:
    """Refuse a base config with ``weights`` whose architecture dimensions (:data:`_SHAPED`)
    are searched: weights fit one width, depth and centre, and every trial that samples
    others fails to load them (five in a row stopped the tune). Pinned with ``fixed`` they
    tune the rest (lr, dropout, the levers...) of a fine-tuning of those weights; for a
    shipped model (``pcam-cnn``) the pins must be its own values, which the message gives,
    and so must any the base config's ``model_config`` sets; for a weights file the message
    echoes the values ``model_config`` gives (``WIDTH``... where it gives none). ``where``
    names the config in the message."""
    weights = base.weights
    if not weights:
        return
    own = _shipped_shape(weights)
    given = base.model_config
    if own is not None and (clash := _unlike(own, given)):
        keys = ", ".join(f"{n}={given[n]}" for n in clash)
        shipped = ", ".join(f"{n}={own[n]}" for n in clash)
        raise TuneError(
            f"{where}: model_config {keys} does not fit weights {weights!r}, a cnn with "
            f"{shipped}; remove {'them' if len(clash) > 1 else 'it'} from model_config, "
            "or tune without weights"
        )
    if own is not None and (wrong := _unlike(own, fixed)):
        fixes = " ".join(f"--fix {n}={fixed[n]}" for n in wrong)
        pins = " ".join(f"--fix {n}={own[n]}" for n in wrong)
        raise TuneError(
            f"{where}: weights {weights!r} do not fit {fixes}: they are a cnn's with "
            f"{pins.replace('--fix ', '')}; pin that ({pins}), or tune without weights"
        )
    searched = [n for n in _SHAPED if n not in fixed]
    if not searched:
        return
    said = own if own is not None else {n: given.get(n, n.upper()) for n in _SHAPED}
    pins = " ".join(f"--fix {n}={said[n]}" for n in searched)
    what = "the shipped model's" if own else "the ones the weights were trained with"
    raise TuneError(
        f"{where}: weights {weights!r} fit one {'/'.join(_SHAPED)}, and the search changes "
        f"{', '.join(searched)}: every trial would fail to load them; pin them to {what} "
        f"({pins}), or tune without weights"
    )


def _unlike(own: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The dimensions of :data:`_SHAPED` that ``values`` (a ``model_config``, the ``--fix``
    pins) sets to other than ``own``, the shipped model's."""
    return [n for n in _SHAPED if n in values and values[n] != own[n]]


def _shipped_shape(weights: str) -> dict[str, Any] | None:
    """The width, depth and centre of shipped model ``weights`` (its sidecar's config, the
    cnn builder's defaults under it: not the base config's, which may differ); None when
    ``weights`` names a file (``./pcam-cnn`` for one named like it, as in
    ``create_model``)."""
    import inspect

    from histomodels import pretrained

    if pretrained.shipped_name(weights) is None:
        return None
    from histomodels.models.cnn import cnn  # PyTorch: only a base config with weights

    params = inspect.signature(cnn).parameters
    shipped = dict(pretrained.sidecar(weights).get("model_config") or {})
    return {n: shipped.get(n, params[n].default) for n in _SHAPED}


def parse_fixed(items: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Pins ``NAME=VALUE`` (or a dict) checked against :data:`SPACE`: a known dimension and
    a value inside its bounds or among its choices, converted to the dimension's type.
    Raises :class:`TuneError` otherwise."""
    kinds = {name: (kind, values) for name, kind, values in SPACE}
    pairs = items.items() if isinstance(items, dict) else [_split_pin(i) for i in items]
    fixed: dict[str, Any] = {}
    for name, raw in pairs:
        if name not in kinds:
            raise TuneError(f"--fix {name}: not a dimension of the search ({', '.join(kinds)})")
        if name in fixed:
            raise TuneError(f"--fix {name}: given twice")
        kind, values = kinds[name]
        fixed[name] = _pin_value(name, kind, values, raw)
    if len(fixed) == len(SPACE):
        raise TuneError("--fix: every dimension is pinned, nothing is left to search")
    return fixed


def _split_pin(item: str) -> tuple[str, str]:
    name, sep, raw = item.partition("=")
    if not sep or not name.strip() or not raw.strip():
        raise TuneError(f"--fix {item!r}: expected NAME=VALUE, e.g. width=16")
    return name.strip(), raw.strip()


def _pin_value(name: str, kind: str, values: tuple[Any, ...], raw: Any) -> Any:
    """``raw`` as the type of dimension ``name``, if it is one of its values."""
    if kind == "choice":
        for v in values:
            if str(v) == str(raw) or (not isinstance(v, str) and _number(raw) == v):
                return v
        raise TuneError(f"--fix {name}={raw}: not one of {', '.join(map(str, values))}")
    num = _number(raw)
    if num is None or (kind == "int" and num != int(num)):
        raise TuneError(f"--fix {name}={raw}: not a{'n integer' if kind == 'int' else ' number'}")
    lo, hi = values
    if not lo <= num <= hi:
        raise TuneError(f"--fix {name}={raw}: outside the search bounds [{lo}, {hi}]")
    return int(num) if kind == "int" else float(num)


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    try:
        num = float(raw)
    except (TypeError, ValueError):
        return None
    return num if num == num and abs(num) != float("inf") else None


def search_space(fixed: dict[str, Any] | None = None):
    """The Ax parameters of :data:`SPACE`, less the ``fixed`` (pinned) ones."""
    from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

    params = []
    for name, kind, values in SPACE:
        if name in (fixed or {}):
            continue
        if kind == "choice":
            numeric = not isinstance(values[0], str)
            ptype = "str" if not numeric else "int" if isinstance(values[0], int) else "float"
            params.append(
                ChoiceParameterConfig(
                    name=name, values=list(values), parameter_type=ptype, is_ordered=numeric
                )
            )
        else:
            ptype = "int" if kind == "int" else "float"
            scaling = "log" if kind == "log" else "linear"
            params.append(
                RangeParameterConfig(
                    name=name, bounds=values, parameter_type=ptype, scaling=scaling
                )
            )
    return params


def trial_config(
    params: dict[str, Any], base: TrainConfig, fixed: dict[str, Any] | None = None
) -> TrainConfig:
    """A training config for one Ax parameterisation (of :data:`SPACE` or an older one),
    with the ``fixed`` (pinned) dimensions."""
    from histomodels.config import merge

    params = {**_BEFORE, **(fixed or {}), **params}
    kinds = {name: (kind, values) for name, kind, values in SPACE}

    def value(name: str) -> Any:
        kind, values = kinds[name]
        raw = params[name]
        if kind == "choice":
            return type(values[0])(raw)
        return int(raw) if kind == "int" else float(raw)

    arch = {k: value(k) for k in _ARCH if k in params}
    changes: dict[str, Any] = {k: value(k) for k in kinds if k in params and k not in _ARCH}
    if "ema" in changes:
        changes["ema"] = changes["ema"] or None  # 0 = off
    changes.update(model="cnn", model_config={**base.model_config, **arch})
    return merge(base, changes, "tune", skip_none=False)


def trial_limit(minutes: float | None, epochs: int | None) -> dict[str, Any]:
    """How long each trial trains: ``{"epochs": N}`` or ``{"minutes": M}`` (one, not both;
    neither: :data:`DEFAULT_TRIAL_MINUTES`)."""
    if minutes is not None and epochs is not None:
        raise TuneError("give a trial length in epochs or in minutes, not both")
    if epochs is not None:
        if int(epochs) != epochs or epochs < 1:
            raise TuneError(f"trial epochs must be a whole number >= 1, not {epochs}")
        return {"epochs": int(epochs)}
    minutes = DEFAULT_TRIAL_MINUTES if minutes is None else float(minutes)
    if not (math.isfinite(minutes) and minutes > 0):
        raise TuneError(f"trial minutes must be a finite number > 0, not {minutes}")
    return {"minutes": minutes}
