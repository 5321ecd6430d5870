"""Hostile tar headers: bounded before ``tarfile`` reads them, empty names refused."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from make_corpus import gnu_longname_tar, pax_header_tar

from histofetch.archive import ArchiveError, read_tar


def _refused_cheaply(data: bytes, match: str) -> None:
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(ArchiveError, match=match):
            read_tar(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"read_tar took {peak / 1e6:.0f} MB on a {len(data)} byte package"
    assert time.monotonic() - start < 5


def test_pax_header_payload_is_refused_before_it_is_read() -> None:
    data = pax_header_tar(payload=50_000_000)
    assert len(data) < 100_000
    _refused_cheaply(data, "pax header of 50000.* bytes")


def test_gnu_long_name_payload_is_refused_before_it_is_read() -> None:
    _refused_cheaply(gnu_longname_tar(name_len=50_000_000), "GNU long-name header")


def test_gnu_empty_member_name_is_refused() -> None:
    with pytest.raises(ArchiveError, match="empty name"):
        read_tar(gnu_longname_tar(name=b""))


def test_small_pax_and_long_names_still_work() -> None:
    files = read_tar(gnu_longname_tar(name=b"d/" + b"f" * 200 + b".png"))
    assert list(files) == ["d/" + "f" * 200 + ".png"]
    assert files["d/" + "f" * 200 + ".png"] == b"abc"
    assert read_tar(pax_header_tar(payload=100)) == {"fig1.png": b"abc"}
