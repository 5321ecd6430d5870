"""``histomodels demo``: the whole flow offline on the embedded synthetic default."""

from __future__ import annotations

from pathlib import Path

import typer

from histomodels.cli import app


@app.command()
def demo(
    out: Path = typer.Option(
        Path("demo_out"), "--out", help="Folder for everything the demo writes."
    ),
    minutes: float = typer.Option(2.0, help="Training time budget in minutes."),
    seed: int = typer.Option(0, help="Seed for data and training."),
    n_train: int = typer.Option(3000, help="Synthetic training patches."),
) -> None:
    """SYNTHETIC patches → PDF → histofetch extract/filter → train → eval → report."""
    from histomodels.cli import fail
    from histomodels.demo import DemoError, run_demo

    try:
        run_demo(out, minutes=minutes, seed=seed, n_train=n_train)
    except DemoError as exc:
        fail(str(exc))
