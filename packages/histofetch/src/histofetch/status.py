"""What a run folder holds: counts per stage and per failure reason (``histofetch status``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from histocore.io import one_line, path_shown
from histocore.manifest import STAGES, Image, Manifest, Record, run_folder
from histofetch.stage import command, reason_key


def run_status(run_dir: Path) -> dict[str, Any]:
    """A JSON-ready summary of the run's manifest (raises ManifestError on a bad one).

    ``kept_images`` are paths relative to the run folder (absolute when outside it).
    """
    run_dir = run_folder(run_dir)  # its manifest.jsonl named: the paths shown are the folder's
    with Manifest.load(run_dir) as manifest:
        return _status(manifest, run_dir)


def _status(manifest: Manifest, run_dir: Path) -> dict[str, Any]:
    records = list(manifest.records.values())
    images = list(manifest.images.values())
    kept = manifest.kept_images()
    stages = Counter(r.stage for r in records if r.status == "ok")
    failed = [r for r in records if r.status == "failed"]

    def licence_of(record_id: str) -> str:
        rec = manifest.records.get(record_id)
        return (rec.license if rec else None) or "unknown"

    return {
        "run": str(run_dir),
        "query": manifest.query,
        "records": len(records),
        "pdfs": sum(1 for r in records if r.pdf_path),
        "images": len(images),
        # decided on their scores: a figure filter could not read is counted apart, in
        # "unreadable" (decided rejected, never scored), as filter's 'kept' line counts it
        "scored": sum(1 for i in images if i.kept is not None and not _unreadable(i)),
        "kept": len(kept),
        # Kept figures split into panels: "kept" counts their kept panels instead, so
        # kept + rejected + split_kept = scored.
        "split_kept": sum(1 for i in images if i.kept) - sum(1 for i in kept if i.kept),
        "rejected": sum(1 for i in images if i.kept is False and not _unreadable(i)),
        "failed": len(failed),
        "failed_images": sum(1 for i in images if i.status == "failed"),
        "unreadable": sum(1 for i in images if _unreadable(i)),
        "stages": {s: stages.get(s, 0) for s in STAGES},
        # failed with no stage recorded (an edited or older manifest): said so, as the
        # hints say it ('failed (stage not recorded)'), not '?'
        "failed_by_stage": dict(Counter(r.failed_stage or "not recorded" for r in failed)),
        "failure_reasons": dict(Counter(reason_key(r.reason) for r in failed).most_common()),
        "reject_reasons": dict(
            Counter(
                reason_key(i.filter_reason)
                for i in images
                if i.kept is False and not _unreadable(i)
            ).most_common()
        ),
        # Where article files came from, and under which licence (issue 9).
        "routes": dict(Counter(_route(r) for r in records).most_common()),
        "images_by_source": dict(Counter(i.source for i in images).most_common()),
        "records_by_licence": dict(Counter(r.license or "unknown" for r in records).most_common()),
        "figures_by_licence": dict(Counter(licence_of(i.record_id) for i in images).most_common()),
        "failed_files": sum(len(r.extra.get("failed_files", [])) for r in records),
        "retracted": sum(1 for r in records if r.is_retracted),
        # Records other live processes are working on now (run store claims; issue 13).
        "in_progress": _in_progress(manifest),
        # Attempts started but never ended: their process died (killed, hung then killed).
        "unfinished": _unfinished(manifest),
        "transient_failures": sum(1 for r in failed if r.transient),
        "kept_images": [i.path for i in kept],
    }


def _unreadable(img: Image) -> bool:
    """A figure filter could not read: failed, and decided (rejected) without scores."""
    return img.status == "failed" and img.kept is False


#: The route of a record whose PDF was given to ``extract`` (no route fetched it).
LOCAL_ROUTE = "local-pdf"


def _route(rec: Record) -> str:
    """The route that gave the record's files: ``local-pdf`` for a local PDF, ``none``
    when nothing did (yet). Local PDFs were counted under ``none``."""
    if rec.route:
        return rec.route
    return LOCAL_ROUTE if rec.pdf_source == "local" else "none"


def _in_progress(manifest: Manifest) -> dict[str, int]:
    if not manifest.store_path.is_file():
        return {}
    return dict(Counter(stage for _, stage in manifest._db().live_claims()))


def _unfinished(manifest: Manifest) -> dict[str, int]:
    if not manifest.store_path.is_file():
        return {}
    return dict(Counter(stage for _, stage in manifest._db().abandoned_claims()))


def split_note(info: dict[str, Any]) -> str:
    """Why kept + rejected falls short of the scored images, when it does."""
    n = info.get("split_kept", 0)
    return f"  (+{n} split figure{'s' if n != 1 else ''} counted by their kept panels)" if n else ""


def format_status(info: dict[str, Any]) -> str:
    """Plain-text report of :func:`run_status` for people."""
    lines = [
        f"run {path_shown(Path(info['run']))}"  # ./~/run: a folder named '~', not $HOME's
        + (f"  (query: {info['query']})" if info.get("query") else ""),
        f"records {info['records']}  pdfs {info['pdfs']}  images {info['images']}  "
        f"kept {info['kept']}  rejected {info['rejected']}  unreadable {info['unreadable']}  "
        f"failed records {info['failed']}  failed images {info['failed_images']}"
        + split_note(info),
        "stage reached (ok records): " + ", ".join(f"{k} {v}" for k, v in info["stages"].items()),
    ]
    if info.get("in_progress"):
        lines.append("being worked on by running processes: " + _pairs(info["in_progress"]))
    if info.get("unfinished"):
        lines.append(
            "attempts whose process died before they ended (killed, or hung and killed): "
            + _pairs(info["unfinished"])
            + "; guarded stages retry such a record once, then skip it"
        )
    if info.get("transient_failures"):
        lines.append(
            f"{info['transient_failures']} failed for a passing reason: the next run retries them"
        )
    if info.get("routes"):
        lines.append("records by route: " + _pairs(info["routes"]))
        lines.append("images by source: " + _pairs(info["images_by_source"]))
        lines.append("records by licence: " + _pairs(info["records_by_licence"]))
        lines.append("images by licence: " + _pairs(info["figures_by_licence"]))
    if info.get("failed_files"):
        lines.append(
            "files named but not kept (MD5, missing, undecodable; per route): "
            f"{info['failed_files']}"
        )
    if info["failure_reasons"]:
        lines.append("failed records by reason:")
        lines += [f"  {n:5d}  {r}" for r, n in info["failure_reasons"].items()]
    if info["reject_reasons"]:
        lines.append("rejected images by reason:")
        lines += [f"  {n:5d}  {r}" for r, n in info["reject_reasons"].items()]
    if n := info["unreadable"]:  # they were shown only as a reject reason
        them = "it" if n == 1 else "them"  # '1 … (filter could not read them' was said
        # the whole command, to copy: 'histofetch filter --retry-failed' named no run
        retry = command("filter", Path(info["run"]), "--retry-failed")
        lines.append(
            f"{n} image{'s' if n != 1 else ''} unreadable, not scored (filter could not read "
            f"{them}; {retry} reads {them} again)"
        )
    # reasons, licences and the query come from servers, files and users: escaped
    return "\n".join(one_line(line) for line in lines)


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"
