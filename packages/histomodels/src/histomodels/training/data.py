"""Training data: each split decoded once (or streamed in blocks), checked, stain-normalised.

Datasets are decoded into uint8 arrays (random reads of gzip-chunked HDF5 starve the
trainer); batches are augmented as uint8 and normalised on the fly.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histocore.io import expand_home, not_there
from histomodels.config import TrainConfig
from histomodels.data import ArrayDataset, DatasetError, PatchDataset, open_dataset
from histomodels.data.base import pixel_digests, rows_also_in
from histomodels.data.blocks import BlockImages
from histomodels.data.cache import decoded_bytes, default_budget
from histomodels.data.stain import stain_normalizer
from histomodels.training.result import TrainingError

log = logging.getLogger(__name__)

#: A dataset, a path to one, or an ``(images, labels)`` pair of arrays.
DataSpec = PatchDataset | str | Path | tuple
#: Decoded uint8 ``[N, H, W, 3]`` images, or a streamed stand-in with the same indexing.
Images = torch.Tensor | BlockImages


def load_split(
    spec: DataSpec, role: str, *, stream: bool = True, origin_split: str | None = None
) -> tuple[Images, torch.Tensor]:
    """Decode a dataset once: ``(uint8 [N, H, W, 3] tensor, float labels [N])``.

    A dataset whose decoded size exceeds the in-memory cache budget
    (:func:`histomodels.data.cache.default_budget`: ``HISTOMODELS_CACHE_BYTES`` or half the
    free memory) is not decoded: with ``stream`` its images come back as a
    :class:`~histomodels.data.blocks.BlockImages` read in contiguous blocks during training.
    Labels must all be 0 or 1 (a patch without a label cannot be trained or validated on).
    ``origin_split``: keep only those origin splits of a path's patches (the reader's
    ``origin_split=``: encoded HDF5 with ``manifest.csv`` beside it); a dataset or arrays
    given are taken as they are (``tune`` passes its trials the split it filtered).
    """
    try:
        return _load_split(spec, role, stream=stream, origin_split=origin_split)
    except DatasetError as exc:
        wrong = re.search(r" (\d+)x(\d+) px, expected (\d+)x\d+$", str(exc))
        if wrong is None:
            raise
        # what a folder of 20x/40x tiles meets first: eval's and predict's message names
        # their --scale; training has none, so it says what to do with the tiles
        w, h, side = (int(n) for n in wrong.groups())
        if min(w, h) < side:  # 48x48: nothing to cut, and nothing is enlarged
            raise DatasetError(
                f"{exc}; training takes {side}x{side} px patches at PCam's ~10x as they are "
                f"and does not enlarge smaller ones: give {side} px patches (cut from larger "
                f"tiles, resized to ~10x first)"
            ) from None
        raise DatasetError(
            f"{exc}; training takes {side}x{side} px patches at PCam's ~10x as they are (no "
            f"--scale, as eval and predict have): resize tiles of another magnification (0.25 "
            f"for 40x) and cut them into {side} px patches first"
        ) from None


def _load_split(
    spec: DataSpec, role: str, *, stream: bool, origin_split: str | None
) -> tuple[Images, torch.Tensor]:
    if isinstance(spec, tuple):
        spec = ArrayDataset(spec[0], spec[1], source=f"{role} arrays")
    if isinstance(spec, (str, Path)):
        path = expand_home(spec)  # as the reader takes it: a leading '~' only
        if not path.exists():
            raise DatasetError(not_there(path, f"{role} data not found"))  # or the link loop
        spec = open_dataset(path, **({"origin_split": origin_split} if origin_split else {}))
    name = getattr(spec, "source", "") or role
    images: Any
    if stream and not isinstance(spec, ArrayDataset) and decoded_bytes(spec) > default_budget():
        images = BlockImages(spec)
        labels = np.asarray(spec.labels())
    else:
        images, labels, _ = spec.load_all()
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DatasetError(
                f"{name}: expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
            )
        images = torch.from_numpy(np.ascontiguousarray(images))
    labels = np.asarray(labels)
    _check_labels(spec, name, role, labels)
    return images, torch.from_numpy(labels.astype(np.float32))


def _check_labels(spec: PatchDataset, name: str, role: str, labels: np.ndarray) -> None:
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        i = int(bad[0])
        ids = spec.ids()
        raise DatasetError(
            f"{name}: {len(bad)} {role} patches have labels other than 0/1, e.g. "
            f"{ids[i] if i < len(ids) else i!r} has {labels[i]}"
        )


def normalise_stain(images: Images, stain: Any) -> Images:
    """Apply a stain normaliser to a split (to each block as it is read, when streamed)."""
    if isinstance(images, BlockImages):
        images.transform = stain.transform
        return images
    return torch.from_numpy(stain.transform(images.numpy()))


def prepare_splits(
    cfg: TrainConfig,
    train_data: DataSpec | None,
    val_data: DataSpec | None,
    say: Callable[[str], None] = log.info,
) -> tuple[tuple[Images, torch.Tensor], tuple[Images, torch.Tensor], Any]:
    """Load train and validation data, check that each holds both classes (before any note),
    and stain-normalise both when configured. Returns ``((x, y) train, (x, y) val, stain
    normaliser)``; ``say`` receives the notes a user should see (stain normalisation,
    streaming)."""
    train_spec = _given(train_data, cfg.data, "train")
    x_train, y_train = load_split(train_spec, "train", origin_split=cfg.origin_split)
    x_val, y_val = load_split(_given(val_data, cfg.val, "validation"), "validation")
    # before any note: a one-class split is the only line (the stain and streaming notes
    # came first, as if the run were starting)
    check_two_classes(y_train, train_data if train_data is not None else cfg.data, "train")
    check_two_classes(y_val, val_data if val_data is not None else cfg.val, "validation")
    stain = stain_normalizer(cfg.stain_norm) if cfg.stain_norm else None
    if stain is not None:
        say(f"stain normalisation ({cfg.stain_norm}) of train and validation")
        x_train, x_val = normalise_stain(x_train, stain), normalise_stain(x_val, stain)
    for role, x in (("train", x_train), ("validation", x_val)):
        if isinstance(x, BlockImages):
            say(
                f"{role} data ({x.ds.source}) is larger than the in-memory cache budget: "
                f"streaming it in blocks of {x.block} patches (HISTOMODELS_CACHE_BYTES to change)"
            )
    return (x_train, y_train), (x_val, y_val), stain


def describe_split(labels: torch.Tensor) -> str:
    """``"7,601 patches (3,220 tumour)"``: a split's size and positives (label 1), as the
    user checks them against the docs (e.g. the 7,601 that ``--origin-split`` keeps of
    dev/train.h5). ``labels``: the 0/1 labels as read (not distillation targets)."""
    return f"{len(labels):,} patches ({int((labels > 0.5).sum()):,} tumour)"


def check_two_classes(labels: torch.Tensor, spec: Any, role: str) -> None:
    """Training needs both classes in each split: a one-class training set teaches nothing
    (it trained, and reported a validation AUC, without a word), and a one-class
    validation set has no AUC."""
    classes = torch.unique(labels)
    if len(classes) >= 2:
        return
    where = spec if isinstance(spec, str | Path) else getattr(spec, "source", role)
    only = f" ({int(classes[0])})" if len(classes) else ""
    why = "AUC is undefined" if role == "validation" else "a classifier needs both"
    raise DatasetError(f"{where}: {role} data holds one class only{only}; {why}")


def warn_shared_patches(x_train: Images, x_val: Images) -> int:
    """One warning when validation patches are also training patches (identical pixels,
    whatever their format or ids); returns how many validation patches (rows) are.
    Streamed splits are not checked."""
    if not (isinstance(x_train, torch.Tensor) and isinstance(x_val, torch.Tensor)):
        return 0
    shared = rows_also_in(pixel_digests(x_val.numpy()), pixel_digests(x_train.numpy()))
    if shared:
        log.warning(
            "%d of %d validation patches are also in the training data (identical pixels): "
            "validation AUC, the best epoch and early stopping are then judged %s on "
            "training patches",
            shared, len(x_val), "entirely" if shared == len(x_val) else "partly",
        )  # fmt: skip
    return shared


def _given(data: DataSpec | None, path: str | None, role: str) -> DataSpec:
    if data is not None:
        return data
    if not path:
        raise TrainingError(f"no {role} data given")
    return path


def make_augment(
    cfg: TrainConfig, seed: int, stain_stats: Any = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The histology augmentation (dihedral flips, colour, HED jitter, and the optional
    levers: RandStainNA-style stain templates drawn from ``stain_stats``, JPEG/blur, cut-out)
    for one epoch/rank."""
    from histomodels.data.transforms import Augment

    aug = Augment(
        strength=cfg.aug_strength,
        hed_jitter=cfg.hed_jitter,
        seed=seed,
        cutout=cfg.cutout,
        randstain=cfg.randstain,
        jpeg_blur=cfg.jpeg_blur,
        stain_stats=stain_stats,
    )
    return (lambda b: b) if aug.identity else aug


def fit_stain_stats(cfg: TrainConfig, x_train: Images, run_dir: Path | None) -> Any:
    """With ``randstain``: the LAB template distribution of the training patches
    (:func:`histomodels.data.randstain.fit_lab_stats` on up to 2,048 of them, after any
    stain normalisation), also written to ``run_dir/randstain.json``; else None."""
    if not cfg.randstain:
        return None
    from histocore.io import atomic_write_text
    from histomodels.data.randstain import fit_lab_stats, fit_sample

    stats = fit_lab_stats(fit_sample(x_train))
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "randstain.json", json.dumps(stats.to_dict(), indent=1))
    return stats


def epoch_order(x_train: Images, gen: torch.Generator) -> torch.Tensor:
    """An epoch's permutation (block-wise for streamed data)."""
    if isinstance(x_train, BlockImages):
        return x_train.order(gen)
    return torch.randperm(len(x_train), generator=gen)
