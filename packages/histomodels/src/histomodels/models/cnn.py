"""A configurable from-scratch CNN sized for 96x96 patches.

Plain conv-norm-ReLU stages with max-pooling, then global average pooling and one logit.
Plain 3x3 convolutions (no depthwise convs) run well with channels_last + bf16 autocast
on CPU, which is what makes training from scratch in minutes on two cores feasible.
Default: 4 stages of 1 conv, widths 16-32-64-128 (0.10 M parameters), batch norm, dropout
0.35 -- the architecture ``histomodels tune`` chose on real PCam patches (width 32 scored
lower and trained/inferred ~2-3x slower). ~550 patches/s training and ~1,500 inference on 2
idle cores with bf16 + channels_last, so a 20-minute budget buys ~80 epochs of 7.6k patches.
"""

from __future__ import annotations

from torch import nn

from histocore.errors import UsageError
from histomodels.models.registry import register_model

NORMS = ("batch", "group", "none")


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
    ) -> None:
        super().__init__()
        if depth < 1 or blocks < 1 or width < 1:
            raise UsageError(
                f"cnn needs depth, blocks, width >= 1 (got {depth}, {blocks}, {width})"
            )
        if not 0.0 <= dropout < 1.0:
            raise UsageError(f"cnn dropout must be in [0, 1), got {dropout}")
        _norm(norm, 8)  # validate early with a clear message
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
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, 1))
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.pool(self.features(x)))

    def get_classifier(self) -> nn.Module:
        return self.head


@register_model("cnn")
def cnn(
    pretrained: bool = False,
    weights: str | None = None,
    depth: int = 4,
    blocks: int = 1,
    width: int = 16,
    max_width: int = 512,
    dropout: float = 0.35,
    norm: str = "batch",
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
    )
    if weights:
        from histomodels.models.weights import load_weights

        load_weights(model, weights)
    return model
