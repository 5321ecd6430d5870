"""Help texts survive Typer's rich markup: a ``[word ...]`` in a help string is a Rich tag
and vanishes from ``--help`` unless escaped (``\\[auto: ...]``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

#: what Rich reads as a markup tag (rich.markup.RE_TAGS): "[" then a letter, #, / or @
_TAG = re.compile(r"(?<!\\)\[([a-z#/@][^\[]*?)\]")


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``cmd`` (a click command or group, as Typer builds it)."""
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def _apps() -> list[tuple[str, typer.Typer]]:
    from histofetch.cli import app as fetch_app
    from histomodels.cli import app as models_app

    return [("histofetch", fetch_app), ("histomodels", models_app)]


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_no_help_text_holds_an_unescaped_rich_tag(name: str) -> None:
    app = dict(_apps())[name]
    found = []
    for path, cmd in _commands(typer.main.get_command(app)):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        found += [(" ".join(path), m.group(0)) for t in texts for m in _TAG.finditer(t)]
    assert not found, f"escape as \\[...] or the text disappears from --help: {found}"


def test_escaped_defaults_are_shown_in_help() -> None:
    from histomodels.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "[auto: CUDA if available]" in out and "[auto: CNN on CPU, AMP on GPU]" in out


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_command_descriptions_are_wrapped_by_the_terminal_not_the_docstring(name: str) -> None:
    """In the command list of ``--help`` each description is one paragraph the terminal
    wraps: Typer's rich mode kept the docstring's line breaks there, so even at 400 columns
    ``tune`` (and eval, export, predict, ensemble, review) still broke mid-sentence."""
    app = dict(_apps())[name]
    groups = [(p, c) for p, c in _commands(typer.main.get_command(app)) if hasattr(c, "commands")]
    checked = 0
    for path, grp in groups:
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        lines = [" ".join(line.strip("│ ").split()) for line in out.splitlines()]
        for cmd_name, cmd in grp.commands.items():
            first = (cmd.help or "").split("\n\n")[0]
            assert "\n" not in first, f"{name} {cmd_name}: a line break inside {first!r}"
            assert f"{cmd_name} {' '.join(first.split())}" in lines, (cmd_name, out)
            checked += 1
    assert checked >= 9


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_every_option_says_what_it_does(name: str) -> None:
    """``--help`` is the reference users read: an option listed without a word (predict's
    ``--tta``, eval's ``--seed``, report's ``--title`` …) leaves them guessing."""
    app = dict(_apps())[name]
    bare = [
        (" ".join(path), p.opts[0])
        for path, cmd in _commands(typer.main.get_command(app))
        for p in cmd.params
        if p.param_type_name == "option" and not getattr(p, "help", None)
    ]
    assert not bare, f"options without a help text: {bare}"


def test_train_and_finetune_help_show_the_config_defaults() -> None:
    """``train --help`` showed no default for --patience, --lr and --weight-decay (the
    config's 10, 2e-3 and 0.05; finetune's preset: 6, 1e-3, 0.01); each numeric default
    written in a help (``[50]``, ``[10; finetune: 6]``) is the one the command uses."""
    from histomodels.cli import app
    from histomodels.config import FIELDS, FINETUNE_DEFAULTS, TrainConfig

    number = r"(-?[0-9][0-9.e+-]*)"
    default = re.compile(rf"\[{number}(?:; finetune: {number})?\]\.?$")
    base = TrainConfig()
    for command in ("train", "finetune"):
        cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
        shown = {}
        for p in cmd.params:
            m = default.search(getattr(p, "help", None) or "")
            if m and p.name in FIELDS:
                value = m.group(2) if command == "finetune" and m.group(2) else m.group(1)
                shown[p.name] = float(value)
        for name in ("patience", "lr", "weight_decay"):
            assert name in shown, f"{command} --help shows no default for {name}"
        expected = vars(base) | (FINETUNE_DEFAULTS if command == "finetune" else {})
        assert {k: expected[k] for k in shown} == shown


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_no_flag_shows_a_value_in_help(name: str) -> None:
    """A flag takes no value: Typer 0.29's rich help showed ``<bool>`` beside each one
    (``--tta <bool>``, ``-v <bool>``, ``--help <bool>``), as if it took one. Every command
    and group's ``--help``, the app's own included."""
    app = dict(_apps())[name]
    shown = []
    for path, _cmd in _commands(typer.main.get_command(app)):
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        shown += [
            (" ".join(path), line.strip("│ ")) for line in out.splitlines() if "<bool>" in line
        ]
    assert not shown, f"a flag's help shows a value: {shown}"


def test_options_that_take_a_value_still_show_its_type() -> None:
    from histomodels.cli import app

    out = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "400"}).output
    rows = [line.strip("│ ") for line in out.splitlines()]
    lines = {row.split()[0]: row for row in rows if row.startswith("--")}
    assert "<int range>" in lines["--batch-size"] and "<" not in lines["--tta"], out


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_no_option_shows_a_python_type_for_its_value(name: str) -> None:
    """``histomodels label --help`` showed ``--set <list[str]>``: Typer's name for the
    parameter's Python type, not what to type (``IMAGE_ID=LABEL``, as ``tune --fix``
    shows ``NAME=VALUE``). Options only: Typer shows an argument's type whatever its
    metavar (``runs... <list[Path]>``)."""
    app = dict(_apps())[name]
    shown = []
    for path, _cmd in _commands(typer.main.get_command(app)):
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        shown += [
            (" ".join(path), line.strip("│ "))
            for line in out.splitlines()
            if line.strip("│ *").startswith("--")
            and re.search(r"<\w+\[[^\]]*\]>", line)  # list[train|valid|test] too
        ]
    assert not shown, f"an option's value is shown as a Python type: {shown}"


def test_label_set_names_its_value_and_the_labels() -> None:
    from histomodels.cli import app

    out = CliRunner().invoke(app, ["label", "--help"], env={"COLUMNS": "400"}).output
    row = next(line.strip("│ ") for line in out.splitlines() if "--set" in line)
    assert "IMAGE_ID=LABEL" in row.split("Set")[0], row
    assert "metastasis, no_metastasis, not_usable or clear" in row, row
    # where the labels go: the run store (the help said 'stored in the manifest', which
    # reads as manifest.jsonl, only its export)
    said = " ".join(out.replace("│", " ").split())
    assert "(saved in RUN/run.sqlite, exported to RUN/manifest.jsonl)" in said, out
