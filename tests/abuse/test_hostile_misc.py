"""Smaller hostile-input cases: report, predict sizes, package figure names, error lines."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from make_corpus import checkpoint_dict
from PIL import Image

from histocore.io import one_line
from histocore.manifest import Manifest, Record


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ({"epoch": 1}, "expected a JSON list of per-epoch objects"),
        ([1, 2], "expected a JSON list of per-epoch objects"),
        ([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": "x"}], "entry 1: 'loss' is 'x'"),
        ([{"epoch": "one", "loss": 0.5}], "entry 0: 'epoch' is 'one'"),
        ([{"epoch": 1, "train_loss": "x"}], "entry 0: 'train_loss' is 'x'"),
    ],
)
def test_report_on_history_of_the_wrong_type(tmp_path: Path, history, message: str) -> None:
    from histomodels.report_inputs import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text(json.dumps(history))
    with pytest.raises(ValueError) as err:
        load_run(run, tmp_path / "work")
    assert str(err.value).startswith(f"{run / 'history.json'}: ") and message in str(err.value)


def _checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "best.pt"
    torch.save(checkpoint_dict(), path)
    return path


def _png(path: Path, side: int) -> Path:
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(path)
    return path


def test_predict_scale_16_is_checked_before_resizing(tmp_path: Path) -> None:
    from histomodels.predict import PredictInputError, predict_paths

    img = _png(tmp_path / "big.png", 1000)
    with pytest.raises(PredictInputError, match=r"big\.png: 1000x1000 at scale 16 is 16000x"):
        predict_paths(_checkpoint(tmp_path), [img], tmp_path / "out.csv", scale=16.0)
    assert not (tmp_path / "out.csv").exists()


def test_predict_tile_stride_1_is_checked_against_the_memory_budget(
    tmp_path: Path, monkeypatch
) -> None:
    from histomodels.data.base import DatasetError

    monkeypatch.setenv("HISTOMODELS_MEMORY_BUDGET", str(8 << 30))
    from histomodels.predict import predict_paths

    img = _png(tmp_path / "tile.png", 1000)
    with pytest.raises(DatasetError, match=r"tile\.png: 819025 tiles at stride 1 need .* budget"):
        predict_paths(_checkpoint(tmp_path), [img], tmp_path / "out.csv", stride=1)
    assert not (tmp_path / "out.csv").exists()


def _png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_figures_with_the_same_file_stem_are_both_kept(tmp_path: Path) -> None:
    from histofetch.download import Downloader
    from histofetch.jats import Figure
    from histofetch.sources import ArticleFiles, FigureFile

    manifest = Manifest.load(tmp_path, create=True)
    rec = manifest.add_record(Record(id="PMC1", pmcid="PMC1", stage="searched"))
    files = ArticleFiles(
        route="pmc-cloud",
        figures=[
            FigureFile(
                Figure("F1", "Figure 1", "H&E."), "a/fig1.png", "a/fig1.png", _png_bytes(10)
            ),
            FigureFile(
                Figure("F2", "Figure 2", "H&E."), "b/fig1.png", "b/fig1.png", _png_bytes(200)
            ),
        ],
    )
    Downloader(manifest, client=None)._keep(rec, files)  # type: ignore[arg-type]
    rows = manifest.images_of("PMC1")
    assert sorted(i.extra["file"] for i in rows) == ["a/fig1.png", "b/fig1.png"]
    pixels = {int(np.asarray(Image.open(manifest.resolve(i.path)))[0, 0, 0]) for i in rows}
    assert pixels == {10, 200}


def test_zip_member_with_an_empty_name_is_refused() -> None:
    import zipfile

    from histofetch.archive import ArchiveError
    from histofetch.sources.europepmc import read_zip

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(" ", b"abc")  # blank: zipfile itself cannot write an empty name
    with pytest.raises(ArchiveError, match="empty name"):
        read_zip(buf.getvalue())


def test_one_line_escapes_control_characters() -> None:
    assert one_line("a.pdf\nerror: forged") == "a.pdf\\nerror: forged"
    assert one_line("x\x1b[31mred\r") == "x\\x1b[31mred\\r"
    assert one_line("plain ünïcode") == "plain ünïcode"


def _make_immutable(*paths: Path) -> bool:
    """Read-only even for root (``chattr +i``); False where the file system cannot."""
    import subprocess

    return subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode == 0


def test_eval_val_works_on_a_read_only_checkpoint(tmp_path: Path) -> None:
    import subprocess

    from make_corpus import pcam_h5

    from histomodels.evaluate import evaluate_checkpoint

    folder = tmp_path / "ro"
    folder.mkdir()
    ckpt = _checkpoint(folder)
    before = ckpt.read_bytes()
    data = pcam_h5(tmp_path / "d.h5", n=16)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        ckpt.chmod(0o444)
    elif not _make_immutable(ckpt, folder):
        pytest.skip("running as root where chattr +i is not supported: nothing is read-only")
    try:
        result = evaluate_checkpoint(
            ckpt, data, tmp_path / "out", val=data, n_bootstrap=10, gallery=False
        )
    finally:
        subprocess.run(["chattr", "-i", str(ckpt), str(folder)], capture_output=True)
        folder.chmod(0o755)
    assert "read-only" in result["temperature_stored"]
    assert ckpt.read_bytes() == before
    assert (tmp_path / "out" / "metrics.json").is_file()
