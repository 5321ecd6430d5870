"""``histomodels`` command line: thin Typer wrappers over the library.

Each module holds the commands of one area (``data``, ``train``, ``evaluate``, ``demo``);
this module only assembles them into one app.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from histocore.cli import help_text
from histomodels.cli import data, demo, ensemble, evaluate, train
from histomodels.cli._common import Command, Group, launched_distributed, setup_logging


class _App(typer.Typer):
    """The Typer app; a rank of distributed training that stops at a bad option (click's
    usage error, before any of our code runs) tells the other ranks, which would otherwise
    wait for it in the join until the 30-minute timeout."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as exc:
            _tell_other_ranks(exc)
            raise


def _tell_other_ranks(exc: SystemExit) -> None:
    if exc.code in (0, None) or not launched_distributed():
        return
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if command not in ("train", "finetune"):  # the commands that join a process group
        return
    # no c10d connect-retry dumps on stderr while the store is tried (torch not loaded yet)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        from histomodels.distributed import report_early_failure

        report_early_failure(exc)  # a no-op when this rank already joined or reported
    except KeyboardInterrupt:  # Ctrl-C while it waits for the others to read it
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


app = _App(
    name="histomodels",
    help="Train, tune, fine-tune, evaluate and ship models for 96x96 H&E patches (PCam).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=Group,
)


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show the library's debug lines (stderr).")
    ] = False,
) -> None:
    """Train, tune, fine-tune, evaluate and ship models for 96x96 H&E patches (PCam)."""
    # taken away when the command ends: a library call later in this process is not shown
    ctx.call_on_close(setup_logging(verbose=verbose))
    _hub_verbosity(verbose)


def _hub_verbosity(verbose: bool) -> None:
    """huggingface_hub's warnings (its download retries...) only with ``-v``, unless the user
    set ``HF_HUB_VERBOSITY`` (which it reads when imported): set on its logger in this process
    through its API, not in the environment, which every child process would inherit."""
    if os.environ.get("HF_HUB_VERBOSITY"):
        return
    try:
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:  # timm brings it; without it nothing of it can speak
        return
    (hub_logging.set_verbosity_warning if verbose else hub_logging.set_verbosity_error)()


data_app = typer.Typer(help="Download and inspect datasets.", no_args_is_help=True, cls=Group)
app.add_typer(data_app, name="data")

data_app.command("download", cls=Command, help=help_text(data.download))(data.download)
data_app.command("info", cls=Command, help=help_text(data.info))(data.info)
data_app.command("stain", cls=Command, help=help_text(data.stain))(data.stain)
app.command("train", cls=Command, help=help_text(train.train_cmd))(train.train_cmd)
app.command("finetune", cls=Command, help=help_text(train.finetune_cmd))(train.finetune_cmd)
app.command("tune", cls=Command, help=help_text(train.tune_cmd))(train.tune_cmd)
app.command("eval", cls=Command, help=help_text(evaluate.eval_cmd))(evaluate.eval_cmd)
app.command("label", cls=Command, help=help_text(evaluate.label_cmd))(evaluate.label_cmd)
app.command("report", cls=Command, help=help_text(evaluate.report_cmd))(evaluate.report_cmd)
app.command("export", cls=Command, help=help_text(evaluate.export_cmd))(evaluate.export_cmd)
app.command("predict", cls=Command, help=help_text(evaluate.predict_cmd))(evaluate.predict_cmd)
app.command("ensemble", cls=Command, help=help_text(ensemble.ensemble_cmd))(ensemble.ensemble_cmd)
app.command("demo", cls=Command, help=help_text(demo.demo))(demo.demo)

__all__ = ["app"]
