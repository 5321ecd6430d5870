"""``histofetch`` command line: each command wires one stage; the stages hold the logic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from histocore.manifest import Manifest, ManifestError

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
    from rich.markup import escape

    from histocore.io import one_line

    console.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# -- network stages (search, download) and the whole pipeline (run) ------------------------
MaxOpt = typer.Option(None, "--max", min=1, help="Keep at most this many hits.")
ApiKeyOpt = typer.Option(
    None, "--api-key", envvar="NCBI_API_KEY", help="NCBI API key (10 requests/s instead of 3)."
)
EmailOpt = typer.Option(
    None, "--email", envvar="NCBI_EMAIL", help="Your e-mail, sent to NCBI as asked."
)
MinDateOpt = typer.Option(None, "--mindate", help="Published from: YYYY, YYYY/MM or YYYY/MM/DD.")
MaxDateOpt = typer.Option(None, "--maxdate", help="Published until: YYYY, YYYY/MM or YYYY/MM/DD.")
OaOnlyOpt = typer.Option(
    False, "--open-access-only", help="Only articles in the PMC open-access subset."
)
RetryOpt = typer.Option(False, "--retry-failed", help="Try records that failed before again.")
JobsOpt = typer.Option(
    1, "--jobs", "-j", min=1, help="Worker processes (extract, filter): records done at once."
)
ShardOpt = typer.Option(
    None, "--shard", help="Keep shard K of N of the hits (K/N, e.g. 1/4): one job per shard."
)
NetJobsOpt = typer.Option(
    4, "--jobs", "-j", min=1, help="Records downloaded at once (each host keeps its own rate)."
)
DbOpt = typer.Option(
    "pubmed", "--db", help="Search PubMed, or PMC's open-access subset (every hit in the bucket)."
)
LicenceOpt = typer.Option(
    "any",
    "--licence",
    help="Keep articles whose licence allows this reuse: commercial (CC0, CC BY, BY-SA, "
    "BY-ND), noncommercial (also the NC licences) or any (TDM and unknown too).",
)
RetractedOpt = typer.Option(
    False, "--include-retracted", help="Keep retracted articles (skipped by default)."
)


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

    if text is None:
        return None
    try:
        return parse_shard(text)
    except ValueError as exc:
        fail(str(exc))


def _net(api_key: str | None, email: str | None):  # -> NetConfig
    from histofetch.http import NetConfig

    try:
        net = NetConfig()
    except ValueError as exc:  # a malformed HISTOFETCH_* environment variable
        fail(str(exc))
    net.api_key = api_key or None
    net.email = email or None
    return net


def _network_errors() -> tuple[type[BaseException], ...]:
    from histofetch.http import NetError
    from histofetch.resolve import ServiceError

    return (NetError, ServiceError, ManifestError, OSError)


@app.command()
def search(
    query: str = typer.Argument(..., help="PubMed query, e.g. 'lymph node metastasis'."),
    run: Path = RunOpt,
    max_results: int = MaxOpt,
    api_key: str = ApiKeyOpt,
    email: str = EmailOpt,
    mindate: str = MinDateOpt,
    maxdate: str = MaxDateOpt,
    open_access_only: bool = OaOnlyOpt,
    db: str = DbOpt,
    shard: str = ShardOpt,
) -> None:
    """Search PubMed (or PMC) and record every hit (title, journal, year, DOI, PMCID, OA)."""
    from histofetch.search import run_search

    net = _net(api_key, email)
    parts = _shard(shard)
    try:
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
    except _network_errors() as exc:
        fail(f"search failed: {exc}")
    print(summary.line())


@app.command()
def download(
    run: Path = RunOpt,
    retry_failed: bool = RetryOpt,
    api_key: str = ApiKeyOpt,
    email: str = EmailOpt,
    licence: str = LicenceOpt,
    include_retracted: bool = RetractedOpt,
    jobs: int = NetJobsOpt,
) -> None:
    """Fetch article files: PMC Cloud Service figures, Europe PMC, then PDFs."""
    from histofetch.download import run_download

    net = _net(api_key, email)
    policy = _policy(licence, include_retracted)
    try:
        summary = run_download(
            run, net=net, retry_failed=retry_failed, progress=True, policy=policy, jobs=jobs
        )
    except _network_errors() as exc:
        fail(f"download failed: {exc}")
    print(summary.line())


@app.command("run")
def run_all(
    query: str = typer.Argument(..., help="PubMed query."),
    run: Path = RunOpt,
    max_results: int = MaxOpt,
    api_key: str = ApiKeyOpt,
    email: str = EmailOpt,
    mindate: str = MinDateOpt,
    maxdate: str = MaxDateOpt,
    open_access_only: bool = OaOnlyOpt,
    retry_failed: bool = RetryOpt,
    purple: float = typer.Option(0.3, help="Filter threshold (see `histofetch filter`)."),
    db: str = DbOpt,
    licence: str = LicenceOpt,
    include_retracted: bool = RetractedOpt,
    jobs: int = typer.Option(
        1, "--jobs", "-j", min=1, help="Worker processes for extract and filter."
    ),
    net_jobs: int = typer.Option(
        4, "--net-jobs", min=1, help="Records downloaded at once (each host keeps its rate)."
    ),
    shard: str = ShardOpt,
) -> None:
    """search → download → extract → filter; re-running continues where it stopped."""
    from histofetch.download import run_download
    from histofetch.extract import run_extract
    from histofetch.filter import run_filter
    from histofetch.search import run_search, search_key

    net = _net(api_key, email)
    policy = _policy(licence, include_retracted)
    db = _db(db)
    try:
        manifest = Manifest.load(run, create=True)
        parts = _shard(shard)
        wanted = search_key(query, max_results, mindate, maxdate, open_access_only, db)
        if parts is not None:
            wanted["shard"] = f"{parts[0]}/{parts[1]}"
        done = {
            k: v for k, v in manifest.header_extra.get("last_search", {}).items() if k in wanted
        }
        if done == wanted and manifest.records:
            print(f"searched: already done ({len(manifest.records)} records)")
        else:
            print(
                run_search(
                    run,
                    query,
                    max_results=max_results,
                    mindate=mindate,
                    maxdate=maxdate,
                    open_access_only=open_access_only,
                    net=net,
                    db=db,
                    shard=parts,
                ).line()
            )
        downloaded = run_download(
            run, net=net, retry_failed=retry_failed, progress=True, policy=policy, jobs=net_jobs
        )
        print(downloaded.line())
        extracted = run_extract(run, None, progress=True, retry_failed=retry_failed, jobs=jobs)
        print(extracted.line())
        filtered = run_filter(
            run, purple=purple, progress=True, retry_failed=retry_failed, jobs=jobs
        )
        print(filtered.line())
    except _network_errors() as exc:
        fail(f"run stopped (re-run to continue): {exc}")


@app.command()
def extract(
    paths: list[Path] = typer.Argument(None, help="Local PDFs/folders; default: the run's PDFs."),
    run: Path = RunOpt,
    min_size: int = typer.Option(32, "--min-size", min=1, help="Drop images smaller (px)."),
    retry_failed: bool = RetryOpt,
    jobs: int = JobsOpt,
) -> None:
    """Extract every embedded raster image of every PDF (PNG + manifest rows)."""
    from histocore.manifest import MANIFEST_NAME, STORE_NAME
    from histofetch.extract import ExtractError, run_extract

    if not paths and not any((run / name).exists() for name in (MANIFEST_NAME, STORE_NAME)):
        fail(f"{run}: no manifest here; give PDF files/folders or run `histofetch download`")
    try:
        summary = run_extract(
            run,
            list(paths or []),
            min_size=min_size,
            progress=True,
            retry_failed=retry_failed,
            jobs=jobs,
        )
    except (ExtractError, ManifestError, OSError) as exc:
        fail(str(exc))
    print(summary.line())


@app.command("filter")
def filter_(
    run: Path = RunOpt,
    purple: float = typer.Option(
        0.3, min=0.0, max=1.0, help="Min share of H&E-coloured pixels in the tissue region."
    ),
    min_he: float = typer.Option(
        None, "--min-he", min=0.0, max=1.0, help="Min H&E (HED) score [0.5]."
    ),
    min_tissue: float = typer.Option(
        None, "--min-tissue", min=0.0, max=1.0, help="Min tissue share of the image [0.02]."
    ),
    min_blocks: int = typer.Option(None, "--min-blocks", min=1, help="Min tissue blocks [2]."),
    max_dark: float = typer.Option(
        None, "--max-dark", min=0.0, max=1.0, help="Max dark-pixel share [0.2]."
    ),
    min_side: int = typer.Option(
        None, "--min-side", min=1, help="Smaller images are not judged (px) [64]."
    ),
    rescore: bool = typer.Option(False, "--rescore", help="Re-read and re-score every image."),
    sheet: bool = typer.Option(True, "--sheet/--no-sheet", help="Write sheets/*.png."),
    retry_failed: bool = RetryOpt,
    jobs: int = JobsOpt,
) -> None:
    """Score every image for H&E once, then keep the tissue images (thresholds re-applied)."""
    from histofetch.filter import run_filter

    try:
        summary = run_filter(
            run,
            purple=purple,
            progress=True,
            sheet=sheet,
            rescore=rescore,
            retry_failed=retry_failed,
            jobs=jobs,
            min_he=min_he,
            min_tissue=min_tissue,
            min_blocks=min_blocks,
            max_dark=max_dark,
            min_side=min_side,
        )
    except (ManifestError, OSError) as exc:
        fail(str(exc))
    print(summary.line())
    from histofetch.status import run_status

    info = run_status(run)
    print(f"kept {info['kept']} of {info['scored']} scored images; sheets in {run / 'sheets'}")


@app.command()
def review(
    run: Annotated[
        Path, typer.Option("--run", "-r", help="Run folder (holds the manifest).")
    ] = Path("runs/default"),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 = a free port.")] = 0,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind (only this machine by default).")
    ] = "127.0.0.1",
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Do not open a browser tab.")
    ] = False,
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Name stored with each answer [user name].")
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option("--scores", help="A `histomodels eval --manifest` output: scores, heatmaps."),
    ] = None,
) -> None:
    """Confirm or correct labels in the browser: one figure at a time, keyboard first
    (m / n / u, arrows, z undo); every answer is saved into the manifest at once."""
    from histofetch.review.data import ReviewError
    from histofetch.review.server import serve

    try:
        serve(
            run,
            host=host,
            port=port,
            reviewer=reviewer,
            scores=scores,
            open_browser=not no_browser,
            announce=lambda line: console.print(line, highlight=False, soft_wrap=True),
        )
    except ReviewError as exc:
        fail(str(exc))
    except OSError as exc:  # port in use, cannot bind
        fail(f"{host}:{port}: cannot serve ({exc.strerror or exc})")
    except KeyboardInterrupt:
        pass


@app.command()
def status(
    run: Path = RunOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Counts per stage, route, licence and failure reason."""
    from histofetch.status import format_status, run_status

    try:
        info = run_status(run)
    except ManifestError as exc:
        fail(str(exc))
    print(json.dumps(info, indent=2) if as_json else format_status(info))


@app.command()
def merge(
    runs: list[Path] = typer.Argument(..., help="Run folders to merge (e.g. the shards)."),
    out: Path = typer.Option(..., "--out", "-o", help="The merged run folder."),
) -> None:
    """Join run folders into one: records deduplicated by id and PMCID, images by sha256."""
    from histofetch.merge import merge_runs

    try:
        summary = merge_runs(list(runs), out)
    except (ManifestError, OSError) as exc:
        fail(str(exc))
    print(summary.line())


@app.command()
def export(
    run: Path = RunOpt,
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl, csv or parquet (pyarrow)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output file [RUN/manifest.jsonl, RUN/export.csv|parquet]."
    ),
) -> None:
    """Write the run's rows from its store: the manifest (JSONL), CSV or Parquet."""
    from histocore.export import FORMATS, export_run

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    try:
        path = export_run(run, fmt, out)
    except ImportError as exc:
        fail(str(exc))
    except (ManifestError, OSError) as exc:
        fail(str(exc))
    print(f"exported {run} → {path}")


if __name__ == "__main__":
    app()
