"""The one place where resumability lives: walk the records a stage has not done yet.

Every per-record stage (download, extract, filter) calls :func:`run_per_record` with a
function that does the work for one record. For each record it:

1. claims the record in the run store (``Manifest.claim``): a record another live process
   is working on is left to it, and one that process finished since we loaded is skipped;
2. runs ``work(record)``, which changes the record and its images in memory;
3. commits the record's new stage and its image rows as **one transaction**
   (``Manifest.commit_record``), or, when ``work`` raised, the failure with its images as
   they were before (no partial image rows).

A kill at any moment loses at most the record in flight, which is redone on the next run;
the image files that attempt wrote without committing (PNGs under the record's own
``images/<slug>/`` that no row names, and temp files) are removed when the record is taken
again (:func:`remove_orphan_images`), so they do not pile up in the run folder.
Failures for a passing reason (network, disk full, database busy) are marked ``transient``
and retried on the next run by themselves; ``retry_failed`` retries every failure of the
stage. At the end of the stage ``manifest.jsonl`` is exported from the store.

Stages that parse hostile files (extract: MuPDF on untrusted PDFs) pass ``guard_attempts``:
the claim taken before the work starts is the *attempt started* marker. A claim left by a
process that died (killed while hung, crashed, OOM-killed) says the attempt never ended; the
record's ``extra["unfinished_attempts"]`` counts such deaths since its last finished attempt.
One death is retried (a run killed at a random moment resumes as if uninterrupted); at
:data:`MAX_UNFINISHED_ATTEMPTS` the record fails with reason ``unfinished attempts`` and one
``warning:`` line instead of hanging every re-run (listed in ``StageSummary.killers``: the
CLI ends with one error line, exit 1); ``retry_failed`` tries it anyway. With a pool, a
worker's death is seen at once and its records are read again in the same run
(:func:`histofetch.pool.run_pooled`).
"""

from __future__ import annotations

import errno
import logging
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from histocore.errors import os_error_path
from histocore.io import one_line, path_shown, record_slug, resolved, shell_word
from histocore.manifest import STAGES, Manifest, Record
from histocore.progress import task

log = logging.getLogger(__name__)

#: Attempts at a record whose process died before they ended, after which a guarded stage
#: skips the record (a file that hangs or kills its reader) until ``--retry-failed``.
MAX_UNFINISHED_ATTEMPTS = 2
#: ``Record.extra`` key counting those attempts (removed when an attempt ends).
UNFINISHED_KEY = "unfinished_attempts"

#: Failure reasons whose category (text before the first colon) is worth a retry.
TRANSIENT_CATEGORIES = frozenset({"network"})
#: OS errors that may pass: full disk or quota, I/O and resource hiccups, network trouble.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)


@dataclass
class StageSummary:
    """What one stage did in this invocation."""

    stage: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    #: records left to another process that was working on them
    elsewhere: int = 0
    #: records a search renamed since this process read the run (the next run takes them)
    renamed: int = 0
    #: records failed now because attempts at them killed their process (``guard_attempts``)
    killers: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    #: records that failed at this stage in an earlier invocation and were not taken again
    #: (``histofetch status`` says why; ``--retry-failed`` retries them)
    failed_before: int = 0
    #: records that failed at another stage (download, for extract), by that stage's step
    #: (``download``): not this stage's failures, and maybe this very ``histofetch run``'s
    failed_elsewhere: Counter[str] = field(default_factory=Counter)
    #: records that have not reached the stage before this one (e.g. filter before extract)
    waiting: int = 0
    #: records at this stage not taken again because they hold nothing to redo: articles
    #: with no images at ``filter --rescore`` (not counted ``already done``)
    no_images: int = 0
    #: said at the end of the line, after ``; `` (a search that matched nothing says so)
    note: str = ""

    def line(self) -> str:
        text = f"{self.stage}: {self.done} done, {self.skipped} already done, "
        if self.no_images:
            text += f"{self.no_images} with no images, "
        text += f"{self.failed} failed"
        if self.reasons:  # right after this stage's failures: they are the ones counted
            shown = self.reasons.most_common(5)
            # "; " between them: a reason holds commas ("empty file, not a PDF: 1")
            text += " (" + "; ".join(f"{r}: {n}" for r, n in shown)
            rest = self.reasons.total() - sum(n for _, n in shown)
            if rest:  # the counts shown must add up to the failures: name the rest's count
                text += f"; other reasons: {rest}"
            text += ")"
        if self.failed_before:
            text += f", {self.failed_before} failed before"
        for step, n in self.failed_elsewhere.items():
            text += f", {n} failed in {step}"
        if self.failed_before or self.failed_elsewhere:
            text += " (histofetch status says why)"
        if self.waiting:
            before = STAGES[max(0, STAGES.index(self.stage) - 1)]
            text += f", {self.waiting} not {before} yet"
        if self.elsewhere:
            text += f", {self.elsewhere} being done by another process"
        if self.renamed:
            text += f", {self.renamed} renamed by a search meanwhile (the next run takes them)"
        if self.note:
            text += f"; {self.note}"
        return one_line(text)  # reasons may quote a server or a file: no control characters


class StageFailure(Exception):
    """Raised by a per-record step for an expected failure; the message is the reason.
    ``transient=True`` says the cause may pass (the next run retries the record)."""

    def __init__(self, reason: str, *, transient: bool | None = None) -> None:
        super().__init__(reason)
        self.transient = transient


def is_transient(exc: BaseException) -> bool:
    """Would trying the same record again later plausibly succeed? An error's own
    ``transient`` says so first (:class:`StageFailure`'s when given, ``histofetch.http``'s
    ``NetError`` from its status)."""
    flag = getattr(exc, "transient", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, StageFailure):
        return reason_key(str(exc)) in TRANSIENT_CATEGORIES
    if isinstance(exc, (TimeoutError, ConnectionError, sqlite3.OperationalError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    return type(exc).__module__.startswith("httpx") and "Transport" in _mro_names(exc)


#: The step (command) that brings a record to each stage: ``downloaded`` → ``download``.
_STEPS: dict[str, str] = dict(zip(STAGES, ("search", "download", "extract", "filter"), strict=True))


def step_name(stage: str) -> str:
    """``download`` for ``downloaded``: what the user ran (an unknown stage as it is)."""
    return _STEPS.get(stage, stage)


def failed_at(stages: Iterable[str | None]) -> str:
    """``failed at download, extract``: where records with these ``failed_stage`` values
    failed, by the step the user ran. A record failed with no stage recorded (an edited or
    older manifest) is said so, ``failed (stage not recorded)``: it read ``failed at ?``."""
    given = list(stages)
    known = sorted({step_name(s) for s in given if s})
    if not known:
        return "failed (stage not recorded)"
    unknown = " and at a stage not recorded" if any(not s for s in given) else ""
    return f"failed at {', '.join(known)}{unknown}"


def command(step: str, run_dir: str | Path, *more: str) -> str:
    """``histofetch STEP --run RUN ...`` as a shell command to copy: the run folder quoted
    (a folder named ``my run`` or ``a;b`` gave a command that ran something else), a
    folder named ``~`` as ``./~/run`` (``~/run``, quoted or not, is $HOME's to the CLI),
    and one holding a newline or an escape as ``$'a\\nb'`` (:func:`histocore.io.shell_word`:
    shlex left them in, so the hint broke over two lines or the terminal ran the escape)."""
    words = ["histofetch", step, "--run", path_shown(Path(run_dir)), *more]
    return " ".join(shell_word(w) for w in words)


#: The steps before filter for an article that finished only this stage: filter takes
#: only extracted articles, extract only downloaded ones.
_BEFORE_FILTER = {"searched": ("download", "extract"), "downloaded": ("extract",)}


def decide_commands(records: Iterable[Record], run_dir: str | Path) -> list[str]:
    """The commands, in order, that decide the images of these articles (none failed):
    filter, and for one only downloaded (figures the download brought) extract before it,
    download too for one only searched ('histofetch filter decides it' was said of them,
    and filter passed them over). Empty for no article at a known stage."""
    stages = [STAGES.index(r.stage) for r in records if r.stage in STAGES]
    if not stages:
        return []
    steps = [*_BEFORE_FILTER.get(STAGES[min(stages)], ()), "filter"]
    return [command(step, run_dir) for step in steps]


def failure_reason(exc: BaseException) -> str:
    """The one-line reason a record fails with: the error's message, and for an OS error
    ``<problem>: <file>`` (it was ``[Errno 17] File exists: '<file>'``, counted by
    summaries and ``histofetch status`` as ``[Errno 17] File exists``), the file chosen as
    ``histocore.errors.describe`` chooses it (:func:`histocore.errors.os_error_path`)."""
    if isinstance(exc, OSError) and exc.strerror:
        path = os_error_path(exc)
        return exc.strerror if path is None else f"{exc.strerror}: {path}"
    return str(exc) or type(exc).__name__


def _mro_names(exc: BaseException) -> str:
    return " ".join(cls.__name__ for cls in type(exc).__mro__)


def _wanted(rec: Record, stage: str, retry_failed: bool) -> bool:
    """Does ``stage`` take this record now?"""
    if rec.status == "failed":
        if rec.failed_stage != stage or not (retry_failed or rec.transient):
            return False
    elif rec.reached(stage):
        return False
    return rec.reached(STAGES[STAGES.index(stage) - 1])


class _Stage:
    """Which records a stage takes, and what it commits for each (shared by the runners)."""

    def __init__(
        self, manifest: Manifest, stage: str, retry_failed: bool, guard_attempts: bool = False
    ) -> None:
        self.manifest, self.stage, self.retry_failed = manifest, stage, retry_failed
        self.guard_attempts = guard_attempts
        self.summary = StageSummary(stage)
        self.todo: list[str] = []
        for rec in manifest.records.values():
            if _wanted(rec, stage, retry_failed):
                self.todo.append(rec.id)
            elif rec.status == "failed" and rec.failed_stage not in (None, stage):
                self.summary.failed_elsewhere[step_name(rec.failed_stage)] += 1
            elif rec.status == "failed":
                self.summary.failed_before += 1
            elif rec.reached(stage):
                self.summary.skipped += 1
            else:
                self.summary.waiting += 1

    def take(self, rid: str) -> Record | None:
        """Claim a record; None when another process has it, it no longer needs this stage,
        or (``guard_attempts``) its earlier attempts died too often. Interrupted while
        taking it (Ctrl-C while clearing a killed attempt's files), it holds no claim."""
        try:
            return self._take(rid)
        except BaseException:  # the claim must not outlive the take (release is ours only)
            self.manifest.release([rid])
            raise

    def _take(self, rid: str) -> Record | None:
        died = self.guard_attempts and (rid, self.stage) in self.manifest._db().abandoned_claims(
            rid
        )
        if not self.manifest.claim(rid, self.stage):
            if rid in self.manifest.records:
                self.summary.elsewhere += 1
            else:  # renamed since this process read the run: dropped from its memory
                self.summary.renamed += 1
            return None
        rec = self.manifest.records[rid]  # as the store holds it now
        if not _wanted(rec, self.stage, self.retry_failed):
            self.manifest.release([rid])
            self.summary.skipped += 1
            return None
        if died and not self._after_death(rec):
            return None
        remove_orphan_images(self.manifest, rid)  # ours now: what a killed attempt left
        rec.status, rec.reason, rec.failed_stage, rec.transient = "ok", None, None, None
        return rec

    def too_many_deaths(self, n: int, deaths_here: int) -> bool:
        """Is a record whose attempts died ``n`` times in all, ``deaths_here`` of them in
        this invocation, failed rather than tried again?"""
        return deaths_here >= MAX_UNFINISHED_ATTEMPTS or (
            n >= MAX_UNFINISHED_ATTEMPTS and not self.retry_failed
        )

    def _after_death(self, rec: Record, deaths_here: int = 0) -> bool:
        """Count one more unfinished attempt (committed before the next one starts); False
        when that makes too many and the record was failed instead. ``deaths_here``: the
        attempts that died in this invocation (its worker died), which fail the record at
        :data:`MAX_UNFINISHED_ATTEMPTS` even with ``retry_failed``."""
        n = int(rec.extra.get(UNFINISHED_KEY, 0)) + 1
        rec.extra[UNFINISHED_KEY] = n
        if not self.too_many_deaths(n, deaths_here):
            self.manifest.commit_record(rec.id, release=False)
            return True
        self.fail_killer(rec)
        return False

    def fail_killer(self, rec: Record, kinds: str = "") -> None:
        """Fail a record whose attempts died too often (``unfinished attempts``, counted in
        ``rec.extra``), with one warning line; commit it and release its claim. ``kinds``:
        how they died when some ran past the time limit (``1 crash, 1 time-out ...``)."""
        n = int(rec.extra.get(UNFINISHED_KEY, 0))
        what = rec.pdf_path or rec.id
        how = f" ({kinds})" if kinds else ""
        log.warning(
            "%s: skipped: %d attempts to reach stage %s were killed or hung before they "
            "finished%s; --retry-failed tries again",
            what, n, self.stage, how,
        )  # fmt: skip
        reason = (
            f"unfinished attempts: {n} attempts were killed or hung before they finished"
            f"{how} (--retry-failed tries again): {what}"
        )
        self.fail_for_good(rec, reason)
        self.summary.killers.append(rec.id)

    def fail_for_good(self, rec: Record, reason: str) -> None:
        """Fail a record for a reason that does not pass (``--retry-failed`` tries again):
        counted in the summary, committed, its claim released."""
        rec.fail(self.stage, reason, transient=False)
        self.summary.failed += 1
        self.summary.reasons[reason_key(reason)] += 1
        self.manifest.commit_record(rec.id)

    def finish(self, rec: Record, failure: tuple[str, bool] | None) -> None:
        """Commit the record: its new stage and images, or ``(reason, transient)``."""
        rec.extra.pop(UNFINISHED_KEY, None)  # this attempt ended
        if failure is None:
            rec.stage = self.stage
            self.summary.done += 1
        else:
            reason, transient = failure
            self.manifest.revert_images_of(rec.id)  # no partial image rows of a failed record
            rec.fail(self.stage, reason, transient=transient)
            self.summary.failed += 1
            self.summary.reasons[reason_key(reason)] += 1
        self.manifest.commit_record(rec.id)


def remove_orphan_images(manifest: Manifest, record_id: str) -> int:
    """Delete the files an attempt at ``record_id`` wrote but never committed: PNGs in the
    record's own image folder ``RUN/images/<slug>/`` that none of its rows names, and temp
    files of :func:`histocore.io.atomic_write_bytes` there. Nothing else is touched (other
    file types, links, sub-folders, other records' folders, anything outside the run).
    Call it only while holding the record's claim. Returns how many files went."""
    images = manifest.run_dir / "images"
    folder = images / record_slug(record_id)
    if folder.is_symlink() or not folder.is_dir():
        return 0
    if not folder.resolve().is_relative_to(images.resolve()):
        return 0
    named = {
        real
        for img in manifest.images_of(record_id)
        if (path := manifest.resolve(img.path)) is not None
        and (real := resolved(path)) is not None  # a row's file linking to itself: no file
    }
    removed = 0
    for path in folder.iterdir():
        temp = path.name.startswith(".") and path.name.endswith(".tmp")
        if not (temp or path.suffix == ".png") or path.is_symlink() or not path.is_file():
            continue
        if temp or path.resolve() not in named:
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("%s: removed %d image files an interrupted attempt left", folder, removed)
    return removed


def run_per_record(
    manifest: Manifest,
    stage: str,
    work: Callable[[Record], None],
    *,
    retry_failed: bool = False,
    export: bool = True,
    guard_attempts: bool = False,
) -> StageSummary:
    """Run ``work(record)`` for every record that has reached the previous stage only.

    ``work`` mutates the record (and its images in the manifest); on return the record is
    marked as having reached ``stage`` and committed with its images in one transaction.
    A :class:`StageFailure` (or any ``Exception``) marks the record failed with a one-line
    reason and the run goes on. Rows added to ``manifest`` before the call should be
    committed first (``manifest.commit()``). At the end ``manifest.jsonl`` is written
    (``export=False``: only committed). See :func:`histofetch.pool.run_records` for
    parallel work.
    """
    runner = _Stage(manifest, stage, retry_failed, guard_attempts)
    with task(stage, len(runner.todo)) as shown:
        for rid in runner.todo:
            rec = runner.take(rid)  # interrupted, it leaves no claim
            if rec is not None:
                try:
                    work(rec)
                except Exception as exc:  # one bad record must not stop the run
                    runner.finish(rec, (failure_reason(exc), is_transient(exc)))
                except BaseException:  # Ctrl-C: leave the record as the store has it, free it
                    manifest.release([rid])
                    raise
                else:
                    runner.finish(rec, None)
            shown.advance()
    manifest.save() if export else manifest.commit()
    return runner.summary


#: a split figure's reason as filter wrote it before its panel count moved into parentheses
#: ('no H&E panel among 4: A: …'); run folders filtered then still hold it
_OLD_NO_PANEL = re.compile(r"^no H&E panel among \d+")


def reason_key(reason: str | None) -> str:
    """Group reasons that differ only in file names or numbers: the text before the colon
    (and before any parenthesised detail). Stage summaries and ``histofetch status`` count by it.
    A split figure's ``no H&E panel among N: …`` (older run folders) counts as ``no H&E panel``."""
    if not reason:
        return "unknown"
    reason = _OLD_NO_PANEL.sub("no H&E panel", reason)
    return reason.split(":", 1)[0].split("(", 1)[0].strip()[:80]
