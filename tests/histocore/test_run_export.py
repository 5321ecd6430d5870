"""histofetch export: the run's rows as JSONL, CSV and Parquet, in the manifest's order."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from histocore.export import columns, export_run
from histocore.manifest import MANIFEST_NAME

V1 = Path(__file__).parent / "data" / "manifest_v1.jsonl"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    shutil.copy(V1, tmp_path / "run" / MANIFEST_NAME)
    return tmp_path / "run"


def test_jsonl_export_to_another_file_equals_the_manifest(run: Path, tmp_path: Path) -> None:
    out = export_run(run, "jsonl", tmp_path / "copy.jsonl")
    assert out.read_bytes() == export_run(run).read_bytes()
    assert json.loads(out.read_text().splitlines()[0])["version"] == 2


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("csv", "run.sqlite"), ("jsonl", "run.sqlite"), ("csv", "run.sqlite-wal"),
     ("csv", "run.sqlite-journal"), ("csv", MANIFEST_NAME), ("parquet", MANIFEST_NAME)],
)  # fmt: skip
def test_export_never_overwrites_the_runs_own_files(run: Path, fmt: str, name: str) -> None:
    """``export --format csv --out RUN/run.sqlite`` replaced the run store with a CSV (every
    later command: 'not a usable run store'), and ``--out RUN/manifest.jsonl`` in CSV made
    the next load fail on line 1. Both are refused before anything is written; so is the
    store's rollback journal (``run.sqlite-journal``: written, then deleted by SQLite)."""
    from histocore.errors import UsageError

    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(UsageError, match="is the run's"):
        export_run(run, fmt, run / name)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("folder", ["images", "pdfs", "sheets"])
def test_a_run_folder_linking_to_itself_does_not_stop_the_export(
    run: Path, tmp_path: Path, folder: str
) -> None:
    """A run whose ``images/`` (``pdfs/``, ``sheets/``) links to itself: the check that
    ``--out`` is none of the run's own files resolved it with ``Path.resolve``, which
    raised RuntimeError (a symlink loop, Python < 3.13), an export traceback. The rows are
    exported; an ``--out`` inside the run's own files is still refused."""
    from histocore.errors import UsageError

    (run / folder).symlink_to(folder)
    out = export_run(run, "csv", tmp_path / "rows.csv")
    assert out.read_text(encoding="utf-8").startswith("kind,")
    with pytest.raises(UsageError, match="is the run's own store"):
        export_run(run, "csv", run / "run.sqlite")


def test_csv_holds_every_row_in_order_with_nested_values_as_json(run: Path) -> None:
    rows = [json.loads(line) for line in export_run(run).read_text().splitlines()[1:]]
    with export_run(run, "csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == columns()
    assert [(r["kind"], r["id"]) for r in table] == [(r["kind"], r["id"]) for r in rows]
    image = next(r for r in rows if r["kind"] == "image")
    cells = next(r for r in table if r["id"] == image["id"])
    assert json.loads(cells["extra"]) == image["extra"] and cells["width"] == str(image["width"])


def test_csv_export_parses_each_row_once(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CSV (and Parquet) export parsed each stored row's JSON to write its line, then
    the line again for its cells, and each record's line a third time (to find its images):
    at 100,000 figures, seconds. Once now; the table is the same (the test above). The
    calls are counted through the real ``json.loads``."""
    from histocore import export
    from histocore.manifest import Manifest

    export_run(run)  # the rows stored as the current version writes them
    texts: list[str] = []
    real = json.loads

    def counted(text, *args, **kwargs):
        texts.append(text)
        return real(text, *args, **kwargs)

    with Manifest.load(run) as m:
        stored = [*m._seen_rec.values(), *m._seen_img.values()]  # each row's JSON, stored
        monkeypatch.setattr(json, "loads", counted)
        rows = list(export._flat_rows(m))
        monkeypatch.undo()
    assert len(rows) == len(stored) == len(set(stored))
    assert sorted(t for t in texts if t in stored) == sorted(stored)  # each once


def test_parquet_without_pyarrow_says_what_to_install(run: Path, monkeypatch) -> None:
    """A DomainError (the command lines' one error line) and an ImportError (what callers
    caught before); any other ImportError is a bug (tests/histofetch/test_cli.py)."""
    from histocore.errors import DomainError, MissingDependency

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(MissingDependency) as err:
        export_run(run, "parquet")
    assert isinstance(err.value, DomainError) and isinstance(err.value, ImportError)
    assert str(err.value) == (
        f"{run / 'export.parquet'}: Parquet export needs pyarrow, which is not installed: "
        "pip install 'histocore[parquet]' (or use --format csv)"
    )
    assert not (run / "export.parquet").exists()


@pytest.mark.parametrize(
    "failure",
    [
        "raise ImportError('libarrow.so.2600: cannot open shared object file')",
        "import no_such_module_pyarrow_needs",  # a ModuleNotFoundError, not for pyarrow
    ],
)
def test_a_pyarrow_that_fails_as_it_imports_keeps_its_traceback(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Every ImportError raised while pyarrow imported (a pyarrow built for another NumPy,
    a missing libarrow.so) read as 'pyarrow, which is not installed': advice to install
    what is installed, and the cause lost. Only pyarrow itself missing is that line; a
    pyarrow package whose ``__init__`` fails propagates its own error, nothing written."""
    from conftest import shadow_package

    from histocore.errors import MissingDependency

    init_py = shadow_package(monkeypatch, tmp_path, "pyarrow", failure)
    with pytest.raises(ImportError) as err:
        export_run(run, "parquet")
    assert not isinstance(err.value, MissingDependency), err.value
    assert "not installed" not in str(err.value)
    assert any(Path(tb.path) == init_py for tb in err.traceback), err.traceback
    assert not (run / "export.parquet").exists()


def test_parquet_round_trips_the_rows(run: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed")
    table = pq.read_table(export_run(run, "parquet")).to_pylist()
    rows = [json.loads(line) for line in (run / MANIFEST_NAME).read_text().splitlines()[1:]]
    assert [r["id"] for r in table] == [r["id"] for r in rows]
    assert table[1]["width"] == rows[1]["width"]


def test_unknown_format_is_refused(run: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format 'xml'"):
        export_run(run, "xml")
    # before the own-file check: it said 'write xml to another file' for manifest.jsonl
    with pytest.raises(ValueError, match="unknown export format 'xml'"):
        export_run(run, "xml", run / "manifest.jsonl")


def _run_with_files(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A run whose rows name a local PDF outside it and a figure, with a review log and a
    contact sheet; and links to them from outside (a folder link to the run, a file link
    to the figure, a hard link to the review log)."""
    import os

    from histocore.manifest import Image, Manifest, Record

    run = tmp_path / "run"
    local, gone = tmp_path / "papers" / "a.pdf", tmp_path / "papers" / "gone.pdf"
    fig = run / "images" / "pmid_1" / "p001_001.png"
    m = Manifest.load(run, create=True)
    m.add_record(Record(id="pmid:1", pmid="1", stage="extracted", pdf_path=str(local)))
    m.add_record(Record(id="pmid:2", pmid="2", stage="extracted", pdf_path=str(gone)))
    m.add_image(Image(id="pmid:1/p001_001", record_id="pmid:1", path="images/pmid_1/p001_001.png",
                      sha256="a" * 64, width=9, height=9))  # fmt: skip
    m.save()
    m.close()
    files = {
        "log": run / "review_log.jsonl",
        "fig": fig,
        "pdf": local,
        "sheet": run / "sheets" / "kept-001.jpg",
        "own pdf": run / "pdfs" / "pmid_1.pdf",
    }
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\n")
    (tmp_path / "alias").symlink_to(run)
    (tmp_path / "fig-link.png").symlink_to(fig)
    os.link(files["log"], tmp_path / "hard.jsonl")
    return run, files


def test_export_never_overwrites_the_review_log_a_figure_or_a_pdf(tmp_path: Path) -> None:
    """``export --out RUN/review_log.jsonl`` replaced who labelled what, ``--out
    RUN/images/x.png`` a figure: only the store and manifest.jsonl were refused. Now the
    review log, every file a row names (a local PDF outside the run too, and one missing)
    and anything under the run's pdfs/, images/ and sheets/ are refused, however spelt:
    through a link to the run or the file, or a hard link. Nothing is written."""
    from histocore.errors import UsageError

    run, files = _run_with_files(tmp_path)
    alias = tmp_path / "alias"
    outs = {
        "is the run's review_log.jsonl": [
            files["log"], alias / "review_log.jsonl", tmp_path / "hard.jsonl",
            run / "sheets" / ".." / "review_log.jsonl",
        ],
        "lies in the run's images/ folder": [
            files["fig"], tmp_path / "fig-link.png", alias / "images" / "new.csv",
            run / "images" / "pmid_1" / "x.jsonl",
        ],
        "lies in the run's sheets/ folder": [files["sheet"], alias / "sheets" / "x.csv"],
        "lies in the run's pdfs/ folder": [files["own pdf"], run / "pdfs" / "x.parquet"],
        "is the run's images/ folder": [alias / "images"],
        "is the file of row pmid:1": [files["pdf"]],
        "is the file of row pmid:2": [tmp_path / "papers" / "gone.pdf"],
    }  # fmt: skip
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for said, paths in outs.items():
        for out in paths:
            for fmt in ("jsonl", "csv"):
                with pytest.raises(UsageError, match=said):
                    export_run(run, fmt, out)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot
    shutil.rmtree(run / "sheets")  # not made yet: a file there would stand in filter's way
    with pytest.raises(UsageError, match="is the run's sheets/ folder"):
        export_run(run, "csv", alias / "sheets")
    assert not (run / "sheets").exists()
    assert export_run(run, "csv", tmp_path / "rows.csv").read_text().startswith("kind,id,")


def test_a_run_named_by_its_manifest_file_guards_the_runs_own_files(tmp_path: Path) -> None:
    """``Manifest.load`` takes ``RUN/manifest.jsonl`` for its folder, but export's own-file
    guard judged ``out`` against ``RUN/manifest.jsonl/run.sqlite``:
    ``export_run('run/manifest.jsonl', 'csv', 'run/run.sqlite')`` replaced the store with a
    CSV, ``(…, None, 'run/review_log.jsonl')`` the review log. Both are refused, as with
    the folder, and nothing changes."""
    from histocore.errors import UsageError

    run, files = _run_with_files(tmp_path)
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for named in (run / MANIFEST_NAME, run / "run.sqlite"):
        with pytest.raises(UsageError, match="is the run's own store"):
            export_run(named, "csv", run / "run.sqlite")
        with pytest.raises(UsageError, match=r"is the run's review_log\.jsonl"):
            export_run(named, None, files["log"])
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot


def test_format_follows_the_suffix_and_a_contradicting_one_is_refused(
    run: Path, tmp_path: Path
) -> None:
    """``export_run(run, "parquet", "r.csv")`` wrote Parquet into r.csv; a format the
    suffix contradicts is a UsageError now, nothing written, and ``fmt=None`` takes the
    suffix's format (else JSONL), as histomodels' ``export_checkpoint`` does."""
    import histocore.export as export
    from histocore.errors import UsageError

    assert {"format_for", "export_format"} <= set(export.__all__)
    for fmt, name, named in (("parquet", "r.csv", "CSV (.csv)"), ("csv", "r.JSONL", "JSON Lines"),
                             ("jsonl", "r.Parquet", "Parquet (.parquet)"), ("csv", "r.json", ""),
                             ("jsonl", ".csv", "CSV (.csv)")):  # fmt: skip
        with pytest.raises(UsageError, match=rf"--format {fmt} writes .* {re.escape(named)}"):
            export_run(run, fmt, tmp_path / name)
        assert not (tmp_path / name).exists()
    for name, first in (("lib.csv", "kind,id,"), (".csv", "kind,id,"), ("r.JSON", "{"),
                        ("r.tsv", "{"), ("rows.csv.gz", "{"), ("none", "{")):  # fmt: skip
        assert export_run(run, None, tmp_path / name).read_text().startswith(first), name
    assert export_run(run, "csv", tmp_path / "x.csv.gz").read_text().startswith("kind,id,")
    assert export_run(run) == run / MANIFEST_NAME


def test_parquet_advice_without_pyarrow_never_writes_csv_into_a_parquet_name(
    run: Path, tmp_path: Path, monkeypatch
) -> None:
    """Without pyarrow, ``--out rows.parquet`` said '(or use --format csv)', which wrote
    CSV into rows.parquet; it is now a usage error, and the advice names a .csv file."""
    from histocore.errors import UsageError

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    out = tmp_path / "rows.parquet"
    with pytest.raises(ImportError, match=r"\(or give --out a \.csv name\)"):
        export_run(run, None, out)
    with pytest.raises(ImportError, match=r"\(or use --format csv\)"):
        export_run(run, "parquet")
    with pytest.raises(UsageError, match=r"name it \.csv"):
        export_run(run, "csv", out)
    assert not out.exists()
