"""The offline demo runs the real flow end to end on a tiny budget."""

from __future__ import annotations

import importlib.abc
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import shadow_package

from histocore.manifest import Manifest
from histomodels.demo import DemoError, run_demo


@pytest.mark.slow
def test_demo_runs_whole_flow_and_filter_keeps_only_the_he_figures(tmp_path):
    summary = run_demo(tmp_path, minutes=0.15, n_train=256)

    manifest = Manifest.load(tmp_path / "fetch_run")
    kept = sorted(i.page or 0 for i in manifest.kept_images())
    assert kept == [1, 2]  # the two H&E figures; the heatmap and the bar chart are rejected
    assert {i.label for i in manifest.kept_images()} == {"metastasis", "no_metastasis"}

    metrics = json.loads((tmp_path / "run_cnn" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["roc_auc"] <= 1.0
    assert (tmp_path / "run_cnn" / "best.pt").is_file()
    assert (tmp_path / "run_cnn" / "literature_eval" / "image_scores.csv").is_file()
    page = (tmp_path / "report" / "report.html").read_text()
    assert len(page) > 10_000
    # every column says whose it is: the run just trained and the shipped pcam-cnn
    heads = set(re.findall(r"<th>([^<]*)</th>", page))
    assert {"run_cnn/eval", "run_cnn/literature_eval"} <= heads
    assert {"pcam-cnn/eval", "pcam-cnn/literature_eval"} <= heads and "eval" not in heads
    # the shipped pcam-cnn ran next to the synthetic run, on the same data, untrained here
    shipped = summary["pretrained_pcam_cnn"]
    assert 0.0 <= shipped["test"]["roc_auc"] <= 1.0 and "shipped" in shipped["threshold_source"]
    assert (tmp_path / "pcam_cnn" / "literature_eval" / "image_scores.csv").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=str)
    )


@pytest.mark.parametrize(
    "init",
    [
        # pymupdf's C part failing to load: an ImportError that names no module
        "raise ImportError('libmupdf.so.26.1: cannot open shared object file')",
        # a name pymupdf lacks (another version): names pymupdf, yet pymupdf is installed
        "from pymupdf import no_such_name_in_pymupdf",
    ],
)
def test_a_histofetch_that_fails_as_it_imports_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, init: str
) -> None:
    """Any ImportError raised while histofetch imported (a broken pymupdf inside it) was
    'the demo needs histofetch (None is missing): pip install ...': advice to install what
    is installed, the cause lost. Only histofetch or pymupdf missing is that line."""
    shadow_package(monkeypatch, tmp_path, "pymupdf")  # an empty one: has no such name
    init_py = shadow_package(monkeypatch, tmp_path, "histofetch", init)
    with pytest.raises(ImportError) as err:
        run_demo(tmp_path / "out")
    assert "missing" not in str(err.value)
    assert any(Path(tb.path) == init_py for tb in err.traceback), err.traceback
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["histofetch", "pymupdf"])
def test_the_demo_without_its_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    class Absent(importlib.abc.MetaPathFinder):  # as the import system finds no such module
        def find_spec(self, name, path=None, target=None):
            if name == missing:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    shadow_package(monkeypatch, tmp_path, "histofetch", "import pymupdf")  # as the real one
    monkeypatch.delitem(sys.modules, missing, raising=False)
    monkeypatch.setattr(sys, "meta_path", [Absent(), *sys.meta_path])
    with pytest.raises(DemoError, match=rf"needs histofetch \({missing} is missing\): pip"):
        run_demo(tmp_path / "out")
    assert not (tmp_path / "out").exists()
