"""Contact sheets: JPEG grids of image tiles with the article, the scores and the full reason.

``filter`` writes, in ``RUN/sheets/``:

* ``kept-001.jpg``, ``kept-002.jpg``, … and ``rejected-001.jpg``, … — every decided
  image and panel (a figure split into panels is shown as its panels), sorted by distance
  to the decision boundary (closest calls first), at most :data:`PER_SHEET` tiles a sheet;
* ``closest-kept.jpg`` / ``closest-rejected.jpg`` — the :data:`CLOSEST` calls nearest the
  boundary in each direction, the first place to look for mistakes.

Each tile shows the image (aspect kept) and, under it: the article (PMID, PMCID or a short
title, never a hash), the image/panel name, ``H&E p`` (classifier), ``pur``/``hed``/``tis``
(colour scores), what the caption says, and the decision's full note or reason, wrapped.
Sheets are JPEG, re-encoded at lower quality (then shrunk) if one would exceed
:data:`MAX_BYTES`.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import stat
import textwrap
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
from PIL import ImageDraw, ImageFont

from histocore.errors import DomainError
from histocore.imaging import read_rgb
from histocore.io import LINK_LOOP, atomic_temp_target, atomic_write_bytes, path_shown
from histocore.manifest import Image, Manifest, Record
from histofetch.decide.colour import MAX_PIXELS

TILE = 160
LINE_H = 11
LABEL_LINES = 11
CHARS = 30  # characters per label line at TILE px with PIL's default font
PER_SHEET = 200
CLOSEST = 60
MAX_BYTES = 2_000_000
COLUMNS = 10


def article_name(rec: Record | None, record_id: str) -> str:
    """A short name a person recognises: PMID, PMCID, else the title (file stem) cut short."""
    if rec is not None:
        if rec.pmid:
            return f"PMID {rec.pmid}"
        if rec.pmcid:
            return rec.pmcid
        if rec.title:
            return rec.title[:28]
    return record_id.rsplit(":", 1)[-1][:12]


def tile_label(img: Image, article: str = "") -> list[str]:
    """The lines under a tile: article, image name, scores, caption evidence, reason."""

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    name = img.id.rsplit("/", 1)[-1]
    if img.panel_letter:
        name += f" ({img.panel_letter})"
    lines = [article[:CHARS] if article else "", name[:CHARS]]
    lines.append(f"H&E p {f(img.p_he)} pur {f(img.purple_ratio)}")
    lines.append(f"hed {f(img.he_score)} tis {f(img.tissue_fraction)}")
    said = img.extra.get("stains", {}).get("said")
    if said and said != "no caption":
        lines += textwrap.wrap(said, CHARS)[:2]
    decision = img.extra.get("decision", {})
    text = img.filter_reason or decision.get("note") or ""
    prefix = "KEPT: " if img.kept else "REJECTED: "
    lines += textwrap.wrap(prefix + text, CHARS)
    return [x for x in lines if x][:LABEL_LINES]


def contact_sheet(
    manifest: Manifest,
    images: Sequence[Image],
    title: str,
    *,
    columns: int = COLUMNS,
    tile: int = TILE,
) -> PIL.Image.Image:
    """A grid of thumbnails (aspect kept, on grey) with ``tile_label`` text under each."""
    shown = list(images)[:PER_SHEET]
    font = ImageFont.load_default()
    cols = max(1, min(columns, len(shown) or 1))
    rows = max(1, -(-len(shown) // cols))
    cell_h = tile + LABEL_LINES * LINE_H + 8
    head = 22
    # as wide as its title too: a sheet of one or two tiles cut it ("kept: 1 images/pane")
    width = max(cols * (tile + 6) + 6, math.ceil(font.getlength(title)) + 8)
    sheet = PIL.Image.new("RGB", (width, head + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill="black", font=font)
    if not shown:  # filter writes no such sheet; a caller's is not left blank
        draw.text((6, head + 4), "no image or panel to show", fill=(170, 0, 0), font=font)
    for k, img in enumerate(shown):
        x = 6 + (k % cols) * (tile + 6)
        y = head + (k // cols) * cell_h
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=(200, 200, 200))
        problem = "unreadable"
        try:  # a missing file or one outside the run folder: a grey tile saying which
            path = manifest.image_file(img.path)  # decoded as the filter read it (16-bit
            # grey by its top 8 bits, transparency on white), not clipped by convert("RGB")
            if not path.exists():  # removed since it was scored: said so, not 'unreadable'
                problem = "file missing"
            im = PIL.Image.fromarray(read_rgb(path, max_pixels=MAX_PIXELS, max_side=tile))
            sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
        except Exception:  # a missing/broken file is shown as a grey tile saying so
            draw.text((x + 4, y + tile // 2), problem, fill="red", font=font)
        colour = (0, 110, 0) if img.kept else (170, 0, 0)
        article = article_name(manifest.records.get(img.record_id), img.record_id)
        for j, line in enumerate(tile_label(img, article)):
            draw.text(
                (x, y + tile + 2 + j * LINE_H), line, fill="black" if j < 4 else colour, font=font
            )
    return sheet


def encode_sheet(sheet: PIL.Image.Image, max_bytes: int = MAX_BYTES) -> bytes:
    """JPEG bytes under ``max_bytes``: quality lowered step by step, then the sheet shrunk."""
    data = b""
    while True:
        for quality in (85, 70, 55, 40):
            buf = io.BytesIO()
            sheet.save(buf, format="JPEG", quality=quality, optimize=True)
            data = buf.getvalue()
            if len(data) <= max_bytes:
                return data
        if min(sheet.size) < 64:
            return data
        sheet = sheet.resize(
            (sheet.width * 3 // 4, sheet.height * 3 // 4), PIL.Image.Resampling.LANCZOS
        )


def write_sheet(
    manifest: Manifest, images: Sequence[Image], path: Path, title: str, **kw: int
) -> Path:
    """Render ``contact_sheet`` and write it atomically (JPEG for .jpg, else PNG)."""
    sheet = contact_sheet(manifest, images, title, **kw)
    if path.suffix.lower() in {".jpg", ".jpeg"}:
        data = encode_sheet(sheet)
    else:
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        data = buf.getvalue()
    atomic_write_bytes(path, data)
    return path


def shown_rows(manifest: Manifest) -> list[Image]:
    """Decided rows a person should see: images, and panels instead of split figures."""
    return [
        i
        for i in manifest.images.values()
        if i.kept is not None and i.status == "ok" and not i.n_panels
    ]


def _margin(img: Image) -> float:
    return abs(float(img.extra.get("decision", {}).get("margin", 0.0)))


#: the names write_filter_sheets gives its sheets
_SHEET_NAME = re.compile(r"(kept|rejected)-\d{3,}\.jpg|closest-(kept|rejected)\.jpg")


#: the first sheet of each kind, checked before any scoring (a side with no row has none)
ALWAYS_WRITTEN = ("kept-001.jpg", "rejected-001.jpg", "closest-kept.jpg", "closest-rejected.jpg")


def _refuse_sheets_folder(folder: Path) -> None:
    """One error line when ``folder`` (``RUN/sheets``) cannot hold the sheets: a link loop
    (``ln -s sheets RUN/sheets``, or two links to each other: filter said only
    ``RUN/sheets: file exists``, after scoring), a link to nothing, a link to a file, or a
    file. Not there yet is fine."""
    try:
        mode = os.stat(folder).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DomainError(
                f"{path_shown(folder)}: is a link loop ({LINK_LOOP}), "
                "where filter writes its contact sheets; remove it"
            ) from None
        if folder.is_symlink():  # a dangling link: mkdir said 'file exists'
            raise DomainError(
                f"{path_shown(folder)}: is a link to {os.readlink(folder)!r}, which does not "
                "exist, where filter writes its contact sheets; make that folder or remove it"
            ) from None
        return  # not there yet (made when a sheet is written), or its own error then
    if not stat.S_ISDIR(mode) and folder.is_symlink():  # 'a file … move it' moved a link
        raise DomainError(
            f"{path_shown(folder)}: is a link to {os.readlink(folder)!r}, not a folder, where "
            "filter writes its contact sheets; remove it"
        )
    if not stat.S_ISDIR(mode):
        raise DomainError(
            f"{path_shown(folder)}: is a file where filter writes its contact sheets "
            "(a folder); move it"
        )


def refuse_folders_in_the_way(folder: Path, names: Sequence[str] = ALWAYS_WRITTEN) -> None:
    """One error line naming the first of ``names`` in ``folder`` that is a folder (or a link
    to one), a sheet the filter must write: it is the user's, never removed or written into
    (the filter stopped with ``is a directory`` at the stale-sheet clean-up). ``folder``
    itself must be a folder, a link to one, or not there yet (:func:`_refuse_sheets_folder`)."""
    _refuse_sheets_folder(folder)
    for name in names:
        path = folder / name
        if path.is_dir():
            raise DomainError(f"{path}: is a folder where filter writes a contact sheet; move it")


def write_filter_sheets(manifest: Manifest) -> dict[str, Path]:
    """Paged kept/rejected sheets sorted by closeness to the boundary, and the closest calls.
    A folder in ``sheets/`` is never removed: one named as a sheet this filter writes
    (``kept-001.jpg``) is one error line before anything there changes; any other
    (``kept.old``) is left as it is. With no decided row to show (nothing scored, or every
    figure unreadable) no sheet is written (they were four blank ones), the earlier
    filter's removed as always, and ``{}`` returned; with none kept, or none rejected, that
    side's sheets are not written (``kept-001.jpg`` was a title over no tile)."""
    out = manifest.run_dir / "sheets"
    rows = shown_rows(manifest)
    groups = {
        kind: sorted((i for i in rows if bool(i.kept) == keep), key=lambda i: (_margin(i), i.id))
        for kind, keep in (("kept", True), ("rejected", False))
    }
    to_write = [
        *(
            f"{kind}-{page:03d}.jpg"
            for kind, group in groups.items()
            for page in range(1, -(-len(group) // PER_SHEET) + 1)
        ),
        *(f"closest-{kind}.jpg" for kind, group in groups.items() if group),
    ]
    refuse_folders_in_the_way(out, to_write)
    patterns = ("kept*.*", "rejected*.*", "closest-*.*")
    # and the temp file of a sheet whose write was killed (.kept-001.jpg.<random>.tmp): only
    # of a name this function writes, only a file
    killed = [
        p
        for p in out.glob(".*.tmp")
        if _SHEET_NAME.fullmatch(atomic_temp_target(p.name) or "") and not p.is_dir()
    ]
    stale = [p for pattern in patterns for p in out.glob(pattern) if not p.is_dir()]
    for path in [*stale, *killed]:  # files only: a folder so named is the user's
        path.unlink()
    written: dict[str, Path] = {}
    if not rows:  # blank sheets show nothing: the earlier ones removed, none written
        return written
    out.mkdir(parents=True, exist_ok=True)
    for kind, group in groups.items():
        if not group:  # a sheet of no tile: none kept, or none rejected
            continue
        pages = -(-len(group) // PER_SHEET)
        for page in range(pages):
            part = group[page * PER_SHEET : (page + 1) * PER_SHEET]
            first = page * PER_SHEET + 1
            title = (
                f"{kind}: {_rows(len(group))}, closest to the boundary first "
                f"(sheet {page + 1} of {pages}: {first}-{first + len(part) - 1})"
            )
            name = f"{kind}-{page + 1:03d}"
            written[name] = write_sheet(manifest, part, out / f"{name}.jpg", title)
        closest = group[:CLOSEST]
        written[f"closest-{kind}"] = write_sheet(
            manifest,
            closest,
            out / f"closest-{kind}.jpg",
            f"closest calls, {kind}: the {len(closest)} {kind} "
            f"{'image' if len(closest) == 1 else 'images'} nearest the boundary",
        )
    return written


def _rows(n: int) -> str:
    """'1 image/panel', '2 images/panels' (a sheet title said '1 images/panels')."""
    return f"{n} image/panel" if n == 1 else f"{n} images/panels"
