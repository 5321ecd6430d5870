"""What the review page shows and saves: kept figures, their labels, one answer at a time.

Every answer is written at once as one transaction of the run store
(:meth:`histocore.manifest.Manifest.update_image`: ``label``, ``label_by``, ``label_at`` of
one image row, field-level, so other writers' fields and rows are kept), then appended to
``RUN/review_log.jsonl``. Two tabs, two reviewers or a stage running at the same time on
one run therefore never lose an answer. ``manifest.jsonl`` (the export) is rewritten when
the server stops.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import sqlite3
import stat
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from markupsafe import Markup, escape

from histocore.csvcells import numbered_rows, read_cell
from histocore.errors import DomainError, describe
from histocore.io import (
    RefusedFile,
    path_shown,
    read_capped,
    record_slug,
    resolved,
    text_shown,
    unique_stem,
    utc_stamp,
)
from histocore.manifest import (
    IMAGE_LABELS,
    MANIFEST_NAME,
    STAGES,
    Image,
    Manifest,
    ManifestError,
    Record,
    run_folder,
)
from histofetch.captions import FIGURE_LABEL, figure_key, normalise
from histofetch.resolve import canonical_pmcid
from histofetch.stage import command, decide_commands, failed_at

LOG_NAME = "review_log.jsonl"
_THREAD_LOCK = threading.Lock()  # the store guards processes; this, our own threads' Manifest


class ReviewError(DomainError, ValueError):
    """A run folder, scores folder or answer the review page cannot use (names which)."""


#: The largest ``image_scores.csv`` the page reads (eval writes one short row a figure:
#: over a million figures fit); a larger file is refused unread, never read whole.
MAX_SCORES_BYTES = 128 << 20


@dataclass
class Scores:
    """A ``histomodels eval --manifest`` output: image scores and heatmap overlays."""

    folder: Path
    by_image: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> Scores:
        folder = Path(folder)
        path = folder / "image_scores.csv"
        try:  # capped: a 10 GB file (or a FIFO, /dev/zero) given by mistake is one line
            raw = read_capped(path, MAX_SCORES_BYTES)
        except FileNotFoundError:
            raise ReviewError(
                f"{path}: no image_scores.csv (give a histomodels eval --manifest output)"
            ) from None
        except RefusedFile as exc:  # over the cap, a folder, a pipe or device
            raise ReviewError(f"{path}: {exc}, not an image_scores.csv eval writes") from None
        except OSError as exc:  # no permission, a link loop: '<file>: <problem>'
            raise ReviewError(describe(exc).splitlines()[0]) from None
        out = cls(folder)
        try:
            with io.StringIO(raw.decode("utf-8-sig"), newline="") as fh:  # a BOM is allowed
                reader = csv.DictReader(fh)
                first: dict[str, int] = {}  # image id -> the line of its row
                for line, row in numbered_rows(reader):  # the line a row starts on
                    image_id = row["image_id"]
                    if image_id is None:  # a row shorter than the header
                        raise ValueError(f"line {line} has no image_id")
                    key = read_cell(image_id)
                    if key in first:  # eval writes one row a figure: the last won silently
                        raise ValueError(
                            f"line {line}: image {text_shown(key)!r} again (first on line "
                            f"{first[key]})"
                        )
                    first[key] = line
                    if _no_tile(row):  # eval scored no tile of it: shown without a score
                        continue
                    try:
                        scores = {k: float(v) for k in ("max", "topk_mean") if (v := row.get(k))}
                    except ValueError:
                        raise ValueError(f"line {line}: a score that is not a number") from None
                    if not scores:
                        raise ValueError(f"line {line} has no max or topk_mean score")
                    if not all(math.isfinite(v) for v in scores.values()):
                        raise ValueError(f"line {line}: a score that is not finite")
                    for k, v in scores.items():  # a probability; 7 or -2: an edited or damaged file
                        if not 0.0 <= v <= 1.0:  # said as the file has it ('7', not 7.0)
                            # a number: cut shorter than other values, and marked
                            # ('-0.0000…' is no 0)
                            given = text_shown(str(row[k]).strip(), 40)
                            raise ValueError(
                                f"line {line}: {k} {given!r} is not a number from 0 to 1"
                            )
                    out.by_image[key] = scores
        except (KeyError, ValueError, csv.Error, UnicodeDecodeError) as exc:
            raise ReviewError(f"{path}: not an image_scores.csv ({exc})") from None
        return out

    def heatmap(self, image_id: str) -> Path | None:
        """The overlay PNG (``heatmaps/<unique stem>.png``, or the slug alone as eval wrote
        it before 2026-11-30), not when the file is a link pointing out of the scores
        folder (a shared eval folder's ``heatmaps/x.png`` may link to any local file); a
        ``heatmaps/`` folder that is itself a link is the local user's and is followed. A link
        that cannot be resolved (to itself) is no heatmap; the older slug name is tried next."""
        for stem in (unique_stem(image_id), record_slug(image_id)):
            path = self.folder / "heatmaps" / f"{stem}.png"
            if path.is_symlink():
                real, folder = resolved(path), resolved(self.folder)
                if real is None or folder is None:  # a loop: /api/item, /heatmap said 500
                    continue  # the older slug name may still be a heatmap
                if not real.is_relative_to(folder):
                    return None
            if path.is_file():
                return path
        return None


def _no_tile(row: dict[str, str | None]) -> bool:
    """An ``image_scores.csv`` row of a figure with no tissue tile (``n_tiles`` 0): eval
    writes ``nan`` for its scores, which no other row may hold."""
    blank = all((row.get(k) or "nan").strip().lower() == "nan" for k in ("max", "topk_mean"))
    return (row.get("n_tiles") or "").strip() == "0" and blank


def review_folder(run_dir: str | Path) -> Path:
    """The run folder ``run_dir`` names: the folder, or its ``manifest.jsonl`` or
    ``run.sqlite``, which stand for it as for :meth:`Manifest.load` (``load_run`` refused
    them as ``not a folder`` while every other library call took them). Another file, or
    something that is no folder (a FIFO), is a :class:`ReviewError`; a missing folder is
    ``Manifest.load``'s to say (``no such folder``), as for every command."""
    try:
        folder = run_folder(run_dir)
    except (ManifestError, OSError) as exc:  # another file; a name too long to look at
        raise ReviewError(describe(exc).splitlines()[0]) from None
    if os.path.lexists(folder) and not folder.is_dir():
        raise ReviewError(f"{path_shown(folder)}: not a folder (give a histofetch run folder)")
    return folder


def load_run(run_dir: str | Path) -> Manifest:
    """The run's manifest, or a :class:`ReviewError` that says what is wrong with the folder
    (``run_dir``: as :func:`review_folder` takes it)."""
    return load_folder(review_folder(run_dir))


def load_folder(run_dir: Path) -> Manifest:
    """:func:`load_run` of the folder :func:`review_folder` gave (the server finds it once,
    then reads it again whenever the run changes)."""
    try:
        manifest = Manifest.load(run_dir)
    except (ManifestError, OSError, UnicodeDecodeError) as exc:
        # an OSError as '<file>: <problem>' ('run/manifest.jsonl: permission denied'), not
        # its repr-like '[Errno 13] Permission denied: ...'
        raise ReviewError(describe(exc).splitlines()[0]) from None
    if not manifest.kept_images():
        hint = _nothing_kept(manifest, run_dir)
        manifest.close()
        raise ReviewError(f"{path_shown(run_dir / MANIFEST_NAME)}: no kept figures to review{hint}")
    return manifest


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _nothing_kept(manifest: Manifest, run_dir: Path) -> str:
    """Why a run has no kept figure to review, and what to do: filter kept none of its
    images, failed its articles, has images still to decide, or found none to decide."""
    from histofetch.sheets import shown_rows

    images = list(manifest.images.values())
    # images and panels, not the split figures they were cut from (the sheets' count); a
    # figure filter could not read is decided (rejected) unscored: counted apart, as status
    # counts it ('kept none of the run's 4 images' was said of 4 it could not read)
    decided = sum(
        1 for img in images if img.kept is not None and not img.n_panels and img.status == "ok"
    )
    unreadable = sum(1 for img in images if img.kept is False and img.status == "failed")
    failed_ids = {
        r.id
        for r in manifest.records.values()
        if r.status == "failed" and r.failed_stage == "filtered"  # the stage, as it is stored
    }
    failed = len(failed_ids)
    waiting = any(img.kept is None for img in images)
    # other articles whose images filter has not decided yet: not failed (filter has not
    # reached them), or failed at another stage (filter never takes them)
    undecided = {i.record_id for i in images if i.kept is None} - failed_ids
    stopped = [r for r in manifest.records.values() if r.id in undecided and r.status == "failed"]
    stopped_at = failed_at(r.failed_stage for r in stopped)  # 'failed at ?' was said
    blocked, pending = len(stopped), len(undecided) - len(stopped)
    # the command that decides the others: filter, or for articles not extracted yet
    # (figures a download brought) the steps before it, which filter passes over
    decide_others = _decides_others(undecided - {r.id for r in stopped}, manifest, run_dir)
    status = f"{command('status', run_dir)} says why"
    failures = retry = others = ""
    if pending:  # 'failed 1 article' or 'kept none' alone hid the articles not reached
        verb = "has" if pending == 1 else "have"
        others = f"; {_plural(pending, 'other article')} {verb} images not decided yet"
    if blocked:  # failed at another stage: --retry-failed of filter never takes them
        them = "it" if blocked == 1 else "them"
        others += (
            f"; {_plural(blocked, 'other article')} {stopped_at}, "
            f"images not decided (filter does not take {them})"
        )
    if failed:  # its images went back to undecided: 'run filter first' would fail again
        total = len(manifest.records)  # 'the run's 1 article' read as the run's only one
        failures = (
            f"the run's {_plural(failed, 'article')}"
            if failed == total
            else f"{failed} of the run's {_plural(total, 'article')}"
        )
        failures += others
        retry = f", {command('filter', run_dir, '--retry-failed')} tries again"
        if decide_others.startswith(", histofetch filter "):
            retry += " and decides the others"
        elif decide_others:
            retry += ";" + decide_others.removeprefix(",")
    unread = ""  # the figures filter could not read, and how to read them again
    if unreadable:
        them = "it" if unreadable == 1 else "them"
        again = (
            "" if failed else f": {command('filter', run_dir, '--retry-failed')} reads {them} again"
        )
        unread = f" ({unreadable} more it could not read{again})"
    if decided:  # filter ran: say what it did, not to run it
        sheets = run_dir / "sheets"
        # not after --no-sheet (an earlier filter's sheets show other decisions: the header's
        # filter_sheets is False), nor of unreadable figures only (on no sheet)
        current = manifest.header_extra.get("filter_sheets", True)  # a bool (check_header)
        shown = bool(shown_rows(manifest)) and sheets.is_dir() and current
        where = f", the sheets in {path_shown(sheets)} show them" if shown else ""
        if not failed and not others and not unreadable:
            return f": filter kept none of the run's {_plural(decided, 'image')}; {status}{where}"
        if not failed:  # 'the run's 2 images' of its 4: others wait for filter (or cannot)
            return (
                f": filter kept none of the {_plural(decided, 'image')} it decided{unread}"
                f"{others}; {status}{where}{decide_others}"
            )
        # 'kept none of 2 images' alone hid the articles it failed (their images undecided)
        return (
            f": filter kept none of the {_plural(decided, 'image')} it decided{unread} and "
            f"failed {failures}; {status}{where}{retry}"
        )
    if unreadable:  # decided, every one unreadable: not 'its filtered articles have no images'
        unread = f"the {_plural(unreadable, 'image')} it took"
        if failed:  # the others are told after the failures (they were told twice)
            return f": filter could not read {unread} and failed {failures}; {status}{retry}"
        them = "it" if unreadable == 1 else "them"
        reread = command("filter", run_dir, "--retry-failed")
        # the others after 'reads them again' (before it, 'them' read as those articles),
        # with the commands that decide them (they were not named)
        return (
            f": filter could not read {unread}; {status}, {reread} reads {them} again"
            f"{others}{decide_others}"
        )
    if failed:
        return f": filter failed {failures}; {status}{retry}"
    left = _steps_left({i.record_id for i in images if i.kept is None}, manifest)
    if waiting and left:  # articles whose images filter has not decided yet
        return left
    if any(r.stage == "filtered" for r in manifest.records.values()):
        return f": its filtered articles have no images; {status}"
    if not manifest.records:  # 'run histofetch filter first' had nothing to filter
        return ": the run has no articles yet (a search that finds some, or extract with PDFs)"
    left = _steps_left(set(manifest.records), manifest)
    if left:
        return left
    n = _plural(len(manifest.records), "article")
    return f": its {n} {failed_at(r.failed_stage for r in manifest.records.values())}; {status}"


def _decides_others(record_ids: set[str], manifest: Manifest, run_dir: Path) -> str:
    """', <the commands> decide(s) the others' for these articles (not failed) whose images
    wait undecided, or "" for none: filter takes only extracted articles, so for one only
    downloaded (figures the download brought) extract comes first, and download before it
    for one only searched ('filter decides the others' was said of them, and filter passed
    them over)."""
    records = [r for rid in record_ids if (r := manifest.records.get(rid)) is not None]
    # each command whole, to copy ('extract --run RUN and then filter decide' was said)
    commands = decide_commands(records, run_dir)
    if not commands:
        return ""
    verb = "decides" if len(commands) == 1 else "decide"
    return f", {', then '.join(commands)} {verb} the others"


#: What a run still needs before its images can be reviewed, by the last stage an article
#: finished: filter takes only extracted articles, extract only downloaded ones.
_STEPS = {
    "searched": " (run histofetch download, extract and filter first)",
    "downloaded": " (run histofetch extract and filter first)",
    "extracted": " (run histofetch filter first)",
    "filtered": " (run histofetch filter first)",  # images added since: filter takes them
}


def _steps_left(record_ids: set[str], manifest: Manifest) -> str:
    """The commands still to run for the earliest of these articles that has not failed
    ('run histofetch filter first' was said of a run only searched, which filter passes
    over); "" when each of them failed."""
    stages = [
        STAGES.index(r.stage)
        for rid in record_ids
        if (r := manifest.records.get(rid)) is not None and r.status != "failed"
    ]
    return _STEPS[STAGES[min(stages)]] if stages else ""


def article_link(rec: Record | None) -> str | None:
    """Where a reader can open the article: PMC, DOI or PubMed (https only)."""
    if rec is None:
        return None
    pmcid = canonical_pmcid(rec.pmcid)  # a manifest's PMC../x is no article
    if pmcid:
        return f"https://pmc.ncbi.nlm.nih.gov/articles/{pmcid}/"
    if rec.doi:
        return f"https://doi.org/{escape(rec.doi)}"
    if rec.pmid:
        return f"https://pubmed.ncbi.nlm.nih.gov/{escape(rec.pmid)}/"
    return None


def caption_html(img: Image) -> Markup:
    """The caption, escaped, with the weak-label evidence spans in ``<mark>`` elements."""
    text = normalise(img.caption)
    spans = sorted(
        (e for e in img.weak_label_evidence or [] if _valid_span(e, len(text))),
        key=lambda e: (e["start"], -e["end"]),
    )
    out, at = [], 0
    for e in spans:
        if e["start"] < at:  # overlapping spans: keep the first
            continue
        out.append(escape(text[at : e["start"]]))
        kind = str(e.get("kind", "evidence")).replace("_", "-")
        out.append(
            Markup('<mark class="ev ev-{}" title="{}">{}</mark>').format(
                kind, kind.replace("-", " "), text[e["start"] : e["end"]]
            )
        )
        at = e["end"]
    out.append(escape(text[at:]))
    return Markup("").join(out)


#: Longest figure label shown (a JATS ``<label>`` is "Figure 3"; a longer one is damage).
MAX_LABEL_CHARS = 60


def figure_label(manifest: Manifest, img: Image) -> str | None:
    """The JATS label ("Figure 1") shown in bold before the caption: the image's own, or
    its figure's for a panel; one line, capped (a cut one ends in "…"); None where there is
    none or the caption starts with it already (PDF captions carry their "Figure 1." in the
    text), :func:`_said_first`."""
    label = img.figure_label
    if not label and img.parent_id and (parent := manifest.images.get(img.parent_id)):
        label = parent.figure_label
    if not isinstance(label, str):
        return None
    shown = "".join(c for c in label if c.isprintable() or c.isspace())  # no NUL, no bidi
    label = " ".join(shown.split())
    if len(label) > MAX_LABEL_CHARS:
        label = label[: MAX_LABEL_CHARS - 1] + "…"
    bare = label.rstrip(".:")
    caption = "".join(c for c in normalise(img.caption) if c.isprintable() or c.isspace())
    if not bare or _said_first(bare, caption):
        return None
    return label


def _said_first(bare: str, caption: str) -> bool:
    """Whether ``caption`` starts with the label ``bare`` (its ``.``/``:`` stripped), any
    case, followed by the caption's end, a mark (``.``, ``:``, ``)``…) or a space: "FIGURE 1.
    …", "Figure 1 Lymph node", "Figure 1 a, lymph node". A "Fig."/"Fig"/"Figure" label and
    caption of the same number are one label ("Fig. 1. …" says "Figure 1"). A label without
    both a letter and a digit ("1") followed by a space and a lower-case word is the
    caption's own text ("1 patient"), not the label; "Figure 10 …" is not "Figure 1". So are
    a sub-letter and a supplementary figure however spelt ("Fig. 1A" and "Figure 1A", "S1",
    "S1 Fig", "Figure S1" and "Fig. S1": each was shown before a caption saying the other);
    a bare "S1" before a lower-case word ("S1 patients were …") is the caption's text too;
    "Figure 1B" is not "Figure 1A", nor "Figure S1" "Figure 1"."""
    full = FIGURE_LABEL.fullmatch(bare)
    numbered = figure_key(full)
    # a caption's own text is not read as a bare "S1" (the third form is a label's alone)
    match = FIGURE_LABEL.match(caption) if numbered else None
    said = figure_key(match) if match is not None and match["n3"] is None else None
    if numbered and said and match is not None:
        if numbered != said:
            return False
        at = match.end()
    elif caption[: len(bare)].casefold() == bare.casefold():
        at = len(bare)
    else:
        return False
    after = caption[at : at + 2]
    if not after:
        return True  # the caption is the label
    if after[0].isalnum():
        return False  # "Figure 10 …", "Figure 1A …": another label
    if not after[0].isspace():
        return True  # a mark
    # a bare "S1" (a label's form alone, no "Fig") is no word either: "S1 patients were …"
    # is the caption's own text, as "1 patient" is, and hid the label
    alone = full is not None and full["n3"] is not None
    worded = any(c.isalpha() for c in bare) and any(c.isdigit() for c in bare) and not alone
    return worded or not after[1:].islower()


def _valid_span(e: Any, n: int) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("start"), int)
        and isinstance(e.get("end"), int)
        and 0 <= e["start"] < e["end"] <= n
    )


def item(manifest: Manifest, img: Image, scores: Scores | None) -> dict[str, Any]:
    """Everything the page shows about one figure (strings are escaped by the page)."""
    rec = manifest.records.get(img.record_id)
    score = scores.by_image.get(img.id) if scores else None
    return {
        "id": img.id,
        "record_id": img.record_id,
        "width": img.width,
        "height": img.height,
        "panel": img.panel_letter or img.extra.get("panel"),
        "caption_html": str(caption_html(img)),
        "figure_label": figure_label(manifest, img),  # set as text by the page, in bold
        "has_caption": bool(img.caption),
        "weak_label": img.weak_label,
        "site": img.site,
        "rules": img.weak_label_rules,
        "label": img.label,
        "label_by": img.label_by,
        "label_at": img.label_at,
        "leakage": img.leakage or [],
        "score": score,
        "heatmap": bool(scores and scores.heatmap(img.id)),
        "article": {
            "title": rec.title if rec else None,
            "journal": rec.journal if rec else None,
            "year": rec.year if rec else None,
            "license": rec.license if rec else None,
            "link": article_link(rec),
            "ids": " · ".join(x for x in (rec.pmcid, rec.pmid and f"PMID {rec.pmid}") if x)
            if rec
            else "",
        },
    }


def ordered(manifest: Manifest) -> list[Image]:
    """Kept figures in reading order: article by article, figure by figure."""
    order = {rid: n for n, rid in enumerate(manifest.records)}
    kept = manifest.kept_images()
    return sorted(kept, key=lambda i: (order.get(i.record_id, len(order)), i.page or 0, i.id))


def model_says(score: dict[str, float] | None, threshold: float = 0.5) -> str | None:
    if not score or "max" not in score:
        return None
    return "metastasis" if score["max"] >= threshold else "no_metastasis"


def by_status(rows: list[Image], status: str) -> list[Image]:
    """The figures of ``rows`` the page's review-status filter keeps, in their order:
    ``unreviewed`` those with no review label, ``reviewed`` those with one, any other
    value (``all``) every one. The one rule of :func:`matches` and :func:`select` (a list
    comprehension: a call per figure took most of an ``/api/items`` request of a run of
    100,000 figures); ``review.js``'s ``stillMatches`` says the same of an answered figure
    (``tests/histofetch/test_review_browser.py`` checks they agree)."""
    if status == "unreviewed":
        return [i for i in rows if i.label is None]
    if status == "reviewed":
        return [i for i in rows if i.label is not None]
    return list(rows)


def matches(img: Image, scores: Scores | None, query: dict[str, str]) -> bool:
    """The page's filters: ``status`` (:func:`by_status`), ``disagree``, ``record``,
    ``weak``, ``label``."""
    return bool(by_status([img], query.get("status", "all"))) and _others_match(img, scores, query)


def _others_match(img: Image, scores: Scores | None, query: dict[str, str]) -> bool:
    """:func:`matches` but for the review status (``select`` asks it of each figure
    :func:`by_status` kept, where another filter is set)."""
    disagree = query.get("disagree")
    weak = img.weak_label if img.weak_label in ("metastasis", "no_metastasis") else None
    if disagree == "model":
        said = model_says(scores.by_image.get(img.id) if scores else None)
        if weak is None or said in (None, weak):
            return False
    if disagree == "review" and (weak is None or img.label in (None, weak)):
        return False
    if query.get("record") and img.record_id != query["record"]:
        return False
    if query.get("weak") and (img.weak_label or "") != query["weak"]:
        return False
    label = query.get("label")
    return not (label and (img.label or "unreviewed") != label)


def select(rows: list[Image], scores: Scores | None, query: dict[str, str]) -> list[Image]:
    """The figures of ``rows`` that :func:`matches` keeps, in their order. The review status
    (the page's default filter) is one pass (:func:`by_status`), and the other filters of
    :func:`matches` are asked only about the figures left when one is set: calling it for
    every figure took most of an ``/api/items`` request of a run of 100,000 figures."""
    rows = by_status(rows, query.get("status", "all"))
    # the other filters, where set (an empty value is no filter to matches either)
    rest = {k: v for k in ("disagree", "record", "weak", "label") if (v := query.get(k))}
    if not rest:
        return rows
    return [i for i in rows if _others_match(i, scores, rest)]


def progress(manifest: Manifest, kept: list[Image] | None = None) -> dict[str, int]:
    """The counts of the page's bar: kept figures, reviewed ones, and each label's. ``kept``:
    the manifest's :meth:`~Manifest.kept_images` when the caller has them (in any order),
    so they are not looked for again among every row; counted in one pass."""
    kept = manifest.kept_images() if kept is None else kept
    labels = Counter(i.label for i in kept)
    counts = {name: labels[name] for name in IMAGE_LABELS}
    return {"total": len(kept), "reviewed": sum(counts.values()), **counts}


def reviewable_records(manifest: Manifest) -> list[Record]:
    """The articles with a kept figure (the page's article filter), in the run's order: one
    pass over the rows (each article's figures were sorted to look at them)."""
    have = {i.record_id for i in manifest.images.values() if i.kept and i.status == "ok"}
    return [r for r in manifest.records.values() if r.id in have]


def save_answer(manifest: Manifest, image_id: str, label: str | None, reviewer: str) -> Image:
    """Set one figure's label (``None`` clears it, for undo) as one store transaction and
    log it; returns the row."""
    if label is not None and label not in IMAGE_LABELS:
        raise ReviewError(f"{label!r} is not a label; use one of {', '.join(IMAGE_LABELS)}")
    reviewer = " ".join(str(reviewer).split())[:80] or "anonymous"
    with _THREAD_LOCK:
        img = manifest.images.get(image_id)
        if img is None or not (img.kept and img.status == "ok"):
            raise ReviewError(f"{manifest.path}: no kept figure with id {image_id!r}")
        # to the microsecond: at seconds an undo here and an answer in another copy of the
        # run within the same second tied, and merge let the undo stand (the earlier action)
        stamp = utc_stamp()
        previous = img.label
        by, at = (reviewer, stamp) if label is not None else (None, None)
        with _open_log(manifest.run_dir / LOG_NAME) as fh:  # before the answer is stored
            try:
                manifest.update_image(image_id, label=label, label_by=by, label_at=at)
            except (ManifestError, OSError, sqlite3.Error) as exc:
                raise ReviewError(f"{manifest.store_path}: answer not saved ({exc})") from None
            entry = {
                "image_id": image_id,
                "label": label,
                "previous": previous,
                "reviewer": reviewer,
                "at": stamp,
                "weak_label": img.weak_label,
            }
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return img


def _open_log(path: Path) -> TextIO:
    """The review log, opened to append, only as a regular file of the run folder with no
    other name: a run folder from elsewhere may hold ``review_log.jsonl`` as a link to any
    file of the reviewer's (each answer was appended to it), a FIFO (the answer hung), or a
    hard link to another run's log (a merge before c7672bc linked a shard's in; a copy made
    with ``cp -al``), which would take this run's answers too."""
    odd = (errno.ELOOP, errno.ENXIO, errno.EISDIR)  # a symbolic link, a FIFO, a folder
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644
        )
    except OSError as exc:
        why = "not a regular file" if exc.errno in odd else "not writable"
        raise ReviewError(f"{path}: {why}; answer not saved ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        why = (
            "not a regular file"
            if not stat.S_ISREG(st.st_mode)
            else f"has {st.st_nlink - 1} other name(s) (a hard link: another run's log?); "
            "give it a file of its own (cp it to a new file, mv that over it)"
        )
        raise ReviewError(f"{path}: {why}; answer not saved")
    return os.fdopen(fd, "a", encoding="utf-8")
