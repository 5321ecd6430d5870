"""open_dataset on every supported layout, real samples included; bad input fails clearly."""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from histomodels.data import ArrayDataset, DatasetError, open_dataset
from histomodels.data.encoded import EncodedH5Dataset
from histomodels.data.folders import FolderDataset
from histomodels.data.kaggle import KaggleDataset
from histomodels.data.pcam import PCamDataset
from histomodels.synthetic import make_patches

PCAM = "camelyonpatch_level_2_split_{}_{}.h5"


def _write_pcam(folder: Path, split: str, x: np.ndarray, y: np.ndarray, gz: bool = False) -> Path:
    """A PCam-format pair exactly as the official files lay it out."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for xy, data in (("x", x), ("y", y.reshape(-1, 1, 1, 1).astype(np.uint8))):
        path = folder / PCAM.format(split, xy)
        with h5py.File(path, "w") as f:
            chunks = (min(8, len(data)), *data.shape[1:])
            f.create_dataset(xy, data=data, chunks=chunks, compression="gzip")
        if gz:
            with path.open("rb") as src, gzip.open(str(path) + ".gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()
            path = Path(str(path) + ".gz")
        paths.append(path)
    return paths[0]


@pytest.fixture(scope="module")
def patches() -> tuple[np.ndarray, np.ndarray]:
    return make_patches(24, seed=11)


# --- official PCam HDF5 -----------------------------------------------------------------


def test_real_pcam_sample_pair_from_either_file() -> None:
    folder = shared_path("data", "pcam_real", "pcam_format_sample")
    x_path = folder / "pcam_real_sample_x.h5"
    for p in (x_path, folder / "pcam_real_sample_y.h5"):
        ds = open_dataset(p)
        assert isinstance(ds, PCamDataset) and len(ds) == 400
        assert ds.labels().sum() == 200
    with h5py.File(x_path) as f:
        dset = f["x"]
        assert isinstance(dset, h5py.Dataset)
        raw = dset[5]
    img, label, pid = ds[5]
    assert np.array_equal(img, raw)
    meta = list(csv.DictReader((folder / "pcam_real_sample_meta.csv").open()))
    assert pid == meta[5]["patch_id"] and label == int(meta[5]["label"])
    images, labels, ids = ds.load_all()
    assert images.shape == (400, 96, 96, 3) and np.array_equal(images[5], raw)
    assert labels[5] == label and ids[5] == pid


def test_kaggle_sample_matches_pcam_sample_pixels() -> None:
    """The Kaggle TIFFs are a subset of the PCam-format sample: same ids, same pixels."""
    kaggle = open_dataset(shared_path("data", "pcam_real", "kaggle_format_sample"))
    pcam = open_dataset(
        shared_path("data", "pcam_real", "pcam_format_sample", "pcam_real_sample_x.h5")
    )
    assert isinstance(kaggle, KaggleDataset) and len(kaggle) == 200
    assert kaggle.labels().sum() == 100
    where = {pid: i for i, pid in enumerate(pcam.ids())}
    for i in (0, 57, 199):
        img, label, pid = kaggle[i]
        img2, label2, _ = pcam[where[pid]]
        assert np.array_equal(img, img2) and label == label2


def test_pcam_folder_split_and_gzip(tmp_path: Path, patches) -> None:
    x, y = patches
    _write_pcam(tmp_path, "valid", x[:10], y[:10], gz=True)
    _write_pcam(tmp_path, "test", x[10:], y[10:])
    with pytest.raises(DatasetError, match="holds PCam splits") as info:
        open_dataset(tmp_path)
    # names the files any command takes (it said "split=<name>", no option of train/eval)
    assert "split=" not in str(info.value)
    assert str(tmp_path / (PCAM.format("valid", "x") + ".gz")) in str(info.value)
    assert str(tmp_path / PCAM.format("test", "x")) in str(info.value)
    ds = open_dataset(tmp_path, split="valid")
    assert len(ds) == 10 and np.array_equal(ds[3][0], x[3]) and ds[3][1] == y[3]
    assert (tmp_path / PCAM.format("valid", "x")).exists()  # decompressed once, beside it
    assert len(open_dataset(tmp_path, split="test")) == 14
    with pytest.raises(DatasetError, match=r"no camelyonpatch_level_2_split_train_x\.h5"):
        open_dataset(tmp_path, split="train")
    # DataLoader workers get a pickled copy: the open HDF5 handle must not travel
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[9][0], x[9])


def test_pcam_bad_inputs(tmp_path: Path, patches) -> None:
    x, y = patches
    bad = y.copy()
    bad[7] = 2
    xp = _write_pcam(tmp_path / "labels", "valid", x, bad)
    with pytest.raises(DatasetError, match=r"_y\.h5: row 7: label 2 is not 0/1"):
        open_dataset(xp)
    xp = _write_pcam(tmp_path / "short", "valid", x, y[:5])
    with pytest.raises(DatasetError, match=r"expected \[24\] labels"):
        open_dataset(xp)
    xp = _write_pcam(tmp_path / "gray", "valid", x[..., 0], y)
    with pytest.raises(DatasetError, match=r"expected uint8 \[N, H, W, 3\]"):
        open_dataset(xp)
    lonely = tmp_path / "lonely" / PCAM.format("test", "x")
    lonely.parent.mkdir()
    shutil.copy(tmp_path / "short" / PCAM.format("valid", "x"), lonely)
    with pytest.raises(DatasetError, match="no matching"):
        open_dataset(lonely)
    corrupt = tmp_path / "corrupt"
    _write_pcam(corrupt, "valid", x, y, gz=True)
    gz = corrupt / (PCAM.format("valid", "x") + ".gz")
    gz.write_bytes(gz.read_bytes()[:200])
    with pytest.raises(DatasetError, match="corrupt gzip"):
        open_dataset(gz)
    assert not [p.name for p in corrupt.iterdir() if p.name.endswith((".part", ".tmp"))]
    notes = tmp_path / "notes.h5"
    notes.write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        open_dataset(notes)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["images"] = np.zeros((2, 2))
    with pytest.raises(DatasetError, match="without a known layout"):
        open_dataset(tmp_path / "other.h5")


def test_pcam_folder_with_h5_and_h5_gz_names_the_file_read(tmp_path: Path, patches) -> None:
    """A folder holding both x.h5 and x.h5.gz (``data download --gunzip``, ``gunzip -k``)
    reads the .h5 and names it as the source, not the .gz it did not read."""
    x, y = patches
    _write_pcam(tmp_path, "valid", x, y, gz=True)
    open_dataset(tmp_path)  # decompresses beside: the folder now holds both
    plain = tmp_path / PCAM.format("valid", "x")
    assert plain.exists() and Path(str(plain) + ".gz").exists()
    ds = open_dataset(tmp_path)
    assert ds.source == f"pcam:{plain}"
    assert open_dataset(Path(str(plain) + ".gz")).source == f"pcam:{plain}"


def test_gzip_beside_read_only_data_goes_to_cache(tmp_path: Path, patches, monkeypatch) -> None:
    import os

    x, y = patches
    src = tmp_path / "ro"
    xp = _write_pcam(src, "valid", x, y, gz=True)
    src.chmod(0o555)
    try:
        if os.access(src, os.W_OK):
            pytest.skip("running as root: cannot make a read-only folder")
        monkeypatch.setenv("HISTOMODELS_CACHE", str(tmp_path / "cache"))
        ds = open_dataset(xp)
        assert isinstance(ds, PCamDataset)
        assert len(ds) == 24 and ds.x_path.parent == tmp_path / "cache"
        assert ds.source == f"pcam:{ds.x_path}"  # the copy read, not the .gz
    finally:
        src.chmod(0o755)


# --- encoded HDF5 -------------------------------------------------------------------------


def test_real_encoded_dev_files_and_origin_filter() -> None:
    dev = shared_path("data", "pcam_real", "dev")
    valid = open_dataset(dev / "valid.h5")
    assert isinstance(valid, EncodedH5Dataset) and len(valid) == 2907
    assert valid.labels().sum() == 1407
    train = open_dataset(dev / "train.h5", origin_split=("kaggle_train", "pcam_train"))
    # manifest.csv: 5,117 kaggle_train + 2,484 pcam_train (+1 "unknown" row left out)
    assert len(train) == 7601
    rows = {r["patch_id"]: r for r in csv.DictReader((dev / "manifest.csv").open())}
    for i in (0, 4000, 7600):
        img, label, pid = train[i]
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert rows[pid]["origin_split"] in ("kaggle_train", "pcam_train")
        assert int(rows[pid]["label"]) == label
    with pytest.raises(DatasetError, match=r"present: .*pcam_valid"):
        open_dataset(dev / "valid.h5", origin_split="kaggle_train")


def test_an_encoded_label_in_a_row_the_origin_filter_drops_is_not_checked(
    tmp_path: Path,
) -> None:
    """A bad label (-1, 2) in a row ``origin_split`` leaves out (an origin ``unknown`` row)
    failed the whole read; only the rows kept are checked now, and a bad one among them is
    named by its row in the file, not its place among the rows kept."""
    import h5py

    from histomodels.synthetic import write_h5

    path = write_h5(tmp_path / "train.h5", 6)
    with h5py.File(path, "r+") as f:
        ds = f["y"]
        assert isinstance(ds, h5py.Dataset)
        y = ds[()]
        y[1], y[4] = 255, 2  # rows 1 (unknown origin) and 4 (pcam_train)
        ds[...] = y
    origins = ["pcam_train", "unknown", "pcam_train", "kaggle_train", "pcam_train", "pcam_train"]
    (tmp_path / "manifest.csv").write_text(
        "file,row,origin_split\n" + "".join(f"train.h5,{i},{o}\n" for i, o in enumerate(origins))
    )
    kept = open_dataset(path, origin_split="kaggle_train")
    assert len(kept) == 1 and kept.labels().tolist() == [y[3]]
    # one bad row is said in the singular ('(1 bad rows)')
    with pytest.raises(
        DatasetError, match=r"train\.h5 'y': row 4: label 2 is not 0/1 \(1 bad row\)$"
    ):
        open_dataset(path, origin_split="pcam_train")
    with pytest.raises(DatasetError, match=r"row 1: label 255 is not 0/1 \(2 bad rows\)"):
        open_dataset(path)  # unfiltered: every row is used, every row checked


def test_an_origin_manifest_row_that_is_negative_or_repeated_is_refused(tmp_path: Path) -> None:
    """``manifest.csv`` naming row -1 read the file's last row, and a row named twice was
    read twice (one patch counted two times): both are one line naming the manifest line."""
    from histomodels.synthetic import write_h5

    path = write_h5(tmp_path / "train.h5", 4)
    manifest = tmp_path / "manifest.csv"
    again = r":4: row 0 of train\.h5 is listed again \(first on line 2\)"
    for rows, problem in (([0, -1], r":3: row -1 is negative"), ([0, 2, 0], again)):
        manifest.write_text("file,row,origin_split\n" + "".join(f"train.h5,{r},a\n" for r in rows))
        with pytest.raises(DatasetError, match=problem):
            open_dataset(path, origin_split="a")
    manifest.write_text("file,row,origin_split\ntrain.h5,3,a\ntrain.h5,0,a\ntrain.h5,1,b\n")
    assert open_dataset(path, origin_split="a").ids() == ["synthetic_0_0", "synthetic_0_3"]


def test_an_origin_manifest_row_in_two_splits_huge_or_not_plain_digits_is_refused(
    tmp_path: Path,
) -> None:
    """Review 23: a row listed under two origin splits was accepted (train on split a and
    eval on split b shared a patch): repeats are refused across the whole manifest, kept
    rows or not. A row of 2**63 or more was an OverflowError traceback; ``1_0`` and `` 1 ``
    were read as 10 and 1 (int's leniency). Each is one line naming the manifest line."""
    from histomodels.synthetic import write_h5

    path = write_h5(tmp_path / "train.h5", 4)
    manifest = tmp_path / "manifest.csv"
    again = r"row {} of train\.h5 is listed again \(first on line 2{}\)$"
    cases = [
        ("train.h5,0,a\ntrain.h5,0,b\n", ":3: " + again.format(0, " as a, here b")),
        ("train.h5,1,b\ntrain.h5,0,b\ntrain.h5,1,b\n", ":4: " + again.format(1, "")),
        (f"train.h5,{2**63},a\n", r":2: row 9223372036854775808 is larger than any HDF5 row"),
        (f"train.h5,{10**40},b\n", rf":2: row 1{40 * '0'} is larger than any HDF5 row"),
        ("train.h5,1_0,a\n", r":2: row '1_0' is not an integer \(digits 0-9 only\)"),
        ("train.h5, 1 ,a\n", r":2: row ' 1 ' is not an integer"),
        ("train.h5,-0,a\n", r":2: row '-0' is not an integer"),
        ("train.h5,+1,a\n", r":2: row '\+1' is not an integer"),
        ("train.h5,\u0661,a\n", r":2: row '\u0661' is not an integer"),  # Arabic-Indic 1
        ("train.h5\n", r":2: row '' is not an integer"),
    ]
    for rows, problem in cases:
        manifest.write_text("file,row,origin_split\n" + rows, encoding="utf-8")
        with pytest.raises(DatasetError, match=problem):
            open_dataset(path, origin_split="a")
    manifest.write_text("file,row,origin_split\ntrain.h5,9223372036854775807,b\nother.h5,0,a\n")
    manifest.write_text(manifest.read_text() + "train.h5,0,a\n")
    assert open_dataset(path, origin_split="a").ids() == ["synthetic_0_0"]


def test_encoded_bad_rows(tmp_path: Path, patches) -> None:
    x = patches[0]
    path = tmp_path / "enc.h5"

    with h5py.File(path, "w") as f:
        enc = f.create_dataset("encoded", (3,), dtype=h5py.vlen_dtype(np.uint8))
        buf = io.BytesIO()
        Image.fromarray(x[0]).save(buf, format="PNG")
        enc[0] = np.frombuffer(buf.getvalue(), np.uint8)
        enc[1] = np.frombuffer(b"garbage bytes", np.uint8)
        buf = io.BytesIO()
        Image.fromarray(x[0][..., 0]).save(buf, format="PNG")
        enc[2] = np.frombuffer(buf.getvalue(), np.uint8)
        f["y"] = np.array([0, 1, 1], np.uint8)
    ds = open_dataset(path)
    assert np.array_equal(ds[0][0], x[0])
    with pytest.raises(DatasetError, match=r"enc\.h5 row 1: cannot decode"):
        ds[1]
    with pytest.raises(DatasetError, match=r"enc\.h5 row 2: image mode L, expected RGB"):
        ds[2]
    with pytest.raises(DatasetError, match=r"row 1: cannot decode"):
        ds.load_all()  # decoding everything up front surfaces it before training
    with pytest.raises(DatasetError, match=r"needs .*manifest\.csv"):
        open_dataset(path, origin_split="pcam_train")
    with pytest.raises(DatasetError, match=r"option\(s\) \['split'\] do not apply"):
        open_dataset(path, split="valid")


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["a", "b", "a", "c"], r"_meta\.csv:4: 'patch_id' 'a' repeats line 2; each patch needs"),
        (["a", "b\x1b[31m", "c", "d"], r"_meta\.csv:3: 'patch_id' holds a control or invisible"),
    ],
    ids=["duplicate", "escape"],
)
def test_pcam_meta_ids_that_name_no_one_patch_are_refused(tmp_path, ids, message) -> None:
    """A PCam pair's ``<stem>_meta.csv`` patch ids were taken as they were, where an encoded
    .h5's are refused when one repeats or holds a control character: the same check now,
    naming the CSV's line."""
    x, y = make_patches(len(ids), seed=0)
    xp = _write_pcam(tmp_path, "valid", x, y)
    meta = xp.with_name(xp.name.split("_x.h5")[0] + "_meta.csv")
    with meta.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patch_id", "centre"])
        writer.writerows([pid, "1"] for pid in ids)
    with pytest.raises(DatasetError, match=message) as err:
        open_dataset(xp)
    assert str(err.value).startswith(f"{meta}:") and "\x1b" not in str(err.value)


def test_a_pcam_meta_of_another_row_count_is_refused_or_warned(tmp_path, caplog) -> None:
    """A ``<stem>_meta.csv`` was read only when its row count matched the ``.h5``'s: one of
    another pair's (5 rows beside 6 patches) lost its patch ids for ``<stem>_<row>`` without
    a word. With a ``patch_id`` column it is refused now; without one (PCam's own
    coordinates, never read for ids) a warning says the pair looks mixed up."""
    import logging

    x, y = make_patches(6, seed=0)
    xp = _write_pcam(tmp_path, "valid", x, y)
    meta = xp.with_name(xp.name.split("_x.h5")[0] + "_meta.csv")
    meta.write_text("patch_id,centre\n" + "".join(f"p{i},1\n" for i in range(5)))
    with pytest.raises(DatasetError) as err:
        open_dataset(xp)
    assert str(err.value).startswith(f"{meta}: 5 rows for the 6 patches of {xp.name}; ")
    meta.write_text("patch_id,centre\n")  # a header alone: no ids for 6 patches
    with pytest.raises(DatasetError, match="0 rows for the 6 patches"):
        open_dataset(xp)
    meta.write_text("patch_id\n" + "".join(f"p{i}\n" for i in range(6)))
    assert open_dataset(xp).ids() == [f"p{i}" for i in range(6)]
    meta.write_text("coord_y,coord_x\n1,2\n")
    with caplog.at_level(logging.WARNING, logger="histomodels.data.pcam"):
        ds = open_dataset(xp)
    assert ds.ids()[0].endswith("_0") and "1 row for the 6 patches" in caplog.text


def test_a_pcam_meta_csv_is_read_up_to_a_cap(tmp_path) -> None:
    """``<stem>_meta.csv`` was read whole (a multi-GB file by mistake: a MemoryError or a
    long wait), where the Kaggle labels CSV is read with ``read_capped``: one line now, the
    same cap (64 MiB, ``pcam.MAX_META_BYTES``). A sparse file, so nothing large is
    written."""
    from histocore.io import size_text

    cap = 64 << 20
    x, y = make_patches(2, seed=0)
    xp = _write_pcam(tmp_path, "valid", x, y)
    meta = xp.with_name(xp.name.split("_x.h5")[0] + "_meta.csv")
    meta.write_text("patch_id\np0\np1\n")
    assert open_dataset(xp).ids() == ["p0", "p1"]
    with meta.open("r+b") as fh:
        fh.truncate(cap + 1)
    with pytest.raises(DatasetError) as err:
        open_dataset(xp)
    assert str(err.value) == f"{meta}: over {size_text(cap)}, not a PCam meta CSV"
    with meta.open("r+b") as fh:
        fh.truncate(cap)  # at the cap: read (and its NULs refused as CSV)
    with pytest.raises(DatasetError, match="unreadable CSV"):
        open_dataset(xp)


# --- Kaggle --------------------------------------------------------------------------------


def _kaggle(root: Path, x: np.ndarray, labels: list[str]) -> Path:
    (root / "train").mkdir(parents=True)
    with (root / "train_labels.csv").open("w") as fh:
        fh.write("id,label\n")
        for i, label in enumerate(labels):
            fh.write(f"p{i:03d},{label}\n")
            Image.fromarray(x[i]).save(root / "train" / f"p{i:03d}.tif")
    return root


def test_kaggle_folder(tmp_path: Path, patches) -> None:
    x, y = patches
    root = _kaggle(tmp_path / "k", x, [str(v) for v in y[:6]])
    ds = open_dataset(root)
    assert len(ds) == 6 and ds.ids()[2] == "p002" and np.array_equal(ds[2][0], x[2])
    assert len(open_dataset(root / "train_labels.csv")) == 6
    images, labels, ids = ds.load_all()  # thread-pool decoding keeps order
    assert np.array_equal(images, x[:6]) and labels.tolist() == y[:6].tolist()
    assert ids == [f"p{i:03d}" for i in range(6)]
    Image.fromarray(x[1][..., 0]).save(root / "train" / "p001.tif")  # grayscale
    with pytest.raises(DatasetError, match=r"p001\.tif: image mode L, expected RGB"):
        ds[1]
    with pytest.raises(DatasetError, match=r"p001\.tif: image mode L"):
        ds.load_all()  # surfaces in the main process, before any DataLoader
    (root / "train" / "p003.tif").write_bytes(b"II*\x00 truncated")
    with pytest.raises(DatasetError, match=r"p003\.tif: cannot decode"):
        ds[3]
    Image.fromarray(x[4][:64, :64]).save(root / "train" / "p004.tif")
    with pytest.raises(DatasetError, match=r"p004\.tif: image is 64x64 px, expected 96x96"):
        ds[4]


def test_kaggle_bad_csv(tmp_path: Path, patches) -> None:
    x, _ = patches
    root = _kaggle(tmp_path / "a", x, ["0", "1", "yes"])
    with pytest.raises(DatasetError, match=r"train_labels\.csv:4: label 'yes' for id 'p002'"):
        open_dataset(root)
    root = _kaggle(tmp_path / "b", x, ["0", "1"])
    (root / "train" / "p001.tif").unlink()
    with pytest.raises(
        DatasetError, match=r"train_labels\.csv:3: id 'p001' has no image \(<id>\.tif\) in "
    ):
        open_dataset(root)
    root = _kaggle(tmp_path / "d", x, ["0", "1"])  # an id as an encoded .h5's is refused
    (root / "train_labels.csv").write_text("id,label\np000,0\np\x1b[2J001,1\n")
    with pytest.raises(DatasetError, match=r"train_labels\.csv:3: id holds a control or invi"):
        open_dataset(root)
    root = _kaggle(tmp_path / "c", x, ["0"])
    (root / "train_labels.csv").write_text("image,target\np000,0\n")
    with pytest.raises(DatasetError, match="expected header 'id,label'"):
        open_dataset(root)
    # a blank first line said "got nothing", as of an empty file
    (root / "train_labels.csv").write_text("\nid,label\np000,0\n")
    with pytest.raises(DatasetError, match=r"expected header 'id,label', got a blank line$"):
        open_dataset(root)


def test_kaggle_csv_values_are_echoed_cut_like_every_other_id(tmp_path: Path, patches) -> None:
    """A ``train_labels.csv`` cell may hold up to csv's 128 KB, and the id, label, row or
    header of a bad line was echoed whole (a 100 KB error line); they are cut to 200
    characters and escaped as the other readers' ids are (``shown_id``)."""
    x, _ = patches
    long = "p" + "9" * 100_000
    bad = {
        "label": f"id,label\np000,0\n{long},{'7' * 100_000}\n",
        "repeat": f"id,label\n{long},0\n{long},1\n",
        "image": f"id,label\np000,0\n{long},1\n",
        "row": f"id,label\np000,0\n{long}\n",
        "header": f"{long},label\np000,0\n",
    }
    for n, (what, text) in enumerate(bad.items()):
        root = _kaggle(tmp_path / str(n), x, ["0"])
        (root / "train_labels.csv").write_text(text)
        with pytest.raises(DatasetError) as err:
            open_dataset(root)
        said = str(err.value)
        assert len(said) < 700 and "p999" in said, (what, len(said))


def test_an_id_cut_in_a_message_says_so_as_a_run_store_key_does() -> None:
    """``shown_id`` cut an echoed id at 200 characters with nothing to say so (a cut id read
    as the whole one), while the run store's row keys were cut with ``…``: both are
    ``histocore.io.text_shown`` now."""
    from histocore.io import text_shown
    from histomodels.data.ids import shown_id

    long = "p" + "9" * 500
    assert shown_id(long) == repr(long)[:200] + "…" == text_shown(repr(long))
    assert shown_id("p\x1b[31m") == "'p\\x1b[31m'"  # escaped, not cut: no marker
    exact = "x" * 198  # its repr is 200 characters: whole
    assert shown_id(exact) == repr(exact)


# --- class folders ---------------------------------------------------------------------------


def test_class_folders(tmp_path: Path, patches) -> None:
    x, _ = patches
    for name, idx in (("normal", (0, 1)), ("tumor", (2,))):
        (tmp_path / "named" / name).mkdir(parents=True)
        for i in idx:
            Image.fromarray(x[i]).save(tmp_path / "named" / name / f"{i}.png")
    ds = open_dataset(tmp_path / "named")
    assert isinstance(ds, FolderDataset)
    assert ds.labels().tolist() == [0, 0, 1] and ds.ids()[2] == "tumor/2.png"
    assert np.array_equal(ds[2][0], x[2])
    (tmp_path / "flat").mkdir()
    Image.fromarray(x[5]).save(tmp_path / "flat" / "a.jpg")
    assert open_dataset(tmp_path / "flat").labels().tolist() == [-1]
    (tmp_path / "named" / "tumr").mkdir()
    Image.fromarray(x[3]).save(tmp_path / "named" / "tumr" / "3.png")
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['tumr'\] not understood"):
        open_dataset(tmp_path / "named")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no dataset recognised"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "h5s").mkdir()
    (tmp_path / "h5s" / "train.h5").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"holds HDF5 files \['train\.h5'\]; pass one"):
        open_dataset(tmp_path / "h5s")
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "absent")


def test_real_camelyon16_class_folders() -> None:
    root = shared_path("data", "camelyon16_tiles_didsr")
    ds = open_dataset(root, patch_size=None)
    assert len(ds) == 89 and ds.labels().sum() == 44
    assert ds[0][0].shape == (256, 256, 3)
    with pytest.raises(DatasetError, match="256x256 px, expected 96x96"):
        open_dataset(root)[0]


# --- decode-once cache ----------------------------------------------------------------------


def test_load_all_decodes_once_into_arrays(tmp_path: Path, patches) -> None:
    x, y = patches
    lazy = open_dataset(_write_pcam(tmp_path, "valid", x, y))
    images, labels, ids = lazy.load_all()
    assert images.dtype == np.uint8 and images.shape == x.shape
    assert np.array_equal(images, x) and np.array_equal(labels, y)
    assert ids == lazy.ids()
    cached = ArrayDataset(images, labels, ids)
    assert cached.load_all()[0] is images  # in memory already: no copy


@pytest.mark.parametrize(("labels", "text"), [([0, 1.0000001], "1.0000001"), ([0, 2], "2")])
def test_a_bad_label_is_named_as_stored(labels, text):
    """':g' named 1.0000001 'label 1 is not 0/1': an accepted value, for a refused one."""
    from histomodels.data.base import binary_labels
    from histomodels.data.errors import DatasetError

    for dtype in (np.float64, np.float32, None):
        y = np.array(labels, dtype=dtype) if dtype else np.array(labels)
        with pytest.raises(DatasetError, match=rf"row 1: label {re.escape(text)} is not 0/1"):
            binary_labels(y, "y.h5")


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["a", "b", "a", "c"], r": 'patch_id' 'a' of row 2 repeats row 0; each patch needs"),
        (
            ["a", "b\x1b[31mred", "c", "d"],
            r": 'patch_id' of row 1 holds a control or invisible character "
            r"\('b\\x1b\[31mred'\); ids must be printable text$",
        ),
        ([b"a", b"b\nerror: forged", b"c", b"d"], r"of row 1 holds a control or invisible "),
        (["a", "b", "c\u200bd", "e"], r"of row 2 holds a control or invisible character"),
    ],
    ids=["duplicate", "escape", "newline", "zero-width"],
)
def test_encoded_patch_ids_that_name_no_one_patch_are_refused(tmp_path, ids, message) -> None:
    """An encoded .h5's ``patch_id`` was taken as it was: an id given twice merged two
    patches in every check by id (as the Kaggle CSV's duplicate ids are refused), and a
    control character reached predictions.csv, the report and the terminal raw. One line
    now, naming the file, the row and the value escaped."""
    path = tmp_path / "enc.h5"
    x, y = make_patches(len(ids), seed=0)
    with h5py.File(path, "w") as f:
        enc = f.create_dataset("encoded", (len(ids),), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(len(ids)):
            buf = io.BytesIO()
            Image.fromarray(x[i]).save(buf, format="PNG")
            enc[i] = np.frombuffer(buf.getvalue(), np.uint8)
        f["y"] = y.astype(np.uint8)
        f["patch_id"] = (
            ids if isinstance(ids[0], bytes) else np.array(ids, dtype=h5py.string_dtype())
        )
    with pytest.raises(DatasetError, match=message) as err:
        EncodedH5Dataset(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert "\x1b" not in str(err.value)


def test_a_patch_of_another_shape_names_its_id_cut(tmp_path: Path) -> None:
    """``load_all``'s shape check quoted the patch id whole (``{pid!r}``); cut as every id."""
    import numpy as np

    from histomodels.data.base import PatchDataset

    class Uneven(PatchDataset):
        source = "uneven"

        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
            side = 96 if index == 0 else 64
            return np.zeros((side, side, 3), np.uint8), 0, "p" * 100_000 + str(index)

    with pytest.raises(DatasetError, match="has shape") as err:
        Uneven().load_all()
    assert len(str(err.value)) < 400
