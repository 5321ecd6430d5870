"""Kill `histofetch extract` / `filter` with SIGKILL at random points, re-run, and compare
with an uninterrupted run: the final manifests must be identical (no lost or duplicated rows)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pdf_factory import build_image_pdf, he_like

from histocore.manifest import MANIFEST_NAME, Manifest
from histocore.store import STORE_NAME
from histofetch.extract import ingest_local, run_extract
from histofetch.filter import run_filter

N_PDFS = 8


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "histofetch.cli", *args]


def _stage_counts(run: Path, stage: str) -> int:
    """Records committed at ``stage``, read from the run store as another process would."""
    if not (run / STORE_NAME).exists():
        return 0
    try:
        with sqlite3.connect(run / STORE_NAME, timeout=30) as db:
            query = "SELECT COUNT(*) FROM records WHERE stage = ? AND status = 'ok'"
            return int(db.execute(query, (stage,)).fetchone()[0])
    except sqlite3.OperationalError:  # the store is being created
        return 0


def _kill_until_done(
    args: list[str], run: Path, stage: str, total: int, rng: random.Random, max_kills: int = 3
) -> int:
    """Start ``args`` again and again, SIGKILLing it at a random point: once a random number
    of records (not all) reached ``stage``, after a further random delay (at most
    ``max_kills`` times); returns how many kills hit a half-done stage. The last start runs
    to the end."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    partial_kills = 0
    for _attempt in range(30):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None  # PIPE was asked for
        before = _stage_counts(run, stage)
        target = rng.randint(before + 1, total - 1) if before + 1 < total else total
        delay = rng.uniform(0.0, 0.05)
        while proc.poll() is None:
            done = _stage_counts(run, stage)
            if partial_kills < max_kills and target <= done < total:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                partial_kills += _stage_counts(run, stage) < total
                break
            time.sleep(0.005)
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()
            return partial_kills
        proc.stderr.close()
    raise AssertionError("the stage never finished")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    pdf_dir = tmp_path / "pdfs"
    pdf_dir.mkdir()
    for k in range(N_PDFS):
        images = [he_like(192, 192, seed=10 * k + j) for j in range(4)]
        build_image_pdf(pdf_dir / f"paper{k}.pdf", images, caption=f"Figure {k}: H&E")

    reference = tmp_path / "reference"
    run_extract(reference, [pdf_dir])
    run_filter(reference)

    killed = tmp_path / "killed"
    rng = random.Random(13)
    extract = _cli("extract", "--run", str(killed), str(pdf_dir))
    kills = _kill_until_done(extract, killed, "extracted", N_PDFS, rng)
    kills += _kill_until_done(_cli("filter", "--run", str(killed)), killed, "filtered", N_PDFS, rng)
    assert kills >= 2  # both stages were really interrupted half-way

    got = (killed / MANIFEST_NAME).read_text().splitlines()
    want = (reference / MANIFEST_NAME).read_text().splitlines()
    ids = [json.loads(line)["id"] for line in got[1:]]
    assert len(ids) == len(set(ids)) == N_PDFS * 5  # 8 records + 32 images, no duplicates
    assert got == want
    pngs = sorted(p.relative_to(killed) for p in (killed / "images").rglob("*"))
    assert pngs == sorted(p.relative_to(reference) for p in (reference / "images").rglob("*"))


def _record_stage(run: Path) -> str | None:
    with sqlite3.connect(run / STORE_NAME, timeout=30) as db:
        row = db.execute("SELECT stage FROM records").fetchone()
    return row[0] if row else None


@pytest.mark.slow
def test_pngs_of_a_killed_attempt_are_removed_when_the_record_is_redone(tmp_path: Path) -> None:
    """SIGKILL after extract wrote a record's PNGs but before it committed them: the redo
    (here keeping fewer images, --min-size 64) removes the PNGs no row names, in that
    record's image folder only."""
    sizes = [192 if k % 2 == 0 else 48 for k in range(24)]
    pdf = build_image_pdf(
        tmp_path / "paper.pdf", [he_like(s, s, seed=k) for k, s in enumerate(sizes)], "Fig. 1"
    )
    run = tmp_path / "run"
    with Manifest.load(run, create=True) as manifest:  # the record, at "downloaded"
        ingest_local(manifest, [pdf])
        manifest.save()
    images = run / "images"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for _attempt in range(5):  # kill while PNGs are on disk and the record not committed
        proc = subprocess.Popen(
            _cli("extract", "--run", str(run)), env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while proc.poll() is None and len(list(images.rglob("*.png"))) < len(sizes):
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if len(list(images.rglob("*.png"))) == len(sizes) and _record_stage(run) == "downloaded":
            break
        shutil.rmtree(images, ignore_errors=True)  # it committed first: again
        with sqlite3.connect(run / STORE_NAME) as db:
            db.execute("UPDATE records SET stage = 'downloaded'")
    else:
        raise AssertionError("never killed between writing the PNGs and committing them")
    (folder,) = images.iterdir()
    (run / "notes.png").write_bytes(b"a user's file")  # outside the record's folder
    (folder / "README.txt").write_text("not an image")  # not a PNG
    (images / "other").mkdir()
    (images / "other" / "x.png").write_bytes(b"another folder")  # no record being redone
    before = {p.name for p in folder.glob("*.png")}

    assert run_extract(run, min_size=64).done == 1
    manifest = Manifest.load(run)
    named = {str(manifest.resolve(i.path)) for i in manifest.images.values()}
    assert len(named) == 12 and {Path(p).name for p in named} < before  # the 48 px went
    assert {str(p) for p in folder.glob("*.png")} == named
    assert not list(folder.glob(".*.tmp"))
    assert (run / "notes.png").is_file() and (folder / "README.txt").is_file()
    assert (images / "other" / "x.png").is_file()
