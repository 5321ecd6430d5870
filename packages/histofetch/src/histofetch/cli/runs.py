"""``histofetch review``, ``status``, ``merge`` and ``export``: what is done with a run folder."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from histocore.cli import home_path
from histocore.export import ExportFormat
from histocore.io import one_line, path_shown
from histofetch.cli._common import RUN_DEFAULT, Run, errors, fail, require_file, require_folder


def review(
    run: Run = RUN_DEFAULT,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 = a free port.")] = 0,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind (only this machine by default); the page answers only "
            "browsers that use this address or localhost, so 0.0.0.0 serves no other machine.",
        ),
    ] = "127.0.0.1",
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Do not open a browser tab.")
    ] = False,
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Name stored with each answer \\[user name].")
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option(
            "--scores",
            help="A `histomodels eval --manifest` output: scores, heatmaps.",
            parser=home_path,
        ),
    ] = None,
) -> None:
    """Confirm or correct labels in the browser: one figure at a time, keyboard first
    (m / n / u, arrows, z undo); every answer is saved into the manifest at once."""
    from histofetch.review.server import serve

    require_folder(scores)
    with errors(), contextlib.suppress(KeyboardInterrupt):
        try:
            serve(
                run,
                host=host,
                port=port,
                reviewer=reviewer,
                scores=scores,
                open_browser=not no_browser,
                announce=lambda line: typer.echo(line, err=True),
            )
        except OSError as exc:  # port in use, cannot bind
            fail(f"{host}:{port}: cannot serve ({exc.strerror or exc})")


def status(
    run: Run = RUN_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Counts per stage, route, licence and failure reason."""
    from histofetch.status import format_status, run_status

    with errors():
        info = run_status(run)
    print(json.dumps(info, indent=2) if as_json else format_status(info))


def merge(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders to merge (e.g. the shards).", parser=home_path)
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The merged run folder.", parser=home_path)
    ],
) -> None:
    """Join run folders into one: records deduplicated by id and PMCID, images by sha256."""
    from histocore.io import one_line
    from histofetch.merge import merge_runs

    require_folder(*runs, out, what="run folder")
    with errors():
        summary = merge_runs(list(runs), out)
    for line in summary.warnings():  # files brought from outside an input: never silently
        typer.echo(f"warning: {one_line(line)}", err=True)
    print(summary.line())


def export(
    ctx: typer.Context,
    run: Run = RUN_DEFAULT,
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="File format (parquet needs pyarrow: histocore\\[parquet]) \\[default: from the "
            "--out suffix: .csv, .parquet, .jsonl/.json; else jsonl].",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output file, its missing folders made "
            "[RUN/manifest.jsonl, RUN/export.csv|parquet].",
            parser=home_path,
        ),
    ] = None,
) -> None:
    """Write the run's rows from its store: the manifest (JSONL), CSV or Parquet."""
    from histocore.errors import UsageError
    from histocore.export import export_format, export_run

    try:
        written = export_format(out, fmt)
    except UsageError as exc:  # Parquet into r.csv: a usage error, before anything is read
        raise typer.BadParameter(str(exc), ctx=ctx, param_hint=["--format", "--out"]) from None
    require_file(out)
    with errors():  # parquet without pyarrow is a DomainError: one line saying what to install
        path = export_run(run, written, out)
    print(one_line(f"exported {path_shown(run)} → {path_shown(path)}"))  # ./~/x: not $HOME's
