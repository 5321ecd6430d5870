"""What every ``histomodels`` command shares: options, the error line, progress, threads.

``fail``, ``errors``, ``progress`` and ``setup_logging`` are the ones both command lines use
(:mod:`histocore.cli`); command modules import them from here and never from
``histomodels.cli`` itself, so the package's ``__init__`` can assemble the app from them.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from histocore.cli import errors, fail, log_level, progress, require_folder, setup_logging
from histocore.cli import require_file as require_file_out
from histocore.errors import DomainError

N = TypeVar("N", int, float)
T = TypeVar("T")


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


#: An option without a default (Typer then requires it).
REQUIRED: Any = inspect.Parameter.empty
F = TypeVar("F", bound=Callable[..., Any])


def options(**annotated: Any) -> list[inspect.Parameter]:
    """A group of command parameters, in order: ``name=Alias`` (an ``Annotated`` option,
    default None) or ``name=(Alias, default)``; :func:`with_options` gives them to a
    command. Commands that share options share these groups, not copies of the lines."""
    found = []
    for name, spec in annotated.items():
        annotation, default = spec if isinstance(spec, tuple) else (spec, None)
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        found.append(inspect.Parameter(name, kind, annotation=annotation, default=default))
    return found


def with_options(*groups: list[inspect.Parameter]) -> Callable[[F], F]:
    """Give a command ``def cmd(ctx: typer.Context, **params)`` the signature Typer reads its
    options from: ``ctx``, then each group's parameters in order (``--help`` lists them so);
    Typer calls it with every option by name."""

    def deco(fn: F) -> F:
        ctx = inspect.Parameter(
            "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
        )
        params = [ctx, *(p for group in groups for p in group)]
        fn.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        return fn

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


def in_range(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[N | None], N | None]:
    """An option callback for a range Typer's closed ``min``/``max`` cannot say (``> 0``,
    ``(0, 1]``): a value outside it (or NaN, or infinite) is a usage error, exit 2, like
    theirs."""
    shown = (
        f"x {'>' if low_open else '>='} {low:g}"
        if high == math.inf
        else f"{low:g}{' <' if low_open else ' <='} x{' <' if high_open else ' <='} {high:g}"
    )

    def check(value: N | None) -> N | None:
        if value is None:
            return None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below and math.isfinite(value)):  # NaN fails both
            raise typer.BadParameter(f"{value:g} is not in the range {shown}.")
        return value

    return check


def at_least(least: float, *names: str, **options: Any) -> Any:
    """A float option ``>= least``, finite: Typer's ``min`` (the help's range, its message)
    and :func:`in_range`'s callback (``inf`` passes ``min``), from one number."""
    return typer.Option(*names, min=least, callback=in_range(least), **options)


def shipped_model(name: str | None) -> str | None:
    """``--model`` callback: a name that is not a shipped model is a usage error (exit 2)."""
    from histomodels import pretrained

    if name is not None and not pretrained.is_pretrained(name):
        known = ", ".join(pretrained.available()) or "none"
        raise typer.BadParameter(f"{name!r} is not a shipped model (shipped: {known}).")
    return name


def require_paths(*paths: str | Path | None, role: str | None = None) -> None:
    """Fail at once when an input path given on the command line does not exist, before
    PyTorch is imported (seconds): the line the library would give later (``role``: the
    trainer's ``<path>: <role> data not found``; else ``<path>: no such file or folder``)."""
    for raw in paths:
        if raw is None:
            continue
        path = Path(raw) if role else Path(raw).expanduser()
        if not path.exists():
            fail(f"{path}: {role} data not found" if role else f"{path}: no such file or folder")


def launched_distributed() -> bool:
    """This process is one rank of several (torchrun, or RANK/WORLD_SIZE set by hand)."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


def use_cpu_cores() -> None:
    """Inference on CPU: use the cores we have (torch's default may oversubscribe)."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


__all__ = [
    "REQUIRED",
    "Device",
    "checked_by",
    "errors",
    "fail",
    "in_range",
    "launched_distributed",
    "log_level",
    "options",
    "progress",
    "require_file_out",
    "require_folder",
    "require_paths",
    "setup_logging",
    "shipped_model",
    "usage_error",
    "use_cpu_cores",
    "with_options",
]
