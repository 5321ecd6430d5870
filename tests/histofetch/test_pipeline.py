"""histofetch.pipeline: the search is skipped only when the same search is already done.

The whole `run` (every stage, resumed) is driven against the recorded NCBI server in
test_cli_network.py; here the one decision the pipeline itself makes.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

from histocore.manifest import Manifest, Record
from histofetch.pipeline import SkippedStage, search_done
from histofetch.search import search_key


def test_search_done_only_for_the_same_search_with_records(tmp_path: Path) -> None:
    key = search_key("lymph node", 3, None, None, False)
    m = Manifest.load(tmp_path, create=True)
    assert not search_done(m, key)  # nothing searched yet
    m.header_extra["last_search"] = key | {"count": 3, "records": 0}
    assert not search_done(m, key)  # searched, but no record kept: search again
    m.add_record(Record(id="pmid:1", pmid="1", stage="searched"))
    assert search_done(m, key)
    assert not search_done(m, search_key("lymph node", 5, None, None, False))
    assert not search_done(m, search_key("lymph node", 3, "2020", None, False))
    assert SkippedStage("searched", "already done (1 records)").line() == (
        "searched: already done (1 records)"
    )


def test_a_search_already_done_with_one_record_says_record(tmp_path: Path) -> None:
    """'searched: already done (1 records)': the count's noun agrees with it now."""
    from histofetch.http import NetConfig
    from histofetch.pipeline import run_pipeline

    key = search_key("lymph node", 1, None, None, False)
    m = Manifest.load(tmp_path, create=True)
    m.header_extra["last_search"] = key | {"count": 1, "records": 1}
    m.add_record(Record(id="pmid:1", pmid="1", stage="searched"))
    m.save()
    m.close()
    stages = run_pipeline(tmp_path, "lymph node", net=NetConfig(), max_results=1)
    assert isinstance(stages, Generator)
    try:
        assert next(stages).line() == "searched: already done (1 record)"  # no request made
    finally:
        stages.close()
