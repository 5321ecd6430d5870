"""The pool's per-record time limit (``--record-timeout``): a record whose work runs too long
has its worker killed, like a record that kills its worker.

A hostile PDF or image can make a parser loop or crawl (MuPDF on a malformed xref or object
stream, Pillow on a pathological PNG or TIFF) without ever crashing. Workers say when they
start each record's work (:func:`histofetch.worker_processes.say_started`), so the limit
counts the work alone, never a worker's start-up (spawn, imports); a record still running
``limit`` seconds after it started has its worker killed (SIGKILL: native code cannot
refuse it). That breaks the pool like any dead worker; only the slow record counts an
attempt that never ended (:mod:`histofetch.worker_deaths`), the others in flight are read
again as if nothing happened. It is read again alone in a fresh worker, and its second time
out fails it with reason ``timed out: took longer than ...`` (``--retry-failed`` tries it
again); the run goes on with the next records. Time-outs in a row count towards the
breaker like deaths: the canary runs under the same limit, and a canary that hangs is a
canary that died (the machine is to blame).

The default (:data:`DEFAULT_RECORD_TIMEOUT_S`, 30 minutes) is a backstop against work that
never ends, not a speed target: a slow or overloaded machine must not fail good records
(``docs/benchmarks.md``, ``benchmarks/record_times.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from histocore.io import number_text
from histofetch.settings import Range, env_number

if TYPE_CHECKING:
    from histocore.manifest import Record
    from histofetch.pool import _Feed
    from histofetch.stage import _Stage
    from histofetch.worker_processes import Starts

log = logging.getLogger(__name__)

#: Seconds one record's work may run in a worker (``--record-timeout``; worker start-up is
#: not counted; wall time). The real article PDFs of the shared fixtures cost 1-31 s per
#: stage on 2 shared cores; a process starved by higher-priority jobs (nice 10 beside
#: nice -19, load 10) saw up to 371 s: about 5 times that, so only work that never ends is
#: stopped.
DEFAULT_RECORD_TIMEOUT_S = 1800.0
#: What a limit may be (``--record-timeout``, ``HISTOFETCH_RECORD_TIMEOUT``): 1 s to a day.
RECORD_TIMEOUT_RANGE = Range(1.0, 86_400.0)
#: The variable that gives a limit when the option does not.
RECORD_TIMEOUT_ENV = "HISTOFETCH_RECORD_TIMEOUT"
#: How often the parent looks for news while a record it sent has not started yet.
POLL_S = 0.25


def limit_from_env() -> float | None:
    """The limit :data:`RECORD_TIMEOUT_ENV` gives (None when unset or empty); a
    :class:`~histocore.errors.UsageError` naming the variable when it is out of range."""
    limit = env_number(RECORD_TIMEOUT_ENV, math.nan, RECORD_TIMEOUT_RANGE)
    return None if math.isnan(limit) else limit


def seconds(limit: float) -> str:
    """``120 s``, ``2.5 s``: a limit as the user gave it (``:g`` named 1.0000001 ``1 s``)."""
    return f"{number_text(limit)} s"


class RecordClock:
    """When each record of one pool started on its worker (as its worker said), and which
    of them ran past ``limit`` and had their worker killed (``overdue``). ``limit`` None:
    no limit, and the workers are not asked to say anything."""

    def __init__(self, limit: float | None, starts: Starts | None) -> None:
        self.limit, self.starts = limit, starts
        self.started: dict[str, tuple[int, float]] = {}  # record -> (worker pid, start)
        self.latest: dict[int, str] = {}  # worker pid -> the record it started last
        self.ended: set[str] = set()  # work ended, result on its way
        self.overdue: set[str] = set()  # killed for time in this pool

    def _drain(self) -> None:
        while self.starts is not None and not self.starts.empty():
            rid, pid, when, ended = self.starts.get()
            if ended:
                self.ended.add(rid)
                continue
            self.started.setdefault(rid, (pid, when))
            self.latest[pid] = rid

    def wait_s(self, running: Iterable[str]) -> float | None:
        """How long the parent may wait for results before it must look at the clock."""
        if self.limit is None:
            return None
        self._drain()
        now, waits = time.monotonic(), []
        for rid in running:
            if rid in self.overdue or rid in self.ended:
                continue
            if rid not in self.started:
                waits.append(POLL_S)  # not started yet: look again soon
            else:
                waits.append(self.started[rid][1] + self.limit - now)
        return max(0.01, min(waits, default=POLL_S))

    def stop_overdue(self, running: Iterable[str]) -> list[str]:
        """Kill the worker of each record that has run past the limit; those records."""
        if self.limit is None:
            return []
        self._drain()
        now, killed = time.monotonic(), []
        for rid in running:
            if rid in self.overdue or rid in self.ended or rid not in self.started:
                continue
            pid, when = self.started[rid]
            # a worker that started another record since has sent this one's result
            if now - when > self.limit and self.latest.get(pid) == rid:
                log.debug("%s: past %s on worker %d: killed", rid, seconds(self.limit), pid)
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile: a death
                    os.kill(pid, signal.SIGKILL)
                self.overdue.add(rid)
                killed.append(rid)
        return killed

    def forget(self, rid: str) -> None:
        """``rid``'s result is back."""
        self.started.pop(rid, None)
        self.ended.discard(rid)


def count_timeouts(feed: _Feed, deaths: Counter[str]) -> None:
    """The pool broke because records ran past the limit: each of them counts one attempt
    that never ended (read again alone, or, at its second, failed once another record's
    result comes back, :meth:`_Feed.confirm`); the other records in flight were only in the
    way and are read again, nothing counted."""
    from histofetch.stage import UNFINISHED_KEY

    runner, limit = feed.runner, feed.clock.limit or 0.0
    records = runner.manifest.records
    for rid in sorted(feed.clock.overdue & feed.sent):
        deaths[rid] += 1
        feed.timeouts[rid] += 1
        if rid not in feed.alone_deaths:  # its own death: the breaker counts it
            feed.alone_deaths.append(rid)
        rec = records[rid]
        n = int(rec.extra.get(UNFINISHED_KEY, 0)) + 1
        rec.extra[UNFINISHED_KEY] = n
        runner.manifest.commit_record(rid, release=False)
        last = runner.too_many_deaths(n, deaths[rid])
        log.warning(
            "%s: %s: %s took longer than %s (limit --record-timeout): its worker was "
            "stopped%s",
            runner.manifest.run_dir, runner.stage, rid, seconds(limit),
            "" if last else "; it is read again, alone",
        )  # fmt: skip
        if last:
            feed.held.discard(rid)
            feed.deferred.append(rid)
            feed.finished.add(rid)
            feed.advance()


def death_kinds(crashes: int, timeouts: int, limit: float | None) -> str:
    """``1 crash, 1 time-out past 2 s``: how a record's dead attempts of one call died,
    when some ran past the limit; "" when none did (the plain killer's reason)."""
    if not timeouts:
        return ""
    return (
        f"{crashes} crash{'es' if crashes != 1 else ''}, {timeouts} time-out"
        f"{'s' if timeouts != 1 else ''} past {seconds(limit or 0.0)}"
    )


def fail_slow(runner: _Stage, rec: Record, limit: float, times: int) -> None:
    """Fail a record whose work ran past the limit too often, every dead attempt of this
    call a time-out (reason ``timed out``; mixed with crashes it is a killer,
    :meth:`_Stage.fail_killer`), with one warning line; commit it, release its claim."""
    what = rec.pdf_path or rec.id
    attempts = f"{times} attempt{'s' if times > 1 else ''}"
    log.warning(
        "%s: skipped: took longer than %s (limit --record-timeout) in %s; --retry-failed "
        "tries again",
        what, seconds(limit), attempts,
    )  # fmt: skip
    runner.fail_for_good(
        rec,
        f"timed out: took longer than {seconds(limit)} (limit --record-timeout) in "
        f"{attempts} (--retry-failed tries again): {what}",
    )
