"""``histofetch merge`` (:mod:`histofetch.merge`): files copied into the output through
part files, and the part files a merge killed mid-copy left, removed.

A file copied into the output is written under a temporary name beside it
(``.merge-XXXXXXXX.part``), locked (``flock``) while it is written, and renamed into
place. A merge killed mid-copy (SIGKILL, a power cut) leaves that file behind; the next
merge into the output (once nothing refuses it) removes every such file no live process
holds locked (a merge still copying into it keeps its own) from the folders the
output's and the inputs' rows' files go to in the output (through its folder links too)
and nowhere else: only that name exactly, never a file a row names (nor one a row's file
is a link to).
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
import re
import shutil
import stat
import tempfile
from pathlib import Path

from histocore.io import unnameable
from histocore.manifest import Manifest
from histofetch.merge_paths import placed_path

#: A copy's temporary name: ``.merge-XXXXXXXX.part`` (short: ``.<name>.part`` of a
#: 250-character name is too long)
_PART_PREFIX, _PART_SUFFIX = ".merge-", ".part"


#: Such a name as ``tempfile.mkstemp`` makes it (8 of ``[a-z0-9_]``): only these are
#: removed as stale (``.merge-draft.part`` is not the merge's)
_PART_NAME = re.compile(r"\.merge-[a-z0-9_]{8}\.part")


def copy_whole(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary name beside it: an interrupted copy
    leaves no truncated file at ``dst`` (a rerun would take it for another article's and
    bring the file under ``-2``, the short one left named by no row). The temporary file is
    locked (``flock``) until it is renamed: :func:`remove_stale_parts` of another merge
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
NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})


def _lock(fd: int, dst: Path) -> bool:
    """Lock ``fd`` (a part file of ``dst``) for good; False on a file system without locks.
    Another failure is an OSError naming ``dst`` (it named no file)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno in NO_LOCKS:
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


def remove_stale_parts(merged: Manifest, loaded: list[Manifest], sheets: str) -> int:
    """Remove the part files (:data:`_PART_NAME`) no process holds locked, those of a merge
    killed mid-copy, from the folders files of the output's and the inputs' rows go to in
    the output (through its folder links: ``pdfs/`` moved to another disk), and only
    there: a file named so elsewhere under it (``--out ~``) is not the merge's. A file a
    row names (``pdfs/.merge-r1aaaaaa.part``, a row's own file) is never removed, nor one
    a row's file is a link to (``images/0.png`` → ``.merge-abcdefgh.part``: the same file,
    by device and inode). An input's row under ``sheets/`` has its file go under
    ``sheets`` (:meth:`histofetch.merge_paths.Names.placed`): that folder is looked in.
    Returns how many."""
    out = merged.run_dir
    folders: set[Path] = set()
    named: set[tuple[int, int, str]] = set()  # (folder's device, inode, name) rows name
    keys: dict[Path, tuple[int, int] | None] = {}
    paths: list[Path] = []  # the rows' files in the output, for what they link to
    looked_up: dict[str, str | None] = {}  # folders of row paths (placed_path)
    for run in (merged, *loaded):
        rels = [r.pdf_path for r in run.records.values()] + [i.path for i in run.images.values()]
        for rel in rels:
            if not rel or unnameable(rel):  # no folder (os.stat's ValueError)
                continue
            if run is not merged and not Path(rel).is_absolute():
                rel = placed_path(posixpath.normpath(rel), sheets, out, looked_up)  # where it goes
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
    try:  # for writing: NFS takes flock for a POSIX lock, refused exclusive on a read-only fd
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # another user's file, or none: left
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
