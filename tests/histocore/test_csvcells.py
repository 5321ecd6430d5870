"""CSV cells a spreadsheet cannot run (OWASP CSV injection), read back exactly."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from histocore.csvcells import FORMULA_STARTS, numbered_rows, read_cell, safe_cell
from histocore.export import export_run
from histocore.manifest import Image, Manifest, Record

RISKY = ["=1+1", '=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def test_risky_text_is_quoted_and_numbers_are_not() -> None:
    for text in RISKY:
        assert safe_cell(text) == "'" + text
    for plain in ["-0.5", "+3", "-1e-3", "abc", "a=b", "", "'abc", "'"]:
        assert safe_cell(plain) == plain
    assert safe_cell(-0.5) == -0.5 and safe_cell(None) is None
    assert safe_cell("'=1") == "''=1" and safe_cell("''") == "'''"  # so that reading is exact


@given(st.text(alphabet=st.sampled_from(["=", "+", "-", "@", "\t", "\r", "'", "1", ".", "e", "a"])))
def test_what_is_written_reads_back_and_never_starts_a_formula(text: str) -> None:
    cell = safe_cell(text)
    assert read_cell(cell) == text
    buf = io.StringIO()
    csv.writer(buf).writerow([cell])
    (back,) = next(csv.reader(io.StringIO(buf.getvalue())))
    assert back == cell
    if cell.startswith(FORMULA_STARTS):  # only a plain number may start so
        float(cell)


def test_export_csv_quotes_a_formula_title_and_jsonl_keeps_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="q")
    m.add_record(Record(id="=1+1", title='=HYPERLINK("http://x","click")', stage="filtered"))
    m.add_image(Image(id="=1+1/fig0", record_id="=1+1", path="images/=fig0.png",
                      sha256="0" * 64, width=96, height=96))  # fmt: skip
    m.save()
    m.close()
    with export_run(run, "csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    record = next(r for r in table if r["kind"] == "record")
    image = next(r for r in table if r["kind"] == "image")
    assert record["id"] == "'=1+1" and record["title"] == '\'=HYPERLINK("http://x","click")'
    assert image["record_id"] == "'=1+1" and image["path"] == "images/=fig0.png"
    assert read_cell(image["id"]) == "=1+1/fig0"
    lines = [json.loads(line) for line in export_run(run).read_text().splitlines()[1:]]
    assert {r["id"] for r in lines} == {"=1+1", "=1+1/fig0"}  # JSON exact
    assert next(r for r in lines if r["kind"] == "record")["title"].startswith("=HYPERLINK")


def test_numbered_rows_give_the_line_each_row_starts_on() -> None:
    """A quoted cell over lines and blank lines (``\\n`` and ``\\r\\n``) between rows: the
    number is the line an editor shows the row on; a short row's missing cell is None."""
    text = 'id,note\na,"one\ntwo\nthree"\n\n\r\nb\nc,x,extra\n'
    rows = list(numbered_rows(csv.DictReader(io.StringIO(text, newline=""))))
    assert rows == [
        (2, {"id": "a", "note": "one\ntwo\nthree"}),
        (7, {"id": "b", "note": None}),
        (8, {"id": "c", "note": "x"}),
    ]
    assert list(numbered_rows(csv.DictReader(io.StringIO("")))) == []
