"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits.

Dividing logits by T leaves the ranking (and so ROC AUC) unchanged but makes the
probabilities honest. ``histomodels eval --val`` writes T to a sidecar beside the
checkpoint (``best.calibration.json`` for ``best.pt``, keyed by the checkpoint's sha256 so a
retrained model never picks up a stale T); inference prefers it over the checkpoint's own
``temperature``. Only ``--store-temperature checkpoint`` rewrites the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histocore.errors import DomainError
from histocore.io import (
    NotJSON,
    RefusedFile,
    atomic_write_json,
    file_sha256,
    loads_json,
    read_capped,
    replace_only_ours,
)


class CalibrationError(DomainError, ValueError):
    """Validation data that cannot fit a temperature."""


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    z = torch.as_tensor(np.asarray(logits, np.float64)) / temperature
    y = torch.as_tensor(np.asarray(labels, np.float64))
    return float(F.binary_cross_entropy_with_logits(z, y))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """T > 0 minimising the binary NLL of ``logits / T`` (LBFGS on log T)."""
    y_np = np.asarray(labels)
    if len(y_np) == 0 or not np.isin(y_np, (0, 1)).all():
        raise CalibrationError("temperature scaling needs 0/1 labels for every validation patch")
    z = torch.as_tensor(np.asarray(logits, np.float64))
    y = torch.as_tensor(y_np.astype(np.float64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t):
        raise CalibrationError("temperature fit diverged (are the validation logits finite?)")
    return float(np.clip(t, 1e-2, 1e2))


def calibration_path(checkpoint: str | Path) -> Path:
    """Where the sidecar of ``checkpoint`` lives: ``best.pt`` → ``best.calibration.json``."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.calibration.json")


def is_calibration_file(path: Path) -> bool:
    """Whether the regular file ``path`` is a sidecar :func:`write_calibration` wrote (for
    this checkpoint or an earlier version of it): a JSON object (up to
    :data:`MAX_CALIBRATION_BYTES`) holding ``checkpoint_sha256`` and ``temperature``. One
    that cannot be opened or read raises its ``OSError``."""
    try:
        record = loads_json(read_capped(path, MAX_CALIBRATION_BYTES))
    except (NotJSON, RefusedFile):
        return False
    return isinstance(record, dict) and {"checkpoint_sha256", "temperature"} <= record.keys()


def refuse_to_replace_calibration(checkpoint: str | Path) -> None:
    """A :class:`CalibrationError` naming the sidecar of ``checkpoint`` when writing it would
    replace a file eval did not write there (a ``best.calibration.json`` of the user's own
    was replaced by ``eval --val``), or a pipe or device; an earlier sidecar, an empty file
    or nothing passes (:func:`histocore.io.replace_only_ours`)."""
    replace_only_ours(calibration_path(checkpoint), is_calibration_file, CalibrationError,
                      not_ours="is not a calibration file eval wrote",
                      would="eval --val would replace it with the fitted temperature: give "
                      "--store-temperature none or checkpoint")  # fmt: skip


def write_calibration(checkpoint: str | Path, temperature: float, source: str) -> str:
    """Write the sidecar beside ``checkpoint``; returns its path, or why it was not written.
    A file there that eval did not write is a :class:`CalibrationError`, left as it is
    (:func:`refuse_to_replace_calibration`)."""
    path = Path(checkpoint)
    side = calibration_path(path)
    refuse_to_replace_calibration(path)
    if not os.access(path.parent, os.W_OK) or (side.exists() and not os.access(side, os.W_OK)):
        return f"{path.parent} is read-only; temperature used for these metrics but not stored"
    digest = file_sha256(path)
    record = {"checkpoint_sha256": digest, "temperature": temperature, "fitted_on": source}
    try:
        atomic_write_json(side, record)
    except OSError as exc:  # read-only file system, immutable folder
        return f"{side}: temperature not stored, read-only? ({exc.strerror or exc})"
    return str(side)


#: the most of a calibration sidecar read (eval writes a few hundred bytes)
MAX_CALIBRATION_BYTES = 1 << 20


def read_calibration(checkpoint: str | Path) -> dict[str, Any] | None:
    """The sidecar's record when it belongs to this very checkpoint, else None."""
    path = Path(checkpoint)
    side = calibration_path(path)
    if not (path.is_file() and side.is_file()):
        return None
    try:  # a few hundred bytes when eval writes it; a shared checkpoint's may be anything
        record = loads_json(read_capped(side, MAX_CALIBRATION_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, NotJSON, RefusedFile) as exc:
        raise CalibrationError(f"{side}: not a calibration file ({exc})") from None
    temperature = record.get("temperature") if isinstance(record, dict) else None
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        raise CalibrationError(f"{side}: 'temperature' must be a number")
    if not 0 < float(temperature) < 1e3:
        raise CalibrationError(f"{side}: temperature {temperature} is out of range")
    if record.get("checkpoint_sha256") != file_sha256(path):
        return None  # fitted on another version of the checkpoint: ignore it
    return record


def effective_temperature(checkpoint: str | Path, ckpt: dict[str, Any]) -> float:
    """T for inference: the sidecar's when it belongs to this file, else the checkpoint's."""
    record = read_calibration(checkpoint)
    if record is not None:
        return float(record["temperature"])
    return float(ckpt.get("temperature", 1.0) or 1.0)
