"""torchvision backbones with a 1-logit head: MobileNetV2/V3, EfficientNet-B0/B1.

``pretrained=True`` (or ``weights="imagenet"``) uses torchvision's weights API (downloads
into the torch hub cache when online); ``weights=PATH`` loads a local state dict or
torchvision checkpoint. ``input_size`` resizes the 96 px patches inside the model, so a
checkpoint carries its own preprocessing.
"""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from annotated_types import Interval
from torch import nn

from histomodels.choices import MAX_INPUT_SIZE, MIN_INPUT_SIZE, TORCHVISION_ARCHS
from histomodels.models.registry import register_model
from histomodels.models.weights import WeightsError

#: listed with the other trainable models' names in histomodels.choices
ARCHS = TORCHVISION_ARCHS
IMAGENET_NAMES = ("imagenet", "default", "DEFAULT")
#: The builders' rules for their values, read from their signatures by the registry
#: (``registry.check_config``): a patch resized inside the model to ``input_size`` px (a
#: hostile size would allocate gigabytes per batch; null = as given), and a dropout rate.
InputSize = Annotated[int, Interval(ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)]
Dropout = Annotated[float, Interval(ge=0, lt=1)]


class InputResize(nn.Module):
    """Bilinear resize to ``size`` before the wrapped model (no-op when sizes agree)."""

    def __init__(self, inner: nn.Module, size: int) -> None:
        super().__init__()
        self.inner = inner
        self.size = int(size)

    def forward(self, x):
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.inner(x)

    def get_classifier(self) -> nn.Module | None:
        from histomodels.models.weights import head_module

        return head_module(self.inner)


def maybe_resize(model: nn.Module, input_size: int | None) -> nn.Module:
    return InputResize(model, input_size) if input_size else model


def _torchvision(
    arch: str, pretrained: bool, weights: str | None, dropout: float | None
) -> nn.Module:
    import torchvision

    use_imagenet = pretrained or (weights in IMAGENET_NAMES)
    if use_imagenet:
        try:
            model = torchvision.models.get_model(arch, weights="DEFAULT")
        except Exception as exc:
            raise WeightsError(
                f"{arch}: could not get torchvision ImageNet weights ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); to work offline, pass the "
                f"model's .pth as --weights FILE (weights=PATH in Python), or put torchvision's "
                f"file in the torch hub cache ($TORCH_HOME/hub/checkpoints) once online"
            ) from None
    else:
        model = torchvision.models.get_model(arch, weights=None)
    classifier = model.classifier
    assert isinstance(classifier, nn.Sequential), f"{arch}: no classifier Sequential"
    last = classifier[-1]
    assert isinstance(last, nn.Linear), f"{arch}: the classifier does not end in a Linear"
    classifier[-1] = nn.Linear(last.in_features, 1)
    if dropout is not None:
        for m in classifier:
            if isinstance(m, nn.Dropout):
                m.p = float(dropout)
    if weights and not use_imagenet:
        from histomodels.models.weights import load_weights

        load_weights(model, weights)
    return model


def _make_builder(arch: str):
    def build(
        pretrained: bool = False,
        weights: str | None = None,
        dropout: Dropout | None = None,
        input_size: InputSize | None = None,
    ) -> nn.Module:
        return maybe_resize(_torchvision(arch, pretrained, weights, dropout), input_size)

    build.__name__ = arch
    build.__doc__ = f"torchvision {arch} with a 1-logit head."
    return register_model(arch, weight_sources=IMAGENET_NAMES)(build)


for _arch in ARCHS:
    _make_builder(_arch)
