"""``histofetch merge`` (:mod:`histofetch.merge`): the inputs' review logs carried into
the output's.

The inputs' review logs (``review_log.jsonl``: who labelled what, appended by the review
page) are carried: the lines about the images this merge added from each input (not
those of a record kept as the output holds it, nor of a record left out as a duplicate:
the log tells what the store holds; an image left out as a duplicate: see below) are
added to the output's log, in input order, each line as it was (JSON objects only: the
command names each log whose other lines it left out, and a log that is a link or not a
regular file is not read). A line is added only as many times as the input holds it
beyond the times the output's log holds it already, never deduplicated within one log:
an answer given twice in one second (``metastasis``, undo, ``metastasis``: two equal
lines) stays twice. The lines are appended to the output's log in place, as the review
page appends its answers (never rewritten: answers it appends meanwhile stay, and so
does the log's mode); an output whose log has another name (a hard link) is refused, as
the page refuses it. They are appended before the store is committed: a merge stopped
meanwhile (SIGKILL, a full disk) added no record, and run again appends only the lines
the log does not hold; the review page sees an added image only once its lines are in. A
store commit failing after the append leaves lines about images the store does not hold
(a rerun adds the images, not the lines again).

The lines about an image of a record this merge adds left out as a duplicate
(``summary.duplicate_images_of``: the copy kept is another article's, whole, kept by
filter, of a freer licence or the first) are carried about the copy kept, their
``image_id`` rewritten to its, where this merge adds that copy and it has no label of its
own; else (the output's copy, or one labelled itself: its own answers stand) they are
counted in ``summary.duplicate_lines_left``, not carried.

The lines about the images of a ``local:`` record left out for a known article holding
the same PDF (``summary.same_pdf``) are carried about the image of the same bytes added
in its place, their ``image_id`` rewritten to that image's (the rest as it was); where the
output held that image before (its own answers stand), or no image of those bytes is
added (left out with the record), they are counted, not carried; a line an earlier merge
carried there (the same line, its ``image_id`` that image's) is neither carried again nor
counted: a rerun of a merge does not say the answers it carried were not.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from histocore.io import NotJSON, loads_json
from histocore.manifest import Manifest, ManifestError
from histofetch.merge_summary import MergeSummary, plural

#: The review page's log of answers (``histofetch.review.data.LOG_NAME``; not imported:
#: the review package needs the web stack).
LOG_NAME = "review_log.jsonl"


def check_out_log(path: Path) -> None:
    """Refuse an output whose review log is a link or not a regular file (the review page
    refuses to write to it too), before anything is merged."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror}); nothing merged") from None
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(f"{path}: not a regular file; nothing merged")
    if st.st_nlink > 1:  # lines appended to it would go to the other name's run too
        raise ManifestError(f"{path}: {_other_names(st.st_nlink)}; nothing merged")


def _other_names(nlink: int) -> str:
    """What the review page says of a log that is a hard link, which it refuses too."""
    return (
        f"has {nlink - 1} other name(s) (a hard link: another run's log?); give it a file "
        "of its own (cp it to a new file, mv that over it)"
    )


def _open_log(path: Path) -> BinaryIO | None:
    """A review log opened to read; None where there is none. OSError for a link or a file
    that is not a regular one (a FIFO hung the reader), opened without following or
    blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise OSError("not a regular file")
    return fh


def _log_lines(fh: BinaryIO) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
    """The lines of a review log read one by one (a log of a million answers is not held
    whole: it was, 177 MB taking 900 MB), as they were (without their line end), with
    their numbers and, for a JSON object, the object; blank lines are left out."""
    for n, raw in enumerate(fh, start=1):
        raw = raw.removesuffix(b"\n")
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield n, "", None
            continue
        try:
            obj = loads_json(line)
        except NotJSON:
            obj = None
        yield n, line, obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class AnswerTime:
    """A review answer's time (:func:`answer_time`): ``at``, UTC, and whether its stamp was
    to the second (no fraction: an older version's), compared by :func:`answered_after`."""

    at: datetime
    to_second: bool


#: The earliest answer time: one with no stamp or one that is not ISO 8601 (hand-edited).
_EARLIEST = datetime.min.replace(tzinfo=UTC)
#: A fraction of a second in an ISO 8601 stamp (``12:00:00.5``, ``120000,5``); a date has none.
_FRACTION = re.compile(r"\d[.,]\d")


def answer_time(text: object) -> AnswerTime:
    """A review answer's time (a row's ``label_at``, a log line's ``at``) as a UTC time
    (UTC where it names no zone); the earliest where it is none or not ISO 8601
    (hand-edited): any dated answer is newer. To the second where the stamp has no
    fraction (an older version's); this version writes one even where it is 0
    (:func:`histocore.io.utc_stamp`): ``12:00:00.000000`` is to the microsecond."""
    try:
        at = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        at = None
    if not isinstance(text, str) or at is None:
        return AnswerTime(_EARLIEST, to_second=True)
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    # '0001-01-01T00:00+05:00' is no older than the earliest
    return AnswerTime(max(at, _EARLIEST), to_second=_FRACTION.search(text) is None)


def answered_after(a: AnswerTime, b: AnswerTime) -> bool:
    """Whether the answer of time ``a`` came after the one of ``b`` (:func:`answer_time`):
    to the second where either is stamped to the second, as runs of older versions are
    (no fraction), to the microsecond otherwise. An old undo stamped 12:00:00 may have
    been given at 12:00:00.9: read to the microsecond, an answer of 12:00:00.5 in another
    copy was newer and won, where the tie (the undo stands, the first input's answer is
    taken) was the rule for those stamps. A stamp of this version at 12:00:00.000000 was
    read as one to the second (its fraction 0), and tied with an answer of 12:00:00.5."""
    if a.to_second or b.to_second:
        return a.at.replace(microsecond=0) > b.at.replace(microsecond=0)
    return a.at > b.at


def undone(run: Manifest, images: set[str]) -> dict[str, AnswerTime]:
    """Those of ``images`` whose last line in ``run``'s review log is an undo (a ``label``
    given as null): unlabelled there by hand, not never reviewed; each with the undo's time
    (:func:`answer_time` of its ``at``), so an answer carried from elsewhere wins only when
    it is newer. A log not readable (a link, a FIFO: see :func:`merge_logs`) tells nothing."""
    last: dict[str, dict[str, Any]] = {}
    if not images:
        return {}
    try:
        fh = _open_log(run.run_dir / LOG_NAME)
        if fh is None:
            return {}
        with fh:
            for _, _, obj in _log_lines(fh):
                if obj is not None and _about(obj, images):
                    last[obj["image_id"]] = obj
    except OSError:
        return {}
    return {
        image_id: answer_time(obj.get("at"))
        for image_id, obj in last.items()
        if "label" in obj and obj["label"] is None
    }


def _digest(line: str) -> bytes:
    return hashlib.blake2b(line.encode(), digest_size=16).digest()


def _about(obj: dict[str, Any], images: set[str]) -> bool:
    """Whether a log line (its object) is about one of ``images``: never one whose
    ``image_id`` is not text (a list or an object, hand-edited: it ended the merge in a
    ``TypeError: unhashable type`` traceback)."""
    image_id = obj.get("image_id")
    return isinstance(image_id, str) and image_id in images


def _held_lines(out_log: Path, wanted: set[str]) -> Counter[bytes]:
    """How many times the output's log holds each line about an image of ``wanted`` (by the
    line's digest: only those can be an input's line carried)."""
    held: Counter[bytes] = Counter()
    if not wanted:
        return held
    try:
        fh = _open_log(out_log)
        if fh is None:
            return held
        with fh:
            for _, line, obj in _log_lines(fh):
                if obj is not None and _about(obj, wanted):
                    held[_digest(line)] += 1
    except OSError as exc:  # made a link or a FIFO since the check: not written through
        raise ManifestError(f"{out_log}: {exc.strerror or exc}; records not merged") from None
    return held


def merge_logs(loaded: list[Manifest], out_log: Path, summary: MergeSummary) -> None:
    """Add the inputs' review log lines to the output's (see the module's notes), each log
    read line by line."""
    # A line is added only as many times as its input holds it beyond the times the
    # output's log holds it. Never deduplicated within one log: 'metastasis, undo,
    # metastasis' in one second is two equal lines, both answers. (Lines of two inputs
    # can be about one image: a left-out copy's carried to it.)
    before = {i for moved in summary.same_pdf_before.values() for i in moved.values()}
    held = _held_lines(out_log, set().union(before, *summary.added_images.values()))

    def carried() -> Iterator[str]:
        for run in loaded:
            key = str(run.run_dir)
            if key in summary.per_run or key in summary.same_pdf_images:  # else: not read
                yield from _carried(run, summary, held)

    summary.log_lines = _append_lines(out_log, carried())


def _carried(run: Manifest, summary: MergeSummary, held: Counter[bytes]) -> Iterator[str]:
    """The lines of ``run``'s review log to add to the output's: those about the images
    added from it, and those about the images left out for an image of the same bytes
    added (a left-out local copy's, ``summary.same_pdf_images``, or a duplicate's,
    ``summary.duplicate_images_of``) rewritten to be about it, that the output's log does
    not hold (``held``, taken from as they are met). What is left out otherwise goes to
    ``summary.log_left_out``."""
    added = summary.added_images.get(str(run.run_dir), set())
    duplicates = summary.duplicate_images_of.get(str(run.run_dir), {})
    moved = {**summary.same_pdf_images.get(str(run.run_dir), {}), **duplicates}
    moved_ids = set(moved)
    before = summary.same_pdf_before.get(str(run.run_dir), {})
    path = run.run_dir / LOG_NAME
    bad = first_bad = 0
    try:
        fh = _open_log(path)
        if fh is None:
            return
        with fh:
            for n, line, obj in _log_lines(fh):
                if obj is None:
                    bad, first_bad = bad + 1, first_bad or n
                    continue
                if _about(obj, moved_ids):  # a left-out copy's: about the kept image
                    if (kept := moved[obj["image_id"]]) is None:
                        if obj["image_id"] in duplicates:
                            summary.duplicate_lines_left += 1
                            continue
                        if (held_id := before.get(obj["image_id"])) is not None:
                            # carried by an earlier merge into the output: there already
                            digest = _digest(json.dumps({**obj, "image_id": held_id}))
                            if held[digest] > 0:
                                held[digest] -= 1
                                continue
                        summary.same_pdf_lines_left += 1
                        continue
                    line = json.dumps({**obj, "image_id": kept})
                elif not _about(obj, added):
                    continue  # of an image not added from this input: the output's as it was
                digest = _digest(line)
                if held[digest] > 0:
                    held[digest] -= 1
                else:
                    yield line
    except OSError as exc:
        why = "a link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        summary.log_left_out[str(path)] = f"{why}; not read, its answers not merged"
        return
    if bad:
        summary.log_left_out[str(path)] = (
            f"{plural(bad, 'line')} not JSON objects (first: line {first_bad}) left out "
            "of the merged review log"
        )


def _append_lines(path: Path, lines: Iterable[str]) -> int:
    """Append ``lines`` to the output's review log in place, as the review page appends its
    answers (``O_APPEND``, one ``write`` a line), and return how many. The log is never
    rewritten: an answer the page appends meanwhile stays (a rewrite renamed into place
    lost it), and so do the log's mode and its inode. A last line left without its line
    end (a write cut short) gets one first, not the first line added glued to it. The log
    is opened, and created, only at the first line."""
    fd, count = None, 0
    try:
        for line in lines:
            data = f"{line}\n".encode()
            if fd is None:
                fd = _open_out_log(path)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
            _write_all(fd, data)
            count += 1
        if fd is not None:
            os.fsync(fd)
    except OSError as exc:
        raise ManifestError(
            f"{path}: cannot be written ({exc.strerror or exc}); "
            f"{plural(count, 'review log line')} of the inputs' added, records not merged "
            "(a merge run again adds the rest)"
        ) from None
    finally:
        if fd is not None:
            os.close(fd)
    return count


def _open_out_log(path: Path) -> int:
    """The output's review log opened to append (created where there is none), only as a
    regular file with no other name (made a link or a FIFO since the check: not written
    through)."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    path.parent.mkdir(parents=True, exist_ok=True)  # a new output: before its store is
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise ManifestError(f"{path}: not a regular file; records not merged") from None
        raise
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        return fd
    os.close(fd)
    why = "not a regular file" if not stat.S_ISREG(st.st_mode) else _other_names(st.st_nlink)
    raise ManifestError(f"{path}: {why}; records not merged")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
