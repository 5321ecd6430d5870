"""Batched, no-grad inference from uint8 patches to logits (optionally with dihedral TTA).

One function used by eval, predict, the external literature set and the benchmark so that
preprocessing (``histomodels.preprocess.to_input``), memory format and precision are the
same everywhere.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histocore.errors import UsageError
from histomodels.choices import PRECISIONS
from histomodels.data.transforms import dihedral_views
from histomodels.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_input

log = logging.getLogger(__name__)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX): only then does
    bf16 autocast speed up CPU inference rather than slow it down."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(
    precision: str, device: torch.device | str = "cpu", model_name: str | None = None
) -> str:
    """``auto`` → bf16 on GPUs that have it; on CPU only for the plain-conv ``cnn`` and only
    with native bf16 instructions (bf16 slows depthwise-conv nets such as MobileNet and
    EfficientNet on CPU, see :mod:`histomodels.device`)."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() and model_name == "cnn" else "fp32"


def norm_of(ckpt: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) stored in a checkpoint, ImageNet statistics otherwise."""
    norm = (ckpt or {}).get("normalization") or {}
    return tuple(norm.get("mean", IMAGENET_MEAN)), tuple(norm.get("std", IMAGENET_STD))


#: uint8 ``[N, H, W, 3]`` patches, or an iterable of such batches (arrays or tensors)
Patches = np.ndarray | Iterable[np.ndarray] | Iterable[torch.Tensor]


#: Most pixels one inference batch holds, counted at the size the network sees each image
#: (after a resize inside the model: a backbone's ``input_size``, an ensemble member's):
#: 2**24, i.e. 1,820 PCam patches, 334 at 224 px, one at 4096 px. ``batch_size`` stays the
#: upper bound; without this a checkpoint asking for 4096 px made a batch of 256 a 51 GB
#: float32 input before the network's own activations.
MAX_BATCH_PIXELS = 1 << 24


def pixels_seen(model: nn.Module, height: int, width: int) -> int:
    """Pixels of one ``height`` x ``width`` image as ``model``'s network sees it: the
    largest size it is resized to inside the model (:class:`InputResize`, an ensemble's
    :class:`Member`), at least its own."""
    from histomodels.models.ensemble import Member
    from histomodels.models.torchvision_zoo import InputResize

    sizes = [m.size for m in model.modules() if isinstance(m, InputResize | Member)]
    return max([height * width, *(int(s) * int(s) for s in sizes)])


def batch_limit(model: nn.Module, height: int, width: int, batch_size: int) -> int:
    """How many ``height`` x ``width`` images one batch of ``model`` holds: ``batch_size``,
    fewer when that is over :data:`MAX_BATCH_PIXELS` as the network sees them (at least 1)."""
    return max(1, min(batch_size, MAX_BATCH_PIXELS // pixels_seen(model, height, width)))


#: models whose smaller batches :func:`_batches` has said (once each, not once per call:
#: predict scores each file in a call of its own)
_CAPPED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _batches(
    images: Patches, batch_size: int, model: nn.Module
) -> Iterator[np.ndarray | torch.Tensor]:
    """``images`` in batches of at most ``batch_size`` (an array) or as the caller's
    batches (an iterable), each cut further to :func:`batch_limit`'s size."""
    chunks = (
        (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        if isinstance(images, np.ndarray)
        else images
    )
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        h, w = (int(v) for v in chunk.shape[1:3])
        limit = batch_limit(model, h, w, len(chunk))
        if limit < len(chunk) and model not in _CAPPED:
            _CAPPED.add(model)
            seen = pixels_seen(model, h, w)
            side = round(seen**0.5)  # a resize inside the model is to a square
            size = f"{w}x{h}" if seen == h * w else f"{side}x{side}"
            log.info(
                "inference in batches of at most %d image(s): the model sees each at %s px, "
                "and a batch holds at most %d pixels", limit, size, MAX_BATCH_PIXELS,
            )  # fmt: skip
        for i in range(0, len(chunk), limit):
            yield chunk[i : i + limit]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Patches,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    batch_size: int = 256,
    tta: bool = False,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Logits (float32 [N]) for uint8 ``[N, H, W, 3]`` patches (an array, or an iterable of
    batches so callers can stream tiles). TTA averages the logits of the 8 dihedral views.
    ``batch_size`` (an array's batches) is an upper bound: a batch holds at most
    :data:`MAX_BATCH_PIXELS` as the network sees them (:func:`batch_limit`), a caller's
    batches are cut to that too.

    ``channels_last``: None (default) converts the model to channels_last on CPU, where it
    is faster; True/False is the training loop's setting, which must not change the memory
    format of the model it is still training.

    Runs under ``no_grad`` rather than ``inference_mode``: converting the model to
    channels_last inside inference mode would turn its weights into inference tensors
    that Grad-CAM (which needs autograd) could no longer use."""
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    model = model.to(device).eval()
    if channels_last or (channels_last is None and device.type == "cpu"):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    out: list[np.ndarray] = []
    for batch in _batches(images, batch_size, model):
        x = to_input(batch, mean, std, channels_last=channels_last is not False, device=device)
        views = dihedral_views(x, "NCHW") if tta else [x]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
            logits = torch.stack([model(v).float().reshape(len(batch), -1)[:, 0] for v in views])
        out.append(logits.mean(0).cpu().numpy())
        if progress is not None:
            progress(len(batch))
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probability ``sigmoid(logit / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Predictor:
    """A checkpoint loaded for inference with everything scoring needs: its normalisation,
    precision, device and fitted temperature (eval, predict and the manifest share it)."""

    model: nn.Module
    ckpt: dict
    device: torch.device
    precision: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    temperature: float
    #: stain normaliser the model was trained with (from the checkpoint), applied first
    stain: Any = None
    #: whether :meth:`logits` has said that it skips ``tta`` for a :attr:`tta_inside` model
    _tta_said: bool = field(default=False, init=False, repr=False)

    @classmethod
    def load(
        cls, checkpoint: str | Path, *, device: str | None = None, precision: str = "fp32"
    ) -> Predictor:
        """Load ``checkpoint`` (``weights_only``) onto ``device`` (default: CUDA if any).
        ``precision`` defaults to fp32, as eval and predict do (``auto``: bf16 where fast)."""
        from histomodels.calibration import effective_temperature
        from histomodels.checkpoint import load_model, resolve_checkpoint
        from histomodels.device import pick_device

        dev = pick_device(device)
        model, ckpt = load_model(checkpoint, dev)
        temperature = effective_temperature(resolve_checkpoint(checkpoint), ckpt)
        mean, std = norm_of(ckpt)
        stain = None
        if ckpt.get("stain"):
            from histomodels.data.stain import MacenkoNormalizer

            stain = MacenkoNormalizer.from_dict(ckpt["stain"], f"{checkpoint}: stain")
        return cls(
            model=model,
            ckpt=ckpt,
            device=dev,
            precision=resolve_precision(precision, dev, ckpt.get("model")),
            mean=mean,
            std=std,
            temperature=temperature,
            stain=stain,
        )

    @property
    def tta_inside(self) -> bool:
        """The model averages the 8 dihedral views itself (``histomodels ensemble --tta``)."""
        cfg = self.ckpt.get("model_config")
        ensemble = self.ckpt.get("model") == "ensemble"
        return ensemble and isinstance(cfg, dict) and bool(cfg.get("tta"))

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """The patches as the model sees them (stain-normalised when it was trained so)."""
        return images if self.stain is None else self.stain.transform(images)

    def logits(
        self,
        images: np.ndarray | Iterable[np.ndarray],
        *,
        batch_size: int = 256,
        tta: bool = False,
        progress: Callable[[int], None] | None = None,
        prepared: bool = False,
    ) -> np.ndarray:
        """Raw logits (see :func:`predict_logits`); ``prepared``: already :meth:`prepare`d.
        ``tta`` on a model that averages the 8 views itself (:attr:`tta_inside`) is skipped,
        said once: the views of views are the same 8 views, so the scores are the same at
        an eighth of the cost."""
        if tta and self.tta_inside:
            tta = False
            if not self._tta_said:
                self._tta_said = True
                log.info(
                    "test-time augmentation: this ensemble averages the 8 dihedral views itself "
                    "(built with ensemble --tta), so they are not averaged again (same scores, "
                    "8x less work)"
                )
        if not prepared and self.stain is not None:
            images = (
                self.prepare(images)
                if isinstance(images, np.ndarray)
                else (self.prepare(b) for b in images)
            )
        return predict_logits(
            self.model,
            images,
            mean=self.mean,
            std=self.std,
            batch_size=batch_size,
            tta=tta,
            precision=self.precision,
            device=self.device,
            progress=progress,
        )
