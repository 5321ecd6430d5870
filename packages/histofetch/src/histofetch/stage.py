"""The one place where resumability lives: walk the records a stage has not done yet.

Every per-record stage (download, extract, filter) calls :func:`run_per_record` with a
function that does the work for one record. Records already past the stage, or failed
earlier, are skipped; after each record the manifest is saved atomically, so a run killed
at any moment resumes exactly where it stopped, without lost or duplicated rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from histocore.manifest import STAGES, Manifest, Record

_PROGRESS_CONSOLE = Console(stderr=True)


@dataclass
class StageSummary:
    """What one stage did in this invocation."""

    stage: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        text = f"{self.stage}: {self.done} done, {self.skipped} already done, {self.failed} failed"
        if self.reasons:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common(5)) + ")"
        return text


class StageFailure(Exception):
    """Raised by a per-record step for an expected failure; the message is the reason."""


def run_per_record(
    manifest: Manifest,
    stage: str,
    work: Callable[[Record], None],
    *,
    progress: bool = True,
    retry_failed: bool = False,
) -> StageSummary:
    """Run ``work(record)`` for every record that has reached the previous stage only.

    ``work`` mutates the record (and adds images to the manifest); on return the record is
    marked as having reached ``stage``. A :class:`StageFailure` (or any ``Exception``)
    marks the record failed with a one-line reason and the run goes on.
    """
    previous = STAGES[STAGES.index(stage) - 1]
    summary = StageSummary(stage)
    todo: list[Record] = []
    for rec in manifest.records.values():
        retry = retry_failed and rec.failed_stage == stage
        if (rec.status == "failed" and not retry) or rec.reached(stage):
            summary.skipped += 1
        elif rec.reached(previous):
            todo.append(rec)
    with Progress(
        TextColumn(f"[bold]{stage}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress or not _PROGRESS_CONSOLE.is_terminal,
        transient=True,
        console=_PROGRESS_CONSOLE,  # stderr: stdout stays clean for summary lines and JSON
    ) as bar:
        task = bar.add_task(stage, total=len(todo))
        for rec in todo:
            rec.status, rec.reason, rec.failed_stage = "ok", None, None
            try:
                work(rec)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one bad record must not stop the run
                reason = str(exc) or type(exc).__name__
                rec.fail(stage, reason)
                summary.failed += 1
                summary.reasons[_reason_key(reason)] += 1
            else:
                rec.stage = stage
                summary.done += 1
            manifest.save()
            bar.advance(task)
    manifest.save()
    return summary


def _reason_key(reason: str) -> str:
    return reason.split(":", 1)[0][:60]
