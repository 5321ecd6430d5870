"""histocore.io: atomic writes never leave half a file or a stray temp file behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from histocore.errors import describe
from histocore.io import (
    FREE_NAME_TRIES,
    atomic_temp_target,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_writer,
    free_name,
    holds_a_file,
    make_parents,
    number_text,
    path_line,
    record_slug,
    temp_beside,
    text_shown,
    unique_stem,
    utc_stamp,
    write_new,
)


def test_text_shown_cuts_with_a_marker_and_escapes() -> None:
    """A value from a file as a message quotes it: 200 characters, ``…`` only when cut,
    control characters escaped (escapes do not count towards the cut)."""
    assert text_shown("a" * 200) == "a" * 200
    assert text_shown("a" * 201) == "a" * 200 + "…"
    assert text_shown("a\nb", most=2) == "a\\n…"
    assert text_shown("") == ""


def test_path_line_names_a_tilde_folder_here_and_escapes_control_characters() -> None:
    assert path_line(Path("~/a\nb")) == "./~/a\\nb"
    assert path_line(Path("/x/~/c\x1b")) == "/x/~/c\\x1b"


def test_utc_stamp_is_utc_to_the_microsecond_even_at_a_whole_second() -> None:
    """The review answers' stamp: UTC, ISO 8601, a fraction of six digits even where it is
    0 (a stamp without one is read as an older version's, to the second)."""
    import re
    from datetime import UTC, datetime, timedelta, timezone

    whole = datetime(2026, 3, 1, 13, 0, 0, tzinfo=timezone(timedelta(hours=1)))
    assert utc_stamp(whole) == "2026-03-01T12:00:00.000000+00:00"
    now = utc_stamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", now), now
    assert abs(datetime.fromisoformat(now) - datetime.now(UTC)) < timedelta(minutes=1)


def test_atomic_write_replaces_whole_file_and_keeps_usual_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new text")
    assert target.read_text() == "new text"
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_json_is_sorted_with_newline(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize(
    ("record_id", "slug"),
    [("pmid:123", "pmid_123"), ("../../etc/passwd", "etc_passwd"), ("...", "record")],
)
def test_record_slug_is_file_system_safe(record_id: str, slug: str) -> None:
    assert record_slug(record_id) == slug


def test_file_sha256_reads_in_blocks(tmp_path) -> None:
    import hashlib

    from histocore.io import file_sha256

    data = bytes(range(256)) * 5000  # over one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert file_sha256(str(tmp_path / "e")) == hashlib.sha256(b"").hexdigest()


def test_json_safe_gives_plain_strict_json_values() -> None:
    import json
    import math
    from pathlib import PurePosixPath

    import numpy as np

    from histocore.io import json_safe

    obj = {
        "auc": np.float32(0.5),
        "n": np.int64(3),
        "flag": np.bool_(True),
        "nan": float("nan"),
        "inf": np.float64(math.inf),
        "curve": np.array([0.0, 1.0]),
        "pair": (1, "a"),
        "path": PurePosixPath("runs/a"),
        "nested": {"none": None},
    }
    out = json_safe(obj)
    assert out == {
        "auc": 0.5,
        "n": 3,
        "flag": True,
        "nan": None,
        "inf": None,
        "curve": [0.0, 1.0],
        "pair": [1, "a"],
        "path": "runs/a",
        "nested": {"none": None},
    }
    assert type(out["n"]) is int and type(out["flag"]) is bool
    json.dumps(out, allow_nan=False)  # strict JSON


def test_temp_beside_is_named_as_atomic_writes_name_theirs(tmp_path: Path) -> None:
    target = tmp_path / "best.pt"
    tmp = temp_beside(target)
    assert tmp.parent == tmp_path and tmp.is_file() and tmp.read_bytes() == b""
    assert atomic_temp_target(tmp.name) == "best.pt"
    assert temp_beside(target) != tmp  # each call its own file
    for name in ("best.pt", ".best.pt", "best.pt.tmp", ".tmp"):
        assert atomic_temp_target(name) is None


def test_unique_stem_tells_apart_ids_that_slug_alike() -> None:
    """``pmid:1/a`` and ``pmid_1/a`` both slug to ``pmid_1_a``: their heatmaps overwrote
    each other and the review page showed one figure's heatmap on the other."""
    a, b = unique_stem("pmid:1/a"), unique_stem("pmid_1/a")
    assert a != b and a.startswith("pmid_1_a-") and b.startswith("pmid_1_a-")
    assert unique_stem("pmid:1/a") == a and record_slug(a) == a  # stable and file-safe


def test_number_text_is_the_number_as_given() -> None:
    """Every digit that makes the float (':g' kept six: 16.0000001 read as 16), no '.0'."""
    for given in ("0.3333333", "16.0000001", "2", "0.5", "1e-07", "123456789", "nan", "inf"):
        assert number_text(float(given)) == given
    assert number_text(3) == "3"


def test_free_name_adds_a_number_to_the_stem_until_a_name_is_free(tmp_path: Path) -> None:
    taken = {"pdfs/pmid_0.pdf", "pdfs/pmid_0-2.pdf"}
    assert free_name(PurePosixPath("pdfs/x.pdf"), lambda p: str(p) in taken).as_posix() == (
        "pdfs/x.pdf"
    )
    got = free_name(PurePosixPath("pdfs/pmid_0.pdf"), lambda p: str(p) in taken)
    assert got == PurePosixPath("pdfs/pmid_0-3.pdf")
    (tmp_path / "fig.png").write_bytes(b"x")
    assert free_name(tmp_path / "fig.png", Path.exists) == tmp_path / "fig-2.png"


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only while the block runs: mode 0o555, or for root (whom modes do
    not stop) ``chattr +i``; skips the test where neither holds."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not supported: nothing is read-only")
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_a_write_into_a_folder_it_cannot_write_names_the_file_not_its_temp_file(
    tmp_path: Path,
) -> None:
    """An atomic write (and ``temp_beside``) into a read-only folder failed naming the temp
    file it could not make (``ro/.out.pt.k3j2x9.tmp: permission denied``), a name the user
    never gave; the error names the file to write now, and nothing is left there."""
    folder = tmp_path / "ro"
    folder.mkdir()
    target = folder / "out.pt"
    with _read_only(folder):
        for write in (lambda: atomic_write_bytes(target, b"x"), lambda: temp_beside(target)):
            with pytest.raises(PermissionError) as err:
                write()
            assert err.value.filename == str(target)
            # permission denied; under chattr +i: operation not permitted
            assert describe(err.value) == f"{target}: {str(err.value.strerror).lower()}"
    assert list(folder.iterdir()) == []


def test_a_long_valid_name_is_written_through_a_short_temp_name(tmp_path: Path) -> None:
    """A 250-character name is a valid file name, but its temp file ``.NAME.XXXX.tmp`` was
    too long: the write failed with ``<name>: File name too long`` naming a name that is
    fine. Such a write (and ``temp_beside``) uses a short temp name now; a name that is too
    long itself is still refused naming it, and nothing is left behind either way."""
    name = "a" * 250
    atomic_write_bytes(tmp_path / name, b"x")
    assert (tmp_path / name).read_bytes() == b"x"
    tmp = temp_beside(tmp_path / ("b" * 250))
    assert tmp.parent == tmp_path and len(tmp.name) < 20
    tmp.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / ("c" * 300), b"x")
    assert describe(info.value).startswith(str(tmp_path / ("c" * 300)) + ": ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_name_too_long_for_the_file_system_is_refused_before_writing(
    tmp_path: Path, capsys
) -> None:
    """A name over NAME_MAX (255 bytes here) was refused only by the final rename, after the
    whole write (a model's, a CSV's); it is refused up front now, naming the user's file,
    and the writer's block never runs. ``temp_beside`` refuses it too."""
    from histocore.cli import errors

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    target = tmp_path / ("c" * (limit + 1))
    ran = []
    with pytest.raises(OSError) as info, atomic_writer(target) as fh:
        ran.append(1)
        fh.write(b"x")
    assert ran == [] and info.value.filename == str(target)
    assert describe(info.value) == f"{target}: file name too long (over {limit} bytes)"
    with pytest.raises(OSError) as info:
        temp_beside(target)
    assert info.value.filename == str(target)
    with pytest.raises(SystemExit), errors():  # as the CLIs say it
        atomic_write_bytes(target, b"x")
    assert capsys.readouterr().err == f"error: {target}: file name too long (over {limit} bytes)\n"
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(tmp_path / ("d" * limit), b"x")  # the longest name is fine
    assert (tmp_path / ("d" * limit)).read_bytes() == b"x"


def test_a_folder_too_deep_for_any_temp_name_is_named_by_the_file_to_write(
    tmp_path: Path,
) -> None:
    """In a folder whose path is near PATH_MAX no temp name fits, not even the short one
    made for long names: the error named that random temp file (``.k3j2x9ab.tmp: file name
    too long``), a name the user never gave; it names the file to write."""
    limit = os.pathconf(tmp_path, "PC_PATH_MAX")  # 4096 with its NUL: paths up to 4095
    folder = tmp_path
    while len(str(folder)) < limit - 11:  # folders of 200 characters, to 4085 in all
        folder = folder / ("f" * max(1, min(200, limit - 11 - len(str(folder)) - 1)))
    folder.mkdir(parents=True)
    target = folder / "out.csv"  # "/out.csv" fits; "/.out.csv.XXXXXXXX.tmp" does not,
    assert len(str(target)) < limit <= len(str(folder)) + len("/.XXXXXXXX.tmp")  # nor this
    for write in (lambda: atomic_write_bytes(target, b"x"), lambda: temp_beside(target)):
        with pytest.raises(OSError) as info:
            write()
        assert info.value.filename == str(target)
        assert describe(info.value) == f"{target}: file name too long"
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("under", ["b.pt", "x/y/b.pt"])
def test_a_write_under_a_file_says_the_file_is_no_folder(tmp_path: Path, under: str) -> None:
    """``a/b.pt`` with ``a`` a file said ``a: file exists`` (as if the folder were there),
    ``a/x/y/b.pt`` ``a/x/y: not a directory``: now both name ``a``, no folder."""
    a = tmp_path / "a"
    a.write_text("mine")
    with pytest.raises(NotADirectoryError) as err:
        atomic_write_bytes(a / under, b"data")
    assert describe(err.value) == f"{a}: is a file, not a folder"
    with pytest.raises(NotADirectoryError) as err:
        make_parents(a / under)
    assert describe(err.value) == f"{a}: is a file, not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and a.read_text() == "mine"
    make_parents(tmp_path / "x" / "y" / "b.pt")  # folders are made as before
    assert (tmp_path / "x" / "y").is_dir()


@pytest.mark.parametrize("answer", [-1, 0], ids=["no limit", "zero"])
def test_a_name_limit_the_file_system_does_not_give_refuses_no_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: int
) -> None:
    """``os.pathconf`` giving -1 (POSIX: no limit) or 0 for NAME_MAX was taken as the limit,
    so every atomic write was refused ('file name too long (over -1 bytes)'); such an
    answer sets no limit, and the name is written."""
    monkeypatch.setattr(os, "pathconf", lambda path, name: answer)
    atomic_write_bytes(tmp_path / "out.txt", b"x")
    assert (tmp_path / "out.txt").read_bytes() == b"x"
    temp_beside(tmp_path / "model.pt").unlink()


def test_a_platform_without_pathconf_still_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no ``os.pathconf``: the name check raised AttributeError, a traceback on
    every atomic write; it now writes (the file system refuses what it cannot hold)."""
    monkeypatch.delattr(os, "pathconf")
    atomic_write_bytes(tmp_path / "out.txt", b"x")
    assert (tmp_path / "out.txt").read_bytes() == b"x"


def test_a_name_too_long_leaves_no_folder_made_for_it(tmp_path: Path) -> None:
    """The folders of the file to write were made before its name was checked, so a refused
    name left them behind, empty (``export --out newdir/<256 bytes>.csv`` left ``newdir/``);
    the name is checked first, against the file system of the nearest existing folder."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    target = tmp_path / "new" / "sub" / ("c" * (limit + 1))
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"x")
    assert describe(info.value) == f"{target}: file name too long (over {limit} bytes)"
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(tmp_path / "new" / "sub" / ("d" * limit), b"x")  # made when it fits
    assert (tmp_path / "new" / "sub" / ("d" * limit)).read_bytes() == b"x"


def test_a_write_under_a_broken_link_says_it_is_one(tmp_path: Path) -> None:
    """``dang/b.pt`` with ``dang`` a link to nowhere said ``dang: is a file, not a folder``."""
    (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError) as err:
        atomic_write_bytes(tmp_path / "dang" / "x" / "b.pt", b"data")
    assert describe(err.value) == f"{tmp_path / 'dang'}: broken symbolic link"
    assert not (tmp_path / "nowhere").exists()


def test_make_parents_refuses_a_name_too_long_before_making_its_folder(tmp_path: Path) -> None:
    """``make_parents(new/<260 characters>.onnx)`` made ``new/`` and the write failed after
    it (export, predict): the final name is checked first, nothing made."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    target = tmp_path / "new" / ("a" * (limit + 1) + ".onnx")
    with pytest.raises(OSError) as info:
        make_parents(target)
    assert describe(info.value) == f"{target}: file name too long (over {limit} bytes)"
    assert not (tmp_path / "new").exists()


def test_a_failed_block_never_removes_a_folder_that_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``made_folder("new/../out")`` with ``out`` there already: ``new/..`` did not exist
    (``new`` did not), so ``out`` was listed as made here and removed when the block
    failed, and ``new``, made, stayed (review 14)."""
    from histocore.io import made_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError), made_folder("new/../out"):
        raise RuntimeError("the command failed")
    assert (tmp_path / "out").is_dir()
    with pytest.raises(RuntimeError), made_folder("made/here"):
        raise RuntimeError("the command failed")
    assert not (tmp_path / "made").exists()  # what it made is still removed


def test_a_failed_make_removes_the_parents_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mkdir new/sub`` failing (a full disk) after ``new/`` was made: the error left
    ``make_folders`` before ``made_folder``'s block began, the list of what it made was
    lost and ``new/`` stayed (review M1). Now ``make_folders`` removes it before raising."""
    import errno

    from histocore import io as hio

    real_mkdir = os.mkdir

    def mkdir(path: str | os.PathLike[str], *args: int) -> None:
        if Path(path).name == "sub" and Path(path).parent.is_dir():  # else: ENOENT first
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_mkdir(path, *args)

    monkeypatch.setattr(hio.os, "mkdir", mkdir)
    (tmp_path / "there").mkdir()
    with pytest.raises(OSError) as info, hio.made_folder(tmp_path / "new" / "deeper" / "sub"):
        pass
    assert info.value.errno == errno.ENOSPC
    assert not (tmp_path / "new").exists()
    with pytest.raises(OSError):
        hio.make_folders(tmp_path / "there" / "sub")
    assert (tmp_path / "there").is_dir()  # there before: kept


def test_holds_a_file_says_whether_a_writer_would_replace_a_file_it_must_judge(
    tmp_path: Path,
) -> None:
    """What predict and export ask of --out before replacing anything: a regular file with
    content (links followed) is there; nothing, an empty file or a folder is not (the
    writer's own business); a pipe is refused with the one phrase the CLIs put in their
    line."""
    from histocore.io import NOT_REGULAR, RefusedFile

    full, empty, fifo = tmp_path / "full", tmp_path / "empty", tmp_path / "fifo"
    full.write_text("x")
    empty.touch()
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(full)
    assert holds_a_file(full) and holds_a_file(tmp_path / "link")
    assert not holds_a_file(empty) and not holds_a_file(tmp_path)
    assert not holds_a_file(tmp_path / "missing")
    with pytest.raises(RefusedFile) as refused:
        holds_a_file(fifo)
    assert str(refused.value) == NOT_REGULAR


def test_read_capped_reads_a_file_up_to_its_cap_and_refuses_more_unread(tmp_path: Path) -> None:
    """The one helper every capped reader uses: a file at the cap is read; one byte over
    (or a sparse 10 GB file) is 'over N MB' after reading at most cap + 1 bytes; a FIFO
    with no writer is refused at once (not waited on), as is /dev/zero through a link."""
    from histocore.io import RefusedFile, read_capped, size_text

    at = tmp_path / "at.bin"
    at.write_bytes(b"x" * (1 << 20))
    assert read_capped(at, 1 << 20) == b"x" * (1 << 20)
    over = tmp_path / "over.bin"
    over.write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(RefusedFile, match=r"^over 1 MB$"):
        read_capped(over, 1 << 20)
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as fh:
        fh.truncate(10 << 30)  # sparse: no disk used
    with pytest.raises(RefusedFile, match=r"^over 4 MB$"):
        read_capped(huge, 4 << 20)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(RefusedFile, match=r"^not a regular file \(a pipe, socket or device\)$"):
            read_capped(path, 4 << 20)
    with pytest.raises(FileNotFoundError):
        read_capped(tmp_path / "absent", 10)
    assert size_text(64 << 20) == "64 MB" and size_text(1000) == "1000 bytes"


def test_a_refused_locked_folder_leaves_the_holders_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two merges into a new OUT at once: both listed OUT as missing, one made and locked
    it, and the other, refused, removed it as its own (empty yet): the first went on
    writing into a folder its lock no longer covered (review 15). Here the other process
    makes OUT and locks it between this one's look and its mkdir."""
    import fcntl

    from histocore.io import locked_folder

    out = tmp_path / "out"
    held: list[int] = []
    real_mkdir = os.mkdir

    def mkdir_racing(path: str | Path, *args: int, **kwargs: int) -> None:
        if Path(path) == out and not held:  # the other merge, first
            real_mkdir(path)
            held.append(os.open(path, os.O_RDONLY))
            fcntl.flock(held[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir_racing)
    try:
        with (
            pytest.raises(RuntimeError, match="busy"),
            locked_folder(out, lambda: RuntimeError("busy")),
        ):
            pass
        assert out.is_dir()  # the holder's, left alone
    finally:
        os.close(held[0])


def test_a_locked_folder_where_the_file_system_cannot_lock_it_is_used_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On NFS an exclusive flock of a folder opened read-only fails with EBADF (flock is a
    POSIX lock there): every merge into an NFS folder stopped with 'bad file descriptor'.
    Failing blocks still remove what they made, and only that."""
    import errno
    import fcntl

    from histocore.io import locked_folder

    def no_lock(fd: int, op: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", no_lock)
    with locked_folder(tmp_path / "nfs" / "out", RuntimeError) as out:
        (out / "x").write_text("merged")
    assert (tmp_path / "nfs" / "out" / "x").read_text() == "merged"
    (tmp_path / "there").mkdir()
    with pytest.raises(ValueError), locked_folder(tmp_path / "there" / "new" / "o", RuntimeError):
        raise ValueError("the command failed")
    assert (tmp_path / "there").is_dir() and not (tmp_path / "there" / "new").exists()


def test_a_locked_folder_retried_removes_every_folder_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry forgot the parents made by the try before it: a block that then failed left
    them (review 19). And a folder removed at every try is said so, not 'busy'."""
    from histocore.io import locked_folder

    out = tmp_path / "a" / "b" / "out"
    real_open = os.open
    tries: list[int] = []

    def open_after_removal(path: str | Path, flags: int, *args: int) -> int:
        if Path(path) == out and len(tries) < 1:  # removed once, before it was opened
            tries.append(1)
            os.rmdir(out)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_after_removal)
    with pytest.raises(ValueError), locked_folder(out, lambda: RuntimeError("busy")):
        raise ValueError("the command failed")
    assert list(tmp_path.iterdir()) == []
    tries.clear()

    def always_removed(path: str | Path, flags: int, *args: int) -> int:
        if Path(path) == out:
            os.rmdir(out)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", always_removed)
    with (
        pytest.raises(FileNotFoundError, match="kept being removed"),
        locked_folder(out, lambda: RuntimeError("busy")),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_lock_taken_on_a_folder_removed_meanwhile_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge that failed removed its new OUT while another had it open, about to lock
    it: the other's lock then held a removed folder, its writes made OUT anew, unlocked,
    and a third merge could lock that one beside it (review 18). The lock is now checked
    to hold the folder at OUT, and taken again when it does not."""
    import fcntl

    from histocore.io import locked_folder

    out = tmp_path / "out"
    real_flock = fcntl.flock
    removed: list[Path] = []

    def flock_after_removal(fd: int, op: int) -> None:
        if not removed:  # the failing merge removes OUT between open and flock
            os.rmdir(out)
            removed.append(out)
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    with locked_folder(out, lambda: RuntimeError("busy")) as folder:
        assert folder.is_dir() and removed  # the lock holds the folder there now
        (folder / "run.sqlite").write_text("merging")
        monkeypatch.setattr(fcntl, "flock", real_flock)
        with (
            pytest.raises(RuntimeError, match="busy"),
            locked_folder(out, lambda: RuntimeError("busy")),
        ):
            pass


@pytest.mark.parametrize(
    "link_errno",
    # None: hard links work. Without them the error varies: Linux FAT EPERM, FUSE ENOSYS,
    # macOS exFAT/FAT/SMB ENOTSUP (45 there, not EOPNOTSUPP), Windows FAT EINVAL
    [None, errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, 45, errno.EINVAL],
)
def test_write_new_never_replaces_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link_errno: int | None
) -> None:
    """A file written only where none is (two processes choosing one free name): False and
    nothing written where a file or a link is; no temp file left either way. Without hard
    links, whatever link() answers, the name is claimed with O_EXCL instead (review 23:
    macOS exFAT's ENOTSUP and Windows FAT's EINVAL failed every PDF download)."""
    if link_errno is not None:
        code = link_errno

        def no_link(src: object, dst: object, *_: object, **__: object) -> None:
            raise OSError(code, "Operation not supported", src, None, dst)

        monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "pdfs" / "a.pdf"
    assert write_new(target, b"first") is True
    assert target.read_bytes() == b"first"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert write_new(target, b"second") is False
    assert target.read_bytes() == b"first"
    (tmp_path / "pdfs" / "b.pdf").symlink_to(tmp_path / "elsewhere")
    assert write_new(tmp_path / "pdfs" / "b.pdf", b"x") is False
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.pdf", "b.pdf"]


@pytest.mark.parametrize("link_errno", [errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT])
def test_write_new_raises_what_link_says_of_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link_errno: int
) -> None:
    """A link() error about the folder itself (not writable, read-only, full) is raised,
    not taken for a file system without hard links; nothing is left behind."""

    def no_link(src: object, dst: object, *_: object, **__: object) -> None:
        raise OSError(link_errno, os.strerror(link_errno), src, None, dst)

    monkeypatch.setattr(os, "link", no_link)
    with pytest.raises(OSError) as raised:
        write_new(tmp_path / "pdfs" / "a.pdf", b"x")
    assert raised.value.errno == link_errno
    assert list((tmp_path / "pdfs").iterdir()) == []


def test_free_name_gives_up_when_every_name_is_taken() -> None:
    """Review 23: a ``taken`` that says yes to every name (its folder unreadable) made
    free_name try -2, -3, … for ever; it stops after FREE_NAME_TRIES with one error."""
    asked: list[PurePosixPath] = []

    def taken(p: PurePosixPath) -> bool:
        asked.append(p)
        return True

    with pytest.raises(FileExistsError, match="numbered names are all taken"):
        free_name(PurePosixPath("pdfs/a.pdf"), taken)
    assert len(asked) == FREE_NAME_TRIES and asked[-1] == PurePosixPath(
        f"pdfs/a-{FREE_NAME_TRIES}.pdf"
    )
    assert free_name(PurePosixPath("pdfs/a.pdf"), lambda p: p.name != "a-3.pdf").name == "a-3.pdf"


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_write_new_without_hard_links_removes_its_claim_on_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """Review 23: without hard links, an error (or Ctrl-C) between the O_EXCL claim and the
    rename over it left the empty claim for good: a 0-byte 'PDF' no row names, and the
    next download wrote beside it under -2. Now the claim is removed, while it is still
    the file made here (a file put in its place since is left alone)."""

    def no_link(*_: object, **__: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    real_replace = os.replace
    target, swap = tmp_path / "pdfs" / "a.pdf", [False]

    def failing_replace(src: str, dst: str | Path) -> None:
        if Path(dst) == target:
            if swap[0]:  # another process's file in the claim's place meanwhile
                target.unlink()
                target.write_bytes(b"theirs")
            raise error
        real_replace(src, dst)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(type(error)):
        write_new(target, b"ours")
    assert list(target.parent.iterdir()) == []
    swap[0] = True
    with pytest.raises(type(error)):
        write_new(target, b"ours")
    assert [p.name for p in target.parent.iterdir()] == ["a.pdf"]
    assert target.read_bytes() == b"theirs"


def test_resolved_is_none_for_a_link_loop_and_the_real_path_otherwise(tmp_path) -> None:
    """One helper for 'resolve, or None' (filter's orphan clean-up, Manifest.image_file,
    merge, the review page's heatmaps each wrote it): a loop, or a name under one, is None
    where Path.resolve raised RuntimeError (Python < 3.13)."""
    from histocore.io import resolved

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert resolved(tmp_path / "loop") is None and resolved(tmp_path / "loop" / "x") is None
    (tmp_path / "real.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to("real.png")
    assert resolved(tmp_path / "link.png") == (tmp_path / "real.png").resolve()
    assert resolved(str(tmp_path / "missing")) == (tmp_path / "missing").resolve()


def test_link_loop_is_what_the_kernel_will_not_follow_as_its_docstring_says(tmp_path) -> None:
    """Its docstring said "a link that leads back to itself", but ELOOP is also a cycle, a
    link into a loop and a chain past the kernel's 40 links (no loop): pinned as it now
    says, with what it is not (a path under a loop, a dangling link, a folder)."""
    import os

    from histocore.io import link_loop, resolved

    def link(name: str, target: str) -> None:
        (tmp_path / name).symlink_to(target)

    link("self", "self")
    link("a", "b")
    link("b", "a")
    link("into", "a")
    link("through", "self/x")
    link("dangling", "nothing")
    (tmp_path / "folder").mkdir()
    for i in range(41):  # c0 -> c1 -> ... -> c41, a file: 41 links, no loop
        link(f"c{i}", f"c{i + 1}")
    (tmp_path / "c41").write_bytes(b"x")
    for name in ("self", "a", "into", "through", "c0"):
        assert link_loop(tmp_path / name), name
    for name in ("self/x", "dangling", "folder", "c40", "c41", "missing"):
        assert not link_loop(tmp_path / name), name
    assert resolved(tmp_path / "c0") == (tmp_path / "c41").resolve()  # followed: no loop
    assert not os.path.exists(tmp_path / "c0")  # the kernel gives up (ELOOP)


def test_shell_word_quotes_control_characters_as_escapes_bash_reads_back(tmp_path) -> None:
    """The CLIs' hints (``histofetch status --run …``) quoted the run folder with
    ``shlex.quote``, which leaves a newline or an escape in: the hint broke over two lines
    or recoloured the terminal. Such a name is ANSI-C quoted now, on one printable line,
    and bash reads each back as the name it was (a byte no UTF-8 as that byte)."""
    import itertools
    import shutil
    import subprocess

    from histocore.io import shell_word

    names = ["my run", "it's $HOME; a", "a\nb", "x\x1b[31mred", "t\tq'\\n", "zw\u200b", "\x7f",
             "bad\udcffbyte", "tag\U000e0001", "nel\x85", "my\xa0runs", "soft\xadhyphen",
             "rtl\u202eexe", "\xa0bad\udc80\udcc2", "\x9b31m"]  # fmt: skip
    for name in names:
        word = shell_word(name)
        assert word.isprintable() and "\n" not in word, word
        assert "\\u" not in word and "\\U" not in word, word  # bash reads those per locale
    assert shell_word("my run") == "'my run'" and shell_word("a\nb") == "$'a\\nb'"
    # a no-break space is the two bytes of its UTF-8, as on disk: \xa0 alone is another name
    assert shell_word("my\xa0runs") == "$'my\\xc2\\xa0runs'"
    if shutil.which("bash") is None:
        pytest.skip("no bash to read the words back")
    for name, locale in itertools.product(names, ("C.UTF-8", "C")):
        said = subprocess.run(
            ["bash", "-c", f"printf %s {shell_word(name)}"], capture_output=True, check=True,
            env={"LC_ALL": locale, "PATH": os.environ.get("PATH", "")},
        ).stdout  # fmt: skip
        assert said == name.encode("utf-8", "surrogateescape"), (name, locale, said)
