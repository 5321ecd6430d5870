"""Checkpoints are plain dicts, so ``torch.load(weights_only=True)`` can open them.

Keys: ``format``, ``version``, ``model`` (registry name; ``ensemble`` for
:mod:`histomodels.ensemble`), ``model_config`` (kwargs for
:func:`~histomodels.models.create_model`), ``state_dict``, ``normalization`` (mean/std),
``input_size``, ``train_config``, ``metrics``, ``epoch``, ``temperature`` (for
calibrated probabilities; 1.0 until fitted), optionally ``threshold`` (a number in [0, 1])
and ``threshold_rule`` (one line of text) for a model shipped with its operating point, and
optionally ``optimizer``/``scheduler`` state and ``history`` for resuming.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histocore.errors import DomainError
from histocore.io import atomic_write_bytes, not_there, one_line
from histomodels import pretrained
from histomodels.preprocess import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "histomodels.checkpoint"
VERSION = 1


class CheckpointError(DomainError, ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


def make_checkpoint(
    model: nn.Module,
    name: str,
    model_config: dict[str, Any] | None = None,
    *,
    normalization: dict[str, list[float]] | None = None,
    input_size: int = 96,
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    epoch: int = 0,
    temperature: float = 1.0,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (state dict moved to CPU)."""
    module = getattr(model, "module", model)  # unwrap DDP
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "model_config": dict(model_config or {}),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "normalization": normalization or {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "input_size": int(input_size),
        "train_config": dict(train_config or {}),
        "metrics": dict(metrics or {}),
        "epoch": int(epoch),
        "temperature": float(temperature),
        **extra,
    }


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Atomic save: a kill mid-write never leaves a truncated ``best.pt``."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """The file a checkpoint given as ``path`` reads: a shipped model's name
    (:func:`histomodels.pretrained.shipped_name`) its weights inside the package, never a
    file or folder of that name in the working folder; a run folder its ``best.pt``;
    anything else as given."""
    name = pretrained.shipped_name(path)
    if name is not None:
        return pretrained.HERE / f"{name}.safetensors"
    path = Path(path)
    if path.is_dir() and (path / "best.pt").is_file():
        return path / "best.pt"
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict with ``weights_only=True`` (no code runs).

    ``path`` may also be a run folder (its ``best.pt``) or the name of a model shipped in
    :mod:`histomodels.pretrained` (e.g. ``pcam-cnn``), which means that model even where a
    file or folder of that name is in the working folder (``./pcam-cnn`` reads that one;
    :func:`histomodels.pretrained.shipped_name`)."""
    name = pretrained.shipped_name(path)
    if name is not None:
        return {"format": FORMAT, "version": VERSION, **pretrained.checkpoint_dict(name)}
    given, path = path, resolve_checkpoint(path)
    named = pretrained.shown(path)  # ./pcam-cnn: a file of the shipped model's name
    if not path.is_file():
        if path.is_dir():  # resolve_checkpoint gives a run folder's best.pt when it has one
            raise CheckpointError(f"{named}: a folder without best.pt, so not a run folder")
        if path.exists():  # a FIFO or device would hang torch.load
            raise CheckpointError(f"{named}: not a regular file")
        line = pretrained.not_there_line(given, "no such checkpoint file")
        raise CheckpointError(line or not_there(path, "no such checkpoint file"))  # or a loop
    from histomodels.models.weights import damaged_member

    damaged = damaged_member(path)
    if damaged is not None:
        raise CheckpointError(f"{named}: damaged file ({damaged} fails its CRC-32 check)")
    try:
        ckpt = torch_load_quiet(path)
    except Exception as exc:  # pickle errors, truncated zip, unsafe globals ...
        from histomodels.models.weights import torch_load_reason

        why, hint = torch_load_reason(exc, path), ""
        if path.suffix.lower() == ".onnx":  # what `histomodels export` writes
            hint = (
                ": an .onnx export runs in ONNX Runtime (see `histomodels export --help`); "
                "give this command the .pt checkpoint it was exported from"
            )
        raise CheckpointError(f"{named}: not a loadable checkpoint ({why}){hint}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{named}: not a histomodels checkpoint (missing format tag)")
    check_checkpoint(ckpt, named)
    return ckpt


def torch_load_quiet(path: Path) -> Any:
    """``torch.load(weights_only=True)`` without torch's warnings (a foreign pickle
    protocol, storage types): a refused file gets one error line, not three."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


#: Building a model from a checkpoint's config may register at most this many parameter
#: and buffer elements beyond twice the checkpoint's own (non-persistent buffers, builders
#: that replace a layer) — and this many tensors beyond twice its count.
BUILD_SLACK_ELEMENTS = 1 << 24
BUILD_SLACK_TENSORS = 1024


def stored_elements(state_dict: dict[str, torch.Tensor]) -> int:
    """The elements a state dict really stores: each distinct storage counted once, in its
    tensors' element size. A tensor's shape is only a claim (a stride-0 view of one stored
    byte can claim 10^10 elements); its storage is what the file holds."""
    sizes: dict[int, int] = {}
    for tensor in state_dict.values():
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        sizes[key] = max(sizes.get(key, 0), storage.nbytes() // max(tensor.element_size(), 1))
    return sum(sizes.values())


@contextlib.contextmanager
def build_budget(state_dict: dict[str, torch.Tensor], path: str | Path) -> Iterator[None]:
    """Build a model from a checkpoint's ``model_config`` inside this block.

    A config is data: ``{"depth": 100000}`` in a 2 KB file would build for minutes and
    allocate hundreds of GB before the weights could be found not to fit. Every parameter
    and buffer registered while building is counted (torch's global registration hooks);
    past twice what the state dict holds, plus slack, the build stops with a
    :class:`CheckpointError`, before that tensor is initialised. Only this thread's
    registrations count: a model another thread builds meanwhile is neither counted nor
    refused."""
    from torch.nn.modules import module as torch_module

    max_elements = 2 * stored_elements(state_dict) + BUILD_SLACK_ELEMENTS
    max_tensors = 2 * len(state_dict) + BUILD_SLACK_TENSORS
    seen = [0, 0]
    builder = threading.get_ident()

    def count(_module: nn.Module, _name: str, tensor: torch.Tensor | None) -> None:
        if threading.get_ident() != builder:  # the hooks are global: another thread's model
            return
        seen[0] += 1
        seen[1] += tensor.numel() if tensor is not None else 0
        if seen[0] > max_tensors or seen[1] > max_elements:
            raise CheckpointError(
                f"{path}: its model_config builds a model far larger than its weights "
                f"(over {seen[1]:,} values in {seen[0]:,} tensors; the weights hold "
                f"{(max_elements - BUILD_SLACK_ELEMENTS) // 2:,}); refused"
            )

    hooks = (
        torch_module.register_module_parameter_registration_hook(count),
        torch_module.register_module_buffer_registration_hook(count),
    )
    try:
        yield
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc):
            raise
        raise CheckpointError(  # one layer too large to allocate at all
            f"{path}: its model_config builds a layer too large to allocate; refused"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


#: The model computes with normalisation stats and a member's temperature in float32:
#: a value past this is inf there, a positive one under ``F32_TINY`` is 0 (or subnormal).
F32_MAX = 3.4028234663852886e38
F32_TINY = 1.1754943508222875e-38


def _numbers(value: Any, n: int, *, positive: bool = False) -> bool:
    """``n`` numbers, each usable in float32 (std 1e-300 became 0 there, mean 1e300 inf:
    every score NaN); with ``positive``, each at least float32's smallest normal."""
    return (
        isinstance(value, list | tuple)
        and len(value) == n
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) and abs(v) <= F32_MAX for v in value)
        and all(v >= F32_TINY for v in value if positive)
    )


def _check_model(name: Any, cfg: Any, bad: Any, member: str = "") -> None:
    """``model`` names a registry model and ``model_config`` holds only keys it accepts.

    An ensemble's config holds member specs (``model``, ``model_config``, ``mean``,
    ``std``, ``input_size``, ``temperature``), each checked the same way.
    """
    from histomodels.models.registry import config_keys

    where = f"{member}model" if member else "model"
    if not isinstance(name, str) or not name:
        raise bad(where, f"is {type(name).__name__}, expected a model name")
    try:
        allowed = config_keys(name)
    except ValueError:
        raise bad(where, f"names unknown model {name!r}") from None
    if member and name == "ensemble":  # its members would be specs in a spec
        raise bad(where, "is 'ensemble'; an ensemble member cannot itself be an ensemble")
    where += "_config"
    if not isinstance(cfg, dict):
        raise bad(where, f"is {type(cfg).__name__}, expected a mapping")
    if name == "ensemble" and not member:
        members = cfg.get("members")
        if not isinstance(members, list) or not members or set(cfg) - {"members", "tta"}:
            raise bad(where, "must be {'members': [member specs], 'tta': bool}")
        if not isinstance(cfg.get("tta", False), bool):  # "false" would turn TTA on
            raise bad(where, f"'tta' is {cfg['tta']!r}, expected true or false")
        for i, spec in enumerate(members):
            if not isinstance(spec, dict):
                raise bad(f"members[{i}]", f"is {type(spec).__name__}, expected a mapping")
            _check_model(spec.get("model"), spec.get("model_config", {}), bad, f"members[{i}].")
            _check_member(spec, bad, f"members[{i}]")
        return
    for key, value in cfg.items():
        if not isinstance(key, str) or key not in allowed:
            raise bad(where, f"has key {key!r}, which {name} does not accept")
        ok = _scalar(value) or (isinstance(value, list | tuple) and all(map(_scalar, value)))
        if not ok:
            raise bad(where, f"value of {key!r} is {type(value).__name__}, not plain")


def _size_ok(size: Any) -> bool:
    return isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096


def _check_member(spec: dict[str, Any], bad: Any, where: str) -> None:
    """An ensemble member's preprocessing: every patch is resized to its ``input_size`` (a
    hostile size would allocate gigabytes), normalised by its std and divided by its T."""
    std: Any = spec.get("std")
    if not (_numbers(spec.get("mean"), 3) and _numbers(std, 3, positive=True)):
        raise bad(where, "needs 'mean' and 'std' of 3 numbers each (std positive; float32 values)")
    if not _size_ok(spec.get("input_size")):
        raise bad(where, "needs an integer 'input_size' in [8, 4096]")
    temp: Any = spec.get("temperature")
    if not _numbers([temp], 1, positive=True):
        raise bad(where, "needs a positive 'temperature' (a float32 value)")


def _check_weights(sd: Any, field: str, bad: Any) -> None:
    """``sd`` (the checkpoint's ``field``) is a non-empty dict of plain, finite tensors."""
    from histomodels.models.weights import non_finite_tensor, tensor_problem

    if not isinstance(sd, dict) or not sd:
        raise bad(field, f"is {type(sd).__name__}, expected a dict of tensors")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise bad(field, "holds something other than name -> tensor")
    for name, tensor in sd.items():  # a view claiming more than its storage holds
        problem = tensor_problem(tensor)
        if problem is not None:
            raise bad(field, f"{name!r} {problem}")
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise bad(field, f"{name!r} claims more values than the file stores")
    nan = non_finite_tensor(sd)  # NaN weights give NaN scores (metrics would crash)
    if nan is not None:
        raise bad(field, f"holds non-finite values (NaN or inf) in {nan!r}")


def check_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Schema check at load: one :class:`CheckpointError` naming the file and the field.

    ``model_config`` may only hold architecture keys the registry model accepts
    (:func:`~histomodels.models.registry.config_keys`), as plain values, so a checkpoint
    cannot make a builder load another file or reach the model hub.
    """

    def bad(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: checkpoint field {field!r} {problem}")

    version = ckpt.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("version", f"is {version!r}, expected an integer")
    if version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {version} is newer than this reader ({VERSION}); "
            "upgrade histomodels"
        )
    _check_model(ckpt.get("model"), ckpt.get("model_config", {}), bad)
    _check_weights(ckpt.get("state_dict"), "state_dict", bad)
    if ckpt.get("train_state_dict") is not None:  # a resumable EMA/SWA run's raw weights,
        _check_weights(ckpt["train_state_dict"], "train_state_dict", bad)  # resumed from
    norm = ckpt.get("normalization", {"mean": [0, 0, 0], "std": [1, 1, 1]})
    if not (
        isinstance(norm, dict)
        and _numbers(norm.get("mean"), 3)
        and _numbers(norm.get("std"), 3, positive=True)
    ):
        raise bad(
            "normalization",
            "must be {'mean': [3 numbers], 'std': [3 positive numbers]}, float32 values",
        )
    size = ckpt.get("input_size", 96)
    if not _size_ok(size):
        raise bad("input_size", f"is {size!r}, expected an integer in [8, 4096]")
    temp = ckpt.get("temperature", 1.0)
    if not isinstance(temp, int | float) or isinstance(temp, bool) or not 0 < temp < math.inf:
        raise bad("temperature", f"is {temp!r}, expected a positive number")
    cut = ckpt.get("threshold")  # a shipped operating point: predict and eval call by it
    if cut is not None and (
        not isinstance(cut, int | float) or isinstance(cut, bool) or not 0 <= cut <= 1
    ):  # NaN fails the range too
        raise bad("threshold", f"is {cut!r}, expected a number in [0, 1]")
    rule = ckpt.get("threshold_rule")  # printed with the threshold's source
    if rule is not None and not (isinstance(rule, str) and rule.isprintable() and len(rule) < 200):
        raise bad("threshold_rule", "must be one short line of printable text")


def decision_threshold(
    ckpt: dict[str, Any], given: float | None = None, *, note: str = ""
) -> tuple[float, str]:
    """The probability at which a patch is called tumour, and where it came from: ``given``,
    else the threshold shipped with the model (pretrained models; a number in [0, 1], checked
    at load by :func:`check_checkpoint`), else 0.5. The one rule ``predict`` and ``eval``
    (``--data`` and ``--manifest``) use; ``note`` says why no other threshold was chosen
    (``eval``: ``"no validation set given"``) and ends the source's wording."""
    if given is not None:
        return float(given), "given"
    if ckpt.get("threshold") is not None:
        rule = ckpt.get("threshold_rule") or "rule not recorded"
        detail = f"{rule} on its own validation data; {note}" if note else rule
        return float(ckpt["threshold"]), f"shipped with the model ({detail})"
    return 0.5, f"default 0.5 ({note or 'the model ships no threshold'})"


def build_with_weights(
    name: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    path: str | Path,
    *,
    config_checked: bool = False,
) -> nn.Module:
    """Registry model ``name`` built from a file's ``config`` and loaded with its
    ``state_dict`` (on the CPU, in training mode): the one way a checkpoint's (or a
    resumed ``last.pt``'s) model is rebuilt.

    The build runs under :func:`build_budget`, since a file's config is data. One
    :class:`CheckpointError` naming ``path`` when the config builds a model far larger than
    the weights, cannot build at all (unusable values of accepted keys), or the weights do
    not fit the model built. ``config_checked``: ``check_config`` (the model registry's)
    has matched the config's keys and value types against the builder, as on resume, so a
    ``TypeError`` while building is a bug in the model code and keeps its traceback.
    Otherwise the config is untrusted: any ``Exception`` from the builder (timm's ViT raises
    ZeroDivisionError for ``patch_size: 0``, AssertionError for ``embed_dim: 7``) is that
    one error line. Memory running out in the build (:func:`~histomodels.device.out_of_memory`)
    is one CheckpointError saying so, checked config or not."""
    from histomodels.device import out_of_memory
    from histomodels.models import create_model
    from histomodels.models.registry import state_dict_mismatch

    input_errors: tuple[type[Exception], ...] = (ValueError,) if config_checked else (Exception,)
    try:
        with build_budget(state_dict, path):
            model = create_model(name, pretrained=False, **config)
    except CheckpointError:
        raise
    except Exception as exc:
        if out_of_memory(exc):  # the machine's limit, not the file's config nor a bug
            first = (str(exc).strip().splitlines() or [""])[0]
            why = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            raise CheckpointError(
                f"{path}: out of memory while building model {name!r} ({why})"
            ) from exc
        if not isinstance(exc, input_errors):
            raise
        why = (  # values of the right keys but unusable
            f"{exc}" if isinstance(exc, TypeError | ValueError) else f"{type(exc).__name__}: {exc}"
        )
        raise CheckpointError(f"{path}: cannot build model {name!r} ({why})") from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:  # torch's message: a line per kind, every key (6 KB for 300)
        why = state_dict_mismatch(model, state_dict) or one_line(str(exc).splitlines()[0])
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {why}") from None
    return model


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, with its weights, in eval mode."""
    ckpt = read_checkpoint(path)
    model = build_with_weights(
        ckpt["model"], ckpt.get("model_config", {}), ckpt["state_dict"], path
    )
    return model.to(device).eval(), ckpt
