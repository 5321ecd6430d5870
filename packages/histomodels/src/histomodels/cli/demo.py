"""``histomodels demo``: the whole flow offline on the embedded synthetic default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histocore.cli import home_path
from histomodels.choices import MAX_SEED
from histomodels.cli._common import errors, in_range, progress, require_folder


def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for everything the demo writes.", parser=home_path)
    ] = Path("demo_out"),
    minutes: Annotated[
        float,
        typer.Option(callback=in_range(0, low_open=True), help="Training time budget in minutes."),
    ] = 2.0,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed for data and training.")] = 0,
    n_train: Annotated[int, typer.Option(min=1, help="Synthetic training patches.")] = 3000,
) -> None:
    """SYNTHETIC patches → PDF → histofetch extract/filter → train → eval → report."""
    require_folder(out)
    from histomodels.demo import run_demo

    with errors(), progress():
        run_demo(out, minutes=minutes, seed=seed, n_train=n_train)
