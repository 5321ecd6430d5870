"""A configurable from-scratch CNN sized for 96x96 patches.

Plain conv-norm-ReLU stages with max-pooling, then global average pooling and one logit.
Plain 3x3 convolutions (no depthwise convs) run well with channels_last + bf16 autocast
on CPU, which is what makes training from scratch in minutes on two cores feasible.
Default: 4 stages of 1 conv, widths 16-32-64-128 (0.10 M parameters), batch norm, dropout
0.35 -- the architecture ``histomodels tune`` chose on real PCam patches (width 32 scored
lower and trained/inferred ~2-3x slower). ~550 patches/s training and ~1,500 inference on 2
idle cores with bf16 + channels_last, so a 20-minute budget buys ~80 epochs of 7.6k patches.

``centre`` makes the network look harder at the central 32x32 that PCam's label is about
(issue 11; the builder's default is ``"none"``, the network above, so a checkpoint without
the key loads as before; training defaults to ``"pool"``, ``config.RECIPE_MODEL_DEFAULTS``,
which the shipped ``pcam-cnn`` uses):
``"branch"`` adds a small conv path (widths w/2, w, 2w) on the central half-size crop
(48x48 of 96) whose pooled features join the global ones before the head; ``"pool"`` adds
attention pooling of the last feature map, a learned 1x1-conv score plus a Gaussian
centre prior with a learned width, joined with the global average.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import torch
from annotated_types import Interval
from torch import nn

from histocore.errors import UsageError
from histomodels.models.centre import CENTRES, Centre, CentrePool
from histomodels.models.registry import register_model

Norm = Literal["batch", "group", "none"]
NORMS: tuple[str, ...] = get_args(Norm)
#: The builder's rules for its values, which the registry reads from its signature
#: (``registry.check_config``: a config file's ``width: 0`` is refused as it is read)
#: 13 stages halve a 4096 px input (the largest a checkpoint may take) 12 times, to 1 px;
#: the input a run trains on may allow fewer (96 px: 7), found by the trial build
#: (:func:`~histomodels.models.registry.check_build`)
Depth = Annotated[int, Interval(ge=1, le=13)]
Width = Annotated[int, Interval(ge=1, le=4096)]
Blocks = Annotated[int, Interval(ge=1, le=64)]
Dropout = Annotated[float, Interval(ge=0, lt=1)]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise UsageError(f"unknown normalisation {kind!r}; use one of {', '.join(NORMS)}")


class ConvBlock(nn.Sequential):
    """3x3 conv → norm → ReLU (bias only when there is no norm to absorb it)."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )


class CentreBranch(nn.Module):
    """A small conv path on the central crop (half the side: 48x48 of 96), globally pooled."""

    def __init__(self, cin: int, width: int, norm: str, stages: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(stages):
            layers.append(ConvBlock(cin, width * 2**i, norm))
            cin = width * 2**i
            if i < stages - 1:
                layers.append(nn.MaxPool2d(2))
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        top, left = h // 4, w // 4
        return self.net(x[:, :, top : top + h // 2, left : left + w // 2])


class PatchCNN(nn.Module):
    """``depth`` stages of ``blocks`` conv blocks; width doubles per stage up to ``max_width``."""

    def __init__(
        self,
        depth: int = 4,
        blocks: int = 1,
        width: int = 16,
        max_width: int = 512,
        dropout: float = 0.35,
        norm: str = "batch",
        in_chans: int = 3,
        centre: str = "none",
    ) -> None:
        super().__init__()
        if depth < 1 or blocks < 1 or width < 1:
            raise UsageError(
                f"cnn needs depth, blocks, width >= 1 (got {depth}, {blocks}, {width})"
            )
        if not 0.0 <= dropout < 1.0:
            raise UsageError(f"cnn dropout must be in [0, 1), got {dropout}")
        _norm(norm, 8)  # validate early with a clear message
        if centre not in CENTRES:
            raise UsageError(f"unknown cnn centre {centre!r}; use one of {', '.join(CENTRES)}")
        layers: list[nn.Module] = []
        cin = in_chans
        for stage in range(depth):
            cout = min(width * 2**stage, max_width)
            for _ in range(blocks):
                layers.append(ConvBlock(cin, cout, norm))
                cin = cout
            if stage < depth - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.centre: nn.Module | None = None
        if centre == "branch":
            self.centre = CentreBranch(in_chans, max(1, width // 2), norm)
        elif centre == "pool":
            self.centre = CentrePool(cin)
        extra = self.centre.num_features if self.centre is not None else 0
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin + extra, 1))
        self.num_features = cin + extra
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.centre, CentrePool):  # start from the centre prior alone
            nn.init.zeros_(self.centre.score.weight)

    def forward(self, x):
        f = self.features(x)
        z = self.pool(f).flatten(1)
        if isinstance(self.centre, CentreBranch):
            z = torch.cat([z, self.centre(x)], 1)
        elif isinstance(self.centre, CentrePool):
            z = torch.cat([z, self.centre(f)], 1)
        return self.head(z)

    def get_classifier(self) -> nn.Module:
        return self.head


@register_model("cnn")
def cnn(
    pretrained: bool = False,
    weights: str | None = None,
    depth: Depth = 4,
    blocks: Blocks = 1,
    width: Width = 16,
    max_width: Width = 512,
    dropout: Dropout = 0.35,
    norm: Norm = "batch",
    centre: Centre = "none",
) -> nn.Module:
    """The scratch CNN; ``weights`` may name a local file (state dict or checkpoint)."""
    if pretrained:
        raise UsageError("cnn has no pretrained weights; pass weights=PATH to load a file")
    model = PatchCNN(
        depth=int(depth),
        blocks=int(blocks),
        width=int(width),
        max_width=int(max_width),
        dropout=float(dropout),
        norm=str(norm),
        centre=str(centre),
    )
    if weights:
        from histomodels.models.weights import load_weights

        load_weights(model, weights)
    return model
