"""``histofetch extract`` and ``filter``: PDFs to images, images to kept H&E panels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from histocore.io import path_shown
from histocore.manifest import MANIFEST_NAME, STORE_NAME
from histofetch.cli._common import (
    DEFAULT_RECORD_TIMEOUT_S,
    RUN_DEFAULT,
    Jobs,
    RecordTimeout,
    Retry,
    Run,
    errors,
    fail,
    fail_on_killers,
    fraction,
    kept_line,
    progress,
    record_limit,
    say_default_run,
)


def _check_paths(texts: list[str] | None) -> list[str] | None:
    """``extract``'s paths callback: an empty path (``"$PDFS"`` with the variable unset) is a
    usage error (exit 2); as ``Path("")`` it was ".", and every PDF under the current folder
    was ingested."""
    if texts and any(not text.strip() for text in texts):
        raise typer.BadParameter("an empty path (an unset variable?); give PDF files or folders")
    return texts


def extract(
    ctx: typer.Context,
    paths: Annotated[
        list[str] | None,  # str, not Path: Path("") is ".", and "" must not mean this folder
        typer.Argument(
            callback=_check_paths,
            help="Local PDFs/folders; default: the run's PDFs.",
        ),
    ] = None,
    run: Run = RUN_DEFAULT,
    min_size: Annotated[
        int, typer.Option("--min-size", min=1, help="Drop images smaller (px).")
    ] = 32,
    retry_failed: Retry = False,
    jobs: Jobs = 1,
    record_timeout: RecordTimeout = DEFAULT_RECORD_TIMEOUT_S,
) -> None:
    """Extract every embedded raster image of every PDF (PNG + manifest rows)."""
    from histofetch.extract import run_extract

    limit, isolate = record_limit(ctx, record_timeout)
    pdfs = [Path(text) for text in paths or []]
    if not pdfs:
        with errors():
            _check_run_to_extract(run)
    with errors(), progress():
        summary = run_extract(
            run, pdfs, min_size=min_size, retry_failed=retry_failed, jobs=jobs,
            record_timeout=limit, isolate=isolate,
        )  # fmt: skip
    print(summary.line())
    say_default_run(ctx, run)
    if pdfs:
        _warn_failed_local(run, pdfs)
    fail_on_killers(run, summary)


def _check_run_to_extract(run: Path) -> None:
    """With no PDFs given extract takes the run's, so the run must be there: a missing
    folder is :meth:`Manifest.load`'s ``RUN: no such folder`` (as every command says it;
    ``runs/mnie`` said ``no manifest here; give PDF files/folders…``), a folder without a
    run says to give PDFs, one that cannot be read is its ``OSError`` (``RUN/manifest.jsonl:
    permission denied``, a traceback before)."""
    from histocore.errors import ManifestError
    from histocore.manifest import Manifest

    if any((run / name).exists() for name in (MANIFEST_NAME, STORE_NAME)):
        return
    if not os.path.lexists(run):
        Manifest.load(run).close()  # raises: 'RUN: no such folder (give a histofetch run …)'
    raise ManifestError(
        f"{path_shown(run)}: no manifest here; give PDF files/folders or run `histofetch download`"
    )


def _warn_failed_local(run: Path, paths: list[Path], most: int = 10) -> None:
    """One ``warning: <pdf>: <reason>`` line per PDF named on the command line (or found in
    a named folder) whose extraction failed, so the summary's count has names; the run
    went on with the others, as for downloaded PDFs."""
    from histocore.io import one_line
    from histocore.manifest import Manifest
    from histofetch.extract import pdfs_in_folder

    named: set[Path] = set()
    for path in paths:
        if path.is_dir():
            # the PDFs extract read: a loop link named x.pdf in the folder (skipped there)
            # made resolve() raise RuntimeError here, a traceback after the run's summary
            named.update(p.resolve() for p in pdfs_in_folder(path))
        else:
            named.add(path.resolve())
    with Manifest.load(run) as manifest:
        bad = [
            (shown, rec.reason or "failed")
            for rec in manifest.records.values()
            if rec.status == "failed" and rec.failed_stage == "extracted" and rec.pdf_path
            for shown in [manifest.resolve(rec.pdf_path)]
            if shown.resolve() in named
        ]
    for shown, reason in bad[:most]:
        reason = reason.removesuffix(f": {shown}")  # the reason may end with the path
        typer.echo(f"warning: {one_line(f'{shown}: {reason}')}", err=True)
    if len(bad) > most:
        typer.echo(f"warning: and {len(bad) - most} more failed PDFs (histofetch status)", err=True)


def _check_explain(text: str | None) -> str | None:
    """``--explain ''`` is a usage error (exit 2): it ran the whole filter instead."""
    if text is not None and not text.strip():
        raise typer.BadParameter("an empty image id; give an id or its tail, e.g. p011_003")
    return text


def _default(name: str) -> str:
    """`` [default: 0.5]`` for a filter threshold option whose value, when not given, is
    the decision's own (:class:`~histofetch.decide.rules.Thresholds`): written as Typer
    writes ``--purple``'s, from the one place the number is kept."""
    from histofetch.decide.rules import Thresholds

    return f" \\[default: {getattr(Thresholds(), name):g}]"  # rich would take it as markup


def filter_(
    ctx: typer.Context,
    run: Run = RUN_DEFAULT,
    purple: Annotated[
        float, fraction(help="Min share of H&E-coloured pixels in the tissue region.")
    ] = 0.3,
    min_he: Annotated[
        float | None, fraction("--min-he", help=f"Min H&E (HED) score.{_default('min_he')}")
    ] = None,
    min_tissue: Annotated[
        float | None,
        fraction("--min-tissue", help=f"Min tissue share of the image.{_default('min_tissue')}"),
    ] = None,
    min_blocks: Annotated[
        int | None,
        typer.Option("--min-blocks", min=1, help=f"Min tissue blocks.{_default('min_blocks')}"),
    ] = None,
    max_dark: Annotated[
        float | None, fraction("--max-dark", help=f"Max dark-pixel share.{_default('max_dark')}")
    ] = None,
    min_side: Annotated[
        int | None,
        typer.Option(
            "--min-side",
            min=1,
            help=f"Smaller images are not judged (px).{_default('min_side')}",
        ),
    ] = None,
    rescore: Annotated[
        bool, typer.Option("--rescore", help="Re-read and re-score every image.")
    ] = False,
    sheet: Annotated[bool, typer.Option("--sheet/--no-sheet", help="Write sheets/*.jpg.")] = True,
    panels: Annotated[
        bool, typer.Option("--panels/--no-panels", help="Split compound figures into panels.")
    ] = True,
    explain_id: Annotated[
        str | None,
        typer.Option(
            "--explain",
            metavar="ID",
            callback=_check_explain,
            help="Print every signal behind one decision.",
        ),
    ] = None,
    retry_failed: Retry = False,
    jobs: Jobs = 1,
    record_timeout: RecordTimeout = DEFAULT_RECORD_TIMEOUT_S,
) -> None:
    """Split figures into panels, score each image once (colour, CNN, caption), keep H&E."""
    from histocore.manifest import Manifest
    from histofetch.filter import explain, run_filter

    if explain_id is not None:
        with errors(), Manifest.load(run) as manifest:
            try:
                text = explain(manifest, explain_id)
            except KeyError as exc:
                fail(f"{path_shown(run)}: {exc.args[0]}")
        print(text)
        return
    limit, isolate = record_limit(ctx, record_timeout)
    with errors(), progress():
        summary = run_filter(
            run,
            purple=purple,
            sheet=sheet,
            rescore=rescore,
            retry_failed=retry_failed,
            jobs=jobs,
            record_timeout=limit,
            isolate=isolate,
            min_he=min_he,
            min_tissue=min_tissue,
            min_blocks=min_blocks,
            max_dark=max_dark,
            min_side=min_side,
            panels=panels,
        )
    print(summary.line())
    print(kept_line(run, sheet))
    say_default_run(ctx, run)
    fail_on_killers(run, summary)
