"""Turning uint8 HWC patches into model input, the same way in training and inference."""

from __future__ import annotations

import numpy as np
import torch

#: ImageNet statistics: used for every model so pretrained backbones see what they expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_input(
    batch: np.ndarray | torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    *,
    channels_last: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (or ``[H, W, 3]``) → normalised float ``[N, 3, H, W]``."""
    x = torch.as_tensor(batch)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 [N, H, W, 3] patches, got shape {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
