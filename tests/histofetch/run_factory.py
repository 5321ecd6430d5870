"""Run folders for the download tests: a manifest holding searched records."""

from __future__ import annotations

from pathlib import Path

from histocore.manifest import Manifest, Record


def make_run(run_dir: Path, *records: Record) -> Manifest:
    """A run folder whose manifest holds ``records`` (saved)."""
    manifest = Manifest.load(run_dir, create=True)
    for rec in records:
        manifest.add_record(rec)
    manifest.save()
    return manifest


def searched(pmid: str, pmcid: str | None = None) -> Record:
    """A record as ``search`` leaves it."""
    return Record(id=f"pmid:{pmid}", pmid=pmid, pmcid=pmcid, stage="searched")
