"""What every ``histomodels`` command shares: options, the error line, progress, threads.

``fail``, ``errors``, ``progress`` and ``setup_logging`` are the ones both command lines use
(:mod:`histocore.cli`); command modules import them from here and never from
``histomodels.cli`` itself, so the package's ``__init__`` can assemble the app from them.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, get_type_hints

import typer
from typer.core import TyperCommand, TyperGroup

from histocore.cli import (
    UsageStyle,
    errors,
    fail,
    log_level,
    out_of_range,
    progress,
    require_folder,
    setup_logging,
)
from histocore.cli import require_file as require_file_out
from histocore.errors import DomainError
from histocore.io import expand_home, not_there, number_text, path_shown
from histomodels.choices import MAX_THREADS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

N = TypeVar("N", int, float)
T = TypeVar("T")


class Command(UsageStyle, TyperCommand):
    """Every ``histomodels`` command (``app.command(..., cls=Command)``): see
    :class:`histocore.cli.UsageStyle`."""


class Group(UsageStyle, TyperGroup):
    """The ``histomodels`` app and its command groups (``typer.Typer(cls=Group)``)."""


def no_model_to_stdout(out: Path) -> None:
    """``--out -`` of a command that writes a binary model (``export``, ``ensemble``): one
    line, exit 1, before anything is read (``-`` was taken for a file name and a file named
    ``-`` written). ``out`` is parsed by :func:`histocore.cli.home_path_or_stdout`, so a
    file named ``-`` given as ``./-`` passes."""
    from histocore.cli import StandardOutput

    if isinstance(out, StandardOutput):
        fail(
            "-: binary model output to standard output is not supported; give a path "
            "(./- for one named -)"
        )


def checked_by(check: str, option: str) -> Callable[[T], T]:
    """An option callback that runs the library's own check of the option's text
    (``check``: ``"module:function"``, imported only when the option is given): the
    library's error is a usage error, exit 2, its message less the leading ``option``
    (click names the option). One source of truth; library callers keep the library's
    error."""

    def callback(value: T) -> T:
        if value is None or value == []:
            return value
        module, _, name = check.partition(":")
        try:
            getattr(importlib.import_module(module), name)(value)
        except DomainError as exc:
            raise typer.BadParameter(str(exc).removeprefix(option).lstrip(": ")) from None
        return value

    return callback


G = TypeVar("G", bound="DataclassInstance")


def option_parameters(group: type[Any]) -> list[inspect.Parameter]:
    """The command parameters a frozen dataclass of options declares, in field order: a
    field typed ``Annotated[T, typer.Option(...)]`` is one option (its default the field's;
    none: required), a field typed as another such dataclass is that group's options in its
    place. Names are unique across the groups (Typer calls the command with all of them)."""
    hints = get_type_hints(group, include_extras=True)
    found: list[inspect.Parameter] = []
    for field in dataclasses.fields(group):
        hint = hints[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            found += option_parameters(hint)
            continue
        default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        found.append(inspect.Parameter(field.name, kind, annotation=hint, default=default))
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise TypeError(f"{group.__name__}: an option name is given twice: {names}")
    return found


def from_params(group: type[G], params: Mapping[str, Any]) -> G:
    """The ``group`` dataclass of options filled from the values Typer parsed, by name
    (nested groups from the same flat mapping)."""
    hints = get_type_hints(group, include_extras=True)
    values = {
        f.name: from_params(hint, params)
        if isinstance(hint := hints[f.name], type) and dataclasses.is_dataclass(hint)
        else params[f.name]
        for f in dataclasses.fields(group)
    }
    return group(**values)


def with_options(
    group: type[G],
) -> Callable[[Callable[[typer.Context, G], None]], Callable[..., None]]:
    """A command ``def cmd(ctx: typer.Context, opts: Group)``, ``Group`` a frozen dataclass of
    options (see :func:`option_parameters`), as Typer calls it: the signature is ``ctx`` and
    every option by name (``--help`` lists them in field order), and the body gets them as one
    typed ``Group``, so a type checker checks each ``opts.name`` it reads. Options shared by
    commands are shared dataclasses (fields of both commands' groups), declared once."""
    ctx = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    signature = inspect.Signature([ctx, *option_parameters(group)], return_annotation=None)

    def deco(body: Callable[[typer.Context, G], None]) -> Callable[..., None]:
        def command(ctx: typer.Context, **params: Any) -> None:
            body(ctx, from_params(group, params))

        for name in ("__module__", "__name__", "__qualname__", "__doc__"):  # help_text reads
            setattr(command, name, getattr(body, name))  # the docstring
        command.__signature__ = signature  # type: ignore[attr-defined]
        return command

    return deco


def usage_error(ctx: typer.Context, message: str, *names: str) -> NoReturn:
    """Click's usage error (exit 2: the usage line, then ``Invalid value for '--a' / '--b':
    message``) for options and arguments (``names``) that are wrong only together (one of
    two, not both), which no single option's check sees."""
    raise typer.BadParameter(message, ctx=ctx, param_hint=list(names))


#: Shared by every command that runs a model (the name's syntax here; whether this machine
#: has that device is the library's question, exit 1).
Device = Annotated[
    str | None,
    typer.Option(
        callback=checked_by("histomodels.choices:check_device", "--device"),
        help="cpu, cuda, cuda:1, mps \\[auto: CUDA if available].",
    ),
]


#: ``--batch-size`` of ``eval`` and ``predict`` (inference: an upper bound, the batch cut to
#: ``MAX_BATCH_PIXELS`` as the network sees them).
InferenceBatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        help="Most patches per inference batch (fewer where a batch would pass 2**24 "
        "pixels as the network sees them).",
    ),
]


#: ``--threads`` of every command that runs a model (train, finetune, tune, eval, predict):
#: torch's intra-op threads, set with :func:`histomodels.device.set_threads` (none given: the
#: trainer leaves torch's count; eval and predict take :func:`use_cpu_cores`'s).
Threads = Annotated[
    int | None, typer.Option(min=1, max=MAX_THREADS, help="torch intra-op threads.")
]


#: ``--origin-split`` of ``data info``, ``train``, ``finetune``, ``tune`` and ``eval``: the encoded
#: HDF5 reader's ``origin_split=`` filter, its comma list checked before anything is read.
OriginSplit = Annotated[
    str | None,
    typer.Option(
        callback=checked_by("histomodels.choices:origin_splits", "origin_split"),
        help="Encoded HDF5 (manifest.csv beside it): keep the patches of these origin splits "
        "(comma list, e.g. kaggle_train,pcam_train; train, finetune, tune, eval: of --data, not "
        "--val).",
    ),
]


@contextmanager
def reader_options(names: Mapping[str, str], ctx: typer.Context | None = None) -> Iterator[None]:
    """A reader's refusal of keywords its format does not take, said as ``data info`` says
    it: a usage error naming the options given (``names``: reader keyword -> this command's
    option) and only those of them the format takes, not the reader's other keywords; when
    it takes none of them, no list (it said "it takes none of these options" beside eval's
    ``--scale``, which such data takes). A refused keyword not in ``names`` (a config file
    gave it) keeps the reader's line."""
    from histocore.io import path_line
    from histomodels.data.readers import OptionsNotTaken

    try:
        yield
    except OptionsNotTaken as exc:
        if not all(k in names for k in exc.options):
            raise
        takes = [names[k] for k in exc.allowed if k in names]
        said = f" (it takes {', '.join(takes)})" if takes else ""
        raise typer.BadParameter(
            f"does not apply to {path_line(exc.path)}, {exc.fmt} data{said}",
            ctx=ctx,
            param_hint=[names[k] for k in exc.options],
        ) from None


def in_range(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[N | None], N | None]:
    """An option callback for a range Typer's closed ``min``/``max`` cannot say (``> 0``,
    ``(0, 1]``): a value outside it (or NaN, or infinite) is a usage error, exit 2, like
    theirs, in the same words (``0 is not in the range x>0.``)."""
    ends = {"low_open": low_open, "high_open": high_open}
    bottom, top = (None if low == -math.inf else low), (None if high == math.inf else high)

    def check(value: N | None) -> N | None:
        if value is None:
            return None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below and math.isfinite(value)):  # NaN fails both
            raise typer.BadParameter(out_of_range(number_text(value), bottom, top, **ends))
        return value

    return check


def at_least(least: float, *names: str, **options: Any) -> Any:
    """A float option ``>= least``, finite: Typer's ``min`` (the help's range, its message)
    and :func:`in_range`'s callback (``inf`` passes ``min``), from one number."""
    return typer.Option(*names, min=least, callback=in_range(least), **options)


def shipped_model(name: str | None) -> str | None:
    """``--model`` callback: a name that is not a shipped model is a usage error (exit 2)."""
    from histomodels import pretrained
    from histomodels.choices import name_hint

    if name is not None and not pretrained.is_pretrained(name):
        shipped = pretrained.available()
        known = ", ".join(shipped) or "none"
        hint = name_hint(name, shipped)  # as train's --model: only a plausible one
        raise typer.BadParameter(f"{name!r} is not a shipped model (shipped: {known}){hint}.")
    return name


def checkpoint_path(raw: str | Path) -> Any:
    """The parser of an argument that names a checkpoint (``eval``, ``export``, ``predict``'s
    first): a shipped model's name as typed, a ``str`` (``pcam-cnn``: the shipped model,
    also where a file or folder of that name is here:
    :func:`histomodels.pretrained.shipped_name`); anything else a path as
    :func:`histocore.cli.home_path` parses it (``./pcam-cnn``: that file or folder)."""
    from histocore.cli import home_path
    from histomodels import pretrained

    if isinstance(raw, str) and pretrained.is_pretrained(raw):
        return raw
    return home_path(raw)


def require_paths(*paths: str | Path | None, role: str | None = None) -> None:
    """Fail at once when an input path given on the command line does not exist, before
    PyTorch is imported (seconds): the line the library would give later (``role``: the
    trainer's ``<path>: <role> data not found``; else ``<path>: no such file or folder``)."""
    for raw in paths:
        if raw is None:
            continue
        path = expand_home(raw)  # as the reader takes it: a leading '~' only
        try:  # a name too long (ENAMETOOLONG): one line
            found = path.exists()
        except OSError as exc:  # named as expanded: '~/x' is $HOME's, a parsed './~/x' not
            fail(f"{path_shown(path)}: {(exc.strerror or str(exc)).lower()}")
        if not found:  # a link loop (or a path under one) is named as the loop, not "not found"
            fail(not_there(path, f"{role} data not found" if role else "no such file or folder"))


def launched_distributed() -> bool:
    """This process is one rank of several (torchrun, or RANK/WORLD_SIZE set by hand)."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


def use_cpu_cores(threads: int | None = None) -> None:
    """Inference: ``threads`` intra-op threads when given (``--threads``, as the trainer sets
    them), else on CPU the cores we have (torch's default may oversubscribe) unless
    ``OMP_NUM_THREADS`` says otherwise."""
    import torch

    from histomodels.device import set_threads

    if threads:
        set_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


__all__ = [
    "Command",
    "Device",
    "Group",
    "OriginSplit",
    "Threads",
    "checked_by",
    "checkpoint_path",
    "errors",
    "fail",
    "from_params",
    "in_range",
    "launched_distributed",
    "log_level",
    "option_parameters",
    "progress",
    "reader_options",
    "require_file_out",
    "require_folder",
    "require_paths",
    "setup_logging",
    "shipped_model",
    "usage_error",
    "use_cpu_cores",
    "with_options",
]
