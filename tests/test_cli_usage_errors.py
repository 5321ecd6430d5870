"""A bad option value reads one way in both CLIs, exit 2 under the usage line: Typer checks
choices and ``min``/``max`` with pydantic and printed its words (``Value error, 'linear' is
not one of …``, ``Input should be greater than or equal to 1``) beside our own checks'
click words (``0 is not in the range x>0.``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import unboxed
from typer.testing import CliRunner

#: pydantic's words, which no usage error may show
PYDANTIC = ("Value error", "Input should", "unable to parse")


def _apps() -> dict[str, typer.Typer]:
    from histofetch.cli import app as fetch_app
    from histomodels.cli import app as models_app

    return {"histofetch": fetch_app, "histomodels": models_app}


def _options(name: str) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(command path, option) for every option of every command of app ``name``."""

    def walk(cmd: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        for param in cmd.params:
            if param.param_type_name == "option":
                yield path, param
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, (*path, sub_name))

    yield from walk(typer.main.get_command(_apps()[name]), ())


def _refused(name: str, args: list[str]) -> str:
    result = CliRunner().invoke(_apps()[name], args)
    assert result.exit_code == 2, (args, result.output)
    told = unboxed(result.stderr)
    assert told.startswith(f"Usage: {name} "), told
    assert not any(words in told for words in PYDANTIC), told
    return told


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_every_choice_option_says_its_choices_in_clicks_words(name: str) -> None:
    checked = 0
    for path, option in _options(name):
        choices = getattr(getattr(option, "type_descriptor", None), "choices", None)
        if not choices:
            continue
        told = _refused(name, [*path, option.opts[0], "nope"])
        shown = ", ".join(repr(str(getattr(c, "value", c))) for c in choices)  # an Enum's value
        hint = " / ".join(f"'{o}'" for o in option.opts)
        assert f"Invalid value for {hint}: 'nope' is not one of {shown}." in told, told
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_every_bounded_option_says_its_range_as_help_shows_it(name: str) -> None:
    checked = 0
    for path, option in _options(name):
        low, high = getattr(option, "min", None), getattr(option, "max", None)
        if (low is None and high is None) or option.is_flag or option.count:
            continue
        given = str(low - 1) if low is not None else str(high + 1) if high is not None else ""
        told = _refused(name, [*path, option.opts[0], given])
        shown = (
            f"x>={low}" if high is None else f"x<={high}" if low is None else f"{low}<=x<={high}"
        )
        hint = " / ".join(f"'{o}'" for o in option.opts)
        assert f"Invalid value for {hint}: {given} is not in the range {shown}." in told, told
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    ("name", "args", "said"),
    [
        ("histomodels", ["train", "--schedule", "linear"],
         "Invalid value for '--schedule': 'linear' is not one of 'cosine', 'plateau', 'constant'."),
        ("histomodels", ["eval", "--precision", "fp16"],
         "Invalid value for '--precision': 'fp16' is not one of 'auto', 'fp32', 'bf16'."),
        ("histomodels", ["export", "--format", "tflite", "x.pt"],
         "Invalid value for '--format': 'tflite' is not one of 'onnx', 'torchscript'."),
        ("histomodels", ["data", "download", "--split", "dev", "pcam"],
         "Invalid value for '--split': 'dev' is not one of 'train', 'valid', 'test'."),
        ("histomodels", ["data", "download", "mnist"],
         "Invalid value for 'dataset': 'mnist' is not one of 'pcam'."),
        # Typer's min and our own range check: one phrasing
        ("histomodels", ["train", "--epochs", "0"],
         "Invalid value for '--epochs': 0 is not in the range x>=1."),
        ("histomodels", ["train", "--lr", "0"],
         "Invalid value for '--lr': 0 is not in the range x>0."),
        ("histomodels", ["predict", "--scale", "17", "m.pt", "a.png"],
         "Invalid value for '--scale': 17 is not in the range 0<x<=16."),
        ("histomodels", ["train", "--epochs", "abc"],
         "Invalid value for '--epochs': 'abc' is not an integer."),
        ("histomodels", ["train", "--lr", "fast"],
         "Invalid value for '--lr': 'fast' is not a number."),
        ("histofetch", ["filter", "--purple", "1.5"],
         "Invalid value for '--purple': 1.5 is not in the range 0.0<=x<=1.0."),
        ("histofetch", ["download", "--jobs", "0"],
         "Invalid value for '--jobs' / '-j': 0 is not in the range 1<=x<=64."),
    ],
)  # fmt: skip
def test_usage_errors_read_one_way(tmp_path: Path, name: str, args: list[str], said: str) -> None:
    told = _refused(name, args)
    assert said in told, told
    assert not (tmp_path / "out").exists()
