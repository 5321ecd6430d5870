"""Every reader of a text file from a user or a server accepts a leading UTF-8 byte order
mark, as Python's ``utf-8-sig`` codec, ``json.loads`` of bytes and the XML parsers do.

Excel's "CSV UTF-8" and Windows Notepad write one; a server may send one. Each case here
builds its file with a BOM and checks it reads the same as without: before, each one was
refused (a header column named '\\ufeffimage_id', or "Unexpected UTF-8 BOM").
"""

from __future__ import annotations

import codecs
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from histocore.manifest import Image, Manifest, Record

BOM = codecs.BOM_UTF8


def _esummary(path: Path) -> Any:
    from histofetch.search import parse_esummary_json

    return parse_esummary_json(path.read_bytes())


def _idconv(path: Path) -> Any:
    from histofetch.resolve import _idconv_rows

    return _idconv_rows(path.read_bytes())


def _jats(path: Path) -> Any:
    from histofetch.jats import read_article

    return read_article(path.read_bytes())


def _scores(path: Path) -> Any:
    from histofetch.review.data import Scores

    return Scores.load(path.parent).by_image


def _he_labels(path: Path) -> Any:
    from histofetch.decide.evaluate import read_labels

    return read_labels(path)


def _label_csv(path: Path) -> Any:
    from histomodels.label import read_label_csv

    return read_label_csv(path)


def _config(path: Path) -> Any:
    from histomodels.config import read_config_file

    return read_config_file(path)


def _stain(path: Path) -> Any:
    from histomodels.data.stain import MacenkoNormalizer

    return MacenkoNormalizer.load(path).to_dict()


def _checksums(path: Path) -> Any:
    from histomodels.data.download import read_checksums

    return read_checksums(path)


def _stain_json() -> bytes:
    import numpy as np

    from histomodels.data.stain import MacenkoNormalizer
    from histomodels.synthetic import make_figure

    # a synthetic H&E figure: random noise fitted a haematoxylin vector with a negative
    # component, which fit refuses (ed29c5b), as a real stain never has one
    fitted = MacenkoNormalizer().fit(np.asarray(make_figure(2, 2, seed=4)))
    import json

    return json.dumps(fitted.to_dict()).encode()


ESUMMARY = b'{"result": {"uids": ["1"], "1": {"uid": "1", "title": "T", "articleids": []}}}'
CASES: dict[str, tuple[str, Callable[[], bytes], Callable[[Path], Any]]] = {
    "esummary JSON (NCBI)": ("esummary.json", lambda: ESUMMARY, _esummary),
    "idconv JSON (NCBI)": (
        "idconv.json",
        lambda: b'{"status": "ok", "records": [{"pmid": "1", "pmcid": "PMC2"}]}',
        _idconv,
    ),
    "JATS XML (PMC Cloud, Europe PMC; accepted before too)": (
        "article.xml",
        lambda: (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<article><body><fig id="F1">'
            b"<label>Figure 1</label><caption><p>H&amp;E</p></caption></fig></body></article>"
        ),
        _jats,
    ),
    "review --scores image_scores.csv": (
        "image_scores.csv",
        lambda: b"image_id,max,topk_mean\npmid:1/fig_1,0.9,0.5\n",
        _scores,
    ),
    "figure labels TSV (decide.evaluate)": (
        "labels.tsv",
        lambda: b"sha256\tlabel\n" + b"a" * 64 + b"\the\n",
        _he_labels,
    ),
    "histomodels label --from-csv": (
        "labels.csv",
        lambda: b"image_id,label\npmid:1/fig_1,tumor\n",
        _label_csv,
    ),
    "histomodels --config JSON": ("config.json", lambda: b'{"epochs": 2}', _config),
    "histomodels stain settings JSON": ("stain.json", _stain_json, _stain),
    "histomodels md5sum checksums": (
        "MD5SUMS",
        lambda: b"0123456789abcdef0123456789abcdef  x.h5\n",
        _checksums,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_leading_bom_reads_like_the_same_file_without(case: str, tmp_path: Path) -> None:
    name, body, read = CASES[case]
    data = body()
    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    (tmp_path / "plain" / name).write_bytes(data)
    (tmp_path / "bom" / name).write_bytes(BOM + data)
    want = read(tmp_path / "plain" / name)
    assert want  # the case reads something
    assert read(tmp_path / "bom" / name) == want


def test_a_manifest_jsonl_with_a_bom_loads(tmp_path: Path) -> None:
    """A run folder moved without its store (or a hand-edited export) is read from
    manifest.jsonl: a BOM on its header line was 'not valid JSON'."""
    run = tmp_path / "run"
    with Manifest(run_dir=run, query="q") as m:
        m.add_record(Record(id="pmid:1", stage="filtered"))
        m.add_image(Image(id="pmid:1/p001_001", record_id="pmid:1", path="images/1.png",
                          sha256="1" * 64, width=96, height=96, kept=True))  # fmt: skip
        m.save()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(run / "manifest.jsonl", copy / "manifest.jsonl")
    (copy / "manifest.jsonl").write_bytes(BOM + (run / "manifest.jsonl").read_bytes())
    with Manifest.load(copy) as loaded:
        assert list(loaded.images) == ["pmid:1/p001_001"] and loaded.query == "q"
