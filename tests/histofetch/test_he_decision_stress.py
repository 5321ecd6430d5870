"""benchmarks/he_decision_stress.py --cache: scores are reused only for the settings they
were measured with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "he_decision_stress.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def test_a_cache_of_other_settings_is_refused_before_anything_is_measured(
    tmp_path: Path,
) -> None:
    cache, out = tmp_path / "cache.json", tmp_path / "out.json"
    row = {"kind": "he:clean", "he": True, "held_out": False}
    shared = str(tmp_path.resolve())
    settings = {"shared": shared, "seed": 0, "per_kind": 60, "kinds": "", "native": "all"}
    from histofetch.filter import SCORER_VERSION

    cache.write_text(json.dumps({"settings": settings | {"scorer": SCORER_VERSION},
                                 "measured": [row]}))  # fmt: skip
    before = cache.read_text()
    for args, differs in [
        (["--native", "off"], "native 'all' (now 'off')"),
        (["--seed", "1"], "seed 0 (now 1)"),
        (["--kinds", "he:up-"], "kinds '' (now 'he:up-')"),
    ]:
        res = _run("--shared", shared, "--cache", str(cache), "--out", str(out), *args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1, res.stderr
        assert lines[0].startswith(f"error: {cache}: measured with other settings: ")
        assert differs in lines[0]
        assert not out.exists() and cache.read_text() == before

    cache.write_text(json.dumps([row]))  # written before settings were recorded
    res = _run("--shared", shared, "--cache", str(cache), "--out", str(out))
    assert res.returncode == 1 and "without its settings" in res.stderr and not out.exists()


def test_a_cache_of_the_same_settings_is_reused(tmp_path: Path) -> None:
    import argparse

    sys.path.insert(0, str(SCRIPT.parent))
    import he_decision_stress as stress

    args = argparse.Namespace(shared=tmp_path, seed=3, per_kind=5, kinds="", native="off")
    settings = stress.cache_settings(args)
    cache = tmp_path / "cache.json"
    assert stress.load_cache(cache, settings) is None  # no file yet: measure
    rows = [{"kind": "neg:blur", "he": False, "held_out": True, "p_he": 0.1}]
    stress.save_cache(cache, settings, rows)
    assert stress.load_cache(cache, settings) == rows
    assert stress.load_cache(cache, stress.cache_settings(args)) == rows  # same args again
