"""``data info``: counts, balance and a contact sheet, from the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path, unboxed
from PIL import Image
from typer.testing import CliRunner

from histocore.io import one_line
from histomodels.cli import app
from histomodels.data import ArrayDataset, open_dataset
from histomodels.data.info import contact_sheet, describe
from histomodels.synthetic import make_patches, write_h5


def test_describe_and_sheet(tmp_path: Path) -> None:
    x, y = make_patches(30, seed=1, positive_fraction=0.2)
    labels = y.copy()
    labels[:3] = -1
    ds = ArrayDataset(x, labels, source="array:test")
    info = describe(ds)
    assert info["n"] == 30 and info["patch_shape"] == [96, 96, 3]
    assert sum(info["counts"].values()) == 30 and info["counts"]["-1"] == 3
    assert info["positive_fraction"] == (labels == 1).sum() / 27
    out = contact_sheet(ds, tmp_path / "sheets" / "sheet.png", per_class=4)
    with Image.open(out) as im:
        assert im.width > 300 and im.height > 200
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.std() > 10  # not blank: patches were drawn
    assert [p.name for p in out.parent.iterdir()] == ["sheet.png"]  # no temp file left


def test_cli_info_json_and_sheet(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "s.h5", 16, seed=2)
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["data", "info", str(path), "--json", "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["reader"] == "EncodedH5Dataset" and info["counts"] == {"0": 8, "1": 8}
    assert sheet.exists()
    result = CliRunner().invoke(app, ["data", "info", str(tmp_path / "absent.h5")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_cli_info_real_dev_train_with_origin_filter() -> None:
    path = shared_path("data", "pcam_real", "dev", "train.h5")
    result = CliRunner().invoke(
        app, ["data", "info", str(path), "--origin-split", "kaggle_train,pcam_train"]
    )
    assert result.exit_code == 0, result.output
    assert "patches: 7601" in result.output and "tumour (1)       3220" in result.output
    assert len(open_dataset(path)) == 7602  # without the filter: every row


def test_cli_info_patch_size_reads_a_folder_of_larger_tiles(tmp_path: Path) -> None:
    """A folder of 256 px tiles (as camelyon16_tiles_didsr) was refused ("image is 256x256
    px, expected 96x96") although the folder reader takes any size: ``--patch-size 0``
    reads any size, ``--patch-size 256`` that size only."""
    rng = np.random.default_rng(0)
    for label in ("normal", "tumor"):
        (tmp_path / "tiles" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "tiles" / label / f"{label}{i}.png")
    folder = tmp_path / "tiles"
    runner = CliRunner()
    r = runner.invoke(app, ["data", "info", str(folder)])
    assert r.exit_code == 1 and "image is 256x256 px, expected 96x96" in r.output
    sheet = tmp_path / "sheet.png"
    for size in ("0", "256"):
        r = runner.invoke(app, ["data", "info", str(folder), "--patch-size", size, "--json",
                                "--sheet", str(sheet)])  # fmt: skip
        assert r.exit_code == 0, r.output
        info = json.loads(r.output)
        assert info["patch_shape"] == [256, 256, 3] and info["counts"] == {"0": 3, "1": 3}
        assert sheet.is_file()
    r = runner.invoke(app, ["data", "info", str(folder), "--patch-size", "128"])
    assert r.exit_code == 1 and "expected 128x128" in r.output
    r = runner.invoke(app, ["data", "info", str(folder), "--patch-size", "-1"])
    assert r.exit_code == 2


def test_cli_info_option_a_run_folder_does_not_take_is_named_as_the_option(tmp_path) -> None:
    """A histofetch run folder is tiled at its figures' own scale: ``--patch-size`` does not
    apply. The refusal named the Python argument (``option(s) ['patch_size'] do not
    apply``), and an explicit ``--patch-size 96`` (the default's value) passed unseen."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.jsonl").write_text("")  # a run folder, as the reader tells one
    runner = CliRunner(env={"COLUMNS": "500"})  # the run's path on one line
    for size in ("0", "96"):
        r = runner.invoke(app, ["data", "info", str(run), "--patch-size", size])
        assert r.exit_code == 2, r.output
        told = unboxed(r.stderr)
        assert (
            f"Invalid value for '--patch-size': does not apply to {run}, histofetch run data "
            "(it takes none of these options)"
        ) in told, told
        assert "patch_size" not in told
    r = runner.invoke(app, ["data", "info", str(run), "--split", "valid", "--patch-size", "64"])
    assert r.exit_code == 2 and "'--patch-size' / '--split'" in unboxed(r.stderr), r.stderr


def test_cli_info_option_refusal_escapes_the_folder_name(tmp_path) -> None:
    """The refusal names the run folder in click's usage box: a name with an escape
    sequence or a newline printed them raw (the terminal's colours changed, the box split);
    as docs/security.md's error lines, it goes through ``one_line``."""
    runner = CliRunner(env={"COLUMNS": "500"})
    for name in ("esc\x1b[31mRED", "two\nlines"):
        run = tmp_path / name
        run.mkdir()
        (run / "manifest.jsonl").write_text("")
        r = runner.invoke(app, ["data", "info", str(run), "--patch-size", "64"])
        assert r.exit_code == 2, r.output
        assert "\x1b" not in r.stderr and "two\nlines" not in r.stderr
        told = unboxed(r.stderr)
        assert one_line(str(run)) in told and "does not apply to" in told, told


def test_cli_info_option_refusal_names_a_folder_called_tilde_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder in a folder named ``~`` here, given as ``./~/run``: the refusal said
    ``does not apply to ~/run``, $HOME's run to a reader (pathlib drops the ``./``)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~" / "run").mkdir(parents=True)
    (tmp_path / "~" / "run" / "manifest.jsonl").write_text("")
    r = CliRunner(env={"COLUMNS": "500"}).invoke(
        app, ["data", "info", "./~/run", "--patch-size", "64"]
    )
    assert r.exit_code == 2, r.output
    told = unboxed(r.stderr)
    assert "does not apply to ./~/run, histofetch run data" in told, told


def test_sheet_titles_clear_the_row_above_and_keep_the_ids_end(tmp_path: Path) -> None:
    """On real PCam patches the second row's titles touched the first row's images
    (``tight_layout`` with square images), and ids cut to 14 characters all read
    ``pcam_valid_003``. Solid grey patches make the images' rows findable in the PNG: no
    dark (title) pixel may lie on an image, and each row's titles stay clear of the images
    above them."""
    n = 16  # eight a row, as data info's default draws them
    x = np.full((n, 96, 96, 3), 128, dtype=np.uint8)
    ids = [f"pcam_valid_00317{i:02d}" for i in range(n)]
    ds = ArrayDataset(x, np.array([0, 1] * (n // 2)), ids=ids, source="array:grey")
    out = contact_sheet(ds, tmp_path / "sheet.png", per_class=8)
    with Image.open(out) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    grey = np.asarray((np.abs(rgb - 128) <= 3).all(axis=2))
    dark = np.asarray((rgb < 90).all(axis=2))
    cols = np.flatnonzero(grey.sum(axis=0) > rgb.shape[0] // 4)  # the image columns
    rows = np.flatnonzero(grey[:, cols].sum(axis=1) > len(cols) // 2)  # image rows: two bands
    gaps = np.flatnonzero(np.diff(rows) > 1)
    assert len(gaps) == 1, f"expected two rows of images, got bands split at {rows[gaps]}"
    first_end, second_start = int(rows[gaps[0]]), int(rows[gaps[0] + 1])
    on_images = np.flatnonzero(dark[rows][:, cols].any(axis=1))
    assert not len(on_images), f"title pixels on the images' rows {rows[on_images]}"
    titles = np.flatnonzero(dark[first_end + 1 : second_start][:, cols].any(axis=1))
    assert len(titles) and titles[0] >= 2, f"second row's titles start {titles[:1]} px below"

    from histomodels.data.info import sheet_figure

    fig = sheet_figure(ds, per_class=8)
    shown = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert shown == sorted(ids)  # whole: 18 characters
    long = ArrayDataset(x[:2], np.array([0, 1]), ids=["normal/tumor_004_37276_186047.webp"] * 2)
    fig = sheet_figure(long, per_class=1)
    assert {ax.get_title() for ax in fig.axes} == {"…4_37276_186047.webp"}


def _pcam_folder_with_two_splits(folder: Path) -> None:
    import h5py

    x, y = make_patches(4, seed=3)
    for split in ("valid", "test"):
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f["x"] = x
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f["y"] = y.astype(np.uint8).reshape(-1, 1, 1, 1)


def test_a_pcam_folder_of_several_splits_is_told_in_each_command_s_words(tmp_path: Path) -> None:
    """The official download folder holds train, valid and test. Every command said
    "choose one with split=<name>", the library's keyword: `data info` has `--split`, and
    `train`/`eval` no option at all, so the way out is the split's x file."""
    _pcam_folder_with_two_splits(tmp_path)
    result = CliRunner().invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 1
    assert unboxed(result.output).strip() == (
        f"error: {tmp_path}: holds PCam splits ['test', 'valid']; choose one with --split NAME"
    )
    ok = CliRunner().invoke(app, ["data", "info", str(tmp_path), "--split", "test"])
    assert ok.exit_code == 0 and "patches: 4" in ok.output
    result = CliRunner().invoke(
        app, ["eval", "--model", "pcam-cnn", "--data", str(tmp_path), "--out", str(tmp_path / "e")]
    )
    assert result.exit_code == 1 and "split=" not in result.output
    test_x = tmp_path / "camelyonpatch_level_2_split_test_x.h5"
    valid_x = tmp_path / "camelyonpatch_level_2_split_valid_x.h5"
    assert f"give one split's x file: {valid_x}, {test_x}" in unboxed(result.output)
    assert not (tmp_path / "e").exists()
