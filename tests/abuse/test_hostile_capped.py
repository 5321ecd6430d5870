"""Whole-file readers of untrusted JSON and CSV read under a cap: a FIFO, a link to
``/dev/zero`` or a file over the cap put where the file belongs is one error naming it
(a FIFO hung the reader, ``/dev/zero`` was read until a ``MemoryError``, a multi-GB file
was read whole). ``manifest.jsonl`` is streamed a line at a time under a cap per line.
The over-cap files are sparse: nothing is written to disk."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from make_corpus import manifest_lines

RECORD = {"kind": "record", "id": "r1", "stage": "filtered", "pdf_path": "a.pdf"}


def _hostile(path: Path, kind: str, cap: int) -> None:
    """Put a FIFO, a link to /dev/zero, a folder, a socket, or a sparse file one byte over
    ``cap`` at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":  # said 'error: 3: is a directory' (the descriptor), left it open
        path.mkdir()
    elif kind == "socket":  # an ENXIO OSError of the open
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        with path.open("wb") as fh:
            fh.truncate(cap + 1)


def _expect(kind: str, cap_text: str) -> str:
    if kind == "folder":
        return r"not a regular file \(a folder\)"
    return r"not a regular file \(a pipe" if kind != "big" else f"over {cap_text}"


KINDS = ["fifo", "zero", "big", "folder", "socket"]


def _run_in_thread(fn: Callable[[], object]) -> BaseException | None:
    """Call ``fn`` with a time limit (a FIFO hang fails the test rather than the suite)."""
    import threading

    caught: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # handed back to the test
            caught.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the reader hung"
    return caught[0] if caught else None


@pytest.mark.parametrize("kind", KINDS)
def test_tune_settings_and_trials(tmp_path: Path, kind: str) -> None:
    from histomodels.tune import (
        MAX_RECORDS_BYTES,
        MAX_SETTINGS_BYTES,
        SETTINGS_FILE,
        _saved_records,
        _saved_settings,
    )
    from histomodels.tune_space import TuneError

    _hostile(tmp_path / SETTINGS_FILE, kind, MAX_SETTINGS_BYTES)
    exc = _run_in_thread(lambda: _saved_settings(tmp_path))
    assert isinstance(exc, TuneError)
    assert str(exc).startswith(f"{tmp_path / SETTINGS_FILE}: ")
    assert re.search(_expect(kind, "4 MB"), str(exc)), str(exc)
    trials = tmp_path / "trials.json"
    _hostile(trials, kind, MAX_RECORDS_BYTES)
    exc = _run_in_thread(lambda: _saved_records(trials))
    assert isinstance(exc, TuneError) and str(exc).startswith(f"{trials}: ")
    assert re.search(_expect(kind, "64 MB"), str(exc)), str(exc)


@pytest.mark.parametrize("kind", KINDS)
def test_tune_ax_experiment(tmp_path: Path, kind: str) -> None:
    """Ax's ``load_from_json_file`` read ``ax_experiment.json`` whole (uncapped): a hang on a
    FIFO, a ``MemoryError`` on ``/dev/zero``, a 10 GB file read into memory."""
    from histomodels.tune import EXPERIMENT_FILE, MAX_EXPERIMENT_BYTES, _load_experiment
    from histomodels.tune_space import TuneError

    path = tmp_path / EXPERIMENT_FILE
    _hostile(path, kind, MAX_EXPERIMENT_BYTES)
    exc = _run_in_thread(lambda: _load_experiment(path))
    assert isinstance(exc, TuneError) and str(exc).startswith(f"{path}: "), exc
    assert re.search(_expect(kind, "256 MB"), str(exc)), str(exc)


@pytest.mark.parametrize("kind", KINDS)
def test_kaggle_labels_csv(tmp_path: Path, kind: str) -> None:
    from histomodels.data.base import DatasetError
    from histomodels.data.kaggle import LABELS_CSV, MAX_LABELS_BYTES, KaggleDataset
    from histomodels.data.readers import open_dataset

    (tmp_path / "train").mkdir()
    _hostile(tmp_path / LABELS_CSV, kind, MAX_LABELS_BYTES)
    # the folder as --data: a FIFO there was not a file, so 'no dataset recognised'
    for read in (lambda: KaggleDataset(tmp_path), lambda: open_dataset(tmp_path)):
        exc = _run_in_thread(read)
        assert isinstance(exc, DatasetError), exc
        assert str(exc).startswith(f"{tmp_path / LABELS_CSV}: "), str(exc)
        assert re.search(_expect(kind, "64 MB"), str(exc)), str(exc)


@pytest.mark.parametrize("kind", KINDS)
def test_checksums_file(tmp_path: Path, kind: str) -> None:
    from histomodels.data.download import MAX_CHECKSUMS_BYTES, DownloadError, read_checksums

    sums = tmp_path / "md5sums.txt"
    _hostile(sums, kind, MAX_CHECKSUMS_BYTES)
    exc = _run_in_thread(lambda: read_checksums(sums))
    assert isinstance(exc, DownloadError), exc
    assert str(exc).startswith(f"{sums}: ") and re.search(_expect(kind, "1 MB"), str(exc))


@pytest.mark.parametrize("kind", ["fifo", "zero", "folder", "socket"])
def test_manifest_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    """A folder at ``manifest.jsonl`` said ``3: is a directory`` (the descriptor), a socket
    ``No such device or address``; all are one line naming the file now."""
    from histocore.manifest import Manifest, ManifestError

    path = tmp_path / "manifest.jsonl"
    _hostile(path, kind, 0)
    exc = _run_in_thread(lambda: Manifest.load(tmp_path))
    assert isinstance(exc, ManifestError), exc
    assert str(exc) == f"{path}: not a regular file"


def test_a_refused_file_leaves_no_descriptor_open(tmp_path: Path) -> None:
    from histocore.io import RefusedFile, open_regular

    (tmp_path / "d").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(RefusedFile, match=r"^not a regular file \(a folder\)$"):
            open_regular(tmp_path / "d")
    assert len(os.listdir("/proc/self/fd")) == before


def test_manifest_line_over_the_cap_is_one_error(tmp_path: Path) -> None:
    """A 16 MB + 1 line of NUL bytes (``/dev/zero`` copied in, a damaged disk) was read
    whole, then named as bad JSON; now it is refused as it is read, a line at a time."""
    from histocore.jsonl import MAX_LINE_BYTES
    from histocore.manifest import Manifest, ManifestError

    path = tmp_path / "manifest.jsonl"
    path.write_text(manifest_lines([RECORD]))
    with path.open("ab") as fh:
        fh.truncate(path.stat().st_size + MAX_LINE_BYTES + 1)
    with pytest.raises(ManifestError) as err:
        Manifest.load(tmp_path)
    assert str(err.value) == f"{path}:3: line over 16 MB, not a manifest row"


def test_manifest_still_reads_crlf_bom_and_a_last_line_without_newline(tmp_path: Path) -> None:
    from histocore.manifest import Manifest

    text = manifest_lines([RECORD, {**RECORD, "id": "r2"}])
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.rstrip("\n").replace("\n", "\r\n").encode())
    assert sorted(Manifest.load(tmp_path).records) == ["r1", "r2"]


def test_cli_checksums_folder_says_one_line(tmp_path: Path) -> None:
    """``data download --checksums FOLDER`` said ``error: 3: is a directory``."""
    sums = tmp_path / "sums.md5"
    sums.mkdir()
    args = ["data", "download", "pcam", "--dest", str(tmp_path / "d"), "--checksums", str(sums)]
    proc = subprocess.run(
        [sys.executable, "-m", "histomodels", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {sums}: not a regular file (a folder), not a checksums file"
    ]


def test_cli_says_one_line(tmp_path: Path) -> None:
    """``histomodels data info`` on a Kaggle folder whose CSV is over its cap."""
    (tmp_path / "train").mkdir()
    _hostile(tmp_path / "train_labels.csv", "big", 64 << 20)
    proc = subprocess.run(
        [sys.executable, "-m", "histomodels", "data", "info", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'train_labels.csv'}: over 64 MB, not a labels CSV"
    ]
