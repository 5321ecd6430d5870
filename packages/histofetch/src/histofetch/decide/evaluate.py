"""Precision and recall of the H&E decision against labels given by eye.

Labels are keyed by the image file's sha256 (``Image.sha256``), so they survive new run
folders and renamed records: a TSV with columns ``sha256``, ``label`` (``he`` or
``not_he``) and free-form notes. The shipped set is ``tests/histofetch/data/
he_eval_labels.tsv`` (built by looking at every image; docs/benchmarks.md has the numbers).

:data:`MODES` re-decide a scored run with some signals switched off (no pixel is read):
``colour`` is the rule of earlier releases (whole images, colour only); the others decide
figures by their panels and add the classifier and the caption evidence.
"""

from __future__ import annotations

import csv
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from histocore.csvcells import numbered_rows
from histocore.manifest import Image, Manifest
from histofetch.decide import rules

#: name → (split figures into panels, use the classifier, use the caption)
MODES: dict[str, tuple[bool, bool, bool]] = {
    "colour (before)": (False, False, False),
    "colour + panels": (True, False, False),
    "colour + classifier": (True, True, False),
    "colour + classifier + text (default)": (True, True, True),
}


@dataclass
class Score:
    n: int
    positives: int
    kept: int
    true_kept: int
    precision: float
    recall: float


#: A sha256 in hex (lower-case: a labels file's is read so)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_labels(path: Path) -> dict[str, str]:
    """sha256 → "he" | "not_he" from a labels TSV (bad rows, text that is not UTF-8 and a
    cell csv cannot read, e.g. one over its 128 KB field limit, raise one ValueError naming
    the file and line: the line a bad row starts on, past notes quoted over several).

    One hash labelled twice the same way is fine; labelled ``he`` on one line and
    ``not_he`` on another is a ValueError naming the file, the hash and both lines (the
    last label won silently); a hash is read in lower case (``AB…`` and ``ab…`` are one
    image). A FIFO, socket or device is refused before it is opened (a FIFO hung,
    ``/dev/zero`` was read without end), as the run's readers refuse them, and a file that
    cannot be read is a ValueError too."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file")
    out: dict[str, str] = {}
    first: dict[str, int] = {}  # sha256 -> the line of its first label
    try:
        fh = path.open(encoding="utf-8-sig", newline="")  # a BOM is allowed
    except OSError as exc:  # not readable (permissions): a ValueError as documented
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    with fh:
        reader = csv.DictReader(fh, delimiter="\t")
        try:
            for lineno, row in numbered_rows(reader):
                # lower-case hex, as rows hold it: 'AB…' escaped the check below
                sha, label = (row.get("sha256") or "").lower(), row.get("label") or ""
                if label not in {"he", "not_he"} or not _SHA256.fullmatch(sha):
                    raise ValueError(f"{path}:{lineno}: expected a sha256 and label he|not_he")
                if sha in out and out[sha] != label:
                    raise ValueError(
                        f"{path}:{lineno}: image {sha} labelled {label}, but {out[sha]} on "
                        f"line {first[sha]}"
                    )
                first.setdefault(sha, lineno)
                out[sha] = label
        except csv.Error as exc:  # csv.Error is no ValueError: it escaped as a traceback
            # DictReader.line_num is set after a row is read: the csv reader's is the line
            raise ValueError(f"{path}:{reader.reader.line_num}: unreadable TSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return out


def score(rows: list[Image], labels: dict[str, str]) -> Score:
    """H&E precision/recall over the labelled rows (unlabelled rows are ignored)."""
    judged = [r for r in rows if r.sha256 in labels]
    pos = [r for r in judged if labels[r.sha256] == "he"]
    kept = [r for r in judged if r.kept]
    tp = [r for r in kept if labels[r.sha256] == "he"]
    return Score(
        n=len(judged),
        positives=len(pos),
        kept=len(kept),
        true_kept=len(tp),
        precision=round(len(tp) / len(kept), 4) if kept else 1.0,
        recall=round(len(tp) / len(pos), 4) if pos else 1.0,
    )


def evaluate(
    manifest: Manifest, labels: dict[str, str], limits: rules.Thresholds | None = None
) -> dict[str, dict[str, dict]]:
    """{mode: {"figures": Score, "panels": Score}} for a scored run; restores the default
    decision afterwards."""
    from histofetch.filter import decide_image, store_evidence

    limits = limits or rules.Thresholds()
    rows = [i for i in manifest.images.values() if i.status == "ok" and i.extra.get("colour")]
    figures = [i for i in rows if i.source != "panel"]
    panels = [i for i in rows if i.source == "panel"]
    out: dict[str, dict[str, dict]] = {}
    for mode, (use_panels, use_classifier, use_text) in MODES.items():
        signals = {"use_classifier": use_classifier, "use_text": use_text}
        for img in figures:
            if use_panels:
                decide_image(manifest, img, limits, **signals)
            else:
                store_evidence(img)
                rules.apply(img, limits, **signals)
        out[mode] = {"figures": asdict(score(figures, labels))}
        if use_panels:
            out[mode]["panels"] = asdict(score(panels, labels))
    for img in figures:
        decide_image(manifest, img, limits)
    return out
