"""benchmarks/he_decision_stress.py --cache: scores are reused only for the settings they
were measured with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "he_decision_stress.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def _stress():
    sys.path.insert(0, str(SCRIPT.parent))
    import he_decision_stress as stress

    return stress


def _exit_of_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> object:
    """The script's ``main()`` run in this process (the subprocess runs check the command
    end to end; this checks more cases without starting the script each time): the code
    of the SystemExit it ends with (its one-line message, when it is refused)."""
    stress = _stress()
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    monkeypatch.setattr(stress.scale, "MODE", stress.scale.MODE)  # main() sets it
    with pytest.raises(SystemExit) as ended:
        stress.main()
    return ended.value.code


def test_a_cache_of_other_settings_is_refused_before_anything_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    cache, out = tmp_path / "cache.json", tmp_path / "out.json"
    row = {"kind": "he:clean", "he": True, "held_out": False}
    shared = str(tmp_path.resolve())
    args = argparse.Namespace(shared=tmp_path, seed=0, per_kind=60, kinds="", native="all")
    settings = _stress().cache_settings(args)
    weights, version = settings["weights"], settings["stress_set"]
    assert len(weights) == 64 and len(version) == 16
    for had, argv, differs in [
        (settings, ["--native", "off"], "native 'all' (now 'off')"),
        (settings, ["--seed", "1"], "seed 0 (now 1)"),
        (settings, ["--kinds", "he:up-"], "kinds '' (now 'he:up-')"),
        # other classifier weights, or an older version of the code building the set
        (settings | {"weights": "0" * 64}, [], f"weights '{'0' * 64}' (now '{weights}')"),
        (settings | {"stress_set": "old"}, [], f"stress_set 'old' (now '{version}')"),
    ]:  # fmt: skip
        cache.write_text(json.dumps({"settings": had, "measured": [row]}))
        before = cache.read_text()
        command = ["--shared", shared, "--native", "all", "--cache", str(cache), "--out",
                   str(out), *argv]  # fmt: skip
        if argv == ["--native", "off"]:  # the command itself: one line on stderr, exit 1
            res = _run(*command)
            lines = res.stderr.strip().splitlines()
            assert res.returncode == 1 and len(lines) == 1, res.stderr
        else:  # the same main() in this process: the message it exits with (exit 1)
            lines = [str(_exit_of_main(monkeypatch, *command))]
            assert "\n" not in lines[0] and capsys.readouterr().err == ""
        assert lines[0].startswith(f"error: {cache}: measured with other settings: ")
        assert differs in lines[0]
        assert not out.exists() and cache.read_text() == before

    cache.write_text(json.dumps([row]))  # written before settings were recorded
    message = _exit_of_main(monkeypatch, "--shared", shared, "--cache", str(cache), "--out",
                            str(out))  # fmt: skip
    assert isinstance(message, str) and "without its settings" in message and not out.exists()


def _version_of(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``stress_set_version()`` of the script copied in ``folder``, loaded in this process
    under its own name (it reads its helper modules from its folder; a subprocess per copy
    took seconds each to import the same libraries again)."""
    import importlib.util

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script inserts its folders
    for helper in folder.glob("*.py"):  # its helpers are imported from this copy, not reused
        monkeypatch.delitem(sys.modules, helper.stem, raising=False)  # (put back after)
    loaded = set(sys.modules)
    name = f"he_decision_stress_{folder.name}"
    spec = importlib.util.spec_from_file_location(name, folder / "he_decision_stress.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        return module.stress_set_version()
    finally:  # the copy's helpers leave with it: later imports get the real ones
        for added in set(sys.modules) - loaded - {name}:
            where = getattr(sys.modules[added], "__file__", None) or ""
            if Path(where).parent == folder:  # not a library first imported on the way
                del sys.modules[added]


def test_the_stress_set_version_follows_the_code_that_builds_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editing a builder (here or in a helper module) changes the version; editing the
    report or the command line does not."""
    import shutil

    def copy(name: str, edit: tuple[str, str, str] | None = None) -> Path:
        folder = tmp_path / name
        shutil.copytree(SCRIPT.parent, folder, ignore=shutil.ignore_patterns("results"))
        if edit:
            path = folder / edit[0]
            text = path.read_text()
            assert edit[1] in text
            path.write_text(text.replace(edit[1], edit[2], 1))
        return folder

    base = _version_of(copy("base"), monkeypatch)
    assert base == _stress().stress_set_version()
    assert (
        _version_of(copy("small", ("he_stress_small.py", "\n", "\n# edited\n")), monkeypatch)
        != base
    )
    build = ("he_decision_stress.py", "    items: list[Item] = []", "    items: list[Item] = []  #")
    assert _version_of(copy("build", build), monkeypatch) != base
    cli = ("he_decision_stress.py", "    t0 = time.time()", "    t0 = time.time()  # edited")
    assert _version_of(copy("cli", cli), monkeypatch) == base


def test_a_cache_of_the_same_settings_is_reused(tmp_path: Path) -> None:
    import argparse

    stress = _stress()
    args = argparse.Namespace(shared=tmp_path, seed=3, per_kind=5, kinds="", native="off")
    settings = stress.cache_settings(args)
    cache = tmp_path / "cache.json"
    assert stress.load_cache(cache, settings) is None  # no file yet: measure
    rows = [{"kind": "neg:blur", "he": False, "held_out": True, "p_he": 0.1}]
    stress.save_cache(cache, settings, rows)
    assert stress.load_cache(cache, settings) == rows
    assert stress.load_cache(cache, stress.cache_settings(args)) == rows  # same args again


def test_missing_unreadable_or_short_pcam_data_is_one_error_line(tmp_path: Path) -> None:
    """The stress set draws 120 PCam training patches: a missing ``train.h5``, one that is
    not HDF5, or one with fewer usable patches ends in one ``error:`` line, exit 1, no
    output file, before anything is built."""
    import io

    import h5py
    import numpy as np
    import PIL.Image

    out = tmp_path / "out.json"
    h5 = tmp_path / "data/pcam_real/dev/train.h5"
    res = _run("--shared", str(tmp_path), "--out", str(out))
    assert res.returncode == 1 and res.stderr.splitlines() == [
        f"error: {h5}: no such file (the stress set's 'pcam' pool)"
    ], res.stderr
    h5.parent.mkdir(parents=True)
    h5.write_bytes(b"not an HDF5 file at all")
    res = _run("--shared", str(tmp_path), "--out", str(out))
    lines = res.stderr.splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {h5}: cannot read it (")
    h5.unlink()
    rng = np.random.default_rng(0)
    with h5py.File(h5, "w") as fh:
        blobs = fh.create_dataset("encoded", (5,), dtype=h5py.vlen_dtype(np.uint8))
        for k in range(5):
            buf = io.BytesIO()
            PIL.Image.fromarray(rng.integers(90, 250, (96, 96, 3), dtype=np.uint8)).save(buf, "PNG")
            blobs[k] = np.frombuffer(buf.getvalue(), np.uint8)
        fh.create_dataset("patch_id", data=[f"p{k}".encode() for k in range(5)])
    res = _run("--shared", str(tmp_path), "--out", str(out))
    assert res.returncode == 1 and res.stderr.splitlines() == [
        f"error: {h5}: 5 usable patches (bright, not in an evaluation PDF); the stress set "
        "draws 120"
    ], res.stderr
    assert not out.exists()


def test_grid_counts_what_each_value_of_one_threshold_keeps(tmp_path: Path) -> None:
    """``--grid`` re-decides the cached scores at each value: the shipped value gives the
    default report's counts, a stricter classifier veto never keeps more; a name that is
    not a threshold is one error line."""
    import argparse

    from pdf_factory import he_like, random_rgb

    from histofetch.decide import scale

    stress = _stress()
    images = [(True, he_like(160, 160, seed=k)) for k in range(3)]
    images += [(False, random_rgb(160, 160, seed=k)) for k in range(2)]
    rows = [stress.measure(stress.Item("he:clean" if he else "neg:blur", he, False, rgb))
            for he, rgb in images]  # fmt: skip
    args = argparse.Namespace(shared=tmp_path, seed=0, per_kind=60, kinds="", native=scale.MODE)
    cache, out = tmp_path / "cache.json", tmp_path / "out.json"
    stress.save_cache(cache, stress.cache_settings(args), rows)
    common = ["--shared", str(tmp_path.resolve()), "--cache", str(cache), "--out", str(out)]
    res = _run(*common, "--grid", "p_keep=0,0.04,0.5,1")
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    grid = result["grid"]
    assert (grid["name"], grid["he"], grid["negatives"]) == ("p_keep", 3, 2)
    kept = {p["p_keep"]: (p["he_kept"], p["negatives_kept"]) for p in grid["points"]}
    default = result["default"]
    assert result["thresholds"]["p_keep"] == 0.04
    assert kept[0.04] == (default["he_kept"], default["negatives_kept"])
    for looser, stricter in ((0, 0.04), (0.04, 0.5), (0.5, 1)):
        assert all(a >= b for a, b in zip(kept[looser], kept[stricter], strict=True))
    assert kept[1] != kept[0]  # the sweep moves something on these images
    res = _run(*common, "--grid", "no_such=1")
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        "error: --grid no_such=1: unknown filter threshold(s): no_such"
    ]
