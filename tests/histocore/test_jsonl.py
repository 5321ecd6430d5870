"""``manifest.jsonl`` fingerprints: how a load tells a hand edit from the store's own export."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
