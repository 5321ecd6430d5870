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

from histomodels.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_input


def last_conv(model: nn.Module) -> nn.Module:
    """The last convolution in the model (Grad-CAM's usual target layer)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


def grad_cam(
    model: nn.Module,
    images: np.ndarray,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    layer: nn.Module | None = None,
) -> np.ndarray:
    """Heatmaps in [0, 1], shape [N, H, W], for the tumour logit of uint8 NHWC patches."""
    model = model.eval()
    layer = layer or last_conv(model)
    store: dict[str, torch.Tensor] = {}

    def fwd(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(fwd)
    try:
        with torch.enable_grad():
            x = to_input(images, mean, std, channels_last=False).requires_grad_(True)
            logit = model(x).reshape(len(x), -1)[:, 0]
            model.zero_grad(set_to_none=True)
            logit.sum().backward()
    finally:
        handle.remove()
    act, grad = store["act"].detach(), store["grad"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return ((cam - lo) / (hi - lo).clamp_min(1e-8)).numpy()


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
    if len(chosen):
        cams = grad_cam(model, images[chosen], mean=mean, std=std)
        for j, i in enumerate(chosen):
            kind = "FP" if j < len(fp) else "FN"
            panels += [images[i], overlay(images[i], cams[j])]
            titles += [f"{kind} p={probs[i]:.2f}\n{ids[i][:18]}", "Grad-CAM"]
    image_grid(
        panels,
        titles,
        path,
        cols=4,
        title=f"Most confident errors at threshold {threshold:.3f} (FP: normal called tumour)",
    )
    return {"false_positives": [ids[i] for i in fp], "false_negatives": [ids[i] for i in fn]}
