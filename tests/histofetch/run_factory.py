"""Run folders for the download tests: a manifest holding searched records."""

from __future__ import annotations

from pathlib import Path

from histocore.manifest import Manifest, Record


def make_run(run_dir: Path, *records: Record) -> Path:
    """A run folder whose manifest holds ``records`` (saved, and its store closed: an open
    connection would leave run.sqlite-wal/-shm in the folder until the collector ran)."""
    with Manifest.load(run_dir, create=True) as manifest:
        for rec in records:
            manifest.add_record(rec)
        manifest.save()
    return run_dir


def searched(pmid: str, pmcid: str | None = None) -> Record:
    """A record as ``search`` leaves it."""
    return Record(id=f"pmid:{pmid}", pmid=pmid, pmcid=pmcid, stage="searched")
