"""histofetch merge: the inputs' review logs carried into the output's, and the part files
an interrupted merge leaves (the rest of merge is tested in test_shard.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from histocore.io import locked_folder
from histocore.manifest import Image, Manifest, Record
from histofetch.cli import app
from histofetch.merge import merge_runs
from histofetch.review.data import LOG_NAME, save_answer

runner = CliRunner()


def _labelled_run(run: Path, rid: str, answers: list[tuple[str, str | None]]) -> Path:
    """``run`` holding record ``rid`` with two kept figures (``fig1``, ``fig2``, each its own
    sha256 and file), answered on the review page as ``answers`` ((figure, label) each)."""
    (run / "images").mkdir(parents=True, exist_ok=True)
    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id=rid, stage="extracted"))
        for fig in ("fig1", "fig2"):
            image_id = f"{rid}/{fig}"
            path = f"images/{rid}_{fig}.png"
            (run / path).write_bytes(image_id.encode())
            sha = hashlib.sha256(image_id.encode()).hexdigest()
            m.add_image(
                Image(id=image_id, record_id=rid, path=path, sha256=sha, width=9, height=9,
                      kept=True)
            )  # fmt: skip
        m.save()
        for fig, label in answers:
            save_answer(m, f"{rid}/{fig}", label, "ann")
    return run


#: A merge stopped while appending the review log lines: the real merge, with the second
#: ``os.write`` (the second line appended) holding until the test kills the process.
_STOPPED_APPEND = """
import os, sys, time
from pathlib import Path
from histofetch.merge import merge_runs

real, calls = os.write, []
def write(fd, data):
    calls.append(fd)
    if len(calls) == 2:
        print("appending", flush=True)
        time.sleep(600)
    return real(fd, data)
os.write = write
merge_runs([Path(sys.argv[1])], Path(sys.argv[2]))
"""


def test_a_merge_killed_while_appending_the_log_lines_appends_the_rest_when_run_again(
    tmp_path: Path,
) -> None:
    """The merge committed the store, then appended the carried log lines: one killed in
    between (SIGKILL, a full disk) held every record, so run again it added nothing and
    carried nothing, the remaining answers lost for good. Now the lines are appended before
    the store is committed: run again, the merge adds the same images, counts the lines
    already appended as held and appends the rest. A refused merge appends no line."""
    a = _labelled_run(tmp_path / "a", "r1", [("fig1", "metastasis"), ("fig2", "no_metastasis")])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", _STOPPED_APPEND, str(a), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "appending\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    first = (a / LOG_NAME).read_text().splitlines()
    assert (out / LOG_NAME).read_text().splitlines() == first[:1]
    summary = merge_runs([a], out)
    assert summary.line() == "merged 1 run: 1 record, 2 images added, 1 review log line carried"
    assert (out / LOG_NAME).read_text().splitlines() == first
    with Manifest.load(out) as m:
        assert {i.id: i.label for i in m.images.values()} == {
            "r1/fig1": "metastasis", "r1/fig2": "no_metastasis"
        }  # fmt: skip
    # refused (one image id for two records) before anything is written: no line appended
    b = _labelled_run(tmp_path / "b", "r2", [("fig1", "metastasis")])
    c = _labelled_run(tmp_path / "c", "r3", [])
    with Manifest.load(c) as m:
        m.add_image(
            Image(id="r2/fig1", record_id="r3", path="images/r3_fig1.png", sha256="3" * 64,
                  width=9, height=9)
        )  # fmt: skip
        m.save()
    r = runner.invoke(app, ["merge", str(b), str(c), "--out", str(out)])
    assert r.exit_code == 1 and r.output.endswith("; nothing merged\n"), r.output
    assert (out / LOG_NAME).read_text().splitlines() == first
    fresh = tmp_path / "fresh"
    assert runner.invoke(app, ["merge", str(b), str(c), "--out", str(fresh)]).exit_code == 1
    assert not (fresh / LOG_NAME).exists()


def test_a_log_line_whose_image_id_is_not_text_is_not_carried_nor_counted(
    tmp_path: Path,
) -> None:
    """A log line whose image_id is a list or an object (hand-edited, or from elsewhere),
    in an input's log or the output's own, ended the merge in 'TypeError: unhashable type'.
    Now such a line is about no image added: an input's is not carried, the output's not
    counted as holding one."""
    a = _labelled_run(tmp_path / "a", "r1", [("fig1", "metastasis")])
    (good,) = (a / LOG_NAME).read_text().splitlines()
    odd = [json.dumps({"image_id": ["r1/fig1"], "label": "x"}), json.dumps({"image_id": {"a": 1}})]
    with (a / LOG_NAME).open("a") as fh:
        fh.write("\n".join(odd) + "\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert r.exit_code == 0 and r.output == (
        "merged 1 run: 1 record, 2 images added, 1 review log line carried\n"
    ), r.output
    assert (out / LOG_NAME).read_text() == good + "\n"
    b = _labelled_run(tmp_path / "b", "r2", [("fig1", "metastasis")])
    (b_line,) = (b / LOG_NAME).read_text().splitlines()
    own = tmp_path / "own"  # the output's own log holds the odd lines
    own.mkdir()
    (own / LOG_NAME).write_text("\n".join(odd) + "\n")
    r = runner.invoke(app, ["merge", str(b), "--out", str(own)])
    assert r.exit_code == 0 and r.output.endswith(", 1 review log line carried\n"), r.output
    assert (own / LOG_NAME).read_text() == "\n".join([*odd, b_line]) + "\n"


def test_the_part_file_cleanup_never_removes_the_file_a_rows_file_links_to(
    tmp_path: Path,
) -> None:
    """A row of the output names 'images/r1_fig1.png', a link to
    'images/.merge-abcdefgh.part' in the same folder: the next merge removed the link's
    target as a leftover part file, and the row's file was gone. Now a part file that is a
    row's file (by device and inode, links followed) is kept; a leftover one is removed."""
    out = tmp_path / "out"
    merge_runs([_labelled_run(tmp_path / "a", "r1", [])], out)
    row = out / "images" / "r1_fig1.png"
    target = row.parent / ".merge-abcdefgh.part"
    os.rename(row, target)
    row.symlink_to(target.name)
    stale = row.parent / ".merge-k3_x9q0z.part"
    stale.write_bytes(b"left by a killed merge")
    summary = merge_runs([_labelled_run(tmp_path / "b", "r2", [])], out)
    assert summary.stale_parts == 1 and not stale.exists()
    assert row.read_bytes() == b"r1/fig1"


def test_a_merge_its_store_refuses_appends_no_log_line(tmp_path: Path) -> None:
    """An output with no store yet is checked as the store is opened (a ``run.sqlite-wal``
    link refused): that came at the first commit, after the log lines were appended, so a
    refused merge left the answers in a log beside no manifest (and the files brought). The
    store is opened first, before any file is brought or line appended."""
    a = _labelled_run(tmp_path / "a", "r1", [("fig1", "metastasis")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.sqlite-wal").symlink_to(tmp_path / "nowhere")
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert r.exit_code == 1 and r.stderr.startswith(f"error: {out / 'run.sqlite-wal'}: "), r.output
    assert sorted(p.name for p in out.iterdir()) == ["run.sqlite-wal"]  # nothing brought


#: A merge holding at its first file linked into the output until ``sys.argv[3]`` exists.
_HELD_MERGE = """
import os, sys, time
from pathlib import Path
from histofetch.merge import merge_runs

real = os.link
def link(src, dst, *args, **kwargs):
    print("linking", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.05)
    return real(src, dst, *args, **kwargs)
os.link = link
print(merge_runs([Path(sys.argv[1])], Path(sys.argv[2])).line(), flush=True)
"""


def test_a_second_merge_into_the_same_output_at_once_is_refused(tmp_path: Path) -> None:
    """Two merges into one output took no lock: the second chose the same free names,
    appended the carried review log lines a second time and committed over the first. Now
    a merge holds the output folder locked throughout: a second one at once is refused
    with one line, writes nothing, and the first completes as if alone."""
    a = _labelled_run(tmp_path / "a", "r1", [("fig1", "metastasis"), ("fig2", "no_metastasis")])
    out, go = tmp_path / "out", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", _HELD_MERGE, str(a), str(out), str(go)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "linking\n"
        r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
        assert (r.exit_code, r.output) == (1, f"error: {out}: another merge is writing to it\n")
        go.touch()
        assert proc.stdout.read().splitlines()[-1] == (
            "merged 1 run: 1 record, 2 images added, 2 review log lines carried"
        )
    finally:
        go.touch()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert (out / LOG_NAME).read_text().splitlines() == (a / LOG_NAME).read_text().splitlines()
    with Manifest.load(out) as m:
        assert sorted(m.records) == ["r1"] and len(m.images) == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == ["r1_fig1.png", "r1_fig2.png"]
    # the lock goes with the merge: the next one runs (and finds everything there)
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert r.exit_code == 0 and "nothing new added" in r.output, r.output


def test_the_output_log_is_checked_under_the_merge_lock(tmp_path: Path) -> None:
    """The output's review log was checked before the folder lock was taken, so a merge
    writing to the output could change the log between the check and the lock (and the
    check judged a log another merge was writing). Now it is checked under the lock: while
    another merge holds the output, the answer is that one, and the log is judged after."""
    a = _labelled_run(tmp_path / "a", "r1", [("fig1", "metastasis")])
    out = tmp_path / "out"
    out.mkdir()
    (out / LOG_NAME).symlink_to(tmp_path / "elsewhere.jsonl")  # refused once it is looked at
    with locked_folder(out, busy=lambda: AssertionError("not locked")):  # another merge's
        r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
        assert (r.exit_code, r.output) == (1, f"error: {out}: another merge is writing to it\n")
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert (r.exit_code, r.output) == (
        1, f"error: {out / LOG_NAME}: not a regular file; nothing merged\n"
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [LOG_NAME]
    assert not (tmp_path / "elsewhere.jsonl").exists()
