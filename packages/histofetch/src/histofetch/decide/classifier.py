"""The learned image check: a small CNN (weights in ``histofetch/pretrained/``) run in numpy.

Why numpy: histofetch must not pull PyTorch in just to tell an H&E micrograph from an
IHC, PAS or fluorescence image. The network is tiny (four 3×3 conv layers, global
average + max pooling, one linear layer; batch norm folded into the convolutions at
export), so a plain numpy forward pass over ≤ 16 tiles takes milliseconds.
``benchmarks/train_he_classifier.py`` trains it with PyTorch and writes the safetensors
file; its model card, ``pretrained/he_classifier.md``, ships beside the weights.

An image is judged on tiles: it is resized so its shorter side is at most
:data:`WORK_SHORT` px (and at least :data:`TILE`), cut into an evenly spaced grid of at
most 4×4 :data:`TILE`-px tiles, tiles that are mostly white/grey background are dropped
(all kept when every tile is background), and the H&E probability is the mean of the
tiles' softmax probability of class ``he``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

TILE = 64
WORK_SHORT = 256
GRID = 4
#: A tile with less than this share of non-background pixels is background.
MIN_CONTENT = 0.25
WEIGHTS_NAME = "he_classifier.safetensors"
CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4")
#: Input scaling (applied to RGB in 0..1): (x - MEAN) / STD.
MEAN, STD = 0.5, 0.25


class ClassifierError(RuntimeError):
    """The shipped weights are missing or do not match the expected layout."""


@dataclass
class ClassifierScores:
    p_he: float  # mean over content tiles of P(class "he")
    probs: dict[str, float]  # mean class probabilities
    tiles: int  # tiles judged (content tiles, or all when none has content)
    p_he_min: float
    p_he_max: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "p_he": round(self.p_he, 4),
            "probs": {k: round(v, 4) for k, v in self.probs.items()},
            "tiles": self.tiles,
            "p_he_min": round(self.p_he_min, 4),
            "p_he_max": round(self.p_he_max, 4),
        }


def content_fraction(tiles: np.ndarray) -> np.ndarray:
    """Share of each tile's pixels that are not white/light-grey background (N,)."""
    t = tiles.astype(np.float32) / 255.0
    v = t.max(axis=-1)
    s = np.where(v > 0, (v - t.min(axis=-1)) / np.maximum(v, 1e-6), 0.0)
    background = (v >= 0.88) & (s < 0.10)
    return 1.0 - background.reshape(len(tiles), -1).mean(axis=1)


def resize_for_tiles(rgb: np.ndarray) -> np.ndarray:
    """Resize so the shorter side is in [TILE, WORK_SHORT] (aspect kept)."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    target = min(max(short, TILE), WORK_SHORT)
    if target == short:
        return rgb
    scale = target / short
    size = (max(TILE, round(w * scale)), max(TILE, round(h * scale)))
    return np.asarray(PIL.Image.fromarray(rgb).resize(size, PIL.Image.Resampling.BILINEAR))


def grid_tiles(rgb: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Up to ``grid``×``grid`` evenly spaced TILE-px tiles of a resized image (N,T,T,3)."""
    img = resize_for_tiles(rgb)
    h, w = img.shape[:2]
    ny = min(grid, max(1, -(-h // TILE)))
    nx = min(grid, max(1, -(-w // TILE)))
    ys = np.linspace(0, h - TILE, ny).round().astype(int)
    xs = np.linspace(0, w - TILE, nx).round().astype(int)
    return np.stack([img[y : y + TILE, x : x + TILE] for y in ys for x in xs])


def load_weights(path: str | Path | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The shipped (or given) safetensors weights and the class names in their metadata."""
    from safetensors import safe_open

    if path is None:
        ref = resources.files("histofetch") / "pretrained" / WEIGHTS_NAME
        path = Path(str(ref))
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"{path}: classifier weights missing (reinstall histofetch)")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            tensors = {k: fh.get_tensor(k).astype(np.float32) for k in fh.keys()}  # noqa: SIM118
            meta = fh.metadata() or {}
        classes = json.loads(meta.get("classes", "[]"))
    except Exception as exc:  # a corrupt or foreign file
        raise ClassifierError(f"{path}: not a histofetch classifier ({exc})") from None
    needed = {f"{n}.{p}" for n in (*CONV_LAYERS, "fc") for p in ("weight", "bias")}
    if not needed <= set(tensors) or "he" not in classes:
        raise ClassifierError(f"{path}: unexpected layout (tensors {sorted(tensors)})")
    return tensors, classes


def _conv3x3_relu(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3×3 convolution, stride 1, zero padding 1, then ReLU. x: (N,C,H,W)."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # N,C,H,W,3,3
    out = np.einsum("nchwij,ocij->nohw", win, weight, optimize=True)
    out += bias[None, :, None, None]
    return np.maximum(out, 0.0, out=out)


def _maxpool2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[2] // 2 * 2, x.shape[3] // 2 * 2
    # the max of the four strided quarters: the same values as a reshape and .max(axis=(3, 5)),
    # which numpy reduces slowly over its two length-2 axes
    top = np.maximum(x[:, :, 0:h:2, 0:w:2], x[:, :, 0:h:2, 1:w:2])
    return np.maximum(top, np.maximum(x[:, :, 1:h:2, 0:w:2], x[:, :, 1:h:2, 1:w:2]), out=top)


def forward(tensors: dict[str, np.ndarray], tiles: np.ndarray) -> np.ndarray:
    """Logits (N, classes) for uint8 tiles (N,T,T,3); mirrors the PyTorch model exactly."""
    x = (tiles.astype(np.float32) / 255.0 - MEAN) / STD
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for k, name in enumerate(CONV_LAYERS):
        x = _conv3x3_relu(x, tensors[f"{name}.weight"], tensors[f"{name}.bias"])
        if k < len(CONV_LAYERS) - 1:
            x = _maxpool2(x)
    pooled = np.concatenate([x.mean(axis=(2, 3)), x.max(axis=(2, 3))], axis=1)
    return pooled @ tensors["fc.weight"].T + tensors["fc.bias"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@lru_cache(maxsize=2)
def _shipped() -> tuple[dict[str, np.ndarray], list[str]]:
    return load_weights()


def classify_rgb(rgb: np.ndarray, weights: str | Path | None = None) -> ClassifierScores:
    """H&E probability of one uint8 RGB image (see the module docstring for the tiling)."""
    tensors, classes = _shipped() if weights is None else load_weights(weights)
    tiles = grid_tiles(rgb)
    content = content_fraction(tiles) >= MIN_CONTENT
    if content.any():
        tiles = tiles[content]
    probs = softmax(forward(tensors, tiles))
    he = probs[:, classes.index("he")]
    mean = probs.mean(axis=0)
    return ClassifierScores(
        p_he=float(he.mean()),
        probs={c: float(p) for c, p in zip(classes, mean, strict=True)},
        tiles=len(tiles),
        p_he_min=float(he.min()),
        p_he_max=float(he.max()),
    )
