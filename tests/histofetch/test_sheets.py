"""Contact sheets: article names not hashes, scores and the full reason on each tile,
paging, closest calls first, size limits, and broken files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest

from histocore.errors import DomainError, describe
from histocore.manifest import Image, Manifest, Record
from histofetch.sheets import (
    PER_SHEET,
    TILE,
    article_name,
    contact_sheet,
    encode_sheet,
    tile_label,
    write_filter_sheets,
    write_sheet,
)


def _run(tmp_path: Path, n: int, size: int = 40) -> Manifest:
    m = Manifest.load(tmp_path, create=True)
    m.add_record(Record(id="pmid:123", pmid="123", title="A paper"))
    for k in range(n):
        rel = f"images/r/p001_{k:03d}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        colour = (200, 80 + k % 100, 180) if k % 2 == 0 else (10, 10, 10)
        PIL.Image.new("RGB", (60 + k % 50, size), colour).save(tmp_path / rel)
        kept = k % 2 == 0
        m.add_image(
            Image(
                id=f"pmid:123/p001_{k:03d}",
                record_id="pmid:123",
                path=rel,
                sha256="",
                width=1,
                height=1,
                purple_ratio=0.5,
                he_score=0.25,
                tissue_fraction=0.125,
                p_he=0.9 if kept else 0.1,
                kept=kept,
                filter_reason=None if kept else "not H&E by the classifier: p(H&E) 0.10 < 0.50",
                extra={"decision": {"note": "classifier p(H&E) 0.90", "margin": (k % 7) / 10}},
            )
        )
    return m


def test_article_names_are_what_a_person_recognises() -> None:
    assert article_name(Record(id="pmid:1", pmid="1"), "pmid:1") == "PMID 1"
    assert article_name(Record(id="pmc:PMC9", pmcid="PMC9"), "pmc:PMC9") == "PMC9"
    rec = Record(id="local:0123456789abcdef", title="konrad-gerlach_report")
    assert article_name(rec, rec.id) == "konrad-gerlach_report"


def test_tile_label_shows_scores_caption_and_the_full_reason() -> None:
    img = Image(
        id="pmid:1/p003_002_panel02",
        record_id="pmid:1",
        path="x",
        sha256="",
        width=1,
        height=1,
        purple_ratio=0.5,
        he_score=None,
        p_he=0.12,
        panel_letter="B",
        kept=False,
        filter_reason="caption says not H&E: caption panel B names IHC (CK19); p(H&E) 0.12",
        extra={"stains": {"said": "caption panel B names IHC (CK19)"}},
    )
    lines = tile_label(img, "PMID 1")
    assert lines[:4] == ["PMID 1", "p003_002_panel02 (B)", "H&E p 0.12 pur 0.50", "hed - tis -"]
    text = " ".join(lines[4:])
    assert "caption panel B names IHC (CK19)" in text
    assert "REJECTED: caption says not H&E: caption panel B names IHC (CK19); p(H&E) 0.12" in text


def test_sheet_has_one_tile_per_image_with_the_image_in_it(tmp_path: Path) -> None:
    m = _run(tmp_path, 5)
    sheet = contact_sheet(m, list(m.images.values()), "all", columns=3)
    assert sheet.width == 3 * (TILE + 6) + 6
    arr = np.asarray(sheet)
    centre = arr[22 + TILE // 2, 6 + TILE // 2]  # first tile shows image 0 (pink)
    assert tuple(centre) == (200, 80, 180)


def test_sixteen_bit_grey_tile_shows_what_the_filter_read(tmp_path: Path) -> None:
    """A 16-bit grey figure (added by hand) showed as a white tile: convert("RGB") clipped
    every value at 255, where the filter reads its top 8 bits."""
    m = _run(tmp_path, 1)
    grey = np.full((40, 60), 0x8000, dtype=np.uint16)
    PIL.Image.fromarray(grey).save(tmp_path / "images/r/p001_000.png")
    assert PIL.Image.open(tmp_path / "images/r/p001_000.png").mode.startswith("I")
    arr = np.asarray(contact_sheet(m, list(m.images.values()), "all", columns=1))
    assert tuple(arr[22 + TILE // 2, 6 + TILE // 2]) == (128, 128, 128)


def test_missing_image_file_gives_a_grey_tile_not_a_crash(tmp_path: Path) -> None:
    m = _run(tmp_path, 2)
    (tmp_path / "images/r/p001_000.png").unlink()
    path = write_sheet(m, list(m.images.values()), tmp_path / "s.png", "t")
    assert PIL.Image.open(path).format == "PNG"


def test_filter_sheets_are_paged_sorted_and_small(tmp_path: Path) -> None:
    n = 2 * PER_SHEET + 10  # 205 kept → two kept pages, 205 rejected → two pages
    m = _run(tmp_path, n, size=120)
    paths = write_filter_sheets(m)
    assert set(paths) == {
        "kept-001", "kept-002", "rejected-001", "rejected-002", "closest-kept", "closest-rejected"
    }  # fmt: skip
    for p in paths.values():
        assert p.suffix == ".jpg" and p.stat().st_size < 2_000_000
        assert PIL.Image.open(p).format == "JPEG"
    # closest calls (smallest margin) first: margin 0 tiles are k % 7 == 0 → p001_000
    first = PIL.Image.open(paths["closest-kept"])
    assert first.height < PIL.Image.open(paths["kept-001"]).height
    assert not list((tmp_path / "sheets").glob("*.tmp"))
    # a second run with fewer images removes the stale pages
    for key in [k for k in m.images if int(k[-3:]) >= 20]:
        del m.images[key]
    paths = write_filter_sheets(m)
    assert sorted(p.name for p in (tmp_path / "sheets").iterdir()) == sorted(
        p.name for p in paths.values()
    )


def test_sheets_are_reencoded_under_the_size_limit() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3)).astype(np.uint8)
    data = encode_sheet(PIL.Image.fromarray(noise), max_bytes=400_000)
    assert len(data) <= 400_000


def test_a_sheet_of_one_tile_shows_its_whole_title(tmp_path: Path) -> None:
    """The sheet was as wide as its tiles: with one or two, the title was cut ("kept: 1
    images/panels, closest to the b"), and an empty sheet showed a stub of it."""
    from PIL import ImageFont

    m = _run(tmp_path, 1)
    title = "kept: 1 image/panel, closest to the boundary first (sheet 1 of 1: 1-1)"
    drawn = ImageFont.load_default().getlength(title)  # the title's width in pixels
    for shown in (list(m.images.values()), []):
        head = np.asarray(contact_sheet(m, shown, title).convert("L"))[:20]
        inked = np.nonzero((head < 128).any(axis=0))[0]
        assert head.shape[1] >= 4 + drawn and inked.max() < head.shape[1] - 3, head.shape
    wide = contact_sheet(m, list(m.images.values()) * 6, "t", columns=6)
    assert wide.size[0] == 6 * (TILE + 6) + 6  # a grid wider than its title keeps its width


def test_sheet_titles_of_one_row_are_singular(tmp_path: Path) -> None:
    """A sheet of one kept figure was titled 'kept: 1 images/panels, …' and its closest
    calls 'the 1 kept images'. The sheet is as wide as its title (a single tile is
    narrower), so its width tells which title was drawn."""
    from PIL import ImageFont

    m = _run(tmp_path, 2)  # one kept, one rejected
    paths = write_filter_sheets(m)
    font = ImageFont.load_default()
    for name, title in (
        ("kept-001", "kept: 1 image/panel, closest to the boundary first (sheet 1 of 1: 1-1)"),
        ("closest-kept", "closest calls, kept: the 1 kept image nearest the boundary"),
    ):
        width = PIL.Image.open(paths[name]).size[0]
        assert width == max(TILE + 12, int(np.ceil(font.getlength(title))) + 8), name


def test_empty_sheet_is_still_a_valid_image(tmp_path: Path) -> None:
    m = Manifest.load(tmp_path, create=True)
    path = write_sheet(m, [], tmp_path / "empty.png", "nothing")
    assert PIL.Image.open(path).size[0] > 0


def test_a_killed_sheet_writes_temp_file_is_removed_by_the_next(tmp_path: Path) -> None:
    """A filter killed while writing a sheet left `.kept-001.jpg.<random>.tmp` in sheets/
    for good: the stale-sheet clean-up skipped dot files. The next filter removes it; a
    temp file of anything else there (the user's) is left."""
    m = _run(tmp_path, 3)
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    killed = sheets / ".kept-001.jpg.k2j4x9.tmp"
    killed.write_bytes(b"\xff\xd8 half a jpeg")
    other = sheets / ".notes.txt.a1b2.tmp"
    other.write_text("mine")
    # shaped like kept*.* but no name a sheet has (review 15): the user's, left
    alike = [sheets / ".kept-notes.txt.bak.tmp", sheets / ".rejected-ideas.md.v2.tmp"]
    for path in alike:
        path.write_text("mine")
    folder = sheets / ".kept-002.jpg.zz.tmp"  # a folder so named: left, no traceback
    folder.mkdir()
    paths = write_filter_sheets(m)
    assert not killed.exists() and other.read_text() == "mine"
    assert all(p.read_text() == "mine" for p in alike) and folder.is_dir()
    assert sorted(p.name for p in sheets.iterdir()) == sorted(
        [other.name, *(p.name for p in alike), folder.name, *(p.name for p in paths.values())]
    )


def test_a_folder_named_like_a_sheet_is_left_and_the_sheets_written(tmp_path: Path) -> None:
    """A folder under sheets/ matching the clean-up's `kept*.*` (`kept.old`, the user's
    backup) stopped every filter with `is a directory`: the clean-up unlinked it. Folders,
    and links to folders, are left as they are, with what they hold."""
    m = _run(tmp_path, 3)
    sheets = tmp_path / "sheets"
    kept_old = sheets / "kept.old"
    kept_old.mkdir(parents=True)
    (kept_old / "kept-001.jpg").write_bytes(b"an old sheet")
    (sheets / "rejected-1.bak").mkdir()
    (sheets / "closest-kept.d").symlink_to(kept_old)
    paths = write_filter_sheets(m)
    assert (kept_old / "kept-001.jpg").read_bytes() == b"an old sheet"
    assert (sheets / "rejected-1.bak").is_dir() and (sheets / "closest-kept.d").is_symlink()
    assert all(p.is_file() for p in paths.values())


def test_a_folder_where_a_sheet_goes_is_one_error_naming_it(tmp_path: Path) -> None:
    """A folder named as a sheet filter writes (`kept-001.jpg`) is refused in one line,
    before any sheet there is removed; the folder is left as it is."""
    m = _run(tmp_path, 3)
    sheets = tmp_path / "sheets"
    folder = sheets / "rejected-001.jpg"
    folder.mkdir(parents=True)
    (sheets / "kept-001.jpg").write_bytes(b"an earlier filter's sheet")
    with pytest.raises(DomainError) as err:
        write_filter_sheets(m)
    assert describe(err.value) == (
        f"{folder}: is a folder where filter writes a contact sheet; move it"
    )
    assert (
        folder.is_dir() and (sheets / "kept-001.jpg").read_bytes() == b"an earlier filter's sheet"
    )


def test_no_sheet_is_a_title_over_no_tile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every figure rejected, filter wrote kept-001.jpg and closest-kept.jpg: a title
    ('kept: 0 images/panels, … (sheet 1 of 1: 1-0)') over no tile, as the rejected ones
    were with none rejected. That side's sheets are now not written (an earlier filter's
    removed), filter still names the sheets folder; a figure's file removed since it was
    scored is a tile saying 'file missing', not 'unreadable'; and a sheet a caller asks
    for with no image says so under its title."""
    from PIL import ImageDraw
    from review_kit import make_run
    from typer.testing import CliRunner

    from histofetch.cli import app

    m = _run(tmp_path / "a", 3)
    paths = write_filter_sheets(m)
    assert set(paths) == {"kept-001", "rejected-001", "closest-kept", "closest-rejected"}
    for img in m.images.values():
        img.kept, img.filter_reason = False, "not H&E"
    paths = write_filter_sheets(m)
    assert set(paths) == {"rejected-001", "closest-rejected"}
    assert sorted(p.name for p in (tmp_path / "a" / "sheets").iterdir()) == [
        "closest-rejected.jpg", "rejected-001.jpg"
    ]  # fmt: skip
    for img in m.images.values():
        img.kept, img.filter_reason = True, None
    assert set(write_filter_sheets(m)) == {"kept-001", "closest-kept"}
    # through the CLI: every figure too small to judge, rejected
    run = make_run(tmp_path / "b", filtered=False)
    r = CliRunner().invoke(app, ["filter", "--run", str(run), "--min-side", "100000"])
    assert r.exit_code == 0 and f"kept 0 of 4 scored images; sheets in {run / 'sheets'}" in (
        r.output
    ), r.output
    assert sorted(p.name for p in (run / "sheets").iterdir()) == [
        "closest-rejected.jpg", "rejected-001.jpg"
    ]  # fmt: skip
    drawn: list[str] = []
    real = ImageDraw.ImageDraw.text

    def text(self: ImageDraw.ImageDraw, xy: Any, words: Any, *args: Any, **kw: Any) -> None:
        drawn.append(str(words))
        return real(self, xy, words, *args, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    (tmp_path / "a" / "images/r/p001_000.png").unlink()
    contact_sheet(m, list(m.images.values())[:2], "two")
    assert drawn.count("file missing") == 1 and "unreadable" not in drawn, drawn
    drawn.clear()
    contact_sheet(m, [], "nothing")
    assert drawn == ["nothing", "no image or panel to show"], drawn
