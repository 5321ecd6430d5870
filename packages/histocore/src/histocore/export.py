"""``histofetch export``: a run's rows as JSON Lines (the manifest), CSV or Parquet.

CSV and Parquet hold the manifest's rows in the manifest's order as one flat table: the
header's keys are left out (they describe the run, not a row), ``kind`` tells records from
images, every field of either is a column, and nested values (``extra``, ``bbox``, lists)
are JSON text. Parquet needs ``pyarrow`` (not a dependency of this stdlib-only package).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast, get_args

from histocore.csvcells import safe_dict
from histocore.errors import ManifestError, MissingDependency, UsageError, is_missing
from histocore.io import (
    atomic_write_bytes,
    atomic_write_text,
    made_folder,
    same_file,
)
from histocore.jsonl import export_rows
from histocore.manifest import MANIFEST_NAME, STORE_NAME, Image, Manifest, Record, run_folder
from histocore.schema import _names

#: ``histofetch export --format``
ExportFormat = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)
SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
#: The files ``export`` writes into the run without ``--out`` (and overwrites): no row's
#: file may be one of them (``histofetch merge`` gives such a row a free name)
DEFAULT_EXPORTS = frozenset(f"export{SUFFIXES[fmt]}" for fmt in FORMATS if fmt != "jsonl")
#: The review page's log of answers (``histofetch.review.data.LOG_NAME``): who labelled what
REVIEW_LOG = "review_log.jsonl"
#: The run's folders of files it made and names: PDFs, figures, ``filter``'s contact sheets
#: (an ``--out`` in one is refused: it overwrote a figure, or lay where rows will go)
RUN_FOLDERS = {"pdfs": "PDFs", "images": "figures", "sheets": "contact sheets"}


#: The suffixes (any case) that name a format; any other (``.tsv``, ``.gz``, none) names none
SUFFIX_FORMATS: dict[str, ExportFormat] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}
_FORMAT_NAMES = {"jsonl": "JSON Lines", "csv": "CSV", "parquet": "Parquet"}


def _suffix(out: str | Path) -> str:
    """``out``'s suffix in lower case; a name that is only a suffix (``.csv``, which Python
    takes for a dotfile without one) counts as it."""
    name = Path(out).name
    if name.startswith(".") and name.count(".") == 1:
        return name.lower()
    return Path(name).suffix.lower()


def named_format(out: str | Path | None) -> ExportFormat | None:
    """The format ``out``'s suffix names (:data:`SUFFIX_FORMATS`), else None."""
    return SUFFIX_FORMATS.get(_suffix(out)) if out is not None else None


def format_for(out: str | Path | None) -> ExportFormat:
    """The format an output file's suffix names (``.csv``, ``.parquet``, ``.jsonl``,
    ``.json``, any case), else ``jsonl``: ``export --out rows.csv`` without ``--format``
    wrote JSON Lines into it."""
    return named_format(out) or "jsonl"


def export_format(out: str | Path | None, fmt: str | None = None) -> ExportFormat:
    """The format an export to ``out`` writes: ``fmt`` when given, else the one ``out``'s
    suffix names, else ``jsonl``. A ``fmt`` the suffix contradicts (Parquet into ``r.csv``)
    is a :class:`UsageError`, as is an unknown one."""
    if fmt is None:
        return format_for(out)
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    named = named_format(out)
    if out is not None and named is not None and named != fmt:
        fits = "/".join(s for s, f in SUFFIX_FORMATS.items() if f == fmt)
        raise UsageError(
            f"--format {fmt} writes {_FORMAT_NAMES[fmt]}, but {Path(out).name!r} is named "
            f"as {_FORMAT_NAMES[named]} ({_suffix(out)}): name it {fits}, or leave --format "
            "out to export what the name says"
        )
    return cast(ExportFormat, fmt)  # one of FORMATS


def columns() -> list[str]:
    """Table columns: ``kind``, ``id``, then record fields, then image-only fields."""
    cols = ["kind", "id"]
    for name in (*_names(Record), *_names(Image)):
        if name not in cols:
            cols.append(name)
    return cols


def _flat_rows(manifest: Manifest) -> Iterator[dict[str, Any]]:
    """The rows of ``manifest.jsonl`` (the store's now, one snapshot), nested values as
    JSON text."""
    store = manifest._db()
    with store.read():
        rows = [row for _, row in itertools.islice(export_rows(store), 1, None)]
    for row in rows:
        yield {
            k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
            for k, v in row.items()
        }


def export_run(run_dir: str | Path, fmt: str | None = None, out: str | Path | None = None) -> Path:
    """Write the run's rows to ``out`` (default ``RUN/export.<fmt>``; for ``jsonl`` the
    run's own ``manifest.jsonl``). ``fmt`` None: the format ``out``'s suffix names, else
    JSONL; a ``fmt`` the suffix contradicts is a UsageError (:func:`export_format`).
    Raises ManifestError on a bad run, UsageError (a ValueError) on a bad format or an
    ``out`` that is one of the run's own files, MissingDependency (an ImportError) when
    Parquet needs pyarrow (``<file>: …``, naming the extra to install,
    ``histocore[parquet]``). ``out``'s missing folders are made, as every command's
    ``--out`` makes them, and removed again (when empty) if the export fails: a failed
    write left them.
    Only the folders this call made go (:func:`histocore.io.made_folder`): one another
    process makes meanwhile stays, and ``new/../x.csv`` removes the ``new/`` it made."""
    if fmt is not None:  # an unknown format first: ('xml', RUN/manifest.jsonl) named it
        export_format(None, fmt)
    # RUN/manifest.jsonl named as the run: its folder, before the own-file guard (the guard
    # on RUN/manifest.jsonl/run.sqlite let --out RUN/run.sqlite replace the store)
    run_dir = run_folder(run_dir)
    if out is not None:  # its own file named first: --format csv --out RUN/manifest.jsonl
        _refuse_own_files(run_dir, Path(out), fmt or format_for(out))
    fmt = export_format(out, fmt)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401  # pyright: ignore[reportMissingImports]
        except ImportError as exc:  # named as every error line names its file
            # only pyarrow itself missing is advice; a pyarrow that fails as it imports (one
            # built for another NumPy, a missing libarrow.so, a module of its own missing) is
            # a broken install and keeps its traceback
            if not is_missing(exc, "pyarrow"):
                raise
            target = Path(out) if out is not None else run_dir / f"export{SUFFIXES[fmt]}"
            other = "use --format csv" if out is None else "give --out a .csv name"
            raise MissingDependency(
                f"{target}: Parquet export needs pyarrow, which is not installed: "
                f"pip install 'histocore[parquet]' (or {other})"
            ) from None
    manifest = Manifest.load(run_dir)
    try:
        if out is not None and not (fmt == "jsonl" and same_file(out, manifest.path)):
            _refuse_row_files(manifest, Path(out))
        folder = made_folder(Path(out).parent) if out is not None else contextlib.nullcontext()
        with folder:  # a failed export leaves no empty folder it made
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
    """An ``out`` that is the run's own store (or its WAL files, its journal), its review log, its
    ``manifest.jsonl`` in another format, or lies in its ``pdfs/``, ``images/`` or
    ``sheets/`` folder, is a :class:`UsageError`: ``export --format csv --out
    RUN/run.sqlite`` replaced every row of the run with a CSV file, ``--out
    RUN/review_log.jsonl`` who labelled what. Judged by real path (links followed, and
    the same file under another name: a hard link), never by spelling. ``realpath``, not
    ``Path.resolve``: a run folder whose ``images/`` links to itself made resolve raise
    RuntimeError (a symlink loop, Python < 3.13), an export traceback."""
    target = Path(os.path.realpath(out))

    def names(name: str) -> bool:
        own = run_dir / name
        return target == Path(os.path.realpath(own)) or same_file(out, own)

    own_store = (STORE_NAME, *(f"{STORE_NAME}-{end}" for end in ("wal", "shm", "journal")))
    if any(names(n) for n in own_store):
        raise UsageError(f"{out}: is the run's own store; export to another file")
    if names(REVIEW_LOG):
        raise UsageError(
            f"{out}: is the run's {REVIEW_LOG} (who labelled what); export to another file"
        )
    if fmt != "jsonl" and names(MANIFEST_NAME):
        raise UsageError(f"{out}: is the run's {MANIFEST_NAME}; write {fmt} to another file")
    for folder, holds in RUN_FOLDERS.items():
        own = run_dir / folder
        real = Path(os.path.realpath(own))
        if target == real or same_file(out, own):  # a file there: pdfs/ not made then
            raise UsageError(f"{out}: is the run's {folder}/ folder; export to another file")
        if any(p == real or same_file(p, own) for p in target.parents):
            raise UsageError(
                f"{out}: lies in the run's {folder}/ folder (its {holds}); export to a "
                "file outside it"
            )


def _refuse_row_files(manifest: Manifest, out: Path) -> None:
    """An ``out`` that is a file a row names (a record's ``pdf_path``, such as a local PDF
    outside the run, or an image's ``path``), links followed, is a :class:`UsageError`:
    the export overwrote it. A row whose file is missing is matched by its real path."""
    target = os.path.realpath(out)
    try:
        there = os.stat(out)
    except OSError:
        there = None
    rows = [(r.id, r.pdf_path) for r in manifest.records.values()]
    rows += [(i.id, i.path) for i in manifest.images.values()]
    for row_id, rel in rows:
        if not rel:
            continue
        try:
            path = manifest.resolve(rel)
            try:
                st = os.stat(path)
            except OSError:  # missing: the export would put itself where the row says
                same = os.path.realpath(path) == target
            else:
                same = there is not None and (st.st_dev, st.st_ino) == (there.st_dev, there.st_ino)
        except (OSError, ValueError):  # a name no file system takes (NUL, too long)
            continue
        if same:
            raise UsageError(f"{out}: is the file of row {row_id} ({rel}); export to another file")


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


__all__ = [
    "FORMATS",
    "SUFFIX_FORMATS",
    "ManifestError",
    "export_format",
    "export_run",
    "format_for",
    "named_format",
]
