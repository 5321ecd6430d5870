"""Detect a dataset's format from what is on disk and open it.

- ``*_x.h5`` / ``*_y.h5`` (``.gz`` too): PCam pair (``pcam.PCamDataset``)
- folder with ``camelyonpatch_*_x.h5[.gz]``: PCam, choose ``split=train|valid|test``
- ``.h5`` with ``encoded`` + ``y``: ``encoded.EncodedH5Dataset`` (``origin_split=`` filter)
- ``.h5`` with ``x`` + ``y``: PCam layout in one file
- folder with ``train_labels.csv`` (or that file): ``kaggle.KaggleDataset``
- folder with ``manifest.jsonl`` (or that file): ``manifest_tiles.ManifestTileDataset``
- folder of class folders, or of images: ``folders.FolderDataset``

Options (keyword arguments) apply to some formats only; passing one a format does not
take is an error rather than silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histocore.io import expand_home, not_there
from histomodels.data.base import DatasetError, PatchDataset
from histomodels.data.encoded import EncodedH5Dataset
from histomodels.data.folders import FolderDataset, is_image_folder
from histomodels.data.h5safe import open_h5
from histomodels.data.kaggle import LABELS_CSV, KaggleDataset
from histomodels.data.manifest_tiles import ManifestTileDataset
from histomodels.data.pcam import PCamDataset, find_split, pair_of

H5_SUFFIXES = (".h5", ".hdf5", ".h5.gz", ".hdf5.gz")


class OptionsNotTaken(DatasetError):
    """Options given for a format that does not take them; ``options``, ``fmt``,
    ``allowed`` and ``path`` let a CLI say it with its own option names."""

    def __init__(self, path: Path, options: list[str], fmt: str, allowed: list[str]) -> None:
        super().__init__(
            f"{path}: option(s) {options} do not apply to {fmt} data "
            f"(it takes {allowed or 'no options'})"
        )
        self.path, self.options, self.fmt, self.allowed = path, options, fmt, allowed


def _take(kw: dict[str, Any], allowed: set[str], fmt: str, path: Path) -> dict[str, Any]:
    extra = set(kw) - allowed
    if extra:
        raise OptionsNotTaken(path, sorted(extra), fmt, sorted(allowed))
    return kw


def _h5_keys(path: Path) -> set[str]:
    with open_h5(path) as f:
        return set(f.keys())


def _open_h5(path: Path, kw: dict[str, Any]) -> PatchDataset:
    name = path.name.lower()
    pair_name = "_x.h5" in name or "_y.h5" in name
    if name.endswith(".gz"):
        if not pair_name:
            raise DatasetError(f"{path}: gzipped HDF5 is only read as a PCam *_x/_y.h5.gz pair")
        return PCamDataset(*pair_of(path), **_take(kw, {"patch_size"}, "PCam HDF5", path))
    keys = _h5_keys(path)
    if "encoded" in keys:
        return EncodedH5Dataset(path, **_take(kw, {"origin_split", "patch_size"}, "encoded", path))
    if {"x", "y"} <= keys:
        return PCamDataset(path, None, **_take(kw, {"patch_size"}, "PCam HDF5", path))
    if pair_name and keys & {"x", "y"}:
        return PCamDataset(*pair_of(path), **_take(kw, {"patch_size"}, "PCam HDF5", path))
    raise DatasetError(
        f"{path}: HDF5 without a known layout (datasets {sorted(keys)}; expected "
        "'encoded'+'y', or 'x'+'y', or a PCam *_x.h5/*_y.h5 pair)"
    )


def is_run_folder(path: Path) -> bool:
    """A histofetch run (its ``manifest.jsonl``, or a folder holding one): figures, read
    as tiles (:class:`ManifestTileDataset`), not patches."""
    return path.name == "manifest.jsonl" or (path / "manifest.jsonl").is_file()


def open_dataset(path: str | Path, **kw: Any) -> PatchDataset:
    """Open any supported dataset path with the reader its contents call for (the format
    is detected from what is on disk; see the module table)."""
    path = expand_home(path)  # text starting with '~' only: './~/x' is a name
    if not path.exists():
        raise DatasetError(not_there(path))  # a link loop on the way: named
    if not path.is_dir() and not path.is_file():  # a FIFO or device would hang the reader
        raise DatasetError(f"{path}: not a regular file or folder")
    if path.is_file():
        if path.name.lower().endswith(H5_SUFFIXES):
            return _open_h5(path, kw)
        if path.name == LABELS_CSV:
            return KaggleDataset(path.parent, **_take(kw, {"patch_size"}, "Kaggle", path))
        if path.name == "manifest.jsonl":
            return open_dataset(path.parent, **kw)
        raise DatasetError(f"{path}: not a dataset file (.h5, {LABELS_CSV}, manifest.jsonl)")
    if is_run_folder(path):
        opts = _take(kw, {"scale", "min_tissue"}, "histofetch run", path)
        return ManifestTileDataset(path, **opts)
    if (path / LABELS_CSV).exists():  # a FIFO or folder there: the reader refuses it by name
        return KaggleDataset(path, **_take(kw, {"patch_size"}, "Kaggle", path))
    if any(path.glob("camelyonpatch_level_2_split_*_x.h5*")):
        opts = _take(kw, {"split", "patch_size"}, "PCam folder", path)
        x = find_split(path, opts.pop("split", None))
        return PCamDataset(*pair_of(x), **opts)
    if is_image_folder(path):
        return FolderDataset(path, **_take(kw, {"patch_size"}, "image folder", path))
    h5s = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(H5_SUFFIXES))
    if h5s:
        raise DatasetError(f"{path}: holds HDF5 files {h5s[:5]}; pass one of them")
    raise DatasetError(
        f"{path}: no dataset recognised (expected PCam .h5 files, {LABELS_CSV} + train/, "
        "class folders of images, or a histofetch manifest.jsonl)"
    )
