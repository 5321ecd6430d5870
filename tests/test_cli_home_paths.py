"""``~`` in a path option is expanded once, where the option is parsed, in both CLIs: the
shell leaves ``--out=~/x`` and a quoted ``'~/x'`` alone, and the up-front checks expanded
it while the writers did not (checked against $HOME, written to ``./~/x``)."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from histocore.cli import home_path, home_path_or_stdout


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def _apps() -> dict[str, typer.Typer]:
    from histofetch.cli import app as fetch_app
    from histomodels.cli import app as models_app

    return {"histofetch": fetch_app, "histomodels": models_app}


def _is_path(annotation: Any) -> bool:
    if annotation is Path:
        return True
    return any(_is_path(a) for a in typing.get_args(annotation))


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_every_path_option_is_parsed_by_home_path(name: str) -> None:
    """Any path option or argument added later gets the same parser (or home_path_or_stdout,
    which is home_path but for `-`, or histomodels' checkpoint_path, home_path but for a
    shipped model's name), or this fails."""
    from histomodels.cli._common import checkpoint_path

    parsers = (home_path, home_path_or_stdout, checkpoint_path)
    missing, seen = [], 0
    for path, cmd in _commands(typer.main.get_command(_apps()[name])):
        for p in cmd.params:
            desc = getattr(p, "type_descriptor", None)
            if desc is None or not _is_path(desc.annotation):
                continue
            seen += 1
            if desc.parameter_info.parser not in parsers:
                missing.append(f"{' '.join(path)} {p.name}")
    assert seen and not missing, missing


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(HOME, the working folder): both empty folders under tmp_path."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return home, work


def test_histomodels_report_out_tilde_is_written_under_home(home: tuple[Path, Path]) -> None:
    from histomodels.cli import app

    home_dir, work = home
    ev = home_dir / "ev"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({"roc_auc": 0.9, "n": 10}))
    for args in (["~/ev", "--out=~/rep"], ["~/ev", "--out", "~/rep2"]):
        r = CliRunner().invoke(app, ["report", *args])
        assert r.exit_code == 0, r.output
    assert (home_dir / "rep" / "report.html").is_file()
    assert (home_dir / "rep2" / "report.md").is_file()
    assert list(work.iterdir()) == []  # no ./~ folder


def test_histofetch_export_out_tilde_is_written_under_home(home: tuple[Path, Path]) -> None:
    from histofetch.cli import app

    home_dir, work = home
    run = home_dir / "run"
    run.mkdir()
    header = {"kind": "header", "schema": "histofetch.manifest", "version": 1, "query": None}
    record = {"kind": "record", "id": "r1", "stage": "searched"}
    (run / "manifest.jsonl").write_text(f"{json.dumps(header)}\n{json.dumps(record)}\n")
    args = ["export", "--run=~/run", "--format", "csv", "--out=~/x.csv"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (home_dir / "x.csv").is_file() and "r1" in (home_dir / "x.csv").read_text()
    assert list(work.iterdir()) == []


def _run_with_manifest(folder: Path) -> None:
    folder.mkdir()
    header = {"kind": "header", "schema": "histofetch.manifest", "version": 1, "query": None}
    record = {"kind": "record", "id": "r1", "stage": "searched"}
    (folder / "manifest.jsonl").write_text(f"{json.dumps(header)}\n{json.dumps(record)}\n")


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ("./~/x.csv", "work/~/x.csv"),  # pathlib drops './': it was $HOME/x.csv, overwritten
        ("./~ev", "work/~ev"),
        ("~nosuchuser_hm4", "work/~nosuchuser_hm4"),  # no such user: a name, as in bash
        ("~nosuchuser_hm4/x.csv", "work/~nosuchuser_hm4/x.csv"),
        ("~+/x.csv", "work/~+/x.csv"),  # bash's $PWD only when the shell expands it
        ("~/x.csv", "home/x.csv"),
    ],
)
def test_only_a_leading_tilde_is_expanded(
    home: tuple[Path, Path], given: str, written: str
) -> None:
    """``--out ./~/x.csv`` overwrote ``$HOME/x.csv``; checks and writer take one path."""
    from histofetch.cli import app

    home_dir, work = home
    (home_dir / "x.csv").write_text("mine\n")
    _run_with_manifest(work / "run")
    r = CliRunner().invoke(app, ["export", "--run", "run", "--format", "csv", "--out", given])
    assert r.exit_code == 0, r.output
    out = home_dir.parent / written
    assert out.is_file() and "r1" in out.read_text()
    if written != "home/x.csv":
        assert (home_dir / "x.csv").read_text() == "mine\n"
        assert home_path(given) == Path(given)
    else:
        assert home_path(given) == home_dir / "x.csv"


def test_a_parsed_path_is_not_expanded_again(home: tuple[Path, Path]) -> None:
    """The checks get the parsed ``Path`` (``./~/x`` is ``Path('~/x')``): not re-expanded."""
    from histocore.cli import require_folder

    home_dir, _work = home
    (home_dir / "rep").write_text("a file in HOME")  # the check would refuse it if it looked
    require_folder(home_path("./~/rep"))  # ./~/rep does not exist: fine
    assert home_path("./~/rep") == Path("~/rep")


def test_a_tilde_named_dataset_is_read_as_named(home: tuple[Path, Path]) -> None:
    """``data inspect ./~ev`` (a folder literally named ``~ev``) reads that folder."""
    from histomodels.data.readers import open_dataset

    home_dir, _work = home
    with pytest.raises(Exception, match=r"^\./~/nope: no such file or folder"):
        open_dataset(home_path("./~/nope"))
    (home_dir / "nope").mkdir()  # only $HOME/nope exists: still not found
    with pytest.raises(Exception, match=r"^\./~/nope: no such file or folder"):
        open_dataset(home_path("./~/nope"))


def test_a_missing_tilde_named_path_is_named_with_its_dot(home: tuple[Path, Path]) -> None:
    """``data info ./~/nope`` said ``error: ~/nope: no such file or folder``, which reads as
    ``$HOME/nope``: the ``./`` given is kept in the message."""
    from histomodels.cli import app

    r = CliRunner().invoke(app, ["data", "info", "./~/nope"])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1] == "error: ./~/nope: no such file or folder"
    r = CliRunner().invoke(app, ["data", "info", "~/nope"])  # $HOME's: named in full
    assert r.exit_code == 1 and "error: ./~" not in r.output and "/nope: no such" in r.output


def test_an_error_about_home_text_names_home_not_a_tilde_folder(home: tuple[Path, Path]) -> None:
    """``eval --data '~/<300 a>/x.h5'`` said ``error: ./~/aaa…: file name too long``: every
    error line starting with ``~`` was rewritten as a folder named ``~``, but ``--data`` is
    text the reader expands, so it was ``$HOME``'s (review M2). It is named as expanded."""
    from histomodels.cli import app

    home_dir, _work = home
    given = "~/" + "a" * 300 + "/x.h5"
    r = CliRunner().invoke(app, ["eval", "--model", "pcam-cnn", "--data", given])
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {home_dir}/aaa") and "file name too long" in line, line


def test_train_data_text_is_expanded_as_the_reader_does(home: tuple[Path, Path]) -> None:
    """``train --data '~/d'`` was checked as ``./~/d`` ('train data not found') while the
    reader expanded it; both take a leading ``~`` now, and ``./~/d`` as a name."""
    from histomodels.cli._common import require_paths

    home_dir, _work = home
    (home_dir / "d").mkdir()
    require_paths("~/d", role="train")
    with pytest.raises(SystemExit):
        require_paths("./~/d", role="train")


def test_errors_naming_a_parsed_tilde_folder_say_it_is_here(home: tuple[Path, Path]) -> None:
    """A folder named ``~`` given as ``./~/run`` is ``Path('~/run')`` once parsed, and the
    messages written with the parsed Path (the manifest reader, ``--run`` given a file,
    export's own-file check) said ``error: ~/run/manifest.jsonl: …``, ``$HOME``'s to a
    reader, once fail() no longer rewrote a leading ``~`` (review 37 M1); it does again
    where this folder holds a ``~``, and ``--data`` text stays ``$HOME``'s (test above)."""
    from histofetch.cli import app

    home_dir, work = home
    (work / "~" / "run").mkdir(parents=True)
    (work / "~" / "run" / "manifest.jsonl").write_text("")
    (work / "~" / "file").write_text("x")
    for args, said in (
        (["status", "--run", "./~/run"], "error: ./~/run/manifest.jsonl: "),
        (["status", "--run", "./~/file"], "error: ./~/file: "),
        (["export", "--run", "./~/run", "--out", "./~/run/manifest.jsonl"], "error: ./~/run/"),
    ):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        line = r.output.strip().splitlines()[-1]
        assert line.startswith(said), (args, line)
    assert not list(home_dir.iterdir())  # nothing went to $HOME


def test_success_lines_name_a_tilde_folder_as_given(home: tuple[Path, Path]) -> None:
    """The error lines name a folder called ``~`` (given as ``./~/x``) as ``./~/x``
    (histocore.io.path_shown), but the success lines printed the parsed Path, ``wrote
    ~/s.json``, ``$HOME``'s to a reader: ``data stain``, ``data info --sheet`` and eval's
    lines now name it as the error lines do; so does ``label``'s first line (it said ``0
    figure(s) to label in ~/run``)."""
    import PIL.Image

    from histocore.manifest import Manifest, Record
    from histomodels.cli import app
    from histomodels.synthetic import make_figure, write_h5

    home_dir, work = home
    here = work / "~"
    here.mkdir()
    PIL.Image.fromarray(make_figure(2, 2, seed=4)).save(here / "ref.png")
    write_h5(here / "d.h5", 16, seed=0)
    with Manifest(run_dir=here / "run", query="q") as m:
        m.add_record(Record(id="pmid:1", title="A paper", stage="filtered"))
        m.save()
    runs = (
        (["data", "stain", "./~/ref.png", "--out", "./~/s.json"], "wrote ./~/s.json: "),
        (["data", "info", "./~/d.h5", "--sheet", "./~/s.png"], "  contact sheet: ./~/s.png"),
        (["eval", "--model", "pcam-cnn", "--data", "./~/d.h5", "--out", "./~/ev", "--bootstrap",
          "0", "--threads", "1"], "wrote ./~/ev/metrics.json"),
        (["label", "--manifest", "./~/run"], "0 figure(s) to label in ./~/run"),
    )  # fmt: skip
    for args, said in runs:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
        assert any(line.startswith(said) for line in r.stdout.splitlines()), (args, r.stdout)
        assert "~/" not in r.stdout.replace("./~/", ""), r.stdout
    # nothing went to $HOME (the libraries' caches, .cache and .config, aside)
    assert not [p for p in home_dir.iterdir() if not p.name.startswith(".")]


def test_success_lines_escape_a_folder_name_holding_control_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error lines escape a newline or an escape in a path (``one_line``), but the
    success lines printed it raw: ``wrote p<ESC>[31m`` recoloured the terminal and the line
    broke in two (review 46 M3). ``data stain``, ``data info --sheet``, eval's ``… on
    DATA`` and ``wrote`` lines, ``label``'s first line and histofetch's ``run folder:``
    now write it as ``p\\x1b[31m\\nc``, one printable line."""
    import PIL.Image

    import histofetch.cli._common
    from histocore.manifest import Manifest, Record
    from histomodels.cli import app
    from histomodels.synthetic import make_figure, write_h5

    odd, shown = "p\x1b[31m\nc", "p\\x1b[31m\\nc"
    here = tmp_path / odd
    here.mkdir()
    monkeypatch.chdir(tmp_path)
    PIL.Image.fromarray(make_figure(2, 2, seed=4)).save(here / "ref.png")
    write_h5(here / "d.h5", 16, seed=0)
    m = Manifest(run_dir=here / "run", query="q")
    m.add_record(Record(id="pmid:1", title="A paper", stage="filtered"))
    m.save()
    m.close()
    evaluate = ["eval", "--model", "pcam-cnn", "--data", f"{odd}/d.h5", "--out", f"{odd}/ev",
                "--bootstrap", "0", "--threads", "1"]  # fmt: skip
    runs = (
        (["data", "stain", f"{odd}/ref.png", "--out", f"{odd}/s.json"],
         [f"wrote {shown}/s.json: "]),
        (["data", "info", f"{odd}/d.h5", "--sheet", f"{odd}/s.png"],
         [f"encoded:{shown}/d.h5 (", f"  contact sheet: {shown}/s.png"]),
        (evaluate, [f"pcam-cnn (cnn) on encoded:{shown}/d.h5 (n=16)",
                    f"wrote {shown}/ev/metrics.json, predictions.csv and plots"]),
        (["label", "--manifest", f"{odd}/run"], [f"0 figure(s) to label in {shown}/run"]),
    )  # fmt: skip
    for args, lines in runs:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
        assert all(line.isprintable() for line in r.output.splitlines()), (args, r.output)
        assert "\x1b" not in r.output, (args, r.output)
        for said in lines:
            assert any(line.startswith(said) for line in r.output.splitlines()), (said, r.output)
    # histofetch's default folder is runs/default; the line names what it is given
    default = type("Source", (), {"name": "DEFAULT"})()
    ctx = typing.cast(
        typer.Context, type("Ctx", (), {"get_parameter_source": lambda *_: default})()
    )
    histofetch.cli._common.say_default_run(ctx, Path(odd) / "run")
    assert capsys.readouterr().err == f"run folder: {shown}/run (no --run given)\n"
