"""Download the real PatchCamelyon files from their public Zenodo record (10.5281/zenodo.2546921).

Resumable (an ``X.part`` file grows with HTTP ``Range`` requests, across dropped connections
and separate runs), verified (MD5 per file; a mismatch removes the bad file and fails
loudly), reporting progress (:mod:`histocore.progress`), and optionally gunzipped. The
URL template can be pointed at a mirror with ``--url-template`` or ``HISTOMODELS_PCAM_URL``
(``{name}`` is replaced by the file name); tests use a server on 127.0.0.1.

Checksums are those of the ``.h5.gz`` files *as named on Zenodo and Google Drive* (the
same values torchvision uses). The table in the PCam GitHub README lists the valid and test
checksums the other way round; a mismatch is reported, never silently accepted.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from histocore.io import RefusedFile, made_folder, make_parents, read_capped
from histocore.progress import Task, task
from histomodels.choices import PCAM_SPLITS
from histomodels.data.base import DatasetError
from histomodels.data.pcam import gunzip_once

RECORD = "https://zenodo.org/records/2546921"
DEFAULT_URL = RECORD + "/files/{name}?download=1"
URL_ENV = "HISTOMODELS_PCAM_URL"

#: File name → MD5 of the file as served.
PCAM_FILES: dict[str, str] = {
    "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    "camelyonpatch_level_2_split_valid_x.h5.gz": "d5b63470df7cfa627aeec8b9dc0c066e",
    "camelyonpatch_level_2_split_valid_y.h5.gz": "2b85f58b927af9964a4c15b8f7e8f179",
    "camelyonpatch_level_2_split_test_x.h5.gz": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "camelyonpatch_level_2_split_test_y.h5.gz": "60a7035772fbdb7f34eb86d4420cf66a",
    "camelyonpatch_level_2_split_train_meta.csv": "5a3dd671e465cfd74b5b822125e65b0a",
    "camelyonpatch_level_2_split_valid_meta.csv": "67589e00a4a37ec317f2d1932c7502ca",
    "camelyonpatch_level_2_split_test_meta.csv": "3455fd69135b66734e1008f3af684566",
}
SPLITS = PCAM_SPLITS


class DownloadError(DatasetError):
    """A download that could not be completed or verified."""


@dataclass
class FileResult:
    path: Path
    status: str  # "downloaded", "resumed", "present"
    bytes_fetched: int


def md5_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: The largest checksums file read (PCam's has 9 lines, under 1 KB): a multi-GB file, a FIFO
#: or ``/dev/zero`` given as ``--checksums`` is one line, not a hang or a ``MemoryError``.
MAX_CHECKSUMS_BYTES = 1 << 20


def read_checksums(path: Path) -> dict[str, str]:
    """File name → MD5 from ``md5sum``-format lines (``<md5>  <file name>``)."""
    sums = {}
    try:  # a BOM is allowed
        text = read_capped(path, MAX_CHECKSUMS_BYTES).decode("utf-8-sig")
    except RefusedFile as exc:
        raise DownloadError(f"{path}: {exc}, not a checksums file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DownloadError(f"{path}: cannot read checksums ({exc})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 32:
            raise DownloadError(f"{path}:{lineno}: expected '<md5>  <file name>', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def pcam_names(splits: tuple[str, ...] | list[str] = SPLITS, meta: bool = True) -> list[str]:
    for s in splits:
        if s not in SPLITS:
            raise DownloadError(f"unknown PCam split {s!r} (use {', '.join(SPLITS)})")
    kinds = ("x.h5.gz", "y.h5.gz") + (("meta.csv",) if meta else ())
    return [f"camelyonpatch_level_2_split_{s}_{k}" for s in splits for k in kinds]


def download_file(
    url: str,
    dest: Path,
    md5: str | None,
    *,
    client: httpx.Client | None = None,
    retries: int = 5,
    progress: Task | None = None,
    backoff: float = 1.0,
) -> FileResult:
    """Fetch ``url`` to ``dest`` via ``dest.part`` with resume, retries and MD5 check."""
    if dest.exists():
        if md5 is None or md5_of(dest) == md5:
            return FileResult(dest, "present", 0)
        raise DownloadError(f"{dest}: exists but its MD5 is not {md5}; delete it to download again")
    part = dest.with_name(dest.name + ".part")
    make_parents(dest)  # a file in the way: a: is a file, not a folder
    own = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60, connect=20))
    fetched, resumed, attempt = 0, part.exists() and part.stat().st_size > 0, 0
    progress = progress or Task()
    try:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                with client.stream("GET", url, headers=headers) as resp:
                    if resp.status_code == 416 and offset:  # nothing left: part is complete
                        break
                    if resp.status_code not in (200, 206):
                        raise DownloadError(f"{url}: HTTP {resp.status_code}")
                    if resp.status_code == 200 and offset:
                        offset = 0  # server ignored Range: start over
                    length = resp.headers.get("Content-Length")
                    total = offset + int(length) if length is not None else None
                    progress.update(total=total, completed=offset)
                    with part.open("r+b" if offset else "wb") as fh:
                        fh.seek(offset)
                        fh.truncate()
                        for chunk in resp.iter_bytes(1 << 20):
                            fh.write(chunk)
                            fetched += len(chunk)
                            progress.advance(len(chunk))
                    if total is not None and part.stat().st_size < total:
                        raise httpx.ReadError("connection closed before the end of the file")
                break
            except (httpx.TransportError, httpx.StreamError) as exc:
                attempt += 1
                if attempt > retries:
                    if part.exists() and part.stat().st_size > 0:
                        again = f"run again to resume from {part}"
                    else:  # no byte came: no .part to resume from
                        part.unlink(missing_ok=True)
                        again = "nothing was received; run again to retry"
                    raise DownloadError(
                        f"{url}: failed after {retries} retries ({exc}); {again}"
                    ) from None
                resumed = True
                time.sleep(backoff * attempt)
        if md5 is not None:
            got = md5_of(part)
            if got != md5:
                part.unlink()
                raise DownloadError(
                    f"{dest.name}: checksum mismatch (MD5 {got}, expected {md5}); "
                    "the bad download was deleted"
                )
        part.replace(dest)
    finally:
        if own:
            client.close()
    return FileResult(dest, "resumed" if resumed else "downloaded", fetched)


def check_url_template(template: str) -> str:
    """``template`` if ``{name}`` is its one placeholder (``str.format`` fills it with each
    file name), else a :class:`DownloadError`."""
    import string

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:  # a lone "{" or "}"
        raise DownloadError(f"URL template {template!r}: {exc}") from None
    if fields != {"name"}:
        other = ", ".join(sorted(f"{{{f}}}" for f in fields - {"name"}))
        why = f"has {other}; only {{name}} is filled in" if other else "has no {name} placeholder"
        raise DownloadError(f"URL template {template!r} {why}")
    return template


def download_pcam(
    dest: Path,
    splits: tuple[str, ...] | list[str] = SPLITS,
    *,
    url_template: str | None = None,
    meta: bool = True,
    gunzip: bool = False,
    checksums: dict[str, str] | None = None,
    retries: int = 5,
) -> list[FileResult]:
    """Download (and verify, optionally gunzip) the PCam files for ``splits`` into ``dest``."""
    template = check_url_template(url_template or os.environ.get(URL_ENV) or DEFAULT_URL)
    sums = PCAM_FILES if checksums is None else checksums
    results = []
    client = httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60, connect=20))
    # a run that fails before any file is kept leaves no empty --dest behind
    with client, made_folder(dest):
        for name in pcam_names(splits, meta):
            with task(name, unit="bytes") as shown:
                res = download_file(
                    template.format(name=name),
                    dest / name,
                    sums.get(name),
                    client=client,
                    retries=retries,
                    progress=shown,
                )
            results.append(res)
            if gunzip and name.endswith(".gz"):
                gunzip_once(res.path)
    return results
