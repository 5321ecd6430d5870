"""The training configuration: one typed dataclass, written whole to ``RUN/config.json``.

Precedence: dataclass defaults < ``--config FILE`` (JSON, or YAML) < options given on the
command line. ``histomodels tune`` writes a ``best_config.json`` in this format, so ``train
--config best_config.json`` reproduces it. Every value is checked when a config is built
(pydantic): a wrong type, an unknown choice or an out-of-range number is a
:class:`ConfigError` naming the file and key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
from collections.abc import Hashable
from dataclasses import field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from histocore.errors import DomainError, UsageError, is_missing
from histocore.io import (
    NotJSON,
    RefusedFile,
    loads_json,
    not_there,
    read_capped,
    resolved,
    same_file,
)
from histomodels.choices import (
    MAX_SEED,
    MAX_THREADS,
    SCHEDULES,
    Schedule,
    device_problem,
    model_problem,
    origin_splits,
)


class ConfigError(DomainError, ValueError):
    """A config file or value that cannot be used; the message names it."""


#: Architecture keys the training recipe sets for a model unless ``model_config`` names them
#: (measured one lever at a time on unseen slides: docs/benchmarks.md, "Recipe levers").
#: They are written into ``model_config`` and so into every checkpoint; the registry's own
#: defaults stay as they were, so older checkpoints (without the key) load unchanged.
RECIPE_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"cnn": {"centre": "pool"}}
#: What each of those keys was before the recipe set it (the builder's own default): a run,
#: checkpoint or tune result written without the key built this (``--resume`` pins it).
PRE_RECIPE_MODEL_CONFIG: dict[str, dict[str, Any]] = {"cnn": {"centre": "none"}}


def pin_pre_recipe(model: str, model_config: dict[str, Any]) -> dict[str, Any]:
    """``model_config`` with every :data:`RECIPE_MODEL_DEFAULTS` key it lacks set to its
    :data:`PRE_RECIPE_MODEL_CONFIG` value: the network a config written before the recipe
    default existed described."""
    return {**PRE_RECIPE_MODEL_CONFIG.get(model, {}), **model_config}


@dataclass(config=ConfigDict(extra="forbid"))
class TrainConfig:
    """One training run's settings (``histomodels train --config``; every key of
    docs/histomodels-training.md, "Config files"). Units: ``time_budget`` is in
    **minutes** of training + validation (None: no limit; ``TrainConfig(time_budget=2)``
    stops after about 2 minutes), ``epochs`` and ``patience`` count epochs,
    ``warmup_epochs`` may be fractional, ``lr`` is AdamW's peak learning rate.
    ``model_config`` is the model's architecture keys; the training recipe fills in
    ``centre: pool`` for the ``cnn`` when not given (:data:`RECIPE_MODEL_DEFAULTS`)."""

    # what to train
    model: str = "cnn"
    model_config: dict[str, Any] = field(default_factory=dict)
    #: None, "imagenet" (torchvision/timm hub), "lite0-imagenet", or a local file path
    weights: str | None = None
    # data (paths are strings so the config is JSON)
    data: str | None = None
    val: str | None = None
    #: keep only these origin splits of ``data`` (comma list; encoded HDF5 with manifest.csv)
    origin_split: str | None = None
    # optimisation
    epochs: int = 50
    patience: int = 10
    time_budget: float | None = None  # minutes, training + validation
    batch_size: int = 128
    eval_batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    schedule: Schedule = "cosine"
    warmup_epochs: float = 1.0  # linear LR warm-up (epochs, fractional ok)
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0
    grad_clip: float | None = 2.0
    #: exponential moving average of the weights (timm ModelEmaV3 decay, e.g. 0.999); the
    #: averaged weights are the ones validated and saved. None = off
    ema: float | None = None
    #: before each validation, BatchNorm statistics recomputed exactly over this many
    #: un-augmented training patches (a fixed sample; training/precise_bn.py); 0 = off
    precise_bn: int = 0
    #: stochastic weight averaging: from this share of training on (by the schedule's
    #: progress: steps, or the time budget used) the LR stays at ``swa_lr`` x ``lr`` and the
    #: weights at the end of each epoch are averaged (equal weights); the average, with its
    #: BatchNorm statistics recomputed, is validated and saved (training/swa.py). 0 = off
    swa: float = 0.0
    #: the constant LR factor of the averaging phase (the cosine anneals to it first)
    swa_lr: float = 0.1
    # fine-tuning
    freeze_epochs: int = 0  # epochs with a frozen backbone (head only)
    backbone_lr_mult: float = 1.0
    # augmentation
    aug_strength: float = 1.0  # 0 disables augmentation
    hed_jitter: bool = True  # HED stain jitter inside the augmentation
    # recipe levers (issue 11): each off by default, measured one by one
    #: probability per patch of 1-3 mean-filled rectangles outside the central 32x32
    cutout: float = 0.0
    #: mixup within a batch: the Beta(alpha, alpha) alpha (e.g. 0.2-0.4); 0 = off
    mixup: float = 0.0
    #: probability per patch of a RandStainNA-style random LAB stain template (fit at setup)
    randstain: float = 0.0
    #: probability per patch of a JPEG re-encode (quality 30-90) or a Gaussian blur (0.1-1.0)
    jpeg_blur: float = 0.0
    #: distillation: a teacher checkpoint / run folder / shipped model scored once (8-view
    #: TTA) on the un-augmented training patches; loss (1-w) BCE(y) + w T^2 BCE(teacher at T)
    teacher: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    #: None, "macenko" (common reference target) or a stain JSON (MacenkoNormalizer.save);
    #: applied to every patch before training and, from the checkpoint, at inference
    stain_norm: str | None = None
    # runtime
    seed: int = 0
    bf16: bool | None = None  # None = auto (on for plain CNNs on CPU; AMP on CUDA)
    channels_last: bool = True
    compile: bool = False
    threads: int | None = None
    #: make the next batch (index, augmentation, pinned copy) in a background thread while
    #: one trains; the same weights either way. None = auto (training/prefetch.py)
    prefetch: bool | None = None
    #: deterministic algorithms (``torch.use_deterministic_algorithms``, cuDNN autotuning
    #: off, a fixed cuBLAS workspace) while training: bit-identical CUDA runs for a seed, at
    #: some speed; CPU runs are deterministic without it (device.deterministic_algorithms)
    deterministic: bool = False
    device: str | None = None  # None = cuda when available, else cpu
    progress: bool = True

    @field_validator("schedule", mode="before")
    @classmethod
    def _known_schedule(cls, v: Any) -> Any:
        if v not in SCHEDULES:
            raise ValueError("schedule must be cosine, plateau or constant")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, v: Any, info: ValidationInfo) -> Any:
        """A config file is untrusted: pydantic's lax mode read ``"epochs": true`` as 1,
        ``"progress": "yes"`` as true and ``"epochs": "5"`` as 5. A switch takes only
        true/false (or null where null means auto), a number neither true/false nor a
        string (YAML files are read with YAML 1.2's floats, so ``lr: 4e-3`` is a number:
        :func:`_parse_yaml`)."""
        kind = _KINDS.get(info.field_name or "")
        if kind == "bool" and not isinstance(v, bool) and v is not None:
            raise ValueError(f"expected true or false, not {_kind_of(v)}")
        if kind == "number" and isinstance(v, bool):
            raise ValueError("expected a number, not true or false")
        if kind == "number" and isinstance(v, str):
            raise ValueError(f"expected a number, got {json.dumps(v, ensure_ascii=False)}")
        return v

    def __post_init__(self) -> None:
        for key, value in RECIPE_MODEL_DEFAULTS.get(self.model, {}).items():
            self.model_config.setdefault(key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return merge(self, changes)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
#: The fields TrainConfig._no_coercion holds to their own type: switches and numbers.
_KINDS: dict[str, str] = {
    f.name: "bool" if str(f.type).startswith("bool") else "number"
    for f in dataclasses.fields(TrainConfig)
    if str(f.type).split(" |")[0] in ("bool", "int", "float")
}


def _kind_of(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


#: What ``histomodels finetune`` changes from the training defaults (a config file or
#: options win): a named preset, kept here with the config so the CLI needs no PyTorch to
#: read it.
FINETUNE_DEFAULTS: dict[str, Any] = dict(
    model="efficientnet_lite0",
    weights="imagenet",
    freeze_epochs=1,
    backbone_lr_mult=0.3,
    lr=1e-3,
    weight_decay=0.01,
    patience=6,
)


#: Settings a resumed run takes from the new config; everything else comes from ``last.pt``.
RESUME_OVERRIDES = (
    "epochs",
    "patience",
    "time_budget",
    "progress",
    "threads",
    "device",
    "prefetch",
)


#: The keys with a plain default value (not ``model_config``, whose old runs are pinned by
#: :func:`pin_pre_recipe`), for runs saved before the key existed.
_PLAIN_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.default is not dataclasses.MISSING
}


def saved_run_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved train config (``config.json``, ``last.pt``) as a resume reads it: an
    ``origin_split`` of ``""`` is None. A run begun before ``""`` was refused (it still is,
    given by the user) trained on every row with it, as with no filter; it resumes so."""
    return {**saved, "origin_split": None} if saved.get("origin_split") == "" else saved


def resume_conflicts(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The keys of ``given`` (settings a user asked for, None = not given) that a resume
    would not apply, as ``key VALUE (the run's SAVED)`` (``(the run's: none)`` where it had
    none): those outside :data:`RESUME_OVERRIDES` whose value differs from the run's
    ``saved`` config (a ``model_config`` key by key, a data path by the file it names, but
    a shipped model's name by its text: ``pcam-cnn`` and ``./pcam-cnn`` are two models,
    ``origin_split`` by the splits it names; a key the run predates by its default, which is
    what the run used)."""
    saved = saved_run_config(saved)
    said = []
    for key, value in given.items():
        if value is None or key in RESUME_OVERRIDES:
            continue
        if key in saved:
            old = saved[key]
        elif key in _PLAIN_DEFAULTS:  # a key added after the run began: it ran as the default
            old = _PLAIN_DEFAULTS[key]
        else:
            continue
        if key == "model_config" and isinstance(value, dict) and isinstance(old, dict):
            same = all(old.get(k) == v for k, v in value.items())
        elif key in ("weights", "teacher") and old is not None and _names_shipped(value, old):
            same = value == old  # pcam-cnn is the shipped model, ./pcam-cnn a file here
        elif key in ("data", "val", "weights", "teacher", "stain_norm") and old is not None:
            same = str(value) == str(old) or same_file(str(value), str(old))
        elif key == "origin_split" and old is not None:  # the same splits in any order
            same = origin_splits(value) == origin_splits(old)
        else:
            same = value == old
        if not same:
            said.append(f"{key} {value!r} ({_the_runs(key, old)})")
    return said


def _names_shipped(*specs: Any) -> bool:
    """Whether any of ``specs`` (checkpoints or weights) is a shipped model's name, which
    always means the shipped model (:func:`histomodels.pretrained.shipped_name`): another
    spelling of the same file (``./pcam-cnn``) is then another model, not the same one."""
    from histomodels import pretrained

    return any(isinstance(s, str) and pretrained.is_pretrained(s) for s in specs)


def _the_runs(key: str, old: Any) -> str:
    """A run's saved setting as a resume conflict names it: ``the run's 0.002``, or for a
    setting the run had none of (None) in words, not Python's: ``the run's: none``, and for
    ``origin_split``, where none keeps every row, ``the run's: none, every row``."""
    if old is None:
        return "the run's: none, every row" if key == "origin_split" else "the run's: none"
    return f"the run's {old!r}"


def build(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """A checked :class:`TrainConfig` from a mapping; the first problem as a ConfigError."""
    # a YAML key may be a number (1: x, 1e5: x): compared and sorted as text
    unknown = sorted((k for k in data if not (isinstance(k, str) and k in FIELDS)), key=str)
    if unknown:
        hints = [difflib.get_close_matches(str(k), FIELDS, n=1) for k in unknown]
        said = ", ".join(
            f"{k} (did you mean {h[0]}?)" if h else str(k)
            for k, h in zip(unknown, hints, strict=True)
        )
        raise ConfigError(f"{source}: unknown config keys {said}")
    try:
        cfg = TrainConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        where = "" if msg.startswith(key) else f"{key}: "
        said_value = msg.startswith("expected a number, got ")  # our own message says it
        got = "" if said_value else f" (got {err.get('input')!r})"
        raise ConfigError(f"{source}: {where}{msg}{got}") from None
    return validate(cfg, source)


def merge(
    config: TrainConfig, changes: dict[str, Any], source: str = "options", skip_none: bool = True
) -> TrainConfig:
    """Return ``config`` updated with ``changes`` (None = not given when ``skip_none``)."""
    data = config.to_dict()
    new_model = changes.get("model")
    if new_model is not None and new_model != data["model"]:
        data["model_config"] = {}  # architecture kwargs of another model do not carry over
    for key, value in changes.items():
        if value is None and skip_none:
            continue
        if key == "model_config":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: model_config must be a mapping")
            value = {**data["model_config"], **value}
        data[key] = value
    return build(data, source)


def validate(cfg: TrainConfig, source: str = "config") -> TrainConfig:
    """Range checks the types alone do not express (each a one-line ConfigError)."""
    for key, problem_of in (("model", _model_problem), ("device", device_problem)):
        value = getattr(cfg, key)  # the names the CLI's --model/--device take, from a file
        problem = None if value is None else problem_of(value)
        if problem:
            raise ConfigError(f"{source}: {key}: {value!r}: {problem}")
    if cfg.origin_split is not None:  # "" would read as no filter; --origin-split "" is refused
        try:
            origin_splits(cfg.origin_split)
        except UsageError as exc:
            problem = str(exc).removeprefix(f"origin_split {cfg.origin_split!r}: ")
            raise ConfigError(f"{source}: origin_split: {cfg.origin_split!r}: {problem}") from None
    for f in dataclasses.fields(cfg):  # NaN passes every comparison below
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: {f.name} must be a finite number, got {value}")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"{source}: {name} must be >= 1")
    for name in (
        "patience",
        "freeze_epochs",
        "warmup_epochs",
        "weight_decay",
        "aug_strength",
        "precise_bn",
    ):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{source}: {name} must be >= 0")
    if cfg.grad_clip is not None and cfg.grad_clip < 0:  # would turn every step uphill
        raise ConfigError(f"{source}: grad_clip must be >= 0 (0 or null = off)")
    if cfg.lr <= 0 or cfg.backbone_lr_mult < 0:
        raise ConfigError(f"{source}: lr must be > 0 and backbone_lr_mult >= 0")
    if not 0 <= cfg.min_lr_ratio <= 1 or not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"{source}: min_lr_ratio must be in [0, 1], label_smoothing in [0, 1)")
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise ConfigError(f"{source}: ema (decay) must be between 0 and 1, e.g. 0.999")
    if not 0 <= cfg.swa < 1 or not 0 < cfg.swa_lr <= 1:
        raise ConfigError(
            f"{source}: swa (share of training before averaging) must be in [0, 1), e.g. "
            "0.75, and swa_lr (LR factor) in (0, 1]"
        )
    if cfg.swa and cfg.ema:
        raise ConfigError(f"{source}: swa and ema both average the weights; choose one")
    if cfg.swa and cfg.schedule != "cosine":
        raise ConfigError(
            f"{source}: swa needs the cosine schedule (it anneals to swa_lr before the "
            f"averaging phase), not {cfg.schedule!r}"
        )
    for name in ("cutout", "randstain", "jpeg_blur"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"{source}: {name} must be a probability in [0, 1]")
    if cfg.mixup < 0:
        raise ConfigError(f"{source}: mixup (the Beta alpha) must be >= 0 (0 = off)")
    if not 0 <= cfg.distill_weight <= 1 or cfg.distill_temperature <= 0:
        raise ConfigError(f"{source}: distill_weight must be in [0, 1], distill_temperature > 0")
    if cfg.teacher is not None and not _loadable(cfg.teacher):
        from histomodels.pretrained import BUILD_TEACHER

        if cfg.teacher == BUILD_TEACHER:  # the shipped pcam-cnn's recipe, taken as a config
            raise ConfigError(
                f"{source}: teacher is the placeholder of the shipped pcam-cnn recipe: its "
                "teacher is not shipped; pass --teacher CHECKPOINT (a teacher of your own, "
                "e.g. a fine-tuned run's best.pt), or rebuild the recipe with "
                "benchmarks/build_pcam_cnn.py in the source repository (it trains the "
                "teacher first)"
            )
        if _in_loop(cfg.teacher):  # the line --data gives for a loop, not 'must be a checkpoint'
            raise ConfigError(not_there(cfg.teacher))
        raise ConfigError(
            f"{source}: teacher must be a checkpoint, a run folder with best.pt or a shipped "
            f"model name, got {cfg.teacher!r}"
        )
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"{source}: seed must be in [0, {MAX_SEED}], got {cfg.seed}")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        raise ConfigError(f"{source}: time_budget (minutes) must be > 0")
    if cfg.threads is not None and not 1 <= cfg.threads <= MAX_THREADS:
        raise ConfigError(f"{source}: threads must be in [1, {MAX_THREADS}], got {cfg.threads}")
    if cfg.stain_norm not in (None, "macenko") and not Path(cfg.stain_norm).is_file():
        if _in_loop(cfg.stain_norm):
            raise ConfigError(not_there(cfg.stain_norm))
        raise ConfigError(
            f"{source}: stain_norm must be 'macenko' or a stain JSON file, got {cfg.stain_norm!r}"
        )
    return cfg


def _model_problem(name: str) -> str | None:
    """:func:`~histomodels.choices.model_problem`, less a model a library caller registered
    (``register_model``: the registry is then imported; without it no one registered any)."""
    registry = sys.modules.get("histomodels.models.registry")
    if registry is not None and name in registry.list_models():
        return None
    return model_problem(name)


def _in_loop(spec: str) -> bool:
    """``spec``, a path, is a link loop or lies under one (:func:`histocore.io.resolved`
    cannot resolve it): :func:`~histocore.io.not_there` names the loop in one line. A path
    with a NUL byte cannot be resolved either, but is no loop: the option's own line says it."""
    return "\0" not in spec and resolved(spec) is None


def _loadable(spec: str) -> bool:
    from histomodels import pretrained

    path = Path(spec)
    return path.is_file() or (path / "best.pt").is_file() or pretrained.is_pretrained(spec)


class _RepeatedKey(Exception):  # not a ValueError: loads_json would call it bad JSON
    """A key given twice in one mapping; ``written``: how the file wrote it each time, when
    the two differ (YAML's ``1`` and ``true`` are one key to Python)."""

    def __init__(self, key: Any, written: tuple[str, str] | None = None) -> None:
        super().__init__(key)
        self.key = key
        self.written = written

    @property
    def problem(self) -> str:
        if self.written and self.written[0] != self.written[1]:
            return f"keys {self.written[0]!r} and {self.written[1]!r} are the same key"
        # as the file wrote it, quoted whatever its type (YAML's 1 read 'key 1 given twice')
        return f"key {self.written[0] if self.written else str(self.key)!r} given twice"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's ``object_pairs_hook``: an object that names a key twice is refused (json keeps
    the last silently; in a config it is almost always a mistake)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _RepeatedKey(key)
        data[key] = value
    return data


def _loads_config_json(text: str, source: str) -> Any:
    """JSON config text (a file's or ``--model-config``'s) as a value, else a ConfigError."""
    try:
        return loads_json(text, object_pairs_hook=_unique_keys)
    except NotJSON as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except _RepeatedKey as exc:
        raise ConfigError(f"{source}: {exc.problem}") from None


def parse_model_config(text: str, source: str = "--model-config") -> dict[str, Any]:
    """Model keyword arguments given as JSON text: a JSON object, else a ConfigError."""
    data = _loads_config_json(text, source)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a JSON object of model arguments, e.g. '{{\"width\": 48}}', "
            f"got {type(data).__name__}"
        )
    return data


#: The most bytes a ``--config`` file may hold: configs, a run's ``config.json`` and tune's
#: ``best_config.json`` are a few KB. A larger one (a 10 GB file given by mistake) is refused
#: unread, as is a FIFO or a device (``/dev/zero`` through a link) that would be read forever.
MAX_CONFIG_FILE_BYTES = 4 << 20


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping of config keys (at most :data:`MAX_CONFIG_FILE_BYTES`):
    a config, a run's ``config.json``, tune's ``best_config.json`` (its ``config``) or a
    shipped model's sidecar (its ``train_config``)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    if not path.exists():
        raise ConfigError(not_there(path, "no such config file"))  # or the link loop
    try:
        text = read_capped(path, MAX_CONFIG_FILE_BYTES).decode("utf-8-sig")  # a BOM is allowed
    except RefusedFile as exc:
        raise ConfigError(f"{path}: {exc}, not a config file (a config is a few KB)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        data = _parse_yaml(path, text)
    else:
        data = _loads_config_json(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    # tune's best_config.json nests the training keys under "config"
    if "config" in data and isinstance(data["config"], dict):
        tuned, data = "trial" in data, data["config"]
        arch = data.get("model_config", {})
        if tuned and isinstance(arch, dict):  # the network the trial trained, also from a
            # tune that predates a recipe default (its configs lack the key)
            data = {**data, "model_config": pin_pre_recipe(str(data.get("model", "cnn")), arch)}
    # a shipped model's JSON sidecar (pretrained/pcam-cnn.json: the model's metadata) holds
    # the recipe it was trained with under "train_config": that is the config (it was
    # refused as 'unknown config keys epoch, input_size, licence, …'); its teacher
    # placeholder is then refused by name unless --teacher replaces it
    elif _is_sidecar(data):
        data = _sidecar_recipe(path, data)
    return data


#: What marks a shipped model's JSON sidecar (``pretrained/pcam-cnn.json``): its name and
#: the sha256 of its weights beside the ``train_config`` it was trained with.
_SIDECAR_MARKS = frozenset({"name", "weights_sha256", "train_config"})
#: The sidecar's own metadata keys that share a config key's name (``data``: how the model's
#: patches were split, ``teacher``: the teacher's sha256 …): not config keys there.
_SIDECAR_METADATA = frozenset({"data", "model", "model_config", "teacher"})


def _is_sidecar(data: dict[Any, Any]) -> bool:
    """Whether ``data`` has a shipped model sidecar's shape (its marks); any other mapping
    with a ``train_config`` key is a config, where that key is unknown."""
    return data.keys() >= _SIDECAR_MARKS


def _sidecar_recipe(path: Path, data: dict[Any, Any]) -> dict[str, Any]:
    """A sidecar's ``train_config``; refused when it is not a mapping, or when the file also
    holds config keys of its own (they were dropped silently: ``lr`` beside the sidecar's
    recipe trained at the recipe's lr)."""
    recipe = data["train_config"]
    if not isinstance(recipe, dict):
        raise ConfigError(
            f"{path}: train_config is not a mapping of config keys "
            f"(got {type(recipe).__name__} {recipe!r:.60})"
        )
    extra = sorted(k for k in data if k in FIELDS and not _sidecar_metadata(k, data[k], recipe))
    if extra:
        raise ConfigError(
            f"{path}: a model sidecar's train_config beside config keys {', '.join(extra)}: "
            "put them under train_config or in a config of their own"
        )
    return recipe


def _sidecar_metadata(key: str, value: Any, recipe: dict[Any, Any]) -> bool:
    """Whether a sidecar's ``key`` (a config key's name) holds the sidecar's metadata: its
    ``data``/``teacher`` mappings, its ``model``/``model_config`` as the recipe has them.
    Any other value is a config key given beside the recipe (a copied sidecar's ``model``
    edited to ``resnet18`` was dropped silently, the recipe's model trained)."""
    if key not in _SIDECAR_METADATA:
        return False
    if key in ("data", "teacher"):
        return isinstance(value, dict)
    return value == recipe.get(key)


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError as exc:
        # only PyYAML itself missing is advice; one that fails as it imports (its C part
        # built for another Python, a module of its own missing) keeps its traceback
        if not is_missing(exc, "yaml"):
            raise
        raise ConfigError(
            f"{path}: YAML configs need PyYAML, a histomodels dependency that is not "
            "installed: pip install PyYAML (or use JSON)"
        ) from None
    try:
        return yaml.load(text, Loader=_yaml_loader(yaml))  # a SafeLoader
    except _RepeatedKey as exc:
        raise ConfigError(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        why = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML ({why})") from None
    except RecursionError:  # flow sequences or mappings nested thousands deep
        raise ConfigError(f"{path}: not usable YAML (nested too deeply)") from None
    except ValueError as exc:  # a scalar its constructor refuses: 2001-13-45, 5000 digits
        raise ConfigError(f"{path}: not usable YAML ({' '.join(str(exc).split())})") from None


def resolve_config(
    config_file: str | Path | None = None, base: TrainConfig | None = None, **options: Any
) -> TrainConfig:
    """Defaults < config file < explicit options (None means 'not given')."""
    cfg = validate(base or TrainConfig())
    if config_file:
        data = read_config_file(config_file)
        if options.get("teacher") is not None:  # --teacher replaces the file's (e.g. a
            # placeholder) unchecked; a bad one is then the option's, not the file's, fault
            data = {k: v for k, v in data.items() if k != "teacher"}
        cfg = merge(cfg, data, str(config_file), skip_none=False)
        # the file's model as the file gives it; not when an option replaces the model
        # (merge then drops the file's model_config with it); judged before merging again
        # (a model_config nested hundreds deep is the check's one line, not a RecursionError)
        replaced = options.get("model") not in (None, cfg.model)
        if {"model", "model_config"} & data.keys() and not replaced:
            check_model(cfg, str(config_file))
        try:
            return merge(cfg, options)
        except RecursionError:  # dataclasses.asdict over a value nested hundreds deep
            raise ConfigError(f"{config_file}: a value is nested too deeply") from None
    return merge(cfg, options)


def check_model(cfg: TrainConfig, source: str = "config") -> None:
    """``model`` and ``model_config`` as the model registry judges them without building
    the model (:func:`~histomodels.models.registry.check_config`: a name it, or timm, does
    not know; a key the builder does not take; a value of the wrong type, or outside the
    range or choices the builder's signature states): a ConfigError naming ``source`` and
    the key. Imports the model zoo (PyTorch, timm)."""
    import histomodels.models  # noqa: F401 (the zoo registers its builders)
    from histomodels.models import registry

    problem = registry.name_problem(cfg.model)
    if problem:
        raise ConfigError(f"{source}: model: {cfg.model!r}: {problem}")
    try:
        registry.check_config(cfg.model, cfg.model_config)
    except registry.ModelError as exc:
        raise ConfigError(f"{source}: {exc}") from None


#: YAML 1.2's floats that YAML 1.1 (PyYAML) reads as strings: an exponent without a dot
#: (``4e-3``, ``1E5``) or without a sign (``1.0e5``). PyYAML's own float pattern covers the
#: rest (``0.5``, ``1.0e-5``, ``.inf``, ``.nan``).
_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+[eE][-+]?[0-9]+)$""",
    re.X,
)


def _yaml_loader(yaml: Any) -> type:
    """PyYAML's SafeLoader, plus an implicit resolver that reads :data:`_YAML12_FLOAT` as
    floats (the known PyYAML recipe), so ``lr: 4e-3`` is 0.004, not the string '4e-3';
    aliases (``*name``) are refused (a billion-laughs file), and so is a key given twice in
    one mapping (:class:`_RepeatedKey`)."""

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            # An alias shares a node: ten aliases of ten aliases ... (YAML's billion laughs)
            # is a 1 KB file whose value every later step (type checks, their error text,
            # config.json) walks as 10^9 items. A config needs none: refused.
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed in a config file", mark
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            # PyYAML keeps the last of a repeated key silently: refused (in this mapping or
            # a nested one: each is constructed here)
            self._unique_keys(node, deep)
            return super().construct_mapping(node, deep=deep)

        def _unique_keys(self, node: Any, deep: bool) -> None:
            """Refuse a key ``node`` (a mapping) gives twice, as :class:`_RepeatedKey`. An
            inline ``<<: {...}`` (or ``<<: [{...}, ...]``) is checked here too: PyYAML's
            flatten_mapping joins its keys into this mapping's, so it is never constructed
            on its own; its keys yield to this mapping's (YAML's merge), and ``<<`` twice
            is a key given twice."""
            seen: dict[Any, str] = {}
            merges = 0
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<:``
                    merges += 1
                    if merges > 1:
                        raise _RepeatedKey("<<")
                    merged = getattr(value_node, "value", None)
                    for inner in [value_node, *(merged if isinstance(merged, list) else [])]:
                        if isinstance(inner, yaml.MappingNode):
                            self._unique_keys(inner, deep)
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):  # PyYAML's own error follows
                    continue
                written = str(getattr(key_node, "value", key))
                if key in seen:  # 1, 1.0 and true are one key to Python
                    raise _RepeatedKey(key, (seen[key], written))
                seen[key] = written

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
    return Loader
