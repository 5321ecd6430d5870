"""search --shard K/N splits the hits stably and completely; merge joins the shard runs."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from ncbi_server import Article, FakeNcbi, ncbi_fixture  # noqa: F401 (fixture)
from pdf_factory import build_image_pdf, he_like
from test_filter import grid_figure_rgb
from typer.testing import CliRunner

from histocore.manifest import MANIFEST_NAME, Image, Manifest, ManifestError, Record
from histofetch.cli import app
from histofetch.extract import run_extract
from histofetch.filter import run_filter
from histofetch.merge import merge_runs
from histofetch.search import run_search
from histofetch.shard import parse_shard, shard_of

QUERY = "sentinel node"
runner = CliRunner()


def test_parse_shard() -> None:
    assert parse_shard("2/8") == (2, 8) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/4", "5/4", "x", "1/0", "", "1/2/3"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_every_key_in_exactly_one_shard_and_shards_balanced() -> None:
    keys = [f"pmid:{30000000 + i}" for i in range(4000)]
    shards = [shard_of(k, 4) for k in keys]
    assert set(shards) == {1, 2, 3, 4}
    assert all(800 < shards.count(k) < 1200 for k in (1, 2, 3, 4))
    assert shards == [shard_of(k, 4) for k in keys]  # the same answer every time


#: Seconds one request to the in-process fake NCBI may take in a test that times nothing:
#: histofetch's own default. The fixture's 2 s (5 s through the CLI) is a race on a loaded
#: 2-core machine, where the server thread can wait seconds for the CPU: four answers in a
#: row over it (the first try and 3 retries, 0.01 s apart) failed the search. A server
#: that never answers still fails the test, at this timeout or at pytest's.
UNTIMED = 30.0


def test_shards_of_a_search_partition_its_hits_and_merge_back(
    ncbi: FakeNcbi, tmp_path: Path
) -> None:
    pmids = [str(31000000 + i) for i in range(40)]
    for i, pmid in enumerate(pmids):
        ncbi.add_article(Article(pmid, title=f"A{i}", pmcid=f"PMC{800000 + i}"))
    ncbi.searches[QUERY] = pmids
    whole = tmp_path / "whole"
    run_search(whole, QUERY, net=ncbi.config(timeout=UNTIMED))
    shard_runs = []
    env = {**ncbi.env(), "HISTOFETCH_TIMEOUT": str(UNTIMED)}
    for k in (1, 2, 3):
        run = tmp_path / f"shard{k}"
        result = runner.invoke(
            app, ["search", QUERY, "--run", str(run), "--shard", f"{k}/3"], env=env
        )
        assert result.exit_code == 0, result.output
        shard_runs.append(run)
    parts = [set(Manifest.load(r).records) for r in shard_runs]
    assert all(parts) and sum(len(p) for p in parts) == 40  # disjoint, nothing lost
    assert set().union(*parts) == set(Manifest.load(whole).records)
    header = json.loads((shard_runs[0] / MANIFEST_NAME).read_text().splitlines()[0])
    assert header["last_search"]["shard"] == "1/3"

    result = runner.invoke(app, ["merge", *map(str, shard_runs), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "merged 3 runs: 40 records" in result.output
    merged = Manifest.load(tmp_path / "m")
    assert set(merged.records) == set(Manifest.load(whole).records)
    assert merged.query == QUERY


def test_bad_shard_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", QUERY, "--run", str(tmp_path), "--shard", "5/4"])
    assert result.exit_code == 2 and "Invalid value for '--shard'" in result.output


def test_merge_dedupes_records_by_id_and_pmcid_and_images_by_sha256(tmp_path: Path) -> None:
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    shared_figure = he_like(128, 128, seed=7)
    build_image_pdf(pdfs / "a.pdf", [shared_figure, he_like(100, 100, seed=1)], caption="Fig. 1")
    build_image_pdf(pdfs / "b.pdf", [shared_figure], caption="Fig. 2")  # same figure again
    one, two = tmp_path / "one", tmp_path / "two"
    run_extract(one, [pdfs / "a.pdf"])
    run_extract(two, [pdfs / "a.pdf", pdfs / "b.pdf"])  # a.pdf in both
    for run, rid in ((one, "pmid:1"), (two, "pmcid:PMC5")):  # one article, two ids
        m = Manifest.load(run)
        m.add_record(Record(id=rid, pmcid="PMC5", pmid="1" if rid == "pmid:1" else None))
        m.save()

    summary = merge_runs([one, two], tmp_path / "merged")
    merged = Manifest.load(tmp_path / "merged")
    assert set(merged.records) == set(Manifest.load(two).records) - {"pmcid:PMC5"} | {"pmid:1"}
    assert (summary.records, summary.duplicate_records) == (3, 2)
    b = next(r for r in merged.records.values() if r.title == "b")
    assert merged.images_of(b.id) == [] and len(b.extra["merge_duplicates"]) == 1
    assert summary.duplicate_images == 1 and len(merged.images) == 2
    for img in merged.images.values():  # files came along: the merged run stands alone
        path = merged.resolve(img.path)
        assert path is not None and path.is_file() and tmp_path / "merged" in path.parents
    again = runner.invoke(app, ["merge", str(one), "--out", str(one)])
    assert again.exit_code == 1 and "cannot also be an input" in again.output


@pytest.mark.parametrize("local_first", [True, False])
def test_a_local_pdf_of_a_downloaded_article_leaves_its_figures_to_that_article(
    tmp_path: Path, local_first: bool
) -> None:
    """A run holding an article downloaded from PMC (PMID, PMCID, licence, its figures) and
    one holding the same PDF given to ``extract`` as a local file (``local:<hash>``) were
    merged as two records; the images, deduplicated by hash, went to whichever came first:
    ``merge r_local r_downloaded`` left the downloaded article with ``n_images`` 2 and no
    images, its figures attributed to a record of unknown licence. Now the same PDF bytes
    are one article: the ``local:`` record is left out, the known one keeps its figures,
    and the line says so. A local PDF of no known article is merged as before."""
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    build_image_pdf(pdfs / "a.pdf", [he_like(128, 128, seed=7), he_like(100, 100, seed=1)])
    build_image_pdf(pdfs / "b.pdf", [he_like(90, 90, seed=3)])
    local, down, out = tmp_path / "local", tmp_path / "down", tmp_path / "out"
    run_extract(local, [pdfs / "a.pdf", pdfs / "b.pdf"])
    with Manifest.load(local) as m:
        rec = next(r for r in m.records.values() if r.title == "a")
        local_id, images = rec.id, m.images_of(rec.id)
        files = {img.id: m.resolve(img.path) for img in images}
    assert len(images) == 2
    with Manifest.load(down, create=True) as m:  # as ``run`` leaves a PMC article
        (down / "pdfs").mkdir(parents=True)
        shutil.copy(pdfs / "a.pdf", down / "pdfs" / "PMC7.pdf")
        m.add_record(
            Record(
                id="pmid:7", pmid="7", pmcid="PMC7", license="CC BY", pdf_source="pmc-cloud",
                pdf_path="pdfs/PMC7.pdf", pdf_sha256=rec.pdf_sha256, stage=rec.stage,
                n_images=len(images),
            )
        )  # fmt: skip
        (down / "images").mkdir()
        for n, img in enumerate(images):
            shutil.copy(files[img.id], down / "images" / f"7-{n}.png")
            m.add_image(
                Image(
                    id=f"7-{img.id}", record_id="pmid:7", path=f"images/7-{n}.png",
                    sha256=img.sha256, width=img.width, height=img.height,
                )
            )  # fmt: skip
        m.save()
    runs = [local, down] if local_first else [down, local]
    r = runner.invoke(app, ["merge", *map(str, runs), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (
        f"1 record without PMID or PMCID left out: its PDF is a known article's (e.g. "
        f"{local_id} is pmid:7)" in r.output
    )
    assert "duplicate image" not in r.output
    with Manifest.load(out) as m:
        assert local_id not in m.records and "pmid:7" in m.records
        assert "merge_duplicates" not in m.records["pmid:7"].extra
        assert sorted(i.id for i in m.images_of("pmid:7")) == sorted(f"7-{i.id}" for i in images)
        b = next(r for r in m.records.values() if r.title == "b")  # no known article's PDF
        assert b.id.startswith("local:") and len(m.images_of(b.id)) == 1
        assert len(m.images) == 3


def _tiny_run(run: Path, records: list[Record], images: list[tuple[Image, bytes]]) -> Path:
    """A run folder holding ``records`` and ``images`` (each written with its bytes)."""
    with Manifest.load(run, create=True) as m:
        (run / "images").mkdir(parents=True, exist_ok=True)
        for rec in records:
            m.add_record(rec)
        for img, data in images:
            (run / img.path).write_bytes(data)
            m.add_image(img)
        m.save()
    return run


PDF_HASH = hashlib.sha256(b"the article's pdf").hexdigest()
FIGURE = b"figure one"


def _local_and_downloaded(tmp_path: Path) -> tuple[Path, Path]:
    """A run holding a local PDF's record (``local:…``, its one figure) and one holding the
    same PDF downloaded as pmid:7 (PMCID PMC7, the same figure)."""
    fig = hashlib.sha256(FIGURE).hexdigest()
    local = _tiny_run(
        tmp_path / "local",
        [Record(id="local:abc", title="a", pdf_sha256=PDF_HASH, stage="extracted")],
        [(Image(id="L-0", record_id="local:abc", path="images/L-0.png", sha256=fig,
                width=1, height=1), FIGURE)],
    )  # fmt: skip
    down = _tiny_run(
        tmp_path / "down",
        [Record(id="pmid:7", pmid="7", pmcid="PMC7", license="CC BY", pdf_sha256=PDF_HASH,
                stage="extracted", n_images=1)],
        [(Image(id="7-0", record_id="pmid:7", path="images/7-0.png", sha256=fig,
                width=1, height=1), FIGURE)],
    )  # fmt: skip
    return local, down


@pytest.mark.parametrize(
    "held", [Record(id="pmid:7", pmid="7", stage="searched"), Record(id="pmcid:PMC7", pmcid="PMC7")]
)
def test_a_local_pdf_is_left_out_only_for_a_known_record_the_merge_keeps(
    tmp_path: Path, held: Record
) -> None:
    """The ``local:`` record of a known article's PDF was left out also where the merge
    left that known record out too: the output held it already without the PDF (pmid:7,
    only searched), or held its PMCID under another id (a duplicate). Nothing took the
    local record's place: its figure (and its review answers) were lost from the output.
    Now a known record counts only where the output holds it with that PDF or the merge
    adds it: here the local record is merged with its figure."""
    local, down = _local_and_downloaded(tmp_path)
    out = _tiny_run(tmp_path / "out", [held], [])
    r = runner.invoke(app, ["merge", str(local), str(down), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "without PMID or PMCID" not in r.output
    assert "merged 2 runs: 1 record, 1 image added (1 record already in the output)" in r.output
    with Manifest.load(out) as m:
        assert [i.id for i in m.images_of("local:abc")] == ["L-0"]
        assert m.records[held.id] == held


def _answers(image_id: str) -> list[dict[str, object]]:
    """Two review page answers about ``image_id`` (a label given, then changed)."""
    return [
        {"at": "2026-01-01T00:00:00+00:00", "image_id": image_id, "label": "metastasis",
         "previous": None, "reviewer": "ann", "weak_label": None},
        {"at": "2026-01-01T00:00:05+00:00", "image_id": image_id, "label": "no_metastasis",
         "previous": "metastasis", "reviewer": "ann", "weak_label": None},
    ]  # fmt: skip


def _reviewed_local(local: Path) -> None:
    """The local copy's figure labelled on the review page: its row and its log."""
    with Manifest.load(local) as m:
        m.update_image("L-0", label="no_metastasis", label_by="ann", label_at="2026-01-01")
        m.save()
    log = "".join(json.dumps(a, sort_keys=True) + "\n" for a in _answers("L-0"))
    (local / "review_log.jsonl").write_text(log)


def test_a_left_out_local_copys_review_answers_go_to_the_image_kept_in_its_place(
    tmp_path: Path,
) -> None:
    """The review answers given on a ``local:`` copy of a known article's PDF were lost
    when the merge left it out: its log lines (about its image ids, which the output does
    not hold) were dropped, and so was its rows' label. Now the image of the same bytes
    the merge adds in its place takes them: the lines carried with ``image_id`` rewritten
    to that image's, the rest as they were, and its label where it had none."""
    local, down = _local_and_downloaded(tmp_path)
    _reviewed_local(local)
    out = tmp_path / "out"
    r = runner.invoke(app, ["merge", str(local), str(down), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "merged 2 runs: 1 record, 1 image added, 2 review log lines carried (" in r.output
    lines = (out / "review_log.jsonl").read_text().splitlines()
    assert lines == [json.dumps(a, sort_keys=True) for a in _answers("7-0")]
    with Manifest.load(out) as m:
        img = m.images["7-0"]
        assert (img.label, img.label_by, img.label_at) == ("no_metastasis", "ann", "2026-01-01")
    # the output holding the known article and its figure before: its answers stand, the
    # local copy's are not carried, and the line counts them
    again = tmp_path / "again"
    assert runner.invoke(app, ["merge", str(down), "--out", str(again)]).exit_code == 0
    r = runner.invoke(app, ["merge", str(local), "--out", str(again)])
    assert r.exit_code == 0, r.output
    assert (
        "merged 1 run: nothing new added (1 record without PMID or PMCID left out: its PDF "
        "is a known article's (e.g. local:abc is pmid:7); 2 review answers about it not "
        "carried)" in r.output
    )
    assert not (again / "review_log.jsonl").exists()
    with Manifest.load(again) as m:
        assert m.images["7-0"].label is None


def test_a_rerun_merge_does_not_say_the_answers_it_carried_were_not(tmp_path: Path) -> None:
    """The same merge run again said "2 review answers about it not carried" of the local
    copy's answers it had carried the first time (the known article's image was now the
    output's before). Lines the output's log holds already, about that image, are neither
    carried again nor counted; an answer given on the copy since is still counted."""
    local, down = _local_and_downloaded(tmp_path)
    _reviewed_local(local)
    out = tmp_path / "out"
    merge = ["merge", str(local), str(down), "--out", str(out)]
    assert runner.invoke(app, merge).exit_code == 0
    carried = (out / "review_log.jsonl").read_text()
    r = runner.invoke(app, merge)
    assert r.exit_code == 0, r.output
    assert "not carried" not in r.output, r.output
    assert r.stdout.startswith("merged 2 runs: nothing new added (2 runs merged into it before")
    assert (out / "review_log.jsonl").read_text() == carried
    later = {**_answers("L-0")[0], "at": "2026-03-03T00:00:00+00:00"}  # given since
    with (local / "review_log.jsonl").open("a") as fh:
        fh.write(json.dumps(later, sort_keys=True) + "\n")
    r = runner.invoke(app, merge)
    assert r.exit_code == 0, r.output
    assert "; 1 review answer about it not carried)" in r.stdout, r.output
    assert (out / "review_log.jsonl").read_text() == carried


def test_a_local_copy_further_along_than_the_known_record_is_kept(tmp_path: Path) -> None:
    """A reviewed ``local:`` copy (extracted, its figure labelled) was left out for a
    pmid:7 only ``downloaded``: the output held neither's figures nor the answers (review
    18). A known record less far along takes nothing's place: the copy is merged as its
    own record, with its figure and its answers."""
    local, down = _local_and_downloaded(tmp_path)
    _reviewed_local(local)
    with Manifest.load(down) as m:
        m.records["pmid:7"].stage = "downloaded"
        m.drop_images_of("pmid:7")
        m.save()
    out = tmp_path / "out"
    r = runner.invoke(app, ["merge", str(down), str(local), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "left out" not in r.output, r.output
    with Manifest.load(out) as m:
        assert set(m.records) == {"pmid:7", "local:abc"}
        assert m.images["L-0"].label == "no_metastasis"
    lines = (out / "review_log.jsonl").read_text().splitlines()
    assert lines == [json.dumps(a, sort_keys=True) for a in _answers("L-0")]


@pytest.mark.parametrize("order", ["down local", "local down"])
def test_a_reviewed_copy_further_along_is_left_out_for_a_record_holding_the_figures(
    tmp_path: Path, order: str
) -> None:
    """Compared by stage alone, a filtered, reviewed local copy beside an extracted pmid:7
    was merged too: its figure (the same bytes) went to whichever came first, so either
    its answers were lost or pmid:7 kept no figure (review 19). A known record holding the
    figures takes its place, in either order."""
    local, down = _local_and_downloaded(tmp_path)
    _reviewed_local(local)
    with Manifest.load(local) as m:
        m.records["local:abc"].stage = "filtered"
        m.save()
    runs = {"down": down, "local": local}
    out = tmp_path / "out"
    r = runner.invoke(app, ["merge", *(str(runs[k]) for k in order.split()), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 record, 1 image added, 2 review log lines carried (" in r.output, r.output
    with Manifest.load(out) as m:
        assert set(m.records) == {"pmid:7"} and set(m.images) == {"7-0"}
        assert m.images["7-0"].label == "no_metastasis"


def test_a_left_out_copys_answers_are_not_carried_to_an_image_labelled_itself(
    tmp_path: Path,
) -> None:
    """The known article's image came labelled (bob: metastasis) and kept its label, yet
    the local copy's answers (ann: no_metastasis) were carried about it: the log's last
    answer disagreed with the store (review 18). They are counted as not carried."""
    local, down = _local_and_downloaded(tmp_path)
    _reviewed_local(local)
    with Manifest.load(down) as m:
        m.update_image("7-0", label="metastasis", label_by="bob", label_at="2026-02-02")
        m.save()
    out = tmp_path / "out"
    r = runner.invoke(app, ["merge", str(down), str(local), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "2 review answers about it not carried" in r.output, r.output
    assert not (out / "review_log.jsonl").exists()
    with Manifest.load(out) as m:
        assert (m.images["7-0"].label, m.images["7-0"].label_by) == ("metastasis", "bob")


def test_merge_line_says_what_was_added_and_what_was_there(tmp_path: Path) -> None:
    """A second merge of the same runs into the same output added nothing and said '0
    records, 0 images (4 duplicate records, 0 duplicate images left out)': the output's own
    records counted as duplicates, and a clause that 0 images were left out. Now it says
    nothing new was added and why, and leaves out the clauses that would say 0."""
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    build_image_pdf(pdfs / "a.pdf", [he_like(128, 128, seed=7)], caption="Fig. 1")
    build_image_pdf(pdfs / "b.pdf", [he_like(100, 100, seed=1)], caption="Fig. 2")
    one, two, out = tmp_path / "one", tmp_path / "two", tmp_path / "merged"
    run_extract(one, [pdfs / "a.pdf"])
    run_extract(two, [pdfs / "b.pdf"])
    first = merge_runs([one, two], out)
    assert first.line() == "merged 2 runs: 2 records, 2 images added"
    again = runner.invoke(app, ["merge", str(one), str(two), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert (
        "merged 2 runs: nothing new added (2 runs merged into it before, 2 records already "
        "in the output)" in again.output
    )
    assert "0 duplicate" not in again.output
    build_image_pdf(pdfs / "c.pdf", [he_like(90, 90, seed=3)], caption="Fig. 3")
    run_extract(two, [pdfs / "c.pdf"])
    shutil.copytree(two, tmp_path / "two_copy")
    third = merge_runs([one, two, tmp_path / "two_copy"], out)
    assert third.line() == (
        "merged 3 runs: 1 record, 1 image added (2 runs merged into it before, 2 records "
        "already in the output, 2 duplicate records left out)"
    )


def test_a_shard_named_twice_or_merged_twice_is_not_its_own_duplicate(tmp_path: Path) -> None:
    """One shard given twice (``merge s s``, or once through a link to it) was read twice,
    and its records counted as duplicates of themselves: 'merged 2 runs: 2 records added
    (2 duplicate records left out)'; a second merge of it into the same output listed it
    twice in ``merged_from``. Now it is read once, the line says so, and a shard merged
    before is named so. The new test fails on main."""
    shard, out = tmp_path / "s1", tmp_path / "out"
    with Manifest.load(shard, create=True) as manifest:
        manifest.add_record(Record(id="pmid:1", pmid="1", stage="searched"))
        manifest.add_record(Record(id="pmid:2", pmid="2", pmcid="PMC2", stage="searched"))
        manifest.save()
    (tmp_path / "link").symlink_to(shard, target_is_directory=True)
    result = runner.invoke(
        app, ["merge", str(shard), str(tmp_path / "link"), str(shard), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "merged 1 run: 2 records added (1 run named more than once, read once)"
    )
    again = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert again.output.strip() == (
        "merged 1 run: nothing new added (1 run merged into it before, 2 records already in "
        "the output)"
    )
    with Manifest.load(out) as merged:
        assert merged.header_extra["merged_from"] == [str(shard.resolve())]
    linked_out = runner.invoke(app, ["merge", str(shard), "--out", str(tmp_path / "link")])
    assert linked_out.exit_code == 1 and "cannot also be an input" in linked_out.output


def test_merge_output_named_by_its_manifest_file_is_still_an_input(tmp_path: Path) -> None:
    """``merge_runs([mA/manifest.jsonl], mA)`` (and the other way round) got past 'the
    output cannot also be an input': the guard compared the file with the folder. A run's
    manifest.jsonl or run.sqlite stands for its folder before the guard."""
    run = tmp_path / "mA"
    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id="pmid:1", pmid="1"))
        m.save()
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for sources, out in [
        ([run / MANIFEST_NAME], run),
        ([run / "run.sqlite"], run),
        ([run], run / MANIFEST_NAME),
    ]:
        with pytest.raises(ManifestError, match="cannot also be an input"):
            merge_runs(sources, out)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot


def test_merge_carries_what_a_shard_remembers_of_renamed_records(tmp_path: Path) -> None:
    """A shard's store remembers a record a search renamed (``renamed:pmcid:PMC5``: a
    process holding the old row cannot claim it or write it back) and a rename it refused
    (``rename_refused:pmcid:PMC6``: met again, it is said with -v only). A merge carried
    neither: in the merged run the old id could be claimed, and the refusal was news
    again. The new test fails on main."""
    from histocore.manifest import Image, RenameRefused

    shard, out = tmp_path / "shard", tmp_path / "out"
    with Manifest.load(shard, create=True) as manifest:
        manifest.add_record(Record(id="pmcid:PMC5", pmcid="PMC5", stage="searched"))
        manifest.add_record(Record(id="pmcid:PMC6", pmcid="PMC6", stage="extracted"))
        manifest.add_image(
            Image(id="pmcid:PMC6/f1", record_id="pmcid:PMC6", path="images/f1.png",
                  sha256="6" * 64, width=1, height=1)
        )  # fmt: skip
        manifest.save()
        manifest.rename_record("pmcid:PMC5", "pmid:5", pmid="5")
        with pytest.raises(RenameRefused):
            manifest.rename_record("pmcid:PMC6", "pmid:6", pmid="6")
        manifest.save()
    merge_runs([shard], out)
    with Manifest.load(out) as merged:
        assert set(merged.records) == {"pmid:5", "pmcid:PMC6"}
        assert merged.claim("pmcid:PMC5", "downloaded") is False  # renamed: not taken
        with pytest.raises(RenameRefused) as refused:
            merged.rename_record("pmcid:PMC6", "pmid:6", pmid="6")
        assert refused.value.repeated  # said in the shard already


def test_merge_line_of_one_run_without_images(tmp_path: Path) -> None:
    """Merging one run whose only record has no images said 'merged 1 runs: 1 record, 0
    images added': the plural for one run, and a clause saying 0 that eb8850c meant to leave
    out."""
    run, out = tmp_path / "searched", tmp_path / "merged"
    with Manifest.load(run, create=True) as manifest:
        manifest.add_record(Record(id="pmid:1", pmid="1", stage="searched"))
        manifest.save()
    result = runner.invoke(app, ["merge", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "merged 1 run: 1 record added" in result.output, result.output
    assert "0 images" not in result.output and "1 runs" not in result.output


def _one_figure_run(run: Path, rid: str, licence: str | None) -> Path:
    """A run holding article ``rid`` of ``licence`` with one figure, the bytes FIGURE."""
    fig = hashlib.sha256(FIGURE).hexdigest()
    n = rid.removeprefix("pmid:")
    return _tiny_run(
        run,
        [Record(id=rid, pmid=n, license=licence, stage="extracted", n_images=1)],
        [(Image(id=f"{n}-0", record_id=rid, path=f"images/{n}-0.png", sha256=fig,
                width=1, height=1), FIGURE)],
    )  # fmt: skip


@pytest.mark.parametrize("nc_first", [True, False])
def test_merge_keeps_the_copy_of_a_figure_whose_licence_allows_the_most_reuse(
    tmp_path: Path, nc_first: bool
) -> None:
    """The same figure bytes in two articles were kept from whichever came first: merging a
    CC BY-NC article's run before a CC BY one's kept the non-commercial copy and left the
    CC BY copy out. Now the copy of the freer licence is kept, in either order; a tie goes
    to the first, and a copy the output holds stays."""
    nc = _one_figure_run(tmp_path / "nc", "pmid:1", "CC BY-NC")
    by = _one_figure_run(tmp_path / "by", "pmid:2", "http://creativecommons.org/licenses/by/4.0/")
    out = tmp_path / "out"
    summary = merge_runs([nc, by] if nc_first else [by, nc], out)
    assert (summary.images, summary.duplicate_images) == (1, 1)
    with Manifest.load(out) as m:
        assert [i.id for i in m.images.values()] == ["2-0"]
        assert m.records["pmid:1"].extra["merge_duplicates"] == {"1-0": "2-0"}
        assert "merge_duplicates" not in m.records["pmid:2"].extra
    tie = _one_figure_run(tmp_path / "tie", "pmid:3", "CC0")  # CC0 and CC BY: both commercial
    merge_runs([tie], out)  # the output's copy stays
    with Manifest.load(out) as m:
        assert [i.id for i in m.images.values()] == ["2-0"]
    summary = merge_runs([tie, by], tmp_path / "out2")
    with Manifest.load(tmp_path / "out2") as m:
        assert [i.id for i in m.images.values()] == ["3-0"]


@pytest.mark.parametrize("broken", ["file missing", "record failed", "image failed"])
@pytest.mark.parametrize("nc_first", [True, False])
def test_the_licence_rule_never_keeps_a_copy_missing_its_file_or_failed(
    tmp_path: Path, nc_first: bool, broken: str
) -> None:
    """The licence rule won also where the CC BY copy's file was missing from its input or
    its row had failed, while the CC BY-NC copy was ok and decided: the CC BY row was added
    without its file (or failed), the good copy left out. Now a whole copy (rows ok, file
    there) is kept first, then the freer licence, then the first merged."""
    nc = _one_figure_run(tmp_path / "nc", "pmid:1", "CC BY-NC")
    by = _one_figure_run(tmp_path / "by", "pmid:2", "CC BY")
    with Manifest.load(nc) as m:
        m.update_image("1-0", kept=True)
        m.save()
    if broken == "file missing":
        (by / "images/2-0.png").unlink()
    else:
        with Manifest.load(by) as m:
            if broken == "record failed":
                m.records["pmid:2"].status = "failed"
            else:
                m.update_image("2-0", status="failed", reason="unreadable image")
            m.save()
    out = tmp_path / "out"
    summary = merge_runs([nc, by] if nc_first else [by, nc], out)
    assert (summary.images, summary.duplicate_images) == (1, 1)
    with Manifest.load(out) as m:
        assert [(i.id, i.kept) for i in m.images.values()] == [("1-0", True)]
        assert m.records["pmid:2"].extra["merge_duplicates"] == {"2-0": "1-0"}
    assert (out / m.images["1-0"].path).is_file()


@pytest.mark.parametrize("nc_first", [True, False])
def test_a_reviewed_kept_figure_is_not_left_out_for_a_copy_filter_rejected(
    tmp_path: Path, nc_first: bool
) -> None:
    """The licence rule came before filter's decision: a CC BY-NC shard's figure, kept and
    labelled on its review page, merged with the same bytes that filter rejected in a CC BY
    shard (another caption), kept the rejected CC BY copy and carried the label onto it:
    the reviewed figure dropped out of kept_images() and the review page. Now a kept copy
    goes before an undecided one before a rejected one, then the licence."""
    nc = _one_figure_run(tmp_path / "nc", "pmid:1", "CC BY-NC")
    by = _one_figure_run(tmp_path / "by", "pmid:2", "CC BY")
    with Manifest.load(nc) as m:
        m.update_image("1-0", kept=True)
        m.save()
    _labelled(nc, "1-0")
    with Manifest.load(by) as m:
        m.update_image("2-0", kept=False)
        m.save()
    out = tmp_path / "out"
    merge_runs([nc, by] if nc_first else [by, nc], out)
    with Manifest.load(out) as m:
        assert [(i.id, i.label) for i in m.kept_images()] == [("1-0", "no_metastasis")]
        assert m.records["pmid:2"].extra["merge_duplicates"] == {"2-0": "1-0"}
    # undecided before rejected too, whatever the licence
    und = _one_figure_run(tmp_path / "und", "pmid:3", "CC BY-NC")
    out2 = tmp_path / "out2"
    merge_runs([by, und], out2)
    with Manifest.load(out2) as m:
        assert [(i.id, i.kept) for i in m.images.values()] == [("3-0", None)]


def _labelled(run: Path, image_id: str) -> None:
    """``image_id`` of ``run`` labelled on the review page: its row and its log."""
    with Manifest.load(run) as m:
        m.update_image(image_id, label="no_metastasis", label_by="ann", label_at="2026-01-01")
        m.save()
    log = "".join(json.dumps(a, sort_keys=True) + "\n" for a in _answers(image_id))
    (run / "review_log.jsonl").write_text(log)


@pytest.mark.parametrize("nc_first", [True, False])
def test_the_answers_on_a_copy_left_out_for_a_freer_licence_go_to_the_copy_kept(
    tmp_path: Path, nc_first: bool
) -> None:
    """The licence rule lost review answers: a CC BY-NC shard's figure, labelled on its
    review page, merged with the same bytes unlabelled in a CC BY shard, kept the CC BY
    copy and left out the labelled one with its label and its log lines. Now the copy kept
    takes them: its label where it has none, the lines with ``image_id`` rewritten to it.
    Where the copy kept is labelled itself, its own answers stand and the others' are
    counted, not carried."""
    nc = _one_figure_run(tmp_path / "nc", "pmid:1", "CC BY-NC")
    by = _one_figure_run(tmp_path / "by", "pmid:2", "CC BY")
    _labelled(nc, "1-0")
    inputs, out = [str(nc), str(by)] if nc_first else [str(by), str(nc)], tmp_path / "out"
    r = runner.invoke(app, ["merge", *inputs, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output == (
        "merged 2 runs: 2 records, 1 image added, 2 review log lines carried "
        "(1 duplicate image left out)\n"
    )
    with Manifest.load(out) as m:
        assert [i.id for i in m.images.values()] == ["2-0"]
        img = m.images["2-0"]
        assert (img.label, img.label_by, img.label_at) == ("no_metastasis", "ann", "2026-01-01")
    lines = (out / "review_log.jsonl").read_text().splitlines()
    assert lines == [json.dumps(a, sort_keys=True) for a in _answers("2-0")]
    # the copy kept labelled itself: its answers stand, the left-out copy's are counted
    with Manifest.load(by) as m:
        m.update_image("2-0", label="metastasis", label_by="bob", label_at="2026-02-02")
        m.save()
    both = tmp_path / "both"
    r = runner.invoke(app, ["merge", *inputs, "--out", str(both)])
    assert r.exit_code == 0, r.output
    assert r.output == (
        "merged 2 runs: 2 records, 1 image added (1 duplicate image left out; 2 review "
        "answers about the image not carried)\n"
    )
    assert not (both / "review_log.jsonl").exists()
    with Manifest.load(both) as m:
        assert m.images["2-0"].label == "metastasis"


@pytest.mark.parametrize("newest_first", [True, False])
def test_the_label_carried_is_the_newest_answer_of_the_copies_left_out(
    tmp_path: Path, newest_first: bool
) -> None:
    """Two labelled CC BY-NC copies left out for the same bytes unlabelled in a CC BY shard
    gave the kept copy the first input's label, while their log lines were appended in
    input order: merged newest first, the log's last answer disagreed with the store. Now
    the store takes the newest answer by ``label_at`` in either order."""
    old = _one_figure_run(tmp_path / "old", "pmid:1", "CC BY-NC")
    new = _one_figure_run(tmp_path / "new", "pmid:3", "CC BY-NC")
    by = _one_figure_run(tmp_path / "by", "pmid:2", "CC BY")
    with Manifest.load(old) as m:
        m.update_image("1-0", label="metastasis", label_by="ann", label_at="2026-01-01T00:00:00")
        m.save()
    with Manifest.load(new) as m:
        m.update_image(
            "3-0", label="no_metastasis", label_by="bob", label_at="2026-02-01T00:00:00+00:00"
        )
        m.save()
    out = tmp_path / "out"
    merge_runs([new, old, by] if newest_first else [old, new, by], out)
    with Manifest.load(out) as m:
        img = m.images["2-0"]
        assert (img.label, img.label_by) == ("no_metastasis", "bob")


@pytest.mark.parametrize("nc_first", [True, False])
@pytest.mark.parametrize("undone_on", ["2026-03-01", "2025-06-01"])
def test_a_copy_kept_whose_own_log_ends_with_an_undo_stays_unlabelled(
    tmp_path: Path, nc_first: bool, undone_on: str
) -> None:
    """The copy kept, unlabelled in its store because its reviewer undid the answer (its
    log: a label, then an undo), took the label of a copy left out for it: the store said
    'labelled' where its own last answer was the undo. Now it stays unlabelled while the
    undo is newer than the carried answer (2026-01-01); an older undo (review 29: it still
    won, the log's newest answer a label, the store unlabelled) gives way to the carried
    label. The left-out copy's lines are carried either way."""
    nc = _one_figure_run(tmp_path / "nc", "pmid:1", "CC BY-NC")
    by = _one_figure_run(tmp_path / "by", "pmid:2", "CC BY")
    _labelled(nc, "1-0")
    undo = [
        {"at": f"{undone_on}T00:00:00+00:00", "image_id": "2-0", "label": "metastasis",
         "previous": None, "reviewer": "bob", "weak_label": None},
        {"at": f"{undone_on}T00:00:05+00:00", "image_id": "2-0", "label": None,
         "previous": "metastasis", "reviewer": "bob", "weak_label": None},
    ]  # fmt: skip
    (by / "review_log.jsonl").write_text("".join(json.dumps(a) + "\n" for a in undo))
    out = tmp_path / "out"
    summary = merge_runs([nc, by] if nc_first else [by, nc], out)
    assert summary.duplicate_lines_left == 0
    carried = None if undone_on > "2026-01-01" else "no_metastasis"
    with Manifest.load(out) as m:
        assert [(i.id, i.label) for i in m.images.values()] == [("2-0", carried)]
    assert len((out / "review_log.jsonl").read_text().splitlines()) == 4


def _runs_reviewed_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Iterator[datetime]
) -> tuple[Path, Path]:
    """Runs ``nc`` (pmid:1, CC BY-NC) and ``by`` (pmid:2, CC BY), one kept figure each, whose
    review answers are stamped by ``clock``'s times in turn (the clock of
    :func:`histocore.io.utc_stamp`, which stamps them)."""
    import histocore.io

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return next(clock)

    monkeypatch.setattr(histocore.io, "datetime", Clock)
    nc = _one_figure_run(tmp_path / "nc", "pmid:1", "CC BY-NC")
    by = _one_figure_run(tmp_path / "by", "pmid:2", "CC BY")
    for run, image_id in ((by, "2-0"), (nc, "1-0")):
        with Manifest.load(run) as m:
            m.update_image(image_id, kept=True, status="ok")
    return nc, by


@pytest.mark.parametrize("nc_first", [True, False])
def test_an_answer_given_after_an_undo_in_the_same_second_is_carried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nc_first: bool
) -> None:
    """Review answers were stamped to the second: an undo on the copy kept and, 300 ms
    later, an answer on the copy left out for it tied, and merge let the undo stand (a tie
    goes to it), dropping the later answer. They are stamped to the microsecond now, so
    the later action wins; a log of second stamps is still read (its undo at 00:00:05)."""
    from datetime import UTC, datetime, timedelta

    from histofetch.review import data as review

    clock = iter(datetime(2026, 3, 1, 12, 0, 0, 100_000, UTC) + timedelta(milliseconds=300 * k)
                 for k in itertools.count())  # fmt: skip

    nc, by = _runs_reviewed_at(tmp_path, monkeypatch, clock)
    with Manifest.load(by) as m:  # 12:00:00.1 answered, 12:00:00.4 undone
        review.save_answer(m, "2-0", "metastasis", "bob")
        review.save_answer(m, "2-0", None, "bob")
    with Manifest.load(nc) as m:  # 12:00:00.7: after the undo, in the same second
        review.save_answer(m, "1-0", "no_metastasis", "ann")
    out = tmp_path / "out"
    merge_runs([nc, by] if nc_first else [by, nc], out)
    with Manifest.load(out) as m:
        img = m.images["2-0"]
        assert (img.label, img.label_by) == ("no_metastasis", "ann")
        assert img.label_at == "2026-03-01T12:00:00.700000+00:00"
    lines = [json.loads(x) for x in (out / "review_log.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(x["at"].startswith("2026-03-01T12:00:00.") for x in lines)


@pytest.mark.parametrize(("nc_at", "carried"), [(500_000, False), (1_200_000, True)])
def test_an_undo_stamped_to_the_second_ties_with_an_answer_of_that_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nc_at: int, carried: bool
) -> None:
    """An older version stamped answers to the second: its undo at 12:00:00 may have been
    given at 12:00:00.9. Read to the microsecond, an answer at 12:00:00.5 in another copy
    was newer and won, where before the tie let the undo stand (review 46 M4). Where either
    stamp has no fraction both are read to the second: the undo stands; an answer of a
    later second (12:00:01.2) is carried."""
    from datetime import UTC, datetime, timedelta

    from histofetch.review import data as review

    base = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    clock = iter([base - timedelta(seconds=1), base, base + timedelta(microseconds=nc_at)])

    nc, by = _runs_reviewed_at(tmp_path, monkeypatch, clock)
    with Manifest.load(by) as m:  # 11:59:59 answered, 12:00:00 undone
        review.save_answer(m, "2-0", "metastasis", "bob")
        review.save_answer(m, "2-0", None, "bob")
    log = by / "review_log.jsonl"  # as an older version wrote them: whole seconds
    log.write_text(log.read_text().replace(".000000+00:00", "+00:00"))
    assert "12:00:00+00:00" in log.read_text()
    with Manifest.load(nc) as m:
        review.save_answer(m, "1-0", "no_metastasis", "ann")
    out = tmp_path / "out"
    merge_runs([nc, by], out)
    with Manifest.load(out) as m:
        img = m.images["2-0"]
        assert img.label == ("no_metastasis" if carried else None), img


def test_answered_after_reads_a_whole_second_stamp_to_the_second() -> None:
    """Of two carried answers, one stamped by an older version (12:00:00) and one of
    12:00:00.5, neither is newer: the tie goes to the first input, as it did before the
    stamps had microseconds."""
    from histofetch.merge_logs import answer_time, answered_after

    old, new = answer_time("2026-03-01T12:00:00+00:00"), answer_time("2026-03-01T12:00:00.5Z")
    assert not answered_after(new, old) and not answered_after(old, new)
    assert answered_after(answer_time("2026-03-01T12:00:01.2+00:00"), old)
    early = answer_time("2026-03-01T12:00:00.100000+00:00")
    assert answered_after(new, early) and not answered_after(early, new)


def test_a_whole_second_stamped_with_its_fraction_is_read_to_the_microsecond() -> None:
    """This version stamps to the microsecond and writes the fraction even where it is 0
    (``histocore.io.utc_stamp``): an answer given at 12:00:00.000000 was read as an older
    version's whole-second stamp (its fraction is 0), so an answer half a second later in
    another copy tied with it and the first input's (or the undo) stood. Only a stamp
    without a fraction is read to the second."""
    from datetime import UTC, datetime

    from histocore.io import utc_stamp
    from histofetch.merge_logs import answer_time, answered_after

    whole = answer_time(utc_stamp(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)))
    later = answer_time("2026-03-01T12:00:00.500000+00:00")
    assert answered_after(later, whole) and not answered_after(whole, later)
    old = answer_time("2026-03-01T12:00:00+00:00")  # an older version's: to the second
    assert not answered_after(later, old) and not answered_after(old, later)
    assert not answered_after(whole, old) and not answered_after(old, whole)


def _grid_article(tmp: Path, name: str, licence: str, caption: str, filtered: bool) -> Path:
    """A run of one PDF holding the 2×2 compound figure, of ``licence``; ``filtered``: split
    into its four panels (own bytes, ``parent_id`` naming the figure) and decided."""
    pdf = build_image_pdf(tmp / f"{name}.pdf", [grid_figure_rgb()], caption=caption)
    run = tmp / name
    run_extract(run, [pdf])
    with Manifest.load(run) as m:
        for rec in m.records.values():
            rec.license = licence
        m.save()
    if filtered:
        run_filter(run, sheet=False)
    return run


def _no_orphan_and_no_pixels_twice(out: Path) -> None:
    with Manifest.load(out) as m:
        assert [
            i.id for i in m.images.values() if i.parent_id and i.parent_id not in m.images
        ] == []
        kept = [i.sha256 for i in m.kept_images()]
        assert len(kept) == len(set(kept)), "the same pixels kept twice"


@pytest.mark.parametrize("nc_first", [True, False])
def test_a_figure_left_out_for_a_freer_licence_takes_its_panels_with_it(
    tmp_path: Path, nc_first: bool
) -> None:
    """The copy kept of same-bytes images was chosen per image: a filtered CC BY-NC
    article's figure (split into four panels) merged with the same figure unfiltered in a
    CC BY article kept the CC BY figure and left the NC one out, but added the NC figure's
    panels (bytes of their own) naming a parent row the output did not hold; filtered, the
    output split the CC BY figure into the same pixels again, kept twice under two
    articles. Now a figure and its panels are one unit: left out together, noted in
    ``merge_duplicates``, and the review answers on a panel are counted, not carried, where
    the copy kept has no image of its bytes (else they go to that image)."""
    nc = _grid_article(tmp_path, "nc", "CC BY-NC", "Figure 2. H&E and a heatmap.", True)
    by = _grid_article(tmp_path, "by", "CC BY", "Figure 2. H&E and a heatmap of the node.", False)
    with Manifest.load(nc) as m:
        (nc_id,) = m.records
        (fig,) = [i for i in m.images_of(nc_id) if i.parent_id is None]
        panels = [i.id for i in m.images_of(nc_id) if i.parent_id == fig.id]
    assert len(panels) == 4
    _labelled(nc, panels[0])
    with Manifest.load(by) as m:  # kept by hand: a kept copy goes before an undecided one
        for img in list(m.images.values()):
            m.update_image(img.id, kept=True)
        m.save()
    inputs = [str(nc), str(by)] if nc_first else [str(by), str(nc)]
    r = runner.invoke(app, ["merge", *inputs, "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "5 duplicate images left out; 2 review answers about the images not carried" in r.output
    with Manifest.load(by) as m:
        (by_id,) = m.records
        (by_fig,) = m.images_of(by_id)
    with Manifest.load(tmp_path / "out") as m:
        assert list(m.images) == [by_fig.id]
        assert m.records[nc_id].extra["merge_duplicates"] == dict.fromkeys(
            [fig.id, *panels], by_fig.id
        )
    _no_orphan_and_no_pixels_twice(tmp_path / "out")
    held = tmp_path / "held"  # the figure held by the output: its panels left out too
    merge_runs([by], held)
    merge_runs([nc], held)
    _no_orphan_and_no_pixels_twice(held)
    with Manifest.load(held) as m:
        assert list(m.images) == [by_fig.id]
        assert set(m.records[nc_id].extra["merge_duplicates"]) == {fig.id, *panels}
    r = runner.invoke(app, ["filter", "--run", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    _no_orphan_and_no_pixels_twice(tmp_path / "out")
    # the copy kept split into the same panels: the left-out panel's answers go to its twin
    run_filter(by, sheet=False)
    with Manifest.load(nc) as m:
        sha = m.images[panels[0]].sha256
    with Manifest.load(by) as m:
        (twin,) = [i.id for i in m.images_of(by_id) if i.sha256 == sha]
    r = runner.invoke(app, ["merge", *inputs, "--out", str(tmp_path / "out2")])
    assert r.exit_code == 0, r.output
    assert "2 review log lines carried (5 duplicate images left out)" in r.output
    _no_orphan_and_no_pixels_twice(tmp_path / "out2")
    with Manifest.load(tmp_path / "out2") as m:
        assert {i.record_id for i in m.images.values()} == {by_id}
        assert m.images[twin].label == "no_metastasis"
        assert m.records[nc_id].extra["merge_duplicates"][panels[0]] == twin
    lines = (tmp_path / "out2" / "review_log.jsonl").read_text().splitlines()
    assert lines == [json.dumps(a, sort_keys=True) for a in _answers(twin)]


@pytest.mark.parametrize("chain", [False, True])
def test_a_panel_never_replaces_a_figure_so_no_panel_is_orphaned_or_lost(
    tmp_path: Path, chain: bool
) -> None:
    """The panels were chosen in input order while a figure's keeper could still change: a
    CC BY-NC figure X (panels X1, X2) merged before a CC BY figure F whose panel P has X's
    bytes kept X1 and X2 while X was the keeper, then P replaced X: X left out, its panels
    added naming it (orphans). Holding such panels back in passes then lost a kept figure's
    panel in a chain of three articles (review 30: X proprietary with X1, F CC BY-NC whose
    panel P has X's bytes, G CC BY whose panel Q has F's: X1 left out as a duplicate of its
    own figure, its label lost). Now a panel never replaces a figure: a panel of a figure's
    bytes is left out for that figure, in every input order."""

    def img(rid: str, iid: str, data: bytes, parent: str | None = None) -> tuple[Image, bytes]:
        sha = hashlib.sha256(data).hexdigest()
        i = Image(iid, rid, f"images/{iid}.png", sha, 1, 1, parent_id=parent)
        return i, data

    def rec(rid: str, licence: str, n: int) -> Record:
        return Record(id=rid, pmid=rid[5:], license=licence, stage="filtered", n_images=n)

    if chain:
        runs = {
            "x": [rec("pmid:1", "proprietary", 2)],
            "f": [rec("pmid:2", "CC BY-NC", 2)],
            "g": [rec("pmid:3", "CC BY", 2)],
        }
        images = {
            "x": [img("pmid:1", "X", b"X"), img("pmid:1", "X1", b"X1", "X")],
            "f": [img("pmid:2", "F", b"F"), img("pmid:2", "P", b"X", "F")],
            "g": [img("pmid:3", "G", b"G"), img("pmid:3", "Q", b"F", "G")],
        }
        kept = {"X", "X1", "F", "G"}
        left_out = {"P": "X", "Q": "F"}
    else:
        runs = {
            "x": [rec("pmid:1", "CC BY-NC", 3)],
            "f": [rec("pmid:2", "CC BY", 2)],
            "y": [rec("pmid:3", "CC BY-NC-ND", 2)],
        }
        images = {
            "x": [
                img("pmid:1", "X", b"X"),
                img("pmid:1", "X1", b"X1", "X"),
                img("pmid:1", "X2", b"X2", "X"),
            ],
            "f": [img("pmid:2", "F", b"F"), img("pmid:2", "P", b"X", "F")],
            "y": [img("pmid:3", "Y", b"X1"), img("pmid:3", "Y1", b"Y1", "Y")],  # Y: X1's bytes
        }
        kept = {"X", "X2", "F", "Y", "Y1"}
        left_out = {"X1": "Y", "P": "X"}
    for name in runs:
        _tiny_run(tmp_path / name, runs[name], images[name])
    for n, order in enumerate(itertools.permutations(runs)):
        out = tmp_path / f"out{n}"
        merge_runs([tmp_path / name for name in order], out)
        _no_orphan_and_no_pixels_twice(out)
        with Manifest.load(out) as m:
            assert set(m.images) == kept, order
            dups = {
                k: v
                for r in m.records.values()
                for k, v in r.extra.get("merge_duplicates", {}).items()
            }
            assert dups == left_out, order


def _run_with_pdf(run: Path, rec: Record, data: bytes) -> None:
    """``run`` holding ``rec`` and its downloaded PDF (``rec.pdf_path``) of bytes ``data``."""
    assert rec.pdf_path is not None
    (run / rec.pdf_path).parent.mkdir(parents=True, exist_ok=True)
    (run / rec.pdf_path).write_bytes(data)
    rec.pdf_sha256 = hashlib.sha256(data).hexdigest()
    with Manifest.load(run, create=True) as manifest:
        manifest.add_record(rec)
        manifest.save()


def test_merge_never_points_a_record_at_another_articles_file(tmp_path: Path) -> None:
    """A run whose 'pmid:0' a search renamed 'pmcid:PMC5' before the PDF moved with the
    record keeps 'pdfs/pmid_0.pdf' as that record's PDF; merging into it a shard that holds
    its own 'pmid:0' (another article) left the file as it was and pointed the shard's
    record at it: a PDF whose pdf_sha256 is not the record's. Now the shard's file is
    brought under a free name, and a file of the same bytes is taken as it is."""
    out, shard = tmp_path / "out", tmp_path / "shard"
    renamed = Record(id="pmcid:PMC5", pmcid="PMC5", stage="downloaded", pdf_path="pdfs/pmid_0.pdf")
    _run_with_pdf(out, renamed, b"%PDF-1.4 the article PMC5")
    theirs = Record(
        id="pmid:0", pmid="0", pmcid="PMC9", stage="downloaded", pdf_path="pdfs/pmid_0.pdf"
    )
    _run_with_pdf(shard, theirs, b"%PDF-1.4 the article PMC9")
    (out / "pdfs" / "pmid_0-2.pdf").write_bytes(b"a file no row names")
    summary = merge_runs([shard], out)
    assert summary.records == 1
    with Manifest.load(out) as merged:
        recs = dict(merged.records)
    for rec in recs.values():
        assert rec.pdf_path is not None and rec.pdf_sha256 is not None
        data = (out / rec.pdf_path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec.pdf_sha256, (rec.id, rec.pdf_path)
    assert (recs["pmcid:PMC5"].pdf_path, recs["pmid:0"].pdf_path) == (
        "pdfs/pmid_0.pdf",
        "pdfs/pmid_0-3.pdf",
    )
    same = tmp_path / "same"  # the same bytes under that name: taken as they are
    _run_with_pdf(
        same,
        Record(id="pmid:7", pmid="7", pdf_path="pdfs/pmid_0.pdf"),
        b"%PDF-1.4 the article PMC5",
    )
    merge_runs([same], out)
    with Manifest.load(out) as merged:
        assert merged.records["pmid:7"].pdf_path == "pdfs/pmid_0.pdf"


def test_a_merge_run_again_after_an_interruption_brings_a_file_once(tmp_path: Path) -> None:
    """A merge interrupted after linking a shard's file under a free name (before its rows
    were saved) and run again linked another copy each time ('pdfs/pmid_0-3.pdf', -4, ...).
    Now a free-name candidate already holding the file's bytes is taken."""
    out, shard = tmp_path / "out", tmp_path / "shard"
    mine = Record(id="pmcid:PMC5", pmcid="PMC5", stage="downloaded", pdf_path="pdfs/pmid_0.pdf")
    _run_with_pdf(out, mine, b"%PDF-1.4 the article PMC5")
    theirs = Record(
        id="pmid:0", pmid="0", pmcid="PMC9", stage="downloaded", pdf_path="pdfs/pmid_0.pdf"
    )
    _run_with_pdf(shard, theirs, b"%PDF-1.4 the article PMC9")
    os.link(shard / "pdfs" / "pmid_0.pdf", out / "pdfs" / "pmid_0-2.pdf")  # the first try's
    merge_runs([shard], out)
    with Manifest.load(out) as merged:
        assert merged.records["pmid:0"].pdf_path == "pdfs/pmid_0-2.pdf"
    assert sorted(p.name for p in (out / "pdfs").iterdir()) == ["pmid_0-2.pdf", "pmid_0.pdf"]


def test_merge_never_brings_a_file_through_a_link_in_the_output(tmp_path: Path) -> None:
    """An output folder holding a dangling link where a shard's file goes
    ('pdfs/pmid_0.pdf' → a path outside it): os.link refused the name and the copy that
    followed wrote the shard's PDF through the link, outside the output. A link is never
    a free name now. The new test fails on main."""
    out, shard = tmp_path / "out", tmp_path / "shard"
    rec = Record(id="pmid:0", pmid="0", stage="downloaded", pdf_path="pdfs/pmid_0.pdf")
    _run_with_pdf(shard, rec, b"%PDF-1.4 the article")
    (out / "pdfs").mkdir(parents=True)
    (out / "pdfs" / "pmid_0.pdf").symlink_to(tmp_path / "outside.pdf")
    merge_runs([shard], out)
    assert not (tmp_path / "outside.pdf").exists()
    with Manifest.load(out) as merged:
        assert merged.records["pmid:0"].pdf_path == "pdfs/pmid_0-2.pdf"
    assert (out / "pdfs" / "pmid_0-2.pdf").read_bytes() == b"%PDF-1.4 the article"


def test_merge_never_links_the_runs_own_files(tmp_path: Path) -> None:
    """A row naming ``review_log.jsonl`` (hand-edited) hard-linked the source's log into
    the new output, where a review of the merged run appended to the shard's log."""
    from histocore.manifest import Image

    run = tmp_path / "a"
    run.mkdir()
    (run / "review_log.jsonl").write_text("log of a\n")
    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id="pmid:1", stage="filtered"))
        m.add_image(
            Image(id="pmid:1/log", record_id="pmid:1", path="review_log.jsonl", sha256="0" * 64,
                  width=1, height=1)
        )  # fmt: skip
        m.save()
    out = tmp_path / "out"
    merge_runs([run], out)
    assert not (out / "review_log.jsonl").exists()
    assert (run / "review_log.jsonl").stat().st_nlink == 1


def test_merge_brings_files_under_a_linked_folder_and_says_so(tmp_path: Path) -> None:
    """A shard whose ``images/`` was moved to another disk behind a folder link merged its
    rows but left their files behind, silently. Now a file whose bytes hash to its row's
    sha256 is brought (copied, never a second name of the file out there), one warning line
    naming the link; a file link of its own pointing out is still never read."""
    import hashlib

    from histocore.manifest import Image

    shard, disk, out = tmp_path / "shard", tmp_path / "bigdisk", tmp_path / "out"
    (disk / "r1").mkdir(parents=True)
    shard.mkdir()
    (shard / "images").symlink_to(disk, target_is_directory=True)
    (disk / "r1" / "a.png").write_bytes(b"figure a")
    (tmp_path / "secret.png").write_bytes(b"the user's file")
    (disk / "r1" / "out.png").symlink_to(tmp_path / "secret.png")
    sha = {"a": hashlib.sha256(b"figure a").hexdigest(), "out": "0" * 64}
    with Manifest.load(shard, create=True) as m:
        m.add_record(Record(id="r1", stage="extracted"))
        for name in ("a", "out"):
            m.add_image(
                Image(id=f"r1/{name}", record_id="r1", path=f"images/r1/{name}.png",
                      sha256=sha[name], width=1, height=1)
            )  # fmt: skip
        m.save()
    result = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        f"warning: {shard / 'images'}: a folder link out of its run (to {disk.resolve()}); "
        "1 file the rows name under it brought from there",
        "merged 1 run: 1 record, 2 images added",
    ]
    assert (out / "images" / "r1" / "a.png").read_bytes() == b"figure a"
    assert (disk / "r1" / "a.png").stat().st_nlink == 1  # a copy
    assert not (out / "images" / "r1").is_symlink() and not (out / "images").is_symlink()
    assert not (out / "images" / "r1" / "out.png").exists()
    assert sorted(p.name for p in (out / "images" / "r1").iterdir()) == ["a.png"]


def test_merge_leaves_files_under_a_linked_folder_behind_unless_the_row_hash_matches(
    tmp_path: Path,
) -> None:
    """A hostile shard: ``images`` a link to the user's ``~/.ssh``, ``pdfs`` a link to
    ``/etc``-like folder, rows naming ``images/id_rsa`` and ``pdfs/passwd`` (review 1 of
    c5676e4: merge copied both into the output, hard-linked, exit 0, a warning after).
    Without the row's sha256 matching the bytes, nothing out there is brought, and the line
    says so."""
    from histocore.manifest import Image

    shard, home, etc, out = (tmp_path / n for n in ("shard", "ssh", "etc", "out"))
    for d in (shard, home, etc):
        d.mkdir()
    (home / "id_rsa").write_bytes(b"-----BEGIN PRIVATE KEY-----")
    (etc / "passwd").write_bytes(b"root:x:0:0")
    (shard / "images").symlink_to(home, target_is_directory=True)
    (shard / "pdfs").symlink_to(etc, target_is_directory=True)
    with Manifest.load(shard, create=True) as m:
        m.add_record(Record(id="pmid:1", pmid="1", stage="downloaded", pdf_path="pdfs/passwd"))
        m.add_image(
            Image(id="pmid:1/k", record_id="pmid:1", path="images/id_rsa", sha256="0" * 64,
                  width=1, height=1)
        )  # fmt: skip
        m.save()
    result = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "images" / "id_rsa").exists() and not (out / "pdfs" / "passwd").exists()
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("1 file left behind" in w for w in warnings), warnings
    assert (home / "id_rsa").stat().st_nlink == 1 and (etc / "passwd").stat().st_nlink == 1


def test_merge_refuses_one_image_id_for_two_records(tmp_path: Path) -> None:
    """Shards (hand-edited) whose image rows share an id across records: the second
    replaced the first, labelled one silently ('2 images added', 1 in the output, its file
    linked in unnamed). One error line now, before anything is written."""
    from histocore.manifest import Image

    for name, rid in (("a", "pmid:1"), ("b", "pmid:2")):
        run = tmp_path / name
        (run / "images").mkdir(parents=True)
        (run / "images" / f"{name}.png").write_bytes(f"figure of {name}".encode())
        with Manifest.load(run, create=True) as m:
            m.add_record(Record(id=rid, stage="filtered"))
            m.add_image(
                Image(id="fig", record_id=rid, path=f"images/{name}.png", sha256=name * 64,
                      width=1, height=1, label="metastasis")
            )  # fmt: skip
            m.save()
    out = tmp_path / "out"
    result = runner.invoke(app, ["merge", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'b'}: image id 'fig' of record pmid:2 is also an image of record "
        f"pmid:1 (in {tmp_path / 'a'}); nothing merged"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("queries", 5, "header 'queries' is 5, expected a list of text"),
        ("queries", "abc", "header 'queries' is 'abc', expected a list of text"),
        ("merged_from", 7, "header 'merged_from' is 7, expected a list of text"),
        ("query", 5, "header 'query' is 5, expected text"),
    ],
)
def test_merge_of_a_shard_with_a_hostile_header_is_one_line(tmp_path, key, value, said) -> None:
    """A hand-edited header: 'queries': 5 ended in TypeError: Value after * must be an
    iterable; 'abc' became the queries 'a', 'b' and 'c' of the merged run."""
    import sqlite3

    from run_factory import make_run, searched

    shard = make_run(tmp_path / "shard", searched("1"))
    with sqlite3.connect(shard / "run.sqlite") as db:
        db.execute("INSERT OR REPLACE INTO header VALUES (?, ?)", (key, json.dumps(value)))
    db.close()
    out = tmp_path / "out"
    result = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"error: {shard / 'run.sqlite'}: {said}"
    assert not out.exists()


@pytest.mark.parametrize("b_first", [False, True])
def test_a_row_whose_file_is_left_behind_never_names_another_articles_file(
    tmp_path: Path, b_first: bool
) -> None:
    """Review 2 of f889285: run ``a`` holds ``x_1`` with ``pdfs/x_1.pdf``; shard ``b``'s
    ``x:1`` names ``pdfs/x_1.pdf`` under a ``pdfs`` link pointing out, with no
    ``pdf_sha256``: it was left behind and its row named ``x_1``'s PDF in the output."""
    a, b, elsewhere, out = (tmp_path / n for n in ("a", "b", "elsewhere", "out"))
    (a / "pdfs").mkdir(parents=True)
    (a / "pdfs" / "x_1.pdf").write_bytes(b"%PDF-1.4 x_1's article")
    elsewhere.mkdir()
    (elsewhere / "x_1.pdf").write_bytes(b"%PDF-1.4 x:1's article")
    b.mkdir()
    (b / "pdfs").symlink_to(elsewhere, target_is_directory=True)
    with Manifest.load(a, create=True) as m:
        m.add_record(Record(id="x_1", stage="downloaded", pdf_path="pdfs/x_1.pdf"))
        m.save()
    with Manifest.load(b, create=True) as m:
        m.add_record(Record(id="x:1", stage="downloaded", pdf_path="pdfs/x_1.pdf"))
        m.save()
    merge_runs([b, a] if b_first else [a, b], out)  # review 5: [b, a] still named it
    with Manifest.load(out) as m:
        mine, theirs = m.records["x_1"].pdf_path, m.records["x:1"].pdf_path
    assert mine and theirs and mine != theirs
    assert (out / mine).read_bytes() == b"%PDF-1.4 x_1's article"
    assert not (out / theirs).exists()


@pytest.mark.parametrize("b_first", [False, True])
@pytest.mark.parametrize("b_has_file", [True, False])
def test_two_rows_whose_paths_differ_by_dotdot_never_name_one_file(
    tmp_path: Path, b_first: bool, b_has_file: bool
) -> None:
    """Run ``a``'s ``x_1`` names ``pdfs/x_1.pdf``; shard ``b``'s ``x:1`` names
    ``pdfs/../pdfs/x_1.pdf``, the same name spelt with ``..``. Its row was kept as it was,
    neither brought nor reserved, so in the output it named ``x_1``'s PDF. Paths are taken
    in their normal form now: ``x:1``'s file is brought under a free name, or, when it is
    missing in ``b``, its row gets a name no file of another row's is at."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    _run_with_pdf(a, Record(id="x_1", stage="downloaded", pdf_path="pdfs/x_1.pdf"), b"%PDF a")
    _run_with_pdf(b, Record(id="x:1", stage="downloaded", pdf_path="pdfs/x_1.pdf"), b"%PDF b")
    with Manifest.load(b) as m:
        m.records["x:1"].pdf_path = "pdfs/../pdfs/x_1.pdf"
        m.save()
    if not b_has_file:
        (b / "pdfs" / "x_1.pdf").unlink()
    merge_runs([b, a] if b_first else [a, b], out)
    with Manifest.load(out) as m:
        mine, theirs = m.records["x_1"].pdf_path, m.records["x:1"].pdf_path
    assert mine and theirs and os.path.normpath(mine) != os.path.normpath(theirs), theirs
    assert ".." not in theirs, theirs
    assert (out / mine).read_bytes() == b"%PDF a"
    if b_has_file:
        assert (out / theirs).read_bytes() == b"%PDF b"
    else:
        assert not (out / theirs).exists()


def test_a_path_out_of_its_run_that_leads_into_the_output_names_no_file_there(
    tmp_path: Path,
) -> None:
    """Shard ``b``'s ``x:1`` names ``../out/pdfs/x_1.pdf``: outside ``b``, so never read or
    linked, but from the output folder ``out`` it is ``out/pdfs/x_1.pdf``, the file brought
    for ``a``'s ``x_1``. It gets a name kept from other rows' files; a path leading out
    elsewhere is kept as it is."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    _run_with_pdf(a, Record(id="x_1", stage="downloaded", pdf_path="pdfs/x_1.pdf"), b"%PDF a")
    with Manifest.load(b, create=True) as m:
        m.add_record(Record(id="x:1", stage="downloaded", pdf_path="../out/pdfs/x_1.pdf"))
        m.add_record(Record(id="x:2", stage="downloaded", pdf_path="../elsewhere/x_2.pdf"))
        m.save()
    merge_runs([a, b], out)
    with Manifest.load(out) as m:
        paths = {rid: rec.pdf_path for rid, rec in m.records.items()}
    assert paths["x_1"] == "pdfs/x_1.pdf" and paths["x:2"] == "../elsewhere/x_2.pdf"
    theirs = paths["x:1"]
    assert theirs and ".." not in theirs and theirs != "pdfs/x_1.pdf", theirs
    assert not (out / theirs).exists()


def test_an_output_rows_dotdot_path_is_kept_from_files_brought_later(tmp_path: Path) -> None:
    """The output's own ``x:1`` names ``pdfs/../pdfs/x_1.pdf``, its file missing: the names
    its rows held were compared as spelt, so ``a``'s ``x_1`` PDF was brought to
    ``pdfs/x_1.pdf``, the file ``x:1``'s row names. It goes under a free name."""
    a, out = tmp_path / "a", tmp_path / "out"
    _run_with_pdf(a, Record(id="x_1", stage="downloaded", pdf_path="pdfs/x_1.pdf"), b"%PDF a")
    with Manifest.load(out, create=True) as m:
        m.add_record(Record(id="x:1", stage="downloaded", pdf_path="pdfs/../pdfs/x_1.pdf"))
        m.save()
    merge_runs([a], out)
    with Manifest.load(out) as m:
        assert m.records["x:1"].pdf_path == "pdfs/../pdfs/x_1.pdf"  # the output's: as it is
        mine = m.records["x_1"].pdf_path
    assert mine == "pdfs/x_1-2.pdf" and (out / mine).read_bytes() == b"%PDF a"
    assert not (out / "pdfs" / "x_1.pdf").exists()


@pytest.mark.parametrize(
    ("where", "b_first"),
    [
        ("output ../out", False),
        ("output absolute", False),
        ("output file link", False),
        ("shard ../alias", False),
        ("shard ../alias", True),
        ("shard absolute", False),
        ("shard absolute", True),
    ],
)
def test_a_row_path_landing_in_the_output_another_way_never_names_another_articles_file(
    tmp_path: Path, where: str, b_first: bool
) -> None:
    """Row paths were reserved by their normal form alone, so a row landing in the output
    another way named the file brought for ``a``'s ``x_1`` (``pdfs/x_1.pdf``): the
    output's own ``x:1`` naming ``../out/pdfs/x_1.pdf`` or ``<tmp>/out/pdfs/x_1.pdf`` (its
    file missing) or ``pdfs/y.pdf``, a link there to ``x_1.pdf``, or a shard's naming
    ``../alias/pdfs/x_1.pdf`` (``alias`` a link beside the output to it) or the absolute
    path. Each row path is now also taken where opening
    it lands in the output (links resolved): that name is kept from files brought."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    _run_with_pdf(a, Record(id="x_1", stage="downloaded", pdf_path="pdfs/x_1.pdf"), b"%PDF a")
    out.mkdir()
    (tmp_path / "alias").symlink_to("out", target_is_directory=True)
    path = {
        "output ../out": "../out/pdfs/x_1.pdf",
        "output absolute": str(out / "pdfs" / "x_1.pdf"),
        "output file link": "pdfs/y.pdf",
        "shard ../alias": "../alias/pdfs/x_1.pdf",
        "shard absolute": str(out / "pdfs" / "x_1.pdf"),
    }[where]
    (out / "pdfs").mkdir()
    (out / "pdfs" / "y.pdf").symlink_to("x_1.pdf")  # dangling until x_1.pdf is there
    with Manifest.load(out if where.startswith("output") else b, create=True) as m:
        m.add_record(Record(id="x:1", stage="downloaded", pdf_path=path))
        m.save()
    inputs = [a] if where.startswith("output") else ([b, a] if b_first else [a, b])
    merge_runs(inputs, out)
    with Manifest.load(out) as m:
        mine = m.resolve(str(m.records["x_1"].pdf_path))
        theirs = m.resolve(str(m.records["x:1"].pdf_path))
    assert mine.read_bytes() == b"%PDF a"
    assert not theirs.exists() and os.path.realpath(theirs) != os.path.realpath(mine)


def test_rows_naming_one_missing_file_get_names_of_their_own_in_order(tmp_path: Path) -> None:
    """Rows whose file is missing, all naming ``pdfs/m.pdf``, each get a name of their own
    in order, past names the output holds files at or its rows name (the next free name is
    now remembered per name, not looked for from ``-2`` each time: 1,500 such rows took
    104 s)."""
    s, out = tmp_path / "s", tmp_path / "out"
    with Manifest.load(out, create=True) as m:
        m.add_record(Record(id="o:1", stage="downloaded", pdf_path="pdfs/m-4.pdf"))
        m.save()
    (out / "pdfs").mkdir()
    (out / "pdfs" / "m-2.pdf").write_bytes(b"%PDF out")
    with Manifest.load(s, create=True) as m:
        for i in range(5):
            m.add_record(Record(id=f"r:{i}", stage="downloaded", pdf_path="pdfs/m.pdf"))
        m.save()
    merge_runs([s], out)
    with Manifest.load(out) as m:
        got = [m.records[f"r:{i}"].pdf_path for i in range(5)]
    assert got == [f"pdfs/m{n}.pdf" for n in ("", "-3", "-5", "-6", "-7")]


@pytest.mark.parametrize("t_first", [False, True])
@pytest.mark.parametrize("spelt", ["absolute", "../out"])
def test_a_shard_path_naming_a_file_in_the_output_no_row_names_is_kept(
    tmp_path: Path, spelt: str, t_first: bool
) -> None:
    """A shard's local PDF named by its absolute path into the output folder, at a file
    there no row names (``/abs/out/local/paper.pdf``), was rewritten to
    ``local/paper-2.pdf``, naming nothing. Now the row keeps its path, as local PDFs do,
    and that name is kept from files brought after it: another shard's file at
    ``local/paper.pdf`` goes to a free name."""
    s, t, out = tmp_path / "s", tmp_path / "t", tmp_path / "out"
    (out / "local").mkdir(parents=True)
    (out / "local" / "paper.pdf").write_bytes(b"%PDF local")
    path = {"absolute": str(out / "local" / "paper.pdf"), "../out": "../out/local/paper.pdf"}
    with Manifest.load(s, create=True) as m:
        m.add_record(Record(id="p1", stage="downloaded", pdf_path=path[spelt]))
        m.save()
    _run_with_pdf(t, Record(id="p2", stage="downloaded", pdf_path="local/paper.pdf"), b"%PDF t")
    merge_runs([t, s] if t_first else [s, t], out)
    with Manifest.load(out) as m:
        assert m.records["p1"].pdf_path == path[spelt]
        assert m.records["p2"].pdf_path == "local/paper-2.pdf"
    assert (out / "local" / "paper.pdf").read_bytes() == b"%PDF local"
    assert (out / "local" / "paper-2.pdf").read_bytes() == b"%PDF t"


@pytest.mark.parametrize("spelt", ["absolute", "../out"])
def test_a_shard_path_naming_the_outputs_own_file_is_never_kept(tmp_path: Path, spelt: str) -> None:
    """A shard row naming the output's run.sqlite, manifest.jsonl or review log by a path
    into the output (``../out/run.sqlite``, ``/abs/out/review_log.jsonl``) kept that path,
    as a local PDF there no row names: the row named the output's own file. Now such a row
    gets a free name, as before that was kept."""
    out, a = tmp_path / "out", tmp_path / "a"
    with Manifest.load(out, create=True) as m:
        m.add_record(Record(id="o:1", stage="downloaded"))
        m.save()
    (out / "review_log.jsonl").write_text("")
    own = ["run.sqlite", MANIFEST_NAME, "review_log.jsonl"]
    top = {"absolute": str(out), "../out": "../out"}[spelt]
    with Manifest.load(a, create=True) as m:
        for i, name in enumerate(own):
            assert (out / name).is_file()
            m.add_record(Record(id=f"a:{i}", stage="downloaded", pdf_path=f"{top}/{name}"))
        m.save()
    merge_runs([a], out)
    with Manifest.load(out) as m:
        got = [str(m.records[f"a:{i}"].pdf_path) for i in range(len(own))]
    assert got == ["run-2.sqlite", "manifest-2.jsonl", "review_log-2.jsonl"]


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../out/" + "a" * 300, "file name too long"),
        ("pdfs/" + "a" * 300, "file name too long"),
        ("pdfs\x00/x.pdf", "a NUL character"),
        *(
            (path, "a character the file system cannot encode")
            for path in (
                "pdfs/\ud800.pdf",
                "pdfs\ud800/x.pdf",
                "../\ud800.pdf",
                "/tmp/\ud800/x.pdf",
            )
        ),
    ],
    ids=[
        "too long via ../out",
        "too long in the run",
        "NUL",
        "surrogate in the run",
        "surrogate folder",
        "surrogate via ..",
        "surrogate absolute",
    ],
)
def test_a_row_path_that_cannot_be_looked_up_is_left_behind_and_the_merge_completes(
    tmp_path: Path, path: str, why: str
) -> None:
    """A shard row naming ``../out/<300 characters>`` (``out`` the output), or
    ``pdfs/<300 characters>``, stopped the merge with ``error: out/aaa…: file name too
    long`` once the output held the shard's other PDF but no run.sqlite or manifest.jsonl;
    one with a NUL character was a ValueError traceback, and so was one with a lone
    surrogate (``"\\ud800"`` in a hand-edited manifest.jsonl: UnicodeEncodeError), also
    in a second merge into an output holding such a row. Such a row keeps its path, its
    file left behind with a warning, as a row whose file the merge cannot bring, and the
    merge completes."""
    from histocore.io import one_line

    b, out = tmp_path / "b", tmp_path / "out"
    _run_with_pdf(b, Record(id="x:0", stage="downloaded", pdf_path="pdfs/x.pdf"), b"%PDF b")
    with Manifest.load(b) as m:
        m.add_record(Record(id="r:1", stage="downloaded", pdf_path=path))
        m.save()
    r = runner.invoke(app, ["merge", str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    shown = one_line(path[:60]) + (f"… ({len(path)} characters)" if len(path) > 60 else "")
    assert r.stderr == (
        f"warning: {b}: 1 file the rows name left behind, its path not usable here (first: "
        f"{shown}: {why}); the rows keep the paths as they are\n"
    )
    assert "merged 1 run: 2 records added" in r.stdout, r.output
    with Manifest.load(out) as m:
        assert m.records["r:1"].pdf_path == path
        assert (out / str(m.records["x:0"].pdf_path)).read_bytes() == b"%PDF b"
    assert (out / MANIFEST_NAME).is_file()
    again = runner.invoke(app, ["merge", str(b), "--out", str(out)])  # the output's own row
    assert again.exit_code == 0 and "nothing new added" in again.stdout, again.output


@pytest.mark.parametrize(
    "path", ["pdfs/\ud800.pdf", "pdfs\ud800/x.pdf", "../\ud800.pdf", "/tmp/\ud800/x.pdf"]
)
def test_an_output_holding_a_row_path_with_a_lone_surrogate_can_be_merged_into(
    tmp_path: Path, path: str
) -> None:
    """An output one of whose rows names a path with a lone surrogate (``"\\ud800"`` in a
    hand-edited manifest.jsonl) could not be merged into at all: looking its rows' paths
    up (the names they hold, the folders part files are removed from) was a
    UnicodeEncodeError traceback. Such a path is never looked up: the row keeps it and the
    shard's PDF is brought."""
    b, out = tmp_path / "b", tmp_path / "out"
    _run_with_pdf(b, Record(id="x:0", stage="downloaded", pdf_path="pdfs/x.pdf"), b"%PDF b")
    with Manifest.load(out, create=True) as m:
        m.add_record(Record(id="r:1", stage="downloaded", pdf_path=path))
        m.save()
    r = runner.invoke(app, ["merge", str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "merged 1 run: 1 record added" in r.stdout, r.output
    with Manifest.load(out) as m:
        assert m.records["r:1"].pdf_path == path
        assert (out / str(m.records["x:0"].pdf_path)).read_bytes() == b"%PDF b"


@pytest.mark.parametrize(
    "base", ["a" * 251 + ".pdf", "x." + "b" * 253], ids=["long stem", "long suffix"]
)
def test_a_row_whose_numbered_name_would_be_too_long_gets_a_shortened_one(
    tmp_path: Path, base: str
) -> None:
    """A legal 255-byte name (``pdfs/<251 a>.pdf``) held by the output, by shard a with
    other bytes and by shard b missing its file: the numbered names (``<stem>-2.pdf``, 257
    bytes) were too long to look up, so both shard rows kept the path, naming the output's
    article's file. Now the stem is cut so the numbered name fits (then the suffix, where
    a one-character stem is not enough): a's file is brought under its own name, b's row
    gets a name of its own, and no two rows name one file."""
    name = "pdfs/" + base
    out, a, b = tmp_path / "out", tmp_path / "a", tmp_path / "b"
    _run_with_pdf(out, Record(id="o:1", stage="downloaded", pdf_path=name), b"%PDF o")
    _run_with_pdf(a, Record(id="a:1", stage="downloaded", pdf_path=name), b"%PDF a")
    with Manifest.load(b, create=True) as m:
        m.add_record(Record(id="b:1", stage="downloaded", pdf_path=name))
        m.save()
    r = runner.invoke(app, ["merge", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith(f"warning: {b}: 1 file the rows name is not there (first: b:1: ")
    with Manifest.load(out) as m:
        got = {rid: str(m.records[rid].pdf_path) for rid in ("o:1", "a:1", "b:1")}
    assert got["o:1"] == name and len(set(got.values())) == 3, got
    assert (out / got["o:1"]).read_bytes() == b"%PDF o"
    assert (out / got["a:1"]).read_bytes() == b"%PDF a"
    assert not (out / got["b:1"]).exists()
    for path in got.values():
        assert path.startswith(f"pdfs/{base[0]}") and len(os.fsencode(Path(path).name)) <= 255


@pytest.mark.parametrize("b_first", [False, True])
def test_a_file_where_a_rows_folder_would_be_leaves_that_file_behind(
    tmp_path: Path, b_first: bool
) -> None:
    """Shard a holds ``pdfs/x.pdf``, shard b a row and file ``pdfs/x.pdf/y.pdf``: merging
    a then b stopped with ``error: out/pdfs/x.pdf: file exists``, the output holding a
    PDF but no run.sqlite or manifest.jsonl. Now b's file is left behind, its row keeping
    its path, with the warning of a path not usable here; b first, a's file gets a free
    name as before."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    _run_with_pdf(a, Record(id="a:1", stage="downloaded", pdf_path="pdfs/x.pdf"), b"%PDF a")
    _run_with_pdf(b, Record(id="b:1", stage="downloaded", pdf_path="pdfs/x.pdf/y.pdf"), b"%PDF b")
    r = runner.invoke(app, ["merge", *map(str, [b, a] if b_first else [a, b]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "merged 2 runs: 2 records added" in r.stdout
    with Manifest.load(out) as m:
        got = {rid: str(m.records[rid].pdf_path) for rid in ("a:1", "b:1")}
    assert (out / got["a:1"]).read_bytes() == b"%PDF a"
    if b_first:
        assert r.stderr == "" and (out / got["b:1"]).read_bytes() == b"%PDF b"
    else:
        assert got["b:1"] == "pdfs/x.pdf/y.pdf"
        assert r.stderr == (
            f"warning: {b}: 1 file the rows name left behind, its path not usable here (first: "
            "pdfs/x.pdf/y.pdf: pdfs/x.pdf in the output: is a file, not a folder); the rows "
            "keep the paths as they are\n"
        )
    assert (out / MANIFEST_NAME).is_file()


def test_a_row_path_under_a_name_of_the_runs_own_files_is_left_behind(tmp_path: Path) -> None:
    """A shard row and file ``review_log.jsonl/x.pdf`` was brought to
    ``out/review_log.jsonl/x.pdf``, making the output's review log a folder: every later
    merge failed and the review page could not log. A row path under a name of the run's
    own files is now left behind, its row keeping its path, with the warning of a file
    where a folder of it would be; the output's file stays a file."""
    a, out, top = tmp_path / "a", tmp_path / "out", "review_log.jsonl"
    rel = f"{top}/x.pdf"
    _run_with_pdf(a, Record(id="a:1", stage="downloaded", pdf_path=rel), b"%PDF a")
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "merged 1 run: 1 record added" in r.stdout
    assert (
        f"warning: {a}: 1 file the rows name left behind, its path not usable here (first: "
        f"{rel}: {top} in the output: the run's own file, not a folder); the rows keep the "
        "paths as they are\n"
    ) in r.stderr, r.stderr
    with Manifest.load(out) as m:
        assert m.records["a:1"].pdf_path == rel
    assert not (out / top).is_dir()
    (out / "review_log.jsonl").touch()
    again = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert again.exit_code == 0 and "nothing new added" in again.stdout, again.output


def _one_decided_image(m: Manifest, rid: str) -> None:
    """A decided image of ``rid`` (its file absent: an 'unreadable' tile), so that filter
    has a row to show: it writes no contact sheet with nothing to show."""
    m.add_image(
        Image(id=f"{rid}/fig", record_id=rid, path="images/decided.png", sha256="0" * 64,
              width=1, height=1, kept=True)
    )  # fmt: skip


@pytest.mark.parametrize("spelt", ["sheets/kept-001.jpg", "pdfs/../sheets/kept-001.jpg"])
def test_a_row_file_under_sheets_is_brought_outside_it(tmp_path: Path, spelt: str) -> None:
    """A shard row and file ``sheets/kept-001.jpg`` was brought to that path in the output,
    whose ``sheets/`` is filter's: the next filter deleted it and wrote its first contact
    sheet there, the row naming it. Another shard's row ``../out/sheets/kept-001.jpg``
    kept its path, naming the output's contact sheet. Now a file under ``sheets/`` goes to
    ``sheets-2/`` (its row rewritten) and a row naming a file under the output's
    ``sheets/`` gets a free name outside it: after a filter each row names its own bytes
    or no file."""
    from histofetch.sheets import write_filter_sheets

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    with Manifest.load(out, create=True) as m:
        m.add_record(Record(id="o:1", stage="downloaded"))
        _one_decided_image(m, "o:1")
        m.save()
        write_filter_sheets(m)  # the output's contact sheets: sheets/kept-001.jpg, …
    sheet = (out / "sheets" / "kept-001.jpg").read_bytes()
    _run_with_pdf(a, Record(id="a:1", stage="downloaded", pdf_path=spelt), b"%PDF a")
    with Manifest.load(b, create=True) as m:
        m.add_record(Record(id="b:1", stage="downloaded", pdf_path="../out/sheets/kept-001.jpg"))
        m.save()
    r = runner.invoke(app, ["merge", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0 and r.stderr == "", r.output
    with Manifest.load(out) as m:
        got = {rid: str(m.records[rid].pdf_path) for rid in ("a:1", "b:1")}
        assert got == {"a:1": "sheets-2/kept-001.jpg", "b:1": "sheets-2/kept-001-2.jpg"}
        write_filter_sheets(m)  # the next filter
    assert (out / got["a:1"]).read_bytes() == b"%PDF a"
    assert not (out / got["b:1"]).exists()
    assert (out / "sheets" / "kept-001.jpg").read_bytes() == sheet


@pytest.mark.parametrize("target", ["sheets", "sheets/sub", "ABS"])
def test_a_folder_link_of_the_output_into_sheets_is_traced(tmp_path: Path, target: str) -> None:
    """`ln -s sheets OUT/figs`: a shard file brought to `figs/x.pdf` landed in `sheets/`
    through the link, where the next filter deletes what it names `kept*`; a row naming a
    missing `figs/kept-001.jpg` named the output's contact sheet. The destination's real
    path is taken: under `sheets/` it goes to `sheets-2/` as a `sheets/` path does."""
    from histofetch.sheets import write_filter_sheets

    a, out = tmp_path / "a", tmp_path / "out"
    with Manifest.load(out, create=True) as m:
        m.add_record(Record(id="o:1", stage="downloaded"))
        _one_decided_image(m, "o:1")
        m.save()
        write_filter_sheets(m)  # the output's contact sheets: sheets/kept-001.jpg, …
    sheet = (out / "sheets" / "kept-001.jpg").read_bytes()
    (out / "sheets" / "sub").mkdir()
    link = out / "figs"
    link.symlink_to(out / "sheets" if target == "ABS" else target, target_is_directory=True)
    inside = "sub/" if target == "sheets/sub" else ""
    _run_with_pdf(a, Record(id="a:1", stage="downloaded", pdf_path="figs/kept-002.jpg"), b"A")
    with Manifest.load(a) as m:
        m.add_record(Record(id="a:2", stage="downloaded", pdf_path="figs/kept-001.jpg"))
        m.save()
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert r.exit_code == 0, r.output
    with Manifest.load(out) as m:
        got = {rid: str(m.records[rid].pdf_path) for rid in ("a:1", "a:2")}
        assert got == {
            "a:1": f"sheets-2/{inside}kept-002.jpg",
            "a:2": f"sheets-2/{inside}kept-001.jpg",
        }
        write_filter_sheets(m)  # the next filter
    assert (out / got["a:1"]).read_bytes() == b"A"
    assert not (out / got["a:2"]).exists()
    assert not (out / "sheets" / inside / "kept-002.jpg").exists()
    assert (out / "sheets" / "kept-001.jpg").read_bytes() == sheet


@pytest.mark.parametrize("sheets_first", [True, False])
def test_a_row_file_named_sheets_gets_a_free_name(tmp_path: Path, sheets_first: bool) -> None:
    """A shard row and file named ``sheets`` was brought as a file ``out/sheets``: the next
    filter failed with ``File exists`` making its contact sheets folder. Now it gets a free
    name, never ``sheets`` nor the folder another shard's ``sheets/`` files go to."""
    from histofetch.sheets import write_filter_sheets

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    _run_with_pdf(a, Record(id="a:1", stage="downloaded", pdf_path="sheets"), b"%PDF a")
    _run_with_pdf(b, Record(id="b:1", stage="downloaded", pdf_path="sheets/x.pdf"), b"%PDF b")
    r = runner.invoke(
        app, ["merge", *map(str, [a, b] if sheets_first else [b, a]), "--out", str(out)]
    )
    assert r.exit_code == 0 and r.stderr == "", r.output
    with Manifest.load(out) as m:
        got = {rid: str(m.records[rid].pdf_path) for rid in ("a:1", "b:1")}
        assert got == {"a:1": "sheets-2-2", "b:1": "sheets-2/x.pdf"}
        _one_decided_image(m, "b:1")
        write_filter_sheets(m)  # the next filter makes its folder
    assert (out / got["a:1"]).read_bytes() == b"%PDF a"
    assert (out / got["b:1"]).read_bytes() == b"%PDF b"
    assert (out / "sheets" / "kept-001.jpg").is_file()


def test_a_plain_row_path_naming_the_runs_own_file_gets_a_free_name(tmp_path: Path) -> None:
    """A shard row naming ``run.sqlite``, ``review_log.jsonl`` or ``manifest.jsonl`` (or
    ``run.sqlite/../manifest.jsonl``) kept that path: the row named the output's own file
    (its store, its manifest, its review log once the review page writes one). So did one
    naming ``../out/review_log.jsonl`` while the output had no review log yet. Now each
    gets a free name, naming no file; the shard's own files are never linked."""
    a, out = tmp_path / "a", tmp_path / "out"
    paths = [
        "run.sqlite",
        "review_log.jsonl",
        "manifest.jsonl",
        "run.sqlite/../manifest.jsonl",
        "../out/review_log.jsonl",
    ]
    with Manifest.load(a, create=True) as m:
        for i, path in enumerate(paths):
            m.add_record(Record(id=f"a:{i}", stage="downloaded", pdf_path=path))
        m.save()
    (a / "review_log.jsonl").write_text("")
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert r.exit_code == 0 and r.stderr == "", r.output
    with Manifest.load(out) as m:
        got = [str(m.records[f"a:{i}"].pdf_path) for i in range(len(paths))]
    assert got == [
        "run-2.sqlite",
        "review_log-2.jsonl",
        "manifest-2.jsonl",
        "manifest-3.jsonl",
        "review_log-3.jsonl",
    ]
    assert not any((out / path).exists() for path in got)


def test_a_row_path_naming_the_runs_export_file_gets_a_free_name(tmp_path: Path) -> None:
    """A shard row naming ``export.csv`` or ``export.parquet`` (``histofetch export``'s
    default outputs) kept that path, the shard's export file linked in as the row's: the
    next ``export`` of the merged run overwrote the row's file. Now each gets a free name
    naming no file, as ``run.sqlite`` does."""
    a, out = tmp_path / "a", tmp_path / "out"
    paths = ["export.csv", "export.parquet", "pdfs/../export.csv"]
    with Manifest.load(a, create=True) as m:
        for i, path in enumerate(paths):
            m.add_record(Record(id=f"a:{i}", stage="downloaded", pdf_path=path))
        m.save()
    (a / "export.csv").write_text("kind,id\n")
    (a / "export.parquet").write_bytes(b"PAR1")
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert r.exit_code == 0 and r.stderr == "", r.output
    with Manifest.load(out) as m:
        got = [str(m.records[f"a:{i}"].pdf_path) for i in range(len(paths))]
    assert got == ["export-2.csv", "export-2.parquet", "export-3.csv"]
    assert not any((out / path).exists() for path in [*got, "export.csv", "export.parquet"])


def test_merge_carries_the_inputs_review_logs_into_the_outputs(tmp_path: Path) -> None:
    """A merged run had no review_log.jsonl: who labelled what in the shards was lost. Now
    the inputs' logs are added to the output's in input order, each line as it was, lines
    that are not JSON objects left out with one warning naming the log; a second merge adds
    nothing again, and the review page goes on appending to the merged log."""
    from histofetch.review.data import LOG_NAME, save_answer

    a = _labelled_run(tmp_path / "a", "r1", [("fig1", "metastasis"), ("fig2", "no_metastasis")])
    b = _labelled_run(tmp_path / "b", "r2", [("fig1", "metastasis")])
    a_lines = (a / LOG_NAME).read_text().splitlines()
    (b_line,) = (b / LOG_NAME).read_text().splitlines()
    with (b / LOG_NAME).open("a") as fh:  # a torn line, a JSON number, a last line unended
        fh.write('{"image_id": "r2/fi\n7\n\n{"image_id": "r2/fig2", "label": null}')
    out = tmp_path / "out"
    r = runner.invoke(app, ["merge", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"warning: {b / LOG_NAME}: 2 lines not JSON objects (first: line 2) left out " in (
        r.output
    )
    assert "merged 2 runs: 2 records, 4 images added, 4 review log lines carried\n" in r.output
    merged = (out / LOG_NAME).read_text()
    assert merged == "\n".join([*a_lines, b_line, '{"image_id": "r2/fig2", "label": null}']) + "\n"
    assert (out / LOG_NAME).stat().st_nlink == 1 and (a / LOG_NAME).stat().st_nlink == 1
    again = runner.invoke(app, ["merge", str(a), str(b), "--out", str(out)])
    assert again.exit_code == 0 and (out / LOG_NAME).read_text() == merged, again.output
    with Manifest.load(out) as m:  # the review page appends to the merged log as to its own
        save_answer(m, "r1/fig1", "not_usable", "cy")
    lines = (out / LOG_NAME).read_text().splitlines()
    assert [json.loads(x)["image_id"] for x in lines] == [
        "r1/fig1", "r1/fig2", "r2/fig1", "r2/fig2", "r1/fig1"
    ]  # fmt: skip


def test_merge_carries_only_the_answers_about_what_it_added(tmp_path: Path) -> None:
    """A shard reviewed further after a first merge: the second merge kept the output's
    record as it was (its label not changed) but carried the new answer, so the log said
    'no_metastasis' where the store holds 'metastasis', and the summary said 'nothing new
    added'. The same went for the answers about a record another input's copy of was taken
    and about an image left out as a duplicate. Now only the lines about the images this
    merge added from each input are carried (and those of a duplicate left out for one of
    them with no label of its own), and the summary counts them."""
    from histocore.manifest import Image
    from histofetch.review.data import LOG_NAME, save_answer

    a = _labelled_run(tmp_path / "a", "r1", [("fig1", "metastasis")])
    first = (a / LOG_NAME).read_text()
    out = tmp_path / "out"
    assert merge_runs([a], out).log_lines == 1
    with Manifest.load(a) as m:
        save_answer(m, "r1/fig1", "no_metastasis", "ann")
    summary = merge_runs([a], out)
    assert summary.log_lines == 0 and (out / LOG_NAME).read_text() == first
    assert summary.line() == (
        "merged 1 run: nothing new added (1 run merged into it before, 1 record already in the "
        "output)"
    )
    copy = Path(shutil.copytree(a, tmp_path / "copy"))  # r1 again: a's copy is taken
    with Manifest.load(copy) as m:
        save_answer(m, "r1/fig2", "metastasis", "bob")
    c = _labelled_run(tmp_path / "c", "r3", [("fig1", "metastasis")])
    with Manifest.load(c) as m:  # r3/fig3: r1/fig1's bytes, left out as a duplicate
        m.add_image(
            Image(id="r3/fig3", record_id="r3", path="images/r3_fig3.png", width=9, height=9,
                  sha256=hashlib.sha256(b"r1/fig1").hexdigest(), kept=True)
        )  # fmt: skip
        m.save()
        save_answer(m, "r3/fig3", "no_metastasis", "cy")
    new = tmp_path / "new"
    summary = merge_runs([a, copy, c], new)
    assert summary.line() == (
        "merged 3 runs: 2 records, 4 images added, 3 review log lines carried (1 duplicate "
        "record and 1 duplicate image left out; 1 review answer about the image not "
        "carried)"
    )  # r1/fig1, the copy kept, labelled itself: its answers stand, r3/fig3's are counted
    lines = [json.loads(x) for x in (new / LOG_NAME).read_text().splitlines()]
    assert [(x["image_id"], x["reviewer"]) for x in lines] == [
        ("r1/fig1", "ann"), ("r1/fig1", "ann"), ("r3/fig1", "ann")
    ]  # fmt: skip


def test_merge_never_reads_an_input_review_log_that_is_a_fifo_or_a_link(tmp_path: Path) -> None:
    """A shard's review_log.jsonl as a FIFO would hang the merge, as a link to a file of
    the user's would copy it into an output meant to be shared: neither is read, and the
    command says so; an output whose own log is a link is refused before anything is
    written."""
    out, shard, fifo_shard = tmp_path / "out", tmp_path / "shard", tmp_path / "fifo"
    _run_with_pdf(shard, Record(id="pmid:1", pmid="1", pdf_path="pdfs/a.pdf"), b"%PDF a")
    _run_with_pdf(fifo_shard, Record(id="pmid:2", pmid="2", pdf_path="pdfs/b.pdf"), b"%PDF b")
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"key": "the user\'s"}\n')
    (shard / "review_log.jsonl").symlink_to(secret)
    os.mkfifo(fifo_shard / "review_log.jsonl")
    r = runner.invoke(app, ["merge", str(shard), str(fifo_shard), "--out", str(out)])
    assert r.exit_code == 0 and "merged 2 runs: 2 records added" in r.output, r.output
    assert f"warning: {shard / 'review_log.jsonl'}: a link; not read" in r.output
    fifo_log = fifo_shard / "review_log.jsonl"
    assert f"warning: {fifo_log}: not a regular file; not read" in r.output
    assert not (out / "review_log.jsonl").exists()
    linked = tmp_path / "linked_out"
    linked.mkdir()
    (linked / "review_log.jsonl").symlink_to(secret)
    r = runner.invoke(app, ["merge", str(shard), "--out", str(linked)])
    assert r.exit_code == 1 and r.output == (
        f"error: {linked / 'review_log.jsonl'}: not a regular file; nothing merged\n"
    )
    assert not (linked / MANIFEST_NAME).exists() and secret.read_text().count("\n") == 1


#: A merge that stops mid-copy: the real merge, with the standard library's copy holding
#: after writing the temporary file until the test kills the process.
_STOPPED_MERGE = """
import shutil, sys, time
from dataclasses import replace
from pathlib import Path
from histofetch.merge import merge_runs

real = shutil.copy2
def copy2(src, dst, **kw):
    real(src, dst, **kw)
    print(dst, flush=True)
    time.sleep(600)
shutil.copy2 = copy2
merge_runs([Path(sys.argv[1])], Path(sys.argv[2]))
"""


def test_a_merge_killed_mid_copy_leaves_no_part_file_after_the_next(tmp_path: Path) -> None:
    """A merge killed (SIGKILL) while copying a file into the output left its
    '.merge-*.part' beside the file's place, and every later merge left it there. Now the
    copy holds a lock on it; the next merge removes each one no live process holds, and
    leaves that of a merge still copying."""
    import signal
    import subprocess
    import sys

    shard, out, data = _shard_whose_image_merge_copies(tmp_path)

    def stopped_merge() -> tuple[subprocess.Popen[str], Path]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        cmd = [sys.executable, "-c", _STOPPED_MERGE, str(shard), str(out)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        part = Path(proc.stdout.readline().strip())
        assert part.parent == out / "images" / "r1" and part.name.startswith(".merge-")
        assert part.name.endswith(".part") and part.read_bytes() == data
        return proc, part

    first, stale = stopped_merge()
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second, live = stopped_merge()  # the stale one is gone once this merge runs
    try:
        assert not stale.exists()
        with pytest.raises(ManifestError, match="another merge is writing to it"):
            merge_runs([shard], out)  # the output is locked while a merge runs
        # beside a merge still copying: another output whose images/ is the same folder
        (tmp_path / "out2").mkdir()
        (tmp_path / "out2" / "images").symlink_to(out / "images", target_is_directory=True)
        summary = merge_runs([shard], tmp_path / "out2")
        assert live.exists() and summary.stale_parts == 0
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=30)
    summary = merge_runs([shard], out)
    assert summary.stale_parts == 1 and not live.exists()
    assert sorted(p.name for p in (out / "images" / "r1").iterdir()) == ["a.png"]
    assert (out / "images" / "r1" / "a.png").read_bytes() == data


def test_stale_part_files_are_removed_through_the_outputs_folder_links_only_where_rows_go(
    tmp_path: Path,
) -> None:
    """The output's ``images/`` moved to another disk behind a folder link: a killed merge
    left its part file there, in the folder a row's file goes to, and that one is removed;
    the rest of that disk is not searched, and a link named like a part file is no file of
    the merge's."""
    out, shard, disk = tmp_path / "out", tmp_path / "shard", tmp_path / "bigdisk"
    _run_with_pdf(shard, Record(id="r1", pdf_path="images/r1/a.pdf"), b"%PDF a")
    (disk / "r1").mkdir(parents=True)
    (disk / "other").mkdir()
    out.mkdir()
    (out / "images").symlink_to(disk, target_is_directory=True)
    stale, elsewhere = disk / "r1" / ".merge-abcd1234.part", disk / "other" / ".merge-x.part"
    stale.write_bytes(b"%PDF")
    elsewhere.write_bytes(b"not under a row's folder")
    (tmp_path / "user.txt").write_text("the user's")
    (disk / "r1" / ".merge-link.part").symlink_to(tmp_path / "user.txt")
    summary = merge_runs([shard], out)
    assert summary.stale_parts == 1 and not stale.exists() and elsewhere.exists()
    assert (disk / "r1" / ".merge-link.part").is_symlink()
    assert (tmp_path / "user.txt").read_text() == "the user's"
    assert (disk / "r1" / "a.pdf").read_bytes() == b"%PDF a"


def test_a_stale_part_file_where_sheets_files_go_is_removed(tmp_path: Path) -> None:
    """A merge killed while copying a shard's ``sheets/x.pdf`` leaves its part file in
    ``sheets-2/``, where that file goes: the next merge removes it there (it looks where
    the inputs' files go in the output, not where they lie in the inputs)."""
    out, shard = tmp_path / "out", tmp_path / "shard"
    _run_with_pdf(shard, Record(id="r1", pdf_path="sheets/x.pdf"), b"%PDF a")
    (out / "sheets-2").mkdir(parents=True)
    stale = out / "sheets-2" / ".merge-abcd1234.part"
    stale.write_bytes(b"%PDF")
    summary = merge_runs([shard], out)
    assert summary.stale_parts == 1 and not stale.exists()
    assert (out / "sheets-2" / "x.pdf").read_bytes() == b"%PDF a"


def test_a_stale_part_file_where_a_linked_sheets_path_goes_is_removed(tmp_path: Path) -> None:
    """With `OUT/figs` a link to `sheets`, a shard's `figs/x.pdf` goes to `sheets-2/`: a
    part file a killed merge left there is looked for, and removed, there too."""
    out, shard = tmp_path / "out", tmp_path / "shard"
    _run_with_pdf(shard, Record(id="r1", pdf_path="figs/x.pdf"), b"%PDF a")
    (out / "sheets").mkdir(parents=True)
    (out / "figs").symlink_to("sheets", target_is_directory=True)
    (out / "sheets-2").mkdir()
    stale = out / "sheets-2" / ".merge-abcd1234.part"
    stale.write_bytes(b"%PDF")
    summary = merge_runs([shard], out)
    assert summary.stale_parts == 1 and not stale.exists()
    assert (out / "sheets-2" / "x.pdf").read_bytes() == b"%PDF a"
    assert not (out / "sheets" / "x.pdf").exists()


def test_a_stale_part_file_is_removed_where_flock_is_a_posix_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On NFS flock is a POSIX lock, refused exclusive on a descriptor opened read-only
    (EBADF): the clean-up opened stale part files read-only, so there it never removed one
    (review 18). Here flock refuses read-only descriptors as NFS does."""
    import errno
    import fcntl

    real_flock = fcntl.flock

    def nfs_flock(fd: int, op: int) -> None:
        if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_flock(fd, op)

    out, shard = tmp_path / "out", tmp_path / "shard"
    _run_with_pdf(shard, Record(id="r1", pdf_path="pdfs/x.pdf"), b"%PDF a")
    (out / "pdfs").mkdir(parents=True)
    stale = out / "pdfs" / ".merge-abcd1234.part"
    stale.write_bytes(b"%PDF")
    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    summary = merge_runs([shard], out)
    assert summary.stale_parts == 1 and not stale.exists()


def _labelled_run(run: Path, rid: str, answers: list[tuple[str, str | None]]) -> Path:
    """``run`` holding record ``rid`` with two kept figures (``fig1``, ``fig2``, each its own
    sha256), answered on the review page as ``answers`` ((figure, label) each, in order)."""
    from histocore.manifest import Image
    from histofetch.review.data import save_answer

    with Manifest.load(run, create=True) as m:
        m.add_record(Record(id=rid, stage="extracted"))
        for fig in ("fig1", "fig2"):
            image_id = f"{rid}/{fig}"
            sha = hashlib.sha256(image_id.encode()).hexdigest()
            m.add_image(
                Image(id=image_id, record_id=rid, path=f"images/{rid}_{fig}.png", sha256=sha,
                      width=9, height=9, kept=True)
            )  # fmt: skip
        m.save()
        for fig, label in answers:
            save_answer(m, f"{rid}/{fig}", label, "ann")
    return run


def test_merge_appends_the_review_log_lines_to_the_outputs_log_in_place(tmp_path: Path) -> None:
    """A merge into an output with a review log read the log whole and renamed a rewritten
    copy into place: an answer the review page appended in between was lost, and the log's
    mode went from 0600 to 0644. Now the lines are appended in place, as the page appends
    its answers: the log keeps its inode and mode, and a last line left without its line
    end (a write cut short) is not glued to the first line added. An output log that has
    another name (a hard link: another run's log) is refused, as the page refuses it."""
    log_name = "review_log.jsonl"
    a = _labelled_run(tmp_path / "a", "r1", [("fig1", "metastasis")])
    b = _labelled_run(tmp_path / "b", "r2", [("fig1", "no_metastasis"), ("fig2", "metastasis")])
    out = tmp_path / "out"
    merge_runs([a], out)
    log = out / log_name
    log.chmod(0o600)  # the owner keeps who labelled what to themselves
    with log.open("a") as fh:
        fh.write('{"image_id": "r1/fig1", "lab')  # a write cut short
    before, inode = log.read_bytes(), log.stat().st_ino
    summary = merge_runs([b], out)
    assert summary.log_lines == 2
    assert log.stat().st_ino == inode and log.stat().st_mode & 0o777 == 0o600
    assert log.read_bytes() == before + b"\n" + (b / log_name).read_bytes()
    other = tmp_path / "other_run_log.jsonl"
    os.link(log, other)
    c = _labelled_run(tmp_path / "c", "r3", [("fig1", "metastasis")])
    r = runner.invoke(app, ["merge", str(c), "--out", str(out)])
    assert r.exit_code == 1 and r.output == (
        f"error: {log}: has 1 other name(s) (a hard link: another run's log?); give it a file "
        "of its own (cp it to a new file, mv that over it); nothing merged\n"
    )
    assert other.read_bytes() == log.read_bytes() == before + b"\n" + (b / log_name).read_bytes()
    with Manifest.load(out) as m:
        assert "r3" not in m.records


def test_merge_keeps_an_answer_given_twice_in_one_second(tmp_path: Path) -> None:
    """A review log line names its time to the second: 'metastasis', undo, 'metastasis' in
    one second is two equal lines, and the merge kept one of them, so the merged log ended
    with the undo where the store holds 'metastasis'. Now a line is added as many times as
    the input holds it beyond the times the output's log holds it."""
    answer = json.dumps(
        {"at": "2026-12-02T11:00:00+00:00", "image_id": "r1/fig1", "label": "metastasis",
         "previous": None, "reviewer": "ann", "weak_label": None}, sort_keys=True
    )  # fmt: skip
    undo = json.dumps(
        {"at": "2026-12-02T11:00:00+00:00", "image_id": "r1/fig1", "label": None,
         "previous": "metastasis", "reviewer": "ann", "weak_label": None}, sort_keys=True
    )  # fmt: skip
    a = _labelled_run(tmp_path / "a", "r1", [])
    (a / "review_log.jsonl").write_text(f"{answer}\n{undo}\n{answer}\n")
    out = tmp_path / "out"
    assert merge_runs([a], out).log_lines == 3
    assert (out / "review_log.jsonl").read_text() == f"{answer}\n{undo}\n{answer}\n"
    kept = tmp_path / "kept"  # the first answer copied in by hand: the other two added
    kept.mkdir()
    (kept / "review_log.jsonl").write_text(f"{answer}\n")
    assert merge_runs([a], kept).log_lines == 2
    assert (kept / "review_log.jsonl").read_text() == f"{answer}\n{undo}\n{answer}\n"


def test_merge_reads_the_review_logs_line_by_line(tmp_path: Path) -> None:
    """The review logs were read whole, each line kept (a 177 MB log took 900 MB, and a
    bigger one ended in a MemoryError traceback). Now they are read and written line by
    line: the merge of a 4 MB log, every line carried, holds a small part of it at once."""
    import tracemalloc

    a = _labelled_run(tmp_path / "a", "r1", [])
    line = {"image_id": "r1/fig1", "label": "metastasis", "previous": None, "reviewer": "ann"}
    with (a / "review_log.jsonl").open("w") as fh:
        for n in range(40_000):
            fh.write(json.dumps({**line, "at": f"2026-12-02T11:00:00+00:00 {n:05}"}) + "\n")
    size = (a / "review_log.jsonl").stat().st_size
    assert size > 4_000_000
    tracemalloc.start()
    try:
        summary = merge_runs([a], tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.log_lines == 40_000
    assert (tmp_path / "out" / "review_log.jsonl").read_bytes() == (
        a / "review_log.jsonl"
    ).read_bytes()
    assert peak < size / 4, (peak, size)


def test_the_part_file_cleanup_removes_only_the_merges_own(tmp_path: Path) -> None:
    """The cleanup of the part files a killed merge left removed files that were not the
    merge's: a row's own file named '.merge-r1aaaaaa.part', any '.merge-*.part' anywhere
    under --out (the whole tree was walked: '--out ~' walked the home folder), and it ran
    before the checks that refuse a merge, so a refused one ('nothing merged') removed them
    too. Now only names such as the merge's temporary files have are removed, never one a
    row names, only in the folders the rows' files go to, and only by a merge not refused;
    the summary counts them."""
    from histocore.manifest import Image

    s1, s2, out = tmp_path / "s1", tmp_path / "s2", tmp_path / "out"
    _run_with_pdf(s1, Record(id="r1", pdf_path="pdfs/.merge-r1aaaaaa.part"), b"%PDF r1")
    _run_with_pdf(s2, Record(id="r2", pdf_path="pdfs/r2.pdf"), b"%PDF r2")
    merge_runs([s1], out)
    stale = out / "pdfs" / ".merge-k3_x9q0z.part"
    users = [out / "pdfs" / ".merge-draft.part", out / "notes" / ".merge-abcdefgh.part"]
    for path in (stale, *users):
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    bad1, bad2 = tmp_path / "bad1", tmp_path / "bad2"
    for run, rid in ((bad1, "a"), (bad2, "b")):  # one image id for two records: refused
        with Manifest.load(run, create=True) as m:
            m.add_record(Record(id=rid, stage="extracted"))
            m.add_image(
                Image(id="fig", record_id=rid, path="pdfs/fig.png", sha256=rid * 64, width=1,
                      height=1)
            )  # fmt: skip
            m.save()
    r = runner.invoke(app, ["merge", str(bad1), str(bad2), "--out", str(out)])
    assert r.exit_code == 1 and r.output.endswith("; nothing merged\n"), r.output
    assert stale.exists()
    r = runner.invoke(app, ["merge", str(s2), "--out", str(out)])
    assert r.exit_code == 0 and r.output == (
        "merged 1 run: 1 record added (1 leftover .merge-*.part file removed)\n"
    )
    assert not stale.exists() and all(path.exists() for path in users)
    assert (out / "pdfs" / ".merge-r1aaaaaa.part").read_bytes() == b"%PDF r1"
    assert sorted(os.listdir(out / "pdfs")) == [
        ".merge-draft.part",
        ".merge-r1aaaaaa.part",
        "r2.pdf",
    ]


def test_a_merge_copies_without_the_lock_where_the_file_system_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without flock (Lustre mounted without it: ENOSYS; some NFS: ENOLCK)
    a merge that had to copy a file failed 'error: [Errno 37] No locks available', naming
    no file, and left its open temporary file behind, empty. Now the file is copied without
    the lock, and a part file found there is left (it may be a live merge's on another
    host); another failure to lock names the file, and no part file is left."""
    import errno
    import fcntl

    shard, out, data = _shard_whose_image_merge_copies(tmp_path)
    failure, real = [errno.EIO], fcntl.flock

    def flock(fd: int, op: int) -> None:
        if failure[0] == errno.EIO and os.path.isdir(f"/proc/self/fd/{fd}"):
            return real(fd, op)  # the output folder's lock taken: the part file's fails
        raise OSError(failure[0], os.strerror(failure[0]))

    monkeypatch.setattr(fcntl, "flock", flock)
    r = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    target = out / "images" / "r1" / "a.png"
    assert r.exit_code == 1 and r.output == (
        f"error: {target}: cannot be written (input/output error); records not merged "
        "(a merge run again brings the rest)\n"
    )
    assert os.listdir(target.parent) == []
    other = out / "images" / "r1" / ".merge-abcd1234.part"  # another host's, copying
    other.write_bytes(b"figure")
    failure[0] = errno.ENOLCK
    r = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    assert r.exit_code == 0 and r.output.endswith("\nmerged 1 run: 1 record, 1 image added\n")
    assert target.read_bytes() == data and other.read_bytes() == b"figure"
    assert sorted(os.listdir(target.parent)) == [".merge-abcd1234.part", "a.png"]


def _shard_whose_image_merge_copies(
    tmp_path: Path, repeat: int = 1000, pdf: bool = False
) -> tuple[Path, Path, bytes]:
    """A shard, the output to merge it into and its one image's bytes (``figure a`` times
    ``repeat``), which lie under an ``images`` folder link pointing out of the shard, so
    merge copies them (through a ``.merge-*.part`` file) rather than hard-linking them;
    with ``pdf``, first a record ``r0`` whose PDF merge hard-links."""
    from histocore.manifest import Image

    shard, disk, out = tmp_path / "shard", tmp_path / "bigdisk", tmp_path / "out"
    (disk / "r1").mkdir(parents=True)
    (shard / "pdfs").mkdir(parents=True)
    (shard / "images").symlink_to(disk, target_is_directory=True)  # brought by a copy
    data = b"figure a" * repeat
    (disk / "r1" / "a.png").write_bytes(data)
    with Manifest.load(shard, create=True) as m:
        if pdf:
            (shard / "pdfs" / "r0.pdf").write_bytes(b"%PDF r0")  # hard-linked
            m.add_record(Record(id="r0", stage="downloaded", pdf_path="pdfs/r0.pdf"))
        m.add_record(Record(id="r1", stage="extracted"))
        m.add_image(
            Image(id="r1/a", record_id="r1", path="images/r1/a.png",
                  sha256=hashlib.sha256(data).hexdigest(), width=1, height=1)
        )  # fmt: skip
        m.save()
    return shard, out, data


#: The merge command with files limited to 500 kB (``RLIMIT_FSIZE``: a write past it fails
#: with EFBIG, as on a full disk), in the folder ``sys.argv[1]``.
_LIMITED_MERGE = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))
os.chdir(sys.argv[1])
from histofetch.cli import app
sys.argv = ["histofetch", "merge", "shard", "--out", "out"]
app()
"""


def test_a_file_that_cannot_be_written_stops_the_merge_with_one_line_a_rerun_completes(
    tmp_path: Path,
) -> None:
    """A write failing while a file was brought (a full disk; here a file size limit) ended
    the merge with an error naming the '.merge-*.part' file it was copied to, gone by then.
    Now the line names the file's place in the output and says the records were not merged;
    the file brought before it stays, and a merge run again takes it and brings the rest."""
    import subprocess
    import sys

    shard, out, data = _shard_whose_image_merge_copies(tmp_path, repeat=200_000, pdf=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", _LIMITED_MERGE, str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        "error: out/images/r1/a.png: cannot be written (file too large); records not merged "
        "(a merge run again brings the rest)\n"
    )
    assert os.listdir(out / "images" / "r1") == [] and not (out / MANIFEST_NAME).exists()
    with Manifest.load(out) as m:
        assert not m.records and not m.images
    r2 = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    assert r2.exit_code == 0 and r2.output.endswith("merged 1 run: 2 records, 1 image added\n")
    assert sorted(os.listdir(out / "pdfs")) == ["r0.pdf"]  # taken, not brought twice
    assert (out / "images" / "r1" / "a.png").read_bytes() == data


def test_a_source_that_cannot_be_read_after_a_failed_link_is_named_and_nothing_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hard link failing (another file system) and the copy then failing to read the
    source (standard library faults injected: EXDEV, EACCES) names the source, and the
    output holds no record; run again once the source reads, the merge completes."""
    import errno
    import shutil

    shard, out = tmp_path / "shard", tmp_path / "out"
    _run_with_pdf(shard, Record(id="r1", pdf_path="pdfs/a.pdf"), b"%PDF a")
    src = shard / "pdfs" / "a.pdf"

    def link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def copy2(a: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(a))

    with monkeypatch.context() as patched:
        patched.setattr(os, "link", link)
        patched.setattr(shutil, "copy2", copy2)
        r = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    assert r.exit_code == 1 and r.output == (
        f"error: {src}: cannot be read (permission denied); records not merged "
        "(a merge run again brings the rest)\n"
    )
    assert os.listdir(out / "pdfs") == [] and not (out / MANIFEST_NAME).exists()
    r = runner.invoke(app, ["merge", str(shard), "--out", str(out)])
    assert r.exit_code == 0 and r.output == "merged 1 run: 1 record added\n"
    assert (out / "pdfs" / "a.pdf").read_bytes() == b"%PDF a"


def test_a_row_whose_file_is_missing_from_its_input_is_said(tmp_path: Path) -> None:
    """A row whose file its input does not hold (deleted, or never there) was added without
    a word. One warning line per input counts them and names the first row and its path;
    the rows are added as before, naming no file."""
    a, out = tmp_path / "a", tmp_path / "out"
    img = Image(id="r:1/f1", record_id="r:1", path="images/f1.png", sha256="1", width=1, height=1)
    gone = Image(id="r:1/f2", record_id="r:1", path="images/f2.png", sha256="2", width=1, height=1)
    rec = Record(id="r:1", stage="extracted", pdf_path="pdfs/r1.pdf")
    _tiny_run(a, [rec], [(img, b"f1"), (gone, b"f2")])
    (a / "images" / "f2.png").unlink()
    (a / "images" / "f3.png").mkdir()  # a folder where a row's file would be: not a file
    with Manifest.load(a) as m:
        m.add_image(replace(img, id="r:1/f3", path="images/f3.png", sha256="3"))
        m.save()
    r = runner.invoke(app, ["merge", str(a), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stderr == (
        f"warning: {a}: 3 files the rows name are not there (first: r:1: pdfs/r1.pdf); "
        "their rows added without them\n"
    )
    assert r.stdout == "merged 1 run: 1 record, 3 images added\n"
    with Manifest.load(out) as m:
        assert set(m.images) == {"r:1/f1", "r:1/f2", "r:1/f3"}
        assert (out / m.images["r:1/f1"].path).read_bytes() == b"f1"
        assert not (out / m.images["r:1/f2"].path).exists()
    again = runner.invoke(app, ["merge", str(a), "--out", str(out)])  # nothing added: silent
    assert again.exit_code == 0 and again.stderr == "", again.output


def test_merge_duplicates_names_an_image_the_output_held_before(tmp_path: Path) -> None:
    """manifest.md: ``merge_duplicates`` also records a record's images left out because
    the output already held an image of those bytes (a merge into an existing output)."""
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    shared_figure = he_like(128, 128, seed=7)
    build_image_pdf(pdfs / "a.pdf", [shared_figure], caption="Fig. 1")
    build_image_pdf(pdfs / "b.pdf", [shared_figure, he_like(100, 100, seed=1)], caption="Fig. 2")
    one, two, out = tmp_path / "one", tmp_path / "two", tmp_path / "out"
    run_extract(one, [pdfs / "a.pdf"])
    run_extract(two, [pdfs / "b.pdf"])
    merge_runs([one], out)
    (held,) = Manifest.load(out).images
    summary = merge_runs([two], out)
    merged = Manifest.load(out)
    b = next(r for r in merged.records.values() if r.title == "b")
    assert list(b.extra["merge_duplicates"].values()) == [held]
    assert summary.duplicate_images == 1 and len(merged.images_of(b.id)) == 1
