"""What a dead worker means for a pool (``--jobs N``): attempts counted, suspects, the breaker.

When a worker dies (a decoder crash, the OOM killer) every record on it counts one attempt
that never ended (:mod:`histofetch.stage` guards attempts). Those records (suspects) are
read again one at a time, so the death of a worker reading one alone is that record's own;
one that dies too often is failed. The breaker: when :data:`DEATHS_IN_A_ROW` records in a
row kill the worker reading each alone, a fresh worker runs the stage's canary, a known-good
input that is none of the run's records (:mod:`histofetch.canary`); if its worker dies
too (or runs past the time limit), the cause is the machine and :class:`WorkerDied` ends
the call; if it comes back, the deaths were the records' (those that died too often are
failed). Workers killed for running past the time limit count like deaths of the slow
records alone (:mod:`histofetch.record_time`). The first death since a
result came back is one warning at once; the deaths that follow it are one summary warning
when a result comes back (or in the error line).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from histocore.errors import DomainError
from histofetch.record_time import seconds
from histofetch.stage import UNFINISHED_KEY, _Stage

if TYPE_CHECKING:
    from histofetch.pool import _Feed

log = logging.getLogger(__name__)

#: Records in a row whose worker died while each was read alone, with no result back in
#: between, that stop the call: the cause is then this machine, not the records.
DEATHS_IN_A_ROW = 3

_DIED = "(crashed, out of memory or killed)"


class WorkerDied(DomainError):
    """A worker process died (killed, crashed, out of memory) with records in flight."""


def count_deaths(feed: _Feed, deaths: Counter[str]) -> None:
    """The records on a worker when one died: one more attempt each that never ended. A
    record read alone that this makes too many is failed only once another record's result
    comes back (:meth:`_Feed.confirm`): until then it keeps its claim, counted."""
    runner = feed.runner
    sent = sorted(feed.sent)
    records = runner.manifest.records
    deaths.update(sent)
    alone = len(sent) == 1
    if alone and sent[0] not in feed.alone_deaths:  # each record once
        feed.alone_deaths += sent
    again = [
        rid
        for rid in sent
        if not runner.too_many_deaths(
            int(records[rid].extra.get(UNFINISHED_KEY, 0)) + 1, deaths[rid]
        )
    ]
    feed.deaths_in_a_row.append(sent)
    if len(feed.deaths_in_a_row) == 1:  # the first since a result came back: said at once
        log.warning(
            "%s: %s: a worker process died %s while reading %s%s",
            runner.manifest.run_dir, runner.stage, _DIED, named(sent),
            f"; reading {named(again)} again, one at a time" if again else "",
        )  # fmt: skip
    for rid in sent:
        rec = records[rid]
        n = int(rec.extra.get(UNFINISHED_KEY, 0)) + 1
        if alone and runner.too_many_deaths(n, deaths[rid]):
            rec.extra[UNFINISHED_KEY] = n
            runner.manifest.commit_record(rid, release=False)
            feed.held.discard(rid)
            feed.deferred.append(rid)
        elif runner._after_death(rec, deaths[rid]):
            continue  # read again
        feed.finished.add(rid)  # failed, or to be failed: not read again
        feed.advance()


def report_deaths(feed: _Feed) -> None:
    """One warning for the deaths after the first since the last result came back (the
    first was said at once), then start counting anew."""
    later, feed.deaths_in_a_row = feed.deaths_in_a_row[1:], []
    if not later:
        return
    rids = list(dict.fromkeys(rid for sent in later for rid in sent))
    log.warning(
        "%s: %s: %d more worker process%s died %s while reading %s",
        feed.runner.manifest.run_dir, feed.runner.stage, len(later),
        "es" if len(later) > 1 else "", _DIED, named(rids),
    )  # fmt: skip


def named(rids: list[str]) -> str:
    """The first five ids, and how many more."""
    return ", ".join(rids[:5]) + (f" and {len(rids) - 5} more" if len(rids) > 5 else "")


def died(runner: _Stage, sent: list[str]) -> str:
    """:class:`WorkerDied`'s message when the call cannot go on (no guard, nothing sent)."""
    then = (
        "they are read one at a time by the next run, and a record whose reader dies twice "
        "is skipped until --retry-failed"
        if runner.guard_attempts
        else "the next run tries them again"
    )
    return (
        f"{runner.manifest.run_dir}: {runner.stage}: a worker process died (killed, crashed "
        f"or out of memory) while reading {named(sent) or 'nothing'}; run the command "
        f"again: {then}"
    )


def machine_kills(feed: _Feed) -> str:
    """:class:`WorkerDied`'s message when the canary died too: the deaths since the last
    result back are the machine's (they are said here, not in a warning). What is known,
    and only that: records read alone killed their workers, and so did the known-good
    input (why, a crash, the memory a worker gets, a broken install, cannot be told)."""
    runner, rids = feed.runner, feed.alone_deaths
    feed.deaths_in_a_row = []
    how = _DIED
    if any(feed.timeouts[rid] for rid in rids):  # record_time: workers killed for time too
        how = f"or ran past the limit of {seconds(feed.limit or 0.0)} (--record-timeout)"
    return (
        f"{runner.manifest.run_dir}: {runner.stage}: worker processes died {how} reading "
        f"each of {named(rids)}, each read alone, and so did a fresh worker running a small "
        "known-good input built for the check: the cause is this machine or installation, "
        "not the records; none was failed, the next run reads them again"
    )


def suspects_first(runner: _Stage, todo: list[str]) -> tuple[list[str], list[str]]:
    """Of ``todo``, the records an earlier attempt of which was killed unfinished (guarded
    stages), and the others."""
    if not runner.guard_attempts:
        return [], list(todo)
    dead = {rid for rid, st in runner.manifest._db().abandoned_claims() if st == runner.stage}
    records = runner.manifest.records
    suspect = [rid in dead or bool(records[rid].extra.get(UNFINISHED_KEY)) for rid in todo]
    return (
        [rid for rid, s in zip(todo, suspect, strict=True) if s],
        [rid for rid, s in zip(todo, suspect, strict=True) if not s],
    )
