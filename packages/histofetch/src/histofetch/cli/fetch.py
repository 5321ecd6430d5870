"""``histofetch search``, ``download`` and ``run``: the commands that go to the network."""

from __future__ import annotations

from typing import Annotated

import typer

from histofetch.cli._common import (
    DEFAULT_RECORD_TIMEOUT_S,
    MAX_JOBS,
    MAX_NET_JOBS,
    RUN_DEFAULT,
    ApiKey,
    Db,
    Email,
    Licence,
    Max,
    MaxDate,
    MinDate,
    NetJobs,
    OaOnly,
    Query,
    RecordTimeout,
    Retracted,
    Retry,
    Run,
    Shard,
    check_date_range,
    errors,
    fail_on_killers,
    fraction,
    kept_line,
    licence_policy,
    net_config,
    progress,
    record_limit,
    say_default_run,
    shard_parts,
)


def search(
    ctx: typer.Context,
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

    check_date_range(mindate, maxdate)

    net = net_config(api_key, email)
    parts = shard_parts(shard)
    with errors(outcome="search failed"), progress():
        summary = run_search(
            run,
            query,
            max_results=max_results,
            mindate=mindate,
            maxdate=maxdate,
            open_access_only=open_access_only,
            net=net,
            db=db,
            shard=parts,
        )
    print(summary.line())
    say_default_run(ctx, run)


def download(
    ctx: typer.Context,
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

    net = net_config(api_key, email)
    policy = licence_policy(licence, include_retracted)
    with errors(outcome="download failed"), progress():
        summary = run_download(run, net=net, retry_failed=retry_failed, policy=policy, jobs=jobs)
    print(summary.line())
    say_default_run(ctx, run)


def run_all(
    ctx: typer.Context,
    query: Query,
    run: Run = RUN_DEFAULT,
    max_results: Max = None,
    api_key: ApiKey = None,
    email: Email = None,
    mindate: MinDate = None,
    maxdate: MaxDate = None,
    open_access_only: OaOnly = False,
    retry_failed: Retry = False,
    purple: Annotated[float, fraction(help="Filter threshold (see `histofetch filter`).")] = 0.3,
    db: Db = "pubmed",
    licence: Licence = "any",
    include_retracted: Retracted = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs", "-j", min=1, max=MAX_JOBS, help="Worker processes for extract and filter."
        ),
    ] = 1,
    net_jobs: Annotated[
        int,
        typer.Option(
            min=1, max=MAX_NET_JOBS, help="Records downloaded at once (each host keeps its rate)."
        ),
    ] = 4,
    shard: Shard = None,
    record_timeout: RecordTimeout = DEFAULT_RECORD_TIMEOUT_S,
) -> None:
    """search → download → extract → filter; re-running continues where it stopped."""
    from histofetch.pipeline import run_pipeline
    from histofetch.stage import StageSummary

    check_date_range(mindate, maxdate)
    net = net_config(api_key, email)
    policy = licence_policy(licence, include_retracted)
    parts = shard_parts(shard)
    limit, isolate = record_limit(ctx, record_timeout)
    summaries: list[StageSummary] = []
    with errors(outcome="run stopped (re-run to continue)"), progress():
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
            record_timeout=limit,
            isolate=isolate,
        ):
            print(summary.line(), flush=True)
            if isinstance(summary, StageSummary):
                summaries.append(summary)
    if any(s.stage == "filtered" for s in summaries):
        print(kept_line(run))
    say_default_run(ctx, run)
    fail_on_killers(run, *summaries)
