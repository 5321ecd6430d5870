"""`histofetch extract / filter / status` through the Typer app (CliRunner)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import unboxed
from pdf_factory import build_image_pdf, he_like, write_encrypted
from typer.testing import CliRunner, Result

from histocore.manifest import Manifest
from histofetch.cli import app

runner = CliRunner()


def _error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output  # one clear line, no traceback
    return lines[0]


@pytest.fixture
def pdfs(tmp_path: Path) -> Path:
    folder = tmp_path / "pdfs"
    folder.mkdir()
    build_image_pdf(folder / "a.pdf", [he_like(seed=1), he_like(seed=2)], caption="Fig. 1. H&E")
    write_encrypted(folder / "locked.pdf")
    return folder


def test_extract_filter_status_end_to_end(tmp_path: Path, pdfs: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["extract", "--run", str(run), str(pdfs)])
    assert result.exit_code == 0, result.output
    assert "extracted: 1 done, 0 already done, 1 failed" in result.output
    # the failed count has a name: the file the user gave, with its reason
    assert f"warning: {(pdfs / 'locked.pdf').resolve()}: encrypted PDF, needs a password\n" in (
        result.output
    )
    again = runner.invoke(app, ["extract", "--run", str(run), str(pdfs)])
    assert "1 already done, 0 failed, 1 failed before" in again.output
    assert again.output.count("warning: ") == 1
    result = runner.invoke(app, ["filter", "--run", str(run), "--purple", "0.3"])
    assert result.exit_code == 0, result.output
    assert f"kept 2 of 2 scored images; sheets in {run / 'sheets'}" in result.output
    assert (run / "sheets" / "kept-001.jpg").is_file()
    # none rejected: no rejected sheet, a title over no tile (it was written blank)
    assert not list((run / "sheets").glob("*rejected*"))

    result = runner.invoke(app, ["status", "--run", str(run), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {k: info[k] for k in ("records", "pdfs", "images", "kept", "failed")} == {
        "records": 2, "pdfs": 2, "images": 2, "kept": 2, "failed": 1,
    }  # fmt: skip
    assert info["failure_reasons"] == {"encrypted PDF, needs a password": 1}
    assert info["routes"] == {"local-pdf": 2}  # was {"none": 2}: no route, yet a PDF each
    assert all((run / p).is_file() and not Path(p).is_absolute() for p in info["kept_images"])

    result = runner.invoke(app, ["status", "--run", str(run)])
    assert result.exit_code == 0
    assert "kept 2" in result.output and "encrypted PDF, needs a password" in result.output
    assert "records by route: local-pdf 2\n" in result.output

    # stricter threshold: re-decided from stored scores
    result = runner.invoke(app, ["filter", "--run", str(run), "--min-side", "5000", "--no-sheet"])
    assert result.exit_code == 0 and "kept 0 of 2" in result.output
    assert "sheets in" not in result.output  # --no-sheet names no sheets


def test_a_filter_with_nothing_scored_names_no_sheets(tmp_path: Path) -> None:
    """A run with nothing extracted yet (or a search that found nothing) printed 'kept 0 of
    0 scored images; sheets in RUN/sheets', pointing at four blank contact sheets."""
    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    result = runner.invoke(app, ["filter", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert "kept 0 of 0 scored images\n" in result.output and "sheets in" not in result.output


def test_a_filter_with_nothing_to_show_writes_no_blank_sheets(tmp_path: Path) -> None:
    """With nothing scored, filter still wrote four blank contact sheets and said
    ``filter_sheets: true`` in the header. Now it writes none, removes an earlier filter's
    as it always does (they show other decisions), and the header says false."""
    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    (run / "sheets").mkdir()
    (run / "sheets" / "kept-001.jpg").write_bytes(b"an earlier filter's sheet")
    (run / "sheets" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["filter", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "sheets").iterdir()) == ["notes.txt"]
    with (run / "manifest.jsonl").open() as fh:
        assert json.loads(fh.readline())["filter_sheets"] is False
    with Manifest.load(run) as m:  # the store, which review reads, says so too
        assert m.header_extra["filter_sheets"] is False
    fresh = make_run(tmp_path / "fresh", searched("2", "PMC2"))
    assert runner.invoke(app, ["filter", "--run", str(fresh)]).exit_code == 0
    assert not (fresh / "sheets").exists()  # no empty folder made for nothing


def test_a_filter_whose_images_are_all_unreadable_names_no_sheets(tmp_path: Path) -> None:
    """Every image unreadable (failed, on no sheet) printed 'kept 0 of 4 scored images;
    sheets in RUN/sheets', pointing at blank sheets; they are named only when a row is on
    one (the rows the sheets show), as when one image of the four is readable."""
    from review_kit import make_run

    run = make_run(tmp_path, filtered=False)
    paths = sorted((run / "images").glob("*.png"))
    for path in paths:
        path.write_bytes(b"not a png")
    result = runner.invoke(app, ["filter", "--run", str(run)])
    assert result.exit_code == 0, result.output
    # an unreadable image is decided (rejected) but not scored: 'kept 0 of 4 scored images'
    said = "kept 0 of 0 scored images (4 unreadable)\n"
    assert said in result.output and "sheets in" not in result.output, result.output
    with Manifest.load(run) as manifest:
        assert {i.status for i in manifest.images.values()} == {"failed"}
    good = make_run(tmp_path / "again", filtered=False)
    (good / "images" / "0.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["filter", "--run", str(good)])
    assert result.exit_code == 0 and f"; sheets in {good / 'sheets'}" in result.output
    assert re.search(r"kept \d of 3 scored images \(1 unreadable\);", result.output), result.output


def test_the_kept_line_counts_the_unreadable_images_themselves(tmp_path: Path) -> None:
    """filter's 'kept' line took min(failed images, rejected) for the unreadable ones: a
    failed row not decided (an edited or foreign manifest) was counted unreadable, and a
    scored rejected image was taken out of the scored for it ('kept 2 of 2 scored images
    (1 unreadable)'). The rows decided unreadable are counted now."""
    from review_kit import make_run

    from histofetch.cli._common import kept_line

    run = make_run(tmp_path)
    with Manifest.load(run) as manifest:
        failed, rejected = sorted(manifest.images.values(), key=lambda i: i.id)[:2]
        failed.status, failed.kept, failed.reason = "failed", None, "cannot read image"
        rejected.kept, rejected.filter_reason = False, "too small"
        manifest.save()
    assert kept_line(run, sheet=False) == "kept 2 of 3 scored images"


def test_a_sheets_link_to_itself_is_one_line_naming_the_loop(tmp_path: Path) -> None:
    """RUN/sheets linking to itself: filter said 'error: RUN/sheets: file exists', after
    scoring every image. It is now one line naming the path and the loop, exit 1, before
    any scoring; so are a link to nothing and a file there (finding 5)."""
    from review_kit import make_run

    run = make_run(tmp_path, filtered=False)
    sheets = run / "sheets"
    cases = [
        (lambda: sheets.symlink_to("sheets"), "is a link loop"),
        # two links to each other: no link 'that leads back to itself', as was said
        (
            lambda: (sheets.symlink_to("other"), (run / "other").symlink_to("sheets")),
            "is a link loop",
        ),
        (lambda: sheets.symlink_to("gone"), "is a link to 'gone', which does not exist"),
        (lambda: sheets.write_text("notes"), "is a file where filter writes its contact sheets"),
        # a link to a file: a link, to remove ('is a file … move it' was said)
        (
            lambda: sheets.symlink_to("manifest.jsonl"),
            "is a link to 'manifest.jsonl', not a folder",
        ),
    ]
    for make, problem in cases:
        make()
        result = runner.invoke(app, ["filter", "--run", str(run)])
        assert result.exit_code == 1, result.output
        assert _error_line(result).startswith(f"error: {sheets}: {problem}"), result.output
        with Manifest.load(run) as manifest:  # refused before any scoring
            assert all(i.kept is None for i in manifest.images.values())
        assert _error_line(result).endswith("remove it" if sheets.is_symlink() else "; move it")
        sheets.unlink()
        (run / "other").unlink(missing_ok=True)


def test_a_stage_without_run_says_where_it_wrote(
    tmp_path: Path, pdfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``histofetch extract paper.pdf`` (``--run`` forgotten) said ``extracted: 1 done, …``
    and nothing of the ``runs/default`` folder it had made: a new user could not tell where
    the images went. One line on stderr now says so; with ``--run`` nothing more."""
    monkeypatch.chdir(tmp_path)
    pdf = pdfs / "a.pdf"
    result = runner.invoke(app, ["extract", str(pdf)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "extracted: 1 done, 0 already done, 0 failed\n"
    assert result.stderr == "run folder: runs/default (no --run given)\n"
    assert (tmp_path / "runs" / "default" / "run.sqlite").is_file()
    given = runner.invoke(app, ["extract", "--run", "runs/default", str(pdf)])
    assert given.exit_code == 0, given.output
    assert given.stderr == ""


def test_filter_and_run_without_run_say_where_they_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/histofetch.md said filter and run name the default folder in their last line;
    'kept 0 of 4 scored images' (no sheet written) names none. Both now say 'run folder:
    runs/default (no --run given)' as the other stages do; with --run nothing more (review
    M4)."""
    from review_kit import make_run

    import histofetch.pipeline

    made = make_run(tmp_path / "made", filtered=False)
    (tmp_path / "runs").mkdir()
    made.rename(tmp_path / "runs" / "default")
    for path in (tmp_path / "runs" / "default" / "images").glob("*.png"):
        path.write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["filter"])
    assert result.exit_code == 0, result.output
    assert "kept 0 of 0 scored images (4 unreadable)\n" in result.stdout, result.stdout
    assert result.stderr == "run folder: runs/default (no --run given)\n", result.stderr
    given = runner.invoke(app, ["filter", "--run", "runs/default"])
    assert given.exit_code == 0 and given.stderr == "", given.output

    monkeypatch.setattr(histofetch.pipeline, "run_pipeline", lambda *a, **k: iter(()))
    result = runner.invoke(app, ["run", "lymph node"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "run folder: runs/default (no --run given)\n", result.stderr


def test_a_link_to_itself_named_pdf_in_a_folder_is_skipped_without_a_traceback(
    tmp_path: Path, pdfs: Path
) -> None:
    """``extract FOLDER`` skips a ``loop.pdf`` linking to itself (no file), but the pass
    that names the failed PDFs afterwards took every ``*.pdf`` under the folder and
    resolved it: RuntimeError (a symlink loop, Python < 3.13), a traceback after the
    summary, exit 1. It now takes the PDFs extract read."""
    (pdfs / "loop.pdf").symlink_to("loop.pdf")
    run = tmp_path / "run"
    result = runner.invoke(app, ["extract", "--run", str(run), str(pdfs)])
    assert result.exit_code == 0, result.output
    assert "extracted: 1 done, 0 already done, 1 failed" in result.output
    assert result.stderr.count("warning: ") == 1 and "locked.pdf" in result.stderr
    assert "Traceback" not in result.output


def test_filter_of_a_figure_file_linking_to_itself_fails_that_row_not_the_run(
    tmp_path: Path, pdfs: Path
) -> None:
    """A run's image file replaced by a link to itself: filter's clean-up of files an
    interrupted attempt left resolved every row's file, RuntimeError (a symlink loop,
    Python < 3.13), a traceback before anything was scored. Now that row names no file to
    keep and fails as unreadable; the other is scored."""
    run = tmp_path / "run"
    assert runner.invoke(app, ["extract", "--run", str(run), str(pdfs)]).exit_code == 0
    with Manifest.load(run) as m:
        first = sorted(m.images.values(), key=lambda img: img.id)[0]
        file = m.resolve(first.path)
    assert file is not None
    file.unlink()
    file.symlink_to(file.name)
    result = runner.invoke(app, ["filter", "--run", str(run), "--no-sheet"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    with Manifest.load(run) as m:
        assert m.images[first.id].status == "failed"
        assert "cannot be resolved" in (m.images[first.id].reason or "")


def test_extract_missing_path_is_one_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["extract", "--run", str(tmp_path / "run"), "nope.pdf"])
    assert result.exit_code == 1
    assert _error_line(result) == "error: nope.pdf: no such file or folder"
    assert not (tmp_path / "run" / "manifest.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["search", "", "--run", "{run}"], "the query is empty"),
        (["search", "  ", "--run", "{run}"], "the query is empty"),
        (["run", "", "--run", "{run}"], "the query is empty"),
        (["extract", "--run", "{run}", ""], "an empty path"),
        (["extract", "--run", "{run}", "{pdf}", ""], "an empty path"),
        (["filter", "--run", "{run}", "--explain", ""], "an empty image id"),
    ],
)
def test_empty_arguments_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], said: str
) -> None:
    """An empty argument (an unset shell variable) went on as if meaningful: an empty query
    was sent to NCBI, ``extract ''`` ingested every PDF under the current folder (``Path('')``
    is ``.``) and ``--explain ''`` ran the whole filter. Each is now exit 2, nothing written."""
    from run_factory import make_run, searched

    work = tmp_path / "cwd"
    work.mkdir()
    build_image_pdf(work / "here.pdf", [he_like(seed=3)])  # what '' would have ingested
    monkeypatch.chdir(work)
    run = tmp_path / "run"
    if args[0] == "filter":
        make_run(run, searched("1"))
    before = sorted(p.name for p in run.iterdir()) if run.exists() else None
    given = [a.format(run=run, pdf=work / "here.pdf") for a in args]
    result = runner.invoke(app, given, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert said in result.output
    assert (sorted(p.name for p in run.iterdir()) if run.exists() else None) == before


def test_search_refuses_an_empty_query_before_any_request(tmp_path: Path) -> None:
    from histocore.errors import UsageError
    from histofetch.http import NetConfig
    from histofetch.search import run_search

    with pytest.raises(UsageError, match="the query is empty"):
        run_search(tmp_path / "run", " ", net=NetConfig())
    assert not (tmp_path / "run").exists()


def test_extract_without_paths_needs_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()  # a missing folder: test_commands_on_a_missing_run_…
    result = runner.invoke(app, ["extract", "--run", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"error: {tmp_path / 'empty'}: no manifest here; give PDF files/folders or run "
        "`histofetch download`"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["extract", "--run", "{file}"],
        ["filter", "--run", "{file}"],
        ["status", "--run", "{file}"],
        ["search", "q", "--run", "{file}"],
        ["export", "--run", "{file}"],
        ["merge", "{run}", "{run}", "--out", "{file}"],
        ["merge", "{run}", "{file}", "--out", "{out}"],
    ],
)
def test_a_file_given_as_a_run_folder_is_one_error_line(tmp_path: Path, args: list[str]) -> None:
    """The file system's state, exit 1 as histomodels' ``--out FILE`` and a missing manifest
    are (it was click's usage error, exit 2; before that 'error: x.png: file exists' from
    creating the folder, or a missing manifest)."""
    from run_factory import make_run, searched

    file = tmp_path / "x.png"
    file.write_bytes(b"not a folder")
    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    names = {"file": str(file), "run": str(run), "out": str(tmp_path / "merged")}
    result = runner.invoke(app, [arg.format(**names) for arg in args])
    assert result.exit_code == 1, result.output
    assert _error_line(result) == f"error: {file}: is a file, not a run folder"
    assert not (tmp_path / "merged").exists()
    assert file.read_bytes() == b"not a folder"


def test_review_scores_naming_a_file_is_one_error_line(tmp_path: Path) -> None:
    """``--scores`` is an eval --manifest output folder: a file there said
    'x.csv/image_scores.csv: no image_scores.csv'."""
    from run_factory import make_run, searched

    file = tmp_path / "x.csv"
    file.write_bytes(b"image_id,score\n")
    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    args = ["review", "--run", str(run), "--scores", str(file), "--no-browser"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert _error_line(result) == f"error: {file}: is a file, not a folder"


def test_export_to_a_folder_is_one_error_line_before_the_work(tmp_path: Path) -> None:
    """Checked before the run is read (histomodels' ``require_file_out``, now shared): the
    same line came only once the rows were written and the rename failed, and a broken
    run's error came first."""
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "manifest.jsonl").write_text("{not json\n")
    folder = tmp_path / "out.csv"
    folder.mkdir()
    result = runner.invoke(app, ["export", "--run", str(broken), "-f", "csv", "--out", str(folder)])
    assert result.exit_code == 1, result.output
    assert _error_line(result) == f"error: {folder}: is a folder, not a file"
    assert list(folder.iterdir()) == []


def test_parquet_export_without_pyarrow_is_one_error_line_naming_the_extra(
    tmp_path: Path,
) -> None:
    """Without pyarrow, ``export --format parquet`` said ``error: Parquet export needs
    pyarrow: pip install pyarrow …``: no file, and not the extra histocore declares for it.
    It names the file not written and ``histocore[parquet]``; run in a process of its own
    where pyarrow cannot be imported."""
    import subprocess
    import sys

    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    hide = (
        "import runpy, sys; sys.modules['pyarrow'] = None; "
        "sys.argv = ['histofetch', *sys.argv[1:]]; "
        "runpy.run_module('histofetch.cli', run_name='__main__')"
    )
    for extra, target, other in (
        ([], run / "export.parquet", "use --format csv"),
        (["--out", str(tmp_path / "rows.parquet")], tmp_path / "rows.parquet",
         "give --out a .csv name"),
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", hide, "export", "--run", str(run), "--format", "parquet",
             *extra],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines() == [
            f"error: {target}: Parquet export needs pyarrow, which is not installed: "
            f"pip install 'histocore[parquet]' (or {other})"
        ], done.stderr
        assert not target.exists() and done.stdout == ""


def test_an_import_error_the_export_did_not_raise_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``export`` turned every ImportError into one ``error:`` line, so a bug (an import in
    our own code, a broken install) read like advice to the user. Only the missing-pyarrow
    error (a DomainError) is a line; here pyarrow imports but its ``parquet`` module does
    not, and the ImportError propagates with its traceback, nothing written."""
    import sys
    import types

    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    monkeypatch.setitem(sys.modules, "pyarrow", types.ModuleType("pyarrow"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = runner.invoke(app, ["export", "--run", str(run), "--format", "parquet"])
    assert isinstance(result.exception, ImportError), result.output
    assert "pyarrow.parquet" in str(result.exception)
    assert "error:" not in result.output
    assert not (run / "export.parquet").exists()


def test_export_to_a_name_too_long_leaves_no_new_folder(tmp_path: Path) -> None:
    """``--out newdir/<256 bytes>.csv`` was refused as too long only after ``newdir/`` was
    made, which stayed behind, empty; the name is checked before any folder is made."""
    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out = tmp_path / "newdir" / ("c" * (limit - 3) + ".csv")
    result = runner.invoke(app, ["export", "--run", str(run), "-f", "csv", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert _error_line(result) == f"error: {out}: file name too long (over {limit} bytes)"
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("name", ["rows.csv", "rows.jsonl"])
def test_export_into_a_missing_folder_makes_it_and_a_failed_one_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """``export --out new/sub/rows.csv`` makes the missing folders, as every command's
    ``--out`` does (histomodels export, predict, ensemble); but an export that failed
    writing (a full disk) left ``new/sub/`` behind, empty. Now the folders it made go
    with it; one that was there stays."""
    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    out = tmp_path / "new" / "sub" / name
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"exported {run} → {out}\n" and out.is_file()

    def full(src: str | Path, dst: str | Path) -> None:
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "new2" / "sub" / name
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert _error_line(result) == f"error: {out}: no space left on device"
    assert not (tmp_path / "new2").exists()
    (tmp_path / "mine").mkdir()  # the user's folder: kept
    out = tmp_path / "mine" / "sub" / name
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(out)])
    assert result.exit_code == 1 and list((tmp_path / "mine").iterdir()) == []


@pytest.mark.parametrize("out", ["new/../x.csv", "a/b/../../c/d.csv", "new/../x.jsonl"])
def test_a_failed_export_removes_the_folders_it_made_through_dot_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    """``export --out new/../x.csv`` makes ``new/`` (the kernel needs it to resolve
    ``new/..``); a failed write (a full disk) left it behind, as ``a/b/`` and ``c/`` for
    ``a/b/../../c/d.csv``: the folders were listed resolved (``x.csv``'s folder, there
    already), not as the writer made them. Now every folder the export made goes."""
    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def full(src: str | Path, dst: str | Path) -> None:
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)
    result = runner.invoke(app, ["export", "--run", str(run), "--out", out])
    assert result.exit_code == 1, result.output
    assert "no space left on device" in _error_line(result)
    assert list(work.iterdir()) == []


def test_a_failed_export_keeps_a_folder_another_process_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder another process makes while the export runs is not the export's: it was
    listed as missing before the write made it, so a failed export removed it with its
    own (and the other process's output folder was gone). Simulated by making
    ``shared/`` just before the export's own ``mkdir`` of it; the export's ``sub/`` goes,
    ``shared/`` stays."""
    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    shared = tmp_path / "shared"
    real_mkdir = os.mkdir

    def racing_mkdir(path: str | Path, *args: object, **kwargs: object) -> None:
        if Path(path) == shared and not shared.exists():
            real_mkdir(shared)  # the other process, first
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    def full(src: str | Path, dst: str | Path) -> None:
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    monkeypatch.setattr(os, "replace", full)
    out = shared / "sub" / "rows.csv"
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert shared.is_dir() and list(shared.iterdir()) == []


@pytest.mark.parametrize("command", ["filter", "status", "export", "download", "review", "extract"])
def test_commands_on_a_missing_run_fail_clearly(tmp_path: Path, command: str) -> None:
    """A mistyped run folder (``--run runs/mnie``) said ``runs/mnie/manifest.jsonl: no
    manifest here``, naming a file in a folder that is not there (and not the run's store,
    run.sqlite); review said ``not a folder``; extract without PDFs said ``runs/mnie: no
    manifest here; give PDF files/folders …`` (review N9). Each says the folder is
    missing, one way."""
    result = runner.invoke(app, [command, "--run", str(tmp_path / "none")])
    assert result.exit_code == 1
    want = f"error: {tmp_path / 'none'}: no such folder (give a histofetch run folder)"
    assert _error_line(result) in (want, f"{want}; download failed")  # what stopped, after
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("command", ["review", "extract", "filter"])
def test_a_run_folder_that_cannot_be_read_says_so(tmp_path: Path, command: str) -> None:
    """``review --run noperm`` (a folder of mode 000) said ``error: [Errno 13] Permission
    denied: 'noperm/manifest.jsonl'``, and extract without PDFs raised a traceback; each
    now says ``noperm/manifest.jsonl: permission denied``, as filter did (review N10).
    Run by root, the check drops the capabilities that read any folder (capsh)."""
    import shlex
    import shutil
    import subprocess
    import sys

    run = tmp_path / "noperm"
    run.mkdir()
    argv = [sys.executable, "-m", "histofetch.cli", command, "--run", str(run)]
    if os.geteuid() == 0:
        if shutil.which("capsh") is None:
            pytest.skip("root without capsh reads a folder of mode 000")
        argv = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
                shlex.join(argv)]  # fmt: skip
    run.chmod(0)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    finally:
        run.chmod(0o755)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {run / 'manifest.jsonl'}: permission denied"
    ), done.stderr


@pytest.mark.parametrize("command", ["filter", "status"])
def test_commands_on_a_folder_without_a_run_fail_clearly(tmp_path: Path, command: str) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, [command, "--run", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "manifest.jsonl: no manifest here" in _error_line(result)


@pytest.mark.parametrize(
    ("args", "outcome"),
    [
        (["download"], "download failed"),
        (["run", "lymph node"], "run stopped (re-run to continue)"),
        (["search", "lymph node"], "search failed"),
    ],
)
def test_a_stage_that_stops_on_a_file_names_the_file_first(
    tmp_path: Path, args: list[str], outcome: str
) -> None:
    """The line read ``error: download failed: RUN/run.sqlite: …`` (``run stopped (re-run to
    continue): …``, ``search failed: …``): the file is the line's subject, what stopped
    follows it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.sqlite").write_bytes(b"garbage, not SQLite")
    result = CliRunner().invoke(app, [*args, "--run", str(run)])
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"error: {run / 'run.sqlite'}: not a usable run store (file is not a database); {outcome}\n"
    )


@pytest.mark.parametrize("command", ["status", "download", "merge"])
def test_a_linked_run_store_is_one_error_line(tmp_path: Path, command: str) -> None:
    """A run folder whose ``run.sqlite`` links to another file: one line naming it, exit 1,
    the file it names untouched (every commit was written through the link)."""
    run, outside = tmp_path / "run", tmp_path / "outside.bin"
    run.mkdir()
    outside.write_bytes(b"the user's file")
    (run / "run.sqlite").symlink_to(outside)
    merge = ["merge", str(run), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, merge if command == "merge" else [command, "--run", str(run)])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(
        f"error: {run / 'run.sqlite'}: a symbolic link to {outside}, not a file of the run "
        "folder (the store would be written through it); not opened"
    )
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert outside.read_bytes() == b"the user's file"


def test_corrupt_manifest_names_file_and_line(tmp_path: Path, pdfs: Path) -> None:
    run = tmp_path / "run"
    runner.invoke(app, ["extract", "--run", str(run), str(pdfs / "a.pdf")])
    manifest = run / "manifest.jsonl"
    manifest.write_text(manifest.read_text() + "{broken\n")
    for command in ("status", "filter"):
        result = runner.invoke(app, [command, "--run", str(run)])
        assert result.exit_code == 1
        line = _error_line(result)
        assert f"{manifest}:5: not valid JSON" in line  # header, record, 2 images


#: a malformed option value → (arguments, the option, what the user is told); the choices
#: come from histofetch.choices / histocore.export, the ranges from the options themselves
MALFORMED = {
    "search --db": (["search", "q", "--db", "pubmedd"], "--db", "'pubmedd' is not one of"),
    "run --db": (["run", "q", "--db", "PMC"], "--db", "'PMC' is not one of 'pubmed', 'pmc'"),
    "download --licence": (["download", "--licence", "cc"], "--licence", "'cc' is not one of"),
    "run --licence": (["run", "q", "--licence", "cc-by"], "--licence", "'cc-by' is not one"),
    "export --format": (["export", "-f", "jsnl"], "--format", "'jsnl' is not one of 'jsonl'"),
    "search --shard": (["search", "q", "--shard", "5/4"], "--shard", "K must be between 1 and N"),
    "run --shard": (["run", "q", "--shard", "half"], "--shard", "expected K/N, e.g. 1/4"),
    "filter --purple": (
        ["filter", "--purple", "1.5"],
        "--purple",
        "1.5 is not in the range 0.0<=x<=1.0.",
    ),
    "run --purple": (
        ["run", "q", "--purple", "-0.1"],
        "--purple",
        "-0.1 is not in the range 0.0<=x<=1.0.",
    ),
    # nan was 'Input should be less than or equal to 1' (typer's range check): not a number
    "filter --purple nan": (["filter", "--purple", "nan"], "--purple", "'nan' is not a number"),
    "run --purple NaN": (["run", "q", "--purple", "NaN"], "--purple", "'NaN' is not a number"),
    "filter --min-tissue": (["filter", "--min-tissue", "nan"], "--min-tissue", "is not a num"),
    "filter --max-dark": (
        ["filter", "--max-dark", "inf"],
        "--max-dark",
        "inf is not in the range 0.0<=x<=1.0.",
    ),
    "filter --min-he": (["filter", "--min-he", "half"], "--min-he", "'half' is not a number"),
    "extract --record-timeout": (
        ["extract", "--record-timeout", "nan"],
        "--record-timeout",
        "'nan' is not a number; give one from 1 to 86400",
    ),
    "download --jobs": (["download", "--jobs", "0"], "--jobs", "0 is not in the range 1<=x<=64."),
    # no upper bound: --jobs 100000 tried to start that many workers
    "download --jobs 65": (
        ["download", "--jobs", "65"],
        "--jobs",
        "65 is not in the range 1<=x<=64.",
    ),
    "extract --jobs": (
        ["extract", "-j", "100000"],
        "--jobs",
        "100000 is not in the range 1<=x<=256.",
    ),
    "filter --jobs": (["filter", "--jobs", "257"], "--jobs", "257 is not in the range 1<=x<=256."),
    "run --jobs": (
        ["run", "q", "--jobs", "100000"],
        "--jobs",
        "100000 is not in the range 1<=x<=256.",
    ),
    "run --net-jobs": (
        ["run", "q", "--net-jobs", "65"],
        "--net-jobs",
        "65 is not in the range 1<=x<=64.",
    ),
    "search --mindate": (["search", "q", "--mindate", "2020-01"], "--mindate", "not a date as"),
    "run --maxdate": (["run", "q", "--maxdate", "2021/13"], "--maxdate", "'2021/13' is not a"),
    "search --maxdate": (["search", "q", "--maxdate", "2021/04/31"], "--maxdate", "not a date"),
    "search dates reversed": (
        ["search", "q", "--mindate", "2022", "--maxdate", "2021/06"],
        "--mindate",
        "'2022' is after --maxdate '2021/06'",
    ),
    "run dates reversed": (
        ["run", "q", "--mindate", "2021/05", "--maxdate", "2021/04/30"],
        "--mindate",
        "is after --maxdate",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_option_value_is_a_usage_error(tmp_path: Path, case: str) -> None:
    """Exit 2 with click's usage message naming the option (as docs/histofetch.md says),
    before anything is read, written or fetched; no traceback."""
    args, option, said = MALFORMED[case]
    run = tmp_path / "run"
    result = runner.invoke(app, [*args, "--run", str(run)])
    assert result.exit_code == 2, result.output
    told = unboxed(result.stderr)
    assert f"Invalid value for '{option}'" in told and said in told
    assert "Traceback" not in result.output and not run.exists()


def test_export_out_names_the_format_when_format_is_not_given(tmp_path: Path) -> None:
    """`export --out rows.csv` without --format wrote JSON Lines into rows.csv (the default
    format was jsonl whatever --out said); the suffix now names the format, and --format
    given still decides."""
    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    for name, first in (("rows.csv", "kind,id,"), ("ROWS.CSV", "kind,id,"), ("rows.txt", "{")):
        result = runner.invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_text().startswith(first), name
    out = tmp_path / "asked.txt"  # a suffix naming no format: --format decides
    result = runner.invoke(app, ["export", "--run", str(run), "-f", "csv", "--out", str(out)])
    assert result.exit_code == 0 and out.read_text().startswith("kind,id,"), result.output
    result = runner.invoke(app, ["export", "--run", str(run)])
    assert result.exit_code == 0 and not (run / "export.csv").exists(), result.output


@pytest.mark.parametrize(
    ("fmt", "name", "said"),
    [("parquet", "r.csv", "--format parquet writes Parquet, but 'r.csv' is named as CSV (.csv)"),
     ("csv", "R.JSONL", "--format csv writes CSV, but 'R.JSONL' is named as JSON Lines (.jsonl)"),
     ("jsonl", "x.Parquet", "'x.Parquet' is named as Parquet (.parquet): name it .jsonl/.json")],
)  # fmt: skip
def test_export_format_the_out_suffix_contradicts_is_a_usage_error(
    tmp_path: Path, fmt: str, name: str, said: str
) -> None:
    """`export --format parquet --out r.csv` wrote Parquet into r.csv (exit 0); a suffix
    naming another format is a usage error naming both options (exit 2, nothing written,
    the run not read), as `histomodels export` does."""
    out = tmp_path / name
    result = runner.invoke(app, ["export", "--run", str(tmp_path / "no-run"), "-f", fmt,
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2, result.output
    told = " ".join(unboxed(result.stderr).split())
    assert "Invalid value for '--format' / '--out'" in told and said in told, told
    assert "leave --format out to export what the name says" in told
    assert not out.exists() and "Traceback" not in result.output


def test_the_licence_choices_are_the_policies() -> None:
    from typing import get_args

    from histofetch.choices import LicencePolicy
    from histofetch.licence import POLICIES

    assert get_args(LicencePolicy) == tuple(POLICIES)


def test_valid_option_values_pass_and_help_lists_the_choices(tmp_path: Path) -> None:
    from run_factory import make_run, searched

    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    for fmt in ("jsonl", "csv"):
        result = runner.invoke(app, ["export", "--run", str(run), "-f", fmt])
        assert result.exit_code == 0, result.output
    assert len((run / "export.csv").read_text().splitlines()) == 2  # header, the record
    # the other choices pass the options: each command then stops on the broken run
    # folder (exit 1, one line naming its manifest) before any request is made
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.jsonl").write_text("{not json\n")
    for args in (
        ["download", "--licence", "noncommercial", "-j", "64"],
        ["search", "q", "--db", "pmc", "--shard", "2/2"],
        ["run", "q", "--db", "pubmed", "--licence", "commercial", "--purple", "1", "-j", "256"],
        ["filter", "--jobs", "256"],
    ):
        result = runner.invoke(app, [*args, "--run", str(broken)])
        assert result.exit_code == 1, (args, result.output)
        assert "manifest.jsonl:1: not valid JSON" in _error_line(result), result.output
    shown = {
        "search": "<pubmed|pmc>",
        "download": "<any|commercial|noncommercial>",
        "export": "<jsonl|csv|parquet>",
    }
    for command, choices in shown.items():
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and choices in result.output, result.output


def test_a_newline_in_a_file_name_cannot_forge_a_second_error_line(tmp_path: Path) -> None:
    forged = "nope.pdf\nerror: everything is fine"
    result = runner.invoke(app, ["extract", "--run", str(tmp_path / "run"), forged])
    assert result.exit_code == 1
    assert (
        _error_line(result) == "error: nope.pdf\\nerror: everything is fine: no such file or folder"
    )


def test_filter_reasons_name_thresholds_as_the_user_gave_them(tmp_path: Path, pdfs: Path) -> None:
    """`--purple 0.9999999` read 'purple ratio too low (1.00 < 1)' in the reject reason
    (`:g` keeps six digits): a threshold the user never gave, and a ratio that reads above
    it. Now the threshold as given, the ratio in full where 2 decimals would mislead."""
    run = tmp_path / "run"
    assert runner.invoke(app, ["extract", "--run", str(run), str(pdfs)]).exit_code == 0
    args = ["filter", "--run", str(run), "--purple", "0.9999999", "--no-sheet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with Manifest.load(run) as manifest:
        reasons = [i.filter_reason for i in manifest.images.values()]
    assert reasons and all(r and "purple ratio too low" in r for r in reasons), reasons
    # the measured ratio is written so it reads below the threshold (it read '1.00 < 1')
    shown = [re.search(r"\((\S+) < 0\.9999999\)", r or "") for r in reasons]
    assert all(m and float(m.group(1)) < 0.9999999 for m in shown), reasons


def test_export_onto_the_review_log_or_a_figure_is_one_error_line(tmp_path: Path) -> None:
    """`export --out RUN/review_log.jsonl` overwrote who labelled what (exit 0); it and a
    figure under RUN/images/ are one error line, exit 1, nothing written."""
    from run_factory import make_run, searched

    from histocore.export import REVIEW_LOG
    from histofetch.review.data import LOG_NAME

    assert REVIEW_LOG == LOG_NAME
    run = make_run(tmp_path / "run", searched("1", "PMC1"))
    log, fig = run / LOG_NAME, run / "images" / "pmid_1" / "p001_001.png"
    fig.parent.mkdir(parents=True)
    log.write_text('{"image_id": "pmid:1/p001_001", "label": "metastasis"}\n')
    fig.write_bytes(b"png")
    for out, said in ((log, "is the run's review_log.jsonl"), (fig, "lies in the run's images/")):
        result = runner.invoke(app, ["export", "--run", str(run), "--out", str(out)])
        assert result.exit_code == 1 and said in _error_line(result), result.output
    assert log.read_text().startswith('{"image_id"') and fig.read_bytes() == b"png"


def _filtered_run_in_a_tilde_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Result]:
    """A run at ``./~/run`` in the working folder, $HOME an empty folder of its own, and
    ``histofetch filter --run ./~/run``'s result: ($HOME, that result)."""
    from review_kit import make_run

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    make_run(work / "~", filtered=False)
    return home, runner.invoke(app, ["filter", "--run", "./~/run", "--min-side", "100000"])


def test_success_lines_name_a_tilde_folder_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder named ``~`` given as ``./~/run``: the CLI parses it as ``Path('~/run')``
    (pathlib drops the ``./``), and the lines that say what was done printed that,
    ``exported ~/run → ~/out.csv``, ``sheets in ~/run/sheets``, ``run ~/run`` and review's
    ``histofetch status --run '~/run'``: ``$HOME/run`` to a reader, and to the CLI when
    pasted. They now keep the ``./`` (as the errors do, ``histocore.io.path_shown``); a
    ``~/x`` given is shown expanded, as it was."""
    home, r = _filtered_run_in_a_tilde_folder(tmp_path, monkeypatch)
    assert r.exit_code == 0 and r.output.endswith("; sheets in ./~/run/sheets\n"), r.output
    r = runner.invoke(app, ["export", "--run", "./~/run", "--out", "./~/out.csv"])
    assert r.exit_code == 0 and r.output == "exported ./~/run → ./~/out.csv\n", r.output
    r = runner.invoke(app, ["status", "--run", "./~/run"])
    assert r.exit_code == 0 and r.output.startswith("run ./~/run  (query: "), r.output
    r = runner.invoke(app, ["review", "--run", "./~/run", "--no-browser"])
    assert r.exit_code == 1 and "histofetch status --run ./~/run says why" not in r.output
    assert "histofetch status --run './~/run' says why" in r.output, r.output
    assert "the sheets in ./~/run/sheets show them" in r.output, r.output
    assert not list(home.iterdir())  # nothing went to $HOME
    r = runner.invoke(app, ["export", "--run", "./~/run", "--out=~/rows.csv"])
    assert r.exit_code == 0 and r.output == f"exported ./~/run → {home / 'rows.csv'}\n", r.output


def test_error_lines_name_a_tilde_folder_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The errors about a folder named ``~`` given as ``./~/run`` named it ``~/run``
    (``$HOME/run`` to a reader), though the success lines said ``./~/run``:
    ``error: ~/run/manifest.jsonl: no kept figures …`` (review), ``error:
    ~/nope/manifest.jsonl: no manifest here`` (status, filter, export), ``error: ~/run:
    'nope' names no image`` (filter --explain). Every error line now names it ``./~/…``
    (histocore.cli.fail, whoever wrote the message)."""
    _, r = _filtered_run_in_a_tilde_folder(tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    work = tmp_path / "work"
    r = runner.invoke(app, ["review", "--run", "./~/run", "--no-browser"])
    assert r.exit_code == 1
    assert _error_line(r).startswith("error: ./~/run/manifest.jsonl: no kept figures"), r.output
    (work / "~" / "empty").mkdir()
    for command in ("status", "filter", "export", "review"):
        for name, said in (("empty/manifest.jsonl", "no manifest here"), ("nope", "no such")):
            r = runner.invoke(app, [command, "--run", f"./~/{name.split('/')[0]}"])
            assert r.exit_code == 1
            line = _error_line(r)
            assert line.startswith(f"error: ./~/{name}: {said}"), (command, line)
    r = runner.invoke(app, ["filter", "--run", "./~/run", "--explain", "nope"])
    assert r.exit_code == 1 and _error_line(r).startswith("error: ./~/run: 'nope' names no image")


def test_filter_help_writes_every_threshold_default_alike() -> None:
    """``filter --help`` showed ``--purple``'s default as Typer's ``[default: 0.3]`` and its
    neighbours' as ``[0.5]`` in their text, numbers typed there by hand. Each now ends with
    ``[default: N]``, N the decision's own threshold (docs walk)."""
    from histofetch.decide.rules import Thresholds

    out = runner.invoke(app, ["filter", "--help"], env={"COLUMNS": "300"}).output
    rows = {
        row.split()[0]: row
        for row in (line.strip("│ ") for line in out.splitlines())
        if row.startswith("--")
    }
    t = Thresholds()
    for option, value in {"--purple": t.purple, "--min-he": t.min_he,
                          "--min-tissue": t.min_tissue, "--min-blocks": t.min_blocks,
                          "--max-dark": t.max_dark, "--min-side": t.min_side}.items():  # fmt: skip
        assert rows[option].endswith(f"[default: {value:g}]"), rows[option]
