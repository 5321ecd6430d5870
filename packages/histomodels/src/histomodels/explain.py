"""Grad-CAM (Selvaraju et al. 2017) over forward/backward hooks on the last conv layer.

Works for any model in the zoo without per-architecture code: the target layer is the
last ``nn.Conv2d`` in module order, which for CNNs is the final feature map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histocore.io import fraction_text
from histomodels.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_input


def last_conv(model: nn.Module) -> nn.Module:
    """The last convolution in the model."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


def last_feature_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The module that last produced a spatial feature map (``[N, C, h, w]``, h, w > 1)
    in a forward pass: the activated output of the final conv block for any CNN, found
    without per-architecture code. (Hooking the last Conv2d itself would see the map
    before its norm and activation, where the gradient-weighted sum is often all negative.)
    """
    order: list[nn.Module] = []

    def rec(m: nn.Module, _i: tuple, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[-2:]) > 1:
            order.append(m)

    handles = [m.register_forward_hook(rec) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not order:
        return last_conv(model)
    return order[-1]


def grad_cam(
    model: nn.Module,
    images: np.ndarray,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    layer: nn.Module | None = None,
    sign: np.ndarray | None = None,
) -> np.ndarray:
    """Heatmaps in [0, 1], shape [N, H, W], of the evidence for the tumour logit (or, where
    ``sign`` is -1, for "normal", i.e. the negated logit) in uint8 NHWC patches."""
    model = model.eval()
    device = next(model.parameters()).device
    x = to_input(images, mean, std, channels_last=False, device=device)
    layer = layer or last_feature_layer(model, x)
    store: dict[str, torch.Tensor] = {}

    def fwd(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    s = torch.ones(len(x)) if sign is None else torch.as_tensor(sign, dtype=torch.float32)
    s = s.to(device)
    handle = layer.register_forward_hook(fwd)
    try:
        with torch.enable_grad():
            logit = model(x.requires_grad_(True)).reshape(len(x), -1)[:, 0]
            model.zero_grad(set_to_none=True)
            (logit * s).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    act, grad = store["act"].detach(), store["grad"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return ((cam - lo) / (hi - lo).clamp_min(1e-8)).cpu().numpy()


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB image with the heatmap blended in (jet-like colour map)."""
    import matplotlib

    colour = matplotlib.colormaps["jet"](cam)[..., :3]
    mixed = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colour
    return (np.clip(mixed, 0, 1) * 255).astype(np.uint8)


def error_gallery(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    ids: list[str],
    threshold: float,
    path: Path,
    *,
    k: int = 6,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> dict[str, list[str]]:
    """Gallery PNG of the ``k`` most confident false positives and false negatives: each
    patch beside its Grad-CAM overlay. Returns the ids shown."""
    from histomodels.plots import image_grid

    pred = probs >= threshold
    fp = np.flatnonzero(pred & (labels == 0))
    fn = np.flatnonzero(~pred & (labels == 1))
    fp = fp[np.argsort(-probs[fp])][:k]
    fn = fn[np.argsort(probs[fn])][:k]
    chosen = np.concatenate([fp, fn]).astype(int)
    panels: list[np.ndarray] = []
    titles: list[str] = []
    cam_of = {"FP": "tumour evidence", "FN": "normal evidence"}
    if len(chosen):
        # FPs: what looked like tumour; FNs: what made the model call it normal.
        sign = np.where(np.arange(len(chosen)) < len(fp), 1.0, -1.0)
        cams = grad_cam(model, images[chosen], mean=mean, std=std, sign=sign)
        for j, i in enumerate(chosen):
            kind = "FP" if j < len(fp) else "FN"
            panels += [images[i], overlay(images[i], cams[j])]
            titles += [f"{kind} p={probs[i]:.2f}\n{ids[i][:18]}", f"Grad-CAM ({cam_of[kind]})"]
    image_grid(
        panels,
        titles,
        path,
        cols=4,
        title=f"Most confident errors at threshold {fraction_text(threshold)} "
        "(FP: normal called tumour)",
    )
    return {"false_positives": [ids[i] for i in fp], "false_negatives": [ids[i] for i in fn]}
