"""Models shipped inside the package: safetensors weights + a JSON sidecar per name.

``pcam-cnn`` is the default scratch CNN trained on the PCam (CC0) dev training patches by
``benchmarks/build_pcam_cnn.py`` (model card: ``pcam-cnn.md`` beside it). A
pretrained name works wherever a checkpoint path does: :func:`checkpoint_dict` turns the
pair into the fields of the plain dict ``histomodels.checkpoint`` reads (which stamps its
format and version on them), so eval, predict and export need no special case. Loading
runs no code (safetensors + JSON).

A shipped model's name always means the shipped model (:func:`shipped_name`): a file or
folder of that name in the working folder is read only when written as a path
(``./pcam-cnn``), as a model's weight source (``imagenet``) means the source. A local
folder named like a hub model silently changed what ``from_pretrained("gpt2")`` loaded
(huggingface/transformers#13836); here it is one warning line instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histocore.errors import DomainError

if TYPE_CHECKING:
    import torch


log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: What ``pcam-cnn``'s ``train_config.teacher`` holds: the teacher its build trained is not
#: shipped (its sha256 and recipe are in the sidecar's ``teacher``), so this names no file.
BUILD_TEACHER = "WORK/teacher/best.pt (the build's Lite0 teacher, see 'teacher')"


class PretrainedError(DomainError, ValueError):
    """A shipped model that is missing or damaged; the message names it (a damaged one by
    its file: ``error: <file>: <problem>`` in the CLIs, a traceback before)."""


def available() -> list[str]:
    """Names of the shipped models (those with both weights and sidecar)."""
    return sorted(p.stem for p in HERE.glob("*.safetensors") if p.with_suffix(".json").is_file())


def is_pretrained(name: str | Path) -> bool:
    """True when ``name`` is a shipped model's name (not a path on disk)."""
    return str(name) in available()


#: The local files and folders already warned about as not read (once per path and process).
_NOT_READ: set[str] = set()


def shipped_name(spec: object) -> str | None:
    """The shipped model that checkpoint or weights ``spec`` names, else None (a path).

    A name is a ``str`` that is exactly a shipped model's name (``"pcam-cnn"``): it means
    the shipped model, also where a file or folder of that name is in the working folder;
    one warning (once per path) says so and that ``./pcam-cnn`` reads that one. A string
    with a folder part (``./pcam-cnn``, ``runs/pcam-cnn``) and any :class:`~pathlib.Path`
    are paths: a Path cannot keep the ``./`` (``Path("./pcam-cnn")`` is
    ``Path("pcam-cnn")``), so a Path never means a shipped model."""
    if not isinstance(spec, str) or spec not in available():
        return None
    if os.path.lexists(spec):
        seen = os.path.abspath(spec)
        if seen not in _NOT_READ:
            _NOT_READ.add(seen)
            what = "folder" if os.path.isdir(spec) else "file"
            here = os.path.join(os.curdir, spec)
            log.warning(
                "%s: using the shipped model %s, not the %s %s in the working folder "
                "(write %s to use that one)",
                spec, spec, what, here, here,
            )  # fmt: skip
    return spec


def shown(spec: str | Path) -> str:
    """``spec`` as a checkpoint is written down (metrics.json, messages) so that it means
    the same when given again: a path that reads like a shipped model's name
    (``Path("pcam-cnn")``, given as ``./pcam-cnn``) gets its ``./``; anything else as it
    is."""
    text = str(spec)
    if shipped_name(spec) is None and is_pretrained(text):
        return os.path.join(os.curdir, text)
    return text


def not_there_line(spec: str | Path, problem: str) -> str | None:
    """``./pcam-cnn: <problem> (…)`` for a path ``spec`` that reads like a shipped model's
    name (``"./pcam-cnn"``, ``"pcam-cnn/"``, ``Path("pcam-cnn")``) where nothing of that
    name is, else None (the caller's own line). The hint says how the shipped model is
    named: a ``str`` (a command line's word) is the bare name, with no ``./`` or ``/``; a
    :class:`~pathlib.Path` is always a file, so the name is to be passed as a ``str``."""
    text = str(Path(spec))
    if shipped_name(spec) is not None or not is_pretrained(text) or os.path.lexists(text):
        return None
    if isinstance(spec, Path):
        hint = f"a Path names a file; for the shipped model pass its name {text!r}, a str"
    else:
        hint = f"the shipped model is {text}, written as its bare name"
    return f"{shown(Path(spec))}: {problem} ({hint})"


def save_pretrained(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``state_dict`` as safetensors atomically (same bytes for the same tensors)."""
    from safetensors.torch import save

    from histocore.io import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous() for k, v in sorted(state_dict.items())}
    atomic_write_bytes(Path(path), save(tensors))
    return Path(path)


def sidecar(name: str) -> dict[str, Any]:
    """The JSON sidecar of a shipped model (config, normalisation, temperature, threshold)."""
    path = HERE / f"{name}.json"
    if not path.is_file():
        known = ", ".join(available()) or "none"
        raise PretrainedError(f"{name}: no such pretrained model (shipped: {known})")
    from histocore.io import NotJSON, loads_json

    try:
        return loads_json(path.read_bytes())
    except NotJSON as exc:
        raise PretrainedError(f"{path}: {exc}; reinstall histomodels") from None


def checkpoint_dict(name: str) -> dict[str, Any]:
    """The shipped model as the fields of a histomodels checkpoint dict, all but ``format``
    and ``version`` (``histomodels.checkpoint.read_checkpoint`` adds those)."""
    from safetensors.torch import load

    meta = sidecar(name)
    weights = HERE / f"{name}.safetensors"
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if meta.get("weights_sha256") and digest != meta["weights_sha256"]:
        raise PretrainedError(
            f"{weights}: damaged (its sha256 is not the weights_sha256 of {name}.json); "
            "reinstall histomodels"
        )
    try:
        state_dict = load(data)
    except Exception as exc:  # safetensors' own error for a damaged file without a sha256
        if isinstance(exc, MemoryError):
            raise
        raise PretrainedError(
            f"{weights}: damaged (not readable safetensors: {exc}); reinstall histomodels"
        ) from None
    return {
        "model": meta["model"],
        "model_config": dict(meta.get("model_config", {})),
        "state_dict": state_dict,
        "normalization": meta["normalization"],
        "input_size": int(meta.get("input_size", 96)),
        "train_config": dict(meta.get("train_config", {})),
        "metrics": {},
        "epoch": int(meta.get("epoch", 0)),
        "temperature": float(meta.get("temperature", 1.0)),
        "threshold": float(meta["threshold"]) if "threshold" in meta else None,
        "threshold_rule": meta.get("threshold_rule"),
        "pretrained": name,
    }
