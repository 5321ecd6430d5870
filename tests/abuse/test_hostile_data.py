"""Hostile and broken datasets: every reader refuses them with one DatasetError naming the file."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from make_corpus import (
    corrupt_gzip,
    gzip_bomb,
    h5_declaring,
    h5_external,
    h5_external_link,
    h5_groups,
    pcam_h5,
)

from histomodels.data import DatasetError, open_dataset


def _encoded_h5(path: Path, labels: np.ndarray) -> Path:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(buf, format="PNG")
    with h5py.File(path, "w") as f:
        enc = f.create_dataset("encoded", (len(labels),), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(len(labels)):
            enc[i] = np.frombuffer(buf.getvalue(), np.uint8)
        f["y"] = labels
    return path


@pytest.mark.parametrize("value", [0.5, 0.9, np.nan, 2.0, -1.0])
def test_fractional_or_out_of_range_pcam_labels_are_errors(tmp_path: Path, value: float) -> None:
    path = pcam_h5(tmp_path / "d.h5", labels=np.array([0, 1, value, 0]), n=4, y_dtype="float32")
    with pytest.raises(DatasetError, match=r"d\.h5: row 2: label .* is not 0/1"):
        open_dataset(path)


def test_fractional_encoded_labels_are_errors(tmp_path: Path) -> None:
    path = _encoded_h5(tmp_path / "enc.h5", np.array([0.0, 0.9, 1.0]))
    with pytest.raises(DatasetError, match=r"enc\.h5 'y': row 1: label .*0\.9.* is not 0/1"):
        open_dataset(path)


def test_integer_float_labels_still_work(tmp_path: Path) -> None:
    ds = open_dataset(pcam_h5(tmp_path / "d.h5", n=4, labels=np.array([0, 1, 1, 0]), y_dtype="f4"))
    assert ds.labels().tolist() == [0, 1, 1, 0]


def test_byte_string_labels_are_an_error(tmp_path: Path) -> None:
    path = pcam_h5(tmp_path / "d.h5", n=2, labels=np.array([b"x", b"y"]), y_dtype="S1")
    with pytest.raises(DatasetError, match=r"d\.h5: labels are \|S1, expected integers 0/1"):
        open_dataset(path)


@pytest.mark.parametrize("side", [64, 1])
def test_pcam_patch_size_is_checked(tmp_path: Path, side: int) -> None:
    path = pcam_h5(tmp_path / "d.h5", n=4, side=side)
    with pytest.raises(DatasetError, match=f"patches are {side}x{side} px, expected 96x96"):
        open_dataset(path)


def test_zero_patch_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"d\.h5: 'x' holds no patches"):
        open_dataset(pcam_h5(tmp_path / "d.h5", n=0))
    with pytest.raises(DatasetError, match=r"enc\.h5: 'encoded' holds no patches"):
        open_dataset(_encoded_h5(tmp_path / "enc.h5", np.zeros(0, np.uint8)))


def test_groups_instead_of_datasets(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"g\.h5: 'x' is a group, not a dataset"):
        open_dataset(h5_groups(tmp_path / "g.h5"))


@pytest.mark.parametrize("key", ["x", "y", "encoded"])
def test_null_dataspace_dataset_is_one_error(tmp_path: Path, key: str) -> None:
    """``h5py.Empty`` (HDF5's null dataspace) has no shape: each reader raised TypeError."""
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=h5py.Empty("u1"))
        if key != "y":
            f["y"] = np.zeros(4, np.uint8)
        if key == "y":
            f["x"] = np.zeros((4, 96, 96, 3), np.uint8)
    with pytest.raises(DatasetError, match=rf"empty\.h5: '{key}' is an empty dataset"):
        open_dataset(path)


def test_external_storage_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(96 * 96 * 3 * 2))
    with pytest.raises(DatasetError, match=r"ext\.h5: 'x' is stored in external file"):
        open_dataset(h5_external(tmp_path / "ext.h5", secret))


def test_external_link_is_refused(tmp_path: Path) -> None:
    path = h5_external_link(tmp_path / "link.h5", tmp_path / "other.h5")
    with pytest.raises(
        DatasetError, match=r"link\.h5: 'x' is a link \(ExternalLink\); links are refused"
    ):
        open_dataset(path)


def test_file_declaring_more_patches_than_it_stores(tmp_path: Path) -> None:
    path = h5_declaring(tmp_path / "big.h5", n=200_000)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(DatasetError, match=r"big\.h5: 'x' declares \[200000, 96, 96, 3\]"):
        open_dataset(path)


def test_memory_budget_refuses_before_allocating(tmp_path: Path, monkeypatch) -> None:
    ds = open_dataset(pcam_h5(tmp_path / "d.h5", n=16))
    monkeypatch.setenv("HISTOMODELS_MEMORY_BUDGET", "100000")
    with pytest.raises(DatasetError, match=r"d\.h5: .* over the budget of 0\.00 GB"):
        ds.load_all()


def _pair(tmp_path: Path, x_gz: Path) -> Path:
    pcam_h5(tmp_path / "s_y.h5")
    return x_gz


def test_corrupt_gzip_is_one_error_and_leaves_no_part_file(tmp_path: Path) -> None:
    x = corrupt_gzip(tmp_path / "s_x.h5.gz")
    with pytest.raises(DatasetError, match=r"s_x\.h5\.gz: corrupt gzip file"):
        open_dataset(_pair(tmp_path, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_x.h5.gz", "s_y.h5"]


def test_gzip_bomb_is_capped_and_cleaned_up(tmp_path: Path) -> None:
    x = gzip_bomb(tmp_path / "s_x.h5.gz", size=200_000_000)
    assert x.stat().st_size < 1_000_000
    with pytest.raises(DatasetError, match=r"s_x\.h5\.gz: expands past 67108864 bytes"):
        open_dataset(_pair(tmp_path, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_x.h5.gz", "s_y.h5"]


def test_disk_full_is_reported_as_disk_full(tmp_path: Path) -> None:
    import gzip

    pcam_h5(tmp_path / "plain.h5")
    x = tmp_path / "s_x.h5.gz"
    x.write_bytes(gzip.compress((tmp_path / "plain.h5").read_bytes()))
    made: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def onto_dev_full(*args, **kwargs):  # the temp file is made, then every write: ENOSPC
        fd, name = real_mkstemp(*args, **kwargs)
        os.dup2(os.open("/dev/full", os.O_WRONLY), fd)
        made.append(name)
        return fd, name

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "mkstemp", onto_dev_full)
        with pytest.raises(DatasetError, match=r"s_x\.h5\.gz: disk full while writing"):
            open_dataset(_pair(tmp_path, x))
    assert made and not [n for n in made if Path(n).exists()]  # its temp file removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.h5", "s_x.h5.gz", "s_y.h5"]


def test_two_gunzips_of_one_file_at_once_both_succeed(tmp_path: Path, monkeypatch) -> None:
    """Two processes (DDP ranks, parallel jobs) opening one ``.h5.gz`` at once each write
    their own temp file: they used to share one fixed ``.part`` name, truncating each
    other's output, and one failed at its rename (or left a corrupt ``.h5`` trusted later).
    The second decompression is run in the middle of the first, after its first write."""
    import gzip

    from histomodels.data import pcam

    pcam_h5(tmp_path / "plain.h5")
    plain = (tmp_path / "plain.h5").read_bytes()
    x = tmp_path / "s_x.h5.gz"
    x.write_bytes(gzip.compress(plain))
    real_task = pcam.task
    nested: list[Path] = []
    started: list[bool] = []

    @contextlib.contextmanager
    def task_with_a_rival(*args, **kwargs):
        with real_task(*args, **kwargs) as shown:
            real_update = shown.update

            def update(**kw):
                if not started:  # the rival starts once, mid-way through the first write
                    started.append(True)
                    nested.append(pcam.gunzip_once(x))
                real_update(**kw)

            shown.update = update
            yield shown

    monkeypatch.setattr(pcam, "task", task_with_a_rival)
    out = pcam.gunzip_once(x)
    assert nested == [out] == [tmp_path / "s_x.h5"]
    assert out.read_bytes() == plain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.h5", "s_x.h5", "s_x.h5.gz"]


def _kaggle(tmp_path: Path, csv_bytes: bytes) -> Path:
    from PIL import Image

    (tmp_path / "train").mkdir()
    for pid in ("a", "b"):
        Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(tmp_path / "train" / f"{pid}.tif")
    (tmp_path / "train_labels.csv").write_bytes(csv_bytes)
    return tmp_path


def test_kaggle_csv_with_utf8_bom_is_accepted(tmp_path: Path) -> None:
    ds = open_dataset(_kaggle(tmp_path, b"\xef\xbb\xbfid,label\na,0\nb,1\n"))
    assert ds.labels().tolist() == [0, 1]


def test_kaggle_latin1_csv_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train_labels\.csv: not UTF-8 text"):
        open_dataset(_kaggle(tmp_path, b"id,label\na,0\nb,1\n# caf\xe9\n"))


@pytest.mark.timeout(30)
def test_csv_field_over_the_csv_module_limit_is_one_error(tmp_path: Path) -> None:
    """A 200 KB cell (csv's limit is 128 KB) in the Kaggle labels, a PCam ``*_meta.csv`` or
    the encoded layout's ``manifest.csv``: each raised ``_csv.Error`` with a traceback."""
    long = "a" * 200_000
    (tmp_path / "k").mkdir()
    kaggle = _kaggle(tmp_path / "k", f"id,label\na,0\n{long},1\n".encode())
    with pytest.raises(DatasetError, match=r"train_labels\.csv:3: unreadable CSV \(field larger"):
        open_dataset(kaggle)
    pcam_h5(tmp_path / "p_x.h5", n=2)
    (tmp_path / "p_meta.csv").write_text(f"patch_id\n{long}\nb\n")
    with pytest.raises(DatasetError, match=r"p_meta\.csv: unreadable CSV \(field larger"):
        open_dataset(tmp_path / "p_x.h5")
    enc = _encoded_h5(tmp_path / "e.h5", np.array([0, 1], np.uint8))
    (tmp_path / "manifest.csv").write_text(f"file,row,origin_split\ne.h5,0,{long}\n")
    with pytest.raises(DatasetError, match=r"manifest\.csv: unreadable CSV \(field larger"):
        open_dataset(enc, origin_split="train")


@pytest.mark.timeout(30)
def test_fifo_dataset_path_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "d.h5"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match=r"d\.h5: not a regular file"):
        open_dataset(fifo)


def test_corrupt_compressed_chunk_is_one_error_naming_the_file(tmp_path: Path) -> None:
    """Bytes flipped inside one gzip chunk: h5py's bare ``OSError`` ("filter returned
    failure during read") reached the user without the file's name."""
    path = tmp_path / "badchunk.h5"
    x = np.random.default_rng(0).integers(0, 255, (32, 96, 96, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", data=x, chunks=(8, 96, 96, 3), compression="gzip")
        f["y"] = np.array([0, 1] * 16, np.uint8)
        chunk = ds.id.get_chunk_info(1)
    data = bytearray(path.read_bytes())
    for k in range(chunk.byte_offset + 10, chunk.byte_offset + 200):
        data[k] ^= 0x55
    path.write_bytes(bytes(data))
    ds = open_dataset(path)  # the header and labels are intact
    assert ds[0][0].shape == (96, 96, 3)  # chunk 0 reads
    for read in (lambda: ds[8], ds.load_all):
        with pytest.raises(DatasetError, match=f"^{path}: 'x' cannot be read .*corrupt file$"):
            read()


def _plugin_filtered(f: h5py.File, key: str, data: np.ndarray, chunk_rows: int) -> None:
    """``f[key]`` = ``data`` whose chunks are marked compressed with HDF5 filter 32001
    (blosc), registered but absent here: chunks written raw with filter mask 0 (what a
    writer with the plugin leaves, as far as a reader without it can tell)."""
    assert not h5py.h5z.filter_avail(32001)
    ds = f.create_dataset(
        key, shape=data.shape, dtype=data.dtype, chunks=(chunk_rows, *data.shape[1:]),
        compression=32001, allow_unknown_filter=True,
    )  # fmt: skip
    for start in range(0, len(data), chunk_rows):
        chunk = np.zeros((chunk_rows, *data.shape[1:]), data.dtype)
        chunk[: len(data) - start] = data[start : start + chunk_rows]
        offset = (start,) + (0,) * (data.ndim - 1)
        ds.id.write_direct_chunk(offset, chunk.tobytes(), filter_mask=0)


def test_missing_compression_plugin_is_named_not_called_corrupt(tmp_path: Path) -> None:
    """HDF5's message was about its plugin folder, ending in "corrupt file": ``'x' cannot
    be read (Can't synchronously read data (can't open directory (/usr/local/lib/plugin)
    ...)); corrupt file``. The file is fine; a filter this h5py lacks is named."""
    x = np.random.default_rng(0).integers(0, 255, (8, 96, 96, 3), dtype=np.uint8)
    y = np.array([0, 1] * 4, np.uint8)
    xpath, ypath = tmp_path / "blosc_x.h5", tmp_path / "blosc_y.h5"
    with h5py.File(xpath, "w") as f:
        _plugin_filtered(f, "x", x, 4)
        f["y"] = y
    with h5py.File(ypath, "w") as f:
        f["x"] = x
        _plugin_filtered(f, "y", y, 4)
    why = "is compressed with HDF5 filter 32001 (blosc), which this h5py cannot decode"
    ds = open_dataset(xpath)
    for read in (lambda: ds[0], ds.load_all):
        with pytest.raises(DatasetError, match=f"^{xpath}: 'x' {re.escape(why)}") as err:
            read()
        assert "corrupt" not in str(err.value)
    with pytest.raises(DatasetError, match=f"^{ypath}: 'y' {re.escape(why)}"):
        open_dataset(ypath)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_one_class_validation_data_names_the_file(tmp_path: Path, command: str) -> None:
    """``error: validation data holds one class only`` named no file; ``eval --val`` said
    so only after inference. Exit 1, one line starting with the file, nothing written."""
    import torch
    from make_corpus import checkpoint_dict
    from typer.testing import CliRunner

    from histomodels.cli import app

    good = pcam_h5(tmp_path / "good.h5", n=8)
    one = pcam_h5(tmp_path / "one.h5", n=8, labels=np.zeros(8))
    torch.save(checkpoint_dict(), tmp_path / "best.pt")
    out = tmp_path / "out"
    args = {
        "train": ["train", "--data", str(good), "--val", str(one), "--epochs", "1"],
        "eval": ["eval", str(tmp_path / "best.pt"), "--data", str(good), "--val", str(one)],
    }[command]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {one}: validation data holds one class only")
    assert result.stderr.count("\n") == 1 and not out.exists()
