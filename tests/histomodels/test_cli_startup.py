"""The histomodels CLI answers --help and bad input paths without importing PyTorch.

Importing torch (and timm, Ax) takes seconds and most of a GB; a typo in a path should
fail in well under a second with the same one line the library gives later. Each case runs
in a fresh interpreter, which then reports which heavy modules got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import unboxed

HEAVY = ("torch", "timm", "ax", "torchvision")
CODE = f"""
import json, sys
from typer.testing import CliRunner
from histomodels.cli import app
r = CliRunner().invoke(app, sys.argv[1:])
lines = r.output.strip().splitlines()
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps([r.exit_code, lines[-1] if lines else "", heavy]))
"""
MISSING = "{missing}: no such file or folder"
NO_TRAIN = "{missing}: train data not found"
TRAIN_ARGS = ["--data", "{missing}", "--val", "{missing}", "--out", "{run}"]


def _run(*args: str) -> tuple[int, str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", CODE, *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    code, last, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return code, last, heavy


def test_help_imports_no_heavy_module() -> None:
    code, _, heavy = _run("--help")
    assert code == 0 and heavy == []


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["eval", "--model", "pcam-cnn", "--data", "{missing}"], MISSING),
        (["predict", "model.pt", "{missing}"], MISSING),
        (["train", *TRAIN_ARGS], NO_TRAIN),
        (["finetune", *TRAIN_ARGS], NO_TRAIN),
        (["tune", *TRAIN_ARGS], NO_TRAIN),
        # options checked by their callbacks pass on without PyTorch too
        (["train", *TRAIN_ARGS, "--device", "cuda:1", "--model", "timm/resnet18",
          "--model-config", '{{"input_size": 96}}'], NO_TRAIN),
        (["tune", *TRAIN_ARGS, "--fix", "width=16"], NO_TRAIN),
    ],
)  # fmt: skip
def test_a_missing_input_path_fails_before_pytorch_is_imported(
    tmp_path: Path, command: list[str], message: str
) -> None:
    names = {"missing": str(tmp_path / "nope.h5"), "run": str(tmp_path / "run")}
    code, last, heavy = _run(*(arg.format(**names) for arg in command))
    assert code == 1
    assert last == "error: " + message.format(**names)
    assert heavy == []
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--model", "pcam-cnn", "--data", "{deep}"],
        ["predict", "model.pt", "{deep}"],
        ["train", "--data", "{deep}", "--val", "{deep}", "--out", "{run}"],
    ],
)
def test_an_input_under_a_link_loop_names_the_loop(tmp_path: Path, command: list[str]) -> None:
    """``ln -s loop loop; histomodels eval --data loop/x.h5`` said ``loop/x.h5: no such file
    or folder`` (``train``: ``train data not found``); the loop given itself was named."""
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    names = {"deep": str(loop / "sub" / "x.h5"), "run": str(tmp_path / "run")}
    code, last, heavy = _run(*(arg.format(**names) for arg in command))
    assert (code, last, heavy) == (1, f"error: {loop}: too many levels of symbolic links", [])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["train", *TRAIN_ARGS, "--device", "gpu"],
        ["train", *TRAIN_ARGS, "--model", "resnet9000"],
        ["finetune", *TRAIN_ARGS, "--model-config", "[1]"],
        ["tune", *TRAIN_ARGS, "--fix", "width=17"],
        ["label", "--manifest", "{run}", "--set", "img0=cancer"],
        ["data", "info", "{missing}", "--origin-split", ","],
        ["eval", "{missing}", "--model", "pcam-cnn", "--data", "{missing}"],
    ],
)
def test_a_malformed_option_fails_before_pytorch_is_imported(
    tmp_path: Path, command: list[str]
) -> None:
    """Click's usage error (exit 2), from the library's own check imported alone."""
    names = {"missing": str(tmp_path / "nope.h5"), "run": str(tmp_path / "run")}
    code, _, heavy = _run(*(arg.format(**names) for arg in command))
    assert code == 2 and heavy == []
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "--model", "pcam-cnn", "{image}", "--out", "{folder}"],
        ["export", "pcam-cnn", "--out", "{folder}"],
        ["data", "info", "{image}", "--sheet", "{folder}"],
        ["data", "stain", "{image}", "--out", "{folder}"],
    ],
)
def test_a_file_output_that_is_a_folder_fails_before_pytorch_is_imported(
    tmp_path: Path, command: list[str]
) -> None:
    """Before, the work ran to the end and the rename failed naming a temp file
    (``error: .../.results.x1y2.tmp: is a directory``)."""
    folder = tmp_path / "results"
    folder.mkdir()
    image = tmp_path / "patch.png"
    image.write_bytes(b"not read: the output is checked first")
    names = {"folder": str(folder), "image": str(image)}
    code, last, heavy = _run(*(arg.format(**names) for arg in command))
    assert (code, last, heavy) == (1, f"error: {folder}: is a folder, not a file", [])
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "patch.png",
        "results",
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "--model", "pcam-cnn", "{image}", "--out", "{new}/{long}.csv"],
        ["export", "pcam-cnn", "--out", "{new}/{long}.onnx"],
        ["demo", "--out", "{new}/{long}"],
        ["export", "pcam-cnn", "--out", "{here}/{long}.onnx"],
        ["demo", "--out", "{here}/{long}"],
    ],
    ids=["predict", "export", "demo folder", "export in a folder there", "demo in a folder there"],
)
def test_an_output_name_too_long_fails_at_once_and_makes_no_folder(
    tmp_path: Path, command: list[str]
) -> None:
    """``export --out newdir/<260 characters>.onnx`` made ``newdir/`` before the name was
    refused, and ``predict --out pnew/<260 characters>.csv`` refused it only after scoring
    every image, ``pnew/`` left behind: the up-front output checks now refuse a name
    longer than the file system takes, before PyTorch is imported or a folder made."""
    import os

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    image = tmp_path / "patch.png"
    image.write_bytes(b"not read: the output is checked first")
    names = {"new": str(tmp_path / "new"), "here": str(tmp_path), "long": "a" * (limit + 5),
             "image": str(image)}  # fmt: skip
    args = [arg.format(**names) for arg in command]
    code, last, heavy = _run(*args)
    assert (code, last, heavy) == (
        1,
        f"error: {args[-1]}: file name too long (over {limit} bytes)",
        [],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patch.png"]


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["eval", "--model", "pcam-cnn", "--data", "{image}", "--out", "{file}"], "folder"),
        (["eval", "--model", "pcam-cnn", "--manifest", "{dir}", "--out", "{file}"], "folder"),
        (["train", "--data", "{image}", "--val", "{image}", "--out", "{file}"], "folder"),
        (["finetune", "--data", "{image}", "--val", "{image}", "--out", "{file}"], "folder"),
        (["tune", "--data", "{image}", "--val", "{image}", "--out", "{file}"], "folder"),
        (["report", "{image}", "--out", "{file}"], "folder"),
        (["demo", "--out", "{file}"], "folder"),
        (["data", "download", "pcam", "--dest", "{file}"], "folder"),
        (["predict", "--model", "pcam-cnn", "{image}", "--heatmaps", "{file}"], "folder"),
        (["eval", "--model", "pcam-cnn", "--manifest", "{file}"], "histofetch run folder"),
        (["label", "--manifest", "{file}", "--list"], "histofetch run folder"),
        (["ensemble", "a.pt", "b.pt", "--out", "{file}"],
         "run folder; a checkpoint file to write ends in .pt"),
    ],
)  # fmt: skip
def test_a_folder_output_that_is_a_file_fails_before_pytorch_is_imported(
    tmp_path: Path, command: list[str], what: str
) -> None:
    """The mirror case, exit 1 as there (and as histofetch's ``--run FILE``): before, the
    work ran first and creating the folder failed (``error: results: file exists``; the
    demo after its first step, eval after scoring; predict --heatmaps after scoring every
    image). A run folder to read said 'results/manifest.jsonl: no manifest here'."""
    file = tmp_path / "results"
    file.write_bytes(b"kept")
    image = tmp_path / "patch.png"
    image.write_bytes(b"not read: the output is checked first")
    names = {"file": str(file), "image": str(image), "dir": str(tmp_path)}
    code, last, heavy = _run(*(arg.format(**names) for arg in command))
    assert (code, last, heavy) == (1, f"error: {file}: is a file, not a {what}", [])
    assert file.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patch.png", "results"]


def test_an_image_where_the_checkpoint_goes_is_a_usage_error(tmp_path: Path) -> None:
    """`histomodels predict a.png b.png` (no checkpoint, no --model) read a.png as a
    checkpoint: 'a.png: not a loadable checkpoint (not a torch.save file: ...)'."""
    image = tmp_path / "a.png"
    image.write_bytes(b"never read")
    for command in (["predict", str(image), str(image)], ["export", str(image), "--out", "x"]):
        code, _, heavy = _run(*command)
        assert code == 2 and heavy == []
    # the words, in this process (a fresh interpreter above showed what it imports)
    from typer.testing import CliRunner

    from histomodels.cli import app

    r = CliRunner().invoke(app, ["predict", str(image), str(image)])
    said = unboxed(r.stderr)
    assert r.exit_code == 2
    assert "is an image, not a checkpoint: give the checkpoint first, or --model NAME" in said


def test_a_folder_without_best_pt_as_checkpoint_says_so(tmp_path: Path) -> None:
    """A folder of images (or a histofetch run) given as the checkpoint: 'X: not a regular
    file' before; now what a run folder holds."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"never read")
    code, last, heavy = _run("predict", str(folder), str(folder / "a.png"))
    assert (code, heavy) == (1, [])
    assert (
        last == f"error: {folder}: a folder without best.pt, so not a run folder; give a "
        "checkpoint file, a run folder or --model NAME"
    )


def test_the_training_package_imports_timm_and_sklearn_only_when_used() -> None:
    """``histomodels.training`` (imported by train/finetune/tune once their paths check out)
    imported timm (its optimiser helpers pull in torchvision and torch._dynamo) and sklearn
    at import: about 5 CPU seconds on these cores before a bad training file was refused.
    They are now imported by the schedule and the metrics when first used."""
    heavy = ("timm", "sklearn", "torchvision")
    code = (
        f"import sys, histomodels.training; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().replace("'", '"')) == []
