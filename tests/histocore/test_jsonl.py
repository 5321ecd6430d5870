"""``manifest.jsonl`` fingerprints: how a load tells a hand edit from the store's own export."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from histocore.jsonl import file_fingerprint, fingerprint_matches


def _recorded(path: Path) -> str:
    fingerprint = file_fingerprint(path)
    assert fingerprint is not None
    return json.dumps(fingerprint)


def test_absent_file_matches_and_has_no_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    assert file_fingerprint(path) is None
    assert fingerprint_matches(path, None) and fingerprint_matches(path, '{"size": 1}')


def test_a_file_the_store_never_wrote_does_not_match(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"kind": "header"}\n')
    assert not fingerprint_matches(path, None)


def test_touched_but_same_bytes_matches_edited_does_not(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"kind": "header", "query": "a"}\n')
    recorded = _recorded(path)
    assert fingerprint_matches(path, recorded)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch, cp -p...
    assert fingerprint_matches(path, recorded)  # same bytes: not an edit
    path.write_text('{"kind": "header", "query": "b"}\n')  # same size, other bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))  # clock ticks coarse
    assert path.stat().st_size == json.loads(recorded)["size"]
    assert not fingerprint_matches(path, recorded)
    path.write_text('{"kind": "header", "query": "longer"}\n')
    assert not fingerprint_matches(path, recorded)


def _lines(prefix: str, n: int) -> str:
    header = {"kind": "header", "schema": "histofetch.manifest", "version": 1, "query": "q"}
    rows = [{"kind": "record", "id": f"{prefix}{i}", "stage": "searched"} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in [header, *rows])


def _rewrite_in_place_while_read(
    monkeypatch: pytest.MonkeyPatch, path: Path, new: str, times: int
) -> list[int]:
    """Rewrite ``path`` in place (same inode) when its 2nd row is parsed, ``times`` times:
    the write lands between the first and the last byte read."""
    loads, done = json.loads, [0]

    def loads_and_rewrite(text: str | bytes, *args: Any, **kw: Any) -> Any:
        if done[0] < times and isinstance(text, str) and '"id": "a1"' in text:
            done[0] += 1
            with path.open("r+b") as fh:
                fh.write(new.encode())
                fh.truncate()
        return loads(text, *args, **kw)

    monkeypatch.setattr(json, "loads", loads_and_rewrite)
    return done


def test_a_manifest_rewritten_while_imported_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-place rewrite during the import was stored torn (rows of both), under a
    fingerprint taken by path afterwards (the new file's): never imported again."""
    from histocore.manifest import Manifest

    run = tmp_path / "run"
    Manifest.load(run, create=True).save()  # a store, and its export
    path = run / "manifest.jsonl"
    path.write_text(_lines("a", 50))  # edited outside the store: imported at the next load
    new = _lines("b", 40)
    done = _rewrite_in_place_while_read(monkeypatch, path, new, times=1)
    m = Manifest.load(run)
    assert done == [1] and sorted(m.records) == sorted(f"b{i}" for i in range(40))
    m.close()
    monkeypatch.undo()
    m = Manifest.load(run)  # the store's fingerprint is the file's: nothing to import
    assert sorted(m.records) == sorted(f"b{i}" for i in range(40))
    m.close()


def test_a_manifest_that_keeps_changing_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histocore.manifest import Manifest, ManifestError

    run = tmp_path / "run"
    run.mkdir()
    path = run / "manifest.jsonl"
    path.write_text(_lines("a", 50))
    _rewrite_in_place_while_read(monkeypatch, path, _lines("a", 60), times=99)
    with pytest.raises(ManifestError, match=r"manifest\.jsonl: changed while it was read \(3 "):
        Manifest.load(run)


def test_a_manifest_rewritten_with_other_line_lengths_is_read_again_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of other lengths put the reader mid-line after the rewrite: the torn line's
    parse error was reported (``manifest.jsonl:N: not valid JSON``) although the file, read
    again, parses."""
    from histocore.manifest import Manifest

    run = tmp_path / "run"
    run.mkdir()
    path = run / "manifest.jsonl"
    path.write_text(_lines("a", 500))  # past the reader's buffer: the rewrite is seen
    new = _lines("longer-id-b", 450)
    done = _rewrite_in_place_while_read(monkeypatch, path, new, times=1)
    m = Manifest.load(run)
    assert done == [1] and sorted(m.records) == sorted(f"longer-id-b{i}" for i in range(450))
    m.close()


def test_a_manifest_truncated_while_read_is_read_again_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cat new > manifest.jsonl`` truncates first: a read under it met a cut line (or no
    line at all) and reported that as the file's error."""
    from histocore.manifest import Manifest

    run = tmp_path / "run"
    run.mkdir()
    path = run / "manifest.jsonl"
    path.write_text(_lines("a", 500))
    loads, step = json.loads, [0]

    def loads_truncating_then_writing(text: str | bytes, *args: Any, **kw: Any) -> Any:
        if step[0] == 0 and isinstance(text, str) and '"id": "a1"' in text:
            step[0] = 1
            with path.open("r+b") as fh:
                fh.truncate()  # the writer has truncated, not written yet
        elif step[0] == 1:  # the next line parsed: the writer is done
            step[0] = 2
            path.write_text(_lines("b", 40))
        return loads(text, *args, **kw)

    monkeypatch.setattr(json, "loads", loads_truncating_then_writing)
    m = Manifest.load(run)
    assert step == [2] and sorted(m.records) == sorted(f"b{i}" for i in range(40))
    m.close()


def test_a_stable_manifest_keeps_its_parse_error(tmp_path: Path) -> None:
    from histocore.manifest import Manifest, ManifestError

    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.jsonl").write_text(_lines("a", 3) + "{not json\n")
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:5: not valid JSON"):
        Manifest.load(run)
    (run / "manifest.jsonl").write_text("")
    with pytest.raises(ManifestError, match=r"manifest\.jsonl: empty file, expected a header"):
        Manifest.load(run)


def test_the_fingerprint_of_a_read_is_the_fingerprint_of_the_file(tmp_path: Path) -> None:
    """A run's recorded fingerprints stay valid: the one taken as the file is read is the
    one taken by path for a file left alone."""
    from histocore.jsonl import read_jsonl_whole
    from histocore.manifest import Manifest

    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _lines("a", 5).replace("\n", "\r\n").encode())
    parsed, fingerprint = read_jsonl_whole(path, lambda: Manifest(run_dir=tmp_path))
    assert fingerprint == file_fingerprint(path) and len(parsed.records) == 5


def test_a_manifest_of_a_byte_order_mark_only_is_an_empty_file(tmp_path: Path) -> None:
    """Streamed a line at a time, it said 'not valid JSON'; read whole it said, and says
    again, that the file is empty."""
    from histocore.manifest import Manifest, ManifestError

    path = tmp_path / "manifest.jsonl"
    for content in (b"", b"\xef\xbb\xbf"):
        path.write_bytes(content)
        with pytest.raises(ManifestError, match=r"manifest\.jsonl: empty file, expected a header"):
            Manifest.load(tmp_path)
