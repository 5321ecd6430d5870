"""Sharding a search over independent jobs (``--shard K/N``) and merging their runs back.

A shard keeps the hits whose key (``pmid:<PMID>`` for PubMed, ``PMC<n>`` for PMC) hashes
to it: sha256 of the key, first 8 bytes, modulo N. The split depends on nothing but the
key, so every job computes it alone, shards never overlap, and together they hold every
hit. Each shard is an ordinary run folder (search → download → extract → filter), run as
its own job on any scheduler; ``histofetch merge`` then joins the folders into one run
(:mod:`histofetch.merge`). There is no distribution code here on purpose.
"""

from __future__ import annotations

import hashlib
import re

from histocore.errors import UsageError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` → ``(2, 8)``; K is 1-based. ValueError with the problem otherwise."""
    match = _SHARD.match(text or "")
    if not match:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 1/4")
    k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text!r}: K must be between 1 and N")
    return k, n


def shard_of(key: str, n: int) -> int:
    """The 1-based shard of ``key`` among ``n``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of(key, shard[1]) == shard[0]
