"""CLI command ``ensemble``: several trained models as one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histocore.cli import home_path_or_stdout
from histocore.io import path_line
from histomodels.cli._common import (
    errors,
    no_model_to_stdout,
    require_file_out,
    require_folder,
)


def _two_or_more(sources: list[str]) -> list[str]:
    """One source is a usage error (exit 2), as the library's own check says."""
    if len(sources) < 2:
        raise typer.BadParameter("an ensemble needs at least two models")
    return sources


def ensemble_cmd(
    sources: Annotated[
        list[str],
        typer.Argument(
            callback=_two_or_more,
            help="Two or more checkpoints, run folders (best.pt) or shipped names (pcam-cnn; "
            "a file of that name: ./pcam-cnn).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Run folder (→ best.pt) or a .pt file; replaces only an earlier ensemble. "
            "Not '-' (no binary output to standard output; a folder named - is ./-).",
            parser=home_path_or_stdout,
        ),
    ],
    tta: Annotated[
        bool, typer.Option("--tta", help="Average the 8 dihedral views inside the model.")
    ] = False,
) -> None:
    """Average the members' calibrated logits (each keeps its own normalisation, input size
    and temperature); eval, predict and export then take OUT like any checkpoint."""
    no_model_to_stdout(out)
    if out.suffix != ".pt":  # a run folder (→ best.pt)
        require_folder(out, what="run folder; a checkpoint file to write ends in .pt")
    else:  # before the members load: 'f/e.pt' with f a file
        require_file_out(out)
    from histomodels.ensemble import write_ensemble

    with errors():
        path = write_ensemble(sources, out, tta=tta)
    shown = path_line(path)
    typer.echo(f"wrote {shown}: ensemble of {len(sources)} model(s){' with TTA' if tta else ''}")
