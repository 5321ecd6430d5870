"""``histofetch merge RUN... --out RUN``: join run folders (e.g. shards) into one run.

* Records are keyed by id; a record present in several runs is taken once, from the run
  where it got furthest (an ``ok`` record at a later stage wins, ties go to the first run).
  A record already in the output (a second merge into the same folder) is kept as it is
  there: it may hold reviewed labels and decisions, and a merge never deletes what the
  output holds; merge into a new folder to take further-along copies.
* Records with the same PMCID under different ids (an article found by PubMed in one run
  and by PMC in another) are one article: the first is kept.
* What the inputs' stores remember of renamed records is carried: ``renamed:<old id>``
  (a record a search renamed) and ``rename_refused:<old id>`` (see
  :meth:`histocore.store.RunStore.rename_record`).
* An image whose sha256 is already in the merged run (the same figure in two articles, or
  twice in one) is not added again; the record notes it in ``extra["merge_duplicates"]``.
* Files the rows name inside a source run (PDFs, images) are hard-linked into the output
  (copied across file systems) under the same relative path, so the merged run stands
  alone; files outside the source run (local PDFs) keep their absolute paths, and a
  relative path leading out of it (``../x.png``) is kept and never read. A path is taken
  in its normal form (``pdfs/../pdfs/x.pdf`` is ``pdfs/x.pdf``), and a name a row holds
  (the output's own rows' too) also where opening it lands in the output, links followed
  (``../out/pdfs/x.pdf``, ``/abs/out/pdfs/x.pdf``, ``../alias/pdfs/x.pdf`` with
  ``alias`` a link to the output): no file is brought there, and an input's row whose
  path leads there keeps it where it names a file there no other row names (a local PDF
  kept in the output folder; never one of the output's own files, ``run.sqlite``,
  ``manifest.jsonl``, ``review_log.jsonl``), else gets a name kept from other rows' files. Where the
  output holds another file under that path (a run whose renamed record kept its
  ``pdfs/pmid_0.pdf``, and a shard's own ``pmid:0``), the file is brought under a free
  name (``pdfs/pmid_0-2.pdf``) and the row names that. A row naming one of the run's own
  files (``run.sqlite``, ``manifest.jsonl``, ``review_log.jsonl``, however spelt) is never
  linked (the output's would be the source's file) and gets a free name naming no file
  (``run-2.sqlite``): kept, it named the output's own file; one under such a name
  (``review_log.jsonl/x.pdf``) is left behind, as a path under another row's file is: the
  output's file never becomes a folder. No file is brought under ``sheets/`` (filter's
  contact sheets: each filter deletes and rewrites files there) nor to ``sheets``: it goes
  under ``sheets-2/`` instead (``sheets-3``, … where that name is taken), and a row naming
  a file under the output's ``sheets/`` gets a free name under ``sheets-2/``. A file named
  through a folder link of the source run pointing out of it (its ``images/`` moved to
  another disk) is copied from there only when its bytes hash to its row's sha256, and the
  command says so, one line per link; a file link pointing out is never read. A row path
  that cannot be looked up (a name too long for the file system, a NUL character, a
  character the file system cannot encode: a lone surrogate, ``"\\ud800"`` in a hand-edited
  manifest), or one a file in the output stands where a folder of it would be (one shard's
  ``pdfs/x.pdf``, another's ``pdfs/x.pdf/y.pdf``), is kept as it is, its file left behind, and the
  command says so, one line per input; a path that cannot be encoded or holds a NUL is never looked
  up, the output's own rows' neither.
* The inputs' review logs (``review_log.jsonl``: who labelled what, appended by the review
  page) are carried: the lines about the images this merge added from each input (not
  those of a record kept as the output holds it, nor of a record or image left out as a
  duplicate: the log tells what the store holds) are added to the output's log, in input
  order, each line as it was (JSON objects only: the command names each log whose other
  lines it left out, and a log that is a link or not a regular file is not read). A line
  is added only as many times as the input holds it beyond the times the output's log
  holds it already, never deduplicated within one log: an answer given twice in one
  second (``metastasis``, undo, ``metastasis``: two equal lines) stays twice. The lines
  are appended to the output's log in place, as the review page appends its answers
  (never rewritten: answers it appends meanwhile stay, and so does the log's mode); an
  output whose log has another name (a hard link) is refused, as the page refuses it. They
  are appended before the store is committed: a merge stopped meanwhile (SIGKILL, a full
  disk) added no record, and run again appends only the lines the log does not hold; the
  review page sees an added image only once its lines are in. A store commit failing after
  the append leaves lines about images the store does not hold (a rerun adds the images,
  not the lines again).
* A file copied into the output is written under a temporary name beside it
  (``.merge-XXXXXXXX.part``), locked (``flock``) while it is written, and renamed into
  place. A merge killed mid-copy (SIGKILL, a power cut) leaves that file behind; the next
  merge into the output (once nothing refuses it) removes every such file no live process
  holds locked (a merge still copying into it keeps its own) from the folders the
  output's and the inputs' rows' files go to in the output (through its folder links too)
  and nowhere else: only that name exactly, never a file a row names (nor one a row's file
  is a link to).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import hashlib
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from histocore.io import (
    NotJSON,
    file_in_the_way,
    file_sha256,
    loads_json,
    numbered,
    refuse_overlong_name,
)
from histocore.manifest import MANIFEST_NAME, STAGES, Manifest, ManifestError, Record
from histocore.store import RENAME_REFUSED, RENAMED, STORE_NAME

#: The review page's log of answers (``histofetch.review.data.LOG_NAME``; not imported:
#: the review package needs the web stack).
LOG_NAME = "review_log.jsonl"
#: The run's own files at its top: a row naming one is never linked into the output (a
#: review there would append to the source's review log through the link).
_RUN_FILES = frozenset(
    {MANIFEST_NAME, LOG_NAME, STORE_NAME}
    | {f"{STORE_NAME}-{end}" for end in ("wal", "shm", "journal")}
)
#: ``filter``'s contact sheets folder: each filter deletes the ``kept*``, ``rejected*`` and
#: ``closest-*`` files there and writes its pages under those names
#: (:func:`histofetch.sheets.write_filter_sheets`), so no row's file is brought there
SHEETS = "sheets"


@dataclass
class MergeSummary:
    runs: int = 0
    #: records and images added to the output
    records: int = 0
    images: int = 0
    #: records whose id or PMCID the output held before this merge (not added again)
    already: int = 0
    #: records and images the inputs hold more than once (left out)
    duplicate_records: int = 0
    duplicate_images: int = 0
    per_run: dict[str, int] = field(default_factory=dict)
    #: runs named more than once (one folder, however spelt: read once)
    repeated: int = 0
    #: inputs the output's ``merged_from`` names already (merged into it before)
    merged_before: int = 0
    #: folder links inside an input pointing out of it (an ``images/`` moved to another
    #: disk) → how many files the rows name under each, brought from there
    via_links: dict[str, int] = field(default_factory=dict)
    #: such folder links → files the rows name under them that were left behind: no
    #: sha256 on the row to check them by, bytes that do not match it, or unreadable
    left_behind: dict[str, int] = field(default_factory=dict)
    #: review log lines added to the output's log
    log_lines: int = 0
    #: inputs (their folders) → ids of the images this merge added from each: only their
    #: review log lines are carried
    added_images: dict[str, set[str]] = field(default_factory=dict, repr=False)
    #: inputs' review logs → why lines of theirs were left out (not JSON objects, or the
    #: whole log: a link, not a regular file)
    log_left_out: dict[str, str] = field(default_factory=dict)
    #: ``.merge-*.part`` files an interrupted merge into the output left, removed
    stale_parts: int = 0
    #: inputs → how many paths their rows name cannot be looked up (a name too long for
    #: the file system, a NUL character, a lone surrogate): files left behind, the rows'
    #: paths kept
    unusable: dict[str, int] = field(default_factory=dict)
    #: such inputs → the first such path and why
    first_unusable: dict[str, str] = field(default_factory=dict)

    def note_unusable(self, run: Manifest, rel: str, why: str) -> None:
        """Count a row path of ``run`` that cannot be looked up (``why``), left as it is."""
        key = str(run.run_dir)
        self.unusable[key] = self.unusable.get(key, 0) + 1
        self.first_unusable.setdefault(key, f"{_short(rel)}: {why}")

    def warnings(self) -> list[str]:
        """One line per folder link out of an input that files were brought through or
        left behind at, per input review log whose lines were left out, and per input whose
        rows name paths that cannot be looked up."""
        lines = [f"{log}: {why}" for log, why in self.log_left_out.items()]
        for run, n in self.unusable.items():
            lines.append(
                f"{run}: {_n(n, 'file')} the rows name left behind, "
                f"{'its path' if n == 1 else 'their paths'} not usable here (first: "
                f"{self.first_unusable[run]}); the rows keep the paths as they are"
            )
        for link in dict.fromkeys([*self.via_links, *self.left_behind]):
            said = []
            if n := self.via_links.get(link, 0):
                said.append(f"{_n(n, 'file')} the rows name under it brought from there")
            if n := self.left_behind.get(link, 0):
                said.append(
                    f"{_n(n, 'file')} left behind (not checked by the row's sha256: "
                    "copy them into the run folder and merge it into a new --out folder)"
                )
            lines.append(
                f"{link}: a folder link out of its run (to {os.path.realpath(link)}); "
                + "; ".join(said)
            )
        return lines

    def line(self) -> str:
        """One line; a clause that would say 0 is left out (a second merge into the same
        output said '0 records, 0 images (4 duplicate records, 0 duplicate images left
        out)', its own records counted as duplicates), and one run is 'run'."""
        counts = [
            _n(n, what) for n, what in ((self.records, "record"), (self.images, "image")) if n
        ]
        added = f"{', '.join(counts)} added" if counts else "nothing new added"
        if self.log_lines:
            added += f", {_n(self.log_lines, 'review log line')} carried"
        notes = (
            [f"{_n(self.repeated, 'run')} named more than once, read once"] if self.repeated else []
        )
        if self.merged_before:  # its records are 'already in the output', no duplicates
            notes.append(f"{_n(self.merged_before, 'run')} merged into it before")
        if self.already:
            notes.append(f"{_n(self.already, 'record')} already in the output")
        if self.stale_parts:
            notes.append(f"{_n(self.stale_parts, 'leftover .merge-*.part file')} removed")
        left = [
            _n(n, f"duplicate {what}")
            for n, what in ((self.duplicate_records, "record"), (self.duplicate_images, "image"))
            if n
        ]
        if left:
            notes.append(" and ".join(left) + " left out")
        return f"merged {_n(self.runs, 'run')}: {added}" + (
            f" ({', '.join(notes)})" if notes else ""
        )


def _n(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _short(rel: str, most: int = 60) -> str:
    """``rel`` as a warning names it: cut to ``most`` characters (a 300-character name)."""
    return rel if len(rel) <= most else f"{rel[:most]}… ({len(rel)} characters)"


def _rank(rec: Record) -> tuple[int, int]:
    stage = STAGES.index(rec.stage) if rec.stage in STAGES else -1
    return (rec.status == "ok", stage)


def merge_runs(sources: list[Path], out: Path) -> MergeSummary:
    """Merge ``sources`` into ``out`` (created, or added to). Raises ManifestError.

    A folder named twice (``shards/1 shards/1``, or once through a link) is read once: its
    records counted as duplicates of themselves before."""
    out = Path(out)
    unique: dict[object, Path] = {}
    named: dict[object, int] = {}
    for source in map(Path, sources):
        key = _folder_key(source)
        unique.setdefault(key, source)
        named[key] = named.get(key, 0) + 1
    if _folder_key(out) in unique:
        raise ManifestError(f"{out}: the output cannot also be an input")
    _check_out_log(out / LOG_NAME)  # before anything is written
    with contextlib.ExitStack() as stores:  # every store closed, also on an error
        loaded = [stores.enter_context(Manifest.load(s)) for s in unique.values()]
        merged = stores.enter_context(Manifest.load(out, create=True))
        summary = _merge(loaded, merged)
    summary.repeated = sum(n > 1 for n in named.values())
    return summary


def _folder_key(path: Path) -> object:
    """What tells one folder from another however it is named (links, ``..``, bind
    mounts): its device and inode, or its resolved path where it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return path.resolve()
    return (st.st_dev, st.st_ino)


def _merge(loaded: list[Manifest], merged: Manifest) -> MergeSummary:
    summary = MergeSummary(runs=len(loaded))
    before = set(merged.header_extra.get("merged_from", []))
    summary.merged_before = sum(str(run.run_dir.resolve()) in before for run in loaded)
    best: dict[str, tuple[Record, Manifest]] = {}
    for run in loaded:  # the furthest copy of each record id
        for rec in run.records.values():
            if rec.id not in best or _rank(rec) > _rank(best[rec.id][0]):
                best[rec.id] = (rec, run)
    _refuse_image_id_clashes(best, merged)
    merged.open_store()  # its refusals (a run.sqlite-wal link) before any file is brought
    own = [r.pdf_path for r in merged.records.values()] + [i.path for i in merged.images.values()]
    tops = _tops(merged)  # once: a realpath of the output per row path was most of the time
    names = _Names(tops, {name for path in own if path for name in _landings(tops, path)})
    names.out_of_sheets(merged)  # before the stale part files: where sheets/ files go
    summary.stale_parts = _remove_stale_parts(merged, loaded, names.sheets)  # none refused
    pmcids = {r.pmcid: r.id for r in merged.records.values() if r.pmcid}
    ids_before, pmcids_before = set(merged.records), set(pmcids)  # the output's own
    hashes = {i.sha256: i.id for i in merged.images.values()}
    for rid, (rec, run) in best.items():
        if rid in merged.records or (rec.pmcid and pmcids.get(rec.pmcid, rid) != rid):
            if rid in ids_before or rec.pmcid in pmcids_before:
                summary.already += 1
            else:
                summary.duplicate_records += 1
            continue
        if rec.pmcid:
            pmcids[rec.pmcid] = rid
        rec = replace(rec, extra=dict(rec.extra))
        rec.pdf_path = _bring(run, merged, rec.pdf_path, summary, rec.pdf_sha256, names)
        dropped: dict[str, str] = {}
        for img in run.images_of(rid):
            if img.sha256 in hashes:
                dropped[img.id] = hashes[img.sha256]
                continue
            hashes[img.sha256] = img.id
            path = _bring(run, merged, img.path, summary, img.sha256, names) or img.path
            merged.add_image(replace(img, path=path))
            summary.images += 1
            summary.added_images.setdefault(str(run.run_dir), set()).add(img.id)
        if dropped:
            rec.extra["merge_duplicates"] = dropped
            summary.duplicate_images += len(dropped)
        merged.add_record(rec)
        summary.records += 1
        summary.per_run[str(run.run_dir)] = summary.per_run.get(str(run.run_dir), 0) + 1
    summary.duplicate_records += sum(len(r.records) for r in loaded) - len(best)
    _merge_header(merged, loaded)
    # The log lines before the store: a merge stopped while appending them (SIGKILL, a
    # full disk) has committed nothing, so run again it adds the same images, counts the
    # lines already appended as held and appends the rest (the lines were appended after
    # the commit: run again, it added nothing and carried nothing, the rest lost). And the
    # review page cannot answer about an added image before its carried lines are in.
    _merge_logs(loaded, merged.run_dir / LOG_NAME, summary)
    merged.commit()
    merged.add_rename_notes(_rename_notes(loaded, merged))
    merged.export()
    return summary


def _check_out_log(path: Path) -> None:
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


def _merge_logs(loaded: list[Manifest], out_log: Path, summary: MergeSummary) -> None:
    """Add the inputs' review log lines to the output's (see the module's notes), each log
    read line by line."""
    # A line is added only as many times as its input holds it beyond the times the
    # output's log holds it. Never deduplicated within one log: 'metastasis, undo,
    # metastasis' in one second is two equal lines, both answers. (An image is added from
    # one input only, so no two inputs' carried lines are about one image.)
    held = _held_lines(out_log, set().union(*summary.added_images.values()))

    def carried() -> Iterator[str]:
        for run in loaded:
            if str(run.run_dir) in summary.per_run:  # else none of it added: not read
                yield from _carried(run, summary, held)

    summary.log_lines = _append_lines(out_log, carried())


def _carried(run: Manifest, summary: MergeSummary, held: Counter[bytes]) -> Iterator[str]:
    """The lines of ``run``'s review log to add to the output's: those about the images
    added from it that the output's log does not hold (``held``, taken from as they are
    met). What is left out otherwise goes to ``summary.log_left_out``."""
    added = summary.added_images.get(str(run.run_dir), set())
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
                if not _about(obj, added):
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
            f"{_n(bad, 'line')} not JSON objects (first: line {first_bad}) left out "
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
            f"{path}: cannot be written ({exc.strerror or exc}); {_n(count, 'review log line')} "
            "of the inputs' added, records not merged (a merge run again adds the rest)"
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


def _rename_notes(loaded: list[Manifest], merged: Manifest) -> dict[str, str]:
    """The inputs' ``renamed:<old id>`` rows whose old id names no record of the output (a
    process holding the old row cannot claim it or write it back there either), and their
    ``rename_refused:<old id>`` rows of records the output holds (a search of the merged
    run meeting the refusal again says it with ``-v`` only, as it would have in the
    shard). The first input's row wins; the output's own are kept."""
    notes: dict[str, str] = {}
    for run in loaded:
        for key, value in run.rename_notes().items():
            refused = key.startswith(RENAME_REFUSED)
            old = key.removeprefix(RENAME_REFUSED if refused else RENAMED)
            if (old in merged.records) == refused:
                notes.setdefault(key, value)
    return notes


def _refuse_image_id_clashes(best: dict[str, tuple[Record, Manifest]], merged: Manifest) -> None:
    """Image ids are the run's keys: one naming images of two records (hand-edited shards)
    would keep one and drop the other silently, its label with it. Checked before anything
    is linked or written."""
    owner = {i.id: (i.record_id, merged.run_dir) for i in merged.images.values()}
    for rid, (_, run) in best.items():
        for img in run.images_of(rid):
            other, where = owner.setdefault(img.id, (rid, run.run_dir))
            if other != rid:
                raise ManifestError(
                    f"{run.run_dir}: image id {img.id!r} of record {rid} is also an image of "
                    f"record {other} (in {where}); nothing merged"
                )


def _merge_header(merged: Manifest, loaded: list[Manifest]) -> None:
    queries = list(merged.header_extra.get("queries", []))
    for run in loaded:
        merged.query = merged.query or run.query
        for query in [run.query, *run.header_extra.get("queries", [])]:
            if query and query != merged.query and query not in queries:
                queries.append(query)
    if queries:
        merged.header_extra["queries"] = queries
    sources = list(merged.header_extra.get("merged_from", []))
    for run in loaded:  # each once: a second merge of a shard listed it twice
        if str(run.run_dir.resolve()) not in sources:
            sources.append(str(run.run_dir.resolve()))
    merged.header_extra["merged_from"] = sources


@dataclass
class _Names:
    """Paths rows of the output name where no file of theirs may lie: those its rows held
    before the merge (a file may be missing there) and those given to rows whose file was
    not brought. A file brought later never goes there, whatever the order of the inputs."""

    #: the output folder as named, spelt and resolved (:func:`_tops`)
    out: _Out
    before: set[str]
    unbrought: set[str] = field(default_factory=set)
    #: where files brought by this merge went (they are other rows' files too)
    brought: set[str] = field(default_factory=set)
    #: a name given to rows whose file was not brought → the number of the last free name
    #: found for it (:func:`histocore.io.numbered`): the names before it stay taken
    next_free: dict[str, int] = field(default_factory=dict)
    #: the folder a row's file under ``sheets/`` goes to (:meth:`out_of_sheets`)
    sheets: str = f"{SHEETS}-2"

    def out_of_sheets(self, merged: Manifest) -> None:
        """Choose the folder files the rows name under ``sheets/`` (filter's) go to:
        ``sheets-2``, or ``sheets-3``, … where the output holds a file or a link under that
        name, or one of its rows names it. The name is kept from every row's file (a row
        named ``sheets`` gets ``sheets-2-2``): the folder never becomes a file."""
        n = 2
        while True:
            name = numbered(Path(SHEETS), n).as_posix()
            path = merged.run_dir / name
            free = not path.is_symlink() and (path.is_dir() or not path.exists())
            if free and name not in self.before:
                break
            n += 1
        self.sheets = name
        self.unbrought.add(name)

    def placed(self, rel: str) -> str:
        """Where a relative row path in normal form goes in the output: as it is, but a
        path under ``sheets/``, or ``sheets`` itself, goes under :attr:`sheets`
        (``sheets/kept-001.jpg`` is ``sheets-2/kept-001.jpg``): there the next filter
        deleted it, and its row named a contact sheet or no file."""
        return _placed(rel, self.sheets)

    def landings(self, merged: Manifest, path: str | Path) -> list[str]:
        """:func:`_landings` of ``path``, relative to the output or absolute (a Path in
        it: relative to it)."""
        if isinstance(path, Path):
            path = path.relative_to(merged.run_dir).as_posix()
        return _landings(self.out, path)

    def reserved(self, merged: Manifest, path: Path) -> bool:
        """Whether a file brought to ``path`` (in the output) could be a file a row names
        there: ``path`` or, through the output's links, where opening it lands."""
        lands = self.landings(merged, path)
        return not self.unbrought.isdisjoint(lands) or (
            not self.before.isdisjoint(lands) and not path.exists()
        )

    def kept_as_it_is(self, merged: Manifest, path: str, lands: list[str]) -> bool:
        """Whether a row path of an input leading into the output (landing at ``lands``)
        keeps its path: where it names a file there that no other row names (a local PDF
        kept in the output folder, named by its absolute path); its names are then kept
        from files brought after it. Never where it names one of the output's own files
        (run.sqlite, manifest.jsonl, the review log): a row's file is never one of them;
        nor one under ``sheets/``, filter's (a contact sheet, or a file the next filter
        deletes)."""
        if any(Path(land).parts[0] in (*_RUN_FILES, SHEETS) for land in lands):
            return False
        if not os.path.isfile(os.path.join(merged.run_dir, path)):
            return False
        for taken in (self.before, self.unbrought, self.brought):
            if not taken.isdisjoint(lands):
                return False
        self.unbrought.update(lands)
        return True


def _placed(rel: str, sheets: str) -> str:
    """:meth:`_Names.placed`, ``sheets`` the folder chosen for files under ``sheets/``."""
    top, sep, rest = rel.partition("/")
    return sheets + sep + rest if top == SHEETS else rel


def _bring(
    run: Manifest,
    merged: Manifest,
    rel: str | None,
    summary: MergeSummary,
    sha256: str | None,
    names: _Names,
) -> str | None:
    """Link (or copy) a file named by a source run into the merged run; the new path.

    A row path is compared, reserved and brought in its normal form: ``pdfs/../pdfs/x.pdf``
    is ``pdfs/x.pdf``, which may be another row's (it was returned as it was, naming that
    row's file in the output), and is reserved also where opening it lands in the output
    (:func:`_landings`). A path leading out of the run, or absolute, is never linked: even
    when it leads back into the source run (``../../a/run/images/x.png``), the same path
    from the merged folder lands outside it; where it lands inside the output, the row
    gets a name kept from other rows' files.
    A file link pointing out of the run is never read. A folder link inside the run that
    points out (``images/`` moved to a bigger disk) is followed only for a file whose bytes
    hash to the row's ``sha256`` (``pdf_sha256``), copied, and counted in
    ``summary.via_links`` for the command to say so; any other is left behind and counted
    in ``summary.left_behind``. A shard is untrusted: a link to ``~/.ssh`` or ``/proc/self``
    with rows naming files under it would otherwise copy the user's secrets into an output
    meant to be shared; the hash of a file the shard's author has not seen is not theirs
    to write. A path that cannot be looked up (a name too long for the file system, a NUL
    character, a lone surrogate), or that a file in the output stands in the way of (a
    file of another row's where a folder of it would be), is left as it is, its file (if
    any) behind, and counted in
    ``summary.unusable`` for the command to say so: it stopped the merge half done."""
    if rel is None:
        return rel
    if why := _unusable(rel):  # no file has such a name: never looked up (ValueError)
        summary.note_unusable(run, rel, why)
        return rel
    try:
        place = _place(run, merged, rel, summary, sha256, names)
    except OSError as exc:  # a name too long for the file system (or its path), unreadable
        summary.note_unusable(run, rel, (exc.strerror or str(exc)).lower())
        return rel
    if isinstance(place, str):
        return place
    src, dst, link = place
    if not dst.exists() and (in_the_way := file_in_the_way(dst)) is not None:
        # another row's file where a folder of this path would be ("pdfs/x.pdf" of one
        # shard, "pdfs/x.pdf/y.pdf" of another): left behind (it stopped the merge half done)
        blocker, problem = in_the_way
        with contextlib.suppress(ValueError):
            blocker = blocker.relative_to(merged.run_dir)
        summary.note_unusable(run, rel, f"{blocker.as_posix()} in the output: {problem}")
        return rel
    if link is not None:
        summary.via_links[str(link)] = summary.via_links.get(str(link), 0) + 1
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Outside the input: a copy, never a second name of that file.
        if link is not None or not _hard_link(src, dst):
            _copy_whole(src, dst)
    rel = dst.relative_to(merged.run_dir).as_posix()
    names.brought.update(names.landings(merged, rel))
    return rel


def _place(
    run: Manifest,
    merged: Manifest,
    rel: str,
    summary: MergeSummary,
    sha256: str | None,
    names: _Names,
) -> str | tuple[Path, Path, Path | None]:
    """Where :func:`_bring` puts the file a row of ``run`` names at ``rel``, looked up but
    nothing written: the row's new path for a file not brought, else the file to bring,
    where to and the folder link of ``run`` it is brought through (None: none). OSError
    where a path cannot be looked up (a name too long): nothing reserved or counted."""
    norm = _normal(rel)  # "pdfs/../pdfs/x.pdf" is "pdfs/x.pdf": the name compared, reserved
    if Path(rel).is_absolute() or norm == "." or norm == ".." or norm.startswith("../"):
        lands = names.landings(merged, rel)
        # out of the run (or the run folder itself): no file of the run's, never linked;
        # the row keeps its path (readers refuse a relative one), also where from the
        # output it names a file there no other row names (a local PDF kept in the output
        # folder), that name then kept from other rows' files; where it names another
        # row's file there, or none ("../out/pdfs/x.pdf", "/abs/out/pdfs/x.pdf", or
        # "../alias/pdfs/x.pdf" with alias a link to the output): a name kept from every
        # other row's file
        if not lands or names.kept_as_it_is(merged, rel, lands):
            return rel
        return _unbrought(merged, lands[0], names)
    rel = norm
    if (top := Path(rel).parts[0]) in _RUN_FILES:
        if top == rel:
            # the run's own file, not the row's: never linked; kept, the row named the
            # output's own file (its store, its manifest): a free name ("run-2.sqlite")
            return _unbrought(merged, rel, names)
        # a path under it ("review_log.jsonl/x.pdf"): brought, it made the output's file a
        # folder (its review log, every later merge failing); left behind as a path under
        # another row's file is
        summary.note_unusable(run, rel, f"{top} in the output: the run's own file, not a folder")
        return rel
    src = run.resolve(rel)
    dst = merged.run_dir / names.placed(rel)  # never under sheets/: filter's
    try:
        inside = src.resolve().is_relative_to(run.run_dir.resolve())
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        return _unbrought(merged, rel, names)
    link = None if inside else _folder_link(run.run_dir, rel)
    if not inside and (link is None or src.is_symlink()):
        return _unbrought(merged, rel, names)  # a file link pointing out: never read
    if not src.is_file():
        return _unbrought(merged, rel, names)  # missing in the source, as there
    if link is not None and not _hashes_to(src, sha256):
        summary.left_behind[str(link)] = summary.left_behind.get(str(link), 0) + 1
        return _unbrought(merged, rel, names)

    # Another article's file there is not ours: a free name (one already holding the same
    # bytes is taken: an interrupted merge brought it, not again). A link in the output
    # is never a name to bring a file to (a dangling one was written through).
    def taken(p: Path) -> bool:
        return (
            p.is_symlink() or names.reserved(merged, p) or (p.exists() and not _same_bytes(src, p))
        )

    n = 1
    while taken(free := _numbered(dst, n)):
        n += 1
    return src, free, link


def _unusable(path: str) -> str | None:
    """Why ``path`` names no file and is never looked up (a ValueError from ``os.stat``,
    ``os.path.realpath``), None where it can be: a NUL character, or one the file system's
    encoding cannot write (a lone surrogate, ``"\\ud800"`` in a hand-edited manifest)."""
    if "\x00" in path:
        return "a NUL character"
    try:
        os.fsencode(path)
    except UnicodeError:
        return "a character the file system cannot encode"
    return None


def _normal(rel: str) -> str:
    """A relative row path without ``.``, ``..`` and doubled ``/`` (``pdfs/../pdfs/x.pdf``
    → ``pdfs/x.pdf``): two spellings of one name are one name. An absolute path as it is."""
    return rel if Path(rel).is_absolute() else posixpath.normpath(rel)


class _Out(NamedTuple):
    """The output folder as named, and as spelt (absolute) and as links resolve it (one
    where they are the same): looked up once a merge."""

    named: str
    tops: tuple[str, ...]


def _tops(merged: Manifest) -> _Out:
    out = os.fspath(merged.run_dir)
    return _Out(out, tuple(dict.fromkeys([os.path.abspath(out), os.path.realpath(out)])))


def _landings(out: _Out, path: str) -> list[str]:
    """Where a row path of the output (relative to it, or absolute) lands inside it, as
    names relative to it in normal form: as spelt (``../out/pdfs/x.pdf`` is
    ``pdfs/x.pdf``) and as opening it resolves links (``os.path.realpath``:
    ``../alias/pdfs/x.pdf`` with ``alias`` a link to the output, ``pdfs/y.pdf`` a link to
    ``x.pdf``); none where it lands outside it or is the output itself. ``out``: the
    output folder as :func:`_tops` gives it."""
    if _unusable(path):  # names no file (os.path.realpath's ValueError)
        return []
    spelt = [os.path.normpath(os.path.join(top, path)) for top in out.tops]
    found: list[str] = []
    for landing in [*spelt, os.path.realpath(os.path.join(out.named, path))]:
        for top in out.tops:
            rel = os.path.relpath(landing, top)
            if rel not in (".", "..") and not rel.startswith("../"):
                found.append(Path(rel).as_posix())
    return list(dict.fromkeys(found))


def _hard_link(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        return False
    return True


def _unbrought(merged: Manifest, rel: str, names: _Names) -> str:
    """The path a row keeps for a file not brought: its own, or a free name where the
    output holds a file (or link) there or another row names it, which is another
    article's: the row named it (``x:1``'s row left behind at ``pdfs/x_1.pdf``, the
    output's ``x_1`` PDF). The name is kept from files brought after it. Never a name
    under ``sheets/`` (filter's: :meth:`_Names.placed`)."""
    rel = names.placed(rel)
    dst = merged.run_dir / rel

    def taken(p: Path) -> bool:
        if p.is_symlink() or p.exists():
            return True
        lands = names.landings(merged, p)
        if not _RUN_FILES.isdisjoint(lands):  # the output's own, also before it is made
            return True
        return not (names.before.isdisjoint(lands) and names.unbrought.isdisjoint(lands))

    # A name found taken stays taken (files are only added, names only kept): the next
    # row naming ``rel`` starts at the last free name found (1,500 rows naming one missing
    # file tried -2, -3, … from the start each, 1.1 million tries).
    n = names.next_free.get(rel, 1)
    while taken(free := _numbered(dst, n)):
        n += 1
    names.next_free[rel] = n
    rel = free.relative_to(merged.run_dir).as_posix()
    names.unbrought.update(names.landings(merged, rel))
    return rel


def _numbered(path: Path, n: int) -> Path:
    """:func:`histocore.io.numbered`, cut (whole characters, from the end) where the
    numbered name would be longer than the file system takes: ``<251 a>.pdf`` (255 bytes)
    is ``<249 a>-2.pdf``, not ``<251 a>-2.pdf`` (257 bytes), which could not be looked up,
    so the row kept its path: another row's file. The stem is cut to one character first,
    then the suffix (``x.<253 b>`` is ``x-2.<250 b>``). ``path`` itself (``n`` 1) as it is;
    OSError (ENAMETOOLONG) where even that does not fit."""
    free = numbered(path, n)
    stem, suffix = path.stem, path.suffix
    while n > 1:
        try:
            refuse_overlong_name(free)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            if len(stem) > 1:  # never a bare '-2.pdf'
                stem = stem[:-1]
            elif len(suffix) > 2:  # keep '.' and a character
                suffix = suffix[:-1]
            else:
                raise
            free = path.with_name(f"{stem}-{n}{suffix}")
        else:
            break
    return free


def _hashes_to(src: Path, sha256: str | None) -> bool:
    """Whether ``src``'s bytes hash to ``sha256`` (False without one, or unreadable)."""
    if not sha256:
        return False
    try:
        return file_sha256(src) == sha256.lower()
    except OSError:
        return False


#: A copy's temporary name: ``.merge-XXXXXXXX.part`` (short: ``.<name>.part`` of a
#: 250-character name is too long)
_PART_PREFIX, _PART_SUFFIX = ".merge-", ".part"
#: Such a name as ``tempfile.mkstemp`` makes it (8 of ``[a-z0-9_]``): only these are
#: removed as stale (``.merge-draft.part`` is not the merge's)
_PART_NAME = re.compile(r"\.merge-[a-z0-9_]{8}\.part")


def _copy_whole(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name beside it: an interrupted copy
    leaves no truncated file at ``dst`` (a rerun would take it for another article's and
    bring the file under ``-2``, the short one left named by no row). The temporary file is
    locked (``flock``) until it is renamed: :func:`_remove_stale_parts` of another merge
    leaves it alone; a killed process's lock goes with it. On a file system without locks
    (ENOLCK, ENOSYS, EOPNOTSUPP: Lustre, some NFS) it is copied unlocked: no merge can lock
    a part file there, so none removes one."""
    while True:
        fd, name = tempfile.mkstemp(dir=dst.parent, prefix=_PART_PREFIX, suffix=_PART_SUFFIX)
        tmp, ours, replaced = Path(name), True, False
        try:
            if _lock(fd, dst) and not _names(tmp, fd):
                ours = False  # removed as stale before it was locked: another name
                continue
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
            replaced = True
            return
        finally:
            if ours and not replaced:
                tmp.unlink(missing_ok=True)
            os.close(fd)


#: What ``flock`` fails with on a file system without locks
_NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})


def _lock(fd: int, dst: Path) -> bool:
    """Lock ``fd`` (a part file of ``dst``) for good; False on a file system without locks.
    Another failure is an OSError naming ``dst`` (it named no file)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return False
        raise OSError(exc.errno, exc.strerror, str(dst)) from None
    return True


def _names(path: str | Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st, now = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _remove_stale_parts(merged: Manifest, loaded: list[Manifest], sheets: str) -> int:
    """Remove the part files (:data:`_PART_NAME`) no process holds locked, those of a merge
    killed mid-copy, from the folders files of the output's and the inputs' rows go to in
    the output (through its folder links: ``pdfs/`` moved to another disk), and only
    there: a file named so elsewhere under it (``--out ~``) is not the merge's. A file a
    row names (``pdfs/.merge-r1aaaaaa.part``, a row's own file) is never removed, nor one
    a row's file is a link to (``images/0.png`` → ``.merge-abcdefgh.part``: the same file,
    by device and inode). An input's row under ``sheets/`` has its file go under
    ``sheets`` (:meth:`_Names.placed`): that folder is looked in. Returns how many."""
    out = merged.run_dir
    folders: set[Path] = set()
    named: set[tuple[int, int, str]] = set()  # (folder's device, inode, name) rows name
    keys: dict[Path, tuple[int, int] | None] = {}
    paths: list[Path] = []  # the rows' files in the output, for what they link to
    for run in (merged, *loaded):
        rels = [r.pdf_path for r in run.records.values()] + [i.path for i in run.images.values()]
        for rel in rels:
            if not rel or _unusable(rel):  # no folder (os.stat's ValueError)
                continue
            if run is not merged and not Path(rel).is_absolute():
                rel = _placed(posixpath.normpath(rel), sheets)  # where its file goes
            path = Path(rel) if Path(rel).is_absolute() else Path(os.path.normpath(out / rel))
            paths.append(path)
            norm = posixpath.normpath(rel)
            if not Path(rel).is_absolute() and norm != "." and not norm.startswith(".."):
                folders.add(path.parent)
            if path.parent not in keys:
                keys[path.parent] = _key(path.parent)
            if (key := keys[path.parent]) is not None:
                named.add((*key, path.name))
    removed, seen = 0, set()
    files: set[tuple[int, int]] | None = None  # the rows' files, links followed: once needed
    for folder in sorted(folders):
        key = keys.get(folder) or _key(folder)
        if key is None or key in seen:  # not a folder, or one folder named two ways
            continue
        seen.add(key)
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if _PART_NAME.fullmatch(name) and (*key, name) not in named:
                if files is None:
                    files = _identities(paths)
                removed += _remove_unheld(folder / name, files)
    return removed


def _identities(paths: list[Path]) -> set[tuple[int, int]]:
    """The device and inode of each of ``paths`` that opens (links followed)."""
    found = set()
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def _key(folder: Path) -> tuple[int, int] | None:
    """A folder's device and inode (links followed), None where it is no folder."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _remove_unheld(path: Path, kept: set[tuple[int, int]]) -> bool:
    """Remove ``path``, a regular file, if no process holds it locked (never a link, nor a
    file whose device and inode are in ``kept``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in kept:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live merge is copying into it, or no locks there: it may be
            return False  # a live merge's on another host
        if not _names(path, fd):  # renamed into place meanwhile
            return False
        path.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _folder_link(run_dir: Path, rel: str) -> Path | None:
    """The first folder on ``rel``'s way (below ``run_dir``) that is a symbolic link."""
    parts = Path(rel).parts
    for n in range(1, len(parts)):
        folder = run_dir.joinpath(*parts[:n])
        if folder.is_symlink():
            return folder
    return None


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False
