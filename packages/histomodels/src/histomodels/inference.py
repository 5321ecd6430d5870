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
import PIL.Image
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


#: uint8 patches: an ``[N, H, W, 3]`` batch or one ``[H, W, 3]`` image (a numpy array or a
#: torch tensor, e.g. a ``DataLoader`` batch), a PIL image, or an iterable of any of those
#: (``PIL.Image.Image`` is named as it is, not as ``Any``, which made the whole union ``Any``
#: to a type checker: a path or an int passed as patches was not flagged)
Patches = (
    np.ndarray
    | torch.Tensor
    | PIL.Image.Image
    | Iterable[np.ndarray | torch.Tensor | PIL.Image.Image]
)

#: what :func:`patch_batches` takes, as its errors say
EXPECTED = (
    "uint8 RGB patches: an [N, H, W, 3] or [H, W, 3] numpy array or torch tensor, a PIL "
    "image, or a list (iterable) of those"
)


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def _patches_in(shape: tuple[int, ...] | torch.Size) -> int | None:
    """How many patches an array of ``shape`` holds: ``N`` for ``[N, H, W, 3]``, one for
    ``[H, W, 3]``, None for any other shape (``[3, H, W]``, ``[N, H, W]``: refused)."""
    if len(shape) not in (3, 4) or shape[-1] != 3:
        return None
    return 1 if len(shape) == 3 else int(shape[0])


def patch_count(images: Any) -> int | None:
    """How many patches ``images`` (:data:`Patches`) holds as :func:`patch_batches` reads
    them, where that is known without reading them: an array or tensor of a shape it
    takes, or a PIL image (one); None for an iterable of batches, and for an array of a
    shape it refuses (its error says what is wrong)."""
    if _is_pil(images):
        return 1
    shape = getattr(images, "shape", None)
    return None if shape is None else _patches_in(tuple(shape))


def _as_patches(obj: Any, where: str) -> np.ndarray | torch.Tensor | None:
    """``obj`` as uint8 ``[N, H, W, 3]`` (an image as ``[1, H, W, 3]``), or None when it is
    neither an array, a tensor nor a PIL image (an iterable of them, maybe)."""
    if _is_pil(obj):  # decoded as predict decodes a file: the same image, the same score
        from histocore.imaging import pil_to_rgb

        obj = pil_to_rgb(obj, what=where)  # an ImageError (a ValueError) for mode I or F
    elif not isinstance(obj, np.ndarray | torch.Tensor):
        return None
    if _patches_in(obj.shape) is None:  # the shape as given: (3, 96, 96) too
        raise ValueError(f"{where}: expected {EXPECTED}; got shape {tuple(obj.shape)}")
    if obj.ndim == 3:
        obj = obj[None]
    dtype = obj.dtype.name if isinstance(obj, np.ndarray) else str(obj.dtype).removeprefix("torch.")
    if dtype != "uint8":
        from histomodels.preprocess import uint8_problem

        raise ValueError(f"{where}: {uint8_problem(dtype, tensor=isinstance(obj, torch.Tensor))}")
    return obj


def patch_batches(images: Patches, batch_size: int) -> Iterator[np.ndarray | torch.Tensor]:
    """``images`` (:data:`Patches`) as uint8 ``[n, H, W, 3]`` batches of at most
    ``batch_size``: an array or tensor is cut into batches; an iterable's batches are kept
    as given and its single images (arrays, tensors, PIL images) are stacked into batches.
    Anything else (a path, a float array, a ``[3, H, W]`` tensor) is a ValueError or
    TypeError saying what is taken."""
    whole = _as_patches(images, "images")
    if whole is not None:
        for i in range(0, len(whole), batch_size):
            yield whole[i : i + batch_size]
        return
    if isinstance(images, str | bytes | Path) or not isinstance(images, Iterable):
        raise TypeError(f"expected {EXPECTED}; got {type(images).__name__}")
    singles: list[np.ndarray | torch.Tensor] = []

    def stacked() -> np.ndarray | torch.Tensor:  # singles share one shape: see the loop
        first = singles[0]
        if isinstance(first, torch.Tensor):
            return torch.cat([torch.as_tensor(s) for s in singles])
        return np.concatenate([np.asarray(s) for s in singles])

    for k, item in enumerate(images):
        one = _as_patches(item, f"item {k}")
        if one is None:
            raise TypeError(f"item {k}: expected {EXPECTED}; got {type(item).__name__}")
        single = _is_pil(item) or (isinstance(item, np.ndarray | torch.Tensor) and item.ndim == 3)
        if not single:
            if singles:
                yield stacked()
                singles.clear()
            yield one
            continue
        if singles and one.shape != singles[0].shape:
            yield stacked()
            singles.clear()
        singles.append(one)
        if len(singles) == batch_size:
            yield stacked()
            singles.clear()
    if singles:
        yield stacked()


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
    """``images`` in batches of at most ``batch_size`` (an array or tensor) or as the
    caller's batches (an iterable; its single images stacked, :func:`patch_batches`), each
    cut further to :func:`batch_limit`'s size."""
    for chunk in patch_batches(images, batch_size):
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
    that Grad-CAM (which needs autograd) could no longer use.

    The caller's model is left in the mode (``train()``/``eval()``) and memory format it
    had; it is moved to ``device`` (and stays there)."""
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    model = model.to(device)
    was_training = model.training
    strides = _conv_strides(model)
    model.eval()
    try:
        if channels_last or (channels_last is None and device.type == "cpu"):
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return _predict(model, images, mean, std, batch_size, tta, prec, device, progress,
                        channels_last)  # fmt: skip
    finally:
        model.train(was_training)
        if _conv_strides(model) != strides:  # back to the caller's memory format
            fmt = torch.channels_last if _is_channels_last(strides) else torch.contiguous_format
            model.to(memory_format=fmt)  # type: ignore[call-overload]


def _conv_strides(model: nn.Module) -> list[tuple[int, ...]]:
    """The strides of ``model``'s 4-D weights (convolutions): their memory format."""
    return [p.stride() for p in model.parameters() if p.ndim == 4]


def _is_channels_last(strides: list[tuple[int, ...]]) -> bool:
    """Whether 4-D weights of these strides were channels_last (C the innermost axis)."""
    return any(s[1] == 1 and s[1] < s[3] for s in strides)


def _predict(
    model: nn.Module,
    images: Patches,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    tta: bool,
    prec: str,
    device: torch.device,
    progress: Callable[[int], None] | None,
    channels_last: bool | None,
) -> np.ndarray:
    """:func:`predict_logits`' loop, ``model`` ready (on ``device``, in eval mode)."""
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
        if dev.type == "cpu":  # once, as predict_logits would on each call (then undo)
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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

    @property
    def threshold(self) -> float:
        """The probability at which a patch is called tumour: the one shipped with the model
        (``pcam-cnn``: 0.392, chosen for sensitivity >= 0.9 on its own validation data), else
        0.5; ``predict`` and ``eval`` use the same rule
        (:func:`histomodels.checkpoint.decision_threshold`)."""
        from histomodels.checkpoint import decision_threshold

        return decision_threshold(self.ckpt)[0]

    def probabilities(
        self, images: Patches, *, batch_size: int = 256, tta: bool = False
    ) -> np.ndarray:
        """Calibrated tumour probabilities (float64 [N]): ``sigmoid(logit / temperature)``
        with the checkpoint's fitted :attr:`temperature`, as ``predict`` writes them.
        ``images``: as :meth:`logits` takes them. Call a patch tumour where the probability
        reaches :attr:`threshold`."""
        return sigmoid(self.logits(images, batch_size=batch_size, tta=tta), self.temperature)

    def logits(
        self,
        images: Patches,
        *,
        batch_size: int = 256,
        tta: bool = False,
        progress: Callable[[int], None] | None = None,
        prepared: bool = False,
    ) -> np.ndarray:
        """Raw logits (float32 [N], see :func:`predict_logits`) of uint8 RGB patches: an
        ``[N, H, W, 3]`` batch or one ``[H, W, 3]`` image (numpy array or torch tensor, e.g.
        a ``DataLoader`` batch), a PIL image, or an iterable of those
        (:func:`patch_batches`). ``prepared``: already :meth:`prepare`d.
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
            images = (self.prepare(np.asarray(b)) for b in patch_batches(images, batch_size))
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
