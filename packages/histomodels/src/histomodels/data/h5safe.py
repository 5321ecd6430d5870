"""Opening untrusted HDF5 files: only plain datasets stored inside the file are read.

HDF5 can make a dataset read bytes from any local file (external storage, virtual
datasets) or follow a link into another file (external links). A dataset file from the
internet must not draw ``/etc/passwd`` into a contact sheet, so :func:`dataset` refuses
all of these, groups where a dataset is expected and null-dataspace datasets (no shape
at all), with one :class:`DatasetError`
naming the file. :func:`check_stored` refuses a dataset that declares more patches than
it stores (a 200 KB file declaring 200,000 patches would otherwise be read as zeros).
:func:`reading` turns HDF5's read errors (a corrupt compressed chunk, a file cut short, a
chunk compressed with a filter whose plugin is missing) into a :class:`DatasetError` naming
the file and the dataset.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from histocore.io import one_line
from histomodels.data.base import DatasetError

#: Names of common filters HDF5 loads as plugins (HDF Group's registry), for the message.
_PLUGIN_FILTERS = {
    307: "bzip2",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32013: "zfp",
    32015: "zstd",
    32026: "blosc2",
}


def missing_filters(ds: h5py.Dataset) -> list[str]:
    """The filters of ``ds`` this HDF5 library cannot run (no plugin), as ``id (name)``."""
    plist = ds.id.get_create_plist()
    missing = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            label = name.decode("utf-8", "replace") or _PLUGIN_FILTERS.get(code, "")
            missing.append(f"{code} ({one_line(label)})" if label else str(code))
    return missing


@contextlib.contextmanager
def reading(path: Path | str, key: str, ds: h5py.Dataset | None = None) -> Iterator[None]:
    """Read dataset ``key`` (``ds``) of ``path`` inside this block: h5py's ``OSError`` (a
    chunk whose filter fails, bytes missing) becomes one :class:`DatasetError` naming both;
    a chunk compressed with a filter this HDF5 lacks says so (HDF5's own words were about
    its plugin folder)."""
    try:
        yield
    except OSError as exc:
        missing = missing_filters(ds) if ds is not None else []
        if missing:
            raise DatasetError(
                f"{path}: {key!r} is compressed with HDF5 filter {', '.join(missing)}, which "
                "this h5py cannot decode (the filter's plugin is not installed, e.g. "
                "pip install hdf5plugin)"
            ) from None
        why = one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise DatasetError(f"{path}: {key!r} cannot be read ({why}); corrupt file") from None


def open_h5(path: Path) -> h5py.File:
    """Open ``path`` read-only; a non-regular or unreadable file is a :class:`DatasetError`."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise DatasetError(f"{path}: not a regular file")
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None


def dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    """``f[key]`` if it is a dataset stored in this file; else a one-line :class:`DatasetError`."""
    link = f.get(key, getlink=True)
    if link is None:
        raise DatasetError(f"{path}: no {key!r} dataset (found {sorted(f.keys())})")
    if not isinstance(link, h5py.HardLink):
        raise DatasetError(
            f"{path}: {key!r} is a link ({type(link).__name__}); links are refused "
            "(an HDF5 link can point into any other file)"
        )
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"{path}: {key!r} is a group, not a dataset")
    if obj.external:
        raise DatasetError(
            f"{path}: {key!r} is stored in external file(s) such as {obj.external[0][0]!r}; "
            "refused (it could read any local file)"
        )
    if obj.is_virtual:
        raise DatasetError(f"{path}: {key!r} is a virtual dataset mapping other files; refused")
    if obj.shape is None:  # HDF5's null dataspace (h5py.Empty): no shape, no values
        raise DatasetError(
            f"{path}: {key!r} is an empty dataset (null dataspace), holding no values"
        )
    return obj


def check_stored(ds: h5py.Dataset, path: Path, key: str) -> None:
    """Refuse a dataset whose declared elements are not all stored in the file."""
    declared = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
    if declared == 0:
        return
    if ds.chunks is None:
        stored = ds.id.get_storage_size()
        ok = stored >= declared
    else:
        per_axis = [-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True)]
        expected = int(np.prod(per_axis, dtype=np.int64))
        stored = ds.id.get_num_chunks()
        ok = stored >= expected
    if not ok:
        raise DatasetError(
            f"{path}: {key!r} declares {list(ds.shape)} ({declared / 1e9:.2f} GB) but the file "
            f"stores only part of it ({ds.id.get_storage_size()} bytes); truncated or forged"
        )
