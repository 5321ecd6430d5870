"""CSV cells that a spreadsheet shows as text, never runs as a formula.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula
to Excel, LibreOffice and Google Sheets, so a file named ``=HYPERLINK(...).png`` or a
caption starting with ``=`` would become one in ``predictions.csv`` or ``export.csv``. As
the OWASP CSV-injection advice says, such a text cell is written with a single quote in
front; plain numbers (``-0.5``) are left as they are (no spreadsheet runs them). A text
cell that itself starts with a quote followed by one of those characters or a quote gets
one more, so :func:`read_cell` gives back exactly what was written. JSON outputs are
never escaped. :func:`numbered_rows` gives each row read with the line it starts on, for
messages about a bad row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

#: first characters that make a spreadsheet cell a formula (OWASP)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` as a CSV cell: a text cell a spreadsheet would run gets a leading ``'``;
    anything else (numbers, ``None``, other text) is returned unchanged."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    if value.startswith("'") and value[1:2] in (*FORMULA_STARTS, "'"):
        return "'" + value  # so that read_cell can tell it from an escaped cell
    return value


def safe_row(row: Iterable[Any]) -> list[Any]:
    """A ``csv.writer`` row with every cell through :func:`safe_cell`."""
    return [safe_cell(v) for v in row]


def safe_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``csv.DictWriter`` row with every value through :func:`safe_cell`."""
    return {k: safe_cell(v) for k, v in row.items()}


def read_cell(text: str) -> str:
    """The text :func:`safe_cell` was given, from the cell it wrote (for reading our own
    CSVs back: ids in ``image_scores.csv``, a label CSV made from one)."""
    if text.startswith("'") and text[1:2] in (*FORMULA_STARTS, "'"):
        return text[1:]
    return text


def numbered_rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str | None]]]:
    """``(line, row)`` for each row of ``reader``: the line the row starts on as an editor
    numbers them (a quoted cell may span lines, blank lines are skipped: counting rows
    named the wrong line), the row as ``DictReader`` gives it (a missing cell is ``None``;
    cells past the header are dropped). ``csv.Error`` is raised as ``reader`` raises it."""
    fields = reader.fieldnames  # reads the header
    if fields is None:
        return
    raw = reader.reader
    while True:
        start = raw.line_num + 1
        try:
            row = next(raw)
        except StopIteration:
            return
        if row:  # [] is a blank line
            yield start, {k: row[i] if i < len(row) else None for i, k in enumerate(fields)}
