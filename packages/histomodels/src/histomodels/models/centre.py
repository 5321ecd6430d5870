"""Centre-weighted pooling: PCam's label is about the central 32x32 of a 96x96 patch.

:class:`CentrePool` is attention pooling with a Gaussian centre prior over a feature map;
the scratch CNN uses it (``model_config: {centre: pool}``). :class:`CentreHeadNet` puts the
same pooling on a pretrained backbone (``efficientnet_lite0``, ``timm/<name>``): global
average and centre-pooled features of the backbone's last map, concatenated, then dropout
and one logit. On a 96x96 input, Lite0's last map is 3x3, so the centre cell covers the
label region.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

Centre = Literal["none", "branch", "pool"]
CENTRES: tuple[str, ...] = get_args(Centre)


class CentrePool(nn.Module):
    """Attention pooling with a centre prior: ``softmax(score(f) - r^2 / (2 sigma^2))``
    over the positions of a feature map, ``r`` the distance to the centre in [-1, 1] units and
    ``sigma`` learned (starting at 1/3, the label region's half-width)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.score.weight)
        self.log_sigma = nn.Parameter(torch.tensor(-1.0986))  # log(1/3)
        self.num_features = channels

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h, w = f.shape[-2], f.shape[-1]
        ys = torch.linspace(-1.0, 1.0, h, device=f.device, dtype=f.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=f.device, dtype=f.dtype)
        r2 = ys.view(h, 1) ** 2 + xs.view(1, w) ** 2
        # -r^2 / (2 sigma^2), written without a Python scalar times the 0-d parameter: the
        # dynamo ONNX exporter of torch 2.11 fails on that (prim.device != aten.mul)
        inv_two_var = torch.exp(-(self.log_sigma + self.log_sigma)).to(f.dtype) / 2
        prior = -r2 * inv_two_var
        logits = (self.score(f) + prior).flatten(1)  # [n, h*w]
        attn = torch.softmax(logits.float(), dim=1).to(f.dtype)
        return torch.einsum("nk,nck->nc", attn, f.flatten(2))


class CentrePoolHead(nn.Module):
    """``[mean(f), centre_pool(f)]`` → dropout → one logit (the classifier of a backbone)."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.centre = CentrePool(channels)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * channels, 1)
        nn.init.normal_(self.fc.weight, std=0.01)  # small logits on pretrained features
        nn.init.zeros_(self.fc.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = torch.cat([f.mean((2, 3)), self.centre(f)], 1)
        return self.fc(self.drop(z))


class CentreHeadNet(nn.Module):
    """A backbone with ``forward_features`` (timm convention) under a :class:`CentrePoolHead`.

    The backbone's own classifier is removed (``reset_classifier(0)``), so every parameter
    takes part in the loss; ``get_classifier`` names the new head (the part trained while
    the backbone is frozen, and given the full learning rate).
    """

    def __init__(self, backbone: nn.Module, dropout: float = 0.0) -> None:
        super().__init__()
        reset = getattr(backbone, "reset_classifier", None)
        features = getattr(backbone, "num_features", None)
        if not callable(reset) or not isinstance(features, int):
            raise TypeError(f"{type(backbone).__name__}: needs reset_classifier and num_features")
        reset(0)
        self.backbone = backbone
        self.head = CentrePoolHead(features, dropout)
        self.num_features = 2 * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))  # type: ignore[operator]

    def get_classifier(self) -> nn.Module:
        return self.head
