"""``histomodels`` command line: thin Typer wrappers over the library.

Each module holds the commands of one area (``data``, ``train``, ``evaluate``, ``demo``);
this module only assembles them into one app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from histomodels.cli import data, demo, ensemble, evaluate, train
from histomodels.cli._common import setup_logging

app = typer.Typer(
    name="histomodels",
    help="Train, tune, fine-tune, evaluate and ship models for 96x96 H&E patches (PCam).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show the library's debug lines (stderr).")
    ] = False,
) -> None:
    """Train, tune, fine-tune, evaluate and ship models for 96x96 H&E patches (PCam)."""
    setup_logging(verbose=verbose)


data_app = typer.Typer(help="Download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

data_app.command("download")(data.download)
data_app.command("info")(data.info)
data_app.command("stain")(data.stain)
app.command("train")(train.train_cmd)
app.command("finetune")(train.finetune_cmd)
app.command("tune")(train.tune_cmd)
app.command("eval")(evaluate.eval_cmd)
app.command("label")(evaluate.label_cmd)
app.command("report")(evaluate.report_cmd)
app.command("export")(evaluate.export_cmd)
app.command("predict")(evaluate.predict_cmd)
app.command("ensemble")(ensemble.ensemble_cmd)
app.command("demo")(demo.demo)

__all__ = ["app"]
