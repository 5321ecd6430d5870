"""Labelling mined figures: interactive prompt, --set, --from-csv; labels land in the manifest."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from histocore.manifest import Image, Manifest, ManifestError, Record
from histomodels.cli import app
from histomodels.label import LabelError, normalise_label, read_label_csv


def _run(tmp_path: Path, n: int = 3) -> Path:
    m = Manifest(run_dir=tmp_path / "run", query="lymph node metastasis")
    m.add_record(Record(id="pmid:1", title="A paper", stage="filtered"))
    for i in range(n):
        m.add_image(
            Image(
                id=f"img{i}",
                record_id="pmid:1",
                path=f"images/img{i}.png",
                sha256="0" * 64,
                width=400,
                height=300,
                kept=True,
                caption=f"Figure {i}. H&E, metastatic carcinoma.",
            )
        )
    m.add_image(
        Image(
            id="dropped",
            record_id="pmid:1",
            path="images/d.png",
            sha256="1" * 64,
            width=10,
            height=10,
            kept=False,
        )
    )
    m.save()
    m.close()  # no open store (run.sqlite-wal/-shm) left for the collector
    return m.run_dir


def test_label_stamps_each_answer_to_the_microsecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers stamped to the second tied, in ``histofetch merge``, with an undo given in
    the same second in another copy of the run; ``histomodels label`` stamps them to the
    microsecond (``--set`` and the prompt), as the review page does (review 46 M5: a
    revert to whole seconds passed the tests)."""
    from datetime import UTC, datetime

    import histocore.io

    class Clock(datetime):  # the clock of histocore.io.utc_stamp, which stamps them
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return datetime(2026, 3, 1, 12, 0, 0, 500_000, UTC)

    monkeypatch.setattr(histocore.io, "datetime", Clock)
    run = _run(tmp_path)
    r = CliRunner().invoke(app, ["label", "--manifest", str(run), "--set", "img0=m"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["label", "--manifest", str(run)], input="n\nq\n")
    assert r.exit_code == 0, r.output
    images = Manifest.load(run).images
    for image_id in ("img0", "img1"):
        assert images[image_id].label_at == "2026-03-01T12:00:00.500000+00:00", image_id


def test_interactive_labelling_saves_each_answer(tmp_path: Path) -> None:
    run = _run(tmp_path)
    # img0: bad answer then "m"; img1: "n"; img2: quit (stays unlabelled)
    r = CliRunner().invoke(app, ["label", "--manifest", str(run)], input="maybe\nm\nn\nq\n")
    assert r.exit_code == 0, r.output
    assert "3 figure(s) to label" in r.output and "not a label" in r.output
    assert "caption: Figure 0." in r.output
    labels = {i.id: i.label for i in Manifest.load(run).images.values()}
    assert labels == {"img0": "metastasis", "img1": "no_metastasis", "img2": None, "dropped": None}
    # a second session asks only about what is still unlabelled
    r = CliRunner().invoke(app, ["label", "--manifest", str(run)], input="u\n")
    assert "1 figure(s) to label" in r.output
    img2 = Manifest.load(run).images["img2"]
    assert img2.label_at is not None
    assert img2.label == "not_usable" and img2.label_by and img2.label_at.endswith("+00:00")


def test_the_end_of_the_input_quits_and_keeps_the_answers(tmp_path: Path) -> None:
    """Answers piped from a file that runs out (or Ctrl-D) end the session like ``q``:
    exit 0 and the answers given are saved (it said "Aborted." and exited 1)."""
    run = _run(tmp_path)
    r = CliRunner().invoke(app, ["label", "--manifest", str(run)], input="m\n")
    assert r.exit_code == 0, r.output
    assert "stopped; labels so far are saved" in r.output and "Aborted" not in r.output
    assert Manifest.load(run).images["img0"].label == "metastasis"
    assert Manifest.load(run).images["img1"].label is None


def test_set_and_csv(tmp_path: Path) -> None:
    run = _run(tmp_path)
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "label",
            "--manifest",
            str(run),
            "--set",
            "img0=metastasis",
            "--set",
            "img1=no metastasis",
        ],
    )
    assert r.exit_code == 0 and "2 label(s) changed" in r.output
    # the labels are stored in run.sqlite, manifest.jsonl is its export: the line said
    # 'changed in RUN/manifest.jsonl' (docs walk)
    assert r.output == (
        f"2 label(s) changed in {run / 'run.sqlite'}; {run / 'manifest.jsonl'} exported from it\n"
    ), r.output
    r = runner.invoke(app, ["label", "--manifest", str(run), "--set", "img0=metastasis"])
    assert r.output == "0 label(s) changed; nothing written\n", r.output
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image_id,label\nimg2,not_usable\nimg0,clear\n")
    r = runner.invoke(app, ["label", "--manifest", str(run), "--from-csv", str(csv_path)])
    assert r.exit_code == 0, r.output
    images = Manifest.load(run).images
    assert (images["img0"].label, images["img1"].label, images["img2"].label) == (
        None,
        "no_metastasis",
        "not_usable",
    )
    r = runner.invoke(app, ["label", "--manifest", str(run), "--list"])
    assert "img1\tno_metastasis" in r.output and "dropped" not in r.output


def test_an_image_scores_csv_labels_only_the_figures_given_a_label(tmp_path: Path) -> None:
    """``eval --manifest``'s image_scores.csv, which the docs say can be given as it is once
    its label column is filled in, holds -1 for a figure without a label: the file was
    refused at the first such row ('-1' is not a label) unless every row was filled."""
    run = _run(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["label", "--manifest", str(run), "--set", "img2=u"])
    assert r.exit_code == 0, r.output
    csv_path = tmp_path / "image_scores.csv"
    csv_path.write_text("image_id,record_id,label,max\nimg0,r,1,0.9\nimg1,r,-1,0.2\n"
                        "img2,r,-1,nan\n")  # fmt: skip
    r = runner.invoke(app, ["label", "--manifest", str(run), "--from-csv", str(csv_path)])
    assert r.exit_code == 0 and "1 label(s) changed" in r.output, r.output
    images = Manifest.load(run).images
    got = (images["img0"].label, images["img1"].label, images["img2"].label)
    assert got == ("metastasis", None, "not_usable")  # img2 keeps the label it had


@pytest.mark.parametrize(
    ("text", "line", "said"),
    [
        # notes quoted over two lines and a blank line: the row count said 3
        ('image_id,label,notes\nimg0,m,"glands\nand fat"\n\nimg1,cancer,x\n', 5, "'cancer' is not"),
        # a row shorter than the header had no id: AttributeError out of read_cell
        ("label,image_id\nm,img0\nn\n", 3, "no image_id cell"),
    ],
)
def test_a_bad_label_csv_row_is_named_by_its_line(
    tmp_path: Path, text: str, line: int, said: str
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelError, match=rf"^{path}:{line}: {said}"):
        read_label_csv(path)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # one id given two labels: the last was kept silently (exit 0, "1 label(s) changed")
        ("image_id,label\nimg0,m\nimg1,n\nimg0,n\n", "labels.csv:4: image 'img0' is labelled "
         "no_metastasis here and metastasis on line 2"),
        ("image_id,label\nimg0,m\nimg0,clear\n", "labels.csv:3: image 'img0' is labelled "
         "clear here and metastasis on line 2"),
        # a long id is cut as other quoted values are, and says so (it was cut bare)
        (f"image_id,label\n{'i' * 300},m\n{'i' * 300},n\n", f"labels.csv:3: image "
         f"'{'i' * 200}…' is labelled no_metastasis here and metastasis on line 2"),
        # a header naming the label column twice: the last column was taken silently
        ("image_id,label,label\nimg0,m,n\n", "labels.csv: column 'label' is given 2 times"),
    ],
)  # fmt: skip
def test_a_label_csv_that_says_two_things_is_refused(tmp_path: Path, text: str, said: str) -> None:
    run = _run(tmp_path)
    before = (run / "manifest.jsonl").read_bytes()
    path = tmp_path / "labels.csv"
    path.write_text(text)
    r = CliRunner().invoke(app, ["label", "--manifest", str(run), "--from-csv", str(path)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0] == f"error: {tmp_path}/{said}", lines
    assert (run / "manifest.jsonl").read_bytes() == before
    assert all(i.label is None for i in Manifest.load(run).images.values())


def test_a_label_csv_given_twice_alike_is_taken(tmp_path: Path) -> None:
    """The same label twice (two CSVs joined) says one thing: taken."""
    path = tmp_path / "labels.csv"
    path.write_text("image_id,label\nimg0,m\nimg0,metastasis\nimg1,-1\nimg1,n\n")
    assert read_label_csv(path) == {"img0": "metastasis", "img1": "no_metastasis"}


@pytest.mark.parametrize("kind", ["device", "link to a device", "folder"])
def test_a_label_csv_that_is_no_regular_file_is_refused_unopened(tmp_path: Path, kind: str) -> None:
    """/dev/zero named as the label CSV was read without end."""
    run = _run(tmp_path)
    path = tmp_path / "image_scores.csv"
    if kind == "device":
        path = Path("/dev/zero")
    elif kind == "link to a device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "histomodels", "label", "--manifest", str(run),
         "--from-csv", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    why = "is a folder, not a label CSV" if kind == "folder" else "not a regular file or pipe"
    assert r.returncode == 1 and r.stderr.startswith(f"error: {path}: {why}"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_label_csv_from_a_pipe_is_read(tmp_path: Path) -> None:
    """``--from-csv <(grep … image_scores.csv)``, a pipe with a writer, is a user's own
    input (review 2: it was refused as 'not a regular file' when devices were)."""
    run = _run(tmp_path)
    cmd = (
        f"{shlex.quote(sys.executable)} -m histomodels label --manifest {shlex.quote(str(run))}"
        " --from-csv <(printf 'image_id,label\\nimg0,m\\n')"
    )
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with Manifest.load(run) as m:
        assert m.images["img0"].label == "metastasis"


def test_bad_labels_change_nothing(tmp_path: Path) -> None:
    run = _run(tmp_path)
    before = (run / "manifest.jsonl").read_bytes()
    runner = CliRunner()
    # an unknown image is the run's to say: one error line naming the run folder, exit 1 (it
    # named RUN/manifest.jsonl, which is only the export of the run store the labels live in)
    r = runner.invoke(app, ["label", "--manifest", str(run), "--set", "nosuch=metastasis"])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [f"error: {run}: no image with id 'nosuch'"], r.stderr
    # a malformed --set (no '=', not a label) is a usage error, before the manifest is read
    for args in (["--set", "img0=cancer"], ["--set", "img0"]):
        r = runner.invoke(app, ["label", "--manifest", str(run), *args])
        assert r.exit_code == 2 and "Invalid value for '--set'" in r.stderr, r.output
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_text("name,value\nimg0,m\n")
    r = runner.invoke(app, ["label", "--manifest", str(run), "--from-csv", str(bad_csv)])
    assert r.exit_code == 1 and str(bad_csv) in r.output
    assert (run / "manifest.jsonl").read_bytes() == before
    r = runner.invoke(app, ["label", "--manifest", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "empty: no such folder (give a histofetch run folder)" in r.output


def test_an_unknown_id_names_a_run_in_a_folder_called_tilde_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run in a folder named ``~`` here, given as ``./~/run``: the CSV line's refusal
    named it ``~/run`` (pathlib drops the ``./``), $HOME's run to a reader."""
    _run(tmp_path / "~")
    monkeypatch.chdir(tmp_path)
    Path("labels.csv").write_text("image_id,label\nnosuch,n\n")
    r = CliRunner().invoke(app, ["label", "--manifest", "./~/run", "--from-csv", "labels.csv"])
    assert r.exit_code == 1, r.output
    (line,) = r.stderr.splitlines()
    assert line == "error: labels.csv:2: no image with id 'nosuch' in ./~/run", line


def test_an_unknown_id_in_a_label_csv_is_named_by_the_csv_line(tmp_path: Path) -> None:
    """``--from-csv`` with an id the run does not hold said 'error: RUN/manifest.jsonl: no
    image with id …', blaming the manifest; the CSV line that gives it is named now
    (finding 7). Nothing is labelled."""
    run = _run(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,label\nimg0,m\nimg0,m\nnosuch,n\n")
    r = CliRunner().invoke(app, ["label", "--manifest", str(run), "--from-csv", str(labels)])
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {labels}:4: no image with id 'nosuch' in {run}"
    ], r.stderr
    with Manifest.load(run) as m:
        assert m.images["img0"].label is None


def test_normalise_label() -> None:
    assert normalise_label("M") == "metastasis"
    assert normalise_label("no-metastasis") == "no_metastasis"
    assert normalise_label("clear") is None
    with pytest.raises(LabelError, match="not a label"):
        normalise_label("benign-ish")


def test_each_answer_is_committed_before_the_next_question(tmp_path: Path) -> None:
    """One store transaction per answer (another process sees it at once); Ctrl-C keeps
    every answer given and still exports manifest.jsonl."""
    import json

    from histomodels.label import label_interactively

    run = _run(tmp_path)
    seen: list[dict] = []
    answers = iter(["m", "n"])

    def ask(_: str) -> str:
        seen.append({i.id: i.label for i in Manifest.load(run).images.values()})
        answer = next(answers, None)
        if answer is None:
            raise KeyboardInterrupt
        return answer

    with pytest.raises(KeyboardInterrupt):
        label_interactively(Manifest.load(run), ask, lambda _: None)
    assert [s["img0"] for s in seen] == [None, "metastasis", "metastasis"]
    assert seen[2]["img1"] == "no_metastasis"
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    exported = {r["id"]: r.get("label") for r in rows if r.get("kind") == "image"}
    assert exported["img0"] == "metastasis" and exported["img1"] == "no_metastasis"
    assert exported["img2"] is None


def test_hostile_captions_and_ids_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """A caption or id mined from a paper is printed with its control characters escaped:
    no terminal escape (clear screen, window title, colour) reaches the person labelling."""
    m = Manifest(run_dir=tmp_path / "run", query="q")
    m.add_record(Record(id="pmid:1", title="A paper", stage="filtered"))
    m.add_image(
        Image(id="evil\x1b[31m", record_id="pmid:1", path="images/e\x1b[2J.png",
              sha256="0" * 64, width=400, height=300, kept=True,
              caption="Figure 1.\x1b]0;pwned\x07\x1b[2J H&E\r\nerror: forged")
    )  # fmt: skip
    m.save()
    for args, answers in ((["label"], "q\n"), (["label", "--list"], "")):
        r = CliRunner().invoke(app, [*args, "--manifest", str(m.run_dir)], input=answers)
        assert r.exit_code == 0, r.output
        assert "\x1b" not in r.output and "\x07" not in r.output and "\r" not in r.output
        assert "evil\\x1b[31m" in r.output
        assert "\nerror: forged" not in r.output
        if "--list" not in args:
            assert "caption: Figure 1.\\x1b]0;pwned\\x07\\x1b[2J H&E error: forged" in r.output


def _run_with_figures_outside(tmp_path: Path) -> tuple[Path, Path]:
    """A one-figure run plus kept rows ``abs`` (an absolute path out), ``up`` (``../``) and
    ``link`` (a file link pointing out), all naming the returned secret file."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    run = _run(tmp_path, n=1)
    (run / "images").mkdir()
    (run / "images" / "link.png").symlink_to(secret)
    m = Manifest.load(run)
    for name, path in (("abs", str(secret)), ("up", "../secret.png"), ("link", "images/link.png")):
        m.add_image(Image(id=name, record_id="pmid:1", path=path, sha256="0" * 64, width=400,
                          height=300, kept=True))  # fmt: skip
    m.save()
    m.close()
    return run, secret


def test_figures_whose_file_lies_outside_the_run_are_not_offered_or_linked(
    tmp_path: Path,
) -> None:
    """``Manifest.image_file`` refuses to read a row naming ``/etc/passwd``, ``../x.png`` or
    a file link pointing out; the prompt printed ``open: file:///etc/passwd`` for them."""
    run, secret = _run_with_figures_outside(tmp_path)
    (run / "images" / "img0.png").write_bytes(b"png")
    r = CliRunner().invoke(app, ["label", "--manifest", str(run)], input="m\nm\nm\nm\n")
    assert r.exit_code == 0, r.output
    assert "1 figure(s) to label" in r.output
    assert "3 figure(s) not offered: their file lies outside the run folder (abs, link, up)" in (
        r.output
    )
    assert secret.as_uri() not in r.output and str(secret) not in r.output
    assert f"open: {(run / 'images' / 'img0.png').resolve().as_uri()}" in r.output
    labels = {i.id: i.label for i in Manifest.load(run).images.values()}
    assert labels == {"img0": "metastasis", "dropped": None, "abs": None, "up": None,
                      "link": None}  # fmt: skip


def test_set_and_csv_refuse_figures_whose_file_lies_outside_the_run(tmp_path: Path) -> None:
    """``--set`` and ``--from-csv`` refuse an id the prompt does not offer (its file is
    ``/etc/passwd``-like, ``../x.png`` or a link pointing out) like an unknown id: one error
    line, exit 1, nothing written (they labelled it)."""
    run, secret = _run_with_figures_outside(tmp_path)
    before = (run / "manifest.jsonl").read_bytes()
    runner = CliRunner()
    for name in ("abs", "up", "link"):
        csv_path = tmp_path / f"{name}.csv"
        csv_path.write_text(f"image_id,label\nimg0,m\n{name},m\n")
        for args in (["--set", "img0=m", "--set", f"{name}=m"], ["--from-csv", str(csv_path)]):
            r = runner.invoke(app, ["label", "--manifest", str(run), *args])
            lines = r.stderr.strip().splitlines()
            assert r.exit_code == 1 and len(lines) == 1, r.output
            assert lines[0].startswith(f"error: {run}: image {name!r}: "), lines
            assert "outside the run folder" in lines[0] and str(secret) not in lines[0]
    assert (run / "manifest.jsonl").read_bytes() == before
    labels = {i.id: i.label for i in Manifest.load(run).images.values()}
    assert set(labels.values()) == {None}


def test_a_figure_whose_file_is_a_symlink_loop_is_refused_in_one_line(tmp_path: Path) -> None:
    """A row whose file is a link to itself (``images/loop.png -> loop.png``) made
    ``Manifest.image_file`` raise RuntimeError ("Symlink loop") out of ``label --set``: exit 1
    with an empty stderr. It is now not usable, like a file outside the run folder: one
    error line, nothing written; the prompt leaves it out."""
    run = _run(tmp_path, n=1)
    (run / "images").mkdir()
    (run / "images" / "img0.png").write_bytes(b"png")
    (run / "images" / "loop.png").symlink_to("loop.png")
    m = Manifest.load(run)
    m.add_image(Image(id="loop", record_id="pmid:1", path="images/loop.png", sha256="0" * 64,
                      width=400, height=300, kept=True))  # fmt: skip
    m.save()
    with pytest.raises(ManifestError, match="cannot be resolved"):
        m.image_file("images/loop.png")
    m.close()
    before = (run / "manifest.jsonl").read_bytes()
    r = CliRunner().invoke(app, ["label", "--manifest", str(run), "--set", "loop=m"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith("error: ") and "image 'loop'" in lines[0], lines
    assert (run / "manifest.jsonl").read_bytes() == before
    r = CliRunner().invoke(app, ["label", "--manifest", str(run)], input="m\n")
    assert r.exit_code == 0, r.output
    said = "1 figure(s) not offered: their file path cannot be resolved (a link loop) (loop)"
    assert said in r.output and "lies outside" not in r.output  # it named a loop 'outside'
    labels = {i.id: i.label for i in Manifest.load(run).images.values()}
    assert labels["img0"] == "metastasis" and labels["loop"] is None


def test_a_figure_whose_path_holds_a_nul_character_is_not_called_a_link_loop(
    tmp_path: Path,
) -> None:
    """A row whose path holds a NUL character was left out as ``their file path cannot be
    resolved (a link loop)`` and refused by ``--set`` as a ``symlink loop``: it says what
    is wrong now."""
    run = _run(tmp_path, n=1)
    (run / "images").mkdir()
    (run / "images" / "img0.png").write_bytes(b"png")
    m = Manifest.load(run)
    m.add_image(Image(id="nul", record_id="pmid:1", path="images/x\x00.png", sha256="0" * 64,
                      width=400, height=300, kept=True))  # fmt: skip
    m.save()
    m.close()
    r = CliRunner().invoke(app, ["label", "--manifest", str(run), "--set", "nul=m"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "image 'nul': its file path names no file (a NUL character" in lines[0], lines
    assert "loop" not in lines[0]
    r = CliRunner().invoke(app, ["label", "--manifest", str(run)], input="m\n")
    assert r.exit_code == 0, r.output
    said = "1 figure(s) not offered: their file path names no file (a NUL character"
    assert said in r.output and "loop" not in r.output, r.output


def test_the_set_line_names_a_tilde_folder_as_given(tmp_path: Path, monkeypatch) -> None:
    """``label --manifest ./~/run --set …`` (a folder named ``~`` here) said ``changed in
    ~/run/run.sqlite; ~/run/manifest.jsonl exported from it``, ``$HOME``'s to a reader, as
    the other success lines said before the './~' sweep: it names ``./~/run`` now."""
    monkeypatch.chdir(tmp_path)
    _run(tmp_path / "~")
    r = CliRunner().invoke(app, ["label", "--manifest", "./~/run", "--set", "img0=metastasis"])
    assert r.exit_code == 0, r.output
    assert r.output == (
        "1 label(s) changed in ./~/run/run.sqlite; ./~/run/manifest.jsonl exported from it\n"
    ), r.output
