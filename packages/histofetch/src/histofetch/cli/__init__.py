"""``histofetch`` command line: each command wires one stage; the stages hold the logic.

Bad input and failed services end in one ``error: …`` line and exit 1
(:func:`histocore.cli.errors`); progress bars go to stderr, summaries to stdout. Each module
holds the commands of one area (``fetch``: search, download, run; ``images``: extract,
filter; ``runs``: review, status, merge, export); this module only assembles them into one app.
"""

from __future__ import annotations

import typer

from histofetch.cli import fetch, images, runs
from histofetch.cli._common import Verbose, setup_logging

app = typer.Typer(
    name="histofetch",
    help="Mine PubMed/PMC for H&E figures: search → download → extract → filter → manifest.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: Verbose = False) -> None:
    """Mine PubMed/PMC for H&E figures: search → download → extract → filter → manifest."""
    setup_logging(verbose=verbose)


app.command("search")(fetch.search)
app.command("download")(fetch.download)
app.command("run")(fetch.run_all)
app.command("extract")(images.extract)
app.command("filter")(images.filter_)
app.command("review")(runs.review)
app.command("status")(runs.status)
app.command("merge")(runs.merge)
app.command("export")(runs.export)

__all__ = ["app"]
