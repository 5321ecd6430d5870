"""What both command lines share: one error line, one error context, one progress display,
one logging setup.

- :func:`help_text` is a command's docstring for ``--help``, paragraphs on one line each.
- :class:`UsageStyle` is mixed into each CLI's Typer command and group classes: what their
  ``--help`` shows (no ``<bool>`` beside a flag) and how a bad option value is said (one
  way, click's: ``'linear' is not one of 'cosine', 'step'.``, ``0 is not in the range
  x>=1.``; :func:`out_of_range` for the ranges our own checks test).
- :func:`fail` prints ``error: <message>`` on stderr and exits 1.
- :func:`require_folder` and :func:`require_file` fail that way, at once, when a path
  given as a folder names a file or one given as a file names a folder, or its name is
  longer than the file system takes: the file system's state, not a malformed option
  (that is click's usage error, exit 2).
- :func:`home_path` is the parser of every path option: ``~`` expanded where it is parsed.
- :func:`errors` turns domain errors (:class:`~histocore.errors.DomainError`) and
  ``OSError`` into that one line, and Ctrl-C into one ``interrupted`` line (exit 130);
  every other exception is a bug and keeps its traceback.
- :func:`progress` shows the :func:`histocore.progress.task` reports of the library code
  it wraps as transient rich bars on stderr; when stderr is not a terminal (batch jobs) a
  task that runs longer than :data:`LOG_EVERY_S` prints a plain line (done, rate, ETA)
  that often instead, then its last count when it ends; short work prints nothing.
- :func:`setup_logging` sends the libraries' ``logging`` records (the packages log, never
  print) to stderr: information as plain lines, ``warning: …`` for warnings; ``-v`` adds
  debug lines. Each CLI calls it once, before its command runs, and undoes it when the
  command ends (what it returns); :func:`log_level` quietens one logger for one block and
  puts its level back.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Task as RichTask
from rich.text import Text

from histocore.errors import DomainError, describe
from histocore.io import (
    LINK_LOOP,
    expand_home,
    file_in_the_way,
    link_loop,
    one_line,
    refuse_overlong_name,
)
from histocore.progress import Task, Unit, reporting

#: Seconds between progress lines when stderr is not a terminal (batch jobs).
LOG_EVERY_S = 30.0
#: The loggers a CLI shows: those of our three packages (their modules use ``__name__``).
PACKAGES = ("histocore", "histofetch", "histomodels")

#: Libraries we call whose log records are shown only with ``-v``: tifffile warns about what
#: it skips in a damaged file (a tag of an unknown type...) while the image is still read,
#: or fails with our one error line; Python's last-resort handler printed it bare.
QUIET_LIBRARIES = ("tifffile",)


def help_text(command: Callable[..., object]) -> str:
    """``command``'s docstring for ``--help`` with each paragraph on one line, for the
    terminal to wrap: in Typer's rich mode a command list keeps the docstring's line breaks
    (``histomodels --help`` broke ``tune`` mid-sentence). A paragraph that starts with
    ``\\b`` keeps its lines (click's convention)."""
    paragraphs = (inspect.getdoc(command) or "").split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


class UsageStyle:
    """Mixed into the Typer command and group classes of both CLIs (before Typer's class:
    ``class Command(UsageStyle, TyperCommand)``); Typer itself stays a dependency of the
    CLI packages, not of histocore. A flag shows no value in ``--help``: Typer 0.29's rich
    help put ``<bool>`` beside every flag (``--tta <bool>``, ``--help <bool>``), as if it
    took a value; an empty metavar shows nothing there.

    A bad option value reads one way, exit 2 under the usage line: Typer checks a value
    with pydantic and said its words (``Value error, 'linear' is not one of …``, ``Input
    should be greater than or equal to 1``) where our own checks say click's (``0 is not in
    the range x>0.``); :func:`pydantic_said` puts them in click's words."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = cast(Any, super()).get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return cast(Any, super()).parse_args(ctx, args)
        except Exception as exc:  # click's BadParameter: its message, reworded, raised on
            said = pydantic_said(exc)
            if said is not None:
                cast(Any, exc).message = said
            raise


def number_range(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> str:
    """A range as ``--help`` shows Typer's ``min``/``max`` (``x>=1``, ``0.0<=x<=1.0``), an
    open end with ``<`` (``0<x<=16``); the bounds as given (``0.0`` stays ``0.0``)."""
    below, above = ("<" if low_open else "<="), ("<" if high_open else "<=")
    if high is None:
        return f"x{'>' if low_open else '>='}{low}"
    if low is None:
        return f"x{above}{high}"
    return f"{low}{below}x{above}{high}"


def out_of_range(
    given: str, low: float | None = None, high: float | None = None, **ends: bool
) -> str:
    """Click's words for a value outside a range: ``0 is not in the range x>=1.`` (``ends``:
    :func:`number_range`'s ``low_open``/``high_open``)."""
    return f"{one_line(given)} is not in the range {number_range(low, high, **ends)}."


_BOUNDS = {
    "greater_than_equal": "ge",
    "greater_than": "gt",
    "less_than_equal": "le",
    "less_than": "lt",
}


def pydantic_said(exc: BaseException) -> str | None:
    """Click's words for a usage error that Typer raised from a pydantic ``ValidationError``
    (its ``__cause__``); ``None`` for any other error (our checks' own words stay).

    - a choice (``Literal``): ``'linear' is not one of 'cosine', 'step'.`` (the
      ``Value error, `` prefix gone);
    - Typer's ``min``/``max``: ``0 is not in the range x>=1.`` (the whole range, as
      ``--help`` shows it: the option's ``min`` and ``max``);
    - not a number: ``'abc' is not an integer.``, ``'abc' is not a number.``.
    """
    errors = getattr(exc.__cause__, "errors", None)
    if not callable(errors) or not hasattr(exc, "message"):
        return None
    try:
        first = cast(Any, errors)()[0]
    except (IndexError, TypeError, AttributeError):
        return None
    kind, given, ctx = first.get("type"), first.get("input"), first.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return one_line(str(ctx["error"]))
    if kind in _BOUNDS:
        param = getattr(exc, "param", None)
        low, high = getattr(param, "min", None), getattr(param, "max", None)
        if low is None and high is None:  # a constraint of the type, not Typer's min/max
            low, high = ctx.get("ge", ctx.get("gt")), ctx.get("le", ctx.get("lt"))
            return out_of_range(str(given), low, high, low_open="gt" in ctx, high_open="lt" in ctx)
        return out_of_range(str(given), low, high)
    if kind in ("int_parsing", "int_from_float"):
        return one_line(f"{given!r} is not an integer.")
    if kind == "float_parsing":
        return one_line(f"{given!r} is not a number.")
    return None


def fail(*messages: str) -> NoReturn:
    """One ``error: …`` line per message on stderr and exit status 1: the CLIs' answer to
    bad input. A message is ``<file>: <problem>``, the file named by whoever wrote it, a
    parsed Path through :func:`histocore.io.path_shown` where it can; one that still starts
    ``~/`` names a folder called ``~`` here (:func:`_named_here`)."""
    if sys.stdout is not None:  # None when the shell closed it (`>&-`)
        sys.stdout.flush()
    for message in messages:
        sys.stderr.write(f"error: {_named_here(one_line(message))}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def _named_here(message: str) -> str:
    """``message`` with a leading ``~/`` named ``./~/`` when this folder holds an entry
    named ``~``: a folder so named, given as ``./~/run``, is parsed as ``Path('~/run')``
    (pathlib drops the ``./``; :func:`home_path` expanded every home ``~``), and many
    messages name the parsed Path (``error: ~/run/manifest.jsonl: empty file`` read as
    ``$HOME``'s). Without such an entry a leading ``~`` is text a reader expands (``--data``),
    ``$HOME``'s, and is left as it is."""
    if message.startswith(("~/", "~:")) and os.path.lexists("~"):
        return f"./{message}"
    return message


def require_folder(*paths: str | Path | None, what: str = "folder") -> None:
    """Fail at once when a folder to read or write (``--out RUN``, ``--run RUN``) names an
    existing file, or lies in one (``--out a/run``, ``a`` a file): creating or reading it
    would otherwise fail only later, after work."""
    for raw in paths:
        if raw is None:
            continue
        path = expand_home(raw)  # a parsed Path as it is: not expanded twice
        with _said_as(raw):  # exists() raises for a name too long (ENAMETOOLONG)
            refuse_overlong_name(path)
            if path.exists() and not path.is_dir():
                fail(f"{raw}: is a file, not a {what}")
            if path.is_symlink() and not path.exists():  # made it would fail after the work
                loop = link_loop(path)
                fail(f"{raw}: {LINK_LOOP if loop else 'broken symbolic link'}")
            _require_parents(path)


def require_file(*paths: str | Path | None) -> None:
    """Fail at once when a file to write (``--out x.csv``) names an existing folder, or
    lies in a file (``--out a/x.csv``, ``a`` a file): the write would otherwise fail only
    after all the work."""
    for raw in paths:
        if raw is None:
            continue
        path = expand_home(raw)  # a parsed Path as it is: not expanded twice
        with _said_as(raw):  # is_dir() raises for a name too long (ENAMETOOLONG)
            refuse_overlong_name(path)
            if path.is_dir():
                fail(f"{raw}: is a folder, not a file")
            if link_loop(path):  # the writer's resolve() raised RuntimeError for it
                fail(f"{raw}: {LINK_LOOP}")
            _require_parents(path)


@contextlib.contextmanager
def _said_as(raw: str | Path) -> Iterator[None]:
    """An OSError while checking an ``--out`` (a name too long for the file system, in any
    of its parts) is one line naming it as given: ``error: aaa…: file name too long (over
    255 bytes)``; it was a traceback where the folder existed."""
    try:
        yield
    except OSError as exc:
        fail(f"{raw}: {(exc.strerror or str(exc)).lower()}")


def home_path(raw: str | Path) -> Path:
    """Every path option's and argument's parser in both CLIs (``parser=home_path``): a
    value starting with ``~`` (``~/x``, ``~user/x``) expanded once, as the value is parsed,
    so the checks before the work and the code that reads or writes see one path. The
    shell expands a bare ``~/x`` but not ``--out=~/x`` or a quoted ``'~/x'``: the checks
    expanded it, the writers did not, and ``./~/x`` was written. Only a leading ``~`` (see
    :func:`histocore.io.expand_home`): ``./~/x`` is a folder named ``~`` (it was
    ``$HOME/x``, overwritten); ``~ev`` with no user ``ev``, and ``~+/x``, are names as
    typed, as bash leaves them."""
    return expand_home(raw)


class StandardOutput(type(Path())):  # type: ignore[misc]
    """What :func:`home_path_or_stdout` parses ``-`` to: write to standard output."""


def home_path_or_stdout(raw: str | Path) -> Path:
    """The parser of an ``--out`` that may be standard output: ``-`` is a
    :class:`StandardOutput` (the Unix convention; a file named ``-`` is given as ``./-``,
    which parses to a plain path), anything else a path as :func:`home_path` parses it."""
    return StandardOutput("-") if isinstance(raw, str) and raw == "-" else home_path(raw)


def _require_parents(path: Path) -> None:
    """Fail when an existing file (or a broken link) stands where ``path``'s folder should
    be: ``a: is a file, not a folder`` (writing ``a/b.pt`` said ``a: file exists``, or
    ``a/b.pt: not a directory``); ``a: broken symbolic link``."""
    in_the_way = file_in_the_way(path)
    if in_the_way is not None:
        blocker, problem = in_the_way
        fail(f"{blocker}: {problem}")


@contextlib.contextmanager
def errors(*also: type[BaseException], outcome: str = "") -> Iterator[None]:
    """Domain errors and ``OSError`` (plus any ``also``) → one error line and exit 1;
    Ctrl-C → one ``interrupted`` line and exit 130 (what shells report for SIGINT).

    ``outcome`` says what stopped (``"search failed"``), after the error's own
    ``<file-or-url>: <problem>``: ``error: RUN/run.sqlite: not a usable run store (…);
    search failed`` (before it, the line began ``error: search failed: RUN/…``)."""
    try:
        yield
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        raise SystemExit(130) from None
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        raise SystemExit(0) from None
    except (DomainError, OSError, *also) as exc:
        fail(describe(exc) + (f"; {outcome}" if outcome else ""))


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes (a live progress display
    redirects it to print above its bars, and test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _Formatter(logging.Formatter):
    """``message`` for information, ``warning: message`` (``error: …``) above it,
    ``debug: logger: message`` below it; the message through :func:`one_line`, as error
    lines are (a warning naming a folder ``p\\x1b[31m\\nc`` printed its escape and broke
    over two lines). A traceback attached to the record is left as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        if record.levelno < logging.INFO:
            return f"debug: {record.name}: {text}"
        return text


def setup_logging(level: int = logging.INFO, *, verbose: bool = False) -> Callable[[], None]:
    """Show our packages' log records of ``level`` and above on stderr (``verbose``: debug
    too, and the :data:`QUIET_LIBRARIES`' records, hidden otherwise). Calling it again
    replaces the earlier setup (one handler per logger). Returns what undoes it: the stderr
    handlers taken away and the loggers' levels as they were before this call; the CLIs
    call it when their command ends (left attached, a library ``train()`` later in the same
    process, the root logger set up, printed every line twice)."""
    level = logging.DEBUG if verbose else level
    quiet = logging.DEBUG if verbose else logging.CRITICAL + 1
    names = PACKAGES + QUIET_LIBRARIES
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(_Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(quiet if name in QUIET_LIBRARIES else level)

    def undo() -> None:
        for name, was in before.items():
            logger = logging.getLogger(name)
            for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
                logger.removeHandler(old)
            logger.setLevel(was)

    return undo


@contextlib.contextmanager
def log_level(name: str, level: int) -> Iterator[None]:
    """Logger ``name`` at ``level`` inside the block only, then at the level it had: a
    command quietens a library's lines without changing them for the rest of the process
    (library callers, later commands in the same interpreter)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


class _Count(ProgressColumn):
    """``12/40`` for items, ``1.2/4.0 GB`` for bytes."""

    def render(self, task: RichTask) -> Text:
        done, total = int(task.completed), task.total
        if task.fields.get("unit") == "bytes":
            text = decimal(done) + (f"/{decimal(int(total))}" if total is not None else "")
        else:
            text = f"{done}/{int(total)}" if total is not None else str(done)
        return Text(text, style="progress.download")


class _Rate(ProgressColumn):
    """Units per second (``12.3 /s`` or ``4.5 MB/s``)."""

    def render(self, task: RichTask) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("- /s")
        if task.fields.get("unit") == "bytes":
            return Text(f"{decimal(int(speed))}/s")
        return Text(f"{speed:.1f} /s")


class _RichTask(Task):
    def __init__(self, bar: Progress, task_id) -> None:
        self._bar, self._id = bar, task_id

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._id, n)

    def update(
        self, *, completed: int | None = None, total: int | None = None, description: str = ""
    ) -> None:
        if total is not None:
            self._bar.update(self._id, total=total)
        if completed is not None:
            self._bar.update(self._id, completed=completed)
        if description:
            self._bar.update(self._id, description=description)


class _LogTask(Task):
    """Batch jobs: a line on stderr at most every :data:`LOG_EVERY_S` seconds."""

    def __init__(self, description: str, total: int | None, unit: Unit) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done, self.start = 0, time.monotonic()
        self.last = self.start
        self.printed = False  # a line shown: the task ends with its last count

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._maybe_log()

    def update(
        self, *, completed: int | None = None, total: int | None = None, description: str = ""
    ) -> None:
        if total is not None:
            self.total = total
        if completed is not None:
            self.done = completed
        if description:
            self.description = description
        self._maybe_log()

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S:
            self.last, self.printed = now, True
            sys.stderr.write(one_line(self.line(now)) + "\n")
            sys.stderr.flush()

    def line(self, now: float, *, final: bool = False) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        size = decimal if self.unit == "bytes" else str
        text = f"{self.description}: {size(self.done)}"
        if self.total is not None:
            text += f"/{size(self.total)}"
        if final:
            text += f" in {_duration(now - self.start)}"
        elif self.total is not None:
            eta = (self.total - self.done) / rate if rate else float("inf")
            text += f", ETA {_duration(eta)}"
        return text + (f", {decimal(int(rate))}/s" if self.unit == "bytes" else f", {rate:.2f}/s")

    def finish(self) -> None:
        """A last line when the task printed any (``extracted: 6/6 in 2m41s, …``): the
        last one read e.g. 4/6 right before the summary. Short work stays silent."""
        if self.printed:  # not last != start: a coarse clock may give both one reading
            sys.stderr.write(one_line(self.line(time.monotonic(), final=True)) + "\n")
            sys.stderr.flush()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@contextlib.contextmanager
def _log_display(description: str, total: int | None, unit: Unit) -> Iterator[Task]:
    shown = _LogTask(description, total, unit)
    yield shown  # a task ended by an error gets no last line: its error line follows
    shown.finish()


def _is_terminal(stream: object) -> bool:
    """Whether ``stream`` (``sys.stdout``: None when closed) is a terminal: only then are
    lines printed to it while a bar shows drawn above the bar, on the same screen."""
    try:
        return bool(stream is not None and stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[None]:
    """Show the progress of the library work inside this block on stderr: transient bars on
    a terminal, a line every :data:`LOG_EVERY_S` seconds of a long task otherwise (batch
    logs get no control codes and no blank lines). ``enabled=False`` shows nothing."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        with reporting(_log_display if enabled else None):
            yield
        return
    bar = Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # "o[/x]" as it is
        BarColumn(),
        _Count(),
        _Rate(),
        TimeRemainingColumn(),
        transient=True,
        console=console,
        redirect_stdout=_is_terminal(sys.stdout),  # else a line printed in the block (a
    )  # CSV on `--out -`, `all`'s stage lines) went to the stderr console, not to stdout

    @contextlib.contextmanager
    def display(description: str, total: int | None, unit: Unit) -> Iterator[Task]:
        task_id = bar.add_task(description, total=total, unit=unit)
        try:
            yield _RichTask(bar, task_id)
        finally:
            bar.remove_task(task_id)

    with bar, reporting(display):
        yield
