"""Contact sheets: one PNG grid of image tiles with their scores, so a person can check
the H&E filter's decisions at a glance (``sheets/kept.png``, ``sheets/rejected.png``)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
from PIL import ImageDraw, ImageFont

from histocore.io import atomic_write_bytes
from histocore.manifest import Image, Manifest

TILE = 128
LABEL_LINES = 3
LINE_H = 11
MAX_TILES = 400  # a sheet wider than this is unreadable anyway; the rest is counted


def tile_label(img: Image) -> list[str]:
    """Up to three short lines: article/image, scores (p = purple ratio, h = H&E score,
    t = tissue fraction), and the filter reason if rejected."""

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    record_tag = img.record_id.rsplit(":", 1)[-1][-8:]  # pmid / hash tail: which article
    lines = [
        f"{record_tag}/{img.id.rsplit('/', 1)[-1]}"[:22],
        f"p{f(img.purple_ratio)} h{f(img.he_score)} t{f(img.tissue_fraction)}",
    ]
    if img.filter_reason:
        lines.append(img.filter_reason[:22])
    return lines


def contact_sheet(
    manifest: Manifest,
    images: Sequence[Image],
    title: str,
    *,
    columns: int = 10,
    tile: int = TILE,
) -> PIL.Image.Image:
    """A grid of thumbnails (aspect kept, on grey) with ``tile_label`` text under each."""
    shown = list(images)[:MAX_TILES]
    font = ImageFont.load_default()
    cols = max(1, min(columns, len(shown) or 1))
    rows = max(1, -(-len(shown) // cols))
    cell_h = tile + LABEL_LINES * LINE_H + 4
    head = 22
    sheet = PIL.Image.new("RGB", (cols * (tile + 4) + 4, head + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    extra = f" (first {len(shown)} of {len(images)})" if len(images) > len(shown) else ""
    draw.text((4, 4), f"{title}: {len(images)} images{extra}", fill="black", font=font)
    for k, img in enumerate(shown):
        x = 4 + (k % cols) * (tile + 4)
        y = head + (k // cols) * cell_h
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=(200, 200, 200))
        path = manifest.resolve(img.path)
        try:
            if path is None:
                raise FileNotFoundError("the manifest names no file")
            with PIL.Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((tile, tile))
                sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        except Exception:  # a missing/broken file is shown as an empty grey tile
            draw.text((x + 4, y + tile // 2), "unreadable", fill="red", font=font)
        for j, line in enumerate(tile_label(img)[:LABEL_LINES]):
            draw.text((x, y + tile + 2 + j * LINE_H), line, fill="black", font=font)
    return sheet


def write_sheet(
    manifest: Manifest, images: Sequence[Image], path: Path, title: str, **kw: int
) -> Path:
    """Render ``contact_sheet`` and write it as PNG atomically."""
    buf = io.BytesIO()
    contact_sheet(manifest, images, title, **kw).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_filter_sheets(manifest: Manifest) -> dict[str, Path]:
    """``sheets/kept.png`` and ``sheets/rejected.png`` for the run's scored images."""
    scored = [i for i in manifest.images.values() if i.kept is not None and i.status == "ok"]
    kept = sorted((i for i in scored if i.kept), key=lambda i: i.id)
    rejected = sorted((i for i in scored if not i.kept), key=lambda i: i.id)
    out = manifest.run_dir / "sheets"
    return {
        "kept": write_sheet(manifest, kept, out / "kept.png", "kept (H&E)"),
        "rejected": write_sheet(manifest, rejected, out / "rejected.png", "rejected"),
    }
