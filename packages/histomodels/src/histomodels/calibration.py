"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits.

Dividing logits by T leaves the ranking (and so ROC AUC) unchanged but makes the
probabilities honest; T is stored in the checkpoint under ``temperature``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from histocore.errors import DomainError


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
