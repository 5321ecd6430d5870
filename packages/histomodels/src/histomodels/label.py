"""Labelling mined figures by hand (``histomodels label``): labels live in the run store.

A person looks at each kept figure and answers metastasis / no metastasis / not usable;
every answer is committed at once, as one transaction of the run store that writes just
that image's label fields (:meth:`~histocore.manifest.Manifest.update_image`, as the
review page does), so quitting or a crash loses nothing; ``manifest.jsonl`` is exported
when labelling ends. Labels can also be set non-interactively (``--set ID=LABEL``, ``--from-csv``).
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from histocore.csvcells import numbered_rows, read_cell
from histocore.errors import DomainError, UnnameablePath, UnresolvablePath
from histocore.io import one_line, path_line, path_shown, text_shown, utc_stamp
from histocore.manifest import IMAGE_LABELS, Image, Manifest, ManifestError

#: Short answers accepted at the prompt and in CSVs, mapped to the stored label.
ALIASES = {
    "m": "metastasis",
    "metastasis": "metastasis",
    "tumour": "metastasis",
    "tumor": "metastasis",
    "1": "metastasis",
    "n": "no_metastasis",
    "no": "no_metastasis",
    "no_metastasis": "no_metastasis",
    "no metastasis": "no_metastasis",
    "normal": "no_metastasis",
    "0": "no_metastasis",
    "u": "not_usable",
    "x": "not_usable",
    "not_usable": "not_usable",
    "not usable": "not_usable",
    "none": None,
    "clear": None,
}


#: the label cell of an unlabelled figure in ``eval --manifest``'s image_scores.csv
UNLABELLED = "-1"


class LabelError(DomainError, ValueError):
    """A bad label, unknown image id or unreadable label file (message names which)."""


def normalise_label(text: str, where: str = "") -> str | None:
    """``"m"``/``"metastasis"`` … → a stored label (``None`` = clear the label)."""
    key = text.strip().lower().replace("-", "_")
    if key.replace("_", " ") in ALIASES:
        key = key.replace("_", " ")
    if key not in ALIASES:
        allowed = ", ".join((*IMAGE_LABELS, "clear"))
        raise LabelError(f"{where}{text!r} is not a label; use one of {allowed}")
    return ALIASES[key]


def _reviewer() -> str:
    """Who gives the labels (stored as ``label_by``, like the review page's name)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (containers)
        return "histomodels label"


def apply_labels(
    manifest: Manifest,
    labels: Mapping[str, str | None],
    where: Mapping[str, str] | None = None,
) -> int:
    """Set labels (all validated first, then saved once, with the export). Returns how
    many changed.

    An unknown id (named by where it was given, ``where[id]``: ``labels.csv:4`` from
    :func:`read_label_csv`; else by the run folder), and the id of a figure whose file lies
    outside the run folder or cannot be resolved (the prompt does not offer it:
    :func:`label_interactively`), raise :class:`LabelError`
    before anything is written."""
    # the run folder is named, not its manifest.jsonl: the labels live in its run store, of
    # which manifest.jsonl is an export (path_shown: a folder named ~ given as ./~/run)
    run = path_shown(manifest.run_dir)
    unknown = [i for i in labels if i not in manifest.images]
    if unknown:  # the CSV line that gave it is at fault, not the run
        given = (where or {}).get(unknown[0])
        if given is not None:
            raise LabelError(f"{given}: no image with id {unknown[0]!r} in {run}")
        raise LabelError(f"{run}: no image with id {unknown[0]!r}")
    for image_id in labels:
        img = manifest.images[image_id]
        if img.path is not None and (why := _refusal(manifest, img)) is not None:
            # what is wrong, as the prompt says it ('outside the run folder' was said of a
            # link loop and of a path holding a NUL character too)
            raise LabelError(
                f"{run}: image {image_id!r}: {why.replace('their ', 'its ', 1)}; not labelled"
            )
    changed = 0
    for label in labels.values():
        if label is not None and label not in IMAGE_LABELS:
            raise LabelError(f"{label!r} is not a label; use one of {', '.join(IMAGE_LABELS)}")
    who, when = _reviewer(), utc_stamp()
    for image_id, label in labels.items():
        img = manifest.images[image_id]
        if img.label == label:
            continue
        changed += 1
        img.label = label
        img.label_by, img.label_at = (who, when) if label is not None else (None, None)
    if changed:
        manifest.save()
    return changed


def label_one(manifest: Manifest, image_id: str, label: str | None) -> None:
    """Commit one answer: the image's label fields, in one store transaction."""
    who, when = _reviewer(), utc_stamp()
    by, at = (who, when) if label is not None else (None, None)
    manifest.update_image(image_id, label=label, label_by=by, label_at=at)


def parse_set(items: list[str]) -> dict[str, str | None]:
    """``["img1=metastasis", "img2=n"]`` → ``{id: label}``."""
    out: dict[str, str | None] = {}
    for item in items:
        image_id, sep, text = item.rpartition("=")
        if not sep or not image_id:
            raise LabelError(f"--set {item!r}: expected IMAGE_ID=LABEL")
        out[image_id] = normalise_label(text, f"--set {item!r}: ")
    return out


def read_label_csv(path: str | Path, where: dict[str, str] | None = None) -> dict[str, str | None]:
    """CSV with columns ``image_id`` (or ``id``) and ``label``; an id as our CSVs write
    it (``'=x`` for ``=x``, :mod:`histocore.csvcells`) is read as the id itself. A label of
    ``-1``, what ``eval --manifest``'s image_scores.csv holds for an unlabelled figure,
    leaves that figure as it is. A bad row is a :class:`LabelError` naming the line it
    starts on; so is an id given two different labels (the last was kept silently), and a
    header naming the label or id column twice. A FIFO, socket or device is refused before
    it is opened (a FIFO hung, ``/dev/zero`` was read into memory without end). ``where``
    gets each id's first line, ``<path>:<line>``, for :func:`apply_labels` to name."""
    path = Path(path)
    _check_regular(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a BOM is allowed
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            id_col = "image_id" if "image_id" in cols else "id" if "id" in cols else None
            if id_col is None or "label" not in cols:
                raise LabelError(f"{path}: needs columns image_id (or id) and label, has {cols}")
            for col in (id_col, "label"):
                if cols.count(col) > 1:  # which one holds the labels?
                    raise LabelError(f"{path}: column {col!r} is given {cols.count(col)} times")
            out: dict[str, str | None] = {}
            first: dict[str, int] = {}  # id -> the line that labelled it
            for n, row in numbered_rows(reader):  # n: the line the row starts on
                image_id = row[id_col]
                if image_id is None:  # a row shorter than the header
                    raise LabelError(f"{path}:{n}: no {id_col} cell")
                if (row["label"] or "").strip() == UNLABELLED:
                    continue
                key = read_cell(image_id)
                label = normalise_label(row["label"] or "", f"{path}:{n}: ")
                if key in out and out[key] != label:  # the last was kept silently
                    raise LabelError(
                        f"{path}:{n}: image {text_shown(key)!r} is labelled {label or 'clear'} "
                        f"here and {out[key] or 'clear'} on line {first[key]}"
                    )
                out[key] = label
                first.setdefault(key, n)
            if where is not None:
                where.update({key: f"{path}:{n}" for key, n in first.items()})
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelError(f"{path}: cannot read label CSV ({exc})") from None


def _check_regular(path: Path) -> None:
    """A label CSV that is a folder, socket or device (``/dev/zero``: read without end) is
    one LabelError, before it is opened; links are followed (their target is checked). A
    pipe is read, as ``cat`` reads it: ``--from-csv <(grep … scores.csv)`` is a user's."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise LabelError(f"{path}: cannot read label CSV ({exc})") from None
    if stat.S_ISDIR(mode):
        raise LabelError(f"{path}: is a folder, not a label CSV")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise LabelError(f"{path}: not a regular file or pipe (a socket or device)")


def to_label(images: list[Image]) -> list[Image]:
    return [i for i in images if i.label is None]


def label_interactively(
    manifest: Manifest,
    ask: Callable[[str], str],
    say: Callable[[str], None],
    *,
    relabel: bool = False,
) -> dict[str, int]:
    """Prompt for each kept figure (unlabelled ones unless ``relabel``); ``s`` skips,
    ``q`` quits. Commits every answer at once; exports ``manifest.jsonl`` at the end
    (also after Ctrl-C). Returns counts per label.

    A figure whose file lies outside the run folder (``/etc/passwd``, ``../x.png``, a link
    pointing out: :meth:`~histocore.manifest.Manifest.image_file` refuses to read it) is
    not offered, and no link to it is shown; one line says how many were left out."""
    images = manifest.kept_images() if relabel else to_label(manifest.kept_images())
    why = {i.id: _refusal(manifest, i) for i in images if i.path is not None}
    refused = [i for i in images if why.get(i.id)]
    images = [i for i in images if not why.get(i.id)]
    counts = {label: 0 for label in IMAGE_LABELS} | {"skipped": 0}
    answered: list[str] = []
    say(f"{len(images)} figure(s) to label in {path_line(manifest.run_dir)}")
    for reason in (_OUTSIDE, _LOOP, _UNNAMEABLE):
        group = [i for i in refused if why[i.id] == reason]
        if group:
            shown = ", ".join(i.id for i in group[:5]) + (", …" if len(group) > 5 else "")
            say(one_line(f"{len(group)} figure(s) not offered: {reason} ({shown})"))
    try:
        for n, img in enumerate(images, start=1):
            _show(manifest, img, f"[{n}/{len(images)}]", say)
            label = _answer(ask, say)
            if label == "quit":
                say("stopped; labels so far are saved")
                break
            if label == "skip":
                counts["skipped"] += 1
                continue
            label_one(manifest, img.id, label)
            answered.append(img.id)
            if label:
                counts[label] += 1
    finally:
        if answered:
            manifest.export()
    return counts


def _show(manifest: Manifest, img: Image, where: str, say: Callable[[str], None]) -> None:
    """The figure's lines; what came from a paper (caption, ids, paths) is untrusted, so its
    control characters are escaped (:func:`~histocore.io.one_line`), never sent to the
    terminal."""
    path = _file(manifest, img)
    caption = text_shown(" ".join((img.caption or "").split()))
    say(one_line(f"{where} {img.id}  {img.width}x{img.height}  {path}"))
    if path is not None:
        say(one_line(f"  open: {path.as_uri()}"))
    if caption:
        say(f"  caption: {caption}")
    if img.label:
        say(one_line(f"  current label: {img.label}"))


def _file(manifest: Manifest, img: Image) -> Path | None:
    """The figure's file as readers open it (:meth:`Manifest.image_file`: links resolved),
    or None when the row names none, one outside the run folder or a link that cannot be
    resolved (a link to itself)."""
    try:
        return manifest.image_file(img.path)
    except ManifestError:
        return None


_OUTSIDE = "their file lies outside the run folder"
_LOOP = "their file path cannot be resolved (a link loop)"
_UNNAMEABLE = "their file path names no file (a NUL character, or one no file name can hold)"


def _refusal(manifest: Manifest, img: Image) -> str | None:
    """Why :meth:`Manifest.image_file` refuses the row's path (a link loop, a path no file
    can have, or a file outside the run folder), or None when it names a usable file."""
    try:
        manifest.image_file(img.path)
    except UnresolvablePath:
        return _LOOP
    except UnnameablePath:  # a NUL character was said to be a link loop
        return _UNNAMEABLE
    except ManifestError:
        return _OUTSIDE
    return None


def listing(manifest: Manifest) -> list[str]:
    """``id<TAB>label<TAB>path`` per kept figure (``histomodels label --list``), escaped."""
    return [
        "\t".join(one_line(str(v)) for v in (i.id, i.label or "-", i.path))
        for i in manifest.kept_images()
    ]


def _answer(ask: Callable[[str], str], say: Callable[[str], None]) -> str | None:
    """A stored label (None = clear it), or ``"skip"`` / ``"quit"``."""
    while True:
        key = ask("[m]etastasis / [n]o metastasis / [u] not usable / [s]kip / [q]uit")
        key = key.strip().lower()
        if key in ("q", "quit"):
            return "quit"
        if key in ("s", "skip", ""):
            return "skip"
        try:
            return normalise_label(key)
        except LabelError as exc:
            say(str(exc))
