"""Checkpoints are plain dicts, so ``torch.load(weights_only=True)`` can open them.

Keys: ``format``, ``version``, ``model`` (registry name; ``ensemble`` for
:mod:`histomodels.ensemble`), ``model_config`` (kwargs for
:func:`~histomodels.models.create_model`), ``state_dict``, ``normalization`` (mean/std),
``input_size``, ``train_config``, ``metrics``, ``epoch``, ``temperature`` (for
calibrated probabilities; 1.0 until fitted), and optionally ``optimizer``/``scheduler``
state and ``history`` for resuming.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histomodels.preprocess import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "histomodels.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder stands for its ``best.pt``; anything else is returned as given."""
    path = Path(path)
    if path.is_dir() and (path / "best.pt").is_file():
        return path / "best.pt"
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict with ``weights_only=True`` (no code runs).

    ``path`` may also be a run folder (its ``best.pt``) or the name of a model shipped in
    :mod:`histomodels.pretrained` (e.g. ``pcam-cnn``) when no such file exists."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        from histomodels import pretrained

        if pretrained.is_pretrained(path):
            return pretrained.checkpoint_dict(str(path))
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, unsafe globals ...
        text = str(exc).strip()
        if "Weights only load failed" in text:
            # torch suggests weights_only=False here; for an untrusted file that is the wrong
            # advice, so say what the file holds instead.
            why = "it holds Python objects or code, not just tensors; refused (weights_only)"
        else:
            why = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({why})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a histomodels checkpoint (missing format tag)")
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is too new")
    return ckpt


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, with its weights, in eval mode."""
    from histomodels.models import create_model

    ckpt = read_checkpoint(path)
    model = create_model(ckpt["model"], pretrained=False, **ckpt.get("model_config", {}))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        msg = f"{path}: weights do not fit model {ckpt['model']!r}: {exc}"
        raise CheckpointError(msg) from None
    return model.to(device).eval(), ckpt
