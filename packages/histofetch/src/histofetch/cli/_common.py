"""What every ``histofetch`` command shares: options, their checks, the error line, progress.

``fail``, ``errors``, ``progress`` and ``setup_logging`` are the ones both command lines use
(:mod:`histocore.cli`); command modules import them from here and never from
``histofetch.cli`` itself, so the package's ``__init__`` can assemble the app from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from histocore.cli import (
    UsageStyle,
    errors,
    fail,
    home_path,
    out_of_range,
    progress,
    require_file,
    require_folder,
    setup_logging,
)
from histocore.errors import UsageError
from histocore.io import one_line, path_shown
from histofetch.choices import Database, LicencePolicy
from histofetch.record_time import (
    DEFAULT_RECORD_TIMEOUT_S,
    RECORD_TIMEOUT_ENV,
    RECORD_TIMEOUT_RANGE,
)

if TYPE_CHECKING:
    from histofetch.stage import StageSummary


class Command(UsageStyle, TyperCommand):
    """Every ``histofetch`` command (``app.command(..., cls=Command)``): see
    :class:`histocore.cli.UsageStyle`."""


class Group(UsageStyle, TyperGroup):
    """The ``histofetch`` app and its command groups (``typer.Typer(cls=Group)``)."""


def _run_folder(path: Path) -> Path:
    """``--run`` callback: a file given as the run folder is one ``error:`` line, exit 1
    (the file system's state, as a missing manifest is; not a malformed option)."""
    require_folder(path, what="run folder")
    return path


Run = Annotated[
    Path,
    typer.Option(
        "--run",
        "-r",
        callback=_run_folder,
        help="Run folder (holds the manifest).",
        parser=home_path,
    ),
]
RUN_DEFAULT = Path("runs/default")


def say_default_run(ctx: typer.Context, run: Path) -> None:
    """After a stage's summary, one line saying where it wrote when ``--run`` was not
    given: ``histofetch extract paper.pdf`` said ``extracted: 1 done, …`` and nothing of
    the ``runs/default`` folder it had made, so a user who forgot ``--run`` could not tell
    where the images went. Every stage that writes into the run folder says it (``filter``'s
    last line names the folder only when a sheet was written: ``kept 0 of 0 scored
    images`` names none)."""
    source = ctx.get_parameter_source("run")
    if source is not None and source.name == "DEFAULT":
        typer.echo(f"run folder: {one_line(str(run))} (no --run given)", err=True)


def _check_query(text: str) -> str:
    """The query argument's callback: the library's check (an empty or blank query) as a
    usage error (exit 2) before any request."""
    from histofetch.search import check_query

    try:
        return check_query(text)
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None


Query = Annotated[
    str,
    typer.Argument(callback=_check_query, help="PubMed query, e.g. 'lymph node metastasis'."),
]
Max = Annotated[int | None, typer.Option("--max", min=1, help="Keep at most this many hits.")]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="NCBI_API_KEY", help="NCBI API key (10 requests/s instead of 3)."),
]
Email = Annotated[
    str | None, typer.Option(envvar="NCBI_EMAIL", help="Your e-mail, sent to NCBI as asked.")
]


def _check_date(text: str | None) -> str | None:
    """``--mindate``/``--maxdate`` callback: NCBI's date forms YYYY, YYYY/MM or YYYY/MM/DD
    (a real date); anything else is a usage error (exit 2), not a search NCBI refuses."""
    import datetime as dt
    import re

    if text is None:
        return None
    m = re.fullmatch(r"(\d{4})(?:/(\d{1,2})(?:/(\d{1,2}))?)?", text.strip())
    try:
        if m is None:
            raise ValueError
        dt.date(int(m[1]), int(m[2] or 1), int(m[3] or 1))  # month 13, 31 April, ...
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date as YYYY, YYYY/MM or YYYY/MM/DD") from None
    return text.strip()


def check_date_range(mindate: str | None, maxdate: str | None) -> None:
    """``--mindate`` after ``--maxdate`` is a usage error (exit 2): NCBI would answer an
    empty search. Partial dates cover their whole year or month (2021 ≤ 2021/06)."""
    if not (mindate and maxdate):
        return

    def parts(text: str, fill: int) -> tuple[int, ...]:
        nums = [int(p) for p in text.split("/")]
        return tuple(nums + [fill] * (3 - len(nums)))

    if parts(mindate, 0) > parts(maxdate, 99):
        raise typer.BadParameter(
            f"{mindate!r} is after --maxdate {maxdate!r}", param_hint="'--mindate'"
        )


MinDate = Annotated[
    str | None,
    typer.Option(callback=_check_date, help="Published from: YYYY, YYYY/MM or YYYY/MM/DD."),
]
MaxDate = Annotated[
    str | None,
    typer.Option(callback=_check_date, help="Published until: YYYY, YYYY/MM or YYYY/MM/DD."),
]
OaOnly = Annotated[
    bool, typer.Option("--open-access-only", help="Only articles in the PMC open-access subset.")
]
Retry = Annotated[
    bool, typer.Option("--retry-failed", help="Try records that failed before again.")
]
Db = Annotated[
    Database,
    typer.Option(help="Search PubMed, or PMC's open-access subset (every hit in the bucket)."),
]
Licence = Annotated[
    LicencePolicy,
    typer.Option(
        help="Keep articles whose licence allows this reuse: commercial (CC0, CC BY, BY-SA, "
        "BY-ND), noncommercial (also the NC licences) or any (TDM and unknown too)."
    ),
]
Retracted = Annotated[
    bool, typer.Option("--include-retracted", help="Keep retracted articles (skipped by default).")
]
#: The most workers ``--jobs`` starts: processes (extract, filter; each holds PyMuPDF and
#: the H&E model, a few hundred MB) and download threads (each host keeps its own rate, so
#: more only wait). ``--jobs 100000`` tried to start that many.
MAX_JOBS, MAX_NET_JOBS = 256, 64

Jobs = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        max=MAX_JOBS,
        help="Worker processes (extract, filter): records at once.",
    ),
]


def number_from(least: float, most: float) -> Callable[[Any], float]:
    """A float option's parser for ``least <= x <= most`` (kept as ``min``/``max`` too, for
    the help's range). Typer's own check said 'Input should be less than or equal to 1'
    for ``nan``; this says it is not a number, and a number outside the range as every
    range check says it (``1.5 is not in the range 0.0<=x<=1.0.``)."""

    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{value!r} is not a number") from None
        if math.isnan(number):
            raise typer.BadParameter(
                f"{value!r} is not a number; give one from {least:g} to {most:g}"
            )
        if not least <= number <= most:
            raise typer.BadParameter(out_of_range(str(value), least, most))
        return number

    return parse


def bounded(least: float, most: float, *names: str, **options: Any) -> Any:
    """A float option from ``least`` to ``most``: Typer's ``min``/``max`` (the help's
    range) and :func:`number_from`'s parser, from one pair of numbers."""
    return typer.Option(*names, min=least, max=most, parser=number_from(least, most), **options)


def fraction(*names: str, help: str) -> Any:
    """A 0..1 float option (``--purple``, ``--min-he``, ``--min-tissue``, ``--max-dark``)."""
    return bounded(0.0, 1.0, *names, help=help)


#: ``--record-timeout`` (extract, filter, run): see :mod:`histofetch.record_time`.
RecordTimeout = Annotated[
    float,
    bounded(
        RECORD_TIMEOUT_RANGE.least,
        RECORD_TIMEOUT_RANGE.most,
        "--record-timeout",
        metavar="SECONDS",
        help="Seconds one record's work may run in a worker (start-up not "
        "counted) before the worker is stopped; tried once more alone, then the record "
        "fails as 'timed out'. Given with --jobs 1, that one job runs in a worker too. "
        f"Unless given, {RECORD_TIMEOUT_ENV} if set.",
    ),
]
NetJobs = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        min=1,
        max=MAX_NET_JOBS,
        help="Records downloaded at once (each host keeps its own rate).",
    ),
]


def _check_shard(text: str | None) -> str | None:
    """``--shard`` callback: not ``K/N`` with 1 <= K <= N is a usage error (exit 2)."""
    from histofetch.shard import parse_shard

    if text is not None:
        try:
            parse_shard(text)
        except UsageError as exc:
            raise typer.BadParameter(str(exc).removeprefix(f"--shard {text!r}: ")) from None
    return text


Shard = Annotated[
    str | None,
    typer.Option(
        callback=_check_shard,
        help="Keep shard K of N of the hits (K/N, e.g. 1/4): one job per shard.",
    ),
]

Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Also show the library's debug lines (stderr).")
]


def licence_policy(licence: str, include_retracted: bool):  # -> Policy
    from histofetch.sources import Policy

    return Policy(licence=licence, include_retracted=include_retracted)


def shard_parts(text: str | None) -> tuple[int, int] | None:
    from histofetch.shard import parse_shard

    with errors():
        return None if text is None else parse_shard(text)


def net_config(api_key: str | None, email: str | None):  # -> NetConfig
    from histofetch.http import NetConfig

    with errors():
        net = NetConfig()  # reads HISTOFETCH_* overrides from the environment
    net.api_key = api_key or None
    net.email = email or None
    return net


def record_limit(ctx: typer.Context, option: float) -> tuple[float, bool]:
    """The per-record time limit and whether the user gave one: ``--record-timeout``, else
    ``HISTOFETCH_RECORD_TIMEOUT`` (out of range: one ``error: environment variable …``
    line, exit 1, like the other ``HISTOFETCH_*`` numbers), else the default. A limit given
    with one job runs the work in one worker process (``isolate``), not in the command's
    own process, which the limit could not stop (:mod:`histofetch.record_time`). Asked only
    by work that is timed (``filter --explain`` is not)."""
    from histofetch.record_time import limit_from_env

    source = ctx.get_parameter_source("record_timeout")
    if source is not None and source.name == "COMMANDLINE":
        return option, True
    with errors():
        limit = limit_from_env()
    return (option, False) if limit is None else (limit, True)


def kept_line(run: Path, sheet: bool = True) -> str:
    """What ``filter`` (and ``run`` after it) says under its summary line: how many images
    were kept and where the contact sheets are, when they show any image."""
    from histofetch.status import run_status, split_note

    with errors():
        info = run_status(run)
    # an image filter could not read is decided (rejected, 'unreadable image') but not
    # scored: 'kept 8 of 11 scored images' counted 2 unreadable ones among the 11. Counted
    # as status counts them: min(failed images, rejected) took a failed row not decided
    # for an unreadable one, and a scored rejected image out of the scored
    unreadable, scored = info["unreadable"], info["scored"]  # scored counts them not
    # filter writes no sheet when it has nothing to show (it wrote four blank ones, and a
    # search that found nothing sent the user to them), and removes the earlier ones
    # (with none kept there is no kept-001.jpg: the rejected sheets are named all the same)
    shown = sheet and any((run / "sheets" / f"{k}-001.jpg").is_file() for k in ("kept", "rejected"))
    where = f"; sheets in {path_shown(run / 'sheets')}" if shown else ""
    images = "scored image" if scored == 1 else "scored images"
    also = f" ({unreadable} unreadable)" if unreadable else ""
    # escaped: a run folder named with a newline or an escape broke the line (one_line)
    return one_line(f"kept {info['kept']} of {scored} {images}{also}{split_note(info)[1:]}{where}")


def fail_on_killers(run: Path, *summaries: StageSummary) -> None:
    """Exit 1 with one line when records failed because reading them killed the process
    (the summary is printed first; the other records are done)."""
    from histofetch.stage import MAX_UNFINISHED_ATTEMPTS

    for summary in summaries:
        if summary.killers:
            n, ids = len(summary.killers), summary.killers
            named = ", ".join(ids[:5]) + (f" and {n - 5} more" if n > 5 else "")
            fail(
                f"{run}: {summary.stage}: {n} record{'s' if n > 1 else ''} failed: "
                f"{MAX_UNFINISHED_ATTEMPTS} attempts at reading {named} killed the process "
                "(crash, out of memory or killed); the others are done; --retry-failed "
                "tries again"
            )


__all__ = [
    "DEFAULT_RECORD_TIMEOUT_S",
    "MAX_JOBS",
    "MAX_NET_JOBS",
    "RUN_DEFAULT",
    "ApiKey",
    "Command",
    "Db",
    "Email",
    "Group",
    "Jobs",
    "Licence",
    "Max",
    "MaxDate",
    "MinDate",
    "NetJobs",
    "OaOnly",
    "Query",
    "RecordTimeout",
    "Retracted",
    "Retry",
    "Run",
    "Shard",
    "Verbose",
    "errors",
    "fail",
    "fail_on_killers",
    "fraction",
    "kept_line",
    "licence_policy",
    "net_config",
    "progress",
    "record_limit",
    "require_file",
    "require_folder",
    "say_default_run",
    "setup_logging",
    "shard_parts",
]
