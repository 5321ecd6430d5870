"""``histofetch`` command line: each command wires one stage; the stages hold the logic."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from histofetch.manifest import Manifest, ManifestError

app = typer.Typer(
    name="histofetch",
    help="Mine PubMed/PMC for H&E figures: search → download → extract → filter → manifest.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

RunOpt = typer.Option(Path("runs/default"), "--run", "-r", help="Run folder (holds the manifest).")


def fail(message: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit."""
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def search(query: str, run: Path = RunOpt) -> None:
    """Search PubMed and record every hit (title, journal, year, DOI, PMCID, OA status)."""
    fail("search is not implemented yet")


@app.command()
def download(run: Path = RunOpt) -> None:
    """Fetch one PDF per record: PMC open access, then Europe PMC, then pubmed2pdf."""
    fail("download is not implemented yet")


@app.command()
def extract(
    paths: list[Path] = typer.Argument(None, help="Local PDFs/folders; default: the run's PDFs."),
    run: Path = RunOpt,
) -> None:
    """Extract every embedded raster image of every PDF."""
    fail("extract is not implemented yet")


@app.command("filter")
def filter_(
    run: Path = RunOpt,
    purple: float = typer.Option(0.3, help="Keep images with at least this purple-pixel ratio."),
) -> None:
    """Score every image for H&E and keep the tissue images."""
    fail("filter is not implemented yet")


@app.command()
def status(run: Path = RunOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts per stage and per failure reason."""
    try:
        manifest = Manifest.load(run)
    except ManifestError as exc:
        fail(str(exc))
    kept = manifest.kept_images()
    info = {
        "records": len(manifest.records),
        "pdfs": sum(1 for r in manifest.records.values() if r.pdf_path),
        "images": len(manifest.images),
        "kept": len(kept),
        "failed": sum(1 for r in manifest.records.values() if r.status == "failed"),
        "kept_images": [i.path for i in kept],
    }
    print(json.dumps(info, indent=2) if as_json else info)


if __name__ == "__main__":
    app()
