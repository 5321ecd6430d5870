"""The review page's server side: filters, atomic answers from many tabs, errors, escaping."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from review_kit import make_run, make_scores
from starlette.testclient import TestClient
from typer.testing import CliRunner

from histocore.io import unique_stem
from histocore.manifest import Manifest
from histofetch.cli import app as cli
from histofetch.review.app import create_app
from histofetch.review.data import (
    LOG_NAME,
    ReviewError,
    Scores,
    matches,
    ordered,
    save_answer,
    select,
)
from histofetch.stage import command as hint_command


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("review")
    run = make_run(root)
    return run, make_scores(run, root)


def _client(run: Path, scores: Path | None = None, **kw) -> TestClient:
    return TestClient(create_app(run, scores=scores, reviewer="rev"), **kw)


def _post(client: TestClient, image_id: str, label: str | None, reviewer: str = "ann"):
    return client.post("/api/label", json={"id": image_id, "label": label, "reviewer": reviewer})


def _copy(run: Path, tmp_path: Path) -> Path:
    import gc
    import shutil

    # a store connection an earlier test left to the garbage collector, closed during the
    # copy, removed run.sqlite-wal/-shm between copytree listing and copying them
    # (shutil.Error, once): closed first
    gc.collect()
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_page_lists_filters_and_shows_one_figure(kit: tuple[Path, Path]) -> None:
    run, scores = kit
    c = _client(run, scores)
    page = c.get("/")
    assert page.status_code == 200 and "histofetch review" in page.text
    assert "Sentinel nodes &lt;b&gt;in&lt;/b&gt; breast cancer" in page.text  # escaped title
    assert "https://" not in page.text.replace("https://pmc", "")  # no CDN, no outside asset
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    ids = [x["id"] for x in c.get("/api/items?status=all").json()["items"]]
    assert ids == ["pmid:1/fig1", "pmid:1/fig2", "pmid:2/fig1", "pmid:2/fig2"]
    assert [x["id"] for x in c.get("/api/items?record=pmid:2").json()["items"]] == ids[2:]
    weak = c.get("/api/items?weak=no_metastasis").json()["items"]
    assert [x["id"] for x in weak] == ["pmid:1/fig2"]
    model = c.get("/api/items?disagree=model").json()["items"]
    assert [x["id"] for x in model] == ["pmid:1/fig2"]  # weak negative, model 0.8
    it = c.get("/api/item/pmid:2/fig1").json()
    assert it["weak_label"] == "metastasis" and it["site"] == "lymph_node"
    assert it["article"]["link"] == "https://doi.org/10.1/x"
    assert it["score"] == {"max": 0.7, "topk_mean": pytest.approx(0.65)} and it["heatmap"]
    hostile = c.get("/api/item/pmid:2/fig2").json()["caption_html"]
    assert "<img" not in hostile and "<script" not in hostile and "&lt;script&gt;" in hostile
    assert c.get("/image/pmid:1/fig1").headers["content-type"] == "image/png"
    assert c.get("/heatmap/pmid:1/fig1").status_code == 200
    assert c.get("/image/nope").status_code == 404
    assert c.get("/image/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert c.get("/static/review.js").status_code == 200


def test_each_filter_of_the_list_keeps_what_matches_keeps(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """The list's filters (one pass by review status, then the others) keep exactly the
    figures :func:`matches` keeps, in reading order, and the bar counts each label; the
    page's article filter names the articles with a kept figure."""
    run, scores = kit
    run = _copy(run, tmp_path)
    with Manifest.load(run) as m:  # answers of each kind, one the weak label contradicts
        for image_id, label in (("pmid:1/fig1", "metastasis"), ("pmid:2/fig1", "not_usable")):
            save_answer(m, image_id, label, "ann")
        m.images["pmid:2/fig2"].kept = False  # a rejected figure: in no list, no count
        m.commit()
    c = _client(run, scores)
    with Manifest.load(run) as m:
        kept, read = ordered(m), Scores.load(scores)
        values = {
            "status": ["all", "unreviewed", "reviewed", ""],
            "disagree": ["model", "review", ""],
            "record": ["pmid:1", "pmid:2", ""],
            "weak": ["metastasis", "no_metastasis", ""],
            "label": ["metastasis", "not_usable", "unreviewed", ""],
        }
        for key, options in values.items():
            for value in options:
                for status in ("all", "unreviewed", "reviewed"):
                    query = {"status": status, key: value}
                    want = [i.id for i in kept if matches(i, read, query)]
                    assert [i.id for i in select(kept, read, query)] == want, query
                    got = c.get("/api/items", params=query).json()
                    assert [x["id"] for x in got["items"]] == want, query
    assert c.get("/api/items").json()["progress"] == {
        "total": 3, "reviewed": 2, "metastasis": 1, "no_metastasis": 0, "not_usable": 1
    }  # fmt: skip
    assert 'value="pmid:1"' in c.get("/").text and 'value="pmid:2"' in c.get("/").text


def test_the_review_status_rule_is_one_function(kit: tuple[Path, Path]) -> None:
    """``select`` and ``matches`` each wrote the review-status rule (review.js a third
    time: test_review_browser.py checks it against ``matches`` on answer_filter_cases);
    both use ``by_status`` now, which keeps, in order, the figures the status names."""
    from review_kit import answer_filter_cases

    from histocore.manifest import Image
    from histofetch.review.data import by_status

    rows = [
        Image(id=str(n), record_id="r", path="p", sha256="0", width=1, height=1, label=label)
        for n, label in enumerate([None, "metastasis", None, "not_usable"])
    ]
    ids = {s: [i.id for i in by_status(rows, s)] for s in ("unreviewed", "reviewed", "all", "")}
    every = ["0", "1", "2", "3"]
    assert ids == {"unreviewed": ["0", "2"], "reviewed": ["1", "3"], "all": every, "": every}
    assert by_status(rows, "all") is not rows  # a new list, as select gave
    for case in answer_filter_cases():  # matches: the status rule, then the other filters
        img = Image(id="x", record_id="r", path="p", sha256="0", width=1, height=1,
                    label=case["label"], weak_label=case["weak_label"])  # fmt: skip
        query = {"status": case["status"], "label": case["label_filter"]}
        if not by_status([img], case["status"]):
            assert not matches(img, None, query), case
        assert [i.id for i in select([img], None, query)] == ["x"] * matches(img, None, query)


def test_the_bars_counts_follow_every_answer_here_or_elsewhere(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """The counts are counted once a run read, and again after each answer saved here
    (and its undo), and when another process's answer makes the page read the run again."""
    run = _copy(kit[0], tmp_path)
    c = _client(run)

    def counts() -> tuple[int, int, int]:
        bar = c.get("/api/items").json()["progress"]
        assert c.get("/").text.count("figure") and bar["total"] == 4
        return bar["reviewed"], bar["metastasis"], bar["not_usable"]

    assert counts() == (0, 0, 0)
    assert _post(c, "pmid:1/fig1", "metastasis").json()["progress"]["metastasis"] == 1
    assert counts() == (1, 1, 0)
    assert _post(c, "pmid:1/fig1", None).json()["progress"]["reviewed"] == 0  # undo
    assert counts() == (0, 0, 0)
    with Manifest.load(run) as other:  # another process
        other.update_image("pmid:2/fig1", label="not_usable", label_by="x", label_at="t")
    assert counts() == (1, 0, 1)


def test_an_answer_committed_elsewhere_while_the_run_is_read_is_read_too(
    kit: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's answer committed after the page's read of the run took its
    snapshot was never shown (the figure stayed unanswered until some other write): the
    run's files were stamped after the read, with that commit in them. Our own answers
    still read nothing again."""
    import histofetch.review.app as review_app

    run = _copy(kit[0], tmp_path)
    real_read, reads = review_app.load_folder, []

    def read_then_another_answers(run_dir: Path) -> Manifest:
        # not a mock: the real read, then a real commit from another connection, in the
        # window between the read's snapshot and the page's next look at the run
        manifest = real_read(run_dir)
        reads.append(manifest)
        if len(reads) == 1:
            with Manifest.load(run) as other:
                save_answer(other, "pmid:2/fig1", "metastasis", "other")
        return manifest

    monkeypatch.setattr(review_app, "load_folder", read_then_another_answers)
    c = _client(run)
    assert c.get("/api/item/pmid:2/fig1").json()["label"] is None  # the first read's
    assert c.get("/api/item/pmid:2/fig1").json()["label"] == "metastasis"
    assert len(reads) == 2
    assert _post(c, "pmid:1/fig1", "not_usable").status_code == 200
    assert c.get("/api/items").json()["progress"]["reviewed"] == 2
    assert len(reads) == 2  # our own answer: the run in memory is current


def test_a_run_holding_only_its_jsonl_is_read_once_after_the_first_answer(
    kit: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder holding only ``manifest.jsonl`` (copied, or from an older version): the
    page's first answer makes ``run.sqlite`` from the rows it read, and the next request
    read the whole run again (the store's appearing counted as another process's write).
    The store it made is its own: no read; another process's answer still makes one."""
    import histofetch.review.app as review_app

    run = _copy(kit[0], tmp_path)
    (run / "run.sqlite").unlink()
    real_read, reads = review_app.load_folder, []

    def counted(run_dir: Path) -> Manifest:
        reads.append(run_dir)
        return real_read(run_dir)

    monkeypatch.setattr(review_app, "load_folder", counted)
    c = _client(run)
    assert c.get("/api/items").json()["total"] == 4
    assert _post(c, "pmid:1/fig1", "metastasis").status_code == 200
    assert (run / "run.sqlite").is_file()
    assert c.get("/api/items?status=reviewed").json()["total"] == 1
    assert len(reads) == 1
    with Manifest.load(run) as other:
        save_answer(other, "pmid:2/fig1", "not_usable", "other")
    assert c.get("/api/items?status=reviewed").json()["total"] == 2
    assert len(reads) == 2


def test_answers_are_saved_at_once_with_reviewer_and_time(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    run = _copy(kit[0], tmp_path)
    c = _client(run)
    r = _post(c, "pmid:1/fig1", "metastasis")
    assert r.status_code == 200 and r.json()["progress"]["reviewed"] == 1
    img = Manifest.load(run).images["pmid:1/fig1"]
    assert img.label_at is not None
    assert (img.label, img.label_by) == ("metastasis", "ann") and img.label_at.endswith("+00:00")
    r = _post(c, "pmid:1/fig1", None)  # undo
    img = Manifest.load(run).images["pmid:1/fig1"]
    assert img.label is None and img.label_by is None
    log = [json.loads(x) for x in (run / LOG_NAME).read_text().splitlines()]
    assert [(e["label"], e["previous"]) for e in log] == [
        ("metastasis", None),
        (None, "metastasis"),
    ]
    # bad answers change nothing
    before = (run / "manifest.jsonl").read_bytes()
    assert _post(c, "pmid:1/fig1", "cancer").status_code == 400
    assert _post(c, "nosuch", "metastasis").status_code == 400
    assert c.post("/api/label", content=b"{bad").status_code == 415
    plain = c.post("/api/label", content=b"[1]", headers={"content-type": "application/json"})
    assert plain.status_code == 400
    for reviewer in ({"a": 1}, ["ann"], 7):  # stored as "{'a': 1}" before: never coerced
        odd = {"id": "pmid:1/fig1", "label": "metastasis", "reviewer": reviewer}
        assert c.post("/api/label", json=odd).status_code == 400
    assert (run / "manifest.jsonl").read_bytes() == before


def test_hostile_answer_bodies_change_nothing(kit: tuple[Path, Path], tmp_path: Path) -> None:
    """Arrays nested 30,000 deep were a 500 (RecursionError traceback in the server's
    log); a body of any size was read whole into memory and a 1 MB one saved."""
    from histofetch.review.app import MAX_BODY

    run = _copy(kit[0], tmp_path)
    c = _client(run)
    before = (run / "manifest.jsonl").read_bytes(), (run / "run.sqlite").read_bytes()
    json_type = {"content-type": "application/json"}
    deep = c.post("/api/label", content=b"[" * 30_000 + b"]" * 30_000, headers=json_type)
    assert (deep.status_code, deep.json()) == (400, {"error": "request body is not JSON"})
    big = {"id": "pmid:1/fig1", "label": "metastasis", "reviewer": "a" * MAX_BODY}
    assert c.post("/api/label", json=big).status_code == 413

    def chunks():  # no content-length: counted as it comes, never read whole
        yield b'{"id": "pmid:1/fig1", "label": "metastasis", "reviewer": "'
        for _ in range(1000):
            yield b"a" * 1024
        yield b'"}'

    assert c.post("/api/label", content=chunks(), headers=json_type).status_code == 413
    assert ((run / "manifest.jsonl").read_bytes(), (run / "run.sqlite").read_bytes()) == before
    assert not (run / LOG_NAME).exists()
    assert _post(c, "pmid:1/fig1", "metastasis").status_code == 200  # still serving


@pytest.mark.parametrize("link", ["symbolic", "hard", "folder"])
def test_a_review_log_that_links_out_of_the_run_is_never_written(
    kit: tuple[Path, Path], tmp_path: Path, link: str
) -> None:
    """A run folder from elsewhere holding review_log.jsonl as a link to a file of the
    reviewer's: each answer was appended to that file (200, the answer saved). A hard link
    (another run's log: a merge before c7672bc linked a shard's in) took the answers as
    well (review 2); a folder of that name read 'not writable'."""
    run = _copy(kit[0], tmp_path)
    outside = tmp_path / "bashrc"
    outside.write_text("precious\n")
    if link == "symbolic":
        (run / LOG_NAME).symlink_to(outside)
    elif link == "hard":
        os.link(outside, run / LOG_NAME)
    else:
        (run / LOG_NAME).mkdir()
    r = _post(_client(run), "pmid:1/fig1", "metastasis")
    assert r.status_code == 400
    said = "has 1 other name(s)" if link == "hard" else "not a regular file"
    assert r.json()["error"].startswith(f"{run / LOG_NAME}: {said}"), r.json()
    assert "answer not saved" in r.json()["error"]
    assert outside.read_text() == "precious\n"
    assert Manifest.load(run).images["pmid:1/fig1"].label is None  # not stored either


def test_two_tabs_never_lose_an_answer(kit: tuple[Path, Path], tmp_path: Path) -> None:
    """Many answers at once from two clients (two tabs) and a second server process's API."""
    run = _copy(kit[0], tmp_path)
    tab1, tab2 = _client(run), _client(run)
    ids = ["pmid:1/fig1", "pmid:1/fig2", "pmid:2/fig1", "pmid:2/fig2"]
    jobs = [(tab1 if n % 2 else tab2, ids[n % 4], "metastasis") for n in range(24)]
    jobs += [(tab1, ids[1], "no_metastasis")]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda j: _post(*j).status_code, jobs[:-1]))
    assert codes == [200] * 24
    _post(*jobs[-1])
    save_answer(Manifest.load(run), ids[3], "not_usable", "bob")  # as another process would
    labels = {k: i.label for k, i in Manifest.load(run).images.items()}
    want = ["metastasis", "no_metastasis", "metastasis", "not_usable"]
    assert labels == dict(zip(ids, want, strict=True))
    assert len((run / LOG_NAME).read_text().splitlines()) == 26


def test_a_run_whose_filter_kept_nothing_is_not_told_to_run_filter(tmp_path: Path) -> None:
    """`review` of a filtered run that kept no figure said 'no kept figures to review (run
    histofetch filter first)': filter had run; the user needs to know it kept nothing."""
    from histofetch.filter import run_filter

    run = make_run(tmp_path)
    run_filter(run, sheet=False, min_side=100_000)  # every figure too small to judge now
    r = CliRunner().invoke(cli, ["review", "--run", str(run), "--no-browser"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "filter first" not in r.output
    assert "filter kept none of the run's 4 images" in r.output
    assert "histofetch status" in r.output


def _review_error(run: Path) -> str:
    r = CliRunner().invoke(cli, ["review", "--run", str(run), "--no-browser"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("error: ") and "no kept figures to review" in r.output
    return r.output


def test_the_sheets_are_named_only_when_they_show_the_rejected_figures(tmp_path: Path) -> None:
    """'the sheets in RUN/sheets show them' was said after filter --no-sheet (no such folder)
    and when the sheets show nothing (an unreadable figure is decided but on no sheet); one
    figure was '1 images' there and '1 scored images' in filter's own line."""
    run = make_run(tmp_path, figures=1, filtered=False)
    args = ["filter", "--run", str(run), "--min-side", "100000"]  # too small to judge now
    r = CliRunner().invoke(cli, [*args, "--no-sheet"])
    assert r.exit_code == 0 and "kept 0 of 1 scored image\n" in r.output, r.output
    out = _review_error(run)
    assert "filter kept none of the run's 1 image;" in out and "histofetch status" in out
    assert "the sheets in" not in out and not (run / "sheets").exists()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and f"kept 0 of 1 scored image; sheets in {run / 'sheets'}" in (
        r.output
    ), r.output
    assert f"the sheets in {run / 'sheets'} show them" in _review_error(run)
    (run / "images" / "0.png").unlink()  # now unreadable: rejected, on no sheet
    r = CliRunner().invoke(cli, [*args, "--rescore"])
    assert r.exit_code == 0, r.output
    (figure,) = Manifest.load(run).images.values()
    assert figure.kept is False and figure.status == "failed"
    out = _review_error(run)
    # not 'kept none of the run's 1 image': it could not read it (finding 1)
    assert "filter could not read the 1 image it took;" in out and "the sheets in" not in out
    assert f"{hint_command('filter', run, '--retry-failed')} reads it again" in out


def test_the_hint_counts_the_figures_filter_could_not_read_apart(tmp_path: Path) -> None:
    """'filter kept none of the run's 4 images' was said of a run whose filter could read
    only 2 of them (the 2 others failed, unreadable, decided unscored): they were counted
    as decided. They are counted apart now, with the command that reads them again."""
    run = make_run(tmp_path, filtered=False)
    for path in sorted((run / "images").glob("*.png"))[:2]:
        path.write_bytes(b"not a png")
    args = ["filter", "--run", str(run), "--min-side", "100000"]  # too small to judge now
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "kept 0 of 2 scored images (2 unreadable)" in r.output, r.output
    out = _review_error(run)
    retry = hint_command("filter", run, "--retry-failed")
    assert (
        f"filter kept none of the 2 images it decided (2 more it could not read: {retry} "
        "reads them again);"
    ) in out, out


def _unreadable_beside_a_downloaded_article(root: Path) -> Path:
    """A run whose filter could read neither of pmid:1's figures, pmid:2 only downloaded
    (its figures undecided, filter passes over it)."""
    from histofetch.filter import run_filter

    run = make_run(root, filtered=False)
    m = Manifest.load(run)
    for img in m.images.values():
        if img.record_id == "pmid:1":
            (run / img.path).write_bytes(b"bad")
    m.records["pmid:2"].stage = "downloaded"
    m.save()
    m.close()
    run_filter(run, sheet=False)
    return run


def test_unreadable_figures_beside_undecided_articles_name_what_decides_them(
    tmp_path: Path,
) -> None:
    """Filter could read none of the figures it took, and another article waits (only
    downloaded). The hint put 'the other article has images not decided yet' before
    '--retry-failed reads them again' (them: the articles, as it read) and named no command
    that decides them. Now the others come after it, with the commands that decide them."""
    run = _unreadable_beside_a_downloaded_article(tmp_path)
    retry = hint_command("filter", run, "--retry-failed")
    assert (
        f"filter could not read the 2 images it took; histofetch status --run {run} says why, "
        f"{retry} reads them again; 1 other article has images not decided yet, "
        f"histofetch extract --run {run}, then histofetch filter --run {run} decide the others\n"
    ) in _review_error(run)


def test_unreadable_figures_beside_a_failed_article_tell_the_others_once(
    tmp_path: Path,
) -> None:
    """With an article failed at filter beside the unreadable figures and the undecided
    article, the hint said '1 other article has images not decided yet' twice (with the
    unreadable figures and with the failed articles). Now once, after the failures."""
    from histocore.manifest import Image, Record

    run = _unreadable_beside_a_downloaded_article(tmp_path)
    m = Manifest.load(run)  # a third article, failed at filter, its figure undecided
    m.add_record(Record(id="pmid:3", pmid="3", title="Third", stage="extracted"))
    m.add_image(
        Image(id="pmid:3/fig1", record_id="pmid:3", path="images/0.png", sha256="0",
              width=300, height=300, caption="Figure 1. A node.")
    )  # fmt: skip
    m.records["pmid:3"].fail("filtered", "boom", transient=False)
    m.save()
    m.close()
    out = _review_error(run)
    assert out.count("not decided yet") == 1, out
    retry = hint_command("filter", run, "--retry-failed")
    assert (
        "filter could not read the 2 images it took and failed 1 of the run's 3 articles; "
        f"1 other article has images not decided yet; histofetch status --run {run} says why, "
        f"{retry} tries again; "
        f"histofetch extract --run {run}, then histofetch filter --run {run} decide the others\n"
    ) in out, out


def test_an_earlier_filters_sheets_are_not_named_after_filter_no_sheet(tmp_path: Path) -> None:
    """filter --no-sheet leaves the sheets of an earlier filter, which show its decisions:
    review's hint named them as if they showed this filter's. Now the run's header says
    the last filter wrote none, and the hint names the sheets again once one does."""
    run = make_run(tmp_path, figures=1, filtered=False)
    args = ["filter", "--run", str(run), "--min-side", "100000"]  # too small to judge now
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"the sheets in {run / 'sheets'} show them" in _review_error(run)
    r = CliRunner().invoke(cli, [*args, "--no-sheet", "--min-tissue", "0.5"])
    assert r.exit_code == 0, r.output
    assert (run / "sheets" / "rejected-001.jpg").is_file()  # left as it was
    out = _review_error(run)
    assert "filter kept none of the run's 1 image;" in out and "the sheets in" not in out
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"the sheets in {run / 'sheets'} show them" in _review_error(run)


def test_a_filter_stopped_while_writing_its_sheets_leaves_them_unnamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """filter recorded in the header that it wrote the sheets (filter_sheets) before
    writing them: one stopped while writing them (Ctrl-C, a full disk) left an earlier
    filter's sheets named by review as this one's. Now the header says so only once they
    are written."""
    run = make_run(tmp_path, figures=1, filtered=False)
    args = ["filter", "--run", str(run), "--min-side", "100000"]  # too small to judge now
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert CliRunner().invoke(cli, [*args, "--no-sheet"]).exit_code == 0
    real = os.replace

    def full(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "rejected-001.jpg":  # the next sheet cannot be written (none kept)
            raise OSError(28, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    r = CliRunner().invoke(cli, [*args, "--min-tissue", "0.5"])
    assert r.exit_code == 1 and "rejected-001.jpg" in r.output, r.output
    assert Manifest.load(run).header_extra["filter_sheets"] is False
    out = _review_error(run)
    assert "filter kept none of the run's 1 image;" in out and "the sheets in" not in out


def test_a_filter_stopped_while_scoring_leaves_the_earlier_sheets_unnamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """filter set filter_sheets false only after scoring: one stopped while scoring (Ctrl-C)
    kept the earlier filter's true, and review named that filter's sheets for decisions
    they do not show (review 13). Now it is false from the filter's first commit."""
    import PIL.Image

    run = make_run(tmp_path, figures=1, filtered=False)
    args = ["filter", "--run", str(run), "--min-side", "100000"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert Manifest.load(run).header_extra["filter_sheets"] is True

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C while a figure is read

    monkeypatch.setattr(PIL.Image, "open", interrupted)
    r = CliRunner().invoke(cli, [*args, "--rescore"])
    assert r.exit_code == 130, r.output
    monkeypatch.undo()
    assert Manifest.load(run).header_extra["filter_sheets"] is False
    assert "the sheets in" not in _review_error(run)


def test_filter_exports_its_decisions_before_writing_the_sheets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """filter exported manifest.jsonl only after writing the sheets: one killed while
    writing them (SIGKILL: no handler runs) left manifest.jsonl as it was before the
    filter until the next save. Now the decisions are exported before the first sheet
    (filter_sheets false), and once more after the sheets, to say true; a filter stopped
    while writing the sheets leaves the first export. (The rows are compared once: the
    header's key is committed alone.)"""
    run = make_run(tmp_path, figures=1, filtered=False)
    replaced: list[str] = []
    at_first_sheet: list[str] = []
    real = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "rejected-001.jpg":  # a kill from here on leaves this (none kept)
            at_first_sheet.append((run / "manifest.jsonl").read_text())
        replaced.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    args = ["filter", "--run", str(run), "--min-side", "100000"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert replaced.count("manifest.jsonl") == 2
    assert replaced.index("manifest.jsonl") < replaced.index("rejected-001.jpg")
    assert replaced[-1] == "manifest.jsonl"
    head, row = (json.loads(line) for line in at_first_sheet[0].splitlines()[:2])
    assert head["filter_sheets"] is False and "filter_thresholds" in head
    assert row["kind"] == "record" and row["stage"] == "filtered"

    def header() -> dict[str, Any]:
        with (run / "manifest.jsonl").open() as fh:
            return json.loads(fh.readline())

    assert header()["filter_sheets"] is True

    def full(src: str | Path, dst: str | Path) -> None:
        replaced.append(Path(dst).name)
        if Path(dst).name == "rejected-001.jpg":  # the next sheet cannot be written (none kept)
            raise OSError(28, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    replaced.clear()
    r = CliRunner().invoke(cli, [*args, "--min-tissue", "0.5"])
    assert r.exit_code == 1 and "rejected-001.jpg" in r.output, r.output
    assert header()["filter_sheets"] is False and replaced.count("manifest.jsonl") == 1
    assert header()["filter_thresholds"]["min_tissue"] == 0.5


def test_a_run_whose_filter_failed_every_article_is_told_so(tmp_path: Path) -> None:
    """A filter that failed every article leaves them extracted with undecided images:
    'run histofetch filter first' was said, and running it again fails the same way."""
    run = make_run(tmp_path, filtered=False)
    m = Manifest.load(run)
    for rec in m.records.values():
        rec.fail("filtered", "disk full", transient=False)
    m.save()
    m.close()
    out = _review_error(run)
    assert "filter failed the run's 2 articles" in out and "filter first" not in out
    assert f"histofetch status --run {run}" in out and "--retry-failed" in out
    assert "other article" not in out and "decides the others" not in out
    m = Manifest.load(run)
    m.records["pmid:2"].status = "ok"  # one failed article, one filter has not reached
    m.save()
    m.close()
    out = _review_error(run)  # 'failed the run's 1 article' alone hid the other one
    assert (
        "filter failed 1 of the run's 2 articles; 1 other article has images not decided yet; "
        f"histofetch status --run {run} says why, histofetch filter --run {run} "
        "--retry-failed tries again and decides the others"
    ) in out


def test_an_article_failed_at_another_stage_is_not_said_to_be_decided_by_filter(
    tmp_path: Path,
) -> None:
    """Beside an article filter failed, one failed at extract with figures kept from its
    package: the hint said 'filter failed the run's 1 article' (as if the run had one) and
    that filter --retry-failed 'decides the others', which it never takes. Now it counts
    the run's articles and says the other failed at extract, filter not taking it."""
    run = make_run(tmp_path, filtered=False)
    m = Manifest.load(run)
    m.records["pmid:1"].fail("filtered", "boom", transient=False)
    m.records["pmid:2"].fail("extracted", "bad pdf", transient=False)
    m.save()
    m.close()
    assert (
        "filter failed 1 of the run's 2 articles; 1 other article failed at extract, images "
        f"not decided (filter does not take it); histofetch status --run {run} says why, "
        f"histofetch filter --run {run} --retry-failed tries again\n"
    ) in _review_error(run)


def test_a_run_whose_filter_kept_none_and_failed_an_article_is_told_both(
    tmp_path: Path,
) -> None:
    """Filter decided one article's figures, keeping none, and failed the other: the hint
    said only 'filter kept none of the run's 2 images' (of its 4), hiding the failed
    article whose images wait undecided. Now it says both and how to try again."""
    from histofetch.filter import run_filter

    run = make_run(tmp_path, filtered=False)
    run_filter(run, sheet=False, min_side=100_000)  # every figure too small to judge now
    m = Manifest.load(run)
    for img in m.images.values():
        if img.record_id == "pmid:2":
            img.kept = None  # as a first filter that fails the record leaves them
    m.records["pmid:2"].fail("filtered", "boom", transient=False)
    m.save()
    m.close()
    assert (
        "filter kept none of the 2 images it decided and failed 1 of the run's 2 articles; "
        f"histofetch status --run {run} says why, "
        f"histofetch filter --run {run} --retry-failed tries again\n"
    ) in _review_error(run)


def test_a_run_whose_filter_kept_none_with_articles_undecided_does_not_count_them_its_own(
    tmp_path: Path,
) -> None:
    """Filter decided one article's figures, keeping none; the other's wait undecided (none
    failed). The hint said 'filter kept none of the run's 2 images' of its 4, as if filter
    had seen them all; now it counts the images it decided and names the article left."""
    from histofetch.filter import run_filter

    run = make_run(tmp_path, filtered=False)
    run_filter(run, sheet=False, min_side=100_000)  # every figure too small to judge now
    m = Manifest.load(run)
    for img in m.images.values():
        if img.record_id == "pmid:2":
            img.kept = None  # as if filter had not reached that article yet
    m.records["pmid:2"].stage = "extracted"
    m.save()
    m.close()
    out = _review_error(run)
    assert "the run's 2 images" not in out
    assert (
        "filter kept none of the 2 images it decided; 1 other article has images not decided "
        f"yet; histofetch status --run {run} says why, "
        f"histofetch filter --run {run} decides the others\n"
    ) in out


def test_a_run_with_articles_only_downloaded_names_extract_for_them(tmp_path: Path) -> None:
    """Filter decided one article's figures, keeping none; the other was only downloaded
    (its figures from the download, undecided). The hint said 'histofetch filter decides
    the others', but filter passes over an article not extracted; now it names extract
    first, also beside a failed article ('--retry-failed tries again and decides the
    others' was said)."""
    from histofetch.filter import run_filter

    run = make_run(tmp_path, filtered=False)
    run_filter(run, sheet=False, min_side=100_000)  # every figure too small to judge now
    m = Manifest.load(run)
    for img in m.images.values():
        if img.record_id == "pmid:2":
            img.kept = None
    m.records["pmid:2"].stage = "downloaded"
    m.save()
    m.close()
    out = _review_error(run)
    assert "decides the others" not in out, out
    assert (
        "filter kept none of the 2 images it decided; 1 other article has images not decided "
        f"yet; histofetch status --run {run} says why, "
        f"histofetch extract --run {run}, then histofetch filter --run {run} decide the others\n"
    ) in out
    m = Manifest.load(run)
    for img in m.images.values():
        img.kept = None
    m.records["pmid:1"].fail("filtered", "boom", transient=False)
    m.save()
    m.close()
    assert (
        f"histofetch filter --run {run} --retry-failed tries again; "
        f"histofetch extract --run {run}, then histofetch filter --run {run} decide the others\n"
    ) in _review_error(run)
    # one only searched: each command whole, to copy ('download, extract and then filter')
    m = Manifest.load(run)
    m.records["pmid:2"].stage = "searched"
    m.save()
    m.close()
    assert (
        f"histofetch download --run {run}, then histofetch extract --run {run}, "
        f"then histofetch filter --run {run} decide the others\n"
    ) in _review_error(run)


def test_images_still_to_decide_ask_for_filter_not_for_status(tmp_path: Path) -> None:
    """An article filtered without images beside extracted ones whose images filter has
    not decided: 'its filtered articles have no images' was said; filter has work to do."""
    run = make_run(tmp_path, filtered=False)
    assert "(run histofetch filter first)" in _review_error(run)  # nothing filtered yet
    m = Manifest.load(run)
    m.drop_images_of("pmid:1")
    m.records["pmid:1"].stage = "filtered"
    m.save()
    m.close()
    out = _review_error(run)
    assert "(run histofetch filter first)" in out and "no images" not in out
    m = Manifest.load(run)
    m.drop_images_of("pmid:2")
    m.records["pmid:2"].stage = "filtered"
    m.save()
    m.close()
    out = _review_error(run)  # filtered, nothing to decide
    assert f": its filtered articles have no images; histofetch status --run {run}" in out
    assert "filter first" not in out


def test_articles_failed_at_no_recorded_stage_are_not_said_to_fail_at_a_question_mark(
    tmp_path: Path,
) -> None:
    """Articles failed with no stage recorded (an edited or older manifest): the hint said
    'its 2 articles failed at ?' and '1 other article failed at ?'. It now says the stage
    is not recorded (finding 2)."""
    run = make_run(tmp_path, filtered=False)
    with Manifest.load(run) as m:
        for rec in m.records.values():
            rec.status, rec.failed_stage, rec.reason = "failed", None, "x"
        m.save()
    out = _review_error(run)
    assert "?" not in out, out
    assert f": its 2 articles failed (stage not recorded); histofetch status --run {run}" in out
    with Manifest.load(run) as m:  # the other one filter failed: this one is 'other'
        m.records["pmid:1"].failed_stage = "filtered"
        m.save()
    out = _review_error(run)
    assert "?" not in out, out
    assert "; 1 other article failed (stage not recorded), images not decided" in out, out


def test_status_json_counts_articles_failed_at_no_recorded_stage_in_words(
    tmp_path: Path,
) -> None:
    """``status --json``'s ``failed_by_stage`` counted articles failed with no stage recorded
    under ``?``; it says ``not recorded`` now, as the hints do (N3)."""
    from histofetch.status import run_status

    run = make_run(tmp_path, filtered=False)
    with Manifest.load(run) as m:
        for rec in m.records.values():
            rec.status, rec.failed_stage, rec.reason = "failed", None, "x"
        m.records["pmid:1"].failed_stage = "filtered"
        m.save()
    assert run_status(run)["failed_by_stage"] == {"filtered": 1, "not recorded": 1}


def test_a_run_not_extracted_yet_is_told_the_steps_it_needs(tmp_path: Path) -> None:
    """A run only searched (or downloaded, its figures waiting for extract) was told 'run
    histofetch filter first', which passes over articles not extracted (`filtered: 0 done,
    … N not extracted yet`) and leaves the page as empty; so was a run with no article, and
    one whose every article failed at download. Each is told what it needs."""
    run = make_run(tmp_path, filtered=False)
    m = Manifest.load(run)
    m.records["pmid:1"].stage = "downloaded"  # its JATS figures wait for extract
    m.records["pmid:2"].stage = "searched"
    m.drop_images_of("pmid:2")
    m.save()
    m.close()
    assert "(run histofetch extract and filter first)" in _review_error(run)
    m = Manifest.load(run)
    m.drop_images_of("pmid:1")  # nothing downloaded yet
    m.records["pmid:1"].stage = "searched"
    m.save()
    m.close()
    assert "(run histofetch download, extract and filter first)" in _review_error(run)
    m = Manifest.load(run)
    for rec in m.records.values():
        rec.fail("downloaded", "not in bucket: …", transient=False)
    m.save()
    m.close()
    out = _review_error(run)
    assert f": its 2 articles failed at download; histofetch status --run {run} says why" in out
    assert "filter first" not in out
    empty = tmp_path / "empty"
    Manifest(run_dir=empty, query="x").save()
    out = _review_error(empty)
    assert ": the run has no articles yet" in out and "filter first" not in out


def test_bad_run_folder_gets_an_error_page_and_the_cli_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.jsonl").write_text('{"schema": "other"}\n')
    page = _client(bad).get("/")
    assert page.status_code == 500 and "Cannot open this run" in page.text
    assert "not a histofetch.manifest header" in page.text
    api = _client(bad).get("/api/items")
    assert api.status_code == 500 and "header" in api.json()["error"]
    # every route that reads the run answers alike (one exception handler)
    one = _client(bad).get("/api/item/x")
    assert one.status_code == 500 and "header" in one.json()["error"]
    figure = _client(bad).get("/image/x")
    assert figure.status_code == 500 and "Cannot open this run" in figure.text
    assert figure.headers["x-content-type-options"] == page.headers["x-content-type-options"]
    for run in (bad, tmp_path / "missing"):
        r = CliRunner().invoke(cli, ["review", "--run", str(run), "--no-browser"])
        assert r.exit_code == 1 and r.output.startswith("error: ") and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    with pytest.raises(ReviewError, match=r"image_scores\.csv"):
        Scores.load(tmp_path)


def test_a_runs_manifest_or_store_stands_for_its_folder_as_for_manifest_load(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """``Manifest.load``, ``export_run``, ``run_status`` take ``RUN/manifest.jsonl`` or
    ``RUN/run.sqlite`` for ``RUN``; ``load_run`` (the review page's library call) refused
    them as ``not a folder``. They stand for the folder now, the page watches and logs
    into the folder, and another file is still refused."""
    from histofetch.review.data import load_run
    from histofetch.review.server import build_server

    run = _copy(kit[0], tmp_path)
    for name in ("manifest.jsonl", "run.sqlite"):
        with load_run(run / name) as m:
            assert m.run_dir == run and m.kept_images()
        c = _client(run / name)
        assert c.get("/").status_code == 200
        assert _post(
            c, "pmid:1/fig1", "metastasis" if name == "manifest.jsonl" else None
        ).is_success
        _server, sock = build_server(run / name, port=0, reviewer="tester")
        sock.close()
    log = [json.loads(x)["label"] for x in (run / LOG_NAME).read_text().splitlines()]
    assert log == ["metastasis", None] and not (run / "manifest.jsonl" / LOG_NAME).exists()
    (run / "notes.txt").write_text("x")
    with pytest.raises(ReviewError, match=r"notes\.txt: is a file, not a run folder"):
        load_run(run / "notes.txt")
    assert _client(run / "notes.txt").get("/").status_code == 500
    # the CLI's --run takes a folder, as every histofetch command's does
    r = CliRunner().invoke(cli, ["review", "--run", str(run / "manifest.jsonl"), "--no-browser"])
    assert (
        r.exit_code == 1
        and r.output == f"error: {run / 'manifest.jsonl'}: is a file, not a run folder\n"
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("max,image_id\n0.5\n", "line 2 has no image_id"),  # was an AttributeError
        ("image_id,max\npmid:1/fig1,0.5\npmid:1/fig2,nan\n", "line 3: a score that is not"),
        ("image_id,max,topk_mean\npmid:1/fig1,0.5,inf\n", "line 2: a score that is not"),
        ("image_id,max,topk_mean\npmid:1/fig1,0.5,0.4\npmid:1/fig2\n", "line 3 has no max"),
        ("image_id,max,topk_mean\npmid:1/fig1,,\n", "line 2 has no max or topk_mean score"),
        ("image_id,score\npmid:1/fig1,0.5\n", "line 2 has no max or topk_mean score"),
        # the line a row starts on, past a quoted id over two lines and a blank line (it
        # named the row's last line); a score that is no number named no line
        ('image_id,max\n"pmid:1/fig\n1",0.5\n\npmid:1/fig2,\n', "line 5 has no max"),
        ('image_id,max\npmid:1/fig1,0.5\n"pmid:1/fig\n2",nan\n', "line 3: a score that is not"),
        ("image_id,max\npmid:1/fig1,0.5\npmid:1/fig2,high\n", "line 3: a score that is not a"),
        # a score that is no probability was shown, and 7 made the model say metastasis
        # said as the file has it: "max 7.0" for a cell holding 7 read as another number
        ("image_id,max,topk_mean\npmid:1/fig1,7,0.5\n",
         "(line 2: max '7' is not a number from 0 to 1)"),
        ("image_id,max,topk_mean\npmid:1/fig1,0.5,-2\n",
         "(line 2: topk_mean '-2' is not a number from 0 to 1)"),
        ("image_id,max,topk_mean\npmid:1/fig1, 1e1 ,0.5\n", "line 2: max '1e1' is not a"),
        # a long bad value is cut after 40 characters and ends in '…': cut bare, -1e-44
        # read as '-0.0000000000000000000000000000000000000', a value in range
        ("image_id,max\npmid:1/fig1,-0." + "0" * 44 + "1\n",
         "line 2: max '-0." + "0" * 37 + "…' is not a number from 0 to 1"),
        # one figure's row twice: the last replaced the first silently
        ("image_id,max\npmid:1/fig1,0.9\npmid:1/fig2,0.1\npmid:1/fig1,0.1\n",
         "line 4: image 'pmid:1/fig1' again (first on line 2)"),
        ("image_id,max,topk_mean,n_tiles\npmid:1/fig1,nan,nan,0\npmid:1/fig1,0.9,0.9,3\n",
         "line 3: image 'pmid:1/fig1' again (first on line 2)"),
    ],
)  # fmt: skip
def test_a_bad_scores_csv_is_one_review_error(tmp_path: Path, text: str, said: str) -> None:
    """``review --scores``: a row shorter than the header (no image_id) raised
    AttributeError out of read_cell (a traceback); nan/inf scores were taken and shown; a
    row with an image_id and no score cells (or a file with no score columns) was taken as
    a figure the model had not scored."""
    (tmp_path / "image_scores.csv").write_text(text)
    with pytest.raises(ReviewError) as err:
        Scores.load(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'image_scores.csv'}: not an image_scores.csv (")
    assert said in str(err.value)


def test_a_figure_eval_found_no_tile_in_has_no_score(tmp_path: Path) -> None:
    """``eval --manifest`` writes ``nan`` scores and ``n_tiles`` 0 for a kept figure with no
    tissue tile (a small panel): the whole file was refused ("line 3: a score that is not
    finite"), so the documented eval → review --scores flow stopped on most real runs.
    Such a row is a figure without a score; nan with tiles stays refused."""
    header = "image_id,max,topk_mean,n_tiles\n"
    (tmp_path / "image_scores.csv").write_text(
        f"{header}pmid:1/fig1,0.5,0.4,3\npmid:1/fig2,nan,nan,0\npmid:1/fig3,,,0\n"
    )
    assert Scores.load(tmp_path).by_image == {"pmid:1/fig1": {"max": 0.5, "topk_mean": 0.4}}
    for row in ("pmid:1/fig2,nan,nan,2", "pmid:1/fig2,nan,0.3,0", "pmid:1/fig2,inf,inf,0"):
        (tmp_path / "image_scores.csv").write_text(f"{header}{row}\n")
        with pytest.raises(ReviewError, match="line 2: a score that is not finite"):
            Scores.load(tmp_path)


def test_review_scores_row_without_a_score_is_one_error_line(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """``histofetch review --scores``: the same refusal is one error line, exit 1."""
    (tmp_path / "image_scores.csv").write_text("image_id,max,topk_mean\npmid:1/fig1,,\n")
    assert _review_refuses_scores(kit[0], tmp_path) == [
        f"error: {tmp_path / 'image_scores.csv'}: not an image_scores.csv "
        "(line 2 has no max or topk_mean score)"
    ]


def _review_refuses_scores(run: Path, scores: Path) -> list[str]:
    """``histofetch review --run RUN --scores SCORES``'s output lines; it must exit 1."""
    args = ["review", "--run", str(run), "--scores", str(scores), "--no-browser"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    return r.output.strip().splitlines()


def test_review_scores_too_big_or_not_a_file_is_one_error_line(
    kit: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--scores``: image_scores.csv was read with no size cap (a 10 GB file read whole)
    and a FIFO there was said to be no image_scores.csv. Both are one line now, read
    through histocore.io.read_capped as the other readers are (finding 6)."""
    import histofetch.review.data

    csv_path = tmp_path / "image_scores.csv"
    csv_path.write_text("image_id,max,topk_mean\npmid:1/fig1,0.5,0.4\n")
    monkeypatch.setattr(histofetch.review.data, "MAX_SCORES_BYTES", 20, raising=False)
    with pytest.raises(ReviewError) as err:  # read whole, the page was served
        Scores.load(tmp_path)
    assert str(err.value) == f"{csv_path}: over 20 bytes, not an image_scores.csv eval writes"
    monkeypatch.undo()
    csv_path.unlink()
    os.mkfifo(csv_path)  # no writer: read, it would wait for ever
    assert _review_refuses_scores(kit[0], tmp_path) == [
        f"error: {csv_path}: not a regular file (a pipe, socket or device), not an "
        "image_scores.csv eval writes"
    ]  # it said 'no image_scores.csv'


def test_only_image_files_inside_the_run_are_served(kit: tuple[Path, Path], tmp_path: Path) -> None:
    run = _copy(kit[0], tmp_path)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for the page")
    m = Manifest.load(run)
    m.update_image("pmid:1/fig1", path=str(secret))  # a hostile manifest row
    m.update_image("pmid:1/fig2", path="manifest.jsonl")
    c = _client(run)
    assert c.get("/image/pmid:1/fig1").status_code == 404
    assert c.get("/image/pmid:1/fig2").status_code == 404
    assert c.get("/image/pmid:2/fig1").status_code == 200
    (run / "images").mkdir(exist_ok=True)
    (run / "images" / "loop.png").symlink_to("loop.png")  # a link to itself: cannot resolve
    m.update_image("pmid:1/fig1", path="images/loop.png")
    m.update_image("pmid:1/fig2", path="images/a\x00.png")
    c = _client(run, raise_server_exceptions=False)
    # each with its true reason: both were said to be "outside the run folder"
    loop, nul = c.get("/image/pmid:1/fig1"), c.get("/image/pmid:1/fig2")
    assert loop.status_code == 404 and nul.status_code == 404
    assert loop.json()["error"] == "image path 'images/loop.png' cannot be resolved (symlink loop)"
    assert nul.json()["error"] == (
        "image path 'images/a\\x00.png' names no file (it holds a NUL character)"
    )
    m.update_image("pmid:2/fig2", path="../x.png")
    outside = _client(run).get("/image/pmid:2/fig2")
    assert outside.json()["error"] == "image path '../x.png' is outside the run folder"


def test_unknown_host_is_refused(kit: tuple[Path, Path]) -> None:
    """DNS rebinding: a page on another site that resolves to 127.0.0.1 gets nothing."""
    c = TestClient(create_app(kit[0], reviewer="rev"), base_url="http://evil.example")
    assert c.get("/api/items").status_code == 400


def test_heatmap_link_pointing_out_of_the_scores_folder_is_not_served(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """A shared eval folder's ``heatmaps/<id>.png`` may be a symbolic link to any local
    file: it was served as an image (the figure route already refused such links)."""
    import shutil

    scores = tmp_path / "eval"
    shutil.copytree(kit[1], scores)
    secret = tmp_path / "secret.png"
    heat = scores / "heatmaps"
    secret.write_bytes((heat / f"{unique_stem('pmid:1/fig2')}.png").read_bytes())
    (heat / f"{unique_stem('pmid:1/fig1')}.png").unlink()
    (heat / f"{unique_stem('pmid:1/fig1')}.png").symlink_to(secret)
    c = _client(kit[0], scores)
    assert c.get("/heatmap/pmid:1/fig1").status_code == 404
    assert c.get("/api/item/pmid:1/fig1").json()["heatmap"] is False
    assert c.get("/heatmap/pmid:1/fig2").status_code == 200  # a plain file inside still is


def test_a_heatmap_link_to_itself_is_no_heatmap(kit: tuple[Path, Path], tmp_path: Path) -> None:
    """``heatmaps/<id>.png`` linking to itself: ``Path.resolve`` raised RuntimeError (a
    symlink loop, Python < 3.13), so the figure's ``/api/item`` and ``/heatmap`` answered
    500 and the page could not show it. Now the figure has no heatmap; the others do."""
    import shutil

    scores = tmp_path / "eval"
    shutil.copytree(kit[1], scores)
    loop = scores / "heatmaps" / f"{unique_stem('pmid:1/fig1')}.png"
    loop.unlink()
    loop.symlink_to(loop.name)
    c = _client(kit[0], scores, raise_server_exceptions=False)
    assert c.get("/heatmap/pmid:1/fig1").status_code == 404
    item = c.get("/api/item/pmid:1/fig1")
    assert item.status_code == 200 and item.json()["heatmap"] is False
    assert c.get("/api/items").status_code == 200
    assert c.get("/heatmap/pmid:1/fig2").status_code == 200


def test_a_looping_unique_name_falls_back_to_the_older_slug_heatmap(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """A ``heatmaps/<unique stem>.png`` that links to itself ended the search: the older
    eval's ``heatmaps/<slug>.png`` beside it was never tried (the docstring says it is)."""
    import shutil

    scores = tmp_path / "eval"
    shutil.copytree(kit[1], scores)
    loop = scores / "heatmaps" / f"{unique_stem('pmid:1/fig1')}.png"
    loop.rename(scores / "heatmaps" / "pmid_1_fig1.png")
    loop.symlink_to(loop.name)
    c = _client(kit[0], scores)
    assert c.get("/heatmap/pmid:1/fig1").status_code == 200
    assert c.get("/api/item/pmid:1/fig1").json()["heatmap"] is True


def test_heatmaps_of_older_evals_and_a_linked_heatmaps_folder_are_served(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """Eval folders written before the unique stems name heatmaps by the slug alone; a
    ``heatmaps/`` folder moved to another disk behind a link is the local user's."""
    import shutil

    scores, disk = tmp_path / "eval", tmp_path / "bigdisk"
    shutil.copytree(kit[1], scores)
    shutil.move(scores / "heatmaps", disk)
    (disk / f"{unique_stem('pmid:1/fig1')}.png").rename(disk / "pmid_1_fig1.png")
    (scores / "heatmaps").symlink_to(disk, target_is_directory=True)
    c = _client(kit[0], scores)
    for image_id in ("pmid:1/fig1", "pmid:1/fig2"):
        assert c.get(f"/heatmap/{image_id}").status_code == 200
        assert c.get(f"/api/item/{image_id}").json()["heatmap"] is True


def test_article_link_takes_only_a_pmcid_by_the_download_rule() -> None:
    """A manifest is untrusted: its ``PMC../../x`` made a PMC link to another path (review);
    now such a record links its DOI, or nothing."""
    from histocore.manifest import Record
    from histofetch.review.data import article_link

    def rec(pmcid: str, doi: str | None = None) -> Record:
        return Record(id="pmid:1", pmcid=pmcid, doi=doi)

    assert article_link(rec(pmcid="PMC12")) == "https://pmc.ncbi.nlm.nih.gov/articles/PMC12/"
    assert article_link(rec(pmcid="PMC../../x", doi="10.1/a")) == "https://doi.org/10.1/a"
    assert article_link(rec(pmcid="PMC1?x=1")) is None


def test_figure_label_of_a_panel_is_its_figures_and_is_one_capped_line(tmp_path: Path) -> None:
    from histocore.manifest import Image
    from histofetch.review.data import MAX_LABEL_CHARS, figure_label

    m = Manifest(run_dir=tmp_path)
    fig = Image(id="r/fig", record_id="r", path="a.png", sha256="0", width=9, height=9,
                caption="Nodes.", figure_label="Figure 10")  # fmt: skip
    m.images[fig.id] = fig
    panel = Image(id="r/fig_panel01", record_id="r", path="b.png", sha256="1", width=4,
                  height=4, caption="Nodes.", parent_id=fig.id, source="panel")  # fmt: skip
    assert figure_label(m, panel) == "Figure 10"  # a panel has none of its own
    fig.caption = "Figure 1. Nodes."  # another figure's number: not the caption's own
    assert figure_label(m, fig) == "Figure 10"
    fig.caption = "Figure 10: Nodes."  # the caption says it already: not twice
    assert figure_label(m, fig) is None
    fig.figure_label = "Fig\n2\x00" + "x" * 200
    assert figure_label(m, fig) == ("Fig 2" + "x" * 200)[: MAX_LABEL_CHARS - 1] + "…"


@pytest.mark.parametrize(
    ("label", "caption", "shown"),
    [
        ("Figure 1", "FIGURE 1. Lymph node", None),  # the caption says it, in capitals
        ("Figure 1", "\u202eFigure 1. Lymph node", None),  # behind a bidi override too
        ("Figure 1", "Figure 1 Lymph node", None),  # a space and a capital: the caption's own
        ("Figure 1", "Figure 1", None),
        ("1", "1 patient had nodal metastases", "1"),  # the caption's text, not its label
        ("S1", "S1 patients had nodal metastases", "S1"),  # so is a bare S1 (finding 8)
        ("S1", "S1. Nodes", None),
        ("S1", "S1 Nodes", None),
        ("Figure 1", "Figure 10. Nodes", "Figure 1"),
        ("X" * 100, "Nodes", "X" * 59 + "…"),  # cut, and marked as cut
        # the same label spelt otherwise ("Fig. 1" is "Figure 1"): said once
        ("Figure 1", "Fig. 1. Lymph node", None),
        ("Figure 1", "Fig 1: Lymph node", None),
        ("Fig. 1", "FIGURE 1. Lymph node", None),
        ("FIGURE 2.", "Fig.2 (a) node", None),
        ("Figure 1", "Fig. 10. Nodes", "Figure 1"),  # another number
        ("Figure 1", "Fig. 1A. Nodes", "Figure 1"),
        ("Figure 1", "Fig. 2. Nodes", "Figure 1"),
        # a lower-case word after a worded label is still the caption saying the label
        ("Figure 1", "Figure 1 a, lymph node", None),
        ("Supplementary Figure 3", "Supplementary Figure 3 b, node", None),
        ("2", "2 nodes were positive", "2"),  # a bare number: the caption's text
        ("Figure 01", "Fig. 1. Nodes", None),
        # a sub-letter, and a supplementary figure, however spelt: said once (were twice)
        ("Figure 1A", "Fig. 1A. Nodes", None),
        ("Fig. 1A", "Figure 1a: Nodes", None),
        ("Figure S1", "Fig. S1. Nodes", None),
        ("S1", "Figure S1. Nodes", None),
        ("S1 Fig", "Figure S1. Nodes", None),
        ("Figure S1", "S1 Fig. Nodes", None),
        ("Figure S2", "Supplementary Figure S2: Nodes", None),
        ("Supplementary Figure 2", "Figure S2. Nodes", None),
        # but another letter, number or kind is another label
        ("Figure 1A", "Figure 1B. Nodes", "Figure 1A"),
        ("Figure S1", "Figure 1. Nodes", "Figure S1"),
        ("Figure 1", "Figure S1. Nodes", "Figure 1"),
        ("Figure S1", "Figure S10. Nodes", "Figure S1"),
        ("S1", "Fig. S1A. Nodes", "S1"),
        # a plural 'Figs'/'Figures' is no 'Fig. S…' (its s was read as the supplementary S,
        # and 'Figure S1' was hidden before a caption about figures 1 and 2)
        ("Figure S1", "Figures 1 and 2 show nodes", "Figure S1"),
        ("Figure S1", "Figs 1 and 2 show nodes", "Figure S1"),
        ("Supplementary Figure 1", "FIGURES 1-2. Nodes", "Supplementary Figure 1"),
        ("S1", "Figs 1 and 2 show nodes", "S1"),
        ("Figure S1", "Fig.S1. Nodes", None),  # after a '.', the S is supplementary
        ("Figure S1", "Figure\u00a0S1. Nodes", None),
        # run together, as PDF text often is: still supplementary (review M4)
        ("Figure S1", "FigureS1. Nodes", None),
        ("S1", "FigS1. Nodes", None),
        ("Figure 1", "FigureS1. Nodes", "Figure 1"),
        pytest.param("Figure 1", "Fig. " + "1" * 5000, "Figure 1", id="5000-digit-caption"),
    ],
)
def test_figure_label_said_once_whatever_the_case_and_only_for_a_label(
    tmp_path: Path, label: str, caption: str, shown: str | None
) -> None:
    """Review: "Figure 1" was shown before "FIGURE 1. …" (a case-sensitive check), the label
    "1" was dropped before the caption "1 patient …", and a cut label had no "…"."""
    from histocore.manifest import Image
    from histofetch.review.data import figure_label

    m = Manifest(run_dir=tmp_path)
    fig = Image(id="r/fig", record_id="r", path="a.png", sha256="0", width=9, height=9,
                caption=caption, figure_label=label)  # fmt: skip
    assert figure_label(m, fig) == shown


def _ipv6_loopback() -> bool:
    import socket

    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine cannot bind the IPv6 loopback ::1")
@pytest.mark.parametrize("host", ["::1", "0:0:0:0:0:0:0:1", "[::1]"])
def test_review_on_the_ipv6_loopback_answers_its_own_address(
    kit: tuple[Path, Path], host: str
) -> None:
    """`histofetch review --host ::1` answered every request `Invalid host header` (400):
    a browser's Host header is `[::1]:PORT`, starlette keeps the brackets, and the allowed
    list held `::1`; the long form `0:0:0:0:0:0:0:1` still did (the page's own URL prints
    the short one), and `[::1]`, as a URL writes it, could not be bound. A real server on
    ::1, asked through its own URL."""
    import threading
    import time
    import urllib.error
    import urllib.request

    from histofetch.review.server import build_server, url_of

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy

    server, sock = build_server(kit[0], host=host, port=0, reviewer="tester")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = url_of(sock)
        assert url.startswith("http://[::1]:")
        with opener.open(url + "api/items", timeout=30) as resp:
            assert resp.status == 200 and json.loads(resp.read())["items"]
        evil = urllib.request.Request(url + "api/items", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError, match="400"):
            opener.open(evil, timeout=30)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_serving_server_keeps_the_run_out_of_the_collectors_way(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every full garbage collection went through each object of the run (600,000 for
    100,000 figures, about a second each on a loaded machine), at the first requests and
    whenever answers piled up. While the server serves, the run read is frozen (also when
    another process's write makes it read the run again); when it stops, the store is
    closed (no run.sqlite-wal left to the collector) and nothing stays frozen."""
    import gc
    import threading
    import time
    import urllib.request
    import weakref

    from histofetch.review.server import build_server, url_of

    run = _copy(kit[0], tmp_path)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy

    def serving(freeze: bool):
        server, sock = build_server(run, port=0, reviewer="tester", freeze_gc=freeze)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return server, thread, url_of(sock)

    def stop(server, thread) -> None:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()

    # a library caller's server (freeze_gc off) freezes none of the caller's objects
    server, thread, url = serving(False)
    try:
        with opener.open(url, timeout=30) as resp:
            assert resp.status == 200
        assert gc.get_freeze_count() == 0
    finally:
        stop(server, thread)

    server, thread, url = serving(True)  # as `histofetch review` serves
    state = server.state
    try:
        first = state.manifest()
        rows = list(first.images.values())
        assert gc.get_freeze_count() > len(rows) and not any(gc.is_finalized(r) for r in rows)
        with opener.open(url, timeout=30) as resp:  # the page: its caches of this run read
            assert resp.status == 200
        old = weakref.ref(first)
        del first, rows
        with Manifest.load(run) as other:  # another process answers: the run is read again
            other.update_image("pmid:1/fig2", label="not_usable", label_by="x", label_at="t")
        with opener.open(url + "api/items?status=reviewed", timeout=30) as resp:
            assert [x["id"] for x in json.loads(resp.read())["items"]] == ["pmid:1/fig2"]
        assert state.manifest().images["pmid:1/fig2"].label == "not_usable"
        assert gc.get_freeze_count() > len(state.manifest().images)  # the new read frozen
        # the caches of the old read (the page's list, counts, articles) held it, and its
        # store connection, through the freeze of the new one
        assert old() is None
    finally:
        stop(server, thread)
    assert gc.get_freeze_count() == 0
    assert (
        state._manifest is None and not (run / "run.sqlite-wal").exists()
    )  # every connection closed


def test_the_commands_a_hint_gives_are_quoted_for_the_shell(tmp_path: Path) -> None:
    """The hints are commands to copy, but the run folder went in as it is: in a folder
    named ``it's $HOME; a run`` the pasted ``histofetch status --run …/it's $HOME; a run``
    waited on an open quote, or ran ``a run`` as a second command. Each command now quotes
    the folder (``shlex.quote``), in the CLI's line and on the error page alike."""
    import html
    import shlex

    run = make_run(tmp_path / "it's $HOME; a run", filtered=False)
    m = Manifest.load(run)
    m.records["pmid:1"].fail("filtered", "boom", transient=False)
    m.records["pmid:2"].stage = "searched"
    m.save()
    m.close()
    q = shlex.quote(str(run))
    said = (
        f"histofetch status --run {q} says why, "
        f"histofetch filter --run {q} --retry-failed tries again; "
        f"histofetch download --run {q}, then histofetch extract --run {q}, "
        f"then histofetch filter --run {q} decide the others"
    )
    assert said + "\n" in _review_error(run)
    # each command, pasted into a shell, gives the run folder as one word
    for command in ("status --run", "filter --run", "download --run", "extract --run"):
        pasted = said[said.index(f"histofetch {command}") :]
        words = shlex.split(pasted.split(" says why")[0].split(",")[0])
        assert words[:4] == ["histofetch", *command.split(), str(run)], words
    page = _client(run).get("/")
    assert page.status_code == 500, page.text
    assert said in html.unescape(page.text)


def test_the_review_server_announces_a_run_folder_with_control_characters_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``histofetch review``'s first line named the folder raw: a folder named with an
    escape and a newline recoloured the terminal and broke the line. It is escaped as error
    lines are (``one_line``; review 46 M5: nothing tested it)."""
    from histofetch.review import server

    run = make_run(tmp_path / "a\x1b[31m\nb", filtered=False)
    found = run

    class Stopped:
        run_dir = found  # the folder build_server found

        def run(self, sockets=None) -> None:  # the page is not served here
            pass

    monkeypatch.setattr(server, "build_server", lambda *a, **k: (Stopped(), None))
    monkeypatch.setattr(server, "url_of", lambda sock: "http://127.0.0.1:1/")
    said: list[str] = []
    server.serve(run, open_browser=False, announce=said.append)
    assert said == [
        f"review page for {tmp_path}/a\\x1b[31m\\nb/run: http://127.0.0.1:1/  "
        "(Ctrl-C to stop; every answer is saved at once)"
    ], said


def test_a_hint_for_a_run_folder_named_with_control_characters_is_one_safe_line(
    tmp_path: Path,
) -> None:
    """``shlex.quote`` leaves a newline or an escape in a name as it is, so a hint's
    ``--run 'a<ESC>[31m<NL>b/run'`` was escaped by the error line into ``'a\\x1b[31m\\nb'``,
    a folder with backslashes in its name (and on the review page, two lines). The folder
    is ANSI-C quoted now, ``$'a\\x1b[31m\\nb/run'``, which a shell reads back as the folder;
    the lines that name the folder after a stage or an export are escaped too."""
    import html
    import shlex

    from histocore.io import shell_word

    run = make_run(tmp_path / "a\x1b[31m\nb", filtered=False)
    m = Manifest.load(run)
    m.records["pmid:1"].fail("filtered", "boom", transient=False)
    m.save()
    m.close()
    said = _review_error(run)
    word = shell_word(str(run))
    assert word.startswith("$'") and "\\x1b[31m\\nb" in word
    assert f"histofetch status --run {word} says why" in said
    assert f"histofetch filter --run {word} --retry-failed tries again" in said
    assert "\x1b" not in said and shlex.quote(str(run)) not in said
    page = _client(run).get("/")
    assert page.status_code == 500 and f"histofetch status --run {word}" in html.unescape(page.text)
    filtered = CliRunner().invoke(cli, ["filter", "--run", str(run), "--retry-failed"])
    exported = CliRunner().invoke(cli, ["export", "--run", str(run)])
    for r in (filtered, exported):
        assert r.exit_code == 0, r.output
        assert "\x1b" not in r.output and len(r.output.strip().splitlines()) <= 2, r.output


def test_the_server_finds_the_folder_and_reads_the_run_once(
    kit: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``review_folder`` ran 3 to 4 times a start (serve, build_server, load_run,
    create_app), the manifest was read twice (build_server's check, then the first page)
    and the scores CSV twice. Each is done once now, and the first page and list use what
    the start read. (Counted through the real functions, wrapped.)"""
    from histofetch.review import app as app_module
    from histofetch.review import data, server

    calls: dict[str, int] = {"folder": 0, "run": 0, "scores": 0}

    def counted(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    folder = counted("folder", data.review_folder)
    for module in (data, app_module, server):
        monkeypatch.setattr(module, "review_folder", folder)
    monkeypatch.setattr(app_module, "load_folder", counted("run", data.load_folder))
    real_scores = Scores.load.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        Scores, "load", classmethod(counted("scores", lambda cls, f: real_scores(cls, f)))
    )
    run, scores = kit
    built, sock = server.build_server(run / "manifest.jsonl", port=0, scores=scores)
    sock.close()
    assert built.run_dir == run
    app: Any = built.config.app  # the Starlette app build_server made
    client = TestClient(app, base_url="http://127.0.0.1")
    assert client.get("/").status_code == 200
    assert client.get("/api/items?status=all").json()["total"] == 4
    assert calls == {"folder": 1, "run": 1, "scores": 1}, calls


def test_the_list_comes_a_page_at_a_time(
    kit: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/api/items`` sent the whole filtered list (6 MB of JSON for 100,000 figures, which
    the page waited for before its first figure). It sends one page now (``offset`` and
    ``limit``, or the page ``around`` a figure, with its index ``at``), with the count of
    the whole list."""
    from histofetch.review import app as app_module

    run, scores = kit
    c = _client(run, scores)
    monkeypatch.setattr(app_module, "PAGE", 3)  # the default page size
    first = c.get("/api/items?status=all").json()
    assert [x["id"] for x in first["items"]] == ["pmid:1/fig1", "pmid:1/fig2", "pmid:2/fig1"]
    assert (first["offset"], first["total"], first["at"]) == (0, 4, None)
    page = c.get("/api/items?status=all&offset=1&limit=2").json()
    assert [x["id"] for x in page["items"]] == ["pmid:1/fig2", "pmid:2/fig1"]
    assert (page["offset"], page["total"]) == (1, 4)
    assert c.get("/api/items?status=all&offset=9").json()["items"] == []
    # around a figure: its page, a quarter of it before the figure
    around = c.get("/api/items?status=all&limit=4&around=pmid:2/fig2").json()
    assert (around["at"], around["offset"]) == (3, 2)
    assert [x["id"] for x in around["items"]] == ["pmid:2/fig1", "pmid:2/fig2"]
    gone = c.get("/api/items?weak=no_metastasis&around=pmid:1/fig1").json()
    assert gone["at"] is None and gone["total"] == 1  # not in this filter's list
    for bad in ("offset=-1", "offset=x", "limit=0", "limit=5001", "offset=1e3"):
        r = c.get(f"/api/items?{bad}")
        assert r.status_code == 400 and "must be" in r.json()["error"], bad
    assert c.get("/api/alive").json() == {"alive": True}


def test_the_page_after_or_before_a_figure_is_found_by_its_place(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """Review 48: the page asked for the next page of the list by index, and an answer that
    took figures off a filtered list (the review label filter, disagreements, "reviewed")
    shifted the list under it, so figures were skipped unseen. ``after=ID`` / ``before=ID``
    give the page of the figure next to ID's place in the run's order, which answers do not
    move, with its index as ``at``: also when ID itself has left the list."""
    run = _copy(kit[0], tmp_path)
    c = _client(run, kit[1])
    for image_id in ("pmid:1/fig1", "pmid:1/fig2"):
        assert _post(c, image_id, "metastasis").status_code == 200

    def at(query: str) -> tuple[int | None, int, list[str]]:
        body = c.get(f"/api/items?limit=2&{query}").json()
        return body["at"], body["total"], [x["id"] for x in body["items"]]

    # pmid:1/fig2 has left the "unreviewed" list: the figure after it is still the next one
    assert at("status=unreviewed&after=pmid:1/fig2") == (0, 2, ["pmid:2/fig1", "pmid:2/fig2"])
    assert at("label=unreviewed&after=pmid:1/fig1") == (0, 2, ["pmid:2/fig1", "pmid:2/fig2"])
    assert at("status=reviewed&before=pmid:2/fig2") == (1, 2, ["pmid:1/fig1", "pmid:1/fig2"])
    assert at("status=all&after=pmid:1/fig1") == (1, 4, ["pmid:1/fig2", "pmid:2/fig1"])
    # the page before a figure reaches back from it (the way ← goes)
    assert at("status=all&before=pmid:2/fig1") == (1, 4, ["pmid:1/fig1", "pmid:1/fig2"])
    # nothing on that side: the nearest on the other
    assert at("status=reviewed&after=pmid:2/fig1")[0] == 1
    assert at("status=unreviewed&before=pmid:1/fig2")[0] == 0
    assert at("status=all&after=pmid:2/fig2")[0] == 3
    # no such kept figure, or an empty list: no index, the page asked for by offset
    assert at("status=all&after=pmid:9/x&offset=2") == (None, 4, ["pmid:2/fig1", "pmid:2/fig2"])
    assert at("label=not_usable&after=pmid:1/fig1") == (None, 0, [])


def test_the_places_after_and_before_look_for_are_made_once_a_run_read(
    kit: tuple[Path, Path], tmp_path: Path
) -> None:
    """``after=``/``before=`` made a table of every kept figure's place at each request (30
    to 50 ms at 100,000 figures). It is made once a run read, like the list order, and made
    again when the run is read again: a figure another process no longer keeps has no
    place (the old table still gave it one)."""
    run = _copy(kit[0], tmp_path)
    app = create_app(run, reviewer="rev")
    c = TestClient(app)
    state = app.state.run

    def at(query: str) -> int | None:
        return c.get(f"/api/items?status=all&limit=2&{query}").json()["at"]

    assert at("after=pmid:1/fig2") == 2
    table = state.places(state.manifest())
    assert at("before=pmid:2/fig1") == 1 and state.places(state.manifest()) is table
    assert _post(c, "pmid:1/fig1", "metastasis").status_code == 200  # an answer: no new one
    assert at("after=pmid:1/fig1") == 1 and state.places(state.manifest()) is table
    with Manifest.load(run) as other:  # another process drops a figure: the run read again
        other.update_image("pmid:1/fig2", kept=False)
    assert at("after=pmid:1/fig2") is None
    assert at("after=pmid:1/fig1") == 1  # pmid:2/fig1, now the list's second
    assert "pmid:1/fig2" not in state.places(state.manifest())
