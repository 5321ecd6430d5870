"""A malformed option value is a usage error: exit 2 with click's message naming the
option, before any file is read or PyTorch is imported; so are options given together that
exclude each other; valid values pass; ``--help`` lists the choices (histomodels.choices)
and ranges."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import typer
from conftest import unboxed
from typer.testing import CliRunner

from histomodels.cli import app

DATA = ["--data", "{missing}", "--val", "{missing}", "--out", "{out}"]
EVAL = ["eval", "--model", "pcam-cnn", "--data", "{missing}"]
PREDICT = ["predict", "model.pt", "{missing}"]
EXPORT = ["export", "{missing}", "--out", "{out}/m.onnx"]
TUNE = ["tune", *DATA]
LABEL = ["label", "--manifest", "{out}"]
DOWNLOAD = ["data", "download", "pcam", "--dest", "{out}"]

#: case → (arguments, the option named, what the user is told)
MALFORMED = {
    "eval --threshold-rule": ([*EVAL, "--threshold-rule", "youdn"], "--threshold-rule", "'youdn'"),
    "eval --precision": ([*EVAL, "--precision", "fp16"], "--precision", "'fp16' is not one of"),
    "eval --store-temperature": ([*EVAL, "--store-temperature", "x"], "--store-temperature", "x"),
    "eval --sensitivity 0": ([*EVAL, "--sensitivity", "0"], "--sensitivity", "0<x<=1"),
    "eval --sensitivity 1.5": ([*EVAL, "--sensitivity", "1.5"], "--sensitivity", "0<x<=1"),
    "eval --scale": (
        ["eval", "--model", "pcam-cnn", "--manifest", "r", "--scale", "0"],
        "--scale",
        "0<x<=16",
    ),
    "eval --min-tissue": (
        [*EVAL, "--min-tissue", "2"],
        "--min-tissue",
        "2 is not in the range 0.0<=x<=1.0.",
    ),
    "eval --model": (["eval", "--model", "nope", "--data", "t.h5"], "--model", "'nope' is not a"),
    "predict --precision": ([*PREDICT, "--precision", "half"], "--precision", "'half'"),
    "eval --data --scale 0": ([*EVAL, "--scale", "0"], "--scale", "0<x<=16"),
    "eval --data --scale nan": ([*EVAL, "--scale", "nan"], "--scale", "nan is not in the range"),
    "eval --data --scale 16.5": ([*EVAL, "--scale", "16.5"], "--scale", "0<x<=16"),
    "eval --data --scale inf": ([*EVAL, "--scale", "inf"], "--scale", "inf is not in the range"),
    "eval --data --scale -0.25": ([*EVAL, "--scale", "-0.25"], "--scale", "0<x<=16"),
    "predict --scale": ([*PREDICT, "--scale", "17"], "--scale", "0<x<=16"),
    "predict --scale nan": ([*PREDICT, "--scale", "nan"], "--scale", "nan is not in the range"),
    # the value as given, not six digits of it ('16 is not in the range 0<x<=16.')
    "predict --scale 16.0000001": (
        [*PREDICT, "--scale", "16.0000001"],
        "--scale",
        "16.0000001 is not in the range 0<x<=16",
    ),
    "export --format": ([*EXPORT, "--format", "tflite"], "--format", "'tflite' is not one of"),
    "export --exporter": ([*EXPORT, "--exporter", "nope"], "--exporter", "'nope' is not one"),
    "train --schedule": (["train", *DATA, "--schedule", "linear"], "--schedule", "'linear'"),
    "train --epochs": (
        ["train", *DATA, "--epochs", "0"],
        "--epochs",
        "0 is not in the range x>=1.",
    ),
    "train --batch-size": (
        ["train", *DATA, "--batch-size", "0"],
        "--batch-size",
        "0 is not in the range x>=1.",
    ),
    "train --lr": (["train", *DATA, "--lr", "0"], "--lr", "x>0"),
    "train --ema": (["train", *DATA, "--ema", "1"], "--ema", "0<x<1"),
    "train --ema 1.0000001": (
        ["train", *DATA, "--ema", "1.0000001"],
        "--ema",
        "1.0000001 is not in the range 0<x<1",
    ),
    "train --label-smoothing": (
        ["train", *DATA, "--label-smoothing", "1"],
        "--label-smoothing",
        "0<=x<1",
    ),
    "train --cutout": (
        ["train", *DATA, "--cutout", "1.5"],
        "--cutout",
        "1.5 is not in the range 0.0<=x<=1.0.",
    ),
    "train --mixup": (
        ["train", *DATA, "--mixup", "-1"],
        "--mixup",
        "-1 is not in the range x>=0.0.",
    ),
    "train --distill-weight": (
        ["train", *DATA, "--distill-weight", "2"],
        "--distill-weight",
        "2 is not in the range 0.0<=x<=1.0.",
    ),
    "train --distill-temperature": (
        ["train", *DATA, "--distill-temperature", "0"],
        "--distill-temperature",
        "x>0",
    ),
    "train --time-budget": (["train", *DATA, "--time-budget", "0"], "--time-budget", "x>0"),
    # infinite values passed the ranges: --lr inf trained to NaN, --aug-strength inf to noise
    "train --lr inf": (["train", *DATA, "--lr", "inf"], "--lr", "inf is not in the range x>0"),
    "train --time-budget inf": (["train", *DATA, "--time-budget", "inf"], "--time-budget", "inf"),
    "train --aug-strength inf": (
        ["train", *DATA, "--aug-strength", "inf"],
        "--aug-strength",
        "inf",
    ),
    "train --weight-decay inf": (
        ["train", *DATA, "--weight-decay", "inf"],
        "--weight-decay",
        "inf",
    ),
    "train --mixup inf": (["train", *DATA, "--mixup", "inf"], "--mixup", "inf is not in the range"),
    "finetune --backbone-lr-mult inf": (
        ["finetune", *DATA, "--backbone-lr-mult", "inf"],
        "--backbone-lr-mult",
        "inf is not in the range x>=0.0",
    ),
    "train --threads": (
        ["train", *DATA, "--threads", "0"],
        "--threads",
        "0 is not in the range 1<=x<=4096.",
    ),
    "train --threads huge": (
        ["train", *DATA, "--threads", "100000"],
        "--threads",
        "100000 is not in the range 1<=x<=4096.",
    ),
    "eval --threads huge": (
        [*EVAL, "--threads", "2147483648"],
        "--threads",
        "2147483648 is not in the range 1<=x<=4096.",
    ),
    "predict --threads huge": (
        [*PREDICT, "--threads", "100000"],
        "--threads",
        "100000 is not in the range 1<=x<=4096.",
    ),
    "finetune --warmup-epochs": (
        ["finetune", *DATA, "--warmup-epochs", "-1"],
        "--warmup-epochs",
        "-1 is not in the range x>=0.",
    ),
    "tune --trials": (["tune", *DATA, "--trials", "0"], "--trials", "0 is not in the range x>=1."),
    "tune --sobol-trials": (
        ["tune", *DATA, "--sobol-trials", "-1"],
        "--sobol-trials",
        "-1 is not in the range x>=0.",
    ),
    "tune --trial-minutes": (["tune", *DATA, "--trial-minutes", "0"], "--trial-minutes", "x>0"),
    "tune --trial-epochs": (
        ["tune", *DATA, "--trial-epochs", "0"],
        "--trial-epochs",
        "0 is not in the range x>=1.",
    ),
    "data download dataset": (
        ["data", "download", "mnist", "--dest", "{out}"],
        "'{pcam}'",
        "'mnist' is not one of 'pcam'",
    ),
    "data download --split": (
        ["data", "download", "pcam", "--dest", "{out}", "--split", "dev"],
        "--split",
        "'dev' is not one of 'train', 'valid', 'test'",
    ),
    "data download --retries": (
        ["data", "download", "pcam", "--dest", "{out}", "--retries", "-1"],
        "--retries",
        "-1 is not in the range x>=0.",
    ),
    "data info --split": (["data", "info", "{missing}", "--split", "dev"], "--split", "'dev'"),
    "data info --per-class": (
        ["data", "info", "{missing}", "--per-class", "0"],
        "--per-class",
        "0 is not in the range x>=1.",
    ),
    "demo --minutes": (["demo", "--out", "{out}", "--minutes", "0"], "--minutes", "x>0"),
    "demo --n-train": (
        ["demo", "--out", "{out}", "--n-train", "0"],
        "--n-train",
        "0 is not in the range x>=1.",
    ),
    # numpy's seed range (a ValueError traceback after the data was read)
    "train --seed": (
        ["train", *DATA, "--seed", "-1"],
        "--seed",
        "-1 is not in the range 0<=x<=4294967295.",
    ),
    "tune --seed": (
        [*TUNE, "--seed", str(2**32)],
        "--seed",
        "4294967296 is not in the range 0<=x<=4294967295.",
    ),
    "eval --seed": ([*EVAL, "--seed", "-1"], "--seed", "-1 is not in the range 0<=x<=4294967295."),
    "demo --seed": (
        ["demo", "--out", "{out}", "--seed", "-5"],
        "--seed",
        "-5 is not in the range 0<=x<=4294967295.",
    ),
    # the options parsed by the library's own parser (histomodels.tune_space.parse_fixed,
    # label.parse_set, config.parse_model_config, choices.check_device/check_model/...)
    "tune --fix unknown name": ([*TUNE, "--fix", "colour=red"], "--fix", "colour: not a dim"),
    "tune --fix without =": ([*TUNE, "--fix", "width"], "--fix", "'width': expected NAME=VALUE"),
    "tune --fix not a choice": ([*TUNE, "--fix", "width=20"], "--fix", "width=20: not one of"),
    "tune --fix out of bounds": ([*TUNE, "--fix", "lr=1"], "--fix", "outside the search bounds"),
    "tune --fix not a number": ([*TUNE, "--fix", "depth=abc"], "--fix", "not an integer"),
    "tune --fix twice": (
        [*TUNE, "--fix", "width=16", "--fix", "width=24"],
        "--fix",
        "width: given twice",
    ),
    "label --set without =": ([*LABEL, "--set", "img0"], "--set", "expected IMAGE_ID=LABEL"),
    "label --set unknown label": (
        [*LABEL, "--set", "img0=cancer"],
        "--set",
        "'cancer' is not a label",
    ),
    "train --model-config not JSON": (
        ["train", *DATA, "--model-config", "{{width: 8}}"],
        "--model-config",
        "not valid JSON",
    ),
    "train --model-config not an object": (
        ["train", *DATA, "--model-config", "[8, 4]"],
        "--model-config",
        "expected a JSON object",
    ),
    "finetune --model-config with --input-size": (  # was json.loads' traceback
        ["finetune", *DATA, "--model-config", "x", "--input-size", "224"],
        "--model-config",
        "not valid JSON",
    ),
    "finetune --input-size": (
        ["finetune", *DATA, "--input-size", "-5"],
        "--input-size",
        "-5 is not in the range 8<=x<=4096.",
    ),
    # 1-7 and over 4096 were the model registry's exit-1 line ('model_config 'input_size' is
    # 3; efficientnet_lite0 takes int in [8, 4096] or null'), about a key never typed
    "finetune --input-size 7": (
        ["finetune", *DATA, "--input-size", "7"],
        "--input-size",
        "7 is not in the range 8<=x<=4096.",
    ),
    "finetune --input-size 4097": (
        ["finetune", *DATA, "--input-size", "4097"],
        "--input-size",
        "4097 is not in the range 8<=x<=4096.",
    ),
    "train --device": (["train", *DATA, "--device", "gpu"], "--device", "'gpu': not a device"),
    "eval --device": ([*EVAL, "--device", "cuda:x"], "--device", "'cuda:x': not a device"),
    "predict --device": ([*PREDICT, "--device", "tpu"], "--device", "'tpu': not a device"),
    "train --model": (["train", *DATA, "--model", "resnet9000"], "--model", "unknown model"),
    "finetune --model": (["finetune", *DATA, "--model", "timm/"], "--model", "'timm/': unknown"),
    "data info --origin-split": (
        ["data", "info", "{missing}", "--origin-split", " , "],
        "--origin-split",
        "no split named",
    ),
    "export --tolerance": ([*EXPORT, "--tolerance", "-1"], "--tolerance", "x>=0"),
    "data download --url-template without {name}": (
        [*DOWNLOAD, "--url-template", "http://127.0.0.1:9/pcam"],
        "--url-template",
        "has no {name} placeholder",
    ),
    "data download --url-template with another field": (  # was str.format's KeyError
        [*DOWNLOAD, "--url-template", "http://127.0.0.1:9/{{split}}/{{name}}"],
        "--url-template",
        "has {split}; only {name} is filled in",
    ),
    "ensemble of one": (["ensemble", "a.pt", "--out", "{out}"], "sources", "at least two"),
}

#: options (and arguments) that exclude each other: case → (arguments, both named, told)
TOGETHER = {
    "eval checkpoint and --model": (
        ["eval", "{missing}", "--model", "pcam-cnn", "--data", "{missing}"],
        "'checkpoint' / '--model'",
        "not both",
    ),
    "eval neither checkpoint nor --model": (
        ["eval", "--data", "{missing}"],
        "'checkpoint' / '--model'",
        "give a checkpoint",
    ),
    "export checkpoint and --model": (
        [*EXPORT, "--model", "pcam-cnn"],
        "'checkpoint' / '--model'",
        "not both",
    ),
    "export neither": (["export", "--out", "{out}/m.onnx"], "'checkpoint' / '--model'", "give"),
    "eval --data and --manifest": (
        [*EVAL, "--manifest", "{out}"],
        "'--data' / '--manifest'",
        "exactly one of",
    ),
    "eval neither --data nor --manifest": (
        ["eval", "--model", "pcam-cnn"],
        "'--data' / '--manifest'",
        "exactly one of",
    ),
    "predict a checkpoint and no images": (["predict", "{missing}"], "'IMAGES...'", "no image"),
    # --overwrite was ignored: the run was resumed
    "train --resume and --overwrite": (
        ["train", *DATA, "--resume", "--overwrite"],
        "'--resume' / '--overwrite'",
        "--resume continues the run, --overwrite trains anew over it; not both",
    ),
    "finetune --resume and --overwrite": (
        ["finetune", *DATA, "--overwrite", "--resume"],
        "'--resume' / '--overwrite'",
        "not both",
    ),
    # options of --manifest figures were ignored with --data patches
    **{
        f"eval --data and {option}": (
            [*EVAL, option, *value],
            f"'{option}' / '--data'",
            f"{option} applies to --manifest figures, not to --data patches",
        )
        for option, value in (
            ("--top-k", ["3"]),
            ("--min-tissue", ["0.5"]),  # its default, given: still not for --data
            ("--include-leaky", []),
            ("--train-data", ["{missing}"]),
        )
    },
    "eval --sensitivity without --val": (
        [*EVAL, "--sensitivity", "0.9"],
        "'--sensitivity' / '--val'",
        "needs --val",
    ),
    "eval --manifest --sensitivity without --val": (  # it was ignored
        ["eval", "--model", "pcam-cnn", "--manifest", "{out}", "--sensitivity", "0.9"],
        "'--sensitivity' / '--val'",
        "needs --val",
    ),
    # operating-point options without --val were ignored (the shipped threshold, the
    # model's T; nothing stored): exit 0
    **{
        f"eval {mode} {' '.join([option, *value])} without --val": (
            [*args, option, *value],
            f"'{option}' / '--val'",
            "needs --val",
        )
        for mode, args in (
            ("--data", EVAL),
            ("--manifest", ["eval", "--model", "pcam-cnn", "--manifest", "{out}"]),
        )
        for option, value in (
            ("--threshold-rule", ["youden"]),
            ("--threshold-rule", ["sensitivity"]),  # its default, given: still ignored
            ("--store-temperature", ["checkpoint"]),
            ("--no-store-temperature", []),
        )
    },
    "eval --sensitivity with --threshold-rule youden": (
        [*EVAL, "--val", "{missing}", "--threshold-rule", "youden", "--sensitivity", "0.9"],
        "'--sensitivity' / '--threshold-rule'",
        "not youden",
    ),
    # the two together silently kept nothing (--no-store-temperature won): exit 0
    **{
        f"eval {mode} --store-temperature {where} and --no-store-temperature": (
            [*args, "--val", "{missing}", "--store-temperature", where, "--no-store-temperature"],
            "'--store-temperature' / '--no-store-temperature'",
            f"--store-temperature {where} keeps T, --no-store-temperature keeps nothing: give "
            "one of them, not both",
        )
        for mode, args in (
            ("--data", EVAL),
            ("--manifest", ["eval", "--model", "pcam-cnn", "--manifest", "{out}"]),
        )
        for where in ("checkpoint", "beside")
    },
    "tune --trial-minutes and --trial-epochs": (
        [*TUNE, "--trial-minutes", "1", "--trial-epochs", "4"],
        "'--trial-minutes' / '--trial-epochs'",
        "in epochs or in minutes, not both",
    ),
}


def _args(args: list[str], tmp_path: Path) -> list[str]:
    """The arguments with {missing} and {out} filled in (a literal brace is doubled)."""
    names = {"missing": str(tmp_path / "nope.h5"), "out": str(tmp_path / "out"), "pcam": "{pcam}"}
    return [arg.format(**names) for arg in args]


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_option_value_is_a_usage_error(tmp_path: Path, case: str) -> None:
    args, option, said = MALFORMED[case]
    result = CliRunner().invoke(app, _args(args, tmp_path))
    assert result.exit_code == 2, result.output
    told = unboxed(result.stderr)
    if option.startswith("--"):
        assert f"Invalid value for '{option}'" in told, result.stderr
    else:  # the argument
        assert "Invalid value for" in told, result.stderr
    assert said in told, result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", TOGETHER)
def test_options_that_exclude_each_other_are_a_usage_error(tmp_path: Path, case: str) -> None:
    """Exit 2 with click's usage message naming both (they were an ``error:`` line, exit 1)."""
    args, both, said = TOGETHER[case]
    result = CliRunner().invoke(app, _args(args, tmp_path))
    assert result.exit_code == 2, result.output
    told = unboxed(result.stderr)
    assert f"Invalid value for {both}:" in told and said in told, result.stderr
    assert told.startswith("Usage: histomodels "), result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*EVAL, "--threshold-rule", "youden", "--precision", "bf16", "--store-temperature",
          "none", "--val", "{missing}"], "nope.h5: no such file or folder"),
        ([*EVAL, "--val", "{missing}", "--sensitivity", "1"], "nope.h5: no such file or folder"),
        ([*EVAL, "--val", "{missing}", "--store-temperature", "none", "--no-store-temperature"],
         "nope.h5: no such file or folder"),  # the same thing said twice: no contradiction
        (["eval", "--model", "pcam-cnn", "--manifest", "{out}", "--min-tissue", "0", "--top-k",
          "2", "--val", "{missing}", "--sensitivity", "0.8"], "nope.h5: no such file or folder"),
        ([*PREDICT, "--precision", "fp32", "--scale", "16"], "nope.h5: no such file or folder"),
        (["train", *DATA, "--schedule", "plateau", "--ema", "0.999", "--label-smoothing", "0",
          "--cutout", "1", "--mixup", "0", "--lr", "1e-9", "--epochs", "1", "--threads", "1"],
         "nope.h5: train data not found"),
        (["tune", *DATA, "--trials", "1", "--sobol-trials", "0", "--trial-epochs", "1"],
         "nope.h5: train data not found"),
        ([*TUNE, "--fix", "width=16.0", "--fix", "centre=pool", "--fix", "ema=0"],
         "nope.h5: train data not found"),
        (["train", *DATA, "--model", "timm/resnet18", "--device", "cpu", "--model-config",
          '{{"input_size": 96}}'], "nope.h5: train data not found"),
        (["finetune", *DATA, "--model", "mobilenet_v2", "--device", "cuda:0", "--model-config",
          "{{}}", "--input-size", "128"], "nope.h5: train data not found"),
        ([*EVAL, "--device", "cpu:0"], "nope.h5: no such file or folder"),
        ([*LABEL, "--set", "img0=m", "--set", "a=b=clear"], "no such folder (give a histofetch"),
        (["data", "info", "{missing}", "--split", "valid", "--per-class", "1"], "nope.h5"),
        (["data", "info", "{missing}", "--origin-split", "kaggle_train,pcam_train"], "nope.h5"),
    ],
)  # fmt: skip
def test_valid_option_values_pass_to_the_command(tmp_path: Path, args, message) -> None:
    """Each command then stops on the missing input (exit 1, one line), not on an option."""
    result = CliRunner().invoke(app, _args(args, tmp_path))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.mark.parametrize(
    ("command", "given", "said"),
    [
        ("train", ["--val", "{missing}"], "no training data: give --data (or 'data' in a --c"),
        ("train", ["--data", "{missing}"], "no validation data: give --val (or 'val' in a --c"),
        ("finetune", [], "no training data: give --data (or 'data' in a --c"),
    ],
)  # fmt: skip
def test_train_without_data_names_the_option(tmp_path: Path, command, given, said) -> None:
    """No --data or --val (nor in a config file): one line naming the option, before
    PyTorch is imported; it said 'no train data given' once PyTorch had loaded."""
    result = CliRunner().invoke(app, _args([command, *given, "--out", "{out}"], tmp_path))
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [f"error: {said}onfig file)"]
    assert not (tmp_path / "out").exists()


def test_a_config_files_bad_seed_is_its_error_line(tmp_path: Path) -> None:
    """The file's content, not an option: one error line, exit 1 (numpy's ValueError
    traceback once the data was read)."""
    config = tmp_path / "c.json"
    config.write_text('{"seed": -1}')
    args = _args(["train", *DATA, "--config", str(config)], tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: seed must be in [0, 4294967295], got -1"
    ]
    assert not (tmp_path / "out").exists()


def test_a_config_files_threads_beyond_any_machine_is_its_error_line(tmp_path: Path) -> None:
    """``threads: 100000`` crashed libgomp (a segfault), 2**31 was torch's overflow traceback."""
    config = tmp_path / "c.json"
    config.write_text('{"threads": 100000}')
    result = CliRunner().invoke(app, _args(["train", *DATA, "--config", str(config)], tmp_path))
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: threads must be in [1, 4096], got 100000"
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": "nope"}, "model: 'nope': unknown model; known: cnn,"),
        ({"device": "tpu"}, "device: 'tpu': not a device histomodels runs on (cpu, cuda,"),
        ({"model": "timm/no_such_net"}, "model: 'timm/no_such_net': unknown timm model"),
        ({"model": "timm/org/net"}, "model: 'timm/org/net': not a timm model name"),
        # timm 1.0.9's parse_model_name asserted here (a traceback); read by the name's shape
        ({"model": "timm/foo:bar"}, "model: 'timm/foo:bar': not a timm model name (unknown"),
        # huggingface_hub's HFValidationError traceback when the model was built
        ({"model": "timm/hf-hub:a/b/c"}, "model: 'timm/hf-hub:a/b/c': not a Hugging Face repo"),
        ({"model": "timm/hf_hub:bad repo@main"}, "model: 'timm/hf_hub:bad repo@main': not a Hugg"),
        ({"model_config": {"bogus": 1}}, "model_config key 'bogus', which cnn does not accept"),
        ({"model_config": {"width": "48"}}, "model_config 'width' is '48'; cnn takes int"),
        ({"model_config": {"dropout": True}}, "model_config 'dropout' is True; cnn takes float"),
        # a value's range, stated by each builder's signature (it was found only when the
        # model was built, in a line without the file: 'error: cnn needs depth, ...')
        ({"model_config": {"width": 0}}, "model_config 'width' is 0; cnn takes int in [1, 4096]"),
        ({"model_config": {"depth": -1}}, "model_config 'depth' is -1; cnn takes int in [1, 13]"),
        (
            {"model_config": {"norm": "bogus"}},
            "model_config 'norm' is 'bogus'; cnn takes one of 'batch', 'group', 'none'",
        ),
        (
            {"model_config": {"dropout": 1.0}},
            "model_config 'dropout' is 1.0; cnn takes float in [0, 1)",
        ),
        (
            {"model": "efficientnet_lite0", "model_config": {"centre": "branch"}},
            "model_config 'centre' is 'branch'; efficientnet_lite0 takes one of 'none', 'pool'",
        ),
        (
            {"model": "mobilenet_v2", "model_config": {"input_size": 100_000}},
            "model_config 'input_size' is 100000; mobilenet_v2 takes int in [8, 4096] or null",
        ),
        (
            {"model": "timm/resnet18", "model_config": {"drop_rate": 1.5}},
            "model_config 'drop_rate' is 1.5; timm/resnet18 takes float in [0, 1)",
        ),
        (
            {"model": "timm/resnet18", "model_config": {"width": 8}},
            "model_config key 'width', which timm/resnet18 does not accept",
        ),
    ],
)
def test_a_config_files_bad_name_is_its_error_line(tmp_path: Path, content, message) -> None:
    """A model or device name from the file: the line names the file and the key (it was
    ``error: unknown model 'nope'`` once the data was read). ``model`` and ``model_config``
    are judged by the model registry as the file is read (with the data there, a wrong
    value was found only when the model was built, in a line without the file; a timm name
    only by timm's builder)."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps(content))
    result = CliRunner().invoke(app, _args(["train", *DATA, "--config", str(config)], tmp_path))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}: {message}"), lines
    assert not (tmp_path / "out").exists()


def test_a_config_files_known_timm_names_pass(tmp_path: Path) -> None:
    """A pretrained tag and an ``hf-hub:`` name (not judged offline) pass the file's check:
    the missing data is the error."""
    config = tmp_path / "c.json"
    for model in ("timm/resnet18.a1_in1k", "timm/hf-hub:org/net"):
        config.write_text(json.dumps({"model": model, "model_config": {"drop_rate": 0.1}}))
        args = _args(["train", *DATA, "--config", str(config)], tmp_path)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().endswith("train data not found"), result.stderr


def test_a_config_files_model_replaced_by_model_is_not_judged(tmp_path: Path) -> None:
    """``--model`` replaces the file's model, and with it the file's ``model_config``: the
    file's pair is not judged (review: ``{"model_config": {"img_size": 96}}`` with
    ``--model timm/resnet18`` was refused as a key cnn does not accept); the missing data is
    the error."""
    config = tmp_path / "c.json"
    contents = [
        ({"model_config": {"img_size": 96}}, "timm/resnet18"),
        ({"model": "timm/no_such_net", "model_config": {"bogus": 1}}, "cnn"),
    ]
    for content, model in contents:
        config.write_text(json.dumps(content))
        args = _args(["train", *DATA, "--config", str(config), "--model", model], tmp_path)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().endswith("train data not found"), result.stderr


@pytest.mark.parametrize("model", [None, "timm/resnet18"])
def test_a_config_files_deeply_nested_model_config_is_one_line(
    tmp_path: Path, model: str | None
) -> None:
    """A ``model_config`` value nested 600 deep (under json's limit) was a RecursionError
    traceback from merging the options in (review of 63c57d3); now one line, with or
    without ``--model`` replacing the file's model."""
    config = tmp_path / "c.json"
    config.write_text('{"model_config": {"width": ' + "[" * 600 + "]" * 600 + "}}")
    extra = ["--model", model] if model else []
    result = CliRunner().invoke(
        app, _args(["train", *DATA, "--config", str(config), *extra], tmp_path)
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}: "), lines
    assert not isinstance(result.exception, RecursionError)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"epochs": True}, "epochs: expected a number, not true or false (got True)"),
        ({"lr": False}, "lr: expected a number, not true or false (got False)"),
        ({"time_budget": True}, "time_budget: expected a number, not true or false (got True)"),
        ({"seed": True}, "seed: expected a number, not true or false (got True)"),
        ({"progress": "yes"}, "progress: expected true or false, not a string (got 'yes')"),
        ({"bf16": "no"}, "bf16: expected true or false, not a string (got 'no')"),
        ({"prefetch": 0}, "prefetch: expected true or false, not a number (got 0)"),
        ({"compile": "false"}, "compile: expected true or false, not a string (got 'false')"),
        # a numeric string was read as its number: "epochs": "5" trained 5 epochs
        ({"epochs": "5"}, 'epochs: expected a number, got "5"'),
        ({"lr": "4e-3"}, 'lr: expected a number, got "4e-3"'),
        ({"time_budget": "20"}, 'time_budget: expected a number, got "20"'),
        # pydantic's own ", got ..." message keeps the value (review: it was dropped)
        (
            {"batch_size": 2.5},
            "batch_size: Input should be a valid integer, got a number with a fractional part "
            "(got 2.5)",
        ),
    ],
)
def test_a_config_file_is_not_coerced(tmp_path: Path, content, message) -> None:
    """A config file is untrusted input: pydantic's lax mode took ``"epochs": true`` as 1
    (a one-epoch run, exit 0) and ``"progress": "yes"`` as true."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps(content))
    result = CliRunner().invoke(app, _args(["train", *DATA, "--config", str(config)], tmp_path))
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [f"error: {config}: {message}"]


def test_a_config_files_numbers_and_switches_still_load(tmp_path: Path) -> None:
    """What the strict check lets through: JSON numbers for float keys (3 for lr),
    true/false and null switches."""
    from histomodels.config import resolve_config

    config = tmp_path / "c.json"
    content = {"lr": 3, "weight_decay": 4e-3, "epochs": 7, "bf16": None, "hed_jitter": False}
    config.write_text(json.dumps(content))
    cfg = resolve_config(config, progress=False)
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.bf16) == (3.0, 0.004, 7, None)
    assert (cfg.hed_jitter, cfg.progress) == (False, False)


def test_a_yaml_config_reads_yaml_1_2_floats_as_numbers(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads ``4e-3`` and ``1E5`` as strings, which numeric keys now
    refuse: the file is read with YAML 1.2's floats; a quoted number stays a string."""
    pytest.importorskip("yaml")
    from histomodels.config import ConfigError, resolve_config

    config = tmp_path / "c.yaml"
    config.write_text(
        "lr: 4e-3\nweight_decay: 1E-2\nepochs: 5\nwarmup_epochs: 1.0e0\n"
        "model: timm/vit_tiny_patch16_224\nmodel_config: {init_values: 1e-5}\n"
    )
    cfg = resolve_config(config)
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.warmup_epochs) == (0.004, 0.01, 5, 1.0)
    assert cfg.model_config["init_values"] == 1e-5
    config.write_text('lr: "4e-3"\n')
    with pytest.raises(ConfigError) as err:
        resolve_config(config)
    assert str(err.value) == f'{config}: lr: expected a number, got "4e-3"'
    # a key that is a number (1e5 is one now) is an unknown key, not a TypeError traceback
    config.write_text("1e5: x\n1: y\n")
    with pytest.raises(ConfigError) as err:
        resolve_config(config)
    assert str(err.value) == f"{config}: unknown config keys 1, 100000.0"


def test_the_choices_are_the_librarys() -> None:
    from histomodels.choices import MODEL_PREFIXES, PCAM_SPLITS, TRAINABLE_MODELS
    from histomodels.cli.data import SplitName
    from histomodels.models import registry

    assert tuple(s.value for s in SplitName) == PCAM_SPLITS
    # the --model check (without PyTorch) knows what the registry builds (an ensemble is
    # made by `histomodels ensemble`, not trained)
    assert set(registry.list_models()) - {"ensemble"} == set(TRAINABLE_MODELS)
    assert set(registry._PREFIXES) == set(MODEL_PREFIXES)


def test_the_input_size_bounds_are_the_models() -> None:
    """finetune's --input-size range (checked before PyTorch is imported) is the one the
    model builders state for ``input_size``."""
    from annotated_types import Interval

    from histomodels.choices import MAX_INPUT_SIZE, MIN_INPUT_SIZE
    from histomodels.models import registry

    for model in ("efficientnet_lite0", "mobilenet_v2", "timm/resnet18"):
        rule = registry._expected_types(model)["input_size"]
        annotated = typing.get_args(rule)[0]  # InputSize | None
        bound = typing.get_args(annotated)[1]
        assert isinstance(bound, Interval) and (bound.ge, bound.le) == (
            MIN_INPUT_SIZE,
            MAX_INPUT_SIZE,
        )


def test_the_name_checks_are_the_librarys() -> None:
    """The CLI's callbacks and the library share these: a library caller gets UsageError."""
    import torch

    from histocore.errors import UsageError
    from histomodels.choices import check_device, check_model, origin_splits
    from histomodels.device import pick_device

    for name in ("cpu", "cpu:0", "cuda", "cuda:1", "mps", "mps:0"):
        assert torch.device(check_device(name)).type == name.partition(":")[0]
    bad_names = ("gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "xla", "meta", "cpu,cuda", "")
    # torch refuses these too, with a RuntimeError traceback if they got through
    for bad in (*bad_names, "cuda:01", "cuda:\u0663", "cuda:99999999999999999999"):
        with pytest.raises(UsageError, match="not a device histomodels runs on"):
            check_device(bad)
        with pytest.raises(UsageError, match="not a device histomodels runs on"):
            pick_device(bad or "?")
    assert check_model("timm/convnext_atto") == "timm/convnext_atto"
    # a space in a timm name passed (review: 'timm/resnet18 ' reached timm), as around cnn not
    for bad in ("resnet9000", "ensemble", "timm/", "timm/ ", "tv/mobilenet_v2", "timm/resnet18 "):
        with pytest.raises(UsageError, match="unknown model"):
            check_model(bad)
    assert origin_splits(" kaggle_train, pcam_train ,") == {"kaggle_train", "pcam_train"}
    assert origin_splits(["pcam_valid"]) == {"pcam_valid"}
    for bad in ("", " , ", []):
        with pytest.raises(UsageError, match="no split named"):
            origin_splits(bad)


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("cnnn", "(did you mean 'cnn'?)"),
        ("CNN", "(did you mean 'cnn'?)"),
        ("mobilenetv2", "(did you mean 'mobilenet_v2'?)"),
        ("efficientnet_lite", "(did you mean 'efficientnet_lite0'?)"),
        ("resnet18", "(a timm model is given as timm/resnet18)"),
        ("convnext_atto.d2_in1k", "(a timm model is given as timm/convnext_atto.d2_in1k)"),
        # known names starting with it win over a name one digit away (review M1)
        ("mobilenet_v3", "(did you mean 'mobilenet_v3_small' or 'mobilenet_v3_large'?)"),
        # another digit is another model, here a timm one, not a typo of efficientnet_b1
        ("efficientnet_b3", "(a timm model is given as timm/efficientnet_b3)"),
        ("efficientnet_b7", "(a timm model is given as timm/efficientnet_b7)"),
        ("tf_efficientnet_lite0", "(a timm model is given as timm/tf_efficientnet_lite0)"),
        ("mobilenetv2_100", "(a timm model is given as timm/mobilenetv2_100)"),
        ("efficinetnet_b0", "(did you mean 'efficientnet_b0'?)"),
        ("Timm/resnet18", "(did you mean 'timm/resnet18'?)"),
        ("timm:resnet18", "(did you mean 'timm/resnet18'?)"),
        ("cnn ", "(did you mean 'cnn', without the spaces?)"),
        ("timm/resnet18 ", "(did you mean 'timm/resnet18', without the spaces?)"),
        (" timm/resnet18", "(did you mean 'timm/resnet18', without the spaces?)"),
        ("timm/ resnet18", "(did you mean 'timm/resnet18', without the spaces?)"),
        # the timm shape is read without the spaces around it; spaces inside a timm name
        # reached timm ('timm/res net18' passed the check)
        ("resnet18 ", "(a timm model is given as timm/resnet18)"),
        ("timm/res net18", "(did you mean 'timm/resnet18', without the spaces?)"),
    ],
)
def test_an_unknown_model_says_what_was_likely_meant(given: str, hint: str) -> None:
    """A new user's ``--model resnet18`` (a timm model given bare) or ``--model cnnn`` got
    the list of known names only; the line now ends with the likely name. The check stays
    before PyTorch: timm is not asked whether it knows the name."""
    result = CliRunner().invoke(
        app, ["train", "--model", given, "--data", "x.h5", "--val", "y.h5", "--out", "o"]
    )
    assert result.exit_code == 2
    from histomodels.choices import model_problem

    problem = model_problem(given)
    assert problem is not None and problem.endswith(hint), problem
    assert hint in unboxed(result.output), result.output


@pytest.mark.parametrize("given", ["pcam-cnn", "timm/", "", "timm/ ", "nope", "zzzqqq", "gpu"])
def test_an_unknown_model_unlike_any_name_gets_no_hint(given: str) -> None:
    """A hint only where something plausible is near: a bare word with no digit or
    underscore (``nope``) was told 'a timm model is given as timm/nope'."""
    from histomodels.choices import model_problem

    problem = model_problem(given)
    assert problem is not None and problem.endswith("timm/<name>"), problem


def test_help_lists_the_choices() -> None:
    shown = {
        "eval": ["<sensitivity|youden>", "<auto|fp32|bf16>", "<beside|checkpoint|none>"],
        "export": ["<onnx|torchscript>", "<auto|dynamo|legacy>"],
        "train": ["<cosine|plateau|constant>", "[x>=1]"],
        "tune": ["[x>=1]", "[x>=0]"],
    }
    for command, choices in shown.items():
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        for text in choices:
            assert text in result.output, (command, text)


@dataclass(frozen=True, kw_only=True)
class _Shared:
    size: Annotated[int | None, typer.Option(min=1, help="A size.")] = None
    quiet: Annotated[bool, typer.Option("--quiet", help="Say less.")] = False


@dataclass(frozen=True, kw_only=True)
class _Command:
    out: Annotated[Path, typer.Option(help="Where.")]
    shared: _Shared
    name: Annotated[str, typer.Option(help="A name.")] = "x"


@dataclass(frozen=True, kw_only=True)
class _Twice:
    shared: _Shared
    size: Annotated[int, typer.Option()] = 1


def test_an_option_dataclass_is_the_commands_options_and_its_argument() -> None:
    """with_options: the dataclass's fields (a nested group's in its place) are the options,
    in order, with their defaults (none: required); the body gets the filled dataclass."""
    from histomodels.cli._common import option_parameters, with_options

    got: list[_Command] = []
    one = typer.Typer()

    @one.command()
    @with_options(_Command)
    def cmd(ctx: typer.Context, opts: _Command) -> None:
        """The command's help."""
        got.append(opts)

    runner = CliRunner()
    result = runner.invoke(one, ["--out", "o", "--size", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert got == [_Command(out=Path("o"), shared=_Shared(size=3, quiet=True), name="x")]
    assert runner.invoke(one, ["--out", "o", "--size", "0"]).exit_code == 2  # min=1
    missing = runner.invoke(one, ["--size", "3"])
    assert missing.exit_code == 2 and "Missing option '--out'" in unboxed(missing.output)
    help_ = runner.invoke(one, ["--help"], env={"COLUMNS": "200"}).output
    assert "The command's help." in help_
    assert [help_.index(o) for o in ("--out", "--size", "--quiet", "--name")] == sorted(
        help_.index(o) for o in ("--out", "--size", "--quiet", "--name")
    )
    with pytest.raises(TypeError, match="given twice"):
        option_parameters(_Twice)


def test_a_config_file_over_its_cap_or_a_device_is_one_line_unread(tmp_path: Path) -> None:
    """``--config`` read the file whole, however large: a 5 MB JSON file was read and
    parsed (a 10 GB one given by mistake, all of it), and ``/dev/zero`` through a link was
    'no such config file'. Over 4 MB (configs are a few KB) it is one line, read no
    further; a device is said to be one; a real config still passes."""
    from histomodels.config import MAX_CONFIG_FILE_BYTES, read_config_file

    big = tmp_path / "big.json"
    big.write_text(json.dumps({"seed": 1, "pad": "x" * (5 << 20)}))
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    said = {
        big: f"error: {big}: over 4 MB, not a config file (a config is a few KB)",
        zero: (
            f"error: {zero}: not a regular file (a pipe, socket or device), not a config file "
            "(a config is a few KB)"
        ),
    }
    for config, line in said.items():
        args = _args(["train", *DATA, "--config", str(config)], tmp_path)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().splitlines() == [line]
        assert not (tmp_path / "out").exists()
    assert MAX_CONFIG_FILE_BYTES == 4 << 20
    fine = tmp_path / "fine.json"
    fine.write_text("\ufeff" + json.dumps({"seed": 3, "lr": 0.01}, indent=2))
    assert read_config_file(fine) == {"seed": 3, "lr": 0.01}


def test_a_checkpoint_or_config_under_a_link_loop_names_the_loop(tmp_path: Path) -> None:
    """``ln -s loop loop``: ``eval loop/x.pt`` said ``no such checkpoint file`` and
    ``train --config loop/c.json`` ``no such config file``; the loop is named, as for
    ``--data loop/x.h5``."""
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    for args in (["eval", str(loop / "x.pt"), "--data", str(tmp_path)],
                 _args(["train", *DATA, "--config", str(loop / "c.json")], tmp_path)):  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert result.stderr == f"error: {loop}: too many levels of symbolic links\n"
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("pcam-cnn ", "(did you mean 'pcam-cnn', without the spaces?)"),
        ("pcam-cn", "(did you mean 'pcam-cnn'?)"),
        ("PCAM-CNN", "(did you mean 'pcam-cnn'?)"),
        ("zzz", ""),
    ],
)
def test_a_shipped_model_name_gets_the_same_hints(given: str, hint: str) -> None:
    """eval/predict/export ``--model`` ('pcam-cnn ') said only 'is not a shipped model',
    where train's --model said what was likely meant; the same hints now, and none for a
    name near no shipped model."""
    result = CliRunner().invoke(app, ["eval", "--model", given, "--data", "x.h5", "--out", "o"])
    assert result.exit_code == 2
    text = unboxed(result.output)
    said = f" {hint}" if hint else ""
    assert f"is not a shipped model (shipped: pcam-cnn){said}." in text, text
