"""docs/python-api.md stays true: every ```python block runs, in order, in one namespace,
in an empty folder holding a small histofetch run at ``runs/mine`` (the page's own first
block makes its synthetic patches; nothing from /work/shared is needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from histocore.manifest import Image, Manifest, Record

PAGE = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(), re.M | re.S)


def _run(folder: Path) -> None:
    """A histofetch run of one record with one kept figure."""
    m = Manifest.load(folder, create=True)
    m.query = "lymph node metastasis"
    m.add_record(Record(id="pmid:1", pmid="1", title="T", year=2020, stage="filtered"))
    m.add_image(
        Image(id="pmid:1/fig1", record_id="pmid:1", path="images/pmid_1/fig1.png",
              sha256="a" * 64, width=900, height=700, source="package", kept=True)
    )  # fmt: skip
    m.save()
    m.close()


def test_the_page_has_blocks() -> None:
    assert len(BLOCKS) >= 6


def test_every_python_block_of_the_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _run(tmp_path / "runs" / "mine")
    namespace: dict[str, object] = {"__name__": "python_api_page"}
    for i, block in enumerate(BLOCKS):
        try:
            exec(compile(block, f"{PAGE.name} block {i + 1}", "exec"), namespace)
        except Exception as exc:  # say which block, then the traceback
            raise AssertionError(f"{PAGE.name} block {i + 1} failed:\n{block}") from exc


def test_train_config_and_the_training_snippet_say_time_budget_is_minutes() -> None:
    """The training page's library snippet was ``TrainConfig(model="cnn", time_budget=20)``:
    20 minutes, in a snippet, with the unit said nowhere near it."""
    from histomodels.config import TrainConfig

    assert "time_budget`` is in\n    **minutes**" in (TrainConfig.__doc__ or "")
    page = (PAGE.parent / "histomodels-training.md").read_text()
    assert "time_budget=20" not in page and "time_budget is in minutes" in page
    for name in ("README.md", "docs/index.md", "docs/architecture.md"):
        assert "python-api.md" in (PAGE.parents[1] / name).read_text(), name
