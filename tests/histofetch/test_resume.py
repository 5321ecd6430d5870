"""Kill `histofetch extract` / `filter` with SIGKILL at random points, re-run, and compare
with an uninterrupted run: the final manifests must be identical (no lost or duplicated rows)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pdf_factory import build_image_pdf, he_like

from histocore.manifest import MANIFEST_NAME
from histocore.store import STORE_NAME
from histofetch.extract import run_extract
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
