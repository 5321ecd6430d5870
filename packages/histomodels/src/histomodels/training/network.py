"""The network a run trains: built from the model registry (from the weights source on a
fresh run, from ``last.pt`` on resume) and wrapped for the optimizer step (backbone
freezing, DistributedDataParallel, ``torch.compile``)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histocore.errors import DomainError
from histomodels import distributed as D
from histomodels.checkpoint import build_with_weights
from histomodels.config import RECIPE_MODEL_DEFAULTS, ConfigError, TrainConfig, pin_pre_recipe
from histomodels.device import memory_reason, out_of_memory
from histomodels.models import create_model
from histomodels.models.registry import ModelError, ModelTooLarge, check_build, shown_config
from histomodels.models.weights import WeightsError
from histomodels.training.schedule import set_backbone_frozen

#: What a config its builder cannot use raises, while building or on the first batch: the
#: cnn's ``Output size is too small`` (RuntimeError, ``depth: 8`` on 96 px), a kernel larger
#: than the patch (RuntimeError, ViT ``patch_size: 97``), timm's checks (AssertionError,
#: ``embed_dim: 7``, ``global_pool: bogus``, an ``img_size`` the patches do not have),
#: ValueError, ZeroDivisionError, OverflowError. Anything else (AttributeError, NameError,
#: KeyError, IndexError, TypeError...) from our own builders, whose keys and value types
#: check_config has matched to their signatures, is a bug in the model code and keeps its
#: traceback; so is one of these when the same build without the user's keys fails too. A
#: ``timm/`` model's keys are not matched to a signature, so what timm's own code raises for
#: them is of any type (``img_size: [96]``: IndexError; Swin ``num_heads: 3``: TypeError);
#: what our code around it raises (the centre head, the resize) is held to this list.
#: A bug that only the user's value reaches still reads as theirs; the line names the
#: exception's type and message.
CONFIG_FAULTS: tuple[type[Exception], ...] = (
    RuntimeError, AssertionError, ValueError, ZeroDivisionError, OverflowError,
)  # fmt: skip


class BuildRefused(ConfigError):
    """The trial build refused ``model_config``: it cannot build, or builds a model over
    :data:`~histomodels.models.registry.MAX_MODEL_VALUES` values. ``given``: the keys the
    user gave (empty: the defaults), for the caller to name where they came from (the CLI:
    ``--model-config`` or the config file)."""

    def __init__(self, message: str, given: dict[str, Any]) -> None:
        super().__init__(message)
        self.given = given


class BuildOutOfMemory(DomainError, MemoryError):
    """Memory ran out while the model was built (the meta-device trial build went through):
    the machine's limit, not a fault of the config or of the code."""


def build_model(
    cfg: TrainConfig,
    device: torch.device,
    state: dict[str, Any] | None = None,
    state_path: str | Path = "last.pt",
    input_size: int | None = None,
    given: dict[str, Any] | None = None,
) -> nn.Module:
    """``cfg.model`` on ``device``: with the weights of ``cfg.weights``, or of ``state`` (a
    resumed ``last.pt``, read from ``state_path``). Call
    :func:`~histomodels.models.registry.check_config` first.

    A fresh model is first built on the meta device and run on ``input_size`` px patches
    (:func:`~histomodels.models.registry.check_build`: no memory, so a config asking for
    30 GB is refused before it is allocated). ``given``: the ``model_config`` values the
    user gave (default :func:`given_config`). When it holds any, what that trial or the
    build raises of :data:`CONFIG_FAULTS` is one :class:`BuildRefused` naming them, unless the same
    trial without them fails too; other exceptions, and any with the defaults alone, are
    bugs and keep their traceback. Over 10^9 values is refused whoever gave the config.
    Memory running out in the build is :class:`BuildOutOfMemory`, whoever gave it."""
    if state is not None:  # the config is the file's: the same rebuild as any checkpoint
        # no TypeError caught: check_config has matched the keys and value types against
        # the builder's signature, so one raised while building is a bug in the model code
        weights = state.get("train_state_dict") or state["state_dict"]
        model = build_with_weights(cfg.model, cfg.model_config, weights, state_path,
                                   config_checked=True)  # fmt: skip
        return _placed(model, cfg, device)
    given = given_config(cfg) if given is None else given
    shown = f"model_config {shown_config(given)}" if given else "the default model_config"
    try:
        if input_size is not None:
            check_build(cfg.model, cfg.model_config, input_size)
        model = create_model(cfg.model, weights=cfg.weights, **cfg.model_config)
    except ModelTooLarge as exc:
        raise BuildRefused(f"{shown}: {exc}", given) from None
    except DomainError as exc:
        if isinstance(exc, ModelError):
            raise ConfigError(str(exc)) from None
        hint = network_hint(cfg) if isinstance(exc, WeightsError) else None
        if hint:
            raise WeightsError(f"{exc}; {hint}") from None
        raise
    except Exception as exc:
        if out_of_memory(exc):  # neither the config's fault nor a bug: the machine's limit
            why = memory_reason(exc)
            raise BuildOutOfMemory(f"{cfg.model}: out of memory while building it ({why})") from exc
        if not given or not _config_fault(exc, cfg, given, input_size):
            raise
        size = f" for {input_size}x{input_size} px patches" if input_size else ""
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise BuildRefused(f"{shown}: cannot build {cfg.model}{size} ({why})", given) from None
    return _placed(model, cfg, device)


#: The longest ``model_config`` JSON a hint spells out: a network's keys and values take
#: a few hundred characters; a longer text (a checkpoint's long strings) gets no hint.
MAX_HINT_CONFIG = 400


def network_hint(cfg: TrainConfig) -> str | None:
    """What to give when ``cfg.weights``, a histomodels checkpoint of ``cfg.model``, holds
    another network than ``cfg.model_config`` builds: its own ``model_config`` (a key the
    training recipe sets that it lacks read as before the recipe, so a checkpoint written
    before centre pooling became the default is a ``centre: none`` cnn), with the builder's
    default for each key the run sets and it lacks (``--model-config`` is merged key by key
    into a config file's model_config: the whole network is spelled out, or the file's
    value would stay), as one shell word (``shlex.quote``) to paste. None when the file is
    no such checkpoint or names the network this run builds (the weights do not fit for
    another reason); when ``cfg.weights`` is a shipped model's name (its own error names
    its config); and when the checkpoint's config is not one the model's builder takes
    (:func:`~histomodels.models.registry.check_config`: the file is untrusted, and its
    text is not to be pasted), has a key whose default is not known (a ``timm/`` key),
    or is longer than :data:`MAX_HINT_CONFIG`."""
    from histomodels import pretrained
    from histomodels.checkpoint import read_checkpoint
    from histomodels.models.registry import check_config, config_defaults

    if not cfg.weights or pretrained.shipped_name(cfg.weights) is not None:
        return None
    if not Path(cfg.weights).is_file():
        return None
    try:
        ckpt = read_checkpoint(cfg.weights)
    except (DomainError, OSError):
        return None
    arch = ckpt.get("model_config")
    if ckpt.get("model") != cfg.model or not isinstance(arch, dict):
        return None
    held = pin_pre_recipe(cfg.model, arch)
    defaults = config_defaults(cfg.model)
    lacking = [key for key in cfg.model_config if key not in held]
    if any(key not in defaults for key in lacking):
        return None
    held.update({key: defaults[key] for key in lacking})
    try:
        check_config(cfg.model, held)
        text = json.dumps(held, sort_keys=True)  # ASCII: escapes control characters too
    except (ModelError, TypeError, ValueError, RecursionError):
        return None
    if held == cfg.model_config or len(text) > MAX_HINT_CONFIG:
        return None
    return (
        f"it holds a {cfg.model} of model_config {text} and this run builds "
        f"{json.dumps(cfg.model_config, sort_keys=True)}: give --model-config "
        f"{shlex.quote(text)} (model_config in a config file) to train on from it"
    )


def _config_fault(
    exc: Exception, cfg: TrainConfig, given: dict[str, Any], input_size: int | None
) -> bool:
    """Whether ``exc``, raised building ``cfg``'s model, is the fault of the ``given``
    keys: one of :data:`CONFIG_FAULTS` (any exception timm's own code raises for a ``timm/``
    model, whose keys are not matched to a signature), and the trial build without
    ``given`` (the recipe's defaults, :func:`fit_input_size`'s ``img_size``) goes through."""
    timm_raised = cfg.model.startswith("timm/") and _raised_in_timm(exc)
    if not isinstance(exc, CONFIG_FAULTS) and not timm_raised:
        return False
    if input_size is None:
        return True
    rest = {k: v for k, v in cfg.model_config.items() if k not in given}
    rest.update({k: v for k, v in RECIPE_MODEL_DEFAULTS.get(cfg.model, {}).items()
                 if k in given})  # fmt: skip
    rest = fit_input_size(dataclasses.replace(cfg, model_config=rest), input_size).model_config
    try:
        check_build(cfg.model, rest, input_size)
    except Exception:  # the model fails without the user's keys too: not theirs
        return False
    return True


def _raised_in_timm(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback that is timm's or histomodels' is
    timm's (torch's own frames are passed over: a tensor op raises for its caller)."""
    import timm

    import histomodels

    timm_dir, ours = Path(str(timm.__file__)).parent, Path(str(histomodels.__file__)).parent
    last = None
    tb = exc.__traceback__
    while tb is not None:  # outermost first: the last match is the innermost
        where = Path(tb.tb_frame.f_code.co_filename)
        if where.is_relative_to(timm_dir):
            last = "timm"
        elif where.is_relative_to(ours):
            last = "ours"
        tb = tb.tb_next
    return last == "timm"


def _placed(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
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


def fit_input_size(cfg: TrainConfig, patch_size: int) -> TrainConfig:
    """``cfg`` with ``img_size`` set in ``model_config`` for a ``timm/<name>`` model whose
    timm config says it takes a fixed input size (ViT, Swin...; ``fixed_input_size``) and
    whose default differs from what it will see: ``input_size`` when given (the model
    resizes to it), else ``patch_size``. timm then builds it for that size (and resamples
    pretrained position embeddings to it), as timm users pass ``img_size=``; without it
    ``timm/vit_tiny_patch16_224`` raised ``Input height (96) doesn't match model (224)``.
    Unchanged when ``model_config`` sets ``img_size`` or ``dynamic_img_size``."""
    mc = cfg.model_config
    if not cfg.model.startswith("timm/") or {"img_size", "dynamic_img_size"} & mc.keys():
        return cfg
    import timm.models

    name = cfg.model.removeprefix("timm/")
    if ":" in name:  # hf-hub: / local-dir: configs are read when the model is built
        return cfg
    pretrained = timm.models.get_pretrained_cfg(name)
    if pretrained is None or not getattr(pretrained, "fixed_input_size", False):
        return cfg
    side = int(mc.get("input_size") or patch_size)
    if tuple(pretrained.input_size[-2:]) == (side, side):
        return cfg
    return dataclasses.replace(cfg, model_config={**mc, "img_size": side})


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
        if device.type == "cpu":
            check_cpu_compiler()
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def check_cpu_compiler() -> None:
    """``--compile`` on the CPU builds C++ at the first step: with no working compiler that
    was a 140-line InductorError after training had begun; now one line before it."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # another torch layout: leave it to torch.compile
        return
    try:
        get_cpp_compiler()
    except (InvalidCxxCompiler, OSError) as exc:  # none found; CXX not executable
        why = "found none" if isinstance(exc, InvalidCxxCompiler) else f"its compiler: {exc}"
        raise DomainError(
            f"--compile: torch.compile needs a working C++ compiler on the CPU and {why} "
            "(install g++, or set CXX); train without --compile"
        ) from None
