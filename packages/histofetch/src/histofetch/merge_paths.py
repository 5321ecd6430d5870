"""``histofetch merge`` (:mod:`histofetch.merge`): where the files the rows name go in the
output, and the path each row is given there.

Files the rows name inside a source run (PDFs, images) are hard-linked into the output
(copied across file systems) under the same relative path, so the merged run stands alone;
files outside the source run (local PDFs) keep their absolute paths, and a relative path
leading out of it (``../x.png``) is kept and never read. A path is taken in its normal form
(``pdfs/../pdfs/x.pdf`` is ``pdfs/x.pdf``), and a name a row holds (the output's own rows'
too) also where opening it lands in the output, links followed (``../out/pdfs/x.pdf``,
``/abs/out/pdfs/x.pdf``, ``../alias/pdfs/x.pdf`` with ``alias`` a link to the output): no
file is brought there, and an input's row whose path leads there keeps it where it names a
file there no other row names (a local PDF kept in the output folder; never one of the
output's own files, ``run.sqlite``, ``manifest.jsonl``, ``review_log.jsonl``, ``export.csv``,
``export.parquet``), else gets a
name kept from other rows' files. Where the output holds another file under that path (a run
whose renamed record kept its ``pdfs/pmid_0.pdf``, and a shard's own ``pmid:0``), the file
is brought under a free name (``pdfs/pmid_0-2.pdf``) and the row names that. A row naming
one of the run's own files (``run.sqlite``, ``manifest.jsonl``, ``review_log.jsonl``, and
``export.csv``, ``export.parquet``, which ``histofetch export`` overwrites; however spelt)
is never linked (the output's would be the source's file) and gets a free name naming no
file (``run-2.sqlite``): kept, it named the output's own file; one under such
a name (``review_log.jsonl/x.pdf``) is left behind, as a path under another row's file is:
the output's file never becomes a folder. No file is brought under ``sheets/`` (filter's
contact sheets: each filter deletes and rewrites files there), also through the output's
folder links (``figs/x.png`` with ``figs`` a link to ``sheets``), nor to ``sheets``: it goes
under ``sheets-2/`` instead (``sheets-3``, … where that name is taken), and a row naming a
file under the output's ``sheets/`` gets a free name under ``sheets-2/``. A file named
through a folder link of the source run pointing out of it (its ``images/`` moved to another
disk) is copied from there only when its bytes hash to its row's sha256, and the command
says so, one line per link; a file link pointing out is never read. A row path that cannot
be looked up (a name too long for the file system, a NUL character, a character the file
system cannot encode: a lone surrogate, ``"\\ud800"`` in a hand-edited manifest), or one a
file in the output stands where a folder of it would be (one shard's ``pdfs/x.pdf``,
another's ``pdfs/x.pdf/y.pdf``), is kept as it is, its file left behind, and the command
says so, one line per input; a path that cannot be encoded or holds a NUL is never looked
up, the output's own rows' neither. A row whose file is missing from its input is added
without it, and the command says so, one line per input naming the first row.
"""

from __future__ import annotations

import errno
import filecmp
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from histocore.export import DEFAULT_EXPORTS
from histocore.io import file_sha256, numbered, refuse_overlong_name, resolved, unnameable
from histocore.manifest import MANIFEST_NAME, Manifest
from histocore.store import STORE_NAME
from histofetch.merge_logs import LOG_NAME
from histofetch.merge_summary import MergeSummary

#: The run's own files at its top: a row naming one is never linked into the output (a
#: review there would append to the source's review log through the link), nor keeps that
#: name (``export.csv``: the next ``histofetch export`` overwrote the row's file).
_RUN_FILES = frozenset(
    {MANIFEST_NAME, LOG_NAME, STORE_NAME}
    | {f"{STORE_NAME}-{end}" for end in ("wal", "shm", "journal")}
    | DEFAULT_EXPORTS
)


#: ``filter``'s contact sheets folder: each filter deletes the ``kept*``, ``rejected*`` and
#: ``closest-*`` files there and writes its pages under those names
#: (:func:`histofetch.sheets.write_filter_sheets`), so no row's file is brought there
SHEETS = "sheets"


@dataclass
class Names:
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
    #: folders of row paths looked up by :meth:`placed` (:func:`placed_path`)
    seen: dict[str, str | None] = field(default_factory=dict)

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
        deleted it, and its row named a contact sheet or no file. So does a path that
        lands there through the output's folder links (``figs/x.png`` with ``figs`` a
        link to ``sheets``: ``sheets-2/x.png``)."""
        return placed_path(rel, self.sheets, self.out.named, self.seen)

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


def names_for(merged: Manifest) -> Names:
    """The names the output's rows hold (:class:`Names`), looked up once a merge, with the
    folder files the rows name under ``sheets/`` go to (:meth:`Names.out_of_sheets`)."""
    own = [r.pdf_path for r in merged.records.values()] + [i.path for i in merged.images.values()]
    tops = _tops(merged)  # once: a realpath of the output per row path was most of the time
    names = Names(tops, {name for path in own if path for name in _landings(tops, path)})
    names.out_of_sheets(merged)  # before the stale part files: where sheets/ files go
    return names


def placed_path(
    rel: str, sheets: str, out: str | Path, seen: dict[str, str | None] | None = None
) -> str:
    """:meth:`Names.placed`, ``sheets`` the folder chosen for files under ``sheets/``,
    ``out`` the output folder (its links followed: a folder link into ``sheets/`` was
    written through, the file deleted by the next filter). ``seen``: the folders looked up
    before in this merge (a folder → where in ``sheets/`` it lands, None: not there), so
    each is resolved once, not once a row."""
    top, sep, rest = rel.partition("/")
    if top == SHEETS:
        return sheets + sep + rest
    if top == rel:  # a name at the output's top: no folder link on its way
        return rel
    folder, name = posixpath.split(rel)
    seen = {} if seen is None else seen
    if folder not in seen:
        real = os.path.realpath(os.path.join(out, folder))
        filters = os.path.realpath(os.path.join(out, SHEETS))
        lands = real == filters or real.startswith(filters + os.sep)
        seen[folder] = Path(os.path.relpath(real, filters)).as_posix() if lands else None
    if (inside := seen[folder]) is None:
        return rel
    return posixpath.normpath(posixpath.join(sheets, inside, name))


def place_of(
    run: Manifest,
    merged: Manifest,
    rel: str,
    summary: MergeSummary,
    sha256: str | None,
    names: Names,
    row: str = "",
) -> str | tuple[Path, Path, Path | None]:
    """Where :func:`histofetch.merge._bring` puts the file a row of ``run`` names at
    ``rel``, looked up but nothing written: the row's new path for a file not brought,
    else the file to bring, where to and the folder link of ``run`` it is brought through
    (None: none). OSError where a path cannot be looked up (a name too long): nothing
    reserved or counted. A file missing from ``run`` (or not a regular file) is counted in
    ``summary.missing`` with ``row``, the id of the record or image naming it: its row is
    added without it, naming no file, and the command says so."""
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
    real, run_dir = resolved(src), resolved(run.run_dir)
    if real is None or run_dir is None:  # a link loop
        return _unbrought(merged, rel, names)
    inside = real.is_relative_to(run_dir)
    link = None if inside else _folder_link(run.run_dir, rel)
    if not inside and (link is None or src.is_symlink()):
        return _unbrought(merged, rel, names)  # a file link pointing out: never read
    if not src.is_file():  # missing in the source, as there: said, not silently
        summary.note_missing(run, row, rel)
        return _unbrought(merged, rel, names)
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
    if unnameable(path):  # names no file (os.path.realpath's ValueError)
        return []
    spelt = [os.path.normpath(os.path.join(top, path)) for top in out.tops]
    found: list[str] = []
    for landing in [*spelt, os.path.realpath(os.path.join(out.named, path))]:
        for top in out.tops:
            rel = os.path.relpath(landing, top)
            if rel not in (".", "..") and not rel.startswith("../"):
                found.append(Path(rel).as_posix())
    return list(dict.fromkeys(found))


def _unbrought(merged: Manifest, rel: str, names: Names) -> str:
    """The path a row keeps for a file not brought: its own, or a free name where the
    output holds a file (or link) there or another row names it, which is another
    article's: the row named it (``x:1``'s row left behind at ``pdfs/x_1.pdf``, the
    output's ``x_1`` PDF). The name is kept from files brought after it. Never a name
    under ``sheets/`` (filter's: :meth:`Names.placed`)."""
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
