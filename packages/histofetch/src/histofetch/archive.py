"""Safe reading of untrusted PMC open-access packages (``.tar.gz``) and their figures.

Nothing from an archive is ever written to disk under a name the archive chose: members
are validated (no absolute paths, no ``..``, no empty names, no links or devices, size and
count limits, pax/GNU long-name headers over 64 KB refused before they are read)
and read into memory; the caller decides where the results go. Any hostile member makes
the whole package unusable (:class:`ArchiveError`) — a package that tries path traversal
is not trusted for its other files either. Figures are decoded with an explicit pixel
limit so a decompression bomb fails before it is expanded.
"""

from __future__ import annotations

import io
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import PurePosixPath

from PIL import Image as PILImage

from histocore.errors import DomainError
from histocore.imaging import ImageError, ImageTooLarge, read_rgb

#: Extensions of figure files in PMC packages, best first (``.gif`` are thumbnails).
FIGURE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif")


class ArchiveError(DomainError, ValueError):
    """An archive that is unreadable or breaks a safety rule; the message says which."""


#: Largest pax / GNU long-name header payload read (real ones hold a path: a few hundred bytes).
MAX_HEADER_PAYLOAD = 64 * 1024


class _BoundedTarInfo(tarfile.TarInfo):
    """``TarInfo`` that refuses pax and GNU long-name/long-link payloads over a small limit.

    ``tarfile`` reads such a payload whole, before any member check could run, so a 1.5 MB
    package could make it read 1.5 GB. These hooks run first (``tarfile.open(tarinfo=...)``).
    """

    def _check_payload(self) -> None:
        if self.size > MAX_HEADER_PAYLOAD:
            kind = "pax" if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE) else "GNU long-name"
            raise ArchiveError(
                f"{kind} header of {self.size} bytes (over the {MAX_HEADER_PAYLOAD}-byte limit)"
            )

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        self._check_payload()
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        self._check_payload()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 2000
    max_member_bytes: int = 200 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    #: Largest figure decoded, in pixels (a 20k × 20k scan is 400 MP).
    max_image_pixels: int = 400_000_000


def _check_member(member: tarfile.TarInfo, limits: ArchiveLimits) -> None:
    name = member.name
    path = PurePosixPath(name)
    if not name.strip() or "\0" in name:
        raise ArchiveError(f"unsafe member {name!r}: empty name")
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"unsafe member {name!r}: absolute path")
    if ".." in path.parts or ".." in name.replace("\\", "/").split("/"):
        raise ArchiveError(f"unsafe member {name!r}: '..' in path")
    if member.issym() or member.islnk():
        raise ArchiveError(f"unsafe member {name!r}: link to {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"unsafe member {name!r}: device, fifo or other special file")
    if member.size > limits.max_member_bytes:
        raise ArchiveError(
            f"member {name!r} too large ({member.size} bytes > {limits.max_member_bytes})"
        )


def read_tar(data: bytes, limits: ArchiveLimits | None = None) -> dict[str, bytes]:
    """Regular files of a (gzipped) tar as ``{member name: bytes}``, after validation.

    Raises :class:`ArchiveError` for a corrupt archive or any unsafe member.
    """
    limits = limits or ArchiveLimits()
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*", tarinfo=_BoundedTarInfo) as tar:
            members = []
            for member in tar:  # iterate lazily so a huge member list stops early
                if len(members) >= limits.max_members:
                    raise ArchiveError(f"too many members (> {limits.max_members})")
                _check_member(member, limits)
                total += member.size
                if total > limits.max_total_bytes:
                    raise ArchiveError(f"unpacked size over {limits.max_total_bytes} bytes")
                members.append(member)
            for member in members:
                if not member.isfile():
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                body = fh.read(limits.max_member_bytes + 1)
                if len(body) != member.size:
                    raise ArchiveError(f"member {member.name!r} is truncated")
                files[member.name] = body
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"not a readable tar.gz ({type(exc).__name__}: {exc})") from None
    return files


def decode_image(data: bytes, name: str, max_pixels: int) -> PILImage.Image:
    """Decode one figure to RGB (transparency onto white), refusing images over
    ``max_pixels`` from their header, before anything is expanded."""
    try:
        rgb = read_rgb(data, max_pixels=max_pixels, what=f"figure {name!r}")
    except ImageTooLarge as exc:
        whose = "" if exc.limit == max_pixels else " (Pillow's PIL.Image.MAX_IMAGE_PIXELS × 2)"
        raise ArchiveError(
            f"figure {name!r} is {exc.declared} px, over the {exc.limit} px limit{whose}"
        ) from None
    except ImageError as exc:
        raise ArchiveError(f"figure {name!r} cannot be decoded ({exc.reason})") from None
    return PILImage.fromarray(rgb)


def pick_figures(names: list[str]) -> list[str]:
    """Figure files of a package, one per stem (prefer full-size formats over .gif)."""
    best: dict[str, str] = {}
    for name in names:
        path = PurePosixPath(name)
        ext = path.suffix.lower()
        if ext not in FIGURE_EXTS:
            continue
        key = str(path.with_suffix(""))
        current = best.get(key)
        if current is None or FIGURE_EXTS.index(ext) < FIGURE_EXTS.index(
            PurePosixPath(current).suffix.lower()
        ):
            best[key] = name
    return sorted(best.values())


def figure_captions(files: dict[str, bytes]) -> dict[str, str]:
    """Figure file stem → caption, read from the package's JATS ``.nxml`` when present."""
    captions: dict[str, str] = {}
    xlink = "{http://www.w3.org/1999/xlink}href"
    for name, body in files.items():
        if not name.lower().endswith((".nxml", ".xml")):
            continue
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            continue
        for fig in root.iter("fig"):
            label_el = fig.find("label")
            label = " ".join("".join(label_el.itertext()).split()) if label_el is not None else ""
            cap_el = fig.find("caption")
            cap = " ".join("".join(cap_el.itertext()).split()) if cap_el is not None else ""
            text = " ".join(t for t in (label, cap) if t)
            for graphic in fig.iter("graphic"):
                href = graphic.get(xlink)
                if href and text:
                    captions[PurePosixPath(href).stem] = text[:2000]
    return captions


def pdfs_in(files: dict[str, bytes]) -> list[str]:
    """PDF members, main article first (supplements usually carry 'sup'/'media' names)."""
    pdfs = [n for n in files if n.lower().endswith(".pdf")]
    return sorted(pdfs, key=lambda n: (any(s in n.lower() for s in ("sup", "media")), len(n), n))
