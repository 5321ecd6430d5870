"""Route ``europepmc``: Europe PMC's full text (JATS) and inline images, for articles
the PMC Cloud Service does not have.

``GET {rest}/{PMCID}/fullTextXML`` gives the JATS (captions, licence);
``GET {rest}/{PMCID}/supplementaryFiles?includeInlineImage=true`` gives one ZIP with the
supplementary files and the figure images. The ZIP is untrusted: it is read in memory
under the same limits and name checks as every archive (:class:`ArchiveLimits`), and
one bad member refuses the whole ZIP. Europe PMC publishes no checksum for it, so every
member's CRC-32 is verified instead (a damaged or truncated ZIP is a ``bad package`` miss).
"""

from __future__ import annotations

import io
import lzma
import stat
import zipfile
import zlib
from pathlib import PurePosixPath

from histofetch.archive import ArchiveError, ArchiveLimits
from histofetch.http import NetClient, NetError
from histofetch.jats import FIGURE_EXTS, JatsError, match_href, read_article
from histofetch.sources import ArticleFiles, FigureFile, Miss, Policy

ROUTE = "europepmc"


def _check_name(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if not name.strip() or "\0" in name:
        raise ArchiveError(f"unsafe member {name!r}: empty name")
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"unsafe member {name!r}: absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"unsafe member {name!r}: '..' in path")


def read_zip(data: bytes, limits: ArchiveLimits | None = None) -> dict[str, bytes]:
    """Regular files of a ZIP as ``{name: bytes}``, after validating every member.

    Europe PMC gives no checksum for the ZIP, so its own integrity is the check: every
    member is read whole, which verifies its CRC-32, before anything is returned, and a
    truncated file, a corrupt compressed stream, a CRC mismatch or a compression method
    Python cannot read refuses the whole ZIP (:class:`ArchiveError`), as unsafe names,
    links, encryption and sizes over ``limits`` do.
    """
    limits = limits or ArchiveLimits()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            _check_members(infos, limits)
            files: dict[str, bytes] = {}
            for info in infos:
                if not info.is_dir():
                    files[info.filename] = _read_member(zf, info)
            return files
    except zipfile.BadZipFile as exc:
        if "CRC" in str(exc):
            raise ArchiveError(f"not a readable ZIP: corrupt, {exc}") from None
        if data[:4] == b"PK\x03\x04" and b"PK\x05\x06" not in data[-65_557:]:
            raise ArchiveError("not a readable ZIP: truncated (no end-of-archive record)") from None
        raise ArchiveError(f"not a readable ZIP (BadZipFile: {exc})") from None
    except (zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"not a readable ZIP ({type(exc).__name__}: {exc})") from None


def _check_members(infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    """Names, kinds and declared sizes of every member, before any is read."""
    if len(infos) > limits.max_members:
        raise ArchiveError(f"too many members ({len(infos)} > {limits.max_members})")
    total = 0
    for info in infos:
        _check_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ArchiveError(f"unsafe member {info.filename!r}: symbolic link")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"member {info.filename!r} is encrypted")
        if info.file_size > limits.max_member_bytes:
            raise ArchiveError(
                f"member {info.filename!r} too large "
                f"({info.file_size} bytes > {limits.max_member_bytes})"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveError(f"unpacked size over {limits.max_total_bytes} bytes")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One member's bytes, read to its end so that zipfile checks its CRC-32; no more than
    its declared size is decompressed (lying headers)."""
    try:
        with zf.open(info) as fh:
            body = fh.read(info.file_size + 1)
    except NotImplementedError:  # Deflate64, PPMd, AES...: zipfile's only word for them
        raise ArchiveError(
            f"member {info.filename!r}: compression method {info.compress_type} not supported"
        ) from None
    except (zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(
            f"not a readable ZIP: member {info.filename!r} holds corrupt data ({exc})"
        ) from None
    if len(body) != info.file_size:
        raise ArchiveError(f"member {info.filename!r} does not match its size")
    return body


class EuropePmc:
    """The route: fullTextXML → licence/policy → supplementaryFiles ZIP → figure files."""

    name = ROUTE

    def __init__(self, client: NetClient, policy: Policy, limits: ArchiveLimits) -> None:
        self.client = client
        self.policy = policy
        self.limits = limits

    def __call__(self, pmcid: str) -> ArticleFiles:
        base = self.client.config.europepmc_url.rstrip("/") + f"/{pmcid}"
        try:
            xml, _ = self.client.get_bytes(base + "/fullTextXML")
        except NetError as exc:
            if exc.status in (403, 404, 410):
                raise Miss("no full text", f"Europe PMC has no full text for {pmcid}") from None
            if exc.too_large:  # as large next time
                raise Miss("bad file", f"fullTextXML of {pmcid}: {exc}") from None
            raise Miss("network", str(exc)) from None
        try:
            article = read_article(xml)
        except JatsError as exc:
            raise Miss("bad file", f"fullTextXML of {pmcid}: {exc}") from None
        files = ArticleFiles(route=ROUTE, licence=article.licence, open_access=True)
        self.policy.check(files)
        wanted = [(fig, href) for fig in article.figures for href in fig.hrefs]
        if not wanted:
            return files
        try:
            body, _ = self.client.get_bytes(
                base + "/supplementaryFiles", params={"includeInlineImage": "true"}
            )
        except NetError as exc:
            if exc.status in (403, 404, 410):
                raise Miss("no figure files", f"Europe PMC has no images for {pmcid}") from None
            if exc.too_large:
                raise Miss("bad package", f"supplementaryFiles of {pmcid}: {exc}") from None
            raise Miss("network", str(exc)) from None
        try:
            members = read_zip(body, self.limits)
        except ArchiveError as exc:
            raise Miss("bad package", f"supplementaryFiles of {pmcid}: {exc}") from None
        images = [n for n in members if PurePosixPath(n).suffix.lower() in FIGURE_EXTS]
        for fig, href in wanted:
            name = match_href(href, images)
            if name is None:
                files.failures.append(f"{fig.label or fig.id}: no file for href {href!r}")
                continue
            files.figures.append(FigureFile(fig, href, name, members[name]))
        return files
