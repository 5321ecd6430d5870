"""``histofetch export``: a run's rows as JSON Lines (the manifest), CSV or Parquet.

CSV and Parquet hold the manifest's rows in the manifest's order as one flat table: the
header's keys are left out (they describe the run, not a row), ``kind`` tells records from
images, every field of either is a column, and nested values (``extra``, ``bbox``, lists)
are JSON text. Parquet needs ``pyarrow`` (not a dependency of this stdlib-only package).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

from histocore.csvcells import safe_dict
from histocore.errors import ManifestError, UsageError
from histocore.io import atomic_write_bytes, atomic_write_text
from histocore.jsonl import export_lines
from histocore.manifest import MANIFEST_NAME, STORE_NAME, Image, Manifest, Record
from histocore.schema import _names

#: ``histofetch export --format``
ExportFormat = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)
SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
#: The files ``export`` writes into the run without ``--out`` (and overwrites): no row's
#: file may be one of them (``histofetch merge`` gives such a row a free name)
DEFAULT_EXPORTS = frozenset(f"export{SUFFIXES[fmt]}" for fmt in FORMATS if fmt != "jsonl")


def format_for(out: str | Path | None) -> ExportFormat:
    """The format an output file's suffix names (``.csv``, ``.parquet``, any case), else
    ``jsonl``: ``export --out rows.csv`` without ``--format`` wrote JSON Lines into it."""
    suffix = Path(out).suffix.lower() if out is not None else ""
    return "csv" if suffix == ".csv" else "parquet" if suffix == ".parquet" else "jsonl"


def columns() -> list[str]:
    """Table columns: ``kind``, ``id``, then record fields, then image-only fields."""
    cols = ["kind", "id"]
    for name in (*_names(Record), *_names(Image)):
        if name not in cols:
            cols.append(name)
    return cols


def _flat_rows(manifest: Manifest) -> Iterator[dict[str, Any]]:
    store = manifest._db()
    with store.read():
        lines = list(export_lines(store))
    for line in lines[1:]:
        row = json.loads(line)
        yield {
            k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
            for k, v in row.items()
        }


def export_run(run_dir: str | Path, fmt: str = "jsonl", out: str | Path | None = None) -> Path:
    """Write the run's rows to ``out`` (default ``RUN/export.<fmt>``; for ``jsonl`` the
    run's own ``manifest.jsonl``). Raises ManifestError on a bad run, ValueError on a bad
    format, ImportError (with advice) when Parquet needs pyarrow."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if out is not None:
        _refuse_own_files(Path(run_dir), Path(out), fmt)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401  # pyright: ignore[reportMissingImports]
        except ImportError:
            raise ImportError(
                "Parquet export needs pyarrow: pip install pyarrow (or use --format csv)"
            ) from None
    manifest = Manifest.load(run_dir)
    try:
        if fmt == "jsonl":
            return manifest.export(out)
        target = Path(out) if out is not None else manifest.run_dir / f"export{SUFFIXES[fmt]}"
        rows = list(_flat_rows(manifest))
        if fmt == "csv":
            _write_csv(target, rows)
        else:
            _write_parquet(target, rows)
        return target
    finally:
        manifest.close()


def _refuse_own_files(run_dir: Path, out: Path, fmt: str) -> None:
    """An ``out`` that is the run's own store (or its WAL files), or its ``manifest.jsonl``
    in another format, is a :class:`UsageError`: ``export --format csv --out RUN/run.sqlite``
    replaced every row of the run with a CSV file."""
    target = out.resolve()
    store = (run_dir / STORE_NAME).resolve()
    if target in (
        store,
        store.with_name(f"{STORE_NAME}-wal"),
        store.with_name(f"{STORE_NAME}-shm"),
    ):
        raise UsageError(f"{out}: is the run's own store; export to another file")
    if fmt != "jsonl" and target == (run_dir / MANIFEST_NAME).resolve():
        raise UsageError(f"{out}: is the run's {MANIFEST_NAME}; write {fmt} to another file")


def _write_csv(target: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(safe_dict(r) for r in rows)  # no cell a spreadsheet would run
    atomic_write_text(target, buf.getvalue())


def _write_parquet(target: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa  # pyright: ignore[reportMissingImports]
    import pyarrow.parquet as pq  # pyright: ignore[reportMissingImports]

    arrays = {}
    for col in columns():
        values = [r.get(col) for r in rows]
        try:  # the column's own type (int, float, bool, string) where its values agree
            arrays[col] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[col] = pa.array([None if v is None else str(v) for v in values], pa.string())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), sink)
    atomic_write_bytes(target, sink.getvalue().to_pybytes())


__all__ = ["FORMATS", "ManifestError", "export_run"]
