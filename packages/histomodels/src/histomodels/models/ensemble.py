"""``ensemble``: several trained models as one, averaging their calibrated logits.

Each member keeps what it was trained with: its architecture and weights, its input
normalisation, its input size and its fitted temperature. The ensemble takes ``[N, 3, H, W]``
RGB in ``[0, 1]`` (its checkpoint's normalisation is mean 0 / std 1), resizes to each
member's input size when it differs, normalises per member, optionally averages the 8
dihedral views (TTA inside the graph, so ONNX exports it too) and returns the mean of
``logit_i / T_i`` as one logit. Built by :func:`histomodels.ensemble.build_ensemble`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histomodels.models.registry import create_model, register_model

#: keys of one member spec in ``model_config["members"]``
MEMBER_KEYS = ("model", "model_config", "mean", "std", "input_size", "temperature")


class Member(nn.Module):
    """One model with its own preprocessing (normalisation, size) and temperature."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        missing = [k for k in MEMBER_KEYS if k not in spec]
        if missing:
            raise ValueError(f"ensemble member spec lacks {', '.join(missing)}")
        self.net = create_model(spec["model"], pretrained=False, **dict(spec["model_config"]))
        self.register_buffer("mean", torch.tensor(spec["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec["std"]).view(1, 3, 1, 1), persistent=False)
        self.size = int(spec["input_size"])
        self.temperature = float(spec["temperature"])
        if not self.temperature > 0:
            raise ValueError(f"ensemble member temperature must be > 0, got {self.temperature}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: RGB in [0, 1] → calibrated logit ``[N]``."""
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        z = self.net((x - self.mean) / self.std)
        return z.reshape(x.shape[0], -1)[:, 0].float() / self.temperature


class Ensemble(nn.Module):
    """Mean of the members' calibrated logits (over the 8 dihedral views with ``tta``)."""

    def __init__(self, members: list[dict[str, Any]], tta: bool = False) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(Member(m) for m in members)
        self.tta = bool(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [x]
        if self.tta:
            flipped = x.flip(3)
            views = [torch.rot90(v, k, (2, 3)) for v in (x, flipped) for k in range(4)]
        outs = [m(v) for m in self.members for v in views]
        return torch.stack(outs).mean(0).unsqueeze(1)


@register_model("ensemble")
def ensemble(members: list[dict[str, Any]], tta: bool = False, **_: Any) -> nn.Module:
    """Registry builder (``pretrained``/``weights`` are ignored: weights come with the
    ensemble's own state dict)."""
    return Ensemble(members, tta=tta)
