"""``histofetch`` command line: each command wires one stage; the stages hold the logic.

Bad input and failed services end in one ``error: …`` line and exit 1
(:func:`histocore.cli.errors`); progress bars go to stderr, summaries to stdout. Each module
holds the commands of one area (``fetch``: search, download, run; ``images``: extract,
filter; ``runs``: review, status, merge, export); this module only assembles them into one app.
"""

from __future__ import annotations

import typer

from histocore.cli import help_text
from histofetch.cli import fetch, images, runs
from histofetch.cli._common import Command, Group, Verbose, setup_logging

app = typer.Typer(
    name="histofetch",
    help="Mine PubMed/PMC for H&E figures: search → download → extract → filter → manifest.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=Group,
)


@app.callback()
def _main(ctx: typer.Context, verbose: Verbose = False) -> None:
    """Mine PubMed/PMC for H&E figures: search → download → extract → filter → manifest."""
    # taken away when the command ends: a library call later in this process is not shown
    ctx.call_on_close(setup_logging(verbose=verbose))


app.command("search", cls=Command, help=help_text(fetch.search))(fetch.search)
app.command("download", cls=Command, help=help_text(fetch.download))(fetch.download)
app.command("run", cls=Command, help=help_text(fetch.run_all))(fetch.run_all)
app.command("extract", cls=Command, help=help_text(images.extract))(images.extract)
app.command("filter", cls=Command, help=help_text(images.filter_))(images.filter_)
app.command("review", cls=Command, help=help_text(runs.review))(runs.review)
app.command("status", cls=Command, help=help_text(runs.status))(runs.status)
app.command("merge", cls=Command, help=help_text(runs.merge))(runs.merge)
app.command("export", cls=Command, help=help_text(runs.export))(runs.export)

__all__ = ["app"]
