"""``histofetch`` command line: each command wires one stage; the stages hold the logic.

Bad input and failed services end in one ``error: …`` line and exit 1
(:func:`histocore.cli.errors`); progress bars go to stderr, summaries to stdout.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from histocore.cli import errors, fail, progress, setup_logging
from histocore.manifest import MANIFEST_NAME, STORE_NAME

if TYPE_CHECKING:
    from histofetch.stage import StageSummary

app = typer.Typer(
    name="histofetch",
    help="Mine PubMed/PMC for H&E figures: search → download → extract → filter → manifest.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

Run = Annotated[
    Path, typer.Option("--run", "-r", file_okay=False, help="Run folder (holds the manifest).")
]
RUN_DEFAULT = Path("runs/default")
Query = Annotated[str, typer.Argument(help="PubMed query, e.g. 'lymph node metastasis'.")]
Max = Annotated[int | None, typer.Option("--max", min=1, help="Keep at most this many hits.")]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="NCBI_API_KEY", help="NCBI API key (10 requests/s instead of 3)."),
]
Email = Annotated[
    str | None, typer.Option(envvar="NCBI_EMAIL", help="Your e-mail, sent to NCBI as asked.")
]
MinDate = Annotated[str | None, typer.Option(help="Published from: YYYY, YYYY/MM or YYYY/MM/DD.")]
MaxDate = Annotated[str | None, typer.Option(help="Published until: YYYY, YYYY/MM or YYYY/MM/DD.")]
OaOnly = Annotated[
    bool, typer.Option("--open-access-only", help="Only articles in the PMC open-access subset.")
]
Retry = Annotated[
    bool, typer.Option("--retry-failed", help="Try records that failed before again.")
]
Db = Annotated[
    str, typer.Option(help="Search PubMed, or PMC's open-access subset (every hit in the bucket).")
]
Licence = Annotated[
    str,
    typer.Option(
        help="Keep articles whose licence allows this reuse: commercial (CC0, CC BY, BY-SA, "
        "BY-ND), noncommercial (also the NC licences) or any (TDM and unknown too)."
    ),
]
Retracted = Annotated[
    bool, typer.Option("--include-retracted", help="Keep retracted articles (skipped by default).")
]
Jobs = Annotated[
    int,
    typer.Option(
        "--jobs", "-j", min=1, help="Worker processes (extract, filter): records at once."
    ),
]
NetJobs = Annotated[
    int,
    typer.Option(
        "--jobs", "-j", min=1, help="Records downloaded at once (each host keeps its own rate)."
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(help="Keep shard K of N of the hits (K/N, e.g. 1/4): one job per shard."),
]

Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Also show the library's debug lines (stderr).")
]


@app.callback()
def _main(verbose: Verbose = False) -> None:
    """Mine PubMed/PMC for H&E figures: search → download → extract → filter → manifest."""
    setup_logging(verbose=verbose)


def _policy(licence: str, include_retracted: bool):  # -> Policy
    from histofetch.licence import POLICIES
    from histofetch.sources import Policy

    if licence not in POLICIES:
        fail(f"--licence {licence!r}: choose one of {', '.join(POLICIES)}")
    return Policy(licence=licence, include_retracted=include_retracted)


def _db(db: str) -> str:
    from histofetch.search import DATABASES

    if db not in DATABASES:
        fail(f"--db {db!r}: choose one of {', '.join(DATABASES)}")
    return db


def _shard(text: str | None) -> tuple[int, int] | None:
    from histofetch.shard import parse_shard

    with errors():
        return None if text is None else parse_shard(text)


def _net(api_key: str | None, email: str | None):  # -> NetConfig
    from histofetch.http import NetConfig

    with errors():
        net = NetConfig()  # reads HISTOFETCH_* overrides from the environment
    net.api_key = api_key or None
    net.email = email or None
    return net


@app.command()
def search(
    query: Query,
    run: Run = RUN_DEFAULT,
    max_results: Max = None,
    api_key: ApiKey = None,
    email: Email = None,
    mindate: MinDate = None,
    maxdate: MaxDate = None,
    open_access_only: OaOnly = False,
    db: Db = "pubmed",
    shard: Shard = None,
) -> None:
    """Search PubMed (or PMC) and record every hit (title, journal, year, DOI, PMCID, OA)."""
    from histofetch.search import run_search

    net = _net(api_key, email)
    parts = _shard(shard)
    with errors(prefix="search failed: "), progress():
        summary = run_search(
            run,
            query,
            max_results=max_results,
            mindate=mindate,
            maxdate=maxdate,
            open_access_only=open_access_only,
            net=net,
            db=_db(db),
            shard=parts,
        )
    print(summary.line())


@app.command()
def download(
    run: Run = RUN_DEFAULT,
    retry_failed: Retry = False,
    api_key: ApiKey = None,
    email: Email = None,
    licence: Licence = "any",
    include_retracted: Retracted = False,
    jobs: NetJobs = 4,
) -> None:
    """Fetch article files: PMC Cloud Service figures, Europe PMC, then PDFs."""
    from histofetch.download import run_download

    net = _net(api_key, email)
    policy = _policy(licence, include_retracted)
    with errors(prefix="download failed: "), progress():
        summary = run_download(run, net=net, retry_failed=retry_failed, policy=policy, jobs=jobs)
    print(summary.line())


@app.command("run")
def run_all(
    query: Query,
    run: Run = RUN_DEFAULT,
    max_results: Max = None,
    api_key: ApiKey = None,
    email: Email = None,
    mindate: MinDate = None,
    maxdate: MaxDate = None,
    open_access_only: OaOnly = False,
    retry_failed: Retry = False,
    purple: Annotated[
        float, typer.Option(help="Filter threshold (see `histofetch filter`).")
    ] = 0.3,
    db: Db = "pubmed",
    licence: Licence = "any",
    include_retracted: Retracted = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Worker processes for extract and filter.")
    ] = 1,
    net_jobs: Annotated[
        int,
        typer.Option(min=1, help="Records downloaded at once (each host keeps its rate)."),
    ] = 4,
    shard: Shard = None,
) -> None:
    """search → download → extract → filter; re-running continues where it stopped."""
    from histofetch.pipeline import run_pipeline
    from histofetch.stage import StageSummary

    net = _net(api_key, email)
    policy = _policy(licence, include_retracted)
    db = _db(db)
    parts = _shard(shard)
    summaries: list[StageSummary] = []
    with errors(prefix="run stopped (re-run to continue): "), progress():
        for summary in run_pipeline(
            run,
            query,
            net=net,
            max_results=max_results,
            mindate=mindate,
            maxdate=maxdate,
            open_access_only=open_access_only,
            retry_failed=retry_failed,
            purple=purple,
            db=db,
            policy=policy,
            shard=parts,
            jobs=jobs,
            net_jobs=net_jobs,
        ):
            print(summary.line(), flush=True)
            if isinstance(summary, StageSummary):
                summaries.append(summary)
    _fail_on_killers(run, *summaries)


@app.command()
def extract(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Local PDFs/folders; default: the run's PDFs."),
    ] = None,
    run: Run = RUN_DEFAULT,
    min_size: Annotated[
        int, typer.Option("--min-size", min=1, help="Drop images smaller (px).")
    ] = 32,
    retry_failed: Retry = False,
    jobs: Jobs = 1,
) -> None:
    """Extract every embedded raster image of every PDF (PNG + manifest rows)."""
    from histofetch.extract import run_extract

    if not paths and not any((run / name).exists() for name in (MANIFEST_NAME, STORE_NAME)):
        fail(f"{run}: no manifest here; give PDF files/folders or run `histofetch download`")
    with errors(), progress():
        summary = run_extract(
            run, list(paths or []), min_size=min_size, retry_failed=retry_failed, jobs=jobs
        )
    print(summary.line())
    if paths:
        _warn_failed_local(run, paths)
    _fail_on_killers(run, summary)


def _warn_failed_local(run: Path, paths: list[Path], most: int = 10) -> None:
    """One ``warning: <pdf>: <reason>`` line per PDF named on the command line (or found in
    a named folder) whose extraction failed, so the summary's count has names; the run
    went on with the others, as for downloaded PDFs."""
    from histocore.io import one_line
    from histocore.manifest import Manifest

    named: set[Path] = set()
    for path in paths:
        if path.is_dir():
            named.update(p.resolve() for p in path.rglob("*") if p.suffix.lower() == ".pdf")
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


@app.command("filter")
def filter_(
    run: Run = RUN_DEFAULT,
    purple: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Min share of H&E-coloured pixels in the tissue region."
        ),
    ] = 0.3,
    min_he: Annotated[
        float | None, typer.Option("--min-he", min=0.0, max=1.0, help="Min H&E (HED) score [0.5].")
    ] = None,
    min_tissue: Annotated[
        float | None,
        typer.Option(
            "--min-tissue", min=0.0, max=1.0, help="Min tissue share of the image [0.02]."
        ),
    ] = None,
    min_blocks: Annotated[
        int | None, typer.Option("--min-blocks", min=1, help="Min tissue blocks [2].")
    ] = None,
    max_dark: Annotated[
        float | None,
        typer.Option("--max-dark", min=0.0, max=1.0, help="Max dark-pixel share [0.2]."),
    ] = None,
    min_side: Annotated[
        int | None,
        typer.Option("--min-side", min=1, help="Smaller images are not judged (px) [64]."),
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
        typer.Option("--explain", metavar="ID", help="Print every signal behind one decision."),
    ] = None,
    retry_failed: Retry = False,
    jobs: Jobs = 1,
) -> None:
    """Split figures into panels, score each image once (colour, CNN, caption), keep H&E."""
    from histocore.manifest import Manifest
    from histofetch.filter import explain, run_filter
    from histofetch.status import run_status, split_note

    if explain_id:
        with errors(), Manifest.load(run) as manifest:
            try:
                text = explain(manifest, explain_id)
            except KeyError as exc:
                fail(f"{run}: {exc.args[0]}")
        print(text)
        return
    with errors(), progress():
        summary = run_filter(
            run,
            purple=purple,
            sheet=sheet,
            rescore=rescore,
            retry_failed=retry_failed,
            jobs=jobs,
            min_he=min_he,
            min_tissue=min_tissue,
            min_blocks=min_blocks,
            max_dark=max_dark,
            min_side=min_side,
            panels=panels,
        )
        info = run_status(run)
    print(summary.line())
    where = f"; sheets in {run / 'sheets'}" if sheet else ""
    print(f"kept {info['kept']} of {info['scored']} scored images{split_note(info)[1:]}{where}")
    _fail_on_killers(run, summary)


def _fail_on_killers(run: Path, *summaries: StageSummary) -> None:
    """Exit 1 with one line when records failed because reading them killed the process
    (the summary is printed first; the other records are done)."""
    from histofetch.stage import MAX_UNFINISHED_ATTEMPTS

    for summary in summaries:
        if summary.killers:
            n, ids = len(summary.killers), summary.killers
            named = ", ".join(ids[:5]) + (f" and {n - 5} more" if n > 5 else "")
            fail(
                f"{run}: {summary.stage}: {n} record{'s' if n > 1 else ''} failed: "
                f"{MAX_UNFINISHED_ATTEMPTS} attempts at reading {named} killed the process "
                "(crash, out of memory or killed); the others are done; --retry-failed "
                "tries again"
            )


@app.command()
def review(
    run: Run = RUN_DEFAULT,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 = a free port.")] = 0,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind (only this machine by default).")
    ] = "127.0.0.1",
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Do not open a browser tab.")
    ] = False,
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Name stored with each answer \\[user name].")
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option("--scores", help="A `histomodels eval --manifest` output: scores, heatmaps."),
    ] = None,
) -> None:
    """Confirm or correct labels in the browser: one figure at a time, keyboard first
    (m / n / u, arrows, z undo); every answer is saved into the manifest at once."""
    from histofetch.review.server import serve

    with errors(), contextlib.suppress(KeyboardInterrupt):
        try:
            serve(
                run,
                host=host,
                port=port,
                reviewer=reviewer,
                scores=scores,
                open_browser=not no_browser,
                announce=lambda line: typer.echo(line, err=True),
            )
        except OSError as exc:  # port in use, cannot bind
            fail(f"{host}:{port}: cannot serve ({exc.strerror or exc})")


@app.command()
def status(
    run: Run = RUN_DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Counts per stage, route, licence and failure reason."""
    from histofetch.status import format_status, run_status

    with errors():
        info = run_status(run)
    print(json.dumps(info, indent=2) if as_json else format_status(info))


@app.command()
def merge(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to merge (e.g. the shards).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged run folder.")],
) -> None:
    """Join run folders into one: records deduplicated by id and PMCID, images by sha256."""
    from histofetch.merge import merge_runs

    with errors():
        summary = merge_runs(list(runs), out)
    print(summary.line())


@app.command()
def export(
    run: Run = RUN_DEFAULT,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="jsonl, csv or parquet (pyarrow).")
    ] = "jsonl",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output file [RUN/manifest.jsonl, RUN/export.csv|parquet]."
        ),
    ] = None,
) -> None:
    """Write the run's rows from its store: the manifest (JSONL), CSV or Parquet."""
    from histocore.export import FORMATS, export_run

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    with errors(ImportError):  # parquet without pyarrow: the message says what to install
        path = export_run(run, fmt, out)
    print(f"exported {run} → {path}")


if __name__ == "__main__":
    app()
