"""--jobs: extract and filter in worker processes, downloads in threads; same result as one
worker, the parent committing each record."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ncbi_server import FakeNcbi, ncbi_fixture  # noqa: F401 (fixture)
from pdf_factory import build_image_pdf, he_like, random_rgb
from pool_work import (
    default_sigint,
    die_reading,
    finish_while_another_dies,
    pool_broken,
    result_back,
)
from s3_server import he_jpeg, real_jats

from histocore.manifest import MANIFEST_NAME, STORE_NAME, Manifest, Record
from histofetch.download import run_download
from histofetch.extract import run_extract
from histofetch.filter import run_filter
from histofetch.pool import WorkerDied, run_pooled, run_records
from histofetch.stage import UNFINISHED_KEY, StageSummary, _Stage

LIST = "/pmc-oa-opendata/"


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


def test_a_worker_killed_mid_run_is_one_error_line_and_the_rerun_finishes(
    tmp_path: Path,
) -> None:
    """The OOM killer (or a crash in MuPDF) takes a worker: one error line, exit 1, no
    claim left; the records it had count one attempt that died, and the rerun reads them."""
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
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err.decode()
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err.decode()
    assert "worker process died" in lines[0] and "run the command again" in lines[0]
    assert _claims(run) == []
    m = Manifest.load(run)
    died = [r.id for r in m.records.values() if r.extra.get(UNFINISHED_KEY) == 1]
    assert 1 <= len(died) <= 2 and all(rid in lines[0] for rid in died)
    assert all(m.records[rid].stage == "downloaded" for rid in died)

    again = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    m = Manifest.load(run)
    assert [r.stage for r in m.records.values()] == ["extracted"] * 6
    assert not any(UNFINISHED_KEY in r.extra for r in m.records.values())
    assert len(m.images) == 24


def test_a_record_that_kills_its_reader_is_read_alone_then_skipped(tmp_path: Path) -> None:
    """The records in flight when a worker died are read one at a time by the next run, so
    the one that kills its reader is found (its second death) and the others finish."""
    run = tmp_path / "run"
    m = Manifest.load(run, create=True)
    for k in range(4):
        m.add_record(Record(id=f"r{k}", stage="downloaded"))
    m.save()
    work = functools.partial(die_reading, victim="r1")

    def extract() -> StageSummary:
        return run_records(Manifest.load(run), "extracted", work, jobs=2, guard_attempts=True)

    with pytest.raises(WorkerDied, match="r1"):  # r0 and r1 in flight
        extract()
    m = Manifest.load(run)
    assert m.records["r1"].extra[UNFINISHED_KEY] == 1 and _claims(run) == []
    assert m.records["r2"].stage == m.records["r3"].stage == "downloaded"  # not taken yet
    with pytest.raises(WorkerDied, match=r"while reading r1;"):  # alone: its own death
        extract()
    m = Manifest.load(run)
    assert m.records["r1"].status == "failed"
    assert (m.records["r1"].reason or "").startswith("unfinished attempts: 2 attempts")
    assert m.records["r0"].stage == "extracted"  # read alone after r1's first death
    summary = extract()
    assert (summary.done, summary.failed, summary.skipped) == (2, 0, 2)
    m = Manifest.load(run)
    assert [r.stage for r in m.records.values()] == ["extracted", "downloaded"] + ["extracted"] * 2
    assert [r.extra.get(UNFINISHED_KEY) for r in m.records.values()] == [None, 2, None, None]
    assert _claims(run) == []


def test_results_back_before_a_worker_died_are_kept(tmp_path: Path) -> None:
    """A record whose worker finished while another worker died is stored as done; only the
    record whose worker died counts an attempt that never ended (and is named)."""
    run = tmp_path / "run"
    m = Manifest.load(run, create=True)
    for rid in ("first", "good", "victim", "last"):
        m.add_record(Record(id=rid, stage="downloaded"))
    m.save()
    marks = tmp_path / "marks"
    marks.mkdir()
    calls = []

    def advance() -> None:  # the parent, busy after "first": "good" ends, "victim" dies
        calls.append(1)
        if len(calls) == 1:
            (marks / "go").touch()
            result_back("good")  # the pool holds good's result...
            (marks / "kill").touch()
            pool_broken()  # ...when it sees victim's worker die

    runner = _Stage(Manifest.load(run), "extracted", False, guard_attempts=True)
    work = functools.partial(finish_while_another_dies, folder=str(marks))
    with pytest.raises(WorkerDied, match=r"while reading victim;"):
        run_pooled(runner, work, jobs=3, threads=False, advance=advance)
    m = Manifest.load(run)
    stages = {rid: (r.stage, r.extra.get(UNFINISHED_KEY)) for rid, r in m.records.items()}
    assert stages == {
        "first": ("extracted", None),
        "good": ("extracted", None),  # its result came back: kept, not a suspect
        "victim": ("downloaded", 1),
        "last": ("downloaded", None),  # taken, never sent
    }
    assert _claims(run) == []


def test_ctrl_c_keeps_the_results_already_back(tmp_path: Path) -> None:
    """Ctrl-C while the parent is busy: a record whose result the pool already holds is
    committed; the one still on a worker is released for the next run. One ``interrupted``
    line, exit 130, no worker left."""
    run = tmp_path / "run"
    m = Manifest.load(run, create=True)
    for rid in ("first", "good", "slow"):
        m.add_record(Record(id=rid, stage="downloaded"))
    m.save()
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
