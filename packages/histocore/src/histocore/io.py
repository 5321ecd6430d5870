"""Atomic file writes, file-system-safe names and file digests, used in every package.

A write that matters goes to a uniquely named temp file in the target's folder, is
fsynced, then renamed over the target: readers see the old file or the new one, never
half of one, and two writers never share a temp file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shlex
import stat
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any, BinaryIO, TypeVar

_P = TypeVar("_P", bound=PurePath)


def record_slug(record_id: str) -> str:
    """A file-system-safe folder/file stem for a record id (``pmid:123`` → ``pmid_123``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip("._")
    return slug[:120] or "record"


def unique_stem(key: str) -> str:
    """A file stem for ``key`` that readable slugs alone cannot give: :func:`record_slug`
    plus 8 hex digits of the key's sha256 (``pmid:1/a`` and ``pmid_1/a`` slug alike)."""
    return f"{record_slug(key)[:100]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


#: the most names :func:`free_name` tries (``path``, then ``-2`` … ``-10000``)
FREE_NAME_TRIES = 10_000


def free_name(path: _P, taken: Callable[[_P], bool]) -> _P:
    """``path``, or with ``-2``, ``-3``, … added to its stem (``pdfs/pmid_0-2.pdf``): the
    first name ``taken`` says is free. How ``download`` names a PDF beside another
    record's and ``merge`` brings a file beside another run's. Past
    :data:`FREE_NAME_TRIES` names, all taken, a :class:`FileExistsError` naming ``path``
    (a ``taken`` that says every name is taken looped for ever)."""
    for n in range(1, FREE_NAME_TRIES + 1):
        free = numbered(path, n)
        if not taken(free):
            return free
    problem = f"it and the next {FREE_NAME_TRIES - 1} numbered names are all taken"
    raise FileExistsError(errno.EEXIST, problem, str(path))


def numbered(path: _P, n: int) -> _P:
    """The ``n``-th name :func:`free_name` tries: ``path`` for 1, else ``-n`` added to its
    stem (``pdfs/pmid_0-2.pdf``)."""
    return path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def usual_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0o666 less the umask);
    for files written under a ``mkstemp`` name (0o600) and renamed into place."""
    return 0o666 & ~_UMASK


#: The temp file of an atomic write of NAME: ``.NAME.<random>.tmp`` beside it.
_ATOMIC_TEMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")
#: The short temp file of a name too long for that: ``.<random>.tmp`` (no dot in random).
_SHORT_TEMP = re.compile(r"^\.[^.]+\.tmp$")


def _name_max(folder: str | Path) -> int | None:
    """The longest file name (in bytes) the file system of ``folder`` takes (``NAME_MAX``),
    asked of ``folder`` or, while it is still to be made, of its nearest existing parent (a
    new folder is on that parent's file system); 255 where the file system cannot say, None
    where there is no limit to check: ``os.pathconf`` gives -1 (POSIX: no limit) or another
    value no name fits (0), or the platform has no ``os.pathconf`` (Windows, whose limit
    counts UTF-16 units, not bytes)."""
    folder = Path(folder).absolute()
    while not os.path.exists(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except AttributeError:
        return None
    except (OSError, ValueError):
        return 255
    return limit if limit > 0 else None


def refuse_overlong_name(path: str | Path) -> None:
    """Refuse a name longer than the file system of ``path``'s folder takes, before anything
    is written or made (it failed only at the last rename, after the whole write): an
    OSError (ENAMETOOLONG) naming ``path``."""
    path = Path(path)
    limit = _name_max(path.parent)
    if limit is not None and len(os.fsencode(path.name)) > limit:
        problem = f"{os.strerror(errno.ENAMETOOLONG)} (over {limit} bytes)"
        raise OSError(errno.ENAMETOOLONG, problem, str(path))


def _mkstemp_beside(path: Path) -> tuple[int, str]:
    """A new temp file beside ``path`` (its descriptor and name). A name longer than the
    file system takes is refused here, before anything is written (it failed only at the
    last rename). When the temp file cannot be made (a folder the user cannot write to, or
    whose path leaves no room for a temp name), the error names ``path``, the file the user
    gave, not the temp file's random name: ``out.pt: permission denied``."""
    refuse_overlong_name(path)
    try:
        try:
            return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            # a valid long name (250 characters) leaves no room for ".NAME.XXXX.tmp": a
            # short name, ".XXXX.tmp", which names no target (atomic_temp_target: None)
            return tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        name = os.path.basename(os.fsdecode(exc.filename)) if exc.filename is not None else ""
        ours = atomic_temp_target(name) == path.name or _SHORT_TEMP.match(name)
        if exc.filename2 is None and exc.errno and ours:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def temp_beside(path: str | Path) -> Path:
    """A new empty temp file beside ``path``, named as an atomic write of ``path`` names its
    own (for a writer that must hand a file name to a library, then rename it over ``path``)."""
    fd, tmp = _mkstemp_beside(Path(path))
    os.close(fd)
    return Path(tmp)


def atomic_temp_target(name: str) -> str | None:
    """The file name an atomic write's temp file ``name`` stands for, else None."""
    match = _ATOMIC_TEMP.match(name)
    return match["name"] if match else None


#: what a link loop is called in the one-line errors (the kernel's ELOOP, lower case)
LINK_LOOP = "too many levels of symbolic links"


def expand_home(raw: str | os.PathLike[str]) -> Path:
    """``raw`` as a path, ``~`` and ``~user`` expanded when the text given starts with
    ``~`` (``os.path.expanduser`` on the text, as bash does): ``./~/x`` and ``a/~x`` are
    names, and so is ``~ev`` where there is no user ``ev`` (bash leaves it as typed), or
    ``~+/x`` (bash's ``$PWD``, expanded by the shell only when unquoted). A ``Path`` is
    taken as it is: pathlib drops a leading ``./`` (``Path('./~/x')`` is ``~/x``), so its
    text cannot say which was given, and a path already parsed (the CLIs' ``home_path``)
    is never expanded a second time (``--out ./~/x.csv`` wrote ``$HOME/x.csv``)."""
    if isinstance(raw, str) and raw.startswith("~"):
        return Path(os.path.expanduser(raw))
    return Path(raw)


def link_loop(path: Path) -> bool:
    """``path`` is a symbolic link the kernel gives up following (``os.stat``: ELOOP, "too
    many levels of symbolic links"): a link to itself, one in a cycle (``a -> b -> a``), one
    leading into or through such a loop, and also a chain of more than 40 links, which
    loops nowhere (the kernel's limit; :func:`resolved` follows it). False for a link to a
    file, a folder or nothing, and for a path that is no link: one lying under a loop
    (``loop/x``: :func:`not_there` looks at its parents), or one ``lstat`` cannot look at."""
    if not path.is_symlink():
        return False
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def unnameable(path: str | Path) -> str | None:
    """Why ``path`` can name no file, None where it can: a NUL character (``os.stat`` and
    ``os.path.realpath`` raise ValueError), or one the file system's encoding cannot write
    (a lone surrogate, ``"\\ud800"`` in a hand-edited manifest). Such a path is never looked
    up; a caller says this, not what a failed lookup would suggest (a link loop)."""
    text = os.fspath(path)
    if "\x00" in text:
        return "a NUL character"
    try:
        os.fsencode(text)
    except UnicodeError:
        return "a character the file system cannot encode"
    return None


def resolved(path: str | Path) -> Path | None:
    """``path`` with its links resolved, or None when they cannot be (a link loop, a path
    through or under one: ``Path.resolve`` raises RuntimeError for a loop before Python
    3.13, an OSError may come from the file system), or a path no file system takes (a NUL
    byte: ValueError). Such a path names no usable file; the callers skip it or refuse it,
    where the bare ``resolve()`` was a traceback. None does not by itself say "a loop": a
    caller naming the loop checks :func:`unnameable` first."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def not_there(path: str | Path, problem: str = "no such file or folder") -> str:
    """What an input ``path`` that does not exist is: ``<path>: <problem>``; but when it is a
    link loop, or lies under one (``loop/x.h5`` after ``ln -s loop loop``), the loop named:
    ``loop: too many levels of symbolic links`` (the deeper path said ``no such file``)."""
    path = Path(path)
    for part in (path, *path.parents):  # a name under the loop is no link: lstat fails
        if link_loop(part):
            return f"{path_shown(part)}: {LINK_LOOP}"
    return f"{path_shown(path)}: {problem}"


def path_shown(path: Path) -> str:
    """``path`` as a message names it: ``./~/x`` for a relative path whose first part is a
    name starting with ``~`` (a folder named ``~``: the CLIs expand a home ``~`` as they
    parse, and pathlib drops the ``./`` given), which ``~/x`` would read as ``$HOME/x``."""
    text = str(path)
    return f"./{text}" if path.parts and path.parts[0].startswith("~") else text


def path_line(path: Path) -> str:
    """``path`` as a line of output names it: :func:`path_shown` (``./~/x`` for a folder
    named ``~``) with control characters escaped (:func:`one_line`: a newline in a folder's
    name does not break the line). The CLIs' success lines name their files so."""
    return one_line(path_shown(path))


def source_shown(text: object) -> str:
    """A path a library reports as text (a Path, ``d.h5``, or a reader's ``encoded:d.h5``) as
    :func:`path_shown` names it: ``./~/d.h5`` and ``encoded:./~/d.h5`` for a folder named
    ``~`` here, never ``~/d.h5`` ($HOME's to a reader). The CLIs' success lines use it, as
    their error lines do."""
    text = str(text)
    if text.startswith("~"):
        return path_shown(Path(text))
    kind, sep, where = text.partition(":")
    if sep and where.startswith("~"):
        return f"{kind}:{path_shown(Path(where))}"
    return text


def file_in_the_way(path: str | Path) -> tuple[Path, str] | None:
    """What among ``path``'s parents keeps it from being made, and why: the nearest of them
    that exists, when it is no folder (``a`` of ``a/b.pt`` when ``a`` is a file: ``is a file,
    not a folder``; a link to nowhere: ``broken symbolic link``; a link loop: ``too many
    levels of symbolic links``); None when that one is a folder."""
    for folder in Path(path).parents:  # nearest first: a/b/c, a/b, a
        if os.path.lexists(folder):
            if folder.is_dir():
                return None
            if not folder.is_symlink():
                return folder, "is a file, not a folder"
            try:
                os.stat(folder)
            except OSError as exc:
                return folder, LINK_LOOP if exc.errno == errno.ELOOP else "broken symbolic link"
            return folder, "is a file, not a folder"  # a link to a file
    return None


def make_parents(path: str | Path) -> None:
    """Make ``path``'s folder and any missing parents. One of them an existing file (or a
    broken link) is a :class:`NotADirectoryError` naming it, ``a: is a file, not a folder``
    (``mkdir`` said ``a: file exists``, as if the folder were there). A final name longer
    than the file system takes is refused first (:func:`refuse_overlong_name`): the
    folders made for it were left behind."""
    path = Path(path)
    refuse_overlong_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        in_the_way = file_in_the_way(path)
        if in_the_way is None:
            raise
        blocker, problem = in_the_way
        raise NotADirectoryError(errno.ENOTDIR, problem, str(blocker)) from None


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file for ``path``'s new content, written beside it: on a clean exit it is
    flushed, fsynced, given the usual file mode and renamed over ``path`` (readers see the
    old file or the new one, never half); on an error it is removed, ``path`` untouched."""
    path = Path(path)
    refuse_overlong_name(path)  # before its folders are made: a refused name leaves none
    make_parents(path)
    fd, tmp = _mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, usual_file_mode())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: ``link(2)``'s errors that are about the folder itself (no room, read-only, not
#: writable, gone), not about hard links: :func:`write_new` raises them. Any other error
#: means the file system has no hard links, and its number varies (Linux FAT: EPERM;
#: macOS exFAT, FAT, SMB: ENOTSUP, 45, not EOPNOTSUPP; Windows FAT: EINVAL; some FUSE
#: mounts: ENOSYS): there :func:`write_new` claims the name with an empty file first.
_FOLDER_UNUSABLE = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EIO,
    }
)


def write_new(path: str | Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` only where nothing is there: False, nothing written, when
    a file (or a link, a folder) is. The bytes are written beside it (fsynced, the usual
    file mode) and hard-linked into place, which never replaces a name, so readers see the
    whole file or none, and two processes that chose the same free name never write over
    each other's file (an atomic write's rename would). Without hard links, the name is
    claimed by creating it (``O_EXCL``) and the bytes renamed over that empty file: a
    reader may see it empty until the rename (then whole, never half); on an error in
    between the empty file is removed (when it is still the one made here), but a process
    killed there leaves it, empty, for good."""
    path = Path(path)
    make_parents(path)
    fd, tmp = _mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, usual_file_mode())  # mkstemp makes 0600; give the usual file mode
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in _FOLDER_UNUSABLE:
                raise
            try:
                claim = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
            try:
                claimed = os.fstat(claim)
            finally:
                os.close(claim)
            try:
                os.replace(tmp, path)
            except BaseException:
                _remove_claim(path, claimed)
                raise
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _remove_claim(path: Path, claimed: os.stat_result) -> None:
    """Remove the empty file :func:`write_new` claimed ``path`` with (``claimed``, its
    status) after the rename over it failed: only while ``path`` is still that file, never
    one put there since (the inode number alone may be the claim's, freed and reused: its
    size and change time too)."""

    def key(st: os.stat_result) -> tuple[int, ...]:
        return st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns

    with contextlib.suppress(OSError):
        if stat.S_ISREG((there := os.lstat(path)).st_mode) and key(there) == key(claimed):
            os.unlink(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    with atomic_writer(path) as fh:
        fh.write(data)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one existing file (links and other spellings of the
    path included); False when either is missing or unreadable, or is no path a file system
    takes (a NUL byte: ``Path.samefile`` raises ValueError)."""
    try:
        return Path(a).samefile(b)
    except (OSError, ValueError):
        return False


def remove_empty(folders: list[Path]) -> list[Path]:
    """Remove ``folders`` (deepest first, as :func:`make_folders` returns them) up to the
    first that is not empty or cannot be removed; returns those removed."""
    removed = []
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:  # removed already (by another process): its parents next
            continue
        except OSError:
            break
        removed.append(folder)
    return removed


def make_folders(path: str | Path) -> list[Path]:
    """Make ``path`` and its missing parents (a file in the way: ``FileExistsError``, as
    ``mkdir`` says it); returns the folders this call made, deepest first. One another
    process made meanwhile is not among them: listed before making them, a folder made by
    another command between the two was counted as this one's, and removed with it. A
    folder another process removes meanwhile is made again (a few times at most). If
    making one fails after some parents were made (a full disk), those are removed again
    (when empty) before the error goes on: the caller never got the list to remove them."""
    path = Path(path)
    made: list[Path] = []
    try:
        for _ in range(5):
            try:
                os.mkdir(path)
            except FileNotFoundError:
                if path.parent == path:
                    raise
                made += make_folders(path.parent)
                continue  # its parent is there now: make it
            except FileExistsError:
                if path.is_dir():
                    return made
                if os.path.lexists(path):  # a file (or a link to none) in the way
                    raise
                continue  # removed since: make it
            return [path, *made]
        raise FileNotFoundError(errno.ENOENT, "kept being removed while it was made", str(path))
    except BaseException:
        remove_empty(made)
        raise


@contextlib.contextmanager
def made_folder(path: str | Path) -> Iterator[Path]:
    """``path`` as a folder, made with any missing parents; if the block raises, the
    folders made here (:func:`make_folders`) are removed again, deepest first, as long as
    they are empty (a command that fails leaves no empty output folder behind)."""
    path = Path(path)
    yield from _made_folder_block(path, make_folders(path))


#: ``flock``'s errors where the file system cannot lock a folder: no locks at all (Lustre
#: without ``flock``), or NFS, which takes flock for a POSIX lock and refuses an exclusive
#: one on a read-only descriptor (EBADF): there the folder is used unlocked.
FOLDER_NOT_LOCKABLE = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


@contextlib.contextmanager
def locked_folder(path: str | Path, busy: Callable[[], Exception]) -> Iterator[Path]:
    """``path`` as a folder (made with any missing parents), under an exclusive ``flock``
    of the folder itself for the block (no lock file is left). Held by another process:
    ``busy()`` is raised and nothing removed (the folder is the holder's, whoever made
    it). If the block raises, the folders made here are removed, when empty, while the
    lock is still held (removed after it, a folder another process had just locked went
    with them). A lock taken on a folder removed meanwhile (opened just before another
    process removed it) is let go and taken again on the folder there now. Unlocked where
    the file system has no such lock (:data:`FOLDER_NOT_LOCKABLE`), or there is no
    ``fcntl`` (not POSIX)."""
    path = Path(path)
    try:
        import fcntl
    except ImportError:  # not POSIX: unlocked
        yield from _made_folder_block(path, make_folders(path))
        return
    made: list[Path] = []
    for _ in range(5):
        new = make_folders(path)
        made = new + [m for m in made if m not in new]  # deepest first, earlier tries' too
        try:  # O_DIRECTORY: a FIFO put there meanwhile is refused, not opened (a hang)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            continue  # removed since it was made: make it again
        except BaseException:
            remove_empty(made)
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy() from None
            except OSError as exc:
                if exc.errno not in FOLDER_NOT_LOCKABLE:
                    remove_empty(made)
                    raise OSError(exc.errno, exc.strerror, str(path)) from None
            if not _same_folder(fd, path):  # locked a folder removed meanwhile
                continue
            yield from _made_folder_block(path, made)
            return
        finally:
            os.close(fd)  # releases the lock
    remove_empty(made)
    raise FileNotFoundError(errno.ENOENT, "kept being removed while it was locked", str(path))


def _same_folder(fd: int, path: Path) -> bool:
    """The folder open as ``fd`` is still the one at ``path`` (not removed, not replaced)."""
    held = os.fstat(fd)
    try:
        now = os.stat(path)
    except OSError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _made_folder_block(path: Path, made: list[Path]) -> Iterator[Path]:
    """Yield ``path``; if the block raises, remove the folders in ``made`` when empty."""
    try:
        yield path
    except BaseException:
        remove_empty(made)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON values: dicts, lists and tuples recursively, NumPy/PyTorch
    scalars and arrays as numbers and lists (``.item()``, ``.tolist()``), NaN and ±inf as
    ``None`` (strict JSON has neither), anything else not JSON (paths, enums) as ``str``."""
    if isinstance(obj, dict):
        return {
            k if isinstance(k, (str, int, float, bool)) else str(k): json_safe(v)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if getattr(obj, "ndim", None) == 0 and callable(getattr(obj, "item", None)):
        return json_safe(obj.item())
    if callable(getattr(obj, "tolist", None)):
        return json_safe(obj.tolist())
    return str(obj)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (sorted keys, trailing newline) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


class RefusedFile(ValueError):
    """A file :func:`read_capped` will not read; its text is the problem, a short phrase
    (``over 4 MB``, ``not a regular file (a pipe, socket or device)``)."""


def size_text(n: int) -> str:
    """``n`` bytes as a cap is said: ``4 MB`` for whole mebibytes, else ``N bytes``."""
    return f"{n >> 20} MB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"


#: :class:`RefusedFile`'s text for what is not a regular file.
NOT_REGULAR = "not a regular file (a pipe, socket or device)"


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading in binary, if it is a regular file (links followed); a
    FIFO, socket, device (``/dev/zero``) or folder is a :class:`RefusedFile` (``not a
    regular file (a folder)``; ``… (a pipe, socket or device)``), checked on the open file
    before it is wrapped (no race with a swap; a folder said ``3: is a directory``, its
    descriptor left open) and opened without blocking (a FIFO with no writer is refused,
    not waited on; a socket, which cannot be opened, too: it was an ``ENXIO`` error). For
    readers that stream a file under their own caps (:func:`read_capped`, a line reader
    with a cap per line). Any other ``OSError`` passes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a device with nothing behind it)
            raise RefusedFile(NOT_REGULAR) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise RefusedFile("not a regular file (a folder)")
        if not stat.S_ISREG(mode):
            raise RefusedFile(NOT_REGULAR)
        os.set_blocking(fd, True)  # a regular file: reads never block anyway
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def holds_a_file(path: str | Path, refuse: Callable[[str], Exception] = RefusedFile) -> bool:
    """Whether a regular file with content is at ``path`` (links followed): one that a writer
    of ``path`` would replace and so must first judge. False where nothing is there (or it
    cannot be looked at: a link loop, an overlong name, left to the writer's own error), for
    an empty file and for a folder (the writer's own error, too); a pipe, socket or device
    (``/dev/stdout``) raises ``refuse(NOT_REGULAR)``, the caller's error with its wording."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode):
        raise refuse(NOT_REGULAR)
    return st.st_size > 0


def replace_only_ours(
    path: Path, ours: Callable[[Path], bool], refuse: Callable[[str], Exception], *,
    not_ours: str, would: str
) -> None:  # fmt: skip
    """Refuse, before a writer replaces ``path``, anything there but nothing, an empty file,
    a folder (the writer's own error) or a file ``ours`` accepts (its earlier output): one
    ``refuse(message)`` raised, the message ``<path>: exists and <not_ours>; <would>, or
    remove it first``, ``<path>: not a regular file (…); <would>`` for a pipe or device, or
    ``<path>: permission denied`` where ``ours`` cannot read it (whether it is ours cannot
    be told)."""
    if not holds_a_file(path, lambda problem: refuse(f"{path}: {problem}; {would}")):
        return
    try:
        mine = ours(path)
    except OSError as exc:  # worded as histocore.errors.describe words it (no cycle)
        where = exc.filename if exc.filename is not None and exc.strerror else path
        raise refuse(f"{where}: {(exc.strerror or str(exc)).lower()}") from None
    if not mine:
        raise refuse(f"{path}: exists and {not_ours}; {would}, or remove it first")


def read_capped(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (links followed), reading at most
    ``max_bytes + 1`` of them: a file over ``max_bytes`` (a 10 GB file given by mistake) or
    one that is not a regular file (a FIFO, ``/dev/zero``: read forever, or a hang) is a
    :class:`RefusedFile`, read no further. Opened without blocking, so a FIFO with no
    writer is refused, not waited on. An ``OSError`` (no such file, no permission) passes."""
    with open_regular(path) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RefusedFile(f"over {size_text(max_bytes)}")
    return data


class NotJSON(ValueError):
    """Text that :func:`loads_json` cannot turn into a value; its text is one short line."""


def loads_json(
    text: str | bytes, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
) -> Any:
    """``json.loads`` for text from a file or a server: every way such text fails is one
    :class:`NotJSON` (a ``ValueError``): malformed JSON (``not valid JSON (…)``), an integer
    over Python's 4300-digit limit for ``int(str)`` and arrays or objects nested thousands
    deep, which ``json`` lets out as a bare ``ValueError`` and a ``RecursionError``.
    ``object_pairs_hook`` is json's; what it raises (other than a ``ValueError``) passes."""
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise NotJSON(f"not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:  # bytes that are not UTF-8/16/32
        raise NotJSON(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError:
        raise NotJSON("not usable JSON (a number with too many digits)") from None
    except RecursionError:
        raise NotJSON("not usable JSON (nested too deeply)") from None


def number_text(value: float) -> str:
    """``value`` as the shortest text that reads back as the same float, without a trailing
    ``.0`` (``0.3333333``, ``2``, ``1e-07``): the number a user gave, as given. ``:g`` rounds
    to six digits, so a message could name another value (``16.0000001`` as ``16``)."""
    return repr(float(value)).removesuffix(".0")


def fraction_text(t: float) -> str:
    """A number in [0, 1] (a decision threshold) as printed: 4 decimals, or as many more as
    it takes not to read as 0 or 1 (``0.99996``, not ``1.0000``: a confident model's
    threshold lies among scores that close to 1). The text, the report and the figures
    print thresholds so (the figures said ``chosen 1.000``)."""
    if not 0.0 < t < 1.0:
        return f"{t:.4f}"
    for digits in range(4, 17):
        text = f"{t:.{digits}f}"
        if 0.0 < float(text) < 1.0:
            return text
    return repr(float(t))


def utc_stamp(at: datetime | None = None) -> str:
    """``at`` (an aware time; now where None) as a review answer is stamped (an image's
    ``label_at``, the review log's ``at``): ISO 8601 in UTC to the microsecond,
    ``2026-03-01T12:00:00.000000+00:00``, the fraction written even where it is 0, so the
    stamp is told from an older version's, stamped to the second without one
    (:func:`histofetch.merge_logs.answer_time`). The review page and ``histomodels label``
    stamp with it."""
    return (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")


def one_line(message: str) -> str:
    """``message`` with control characters escaped (``\\n``, ``\\x1b``...).

    Every CLI prints errors through this, so a newline or terminal escape inside a file
    name cannot forge a second ``error:`` line or recolour the terminal.
    """
    if message.isprintable():  # most are: as they are (every row id of a run is quoted)
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


#: the most characters of a value read from a file (an id, a key, a cell) that a message
#: quotes: :func:`text_shown`
SHOWN_CHARS = 200


def text_shown(text: str, most: int = SHOWN_CHARS) -> str:
    """``text`` (a value from a file: an id, a key, a cell) as a message quotes it: its
    first ``most`` characters, control characters escaped (:func:`one_line`), and ``…``
    after them when it was cut, so a cut value does not read as the whole one. The one
    shortening of a quoted value (row keys and header values of a run, the dataset
    readers' patch ids, ids of a label CSV or a review's scores, a model config); a
    place that cuts shorter says why where it passes ``most``."""
    return one_line(text[:most]) + ("…" if len(text) > most else "")


#: what bash's ANSI-C quoting writes as a letter after the backslash
_C_ESCAPES = {"\a": "a", "\b": "b", "\t": "t", "\n": "n", "\v": "v", "\f": "f", "\r": "r"}


def shell_word(text: str) -> str:
    """``text`` as one word to paste into a shell, which reads it back as it is, on one line
    with no control character in it: ``shlex.quote`` (``'my run'``), or where ``text``
    holds a character that is not printable (a newline, ``\\x1b``, a no-break space, a
    zero-width space) ANSI-C quoting, ``$'a\\nb'``: ``\\n``, ``\\t``... for the C escapes,
    and every other such character as the ``\\xHH`` bytes of its UTF-8 encoding
    (:func:`os.fsencode`, so a byte the file name held that is no UTF-8, which Python reads
    as a lone surrogate, is that byte again): U+00A0 is ``\\xc2\\xa0``, as the name holds
    it on disk. bash reads ``\\xHH`` as that one byte in any locale (and at most two hex
    digits after ``\\x``); ``\\u``, which bash reads only under a UTF-8 locale (under
    ``LC_ALL=C`` it stays as written), is not used. bash, zsh and ksh read ``$'…'``; a
    plain ``sh`` such as dash does not. shlex quoted such characters as they were: the hint
    broke over two lines, or sent an escape sequence to the terminal, and :func:`one_line`
    on the line made it ``'a\\nb'``, a name with a backslash in it."""
    if text.isprintable():
        return shlex.quote(text)
    out = []
    for c in text:
        if c in "\\'":
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif c in _C_ESCAPES:
            out.append("\\" + _C_ESCAPES[c])
        else:
            try:
                raw = os.fsencode(c)  # UTF-8; a surrogate U+DC80..U+DCFF is its byte again
            except UnicodeEncodeError:  # a lone surrogate no file name decodes to
                raw = c.encode("utf-8", "surrogatepass")
            out.append("".join(f"\\x{b:02x}" for b in raw))
    return "$'" + "".join(out) + "'"
