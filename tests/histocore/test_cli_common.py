"""histocore.cli: one error line for domain errors, tracebacks for bugs, one progress display."""

from __future__ import annotations

import re

import pytest

from histocore.cli import errors, fail, progress, require_file, require_folder
from histocore.errors import DomainError, UsageError
from histocore.manifest import ManifestError
from histocore.progress import Task, task


def test_fail_is_one_line_even_for_a_file_name_with_newlines(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        fail("evil\nerror: forged.pdf\r: no such file")
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: evil\\nerror: forged.pdf\\r: no such file"]


def test_domain_errors_and_os_errors_become_one_line(tmp_path, capsys) -> None:
    for exc, line in (
        (ManifestError("run/manifest.jsonl: line 3 is not JSON"), "run/manifest.jsonl: line 3"),
        (UsageError("precision must be fp32"), "precision must be fp32"),
        (FileNotFoundError(2, "No such file or directory", "x.pt"), "x.pt: no such file"),
    ):
        with pytest.raises(SystemExit) as exit_, errors():
            raise exc
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and line in err
    with pytest.raises(SystemExit), errors(outcome="search failed"):
        raise ManifestError("run/run.sqlite: not a usable run store")
    assert (
        capsys.readouterr().err == "error: run/run.sqlite: not a usable run store; search failed\n"
    )

    class Worded(DomainError):  # a message worded for a record's reason, as NetError's
        def __init__(self) -> None:
            super().__init__("HTTP 503 from https://x.org/a (gave up after 2 attempts)")
            self.subject, self.problem = "https://x.org/a", "HTTP 503 (gave up after 2 attempts)"

    with pytest.raises(SystemExit), errors(outcome="download failed"):
        raise Worded()  # said with its subject first
    assert capsys.readouterr().err == (
        "error: https://x.org/a: HTTP 503 (gave up after 2 attempts); download failed\n"
    )


def test_programmer_bugs_keep_their_traceback(capsys) -> None:
    for bug in (KeyError("k"), ValueError("bad"), TypeError("t"), ZeroDivisionError()):
        with pytest.raises(type(bug)), errors():
            raise bug
    assert capsys.readouterr().err == ""


def test_progress_is_silent_off_a_terminal_and_shown_on_one(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    with progress(), task("decoding", 3) as shown:
        shown.advance()  # short work off a terminal: nothing at all
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    with progress(), task("decoding patches", 3) as shown:
        assert type(shown) is not Task
        shown.advance(3)
    out, err = capsys.readouterr()
    assert out == "" and "decoding patches" in err  # bars go to stderr only
    with progress(enabled=False), task("quiet", 1) as shown:
        assert type(shown) is Task


def test_a_progress_description_is_shown_as_it_is(monkeypatch, capsys) -> None:
    """The bar's description went through rich markup: a path like ``o[/x]`` raised
    MarkupError and ``runs/[exp1]`` lost its ``[exp1]``."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    with progress(), task("reading o[/x] runs/[exp1]", 3) as shown:
        shown.advance(3)
    assert "reading o[/x] runs/[exp1]" in capsys.readouterr().err


def test_batch_jobs_get_a_plain_line_every_interval(monkeypatch, capsys) -> None:
    import histocore.cli

    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    monkeypatch.setattr(histocore.cli, "LOG_EVERY_S", 0.0)  # every advance is "long enough"
    with progress(), task("downloaded", 4) as shown:
        shown.advance(2)
        assert capsys.readouterr().err.startswith("downloaded: 2/4, ETA ")
        shown.advance(2)
    out, err = capsys.readouterr()
    first, last = err.splitlines()  # the last count, not the one 30 s before
    assert out == "" and first.startswith("downloaded: 4/4, ETA ")
    assert re.fullmatch(r"downloaded: 4/4 in 0m00s, [0-9.]+/s", last), last
    assert "\x1b" not in err  # no control codes in a log


def test_a_batch_task_ends_with_its_last_count_only_when_it_printed_one(
    monkeypatch, capsys
) -> None:
    """The 30 s lines of a long stage had no last one: it could read 4/6 right before the
    summary. A short task (no line printed) stays silent, and one ended by an error gets
    no 'done' line before the error."""
    import histocore.cli

    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    with progress(), task("extracted", 6) as shown:
        shown.advance(6)
    assert capsys.readouterr().err == ""  # shorter than LOG_EVERY_S
    monkeypatch.setattr(histocore.cli, "LOG_EVERY_S", 0.0)
    with progress(), task("extracted", 6) as shown:
        shown.advance(4)
        monkeypatch.setattr(histocore.cli, "LOG_EVERY_S", 3600.0)
        shown.advance(2)  # the 30 s line is not due: only the last line says 6/6
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("extracted: 4/6, ETA ") and len(lines) == 2
    assert lines[1].startswith("extracted: 6/6 in ")
    monkeypatch.setattr(histocore.cli, "LOG_EVERY_S", 0.0)
    with pytest.raises(OSError), progress(), task("extracted", 6) as shown:
        shown.advance(4)
        raise OSError("disk full")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("extracted: 4/6, ETA ")


def test_a_batch_task_that_printed_a_line_ends_with_its_count_on_a_coarse_clock(
    monkeypatch, capsys
) -> None:
    """Whether a task had printed a line was read from its clock (last line's time !=
    start): a clock that gave both the same reading (coarse, or a task printing at once)
    left out the last count. A flag says it."""
    import types

    import histocore.cli

    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    monkeypatch.setattr(histocore.cli, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(histocore.cli, "time", types.SimpleNamespace(monotonic=lambda: 7.0))
    with progress(), task("extracted", 6) as shown:
        shown.advance(4)
        monkeypatch.setattr(histocore.cli, "LOG_EVERY_S", 3600.0)
        shown.advance(2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("extracted: 4/6, ETA "), lines
    assert lines[1].startswith("extracted: 6/6 in 0m00s"), lines


def test_setup_logging_shows_library_records_on_stderr(capsys, fresh_logging) -> None:
    import logging

    from histocore.cli import setup_logging

    log = logging.getLogger("histofetch.some_stage")
    setup_logging()
    setup_logging()  # a second call replaces the first: no line twice
    log.info("3 records done")
    log.warning("MD5 mismatch for %s", "PMC1/fig1.jpg")
    log.debug("not shown by default")
    logging.getLogger("elsewhere").warning("not ours")  # other libraries keep their own setup
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "3 records done",
        "warning: MD5 mismatch for PMC1/fig1.jpg",
    ]
    setup_logging(verbose=True)
    log.debug("cache hit")
    assert capsys.readouterr().err == "debug: histofetch.some_stage: cache hit\n"
    setup_logging(logging.WARNING)
    log.info("hidden when quiet")
    assert capsys.readouterr().err == ""


def test_setup_logging_escapes_control_characters_in_log_lines(capsys, fresh_logging) -> None:
    """A warning naming a folder ``p\\x1b[31m\\nc`` (histomodels' PCam ``_meta.csv``
    warning) printed the escape and a second line: log lines go through ``one_line`` as
    error lines do; a traceback keeps its lines."""
    import logging

    from histocore.cli import setup_logging

    log = logging.getLogger("histomodels.data.pcam")
    setup_logging(verbose=True)
    log.warning("%s: no _meta.csv", "p\x1b[31m\nc")
    log.info("in p\x1b[31m\nc")
    log.debug("seen p\x1b[31m\nc")
    assert capsys.readouterr().err.splitlines() == [
        "warning: p\\x1b[31m\\nc: no _meta.csv",
        "in p\\x1b[31m\\nc",
        "debug: histomodels.data.pcam: seen p\\x1b[31m\\nc",
    ]
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed in a\nb")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: failed in a\\nb" and err[1].startswith("Traceback"), err


@pytest.mark.parametrize("name", ["histofetch", "histomodels"])
def test_a_cli_call_takes_its_stderr_handler_away_when_it_ends(
    capsys, fresh_logging, name: str
) -> None:
    """``setup_logging`` left its stderr handler (and its levels) on our loggers after a
    command ended: a library ``train()`` after a CliRunner call in the same process, with
    the root logger set up (``basicConfig``), printed every line twice. The command line
    takes away what it attached, and puts the levels back, when the command ends."""
    import logging

    from typer.testing import CliRunner

    from histofetch.cli import app as fetch_app
    from histomodels.cli import app as models_app

    app = {"histofetch": fetch_app, "histomodels": models_app}[name]
    loggers = [logging.getLogger(n) for n in ("histocore", "histofetch", "histomodels")]
    before = [(logger.handlers[:], logger.level) for logger in loggers]
    args = ["status", "--run", "nope"] if name == "histofetch" else ["data", "info", "nope"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert [(logger.handlers[:], logger.level) for logger in loggers] == before
    root = logging.getLogger()
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    root.addHandler(handler)
    try:
        logging.getLogger("histomodels.training").warning("once")
    finally:
        root.removeHandler(handler)
    assert seen == ["once"] and "once" not in capsys.readouterr().err


def test_log_level_quietens_a_logger_for_its_block_only() -> None:
    import logging

    from histocore.cli import log_level

    log = logging.getLogger("histocore.test_log_level")
    log.setLevel(logging.DEBUG)
    with log_level(log.name, logging.WARNING):
        assert not log.isEnabledFor(logging.INFO)
    assert log.level == logging.DEBUG
    with pytest.raises(DomainError), log_level(log.name, logging.ERROR):
        raise DomainError("bad input")  # the command failed: the level still comes back
    assert log.level == logging.DEBUG


def test_an_output_under_a_file_is_refused_up_front(tmp_path, capsys) -> None:
    """``--out a/run`` or ``--out a/x.csv`` with ``a`` a file failed only after the work
    (``a: file exists``, ``a/run: not a directory``): one line naming ``a`` at once."""
    a = tmp_path / "a"
    a.write_text("mine")
    for check, out in ((require_folder, a / "run"), (require_file, a / "x" / "p.csv")):
        with pytest.raises(SystemExit) as exit_:
            check(out)
        assert exit_.value.code == 1
        assert capsys.readouterr().err == f"error: {a}: is a file, not a folder\n"
    require_folder(tmp_path / "new" / "run")  # folders still to make are fine
    require_file(tmp_path / "new" / "p.csv")
    assert capsys.readouterr().err == ""


def test_an_output_under_a_broken_link_says_so(tmp_path, capsys) -> None:
    """A link to nowhere, or a link loop, among ``--out``'s folders was called 'is a file,
    not a folder' (the up-front check saw something that exists and is no folder)."""
    (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "to_file").symlink_to(tmp_path / "f")
    (tmp_path / "f").write_text("mine")
    cases = {"dang": "broken symbolic link", "loop": "too many levels of symbolic links",
             "to_file": "is a file, not a folder"}  # fmt: skip
    for name, problem in cases.items():
        for check, out in ((require_folder, tmp_path / name / "run"),
                           (require_file, tmp_path / name / "p.csv")):  # fmt: skip
            with pytest.raises(SystemExit):
                check(out)
            assert capsys.readouterr().err == f"error: {tmp_path / name}: {problem}\n"


def test_an_output_that_is_a_link_loop_is_one_line(tmp_path, capsys) -> None:
    """``--out loop`` (a link to itself) passed the checks, and the writer's resolve() raised
    a RuntimeError traceback (export, predict); require_folder called it a broken link."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    for check in (require_folder, require_file):
        with pytest.raises(SystemExit):
            check(tmp_path / "loop")
        said = capsys.readouterr().err
        assert said == f"error: {tmp_path / 'loop'}: too many levels of symbolic links\n"
    require_file(tmp_path / "dang")  # a link to nowhere is written over, as before
    with pytest.raises(SystemExit):
        require_folder(tmp_path / "dang")
    assert capsys.readouterr().err == f"error: {tmp_path / 'dang'}: broken symbolic link\n"


def test_an_output_under_a_home_that_does_not_exist_is_a_name(tmp_path, monkeypatch) -> None:
    """``--out ~nosuchuser/x`` was a RuntimeError traceback from expanduser(), then an
    error line; it is a name as typed now, as bash leaves it (a file named ``~ev``)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~no_such_user_here").write_text("a file in the way")
    for check in (require_folder, require_file):
        with pytest.raises(SystemExit):  # checked as the name ./~no_such_user_here/x
            check("~no_such_user_here/x")
        check("~no_such_user_here_either/x")


def test_a_bug_in_the_output_checks_keeps_its_traceback(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --out checks caught any RuntimeError for expanduser's '~nosuchuser': a bug
    raising one in a later check (here os.pathconf, which the name-length check asks)
    became one 'error:' line, its traceback lost. Only the checks' own OSErrors (a name
    too long) are one line now; ``~`` is expanded as text, with nothing to catch."""
    import os

    def bug(*_: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(os, "pathconf", bug)
    for check, out in ((require_folder, tmp_path / "run"), (require_file, tmp_path / "p.csv")):
        with pytest.raises(RuntimeError, match="a bug"):
            check(out)


@pytest.mark.parametrize("package", ["histocore", "histofetch", "histomodels"])
def test_library_records_go_nowhere_unless_the_application_configures_logging(
    package: str,
) -> None:
    """Our package loggers had no handler, so in a plain script or notebook (no logging
    set up) a library warning went to logging's last-resort handler on stderr, against the
    library convention. Each package logger holds a ``logging.NullHandler`` now: nothing
    is printed unless the application configures logging, and then its records reach the
    root handler as before. Run in a fresh interpreter: pytest sets up logging itself."""
    import subprocess
    import sys

    code = (
        f"import logging, {package}\n"
        f"assert any(isinstance(h, logging.NullHandler) for h in "
        f"logging.getLogger({package!r}).handlers)\n"
        f"logging.getLogger('{package}.some_module').warning('unseen')\n"
        "logging.basicConfig(format='%(name)s: %(message)s')\n"
        f"logging.getLogger('{package}.some_module').warning('seen')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert r.stderr == f"{package}.some_module: seen\n"
