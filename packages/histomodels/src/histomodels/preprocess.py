"""Turning uint8 HWC patches into model input, the same way in training and inference."""

from __future__ import annotations

import re
import warnings

import numpy as np
import torch

#: ImageNet statistics: used for every model so pretrained backbones see what they expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def uint8_problem(dtype: str, tensor: bool = False) -> str:
    """What is wrong with patches of ``dtype`` (not uint8; its name, byte order aside:
    numpy's ``dtype.name``, torch's without ``torch.``), and what to do about it, for
    that kind of dtype and in the form of the input (numpy, or a torch tensor when
    ``tensor``): floats are scaled, wider integers checked and cast, booleans (a mask, not
    an image) refused, and anything else (complex, object, str, datetime...) told that it
    holds no pixel values."""
    head = f"expected uint8 RGB patches (0-255), got {dtype}; "
    cast = ".to(torch.uint8)" if tensor else ".astype(np.uint8)"
    if dtype == "bool":
        return head + "a boolean array is a mask, not an RGB image: give the image itself"
    if re.fullmatch(r"u?int\d+", dtype):  # int8/16/32/64, uint16/32/64 (16-bit: 0-65535)
        return head + (
            f"if its values are already 0-255, cast: x{cast}; "
            f"a 16-bit image (0-65535): (x // 257){cast}"
        )
    if dtype.startswith(("float", "bfloat", "half", "double")):
        return head + f"multiply [0, 1] floats by 255, round and cast: (x * 255).round(){cast}"
    return head + "those are no pixel values: give the image's uint8 RGB pixels (0-255)"


def to_input(
    batch: np.ndarray | torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    *,
    channels_last: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (or ``[H, W, 3]``) → normalised float ``[N, 3, H, W]``.

    Only uint8 RGB (0–255) is taken: float input (a ``ToTensor``-style [0, 1] image, or
    0–255 floats) is a :class:`ValueError`, since dividing [0, 1] values by 255 again
    gives a nearly black patch and silently wrong scores. A read-only numpy array (a
    dataset's item) is read without PyTorch's "not writable" warning: it is never written."""
    if isinstance(batch, np.ndarray) and batch.dtype != np.uint8:  # before torch: an object,
        raise ValueError(uint8_problem(batch.dtype.name))  # str or datetime array is a TypeError
    if isinstance(batch, np.ndarray) and not batch.flags.writeable:
        with warnings.catch_warnings():  # read only: torch copies it to float below
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            x = torch.as_tensor(batch)
    else:
        x = torch.as_tensor(batch)
    if x.dtype != torch.uint8:
        dtype = str(x.dtype).removeprefix("torch.")
        raise ValueError(uint8_problem(dtype, tensor=isinstance(batch, torch.Tensor)))
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
