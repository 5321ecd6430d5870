"""``histomodels`` command line: thin Typer wrappers over the library."""

from __future__ import annotations

from typing import Annotated

import typer

# Shared by every command that runs a model.
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 [auto: CUDA if available].")]

app = typer.Typer(
    name="histomodels",
    help="Train, tune, fine-tune, evaluate and ship models for 96x96 H&E patches (PCam).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def fail(msg: str) -> None:
    """One ``error: …`` line on stderr and exit code 1 (the CLI's answer to bad input)."""
    from histocore.io import one_line

    typer.echo(f"error: {one_line(msg)}", err=True)
    raise typer.Exit(1)


# Each module adds its commands to ``app`` / ``data_app`` when imported.
from histomodels.cli import data as _data  # noqa: E402,F401
from histomodels.cli import demo as _demo  # noqa: E402,F401
from histomodels.cli import ensemble as _ensemble  # noqa: E402,F401
from histomodels.cli import evaluate as _evaluate  # noqa: E402,F401
from histomodels.cli import train as _train  # noqa: E402,F401

__all__ = ["Device", "app", "data_app", "fail"]
