"""The docs' lists of fields and keys name what the code has: the keys a ``--config`` file
takes (docs/histomodels-training.md) are ``TrainConfig``'s, and the record and image tables
of docs/manifest.md are the schema's fields, no more and no fewer."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_config_keys_listed_are_train_config_s() -> None:
    """histomodels-training.md lists the keys a --config file takes; `origin_split` and
    `deterministic` were missing from it (each documented only beside its option)."""
    from histomodels.config import TrainConfig

    text = (DOCS / "histomodels-training.md").read_text(encoding="utf-8")
    start = text.index("Keys: `model`")
    listed = set(re.findall(r"`(\w+)`", text[start : text.index("A file of the form", start)]))
    assert listed == set(vars(TrainConfig())), listed ^ set(vars(TrainConfig()))


@pytest.mark.parametrize(("heading", "row"), [("## Record", "Record"), ("## Image", "Image")])
def test_manifest_tables_list_the_schema_fields(heading: str, row: str) -> None:
    import histocore.manifest

    text = (DOCS / "manifest.md").read_text(encoding="utf-8")
    start = text.index("|---", text.index(heading))
    table = text[start : text.index("\n\n", start)]
    listed = {
        n for line in table.splitlines()[1:] for n in re.findall(r"`(\w+)`", line.split("|")[1])
    }
    fields = {f.name for f in dataclasses.fields(getattr(histocore.manifest, row))} | {"kind"}
    assert listed == fields, listed ^ fields
