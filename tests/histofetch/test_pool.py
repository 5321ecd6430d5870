"""--jobs: extract and filter in worker processes, downloads in threads; same result as one
worker, the parent committing each record."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import PIL.Image
import pytest
from decoder_plugins import filter_run
from ncbi_server import FakeNcbi, ncbi_fixture  # noqa: F401 (fixture)
from pdf_factory import build_image_pdf, he_like, random_rgb
from pool_work import (
    crash_reading_any,
    default_sigint,
    die_reading,
    die_reading_each,
    downloaded_run,
    finish_while_another_dies,
    pool_broken,
    read_fine,
    result_back,
    watching_pool,
)
from s3_server import he_jpeg, real_jats
from test_panel_letters import lettered_figure

from histocore.manifest import MANIFEST_NAME, STORE_NAME, Image, Manifest, Record
from histofetch.download import run_download
from histofetch.extract import run_extract
from histofetch.filter import run_filter
from histofetch.pool import run_pooled, run_records
from histofetch.stage import UNFINISHED_KEY, StageSummary, _Stage
from histofetch.worker_deaths import DEATHS_IN_A_ROW, WorkerDied

LIST = "/pmc-oa-opendata/"

#: the periodic progress line a command prints to a non-terminal stderr every 30 s
#: (histocore.cli): "extracted: 4/6, ETA 0m16s, 0.12/s", then "extracted: 6/6 in 0m51s,
#: 0.12/s" at the end; a slow machine adds some
PROGRESS = re.compile(r"^[\w -]+: \d+(/\d+(, ETA \S+)?)?( in \S+)?, [\d.]+ ?\w*/s$")


def _said(err: str) -> list[str]:
    """stderr's lines without the periodic progress lines."""
    return [line for line in err.splitlines() if not PROGRESS.match(line)]


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pdfs")
    for k in range(6):
        images = [he_like(160, 160, seed=k), random_rgb(120, 120, seed=50 + k)]
        build_image_pdf(folder / f"paper{k}.pdf", images, caption=f"Figure {k}: H&E")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")  # fails cleanly
    return folder


def test_extract_and_filter_with_two_workers_equal_one(tmp_path: Path, pdfs: Path) -> None:
    runs = {}
    for jobs in (1, 2):
        run = tmp_path / "run" / str(jobs)
        run_extract(run, [pdfs], jobs=jobs)
        extracted = (run / MANIFEST_NAME).read_text()
        summary = run_filter(run, sheet=False, jobs=jobs)
        assert (summary.done, summary.failed) == (6, 0)
        runs[jobs] = (extracted, (run / MANIFEST_NAME).read_text())
        images = sorted(p.relative_to(run).as_posix() for p in (run / "images").rglob("*"))
        runs[jobs] += (images,)
    assert runs[1] == runs[2]
    m = Manifest.load(tmp_path / "run" / "2")
    assert len(m.records) == 7 and len(m.images) == 12
    assert [r.status for r in m.records.values()].count("failed") == 1


def _cloud(ncbi: FakeNcbi, pmcid: str, n: int) -> None:
    media = {"mds52601.jpg": he_jpeg(n), "mds52602.jpg": he_jpeg(n + 1)}
    ncbi.bucket.add_version(pmcid, 1, jats=real_jats(), media=media)


def test_downloads_run_side_by_side_and_equal_one_at_a_time(ncbi: FakeNcbi, tmp_path: Path) -> None:
    one, three = tmp_path / "one", tmp_path / "three"
    m = Manifest.load(one, create=True)
    for n in (61, 62, 63):
        _cloud(ncbi, f"PMC{n}", n)
        m.add_record(Record(id=f"pmid:{n}", pmid=str(n), pmcid=f"PMC{n}"))
    m.save()
    shutil.copytree(one, three)
    run_download(one, net=ncbi.config())

    hang = f"{LIST}PMC61.1/mds52601.jpg"  # the first record's figure is slow...
    ncbi.inject(hang, ("sleep", 4.0))
    seen = len(ncbi.log)
    summary = run_download(three, net=ncbi.config(), jobs=3)
    assert summary.done == 3
    slow = ncbi.requests_to(hang)[-1].time
    others = [r for r in ncbi.log[seen:] if "PMC62" in r.path or "PMC63" in r.path]
    # ...and the other records were fetched while it waited, not after it (one at a time,
    # their first request would come more than 4 s after the slow one)
    assert {r.path.split("/")[2][:5] for r in others} == {"PMC62", "PMC63"}
    assert max(r.time for r in others) < slow + 3.9
    got = (three / MANIFEST_NAME).read_text().replace(str(three), str(one))
    assert got == (one / MANIFEST_NAME).read_text()


def _claims(run: Path) -> list[tuple[str, ...]]:
    try:
        with sqlite3.connect(run / STORE_NAME, timeout=30) as db:
            return db.execute("SELECT record_id, stage FROM claims").fetchall()
    except sqlite3.OperationalError:  # the store is being created
        return []


def _group_ended(pgid: int, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_ctrl_c_while_workers_start_stops_once_without_tracebacks(
    tmp_path: Path, pdfs: Path, delay: float
) -> None:
    """A terminal sends Ctrl-C to the whole foreground group: the parent and its workers.
    The parent answers it once (one line, exit 130, no claim left); the workers, which are
    still starting (importing), print nothing and do not outlive it."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "histofetch.cli", "extract", "--run", str(run), "--jobs", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [*cmd, str(pdfs)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=default_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not _claims(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # the first record claimed: its worker is being started
    assert proc.poll() is None, "extract ended before its workers started"
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines() == ["interrupted"], err.decode()
    assert out == b""
    assert _claims(run) == []  # records in flight are redone by the next run...
    assert _group_ended(proc.pid), "a worker outlived the command"
    again = subprocess.run([*cmd, str(pdfs)], env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    assert "6 done" in again.stdout.decode() and "1 failed" in again.stdout.decode()
    assert "Traceback" not in again.stderr.decode()


def _workers_of(pid: int) -> list[int]:
    """The spawned worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    workers = []
    for child in children:
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            workers.append(int(child))
    return workers


def _extracted(run: Path) -> int:
    try:
        with sqlite3.connect(run / STORE_NAME, timeout=30) as db:
            rows = db.execute("SELECT data FROM records").fetchall()
    except sqlite3.OperationalError:
        return 0
    return sum('"stage": "extracted"' in data for (data,) in rows)


def test_a_worker_killed_mid_run_is_a_warning_and_the_run_finishes(tmp_path: Path) -> None:
    """The OOM killer (or a crash in MuPDF) takes a worker: one warning line naming the
    records it had, which are read again one at a time in a fresh pool; the run finishes
    (exit 0, every record extracted, no claim or dead attempt left)."""
    folder = tmp_path / "pdfs"
    folder.mkdir()
    for k in range(6):  # each read for a second or so: 4 noise images of 800 x 800 px
        build_image_pdf(
            folder / f"slow{k}.pdf", [random_rgb(800, 800, 10 * k + j) for j in range(4)]
        )
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "histofetch.cli", "extract", "--run", str(run), "--jobs", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [*cmd, str(folder)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while not _extracted(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # one record back: the workers are up and reading the next ones
    workers = _workers_of(proc.pid)
    assert workers and proc.poll() is None, "extract ended before a worker could be killed"
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    first, *rest = _said(err.decode())
    assert first.startswith("warning: ") and "worker process died" in first, err.decode()
    assert "one at a time" in first
    # what the killed attempt had written is cleared when its record is read again
    assert all("image files an interrupted attempt left" in line for line in rest), rest
    assert "extracted: 6 done, 0 already done, 0 failed" in out.decode()
    assert _claims(run) == []
    m = Manifest.load(run)
    assert [r.stage for r in m.records.values()] == ["extracted"] * 6
    assert not any(UNFINISHED_KEY in r.extra for r in m.records.values())
    assert len(m.images) == 24


def test_a_record_that_kills_its_reader_is_read_alone_then_failed(tmp_path: Path) -> None:
    """The records in flight when a worker died are read again one at a time in a fresh
    pool, so the one that kills its reader is found (its second death) and failed, and the
    others finish, all in one call. Later calls skip it; --retry-failed tries it again, at
    most twice more."""
    run = downloaded_run(tmp_path / "run", [f"r{k}" for k in range(4)])
    work = functools.partial(die_reading, victim="r1")

    def extract(retry_failed: bool = False) -> StageSummary:
        return run_records(
            Manifest.load(run), "extracted", work, jobs=2, guard_attempts=True,
            retry_failed=retry_failed,
        )  # fmt: skip

    summary = extract()
    assert (summary.done, summary.failed, summary.killers) == (3, 1, ["r1"])
    assert summary.reasons == {"unfinished attempts": 1}
    m = Manifest.load(run)
    assert m.records["r1"].status == "failed"
    assert (m.records["r1"].reason or "").startswith("unfinished attempts: 2 attempts")
    assert [r.stage for r in m.records.values()] == ["extracted", "downloaded"] + ["extracted"] * 2
    assert [r.extra.get(UNFINISHED_KEY) for r in m.records.values()] == [None, 2, None, None]
    assert _claims(run) == []
    summary = extract()
    assert (summary.done, summary.failed, summary.skipped, summary.killers) == (0, 0, 3, [])
    assert summary.failed_before == 1
    summary = extract(retry_failed=True)  # tried again: two more deaths in this call, then failed
    assert (summary.done, summary.failed, summary.killers) == (0, 1, ["r1"])
    assert Manifest.load(run).records["r1"].extra[UNFINISHED_KEY] == 4
    assert _claims(run) == []


def test_a_worker_that_dies_on_every_record_stops_the_call_and_fails_none(
    tmp_path: Path,
) -> None:
    """The machine, not the records, kills every worker (a native library that crashes
    here, too little memory for one worker): once DEATHS_IN_A_ROW records in a row have
    died read alone, WorkerDied ends the call instead of failing every record of the run.
    No record is failed or claimed, the ones never read are untouched, and a run on a
    healthy machine finishes them all."""
    ids = [f"r{k}" for k in range(8)]
    run = downloaded_run(tmp_path / "run", ids)
    with pytest.raises(WorkerDied, match=r"each read alone.*none was failed") as died:
        run_records(Manifest.load(run), "extracted", crash_reading_any, jobs=2,
                    guard_attempts=True)  # fmt: skip
    assert "this machine" in str(died.value)
    m = Manifest.load(run)
    assert [r.status for r in m.records.values()] == ["ok"] * 8
    assert [r.stage for r in m.records.values()] == ["downloaded"] * 8
    dead = {
        rid: r.extra[UNFINISHED_KEY] for rid, r in m.records.items() if UNFINISHED_KEY in r.extra
    }
    assert len(dead) <= DEATHS_IN_A_ROW + 2 and "r7" not in dead, dead  # stopped early
    assert _claims(run) == []
    summary = run_records(Manifest.load(run), "extracted", read_fine, jobs=2,
                          guard_attempts=True)  # fmt: skip
    assert (summary.done, summary.failed, summary.killers) == (8, 0, [])
    m = Manifest.load(run)
    assert [r.stage for r in m.records.values()] == ["extracted"] * 8
    assert not any(UNFINISHED_KEY in r.extra for r in m.records.values())


def test_records_that_kill_their_reader_in_a_row_are_failed_when_another_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three crashing records next to each other are the records, not the machine: the
    canary (here the stage names none: a bare record through the same work) comes back in a
    fresh worker, so they are failed and the rest finish (a rerun does not stop on them
    again). The deaths are two warnings, not one each: the
    first at once, the ones after it together when a result comes back."""
    ids = ["k1", "k2", "k3", "g0", "g1", "g2", "g3"]
    run = downloaded_run(tmp_path / "run", ids)
    work = functools.partial(die_reading_each, victims=("k1", "k2", "k3"))
    with caplog.at_level(logging.WARNING, logger="histofetch"):
        summary = run_records(Manifest.load(run), "extracted", work, jobs=2,
                              guard_attempts=True)  # fmt: skip
    assert (summary.done, sorted(summary.killers)) == (4, ["k1", "k2", "k3"])
    said = [r.getMessage() for r in caplog.records if r.name == "histofetch.worker_deaths"]
    assert "while reading k1, k2; reading k1, k2 again, one at a time" in said[0], said
    told = [re.search(r": (\d+) more worker process(?:es)? died", line) for line in said]
    deaths = sum(int(m.group(1)) if m else 1 for m in told)
    assert deaths == 5 and len(said) <= 4 and any(told), said  # k1+k2, k1, k2, k3+?, k3
    assert all(rid in " ".join(said) for rid in ("k1", "k2", "k3")), said
    m = Manifest.load(run)
    assert [m.records[rid].stage for rid in ids[3:]] == ["extracted"] * 4
    assert [m.records[rid].status for rid in ids[:3]] == ["failed"] * 3
    assert _claims(run) == []
    again = run_records(Manifest.load(run), "extracted", work, jobs=2, guard_attempts=True)
    assert (again.done, again.failed, again.failed_before) == (0, 0, 3)


def test_a_dead_worker_ends_only_its_pools_processes(tmp_path: Path) -> None:
    """A library caller's other thread starts a process of its own while the pool runs (a
    second pool, say): when a worker dies and the pool's workers are ended, that process
    is left running."""
    run = downloaded_run(tmp_path / "run", ["a", "b", "c", "victim"])
    bystanders: list[BaseProcess] = []

    def start_elsewhere() -> None:
        proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,))
        proc.start()
        bystanders.append(proc)

    def advance() -> None:  # "a" is back; the workers read on; "victim" dies later
        if not bystanders:
            other = threading.Thread(target=start_elsewhere)
            other.start()
            other.join()

    runner = _Stage(Manifest.load(run), "extracted", False, guard_attempts=True)
    work = functools.partial(die_reading, victim="victim")
    try:
        run_pooled(runner, work, jobs=2, threads=False, advance=advance)
        assert runner.summary.killers == ["victim"]
        assert bystanders and bystanders[0].is_alive(), "the pool ended another's process"
    finally:
        for proc in bystanders:
            proc.terminate()
            proc.join(10)


def test_without_the_guard_a_dead_worker_ends_the_call(tmp_path: Path) -> None:
    """A stage that does not guard attempts cannot tell which record killed its worker:
    one WorkerDied naming the records in flight, no claim left."""
    run = downloaded_run(tmp_path / "run", [f"r{k}" for k in range(2)])
    work = functools.partial(die_reading, victim="r1")
    with pytest.raises(WorkerDied, match=r"while reading r[01]"):
        run_records(Manifest.load(run), "extracted", work, jobs=2)
    assert _claims(run) == []
    assert Manifest.load(run).records["r1"].stage == "downloaded"


def test_results_back_before_a_worker_died_are_kept(tmp_path: Path) -> None:
    """A record whose worker finished while another worker died is stored as done; only the
    record whose worker died counts an attempt that never ended (read again alone, it dies
    again and is failed), and the record taken but never sent is read in the fresh pool."""
    run = downloaded_run(tmp_path / "run", ["first", "good", "victim", "last"])
    marks = tmp_path / "marks"
    marks.mkdir()
    calls = []

    def advance() -> None:  # the parent, busy after "first": "good" ends, "victim" dies
        calls.append(1)
        if len(calls) == 1:
            with watching_pool():  # before "go": good's result cannot come back unseen
                (marks / "go").touch()
                result_back("good")  # the pool holds good's result...
                (marks / "kill").touch()
                pool_broken()  # ...when it sees victim's worker die

    runner = _Stage(Manifest.load(run), "extracted", False, guard_attempts=True)
    work = functools.partial(finish_while_another_dies, folder=str(marks))
    run_pooled(runner, work, jobs=3, threads=False, advance=advance)
    m = Manifest.load(run)
    stages = {rid: (r.stage, r.extra.get(UNFINISHED_KEY)) for rid, r in m.records.items()}
    assert stages == {
        "first": ("extracted", None),
        "good": ("extracted", None),  # its result came back: kept, not a suspect
        "victim": ("downloaded", 2),  # read again alone, died again: failed
        "last": ("extracted", None),  # taken, never sent: read in the fresh pool
    }
    assert m.records["victim"].status == "failed" and runner.summary.killers == ["victim"]
    assert (runner.summary.done, runner.summary.failed) == (3, 1)
    assert _claims(run) == []


def test_ctrl_c_keeps_the_results_already_back(tmp_path: Path) -> None:
    """Ctrl-C while the parent is busy: a record whose result the pool already holds is
    committed; the one still on a worker is released for the next run. One ``interrupted``
    line, exit 130, no worker left."""
    run = downloaded_run(tmp_path / "run", ["first", "good", "slow"])
    marks = tmp_path / "marks"
    marks.mkdir()
    here = str(Path(__file__).resolve().parent)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    code = "import sys, pool_work; pool_work.interrupted_after_a_result(*sys.argv[1:])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run), str(marks)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, preexec_fn=default_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (marks / "ready").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the child never got good's result"
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1].decode()
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: parent and workers
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines() == ["interrupted"] and out == b""
    assert _group_ended(proc.pid), "a worker outlived the command"
    m = Manifest.load(run)
    assert {rid: r.stage for rid, r in m.records.items()} == {
        "first": "extracted",
        "good": "extracted",  # its result was back: kept
        "slow": "downloaded",  # in flight: redone by the next run
    }
    assert _claims(run) == []


@pytest.mark.parametrize(("n", "killers"), [(4, {2}), (8, {1, 2, 3, 4})], ids=["one", "four"])
def test_filter_jobs_fails_images_that_kill_their_decoder_and_finishes_the_rest(
    tmp_path: Path, n: int, killers: set[int]
) -> None:
    """``filter --jobs 2`` on a run where some figures kill the process that decodes them (a
    Pillow plugin, on the children's path through a ``sitecustomize``, exits the worker when
    it opens such a file): each is read again alone, dies again and is failed; the others
    are scored; the summary is printed and one error line ends it with exit 1. A second run
    skips the failed records and exits 0. ``four`` in a row are more than
    :data:`DEATHS_IN_A_ROW`: the canary (a small image of filter's own, decoded and scored
    in a fresh worker) comes back, so they are the records' fault. (Before the canary the
    next record read alone decided: there a fifth killer blamed the machine, nothing was
    failed, and every rerun stopped the same way.)"""
    run, cmd, env = filter_run(tmp_path, n, killers=killers)
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "not the records" not in err, err
    *warnings, last = _said(err)
    k = len(killers)
    assert last.startswith("error: ") and f"{k} record{'s' if k > 1 else ''} failed" in last
    assert all(f"pmid:{i}" in last for i in killers), err
    assert all(w.startswith("warning: ") for w in warnings), err
    failures = [w for w in warnings if ": skipped: 2 attempts" in w]
    assert len(failures) == k, err  # one line per record failed
    assert f"filtered: {n - k} done, 0 already done, {k} failed (unfinished attempts: {k})" in (
        proc.stdout.decode()
    )
    m = Manifest.load(run)
    assert {rid: r.status for rid, r in m.records.items()} == {
        f"pmid:{i}": "failed" if i in killers else "ok" for i in range(n)
    }
    assert all(m.records[f"pmid:{i}"].extra[UNFINISHED_KEY] == 2 for i in killers)
    scored = [i for i in range(n) if i not in killers]
    assert all(m.images[f"pmid:{i}/fig1"].p_he is not None for i in scored)
    assert _claims(run) == []
    again = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr.decode()
    assert f"filtered: 0 done, {n - k} already done, 0 failed, {k} failed before" in (
        again.stdout.decode()
    )


def test_a_machine_whose_jpeg_decoder_crashes_is_blamed_not_the_jpeg_figures(
    tmp_path: Path,
) -> None:
    """Most PMC figures are JPEGs: on a machine whose JPEG decoder alone crashes, every
    JPEG figure kills its reader, and the canary (a JPEG and a PNG) dies too, so the
    machine is blamed and no figure is failed (a PNG-only canary lived and failed them
    all as 'unfinished attempts')."""
    run, cmd, env = filter_run(tmp_path, 6, killers=set(), fmt="jpg")
    broken = env | {"HISTOFETCH_TEST_JPEG_DECODER_CRASHES": "1"}
    proc = subprocess.run(cmd, capture_output=True, env=broken, timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert _said(err)[-1].startswith("error: ") and "none was failed" in err, err
    with Manifest.load(run) as m:
        assert [r.status for r in m.records.values()] == ["ok"] * 6


def test_workers_dying_on_every_record_print_one_warning_then_the_error(
    tmp_path: Path,
) -> None:
    """``filter --jobs 2`` on a machine whose image decoder crashes on everything (a test
    Pillow plugin that kills the process on any file, as a native library that crashes
    here would): the canary dies too, so the command stops with one error line naming the
    records, after ONE warning that a worker died (not a line per death); nothing failed,
    and the same run on a healthy machine scores them all."""
    run, cmd, env = filter_run(tmp_path, 8, killers=set())
    crashing = env | {"HISTOFETCH_TEST_DECODERS_CRASH": "1"}
    proc = subprocess.run(cmd, capture_output=True, env=crashing, timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    lines = _said(err)
    assert len(lines) == 2, err
    warning, error = lines
    assert warning.startswith("warning: ") and "worker process died" in warning, err
    assert error.startswith("error: ") and "not the records" in error, err
    assert "pmid:0" in error and "none was failed" in error and "known-good" in error, err
    m = Manifest.load(run)
    assert [r.status for r in m.records.values()] == ["ok"] * 8
    assert _claims(run) == []
    healthy = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    assert healthy.returncode == 0, healthy.stderr.decode()
    assert "filtered: 8 done, 0 already done, 0 failed" in healthy.stdout.decode()


def test_ctrl_c_stops_running_downloads_at_once(ncbi: FakeNcbi, tmp_path: Path) -> None:
    """``download --jobs 2`` with both downloads mid-body on a server gone silent (the
    server says when both have their first bytes) and a third waiting: Ctrl-C ends the
    command at once (one ``interrupted`` line, exit 130), not when the reads time out
    (60 s here); nothing is committed, no claim or temp file is left, and a re-run
    downloads all three."""
    run = tmp_path / "run"
    m = Manifest.load(run, create=True)
    for n in (61, 62, 63):
        _cloud(ncbi, f"PMC{n}", n)
        m.add_record(Record(id=f"pmid:{n}", pmid=str(n), pmcid=f"PMC{n}"))
    m.save()
    before = Manifest.load(run).records
    for n in (61, 62):
        ncbi.stalls[f"{LIST}PMC{n}.1/mds52601.jpg"] = 90.0
    env = {**os.environ, **ncbi.env(), "HISTOFETCH_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "histofetch.cli", "download", "--run", str(run), "--jobs", "2"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint
    )
    try:
        deadline = time.monotonic() + 120
        while len(ncbi.stalled) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the two downloads never started"
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1].decode()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines() == ["interrupted"] and out == b""
    # waiting for them would take until their 60 s read timeout (HISTOFETCH_TIMEOUT; the
    # server stalls 90 s); 40 s leaves a loaded box time to start and stop the process
    assert took < 40, f"Ctrl-C took {took:.1f} s: it waited for the running downloads"
    assert _claims(run) == []
    after = Manifest.load(run)
    assert {k: r.stage for k, r in after.records.items()} == {k: r.stage for k, r in before.items()}
    assert after.images == {}
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    again = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    assert "downloaded: 3 done" in again.stdout.decode()


def _lettered_run(run: Path, n: int) -> Path:
    """A run folder of ``n`` extracted records, each with one figure lettered A and B."""
    with Manifest.load(run, create=True) as m:
        (run / "images").mkdir(parents=True)
        for k in range(n):
            rid = f"pmid:{k}"
            m.add_record(Record(id=rid, stage="extracted"))
            fig = lettered_figure("AB", "DejaVuSans-Bold.ttf", 26, "gutter")
            PIL.Image.fromarray(fig).save(run / f"images/{k}.png")
            h, w = fig.shape[:2]
            m.add_image(
                Image(id=f"{rid}/fig1", record_id=rid, path=f"images/{k}.png", sha256="0",
                      width=w, height=h, caption="Figure 1. H&E of a lymph node.")
            )  # fmt: skip
        m.save()
    return run


def _with_fake_tesseract(fake: Path, script: str) -> dict[str, str]:
    """The environment for a histofetch subprocess whose ``tesseract`` is ``script``
    (written to the new folder ``fake``, first on PATH)."""
    fake.mkdir()
    (fake / "tesseract").write_text(script)
    (fake / "tesseract").chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PATH"] = os.pathsep.join([str(fake), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env


FAILING_TESSERACT = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "tesseract 5.3.0"; exit 0; fi
echo "Error opening data file eng.traineddata" >&2
exit 1
"""


def test_workers_warnings_read_as_in_one_process(tmp_path: Path) -> None:
    """A warning logged in a worker process (here: Tesseract installed but failing, so each
    lettered figure's letters are not read) reached stderr as the bare message, without
    the ``warning:`` prefix the same warning has with ``--jobs 1``; information lines
    (``-v``'s debug lines too) were not shown at all."""
    fake = tmp_path / "bin"
    env = _with_fake_tesseract(fake, FAILING_TESSERACT)
    said = {}
    for jobs in (1, 2):
        run = _lettered_run(tmp_path / f"jobs{jobs}", 2)
        cmd = [sys.executable, "-m", "histofetch.cli", "filter", "--run", str(run),
               "--jobs", str(jobs), "--no-sheet"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
        err = proc.stderr.decode()
        assert proc.returncode == 0, err
        said[jobs] = sorted(_said(err))
    failed = "warning: panel letters not read: tesseract failed: (1, 'Error opening data file"
    assert len(said[1]) == 2 and all(line.startswith(failed) for line in said[1]), said[1]
    assert said[2] == said[1]


#: a ``tesseract`` whose version check fails, noting which process (a worker) ran it
BROKEN_TESSERACT = """#!/bin/sh
echo $PPID >> "$(dirname "$0")/checked_by"
exit 1
"""


def test_notice_logged_once_per_process_shown_once(tmp_path: Path) -> None:
    """A notice each process logs once (``panel letters are not read (no Tesseract …)``,
    after a cached check) was shown once per worker with ``--jobs 2``, once with
    ``--jobs 1`` (a warning per record is still shown for each: the test above)."""
    fake = tmp_path / "bin"
    env = _with_fake_tesseract(fake, BROKEN_TESSERACT)
    run = _lettered_run(tmp_path / "run", 6)
    cmd = [sys.executable, "-m", "histofetch.cli", "filter", "--run", str(run), "--jobs", "2",
           "--no-sheet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    checked_by = set((fake / "checked_by").read_text().split())
    if len(checked_by) < 2:  # one worker took every record before the other started
        pytest.skip(f"only one worker checked for Tesseract ({checked_by}): nothing to dedupe")
    notices = [line for line in _said(err) if line.startswith("panel letters are not read")]
    assert len(notices) == 1, err
    assert "(no Tesseract: Command" in notices[0], notices
    assert "returned non-zero exit status 1" in notices[0], notices
