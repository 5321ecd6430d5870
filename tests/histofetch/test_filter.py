"""The H&E filter: synthetic look-alikes here, then the real PDFs in ../shared."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import matplotlib
import numpy as np
import PIL.Image
import pytest
from conftest import shared_path
from pdf_factory import build_image_pdf, he_like

from histocore.errors import DomainError
from histocore.manifest import Image, Manifest
from histofetch.decide.colour import score_rgb
from histofetch.extract import run_extract
from histofetch.filter import Thresholds, decide, run_filter, store_scores
from histofetch.leakage import image_hash
from histofetch.stage import reason_key


def _smooth_field(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((6, 6))
    field = np.asarray(PIL.Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), 3))
    return field / 255.0


def colour_map(name: str, seed: int = 0) -> np.ndarray:
    """A model heatmap / feature map: a smooth field through a matplotlib colour map."""
    rgba = matplotlib.colormaps[name](_smooth_field(seed=seed) ** 2)
    return (rgba[..., :3] * 255).astype(np.uint8)


def magenta_fluorescence(seed: int = 0) -> np.ndarray:
    """RNA-FISH-like tile: magenta spots on a black background (a naive purple count's trap)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 96, 3), np.float32)
    yy, xx = np.mgrid[:96, :96]
    for _ in range(12):
        cy, cx = rng.integers(10, 86, 2)
        spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
        img += spot[..., None] * np.array([230, 40, 220])
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def bar_chart() -> np.ndarray:
    img = np.full((96, 96, 3), 255, np.uint8)
    for k, height in enumerate((40, 70, 55)):
        img[90 - height : 90, 10 + k * 28 : 30 + k * 28] = (200, 120, 190)  # flat pink bars
    img[90, :] = 0
    return img


def composite_figure() -> np.ndarray:
    """A real-paper-style composite: one micrograph panel beside two bar charts."""
    fig = np.full((320, 640, 3), 255, np.uint8)
    fig[40:190, 40:190] = he_like(150, 150, seed=7)
    chart = np.asarray(PIL.Image.fromarray(bar_chart()).resize((180, 180), 0))
    fig[40:220, 260:440] = chart
    fig[40:220, 450:630] = chart
    return fig


def _decision(rgb: np.ndarray, **kw) -> Image:
    h, w = rgb.shape[:2]
    img = Image(id="x", record_id="r", path="x.png", sha256="", width=w, height=h)
    store_scores(img, score_rgb(rgb))
    decide(img, Thresholds(**kw))
    return img


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_he_like_tissue_is_kept(seed: int) -> None:
    img = _decision(he_like(seed=seed))
    assert img.kept, img.filter_reason
    assert img.tissue_fraction is not None
    assert img.purple_ratio is not None
    assert img.he_score is not None
    assert img.tissue_fraction > 0.9 and img.purple_ratio > 0.9 and img.he_score > 0.9


@pytest.mark.parametrize("name", ["inferno", "magma", "plasma", "jet", "viridis", "hsv"])
def test_colour_map_heatmaps_are_rejected(name: str) -> None:
    img = _decision(colour_map(name))
    assert not img.kept, (name, img.extra["colour"])


def test_magenta_fluorescence_is_rejected_though_a_naive_count_keeps_it() -> None:
    rgb = magenta_fluorescence()
    img = _decision(rgb)
    assert not img.kept
    assert img.extra["colour"]["tissue_blocks"] == 0
    assert img.extra["colour"]["naive_purple"] > 0.1


def test_tiny_crops_are_not_judged() -> None:
    img = _decision(he_like(60, 60))
    assert not img.kept and img.filter_reason == "too small to judge (60x60 px < 64)"
    assert _decision(he_like(60, 60), min_side=32).kept


def test_flat_charts_and_greyscale_tissue_are_rejected() -> None:
    assert not _decision(bar_chart()).kept
    grey = np.repeat(he_like().mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert not _decision(grey).kept


def test_composite_figure_is_kept_on_its_tissue_region() -> None:
    img = _decision(composite_figure())
    colour = img.extra["colour"]
    assert img.kept, img.filter_reason
    assert colour["purple_ratio_image"] < 0.3  # a whole-image count would reject it
    assert img.tissue_fraction is not None
    assert 0.05 < img.tissue_fraction < 0.4


def _scored_run(tmp_path: Path) -> Path:
    images = [he_like(seed=1), he_like(seed=2), colour_map("inferno"), magenta_fluorescence()]
    pdf = build_image_pdf(tmp_path / "mix.pdf", images, caption="Figure 1: H&E and heatmaps.")
    run_dir = tmp_path / "run"
    run_extract(run_dir, [pdf])
    return run_dir


def test_run_filter_scores_keeps_and_writes_sheets(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    summary = run_filter(run_dir)
    assert (summary.done, summary.failed) == (1, 0)
    manifest = Manifest.load(run_dir)
    kept = {i.page for i in manifest.images.values() if i.kept}
    assert kept == {1, 2}
    for img in manifest.images.values():
        assert img.purple_ratio is not None and img.he_score is not None
        assert img.tissue_fraction is not None
        assert img.kept or img.filter_reason
        assert img.p_he is not None and img.extra["stains"]["kinds"] == ["he", "plot"]
    assert manifest.header_extra["filter_thresholds"]["purple"] == 0.3
    for name in ("kept-001.jpg", "rejected-001.jpg", "closest-kept.jpg", "closest-rejected.jpg"):
        with PIL.Image.open(run_dir / "sheets" / name) as sheet:
            assert sheet.format == "JPEG" and sheet.width > 128


def test_thresholds_are_reapplied_without_rereading_images(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    run_filter(run_dir, sheet=False)
    for png in (run_dir / "images").rglob("*.png"):
        png.unlink()  # scores live in the manifest; a re-read would now fail
    summary = run_filter(run_dir, min_side=100_000, sheet=False)
    assert summary.skipped == 1 and summary.failed == 0
    manifest = Manifest.load(run_dir)
    assert not manifest.kept_images()
    assert all(i.status == "ok" for i in manifest.images.values())
    reasons = {(i.filter_reason or "").split(" (")[0] for i in manifest.images.values()}
    assert reasons == {"too small to judge"}
    run_filter(run_dir, purple=0.3, min_he=0.5, sheet=False)
    assert len(Manifest.load(run_dir).kept_images()) == 2


def test_unknown_threshold_is_an_error(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    with pytest.raises(ValueError, match="unknown filter threshold"):
        run_filter(run_dir, purpl=0.4)


def test_unreadable_image_fails_only_its_row(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    manifest = Manifest.load(run_dir)
    first = manifest.images_of(next(iter(manifest.records)))[0]
    manifest.resolve(first.path).write_bytes(b"not a png")
    summary = run_filter(run_dir, sheet=False)
    assert summary.failed == 0
    again = Manifest.load(run_dir)
    bad = again.images[first.id]
    assert bad.reason is not None
    assert bad.status == "failed" and bad.reason.startswith("cannot read image")
    assert len(again.kept_images()) == 1
    # the reason names the file once (it read "cannot read image RUN/a.png: /abs/a.png: ...")
    name = first.path.rsplit("/", 1)[-1]
    assert bad.reason.count(name) == 1, bad.reason
    assert bad.reason.startswith(f"cannot read image {again.resolve(first.path)}: "), bad.reason


# -- real material ------------------------------------------------------------------------
# The real PDFs are decided in tests/histofetch/test_he_eval.py (labels by eye, per signal).


@pytest.mark.realdata
def test_real_he_tiles_are_kept() -> None:
    paths = sorted(shared_path("data", "camelyon16_tiles_didsr").rglob("*.webp"))[::6]
    paths += sorted(shared_path("data", "camelyon17_centre_tiles").glob("*.jpeg"))
    paths += [shared_path("data", "external_he_images", "tiatoolbox_target_image.png")]
    from histofetch.decide.colour import load_rgb

    kept = [_decision(load_rgb(p)).kept for p in paths]
    assert len(paths) >= 15 and all(kept)


def test_images_scored_by_an_older_scorer_are_scored_again(tmp_path: Path) -> None:
    from histofetch.filter import SCORER_VERSION

    run_dir = _scored_run(tmp_path)
    run_filter(run_dir, sheet=False)
    manifest = Manifest.load(run_dir)
    stale = manifest.images_of(next(iter(manifest.records)))[2]
    stale.extra["colour"]["scorer"] = SCORER_VERSION - 1
    manifest.save()
    summary = run_filter(run_dir, sheet=False)
    assert summary.done == 1  # the record is taken again for its one stale image
    again = Manifest.load(run_dir)
    assert again.images[stale.id].extra["colour"]["scorer"] == SCORER_VERSION
    assert len(again.kept_images()) == 2


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_image_fails_its_row_without_decoding(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    manifest = Manifest.load(run_dir)
    rec_id = next(iter(manifest.records))
    bomb = run_dir / "images" / "package" / "bomb.png"
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(_png_header_only(100_000, 100_000))  # 10 gigapixels declared
    manifest.add_image(
        Image(
            id=f"{rec_id}/bomb",
            record_id=rec_id,
            path="images/package/bomb.png",
            sha256="",
            width=100_000,
            height=100_000,
            source="package",
        )
    )
    manifest.save()
    summary = run_filter(run_dir, sheet=False)
    assert summary.failed == 0
    row = Manifest.load(run_dir).images[f"{rec_id}/bomb"]
    assert row.reason is not None
    assert row.status == "failed" and "exceeds limit" in row.reason
    assert row.kept is False


def grid_figure_rgb() -> np.ndarray:
    """A 2×2 compound figure: two H&E-like panels, an inferno and a magma heatmap."""
    fig = np.full((2 * 150 + 36, 2 * 150 + 36, 3), 255, np.uint8)
    noisy = [
        np.clip(
            he_like(150, 150, seed=s) + np.random.default_rng(s).normal(0, 25, (150, 150, 3)),
            0,
            255,
        )
        for s in (1, 2)
    ]
    heat = np.asarray(PIL.Image.fromarray(colour_map("inferno")).resize((150, 150)))
    spots = np.asarray(PIL.Image.fromarray(colour_map("magma", seed=1)).resize((150, 150)))
    for k, tile in enumerate([*noisy, heat, spots]):
        y, x = 12 + (k // 2) * 162, 12 + (k % 2) * 162
        fig[y : y + 150, x : x + 150] = tile.astype(np.uint8)
    return fig


def _grid_run(tmp_path: Path) -> Path:
    """A filtered run of one PDF holding the 2×2 compound figure."""
    pdf = build_image_pdf(
        tmp_path / "grid.pdf", [grid_figure_rgb()], caption="Figure 2. H&E and a heatmap."
    )
    run_dir = tmp_path / "run"
    run_extract(run_dir, [pdf])
    run_filter(run_dir, sheet=False)
    return run_dir


def _grid_run_unreadable(tmp_path: Path) -> tuple[Path, str]:
    """:func:`_grid_run` with its figure's file moved away and filtered again (--rescore):
    the figure failed, unreadable. Returns the run folder and the figure's id."""
    run_dir = _grid_run(tmp_path)
    with Manifest.load(run_dir) as m:
        (figure,) = [i for i in m.images.values() if i.source == "pdf"]
        path = m.resolve(figure.path)
    assert path is not None
    path.rename(path.with_suffix(".away"))
    run_filter(run_dir, sheet=False, rescore=True)
    return run_dir, figure.id


def test_compound_figures_are_decided_by_their_panels(tmp_path: Path) -> None:
    run_dir = _grid_run(tmp_path)
    m = Manifest.load(run_dir)
    (figure,) = [i for i in m.images.values() if i.source == "pdf"]
    panels = m.panels_of(figure.id)
    assert figure.n_panels == 4 and len(panels) == 4
    assert [p.panel_bbox for p in panels] == [
        [12, 12, 162, 162], [174, 12, 324, 162], [12, 174, 162, 324], [174, 174, 324, 324]
    ]  # fmt: skip
    for p in panels:
        assert p.parent_id == figure.id and p.source == "panel" and p.caption == figure.caption
        assert m.resolve(p.path).is_file() and p.p_he is not None
    heat, spots = panels[2], panels[3]
    assert not heat.kept and not spots.kept
    assert figure.kept == any(p.kept for p in panels)
    if not figure.kept:
        assert figure.filter_reason is not None
        assert figure.filter_reason.startswith("no H&E panel (4 panels): ")
    # downstream sees the kept panels, never the split figure itself
    assert {i.id for i in m.kept_images()} == {p.id for p in panels if p.kept}
    # status counts them so: kept (panels) + rejected + split figures kept = scored
    from histofetch.status import format_status, run_status

    info = run_status(run_dir)
    assert info["split_kept"] == int(bool(figure.kept))
    assert info["kept"] + info["rejected"] + info["split_kept"] == info["scored"] == 5
    assert ("+1 split figure counted by" in format_status(info)) == bool(figure.kept)
    # rescoring replaces the panel rows instead of adding more
    run_filter(run_dir, sheet=False, rescore=True)
    assert len(Manifest.load(run_dir).panels_of(figure.id)) == 4


def test_a_split_figure_with_no_h_and_e_panel_is_one_status_reason(tmp_path: Path) -> None:
    """`histofetch status` counts rejected figures by the reason's text before its first
    ':' or '('; a split figure's reason named its panel count there ('no H&E panel among
    4'), so figures of 2, 3, 4 and 5 panels were four reasons of one or two figures each."""
    from histofetch.status import run_status

    run_dir = _grid_run(tmp_path)
    run_filter(run_dir, sheet=False, purple=1.0, min_he=1.0)  # no panel passes now
    m = Manifest.load(run_dir)
    (figure,) = [i for i in m.images.values() if i.source == "pdf"]
    assert figure.kept is False and figure.filter_reason is not None
    assert figure.filter_reason.startswith("no H&E panel (4 panels): ")
    assert run_status(run_dir)["reject_reasons"]["no H&E panel"] == 1
    # a run folder filtered by an older version keeps 'no H&E panel among N: …': it counts
    # under the same reason as the new text, whatever N (docs/histofetch.md says so)
    old = figure.filter_reason.replace("no H&E panel (4 panels)", "no H&E panel among 4", 1)
    m.update_image(figure.id, filter_reason=old)
    reasons = run_status(run_dir)["reject_reasons"]
    assert [k for k in reasons if k.startswith("no H&E")] == ["no H&E panel"]
    assert reasons["no H&E panel"] == 1
    for n in (2, 3, 12):
        assert reason_key(f"no H&E panel among {n}: A: too few pixels") == "no H&E panel"


def test_header_weak_label_counts_count_what_is_kept(tmp_path: Path) -> None:
    """The header's `weak_labels` counted a split figure kept for its panels and those
    panels too: 'abstain': 3 for 2 kept panels (17 for `status`'s 12 kept on the fixture
    PDFs), while status, review and eval count the panels only."""
    run_dir = _grid_run(tmp_path)
    m = Manifest.load(run_dir)
    counts = m.header_extra["weak_labels"]
    kept = m.kept_images()
    assert kept and sum(counts[k] for k in ("metastasis", "no_metastasis", "abstain")) == len(kept)


def test_explain_prints_every_signal(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from histofetch.cli import app

    run_dir = _grid_run(tmp_path)
    result = CliRunner().invoke(
        app, ["filter", "--run", str(run_dir), "--explain", "p001_001_panel03"]
    )
    assert result.exit_code == 0, result.output
    for word in (
        "panel of",
        "REJECTED",
        "classifier p(H&E)",
        "colour    purple",
        "caption names H&E",
    ):
        assert word in result.output
    # a rejected row's reason is said once (its note is the same text: it was printed twice)
    reason = (
        Manifest.load(run_dir)
        .images[next(i for i in Manifest.load(run_dir).images if i.endswith("p001_001_panel03"))]
        .filter_reason
    )
    assert reason and result.output.count(reason) == 1, result.output
    assert "margin -" in result.output
    result = CliRunner().invoke(app, ["filter", "--run", str(run_dir), "--explain", "nope"])
    assert result.exit_code == 1 and "'nope' names no image" in result.output
    # --explain times nothing: a bad HISTOFETCH_RECORD_TIMEOUT failed it (exit 2)
    args = ["filter", "--run", str(run_dir), "--explain", "p001_001_panel03"]
    result = CliRunner().invoke(app, args, env={"HISTOFETCH_RECORD_TIMEOUT": "0"})
    assert result.exit_code == 0 and "classifier p(H&E)" in result.output, result.output


def test_explain_escapes_what_came_from_the_paper(tmp_path: Path) -> None:
    """--explain prints the article title and caption: control characters in them are
    escaped, one explanation line stays one terminal line."""
    from histocore.manifest import Record
    from histofetch.filter import explain

    m = Manifest(run_dir=tmp_path / "run", query="q")
    m.add_record(Record(id="pmid:1", title="T\x1b]0;pwned\x07itle", stage="filtered"))
    m.add_image(Image(id="pmid:1/p001_001", record_id="pmid:1", path="images/a.png",
                      sha256="0" * 64, width=96, height=96, kept=False,
                      caption="H&E\x1b[2J\nerror: forged"))  # fmt: skip
    text = explain(m, "p001_001")
    assert not any(c in text for c in "\x1b\x07\r")
    assert "article   T\\x1b]0;pwned\\x07itle" in text
    assert "caption   text: H&E\\x1b[2J\\nerror: forged" in text
    assert not any(line.startswith("error:") for line in text.splitlines())


def test_explain_says_why_a_caption_gives_no_verdict(tmp_path: Path) -> None:
    """--explain printed '(verdict None)' for a row not decided yet (no stain evidence
    stored), and for captions giving no verdict: none, one naming no stain, plots alone, or
    H&E beside another stain. Now it says which, or nothing beyond the caption's phrase;
    and the row not decided is said so, not 'REJECTED: None'."""
    from histocore.manifest import Record
    from histofetch.filter import explain, store_evidence

    m = Manifest(run_dir=tmp_path / "run", query="q")
    m.add_record(Record(id="pmid:1", title="T", stage="filtered"))
    captions = {
        "undecided": None,
        "nocap": None,
        "nostain": "Survival of the cohort.",
        "plot": "Kaplan-Meier survival curves.",
        "mixed": "H&E and CK19 immunohistochemistry of the node.",
        "he": "H&E stain of the node.",
    }
    for name, caption in captions.items():
        img = Image(id=f"pmid:1/{name}", record_id="pmid:1", path=f"images/{name}.png",
                    sha256=name, width=96, height=96, caption=caption,
                    kept=None if name == "undecided" else False)  # fmt: skip
        if name != "undecided":
            store_evidence(img)
        m.add_image(img)
    lines = {
        name: next(line for line in explain(m, name).splitlines() if line.startswith("caption"))
        for name in captions
    }
    assert not any("None" in line for line in lines.values()), lines
    assert lines["undecided"] == "caption   not read yet (the row is not decided)"
    assert lines["nocap"] == "caption   no caption"
    assert lines["nostain"] == "caption   caption names no stain"
    assert lines["plot"].endswith("(no verdict: no stain for or against H&E)"), lines
    assert lines["mixed"].endswith("(no verdict: H&E and another stain both named)"), lines
    assert lines["he"] == "caption   caption names H&E (verdict for H&E)"
    # decided without the evidence (its image unreadable): not said to be undecided
    m.add_image(Image(id="pmid:1/unreadable", record_id="pmid:1", path="images/u.png",
                      sha256="u", width=96, height=96, caption="H&E stain of the node.",
                      kept=False, filter_reason="unreadable image", status="failed"))  # fmt: skip
    text = explain(m, "unreadable")
    assert "decision  REJECTED: unreadable image" in text
    assert "caption   not read (the row was decided without it)" in text
    assert "not decided" not in text
    # nor 'REJECTED: None' for the row not decided
    assert "decision  not decided yet" in explain(m, "undecided")
    assert "REJECTED" not in explain(m, "undecided") and "REJECTED" in explain(m, "he")


def test_explain_with_an_ambiguous_tail_lists_the_full_ids(tmp_path: Path) -> None:
    """Seven articles each with a figure p001_001: --explain p001_001 cannot choose. The
    error listed five ids with no word of the other two; now the user is told to give the
    full id, shown five (sorted) and how many more, on one line, exit 1."""
    from typer.testing import CliRunner

    from histocore.manifest import Record
    from histofetch.cli import app

    run = tmp_path / "run"
    with Manifest(run_dir=run, query="q") as m:
        for n in (3, 1, 7, 2, 6, 4, 5):
            m.add_record(Record(id=f"pmid:{n}", stage="filtered"))
            m.add_image(Image(id=f"pmid:{n}/p001_001", record_id=f"pmid:{n}",
                              path=f"images/{n}.png", sha256=f"{n}" * 64, width=96, height=96,
                              kept=False))  # fmt: skip
        m.add_image(Image(id="pmid:1/p001_002", record_id="pmid:1", path="images/b.png",
                          sha256="8" * 64, width=96, height=96, kept=False))  # fmt: skip
        m.save()
    result = CliRunner().invoke(app, ["filter", "--run", str(run), "--explain", "p001_001"])
    assert result.exit_code == 1
    assert result.output == (
        f"error: {run}: 'p001_001' is the end of 7 image ids; give the full id: "
        "pmid:1/p001_001, pmid:2/p001_001, pmid:3/p001_001, pmid:4/p001_001, "
        "pmid:5/p001_001 and 2 more\n"
    )
    result = CliRunner().invoke(app, ["filter", "--run", str(run), "--explain", "p001_003"])
    assert result.exit_code == 1
    assert result.output == (
        f"error: {run}: 'p001_003' names no image (give its full id, or the part after "
        "the last '/' when one image's id ends so)\n"
    )
    one = CliRunner().invoke(app, ["filter", "--run", str(run), "--explain", "pmid:6/p001_001"])
    assert one.exit_code == 0 and one.output.startswith("image     pmid:6/p001_001\n")
    one = CliRunner().invoke(app, ["filter", "--run", str(run), "--explain", "p001_002"])
    assert one.exit_code == 0 and one.output.startswith("image     pmid:1/p001_002\n")


def test_a_filter_that_fails_midway_closes_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is closed on the way out of a failing filter too: here the contact sheets
    cannot be written (a full disk), after the scores were committed. (A file at
    ``RUN/sheets`` did this, but it is refused now before any scoring.)"""
    import errno
    import gc

    import histofetch.sheets
    from histocore.store import STORE_NAME

    def full_disk(manifest: Manifest) -> dict[str, Path]:
        raise OSError(errno.ENOSPC, "No space left on device", str(manifest.run_dir / "sheets"))

    pdf = build_image_pdf(tmp_path / "a.pdf", [he_like(128, 128, seed=1)], caption="Figure 1")
    run = tmp_path / "run"
    run_extract(run, [pdf])
    monkeypatch.setattr(histofetch.sheets, "write_filter_sheets", full_disk)
    gc.disable()  # a store left open must not be closed by the collector meanwhile
    try:
        with pytest.raises(OSError) as info:
            run_filter(run, sheet=True)
        assert not [p.name for p in run.iterdir() if p.name.startswith(STORE_NAME + "-")]
        assert info.traceback  # (still holding the failed call's frames)
    finally:
        gc.enable()
    assert all(i.kept is not None for i in Manifest.load(run).images.values())  # committed


_READS: list[str] | None = None  # paths opened for reading while a test listens
_HOOKED = False  # audit hooks cannot be removed: installed once, by the first test listening


def _count_reads(event: str, args: tuple) -> None:
    if _READS is None:  # no test listening: nothing to do for the rest of the session
        return
    if event == "open" and isinstance(args[0], (str, Path)):
        mode, flags = args[1], args[2]
        reading = "r" in mode if isinstance(mode, str) else (flags & os.O_ACCMODE) == os.O_RDONLY
        if reading and "+" not in (mode or ""):
            _READS.append(str(Path(args[0]).resolve()))


def _listen_to_reads() -> None:
    """Hear the interpreter's own open events (nothing of ours replaced) from now on."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_count_reads)
        _HOOKED = True


def test_filter_reads_each_figure_once_and_hashes_that_copy(tmp_path: Path) -> None:
    global _READS
    pdf = build_image_pdf(
        tmp_path / "mix.pdf",
        [grid_figure_rgb(), he_like(seed=1), he_like(seed=2)],
        caption="Figure 2. H&E and a heatmap.",
    )
    run_dir = tmp_path / "run"
    run_extract(run_dir, [pdf])
    _listen_to_reads()
    _READS = []
    try:
        run_filter(run_dir, sheet=False)
        reads = [p for p in _READS if p.endswith(".png")]
    finally:
        _READS = None
    m = Manifest.load(run_dir)
    figures = [i for i in m.images.values() if i.source != "panel"]
    panels = [i for i in m.images.values() if i.source == "panel"]
    assert len(figures) == 3 and len(panels) == 4 and m.kept_images()
    files = [str(m.resolve(i.path).resolve()) for i in figures]  # type: ignore[union-attr]
    assert sorted(reads) == sorted(files)  # each figure read once, no panel read back
    for img in [*figures, *panels]:  # the hash is the file's, as leakage.image_hash reads it
        assert img.phash is not None and img.phash == image_hash(str(m.resolve(img.path)))
    assert len({i.phash for i in figures}) == 3


def test_rescoring_keeps_the_labels_a_person_gave_the_panels(tmp_path: Path, caplog) -> None:
    """``filter --rescore`` (or a scorer upgrade) cuts the panels anew: their rows, with the
    labels set on the review page or by ``histomodels label``, were deleted and made again
    unlabelled, without a word. A new panel with the same pixels takes the old label; a
    labelled panel no new one matches is named in one warning."""
    import logging

    run_dir = _grid_run(tmp_path)
    with Manifest.load(run_dir) as m:
        (figure,) = [i for i in m.images.values() if i.source == "pdf"]
        first, second, third = (p.id for p in m.panels_of(figure.id)[:3])
        m.update_image(first, label="metastasis", label_by="ann", label_at="2026-12-01T00:00:00")
        m.update_image(second, label="not_usable", label_by="bob", label_at="2026-12-01T00:01:00")
        m.update_image(third, label="no_metastasis", label_by="ann")
        m.update_image(third, sha256="0" * 64)  # as if the splitter now cut it otherwise
    with caplog.at_level(logging.WARNING, logger="histofetch"):
        run_filter(run_dir, sheet=False, rescore=True)
    m = Manifest.load(run_dir)
    got = {p.id: (p.label, p.label_by, p.label_at) for p in m.panels_of(figure.id)}
    assert got[first] == ("metastasis", "ann", "2026-12-01T00:00:00")
    assert got[second] == ("not_usable", "bob", "2026-12-01T00:01:00")
    assert got[third] == (None, None, None) and len(got) == 4
    assert [r.getMessage() for r in caplog.records] == [
        f"{figure.id}: the labels of 1 reviewed panel(s) were dropped: the figure was split "
        f"anew and no new panel has their pixels ({third}: no_metastasis by ann)"
    ]
    m.close()


def test_rescoring_keeps_each_label_of_panels_that_share_pixels(tmp_path: Path, caplog) -> None:
    """Two panels of one figure with the same pixels (a repeated micrograph): the second's
    label went to the first and the first's was dropped without a word (review 4). Each
    keeps its own, matched by its place in the figure."""
    import logging

    fig = grid_figure_rgb()
    fig[12:162, 174:324] = fig[12:162, 12:162]  # panel 2 repeats panel 1
    pdf = build_image_pdf(tmp_path / "g.pdf", [fig], caption="Figure 2. H&E.")
    run_dir = tmp_path / "run"
    run_extract(run_dir, [pdf])
    run_filter(run_dir, sheet=False)
    with Manifest.load(run_dir) as m:
        (figure,) = [i for i in m.images.values() if i.source == "pdf"]
        first, second = m.panels_of(figure.id)[:2]
        assert first.sha256 == second.sha256
        m.update_image(first.id, label="metastasis", label_by="ann", label_at="t1")
        m.update_image(second.id, label="not_usable", label_by="bob", label_at="t2")
    with caplog.at_level(logging.WARNING, logger="histofetch"):
        run_filter(run_dir, sheet=False, rescore=True)
    with Manifest.load(run_dir) as m:
        got = [(p.id, p.label, p.label_by) for p in m.panels_of(figure.id)[:2]]
    assert got == [(first.id, "metastasis", "ann"), (second.id, "not_usable", "bob")]
    assert not caplog.records
    # the second labelled alone keeps its label (it went to the first, review 5)
    with Manifest.load(run_dir) as m:
        m.update_image(first.id, label=None, label_by=None, label_at=None)
    run_filter(run_dir, sheet=False, rescore=True)
    with Manifest.load(run_dir) as m:
        got = [(p.id, p.label, p.label_by) for p in m.panels_of(figure.id)[:2]]
    assert got == [(first.id, None, None), (second.id, "not_usable", "bob")]


def test_a_labelled_figure_split_at_rescore_says_its_panels_need_labels(
    tmp_path: Path, caplog
) -> None:
    """A figure labelled whole (filtered with --no-panels) and split at --rescore: review
    and eval use its panels from then on, none labelled, so the answer vanished from both
    without a word (review 4). One warning says so; the figure's label stays on its row."""
    import logging

    pdf = build_image_pdf(tmp_path / "grid.pdf", [grid_figure_rgb()], caption="Figure 2.")
    run_dir = tmp_path / "run"
    run_extract(run_dir, [pdf])
    run_filter(run_dir, sheet=False, panels=False)
    with Manifest.load(run_dir) as m:
        (figure,) = [i for i in m.images.values() if i.source == "pdf"]
        m.update_image(figure.id, label="metastasis", label_by="ann")
    with caplog.at_level(logging.WARNING, logger="histofetch"):
        run_filter(run_dir, sheet=False, rescore=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"{figure.id}: labelled metastasis by ann as a whole figure, it is split into 4 "
        "panels now, which review and eval use instead: label them (the figure's label stays "
        "on its row)"
    ]
    with Manifest.load(run_dir) as m:
        assert m.images[figure.id].label == "metastasis" and len(m.panels_of(figure.id)) == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="histofetch"):  # said again until labelled
        run_filter(run_dir, sheet=False, rescore=True)
    assert len(caplog.records) == 1


def test_a_figure_unreadable_at_rescore_keeps_its_panels_labels_until_read(
    tmp_path: Path, caplog
) -> None:
    """A figure that could not be read at --rescore (moved, an I/O error) lost its panels'
    labels for good, with a warning that said it was split anew (review 4). They are kept
    on its row and go back to its panels when a later run reads it."""
    import logging

    run_dir = _grid_run(tmp_path)
    with Manifest.load(run_dir) as m:
        (figure,) = [i for i in m.images.values() if i.source == "pdf"]
        first = m.panels_of(figure.id)[0].id
        m.update_image(first, label="metastasis", label_by="ann", label_at="t1")
        path = m.resolve(figure.path)
    assert path is not None
    path.rename(path.with_suffix(".away"))
    with caplog.at_level(logging.WARNING, logger="histofetch"):
        run_filter(run_dir, sheet=False, rescore=True)
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"{figure.id}: cannot read the figure; the labels of 1 reviewed")
    with Manifest.load(run_dir) as m:
        assert m.images[figure.id].status == "failed" and not m.panels_of(figure.id)
    path.with_suffix(".away").rename(path)
    # read, but not split (--no-panels): the labels wait on (review 5: dropped for good)
    run_filter(run_dir, sheet=False, retry_failed=True, panels=False)
    with Manifest.load(run_dir) as m:
        assert m.images[figure.id].status == "ok" and not m.panels_of(figure.id)
        assert len(m.images[figure.id].extra["panel_labels_pending"]) == 1
    run_filter(run_dir, sheet=False, rescore=True)
    with Manifest.load(run_dir) as m:
        panel = m.images[first]
        assert (panel.label, panel.label_by, panel.label_at) == ("metastasis", "ann", "t1")
        assert "panel_labels_pending" not in m.images[figure.id].extra


def test_rescore_leaves_a_figure_it_does_not_read_as_it_was(tmp_path: Path) -> None:
    """--rescore reset every figure filter had failed to read to 'ok' before taking the
    records, so one in a record the run did not take (a failed record, without
    --retry-failed) read 'ok' with its reason gone, never read (review 5). Now a figure is
    read again in its record's own work, or left as it was."""
    run_dir, figure_id = _grid_run_unreadable(tmp_path)
    with Manifest.load(run_dir) as m:
        assert m.images[figure_id].status == "failed"
        rec = m.records[m.images[figure_id].record_id]
        rec.fail("filtered", "timed out: x", transient=False)
        m.commit_record(rec.id)
    run_filter(run_dir, sheet=False, rescore=True)  # the record is not taken
    with Manifest.load(run_dir) as m:
        img = m.images[figure_id]
        assert (img.status, img.filter_reason) == ("failed", "unreadable image")
        assert img.reason is not None and img.reason.startswith("cannot read image")


def test_rescore_counts_articles_with_no_images_as_such(tmp_path: Path) -> None:
    """--rescore takes every article with images again; one with no images has nothing to
    redo and was counted 'already done' ('filtered: 1 done, 1 already done'), as if it had
    been passed over. Now it is counted as having no images; a plain filter run again
    still counts both 'already done'."""
    from histocore.manifest import Record

    run_dir = _grid_run(tmp_path)
    with Manifest.load(run_dir) as m:
        m.add_record(Record(id="pmid:9", pmid="9", stage="filtered"))
        m.save()
    again = run_filter(run_dir, sheet=False).line()
    assert again.startswith("filtered: 0 done, 2 already done, 0 failed"), again
    line = run_filter(run_dir, sheet=False, rescore=True).line()
    assert line.startswith("filtered: 1 done, 0 already done, 1 with no images, 0 failed"), line


def test_status_shows_unreadable_images_as_failed_as_its_json_does(tmp_path: Path) -> None:
    """An image filter could not read is failed (``status --json``: ``failed_images`` 1),
    but the human ``status`` showed it only as a rejected image of reason 'unreadable
    image' beside 'failed 0' (records). Now it counts failed records and failed images
    as the JSON does, and says how to read them again."""
    from typer.testing import CliRunner

    from histofetch.cli import app

    run_dir, _ = _grid_run_unreadable(tmp_path)
    as_json = CliRunner().invoke(app, ["status", "--run", str(run_dir), "--json"])
    info = json.loads(as_json.stdout)
    assert (info["failed"], info["failed_images"]) == (0, 1)
    # counted apart, as filter's own line counts it: not among the scored nor the
    # rejected images, nor the reject reasons (finding 1)
    assert (info["scored"], info["rejected"], info["unreadable"]) == (0, 0, 1)
    assert "unreadable image" not in info["reject_reasons"]
    out = CliRunner().invoke(app, ["status", "--run", str(run_dir)]).output
    assert "rejected 0  unreadable 1  failed records 0  failed images 1" in out, out
    # the whole command, its run named: 'histofetch filter --retry-failed' named none
    # (the other hints name it) and retried runs/default (finding 3)
    assert (
        "1 image unreadable, not scored (filter could not read it; "
        f"histofetch filter --run {run_dir} --retry-failed reads it again)"
    ) in out, out


def test_a_folder_where_a_sheet_goes_is_refused_before_scoring(tmp_path: Path) -> None:
    """`mkdir RUN/sheets/kept-001.jpg` stopped filter only after it had scored every image;
    it is now refused first, in one line naming it, the run left unscored."""
    run_dir = _scored_run(tmp_path)
    (run_dir / "sheets" / "closest-kept.jpg").mkdir(parents=True)
    with pytest.raises(DomainError, match=r"closest-kept\.jpg: is a folder where filter writes"):
        run_filter(run_dir)
    manifest = Manifest.load(run_dir)
    assert all(i.p_he is None for i in manifest.images.values())
    run_filter(run_dir, sheet=False)  # --no-sheet writes no sheet: not refused


def test_panel_rows_carry_their_figures_label(tmp_path: Path) -> None:
    """A panel row had no `figure_label` (only the review page looked it up from the
    figure): each panel now carries its figure's label, and none where the figure has none."""
    run_dir = _grid_run(tmp_path)
    with Manifest.load(run_dir) as m:
        (figure,) = [i for i in m.images.values() if i.source == "pdf"]
        assert all(p.figure_label is None for p in m.panels_of(figure.id))
        figure.figure_label = "Figure 2"
        m.save()
    run_filter(run_dir, sheet=False, rescore=True)
    m = Manifest.load(run_dir)
    panels = m.panels_of(figure.id)
    assert len(panels) == 4 and all(p.figure_label == "Figure 2" for p in panels)


def test_explain_says_why_a_row_has_no_scores(tmp_path: Path) -> None:
    """A row with no scores (not scored yet; its image unreadable) printed
    'classifier p(H&E) None over ? tiles (min ?, max ?); classes {}' and 'colour    purple
    None, HED None, tissue None, '; a figure with no page 'page None', a panel whose letter
    was not read 'letter None'. Now each signal not computed says so and why, and no line
    prints None."""
    from typer.testing import CliRunner

    from histocore.manifest import Record
    from histofetch.cli import app
    from histofetch.filter import explain

    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="q")
    m.add_record(Record(id="pmid:1", title="T", stage="extracted"))
    (run / "images").mkdir(parents=True)
    (run / "images" / "bad.png").write_bytes(b"not a png")
    PIL.Image.new("RGB", (96, 96), (200, 120, 180)).save(run / "images" / "waiting.png")
    for name in ("waiting", "bad"):
        m.add_image(Image(id=f"pmid:1/{name}", record_id="pmid:1", path=f"images/{name}.png",
                          sha256=name, width=96, height=96, caption="H&E stain."))  # fmt: skip
    m.add_image(Image(id="pmid:1/bad_panel01", record_id="pmid:1", path="images/p.png",
                      sha256="p", width=40, height=40, parent_id="pmid:1/waiting",
                      panel_bbox=[0, 0, 40, 40], source="panel"))  # fmt: skip
    m.save()
    text = explain(m, "waiting")
    assert "None" not in text, text
    scores = f"not scored yet (histofetch filter --run {run} scores it)"
    assert f"classifier not computed: {scores}" in text
    assert "colour    not computed: as above" in text
    assert "(96x96 px)" in text
    assert "letter none read" in explain(m, "bad_panel01")
    m.close()
    from histofetch.filter import run_filter

    run_filter(run, sheet=False)  # the figure that is no PNG is decided unreadable
    r = CliRunner().invoke(app, ["filter", "--run", str(run), "--explain", "pmid:1/bad"])
    assert r.exit_code == 0, r.output
    assert "None" not in r.output and "REJECTED: unreadable image" in r.output, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("classifier not computed: "))
    retry = f"histofetch filter --run {run} --retry-failed reads it again"  # not runs/default
    assert "cannot read image" in line and retry in line, line
    # the reason once (it was printed twice), and no '(margin n/a)' alone on a line
    assert "colour    not computed: as above" in r.output.splitlines(), r.output
    assert r.output.count("cannot read image") == 1 and "margin" not in r.output, r.output
    # a scored row still prints its scores
    r = CliRunner().invoke(app, ["filter", "--run", str(run), "--explain", "pmid:1/waiting"])
    assert "not computed" not in r.output and "classifier p(H&E) " in r.output, r.output
    assert "colour    purple " in r.output and not r.output.rstrip().endswith(","), r.output


def test_a_figure_unreadable_at_rescore_keeps_no_old_scores(tmp_path: Path) -> None:
    """Filtered, its file moved away, then ``filter --rescore``: the figure failed
    ('REJECTED: unreadable image') but kept the scores of the earlier read, so
    ``--explain`` printed them (classifier p(H&E), colour) and the old decision's note
    beside 'unreadable image', and ``export`` wrote them. Now the row is as one never
    read: no scores, its signals 'not computed: cannot read image …'."""
    from typer.testing import CliRunner

    from histofetch.cli import app

    run_dir, figure_id = _grid_run_unreadable(tmp_path)  # scored, then unreadable
    with Manifest.load(run_dir) as m:
        img = m.images[figure_id]
        assert (img.status, img.kept, img.filter_reason) == ("failed", False, "unreadable image")
        assert (img.p_he, img.purple_ratio, img.he_score, img.tissue_fraction) == (None,) * 4
        assert img.phash is None
        assert not {"colour", "classifier", "decision", "stains"} & set(img.extra)
    r = CliRunner().invoke(app, ["filter", "--run", str(run_dir), "--explain", figure_id])
    assert r.exit_code == 0, r.output
    assert "REJECTED: unreadable image" in r.output, r.output
    assert "p(H&E) " not in r.output and "purple " not in r.output, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("classifier not computed: "))
    assert "cannot read image" in line, line
    assert "colour    not computed: as above" in r.output.splitlines(), r.output


def test_explain_of_an_article_failed_at_no_recorded_stage_says_so(tmp_path: Path) -> None:
    """An article failed with no stage recorded (an edited or older manifest): --explain
    said 'its article failed at ?'. It now says the stage is not recorded (finding 2)."""
    from histocore.manifest import Record
    from histofetch.filter import explain

    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="q")
    rec = m.add_record(Record(id="pmid:1", title="T", stage="downloaded"))
    rec.status, rec.failed_stage, rec.reason = "failed", None, "x"
    m.add_image(Image(id="pmid:1/f1", record_id="pmid:1", path="images/f1.png", sha256="a",
                      width=96, height=96))  # fmt: skip
    m.save()
    m.close()
    with Manifest.load(run) as again:  # as the store keeps it
        text = explain(again, "f1")
    assert "failed at ?" not in text, text
    assert (
        "decision  not decided yet (its article failed (stage not recorded), which filter "
        f"does not take; histofetch status --run {run} says why)"
    ) in text.splitlines(), text


@pytest.mark.parametrize(
    ("stage", "failed", "advice"),
    [
        ("extracted", None, "histofetch filter --run RUN {does} it"),
        ("filtered", None, "histofetch filter --run RUN {does} it"),  # images added since
        # figures a download brought: filter passes the article over until extracted
        (
            "downloaded",
            None,
            "histofetch extract --run RUN, then histofetch filter --run RUN {do} it",
        ),
        (
            "searched",
            None,
            "histofetch download --run RUN, then histofetch extract --run RUN, then "
            "histofetch filter --run RUN {do} it",
        ),
        # failed at filter: filter takes it again only with --retry-failed
        (
            "extracted",
            "filtered",
            "its article failed at filter; histofetch filter --run RUN --retry-failed tries again",
        ),
        (
            "downloaded",
            "extracted",
            "its article failed at extract, which filter does not take; histofetch status "
            "--run RUN says why",
        ),
    ],
)
def test_explain_says_which_steps_decide_a_row_as_review_does(
    tmp_path: Path, stage: str, failed: str | None, advice: str
) -> None:
    """--explain said 'not scored yet (histofetch filter scores it)' and 'not decided yet
    (histofetch filter decides it)' of every undecided row, but filter passes over the
    figures of an article only downloaded ('N not extracted yet': extract comes first)
    and an article it failed (it takes it again only with --retry-failed). It now names
    the steps the review page names for them (histofetch.stage.decide_commands)."""
    from histocore.manifest import Record
    from histofetch.filter import explain
    from histofetch.review.data import _decides_others

    run = tmp_path / "run"
    m = Manifest(run_dir=run, query="q")
    rec = m.add_record(Record(id="pmid:1", title="T", stage=stage))
    if failed:
        rec.status, rec.failed_stage = "failed", failed
    m.add_image(Image(id="pmid:1/f1", record_id="pmid:1", path="images/f1.png", sha256="a",
                      width=96, height=96))  # fmt: skip
    m.save()
    text = explain(m, "f1")
    for line, verb in (
        ("decision  not decided yet", "decides"),
        ("classifier not computed", "scores"),
    ):
        said = advice.replace("RUN", str(run)).format(does=verb, do=verb.removesuffix("s"))
        shown = next(x for x in text.splitlines() if x.startswith(line))
        assert shown.endswith(f"({said})"), shown
    if not failed:  # the review page says the same steps of the same article
        others = _decides_others({"pmid:1"}, m, run).replace(str(run), "RUN")
        expected = advice.format(does="decides", do="decide").removesuffix(" it")
        assert others == f", {expected} the others", others
    m.close()
