"""Loading weights from local files and splitting a model into backbone and head.

Files are read with ``torch.load(weights_only=True)`` (or safetensors), so a weights file
never runs code. Accepted layouts: a bare state dict; a torchvision/timm training
checkpoint (``{"model": sd}``, ``{"state_dict": sd}``, ``{"model_ema": sd}``); a
histomodels checkpoint; a ``.safetensors`` file (what the hub ships for timm models).
The classifier of the file (ImageNet's 1000 classes) is dropped when its shape does not fit
our 1-logit head; any other mismatch is an error naming the file.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histocore.errors import DomainError, is_missing
from histocore.io import not_there

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "model_ema", "module")
#: wrapper prefixes dropped when the keys then fit: DDP, torch.compile, a ``model`` attribute,
#: and ``InputResize`` (a checkpoint of a model with ``input_size``: weights load before the
#: builder wraps the model)
_PREFIXES = ("module.", "_orig_mod.", "model.", "inner.")


class WeightsError(DomainError, ValueError):
    """A weights file that cannot be used for the model; the message names the file."""


def torch_load_reason(exc: BaseException, path: str | Path | None = None) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file (``path``).

    For a file holding pickled objects torch advises retrying with ``weights_only=False``;
    for an untrusted file that is the wrong advice, so say what the file holds instead.
    """
    text = str(exc).strip()
    if "Unsupported operand" in text:  # the weights-only unpickler met a byte it cannot run
        return _unsupported_operand(text, path)
    if "legacy .tar format" in text and not (path is not None and _legacy_tar(path)):
        return NOT_TORCH_SAVE  # any bytes tarfile opens: all zeros are an empty tar archive
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds Python objects or code, not just tensors; refused (weights_only)"
    if isinstance(exc, KeyError) or text.isdigit():  # the unpickler met an unknown opcode
        return NOT_TORCH_SAVE
    if _cut_short(exc, text):
        return TRUNCATED
    return text.splitlines()[0] if text else type(exc).__name__


#: why a file whose bytes torch.load cannot take for any of its formats is refused
NOT_TORCH_SAVE = "not a torch.save file: its bytes are neither a zip archive nor a pickle"


def _unsupported_operand(text: str, path: str | Path | None) -> str:
    """Why torch's weights-only unpickler stopped at a byte (``Unsupported operand N``). A
    pickle of protocol 4 or 5 (a ``pickle.dumps`` file, or ``torch.save(...,
    pickle_protocol=4)``) stops so at its first FRAME: it is a pickle torch cannot read,
    refused before anything in it ran, not bytes that are no pickle at all."""
    import pickletools

    match = re.search(r"Unsupported operand (\d+)", text)
    code = int(match.group(1)) if match else -1
    op = next((o for o in pickletools.opcodes if ord(o.code) == code), None)
    proto = _pickle_protocol(path) if path is not None and op is not None else None
    if op is None or proto is None or proto < 4 or op.proto > proto:
        return NOT_TORCH_SAVE
    return (
        f"a pickle of protocol {proto}, which torch.load's weights-only reader cannot read; "
        "refused, nothing in it was run (torch.save writes protocol 2 unless given another "
        "pickle_protocol)"
    )


def _pickle_protocol(path: str | Path) -> int | None:
    """The protocol a pickle's PROTO opcode names at the start of ``path``, or of the
    ``<folder>/data.pkl`` inside a ``torch.save`` zip (its first member's folder, as torch
    reads it); None when it starts with no PROTO or cannot be read. Only the refusal's words
    hang on it: any error reading a hostile archive (a member flagged encrypted, a broken
    deflate stream) is None, not a traceback."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head == b"PK":  # a zip: torch.save's pickle is its <folder>/data.pkl
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if not names:
                    return None
                with archive.open(names[0].split("/")[0] + "/data.pkl") as member:
                    head = member.read(2)
    except Exception:  # KeyError: no such member; RuntimeError (encrypted), zlib.error...
        return None
    return head[1] if len(head) == 2 and head[0] == 0x80 else None


#: the members of a ``torch.save`` file in its oldest format, a tar archive (torch < 0.4)
_LEGACY_TAR_MEMBERS = frozenset({"sys_info", "pickle", "storages", "tensors"})


def _legacy_tar(path: str | Path) -> bool:
    """``path`` is a tar archive holding the members of a legacy ``torch.save`` file, which
    torch refuses whole with ``weights_only``. torch.load says that of any bytes
    ``tarfile`` opens: an all-zero file (a disk block never written) reads as an empty tar
    archive, and was said to hold Python objects or code. At most a few headers are read."""
    import tarfile

    names: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for _, member in zip(range(len(_LEGACY_TAR_MEMBERS) + 4), tar, strict=False):
                names.add(member.name)
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return False
    return names >= _LEGACY_TAR_MEMBERS


#: why a file torch.load ran out of, or lost its place in, is refused (its own words were
#: Python's: ``pop from empty list``, ``[Errno 22] Invalid argument``, ``unpack requires a
#: buffer of 4 bytes``, or miniz's ``failed finding central directory. This is an internal
#: miniz error...``)
TRUNCATED = "truncated or damaged: not a whole torch.save file"

#: what torch.load says of a zip or pickle that ends early (or whose offsets point past its
#: end), the first line of its message
_CUT_SHORT_TEXT = (
    "failed finding central directory",  # a zip cut before its directory
    "failed reading zip archive",  # miniz, other structure errors
    "unexpected EOF",  # a legacy-format tensor's bytes
    "negative seek value",  # offsets past the end, read from memory
    "unpack requires a buffer",  # struct, on too few bytes
)


def _cut_short(exc: BaseException, text: str) -> bool:
    """``exc`` says the file's bytes ran out or do not hold together (not a refusal of what
    they hold, not an error of the file system)."""
    import errno
    import pickle
    import struct

    if isinstance(exc, EOFError | IndexError | struct.error | pickle.UnpicklingError):
        return True  # IndexError: the unpickler popped an empty stack ("pop from empty list")
    if isinstance(exc, OSError) and exc.errno == errno.EINVAL:  # a seek past a cut-off end
        return True
    return any(m in text for m in _CUT_SHORT_TEXT)


def damaged_member(path: Path) -> str | None:
    """The first stored member of a ``torch.save`` zip whose bytes fail their CRC-32, else
    None. ``torch.load`` does not check CRCs: a flipped byte in a weight loaded as a wrong
    weight, silently. Only stored members (what ``torch.save`` writes) are checked, so a
    compressed member cannot make this inflate anything; a file that is not a readable zip
    is left to ``torch.load``'s own message."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                # an "encrypted" flag: zipfile would raise RuntimeError; torch.load refuses it.
                # CRC 0: torch.save with serialization config save.compute_crc32 = False
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                    continue
                if info.CRC == 0 and info.file_size:
                    continue
                with archive.open(info) as member:
                    while member.read(1 << 20):
                        pass
    except zipfile.BadZipFile as exc:
        if "Bad CRC-32" in str(exc):
            return str(exc).removeprefix("Bad CRC-32 for file ").strip("'")
        return None
    except (OSError, EOFError, ValueError, NotImplementedError):
        return None
    return None


def tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` cannot be a stored weight: a sparse, nested, quantised or meta tensor
    (each made a torch traceback further on), or complex values (cast to real with only a
    warning: wrong weights); else None."""
    if tensor.is_nested:
        return "is a nested tensor"
    if tensor.layout != torch.strided:
        return f"is a {str(tensor.layout).removeprefix('torch.')} tensor, not a dense one"
    if tensor.device.type != "cpu":
        return f"is on device '{tensor.device.type}', holding no values"
    if tensor.is_quantized:
        return "is a quantised tensor"
    if tensor.is_complex():
        return f"holds complex values ({str(tensor.dtype).removeprefix('torch.')})"
    return None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a tensor dict from any of the supported layouts (no code execution). Messages
    name a file of a shipped model's name ``./pcam-cnn``, as it is given to mean it."""
    from histomodels import pretrained

    given, path = path, Path(path)
    named = pretrained.shown(path)
    if path.is_dir():
        raise WeightsError(f"{named}: is a folder, not a weights file")
    if not path.is_file():  # a source name a model does not take: registry.create_model
        # a link to itself said "no such weights file": not_there names the loop
        line = pretrained.not_there_line(given, "no such weights file")
        raise WeightsError(line or not_there(path, "no such weights file"))
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - timm depends on safetensors
            if not is_missing(exc, "safetensors"):  # installed but broken: its traceback
                raise
            raise WeightsError(f"{named}: install safetensors to read .safetensors files") from None
        try:
            obj = dict(load_file(str(path), device="cpu"))
        except Exception as exc:
            raise WeightsError(f"{named}: not a readable safetensors file ({exc})") from None
        return _plain_weights(named, obj)
    damaged = damaged_member(path)
    if damaged is not None:
        raise WeightsError(f"{named}: damaged file ({damaged} fails its CRC-32 check)")
    try:
        with warnings.catch_warnings():  # a refused file gets one line, not torch's warning
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{named}: not a loadable weights file ({torch_load_reason(exc, path)})"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == "histomodels.checkpoint":
        obj = obj.get("state_dict")
    elif isinstance(obj, dict) and not _is_state_dict(obj):
        for key in _WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise WeightsError(f"{named}: holds no state dict (a dict of tensors)")
    return _plain_weights(named, obj)


def _plain_weights(path: str | Path, obj: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``obj`` when every tensor can be a weight (:func:`tensor_problem`), else a
    WeightsError naming the first that cannot (safetensors holds complex tensors too). The
    whole file is judged, also tensors the model will not load (an ImageNet head, keys of
    another model): no weights file needs such a tensor, so one that holds it is refused as
    untrusted input rather than partly used."""
    for name, tensor in obj.items():
        problem = tensor_problem(tensor)
        if problem is not None:
            raise WeightsError(
                f"{path}: tensor {name!r} {problem} (refused whole: every tensor of a weights "
                "file must be a plain one, loaded or not)"
            )
    return dict(obj)


def _strip_prefixes(sd: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (DDP ``module.``, compile ``_orig_mod.``, ``InputResize``'s
    ``inner.``) when keys then fit."""
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            stripped = {k[len(prefix) :]: v for k, v in sd.items()}
            if len(set(stripped) & target) > len(set(sd) & target):
                sd = stripped
    return sd


def head_module(model: nn.Module) -> nn.Module | None:
    """The classifier module (timm's ``get_classifier`` convention, else common names)."""
    model = getattr(model, "module", model)
    model = getattr(model, "inner", model)
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module):
            return head
    for name in ("classifier", "head", "fc"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys that belong to the classifier head."""
    head = head_module(model)
    if head is None:
        return set()
    ids = {id(t) for t in list(head.parameters()) + list(head.buffers())}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in ids}


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(backbone_params, head_params)`` for warm-up freezing and per-group learning rates."""
    head = head_module(model)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    heads = [p for p in model.parameters() if id(p) in head_ids]
    if not heads:
        raise ValueError(f"cannot find the classifier head of {type(model).__name__}")
    return backbone, heads


def apply_state_dict(
    model: nn.Module, sd: dict[str, torch.Tensor], source: str = "weights"
) -> dict[str, list[str]]:
    """Load ``sd`` into ``model``; the head may be skipped when it does not fit, nothing else."""
    target = model.state_dict()
    sd = _strip_prefixes(sd, set(target))
    heads = head_keys(model)
    skipped = [k for k in heads if k in sd and sd[k].shape != target[k].shape]
    for k in skipped:
        del sd[k]
    bad = [k for k, v in sd.items() if k in target and v.shape != target[k].shape]
    if bad:
        k = bad[0]
        raise WeightsError(
            f"{source}: {len(bad)} tensors do not fit the model, e.g. {k}: "
            f"{tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
        )
    missing = [k for k in target if k not in sd and k not in heads]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"{source}: {len(missing)} model tensors missing from the file, e.g. {missing[0]}"
        )
    unexpected = [k for k in sd if k not in target]
    if len(unexpected) > len(sd) // 2:
        raise WeightsError(f"{source}: most keys do not belong to this model, e.g. {unexpected[0]}")
    _refuse_non_finite({k: v for k, v in sd.items() if k in target}, source)
    model.load_state_dict(sd, strict=False)
    return {"skipped_head": sorted(skipped), "unexpected": sorted(unexpected)}


def _refuse_non_finite(sd: dict[str, torch.Tensor], source: str) -> None:
    bad = non_finite_tensor(sd)
    if bad is not None:
        raise WeightsError(f"{source}: holds non-finite values (NaN or inf) in {bad!r}")


def non_finite_tensor(sd: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of ``sd`` holding NaN or inf, if any
    (such weights give NaN scores: a training run then said it diverged, blaming the LR)."""
    for name, tensor in sd.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def load_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local weights file into ``model`` (head skipped if it is ImageNet's); a file
    named like a shipped model is ``./pcam-cnn`` in messages
    (:func:`~histomodels.pretrained.shown`)."""
    from histomodels import pretrained

    return apply_state_dict(model, read_state_dict(path), source=pretrained.shown(path))


def load_by_order(
    model: nn.Module, sd: dict[str, torch.Tensor], source: str, *, skip_head: bool = True
) -> int:
    """Copy tensors in parameter order (for files whose key names differ but layout matches)."""
    heads = head_keys(model) if skip_head else set()
    target = [(k, v) for k, v in model.state_dict().items() if k not in heads]
    values = list(sd.values())
    if skip_head:
        values = values[: len(target)]
    if len(values) != len(target):
        raise WeightsError(f"{source}: {len(values)} tensors, the model has {len(target)}")
    new = {}
    for (k, v), w in zip(target, values, strict=True):
        if v.shape != w.shape:
            raise WeightsError(
                f"{source}: tensor for {k} has shape {tuple(w.shape)}, not {tuple(v.shape)}"
            )
        new[k] = w
    _refuse_non_finite(new, source)
    model.load_state_dict(new, strict=False)
    return len(new)
