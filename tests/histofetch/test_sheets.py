"""Contact sheets: a grid with one labelled tile per image, written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

from histocore.manifest import Image, Manifest
from histofetch.sheets import TILE, contact_sheet, tile_label, write_filter_sheets, write_sheet


def _run(tmp_path: Path, n: int) -> Manifest:
    m = Manifest.load(tmp_path, create=True)
    for k in range(n):
        rel = f"images/r/p001_{k:03d}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        colour = (200, 80 + k * 10, 180) if k % 2 == 0 else (10, 10, 10)
        PIL.Image.new("RGB", (60 + 10 * k, 40), colour).save(tmp_path / rel)
        m.add_image(
            Image(
                id=f"r/p001_{k:03d}",
                record_id="r",
                path=rel,
                sha256="",
                width=1,
                height=1,
                purple_ratio=0.5,
                he_score=0.25,
                tissue_fraction=0.125,
                kept=k % 2 == 0,
                filter_reason=None if k % 2 == 0 else "dark image",
            )
        )
    return m


def test_tile_label_prints_scores_and_reason() -> None:
    img = Image(
        id="pmid:1/p003_002",
        record_id="pmid:1",
        path="x",
        sha256="",
        width=1,
        height=1,
        purple_ratio=0.5,
        he_score=None,
        filter_reason="dark image",
    )
    assert tile_label(img) == ["1/p003_002", "p0.50 h- t-", "dark image"]


def test_sheet_has_one_tile_per_image_with_the_image_in_it(tmp_path: Path) -> None:
    m = _run(tmp_path, 5)
    sheet = contact_sheet(m, list(m.images.values()), "all", columns=3)
    assert sheet.size == (3 * (TILE + 4) + 4, 22 + 2 * (TILE + 3 * 11 + 4))
    arr = np.asarray(sheet)
    centre = arr[22 + TILE // 2, 4 + TILE // 2]  # first tile shows image 0 (pink)
    assert tuple(centre) == (200, 80, 180)


def test_missing_image_file_gives_a_grey_tile_not_a_crash(tmp_path: Path) -> None:
    m = _run(tmp_path, 2)
    (tmp_path / "images/r/p001_000.png").unlink()
    path = write_sheet(m, list(m.images.values()), tmp_path / "s.png", "t")
    assert PIL.Image.open(path).format == "PNG"


def test_filter_sheets_split_kept_and_rejected(tmp_path: Path) -> None:
    m = _run(tmp_path, 4)
    paths = write_filter_sheets(m)
    assert set(paths) == {"kept", "rejected"}
    for p in paths.values():
        assert p.parent == tmp_path / "sheets" and PIL.Image.open(p).format == "PNG"
    assert not list((tmp_path / "sheets").glob("*.tmp"))


def test_empty_sheet_is_still_a_valid_png(tmp_path: Path) -> None:
    m = Manifest.load(tmp_path, create=True)
    path = write_sheet(m, [], tmp_path / "empty.png", "nothing")
    assert PIL.Image.open(path).size[0] > 0
