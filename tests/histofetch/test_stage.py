"""run_per_record: which records a stage takes, failures, and saving after each record."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from histocore.manifest import Manifest, Record
from histofetch.stage import StageFailure, StageSummary, run_per_record


def _manifest(tmp_path: Path) -> Manifest:
    m = Manifest.load(tmp_path, create=True)
    m.add_record(Record(id="a", stage="downloaded"))
    m.add_record(Record(id="b", stage="downloaded"))
    m.add_record(Record(id="c", stage="extracted"))  # already done
    m.add_record(Record(id="d", stage="searched"))  # not ready for extract
    m.add_record(Record(id="e", stage="downloaded"))
    m.records["e"].fail("extracted", "corrupt PDF")
    return m


def test_only_records_at_the_previous_stage_are_worked(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    seen: list[str] = []
    summary = run_per_record(m, "extracted", lambda r: seen.append(r.id))
    assert seen == ["a", "b"]
    assert (summary.done, summary.skipped, summary.failed) == (2, 1, 0)
    # the failed record and the one not downloaded yet are not "already done"
    assert (summary.failed_before, summary.waiting) == (1, 1)
    assert summary.line() == (
        "extracted: 2 done, 1 already done, 0 failed, "
        "1 failed before (histofetch status says why), 1 not downloaded yet"
    )
    assert m.records["a"].stage == "extracted" and m.records["d"].stage == "searched"


def test_records_failed_at_another_stage_are_named_by_it(tmp_path: Path) -> None:
    """``histofetch run``: records that failed at download (in that very run) were counted
    at extract and filter as '2 failed before', which read as earlier extract failures."""
    m = _manifest(tmp_path)
    for rid in ("f", "g"):
        m.add_record(Record(id=rid, stage="searched"))
        m.records[rid].fail("downloaded", "no route gave files")
    summary = run_per_record(m, "extracted", lambda r: None)
    assert (summary.failed_before, dict(summary.failed_elsewhere)) == (1, {"download": 2})
    assert summary.line() == (
        "extracted: 2 done, 1 already done, 0 failed, 1 failed before, 2 failed in download "
        "(histofetch status says why), 1 not downloaded yet"
    )
    summary = run_per_record(m, "filtered", lambda r: None)
    assert summary.line() == (
        "filtered: 3 done, 0 already done, 0 failed, 1 failed in extract, 2 failed in download "
        "(histofetch status says why), 1 not extracted yet"
    )


def test_this_stages_failure_reasons_follow_its_own_failures(tmp_path: Path) -> None:
    """`extract` of local PDFs in a run whose downloads failed printed
    'extracted: 1 done, 0 already done, 2 failed, 20 failed in download (histofetch
    status says why) (encrypted PDF, needs a password: 1, not a PDF: 1)': the reasons of
    this stage's 2 failures read as those of the 20 download failures."""
    m = _manifest(tmp_path)
    m.add_record(Record(id="f", stage="searched"))
    m.records["f"].fail("downloaded", "no route gave files")

    def work(rec: Record) -> None:
        if rec.id == "a":
            raise StageFailure("encrypted PDF: needs a password")

    summary = run_per_record(m, "extracted", work)
    assert summary.line() == (
        "extracted: 1 done, 1 already done, 1 failed (encrypted PDF: 1), 1 failed before, "
        "1 failed in download (histofetch status says why), 1 not downloaded yet"
    )


def test_failures_are_recorded_with_reason_and_the_run_goes_on(tmp_path: Path) -> None:
    m = _manifest(tmp_path)

    def work(rec: Record) -> None:
        if rec.id == "a":
            raise StageFailure("encrypted PDF: needs a password\ntraceback noise")
        if rec.id == "b":
            raise ZeroDivisionError("boom")

    summary = run_per_record(m, "extracted", work)
    assert summary.failed == 2 and summary.reasons["encrypted PDF"] == 1
    a = Manifest.load(tmp_path).records["a"]
    assert (a.status, a.failed_stage, a.reason) == (
        "failed", "extracted", "encrypted PDF: needs a password",
    )  # fmt: skip
    assert a.stage == "downloaded"
    assert "failed" in summary.line()


def test_retry_failed_takes_failed_records_of_this_stage_again(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    seen: list[str] = []
    run_per_record(m, "extracted", lambda r: seen.append(r.id), retry_failed=True)
    assert seen == ["a", "b", "e"]
    assert m.records["e"].status == "ok" and m.records["e"].reason is None


def test_manifest_is_saved_after_each_record(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    m.save()

    def work(rec: Record) -> None:
        if rec.id == "b":  # by now "a" must already be on disk
            assert Manifest.load(tmp_path).records["a"].stage == "extracted"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_per_record(m, "extracted", work)
    on_disk = Manifest.load(tmp_path)
    assert on_disk.records["a"].stage == "extracted"
    assert on_disk.records["b"].stage == "downloaded" and on_disk.records["b"].status == "ok"


def test_summary_line() -> None:
    s = StageSummary("filtered", done=3, skipped=1)
    assert s.line() == "filtered: 3 done, 1 already done, 0 failed"


def test_summary_line_counts_the_reasons_it_leaves_out() -> None:
    """Seven failures with seven reasons showed five of them ('7 failed (a: 1, ... e: 1)'):
    the counts shown did not add up to the failures. The rest is now counted."""
    summary = StageSummary("extracted", failed=8)
    summary.reasons.update({"a": 2, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1})
    assert summary.line() == (
        "extracted: 0 done, 0 already done, 8 failed "
        "(a: 2; b: 1; c: 1; d: 1; e: 1; other reasons: 2)"
    )
    summary.reasons = Counter({"a": 2, "b": 1})
    assert summary.line().endswith("(a: 2; b: 1)")


def test_summary_line_keeps_reasons_that_hold_commas_apart() -> None:
    """Broken local PDFs printed '5 failed (empty file, not a PDF: 1, corrupt PDF, no
    pages: 1, not a PDF: 1, ...)': with ', ' between reasons that hold ', ' themselves,
    the reader could not tell where one ended. They are now kept apart by '; '."""
    summary = StageSummary("extracted", failed=3)
    summary.reasons.update({"empty file, not a PDF": 2, "corrupt PDF, no pages": 1})
    assert summary.line() == (
        "extracted: 0 done, 0 already done, 3 failed "
        "(empty file, not a PDF: 2; corrupt PDF, no pages: 1)"
    )


def test_disk_full_is_transient_leaves_no_partial_rows_and_is_retried(tmp_path: Path) -> None:
    import errno

    from histocore.manifest import Image

    m = _manifest(tmp_path)
    m.save()
    full = {"on": True}

    def work(rec: Record) -> None:
        m.add_image(Image(id=f"{rec.id}/1", record_id=rec.id, path="x.png", sha256="s",
                          width=1, height=1))  # fmt: skip
        if full["on"] and rec.id == "b":
            raise OSError(errno.ENOSPC, "No space left on device")

    first = run_per_record(m, "extracted", work)
    assert (first.done, first.failed) == (1, 1)
    b = Manifest.load(tmp_path).records["b"]
    assert (b.status, b.transient, b.stage) == ("failed", True, "downloaded")
    assert Manifest.load(tmp_path).images_of("b") == []  # the half-done row is gone
    full["on"] = False
    m2 = Manifest.load(tmp_path)
    m2_seen: list[str] = []
    again = run_per_record(m2, "extracted", lambda r: m2_seen.append(r.id))
    assert m2_seen == ["b"] and again.done == 1  # "e" (not transient) waits for --retry-failed
    assert Manifest.load(tmp_path).records["b"].status == "ok"


def test_an_os_error_fails_its_record_as_problem_then_file(tmp_path: Path) -> None:
    """A file where extract makes the record's image folder: the record failed with
    '[Errno 17] File exists: ...', which the summary counted as '[Errno 17] File exists'.
    Now 'problem: <file>' like every other reason (problem first, the file last); since
    histocore.io.make_parents the problem says what is wrong: 'is a file, not a folder'."""
    from pdf_factory import build_image_pdf, he_like

    from histofetch.extract import ingest_local, run_extract

    pdf = build_image_pdf(tmp_path / "a.pdf", [he_like(seed=1)])
    run = tmp_path / "run"
    with Manifest.load(run, create=True) as m:
        (rec,) = ingest_local(m, [pdf])
        m.save()
    folder = run / "images" / rec.id.replace(":", "_")
    folder.parent.mkdir()
    folder.write_text("in the way")
    summary = run_extract(run)  # (said 'File exists' before make_parents named the file)
    assert dict(summary.reasons) == {"is a file, not a folder": 1}
    with Manifest.load(run) as m:
        assert m.records[rec.id].reason == f"is a file, not a folder: {folder}"


def test_an_os_error_with_two_paths_names_the_one_in_the_way(tmp_path: Path) -> None:
    """A folder where extract writes a PNG: os.replace(temp, png) failed and the reason
    named the temp file, already deleted ('Is a directory: .../.p001_001.png.XXXX.tmp');
    os.link(src, dst) onto an existing dst said 'File exists: <src>'. Now the destination."""
    import os

    from pdf_factory import build_image_pdf, he_like

    from histocore.errors import describe
    from histofetch.extract import ingest_local, run_extract
    from histofetch.stage import failure_reason

    pdf = build_image_pdf(tmp_path / "a.pdf", [he_like(seed=1)])
    run = tmp_path / "run"
    with Manifest.load(run, create=True) as m:
        (rec,) = ingest_local(m, [pdf])
        m.save()
    png = run / "images" / rec.id.replace(":", "_") / "p001_001.png"
    (png / "x").mkdir(parents=True)
    summary = run_extract(run)
    assert summary.failed == 1
    with Manifest.load(run) as m:
        assert m.records[rec.id].reason == f"Is a directory: {png}"
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_text("a")
    dst.write_text("b")
    with pytest.raises(FileExistsError) as caught:
        os.link(src, dst)
    assert failure_reason(caught.value) == f"File exists: {dst}"
    assert describe(caught.value) == f"{dst}: file exists"  # the error line names it too
    src.unlink()
    new = tmp_path / "new"
    with pytest.raises(FileNotFoundError) as missing:  # either path may be the missing one
        os.link(src, new)
    assert failure_reason(missing.value) == f"No such file or directory: {src} -> {new}"


def test_a_record_taken_by_another_process_is_left_to_it(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    m.save()
    other = Manifest.load(tmp_path)
    assert other.claim("a", "extracted")  # another worker holds "a" (this process is alive)
    from histofetch.status import format_status, run_status

    info = run_status(tmp_path)
    assert info["in_progress"] == {"extracted": 1}
    assert "being worked on by running processes: extracted 1" in format_status(info)
    seen: list[str] = []
    summary = run_per_record(m, "extracted", lambda r: seen.append(r.id))
    assert seen == ["b"] and summary.elsewhere == 1
    assert "1 being done by another process" in summary.line()


def test_summary_counts_reasons_as_status_does(tmp_path: Path) -> None:
    from histofetch.status import run_status

    m = _manifest(tmp_path)

    def work(rec: Record) -> None:
        raise StageFailure(f"not a PDF (no %PDF- header): /runs/{rec.id}.pdf")

    summary = run_per_record(m, "extracted", work)
    assert dict(summary.reasons) == {"not a PDF": 2}
    assert run_status(tmp_path)["failure_reasons"] == {"not a PDF": 2, "corrupt PDF": 1}


def test_summary_and_status_escape_control_characters(tmp_path: Path) -> None:
    """Failure reasons can carry what a server or file said: the printed summary line and
    status report escape control characters (no terminal escape, no forged line)."""
    from histofetch.status import format_status, run_status

    m = _manifest(tmp_path)

    def work(rec: Record) -> None:
        raise StageFailure("server said \x1b[2J\x1b]0;pwned\x07\rerror: forged: detail")

    summary = run_per_record(m, "extracted", work)
    for text in (summary.line(), format_status(run_status(tmp_path))):
        assert not any(c in text for c in "\x1b\x07\r")
        assert "server said \\x1b[2J" in text


def test_ctrl_c_while_a_record_is_being_taken_leaves_no_claim(tmp_path: Path) -> None:
    """Taking a record claims it, then clears what a killed attempt left. A real Ctrl-C
    then must not leave the claim behind: extract would count it next time as an attempt
    that died reading the PDF. The child ``histofetch extract`` raises SIGINT on itself
    from a logging handler (loaded by a ``sitecustomize`` on its path) when take reports
    the strays removed: inside take, after the claim, whatever the load on the machine."""
    import os
    import sqlite3
    import subprocess
    import sys

    from pdf_factory import build_image_pdf, random_rgb
    from pool_work import default_sigint

    from histocore.io import record_slug
    from histocore.manifest import STORE_NAME

    pdf = build_image_pdf(tmp_path / "a.pdf", [random_rgb(64, 64, 0)])
    run = tmp_path / "run"
    m = Manifest.load(run, create=True)
    m.add_record(Record(id="pmid:1", stage="downloaded", pdf_path=str(pdf)))
    m.save()
    stray = run / "images" / record_slug("pmid:1")
    stray.mkdir(parents=True)
    for k in range(3):
        (stray / f"p{k}.png").touch()
    hook = tmp_path / "hook"
    hook.mkdir()
    seen = tmp_path / "claims_at_ctrl_c.txt"
    (hook / "sitecustomize.py").write_text(
        f"""import logging, signal, sqlite3

class _CtrlCWhenCleared(logging.Handler):
    def emit(self, record):
        if "removed" in record.getMessage():
            with sqlite3.connect({str(run / STORE_NAME)!r}) as db:
                rows = db.execute("SELECT record_id FROM claims").fetchall()
            open({str(seen)!r}, "w").write(repr(rows))
            signal.raise_signal(signal.SIGINT)

_log = logging.getLogger("histofetch.stage")
_log.addHandler(_CtrlCWhenCleared())
_log.setLevel(logging.INFO)
"""
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), *sys.path])}
    cmd = [sys.executable, "-m", "histofetch.cli", "extract", "--run", str(run)]
    proc = subprocess.run(cmd, capture_output=True, env=env, preexec_fn=default_sigint, timeout=120)
    assert seen.read_text() == "[('pmid:1',)]", "the Ctrl-C did not land while it was held"
    assert proc.returncode == 130 and proc.stderr.decode().splitlines() == ["interrupted"], (
        proc.stderr.decode()
    )
    with sqlite3.connect(run / STORE_NAME) as db:
        assert db.execute("SELECT * FROM claims").fetchall() == []


def test_a_take_interrupted_by_ctrl_c_releases_its_claim_for_any_caller(tmp_path: Path) -> None:
    """The runner's own take frees the claim when a real SIGINT lands while it clears what
    a killed attempt left, so a caller that does nothing about it leaves no claim either.
    The signal is raised by a logging handler when take reports the files it removed:
    inside take, after the claim, whatever the load on the machine."""
    import logging
    import signal
    import sqlite3

    from histocore.io import record_slug
    from histocore.manifest import STORE_NAME
    from histofetch.stage import _Stage

    run = tmp_path / "run"
    m = Manifest.load(run, create=True)
    m.add_record(Record(id="pmid:1", stage="downloaded"))
    m.save()
    stray = run / "images" / record_slug("pmid:1")
    stray.mkdir(parents=True)
    for k in range(3):
        (stray / f"p{k}.png").touch()
    claimed: list[list] = []

    class CtrlCWhenCleared(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "removed" in record.getMessage():  # the strays are gone; take goes on
                with sqlite3.connect(run / STORE_NAME) as db:
                    claimed.append(db.execute("SELECT record_id FROM claims").fetchall())
                signal.raise_signal(signal.SIGINT)

    logger = logging.getLogger("histofetch.stage")
    presser, level = CtrlCWhenCleared(), logger.level
    logger.addHandler(presser)
    logger.setLevel(logging.INFO)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    runner = _Stage(Manifest.load(run), "extracted", retry_failed=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.take("pmid:1")
    finally:
        signal.signal(signal.SIGINT, handler)
        logger.removeHandler(presser)
        logger.setLevel(level)
    assert claimed == [[("pmid:1",)]], "the Ctrl-C did not land while the record was held"
    assert list(stray.iterdir()) == []
    with sqlite3.connect(run / STORE_NAME) as db:
        assert db.execute("SELECT * FROM claims").fetchall() == []


@pytest.mark.parametrize(
    ("status", "transient"),
    [(None, True), (429, True), (503, True), (408, True), (404, False), (403, False)],
)
def test_a_network_error_is_transient_as_its_status_says(
    status: int | None, transient: bool
) -> None:
    """A NetError after retries: the statuses the client retries (and no answer at all)
    pass with time; the others are the record's."""
    from histofetch.http import NetError
    from histofetch.stage import is_transient

    assert is_transient(NetError("x", status=status)) is transient


def test_a_record_renamed_meanwhile_is_not_counted_as_another_process_work(
    tmp_path: Path,
) -> None:
    """A stage that read the run before a search renamed 'pmid:0' skips it (its claim is
    refused), but its summary said '1 being done by another process': nobody was. It now
    says the record was renamed, and the rename's next run takes it."""
    with Manifest.load(tmp_path, create=True) as m:
        m.add_record(Record(id="pmid:0", pmid="0", pmcid="PMC5", stage="searched"))
        m.add_record(Record(id="pmid:9", pmid="9", stage="searched"))
        m.save()
    seen: list[str] = []
    with Manifest.load(tmp_path) as stage_view:
        with Manifest.load(tmp_path) as search:
            search.rename_record("pmid:0", "pmcid:PMC5", pmid=None)
        summary = run_per_record(stage_view, "downloaded", lambda rec: seen.append(rec.id))
    assert seen == ["pmid:9"] and summary.done == 1
    assert "another process" not in summary.line(), summary.line()
    assert "1 renamed by a search meanwhile" in summary.line(), summary.line()


def test_failed_at_says_a_stage_not_recorded_so() -> None:
    """Records failed with no stage recorded were said to have 'failed at ?' (finding 2)."""
    from histofetch.stage import failed_at

    assert failed_at(["downloaded", "extracted", "downloaded"]) == "failed at download, extract"
    assert failed_at([None]) == "failed (stage not recorded)"
    assert failed_at(["extracted", None]) == "failed at extract and at a stage not recorded"
