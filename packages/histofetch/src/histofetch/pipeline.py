"""The whole mining run, search → download → extract → filter, resumable as one unit.

Each stage resumes on its own (:mod:`histofetch.stage`); what is left to decide here is
whether the search itself must run again: not when the run's manifest already holds the
records of the same search (same query, limit and dates), so ``histofetch run`` can be
re-run after a crash or Ctrl-C and only continues.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from histocore.manifest import Manifest
from histofetch.download import run_download
from histofetch.extract import run_extract
from histofetch.filter import run_filter
from histofetch.http import NetConfig
from histofetch.merge_summary import plural
from histofetch.record_time import DEFAULT_RECORD_TIMEOUT_S
from histofetch.search import run_search, search_key
from histofetch.sources import Policy
from histofetch.stage import StageSummary


@dataclass
class SkippedStage:
    """A stage that had nothing to do, and why."""

    stage: str
    why: str

    def line(self) -> str:
        return f"{self.stage}: {self.why}"


def search_done(manifest: Manifest, key: dict) -> bool:
    """True when the manifest holds the records of exactly this search already."""
    last = manifest.header_extra.get("last_search", {})
    return bool(manifest.records) and {k: v for k, v in last.items() if k in key} == key


def run_pipeline(
    run_dir: Path,
    query: str,
    *,
    net: NetConfig,
    max_results: int | None = None,
    mindate: str | None = None,
    maxdate: str | None = None,
    open_access_only: bool = False,
    retry_failed: bool = False,
    purple: float = 0.3,
    db: str = "pubmed",
    policy: Policy | None = None,
    shard: tuple[int, int] | None = None,
    jobs: int = 1,
    net_jobs: int = 4,
    record_timeout: float | None = DEFAULT_RECORD_TIMEOUT_S,
    isolate: bool = False,
) -> Iterator[StageSummary | SkippedStage]:
    """Run every stage into ``run_dir``, yielding each stage's summary as it finishes.

    Network and manifest errors propagate (the stage that raised stops the run); running
    again continues where it stopped.
    """
    run_dir = Path(run_dir)
    with Manifest.load(run_dir, create=True) as manifest:
        key = search_key(query, max_results, mindate, maxdate, open_access_only, db, shard)
        done = search_done(manifest, key)
    if done:
        yield SkippedStage("searched", f"already done ({plural(len(manifest.records), 'record')})")
    else:
        yield run_search(
            run_dir,
            query,
            max_results=max_results,
            mindate=mindate,
            maxdate=maxdate,
            open_access_only=open_access_only,
            net=net,
            db=db,
            shard=shard,
        )
    yield run_download(run_dir, net=net, retry_failed=retry_failed, policy=policy, jobs=net_jobs)
    limit = record_timeout
    yield run_extract(
        run_dir, None, retry_failed=retry_failed, jobs=jobs, record_timeout=limit, isolate=isolate
    )
    yield run_filter(
        run_dir, purple=purple, retry_failed=retry_failed, jobs=jobs, record_timeout=limit,
        isolate=isolate,
    )  # fmt: skip
