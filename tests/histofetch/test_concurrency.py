"""Two `histofetch extract` processes on one run folder, at the same time: every record once,
with all its images, whether they were given disjoint PDF sets or the same set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pdf_factory import build_image_pdf, he_like

from histocore.manifest import MANIFEST_NAME
from histocore.store import RunStore
from histofetch.extract import run_extract

N_EACH = 5


def _pdfs(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    for k in range(N_EACH):
        images = [he_like(160, 160, seed=seed + 10 * k + j) for j in range(3)]
        build_image_pdf(folder / f"paper{k}.pdf", images, caption=f"Figure {k}: H&E")
    return folder


def _together(*commands: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "histofetch.cli", *cmd],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for cmd in commands
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / MANIFEST_NAME).read_text().splitlines()[1:]]


def _by_id(rows: list[dict]) -> dict[str, dict]:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a row is duplicated"
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("pdfs")
    a, b = _pdfs(root / "a", 0), _pdfs(root / "b", 1000)
    reference = root / "reference"
    run_extract(reference, [a, b])
    return a, b, _by_id(_rows(reference))


def _check(run: Path, want: dict[str, dict]) -> None:
    got = _by_id(_rows(run))
    assert got.keys() == want.keys()
    assert all(r["stage"] == "extracted" and r["status"] == "ok" for r in got.values()
               if r["kind"] == "record")  # fmt: skip
    for key, row in want.items():  # same rows as one process alone, paths aside
        assert {k: v for k, v in got[key].items() if k != "pdf_path"} == {
            k: v for k, v in row.items() if k != "pdf_path"
        }
    assert RunStore(run).count("claims") == 0
    assert not [p for p in run.rglob("*.tmp")]


def test_two_extracts_on_disjoint_sets_keep_every_record(tmp_path: Path, sets) -> None:
    a, b, want = sets
    run = tmp_path / "run"
    _together(["extract", "--run", str(run), str(a)], ["extract", "--run", str(run), str(b)])
    _check(run, want)
    assert len([r for r in want.values() if r["kind"] == "record"]) == 2 * N_EACH


def test_two_extracts_on_the_same_set_do_each_record_once(tmp_path: Path, sets) -> None:
    a, b, want = sets
    run = tmp_path / "run"
    args = ["extract", "--run", str(run), str(a), str(b)]
    _together(args, args)
    _check(run, want)
