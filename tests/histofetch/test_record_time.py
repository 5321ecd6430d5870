"""The pool's per-record time limit (``--record-timeout``): a record whose work never ends
has its worker killed, is read once more alone, then fails as ``timed out``; the others
finish; a canary that hangs blames the machine. Real worker processes, short limits."""

from __future__ import annotations

import functools
import logging
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import unboxed
from decoder_plugins import filter_run
from pool_work import crash_then_hang, downloaded_run, hang_reading, hang_reading_any, read_fine
from typer.testing import CliRunner

from histocore.manifest import STORE_NAME, Manifest
from histofetch.canary import bare_canary, canary_lives
from histofetch.cli import app
from histofetch.pool import run_records
from histofetch.record_time import DEFAULT_RECORD_TIMEOUT_S
from histofetch.stage import UNFINISHED_KEY
from histofetch.worker_deaths import WorkerDied


def _claims(run: Path) -> list[tuple[str, ...]]:
    with sqlite3.connect(run / STORE_NAME, timeout=30) as db:
        return db.execute("SELECT record_id, stage FROM claims").fetchall()


#: A call that ran past the 1-2 s limits by this much was not stopped at them: the work
#: here hangs for 3600 s and the default limit is 1800 s. Worker start-up (spawn, imports)
#: is most of the time and takes minutes on a loaded 2-core box, hence not less.
HUNG = 240


def test_a_record_that_never_ends_is_stopped_retried_once_then_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``slow`` never ends: past the limit its worker is killed, it is read again alone in a
    fresh worker, killed again, and fails with the limit in its reason; the records around
    it (in flight with it, or after it) are extracted, none counted as a dead attempt. The
    good records' workers take longer than the limit to start on a loaded machine: start-up
    is not timed."""
    ids = ["g0", "slow", "g1", "g2", "g3"]
    run = downloaded_run(tmp_path / "run", ids)
    work = functools.partial(hang_reading, victim="slow")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="histofetch"):
        summary = run_records(Manifest.load(run), "extracted", work, jobs=2,
                              guard_attempts=True, record_timeout=2)  # fmt: skip
    took = time.monotonic() - start
    assert (summary.done, summary.failed, summary.killers) == (4, 1, [])
    assert summary.reasons == {"timed out": 1}
    assert "(timed out: 1)" in summary.line()
    m = Manifest.load(run)
    slow = m.records["slow"]
    assert slow.status == "failed" and slow.failed_stage == "extracted" and not slow.transient
    assert slow.reason == (
        "timed out: took longer than 2 s (limit --record-timeout) in 2 attempts "
        "(--retry-failed tries again): slow"
    )
    assert slow.extra[UNFINISHED_KEY] == 2
    assert {rid: r.stage for rid, r in m.records.items() if rid != "slow"} == dict.fromkeys(
        ["g0", "g1", "g2", "g3"], "extracted"
    )
    assert not any(UNFINISHED_KEY in m.records[rid].extra for rid in ids if rid != "slow")
    assert _claims(run) == []
    said = [r.getMessage() for r in caplog.records]
    assert any("slow took longer than 2 s" in s and "read again, alone" in s for s in said)
    assert any("slow: skipped: took longer than 2 s" in s for s in said), said
    assert not any("worker process died" in s for s in said), said  # not a crash
    assert took < HUNG, took
    again = run_records(Manifest.load(run), "extracted", work, jobs=2, guard_attempts=True,
                        record_timeout=2)  # fmt: skip
    assert (again.done, again.failed, again.failed_before) == (0, 0, 1)  # skipped


@pytest.mark.parametrize("first", ["crash", "hang"])
def test_a_record_that_crashes_once_and_hangs_once_is_a_killer_not_timed_out(
    tmp_path: Path, first: str
) -> None:
    """``v`` kills its worker once and runs past the limit once (either order): it is not
    "timed out" (one of its deaths was a crash) but a record that killed its worker, listed
    in ``killers`` (the CLI's exit 1), its reason naming both kinds; the others finish."""
    run = downloaded_run(tmp_path / "run", ["a", "v", "b", "c"])
    work = functools.partial(crash_then_hang, folder=str(tmp_path), victim="v", first=first)
    summary = run_records(Manifest.load(run), "extracted", work, jobs=2, guard_attempts=True,
                          record_timeout=1.0)  # fmt: skip
    assert (summary.done, summary.failed, summary.killers) == (3, 1, ["v"])
    assert summary.reasons == {"unfinished attempts": 1}
    v = Manifest.load(run).records["v"]
    assert v.status == "failed" and v.extra[UNFINISHED_KEY] == 2
    assert "(1 crash, 1 time-out past 1 s)" in (v.reason or ""), v.reason
    assert _claims(run) == []


def test_a_canary_that_hangs_is_a_canary_that_died() -> None:
    """The canary runs under the limit too: one that never ends is ended (False) soon
    after the limit, counted from when its worker starts it; one that ends lives."""
    start = time.monotonic()
    assert not canary_lives(hang_reading_any, bare_canary, limit=1.0)
    assert time.monotonic() - start < HUNG  # worker start-up (spawn, imports) + 1 s
    assert canary_lives(read_fine, bare_canary, limit=1.0)


def test_records_that_all_hang_stop_the_call_when_the_canary_hangs_too(tmp_path: Path) -> None:
    """Every record runs past the limit, and so does the canary: the machine is to blame
    (WorkerDied naming the limit), no record is failed or claimed, and the call ends."""
    ids = [f"r{k}" for k in range(6)]
    run = downloaded_run(tmp_path / "run", ids)
    start = time.monotonic()
    with pytest.raises(WorkerDied, match=r"ran past the limit of 1 s \(--record-timeout\)") as e:
        run_records(Manifest.load(run), "extracted", hang_reading_any, jobs=2,
                    guard_attempts=True, record_timeout=1.0)  # fmt: skip
    assert time.monotonic() - start < HUNG
    assert "known-good" in str(e.value) and "none was failed" in str(e.value)
    assert "memory" not in str(e.value).split("reading", 1)[1]  # no guessed cause
    m = Manifest.load(run)
    assert [r.status for r in m.records.values()] == ["ok"] * 6
    assert [r.stage for r in m.records.values()] == ["downloaded"] * 6
    assert _claims(run) == []


def test_filter_jobs_fails_an_image_that_hangs_its_decoder_and_scores_the_rest(
    tmp_path: Path,
) -> None:
    """``filter --jobs 2`` with a limit of 5 s (HISTOFETCH_RECORD_TIMEOUT) where one
    figure makes its decoder hang (a Pillow plugin on the children's path, through a
    ``sitecustomize``): the record fails as timed out (one warning per stop, the summary
    counts it), the others are scored, exit 0 (a per-record failure, like a broken file)."""
    run, cmd, env = filter_run(tmp_path, 4, killers=set(), hangers=frozenset({1}))
    env["HISTOFETCH_RECORD_TIMEOUT"] = "5"
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "filtered: 3 done, 0 already done, 1 failed (timed out: 1)" in proc.stdout.decode()
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert sum("pmid:1 took longer than 5 s" in w for w in warnings) == 2, err
    assert any("skipped: took longer than 5 s" in w for w in warnings), err
    with Manifest.load(run) as m:
        assert m.records["pmid:1"].status == "failed"
        assert (m.records["pmid:1"].reason or "").startswith("timed out: took longer than 5 s")
        assert all(m.images[f"pmid:{k}/fig1"].p_he is not None for k in (0, 2, 3))
    assert _claims(run) == []


@pytest.mark.parametrize("command", ["extract", "filter", "run"])
def test_record_timeout_out_of_range_is_a_usage_error(tmp_path: Path, command: str) -> None:
    """``--record-timeout`` below 1 s or above a day is exit 2 naming the option (it also
    named HISTOFETCH_RECORD_TIMEOUT, set or not); the same in HISTOFETCH_RECORD_TIMEOUT is
    one ``error: environment variable …`` line, exit 1, like the other HISTOFETCH_* numbers
    (it was click's usage error, exit 2), unless the option is given. Nothing is done;
    the default is the library's."""
    runner = CliRunner()
    args = [command, *(["q"] if command == "run" else []), "--run", str(tmp_path / "run")]
    for value in ("0", "0.5", "86401", "soon"):
        result = runner.invoke(app, [*args, "--record-timeout", value])
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--record-timeout':" in result.stderr
        assert "env var" not in result.stderr
    for value in ("0", "86401", "inf", "soon"):
        result = runner.invoke(app, args, env={"HISTOFETCH_RECORD_TIMEOUT": value})
        assert result.exit_code == 1, result.output
        problem = " is not a number" if value == "soon" else ": give a number from 1 to 86400"
        assert result.stderr.splitlines() == [
            f"error: environment variable HISTOFETCH_RECORD_TIMEOUT={value!r}{problem}"
        ]
    given = runner.invoke(
        app, [*args, "--record-timeout", "60"], env={"HISTOFETCH_RECORD_TIMEOUT": "0"}
    )
    assert "HISTOFETCH_RECORD_TIMEOUT" not in given.output  # the option wins; not read
    assert not (tmp_path / "run").exists()
    help_text = unboxed(runner.invoke(app, [command, "--help"]).stdout)
    assert f"{DEFAULT_RECORD_TIMEOUT_S}" in help_text


def test_filter_one_job_with_a_limit_stops_an_image_that_hangs_its_decoder(
    tmp_path: Path,
) -> None:
    """``--jobs 1`` with a limit the user gave (HISTOFETCH_RECORD_TIMEOUT=5): the work ran
    in the command's own process, which the limit cannot stop (one warning line, then the
    hanging figure held the command forever). Now that one job runs in one worker process:
    the record fails as timed out, the others are scored, exit 0, as with ``--jobs 2``."""
    run, cmd, env = filter_run(tmp_path, 3, killers=set(), hangers=frozenset({1}))
    cmd[cmd.index("--jobs") + 1] = "1"
    env["HISTOFETCH_RECORD_TIMEOUT"] = "5"
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "applies only with" not in err
    assert "filtered: 2 done, 0 already done, 1 failed (timed out: 1)" in proc.stdout.decode()
    with Manifest.load(run) as m:
        assert (m.records["pmid:1"].reason or "").startswith("timed out: took longer than 5 s")
        assert all(m.images[f"pmid:{k}/fig1"].p_he is not None for k in (0, 2))
    assert _claims(run) == []


@pytest.mark.parametrize("command", ["extract", "filter"])
def test_one_job_runs_in_a_worker_only_when_a_limit_is_given(tmp_path: Path, command: str) -> None:
    """A limit given with one job (option or HISTOFETCH_RECORD_TIMEOUT) runs the work in one
    worker process (``-v`` shows its records coming back 'from the pool'); the default
    limit keeps one job in the command's own process, no worker started."""
    runner = CliRunner()
    for n, (extra, env, pooled) in enumerate(
        [
            (["--record-timeout", "50"], {}, True),
            (["--jobs", "1"], {"HISTOFETCH_RECORD_TIMEOUT": "50"}, True),
            ([], {"HISTOFETCH_RECORD_TIMEOUT": ""}, False),
        ]
    ):
        run = downloaded_run(tmp_path / f"run{n}", ["pmid:1"])
        if command == "filter":
            run_records(Manifest.load(run), "extracted", read_fine, jobs=1)
        args = ["-v", command, "--run", str(run)]
        result = runner.invoke(app, [*args, *extra], env=env)
        assert result.exit_code == 0, result.output
        assert "applies only with" not in result.stderr
        assert ("from the pool" in result.stderr) == pooled, (extra, env, result.stderr)


def test_the_limit_is_named_as_given(tmp_path: Path) -> None:
    """A limit of 1.0000001 s is named so in the error (':g' wrote '1 s', another limit)."""
    run = downloaded_run(tmp_path / "run", [f"r{k}" for k in range(6)])
    with pytest.raises(WorkerDied, match=r"ran past the limit of 1\.0000001 s \(--record"):
        run_records(Manifest.load(run), "extracted", hang_reading_any, jobs=2,
                    guard_attempts=True, record_timeout=1.0000001)  # fmt: skip
