"""Figures, captions and licence from an article's JATS XML (untrusted input).

JATS binds each figure to its label, caption and image files (``<fig>`` → ``<label>``,
``<caption>``, ``<graphic xlink:href>``), which PDF extraction can only guess. The XML
comes from the network, so it is parsed with :mod:`defusedxml` (no entity expansion, no
external entities or DTDs fetched) after a size check. HTML named entities that
publishers use without declaring them (PLOS writes ``&rsqb;``) are turned into numeric
references first, so such files parse instead of failing.
"""

from __future__ import annotations

import html.entities
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from histocore.errors import DomainError
from histofetch.licence import normalise

#: Largest JATS file parsed (the biggest real articles are a few MB).
MAX_JATS_BYTES = 32 * 1024 * 1024
#: Longest caption kept (characters).
MAX_CAPTION_CHARS = 4000
#: Figure file extensions in the order they are preferred for an href without one.
FIGURE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif")
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
_XML_ENTITIES = frozenset({"amp", "lt", "gt", "quot", "apos"})
_NAMED_ENTITY = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")


class JatsError(DomainError, ValueError):
    """XML that is too large, malformed or hostile; the message says which."""


@dataclass
class Figure:
    """One ``<fig>``: its id, label, caption and the hrefs of its image files."""

    id: str | None
    label: str | None
    caption: str | None
    hrefs: list[str] = field(default_factory=list)


@dataclass
class Article:
    """What histofetch takes from a JATS file."""

    figures: list[Figure]
    licence: str | None
    title: str | None


def _numeric_entities(data: bytes) -> bytes:
    def repl(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode("ascii")
        if name in _XML_ENTITIES:
            return match.group(0)
        text = html.entities.html5.get(name + ";")
        if text is None:
            return match.group(0)
        return "".join(f"&#x{ord(c):x};" for c in text).encode("ascii")

    return _NAMED_ENTITY.sub(repl, data)


def parse_xml(data: bytes, *, max_bytes: int = MAX_JATS_BYTES) -> ET.Element:
    """The root element of untrusted XML, or :class:`JatsError`."""
    if len(data) > max_bytes:
        raise JatsError(f"XML too large ({len(data)} bytes > {max_bytes})")
    try:
        return SafeET.fromstring(_numeric_entities(data))
    except DefusedXmlException as exc:
        raise JatsError(f"XML refused ({type(exc).__name__}: entity or DTD declarations)") from None
    except ET.ParseError as exc:
        raise JatsError(f"not well-formed XML ({exc})") from None
    except LookupError as exc:  # <?xml encoding="U-TF-8"?>: expat asks codecs, which refuses
        raise JatsError(f"XML in an unknown encoding ({exc})") from None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _text(el: ET.Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _figure(fig: ET.Element) -> Figure:
    label = _text(_child(fig, "label")) or None
    caption_el = _child(fig, "caption")
    # Title and paragraphs are blocks: join them with a space, not glued together.
    blocks = [_text(c) for c in caption_el] if caption_el is not None else []
    text = " ".join(b for b in blocks if b) or _text(caption_el)
    caption = text[:MAX_CAPTION_CHARS] or None
    hrefs = []
    for el in fig.iter():
        if _local(el.tag) == "graphic":
            href = (el.get(XLINK_HREF) or "").strip()
            if href and href not in hrefs:
                hrefs.append(href)
    return Figure(id=fig.get("id"), label=label, caption=caption, hrefs=hrefs)


def article_licence(root: ET.Element) -> str | None:
    """The article's licence code from ``<permissions><license>`` (URL, type or words)."""
    for el in root.iter():
        if _local(el.tag) != "license":
            continue
        candidates = [el.get(XLINK_HREF), el.get("license-type")]
        candidates += [_text(c) for c in el.iter() if _local(c.tag) == "license_ref"]
        candidates.append(_text(el))
        for value in candidates:
            code = normalise(value)
            if code and (code.startswith("CC") or code in ("public domain", "TDM")):
                return code
    return None


def read_article(data: bytes) -> Article:
    """Figures (document order), licence and title of a JATS file."""
    root = parse_xml(data)
    figures = [_figure(el) for el in root.iter() if _local(el.tag) == "fig"]
    title = next((_text(el) for el in root.iter() if _local(el.tag) == "article-title"), None)
    return Article(figures=figures, licence=article_licence(root), title=title or None)


def match_href(href: str, names: list[str]) -> str | None:
    """The file (of ``names``, object keys or ZIP members) that a graphic href names.

    PMC hrefs are usually file stems without an extension (``mds52601``); some carry
    one (``gr2.jpg``); PLOS writes ``info:doi/10.1371/journal.ppat.0020025.g007``. A name
    matches when its base name equals the href's last component, or its stem does and
    its extension is a figure format (best format first, thumbnails last).
    """
    target = PurePosixPath(href.replace(":", "/")).name
    by_base = {PurePosixPath(n).name: n for n in names}
    if target in by_base and PurePosixPath(target).suffix.lower() in FIGURE_EXTS:
        return by_base[target]
    stem = (
        PurePosixPath(target).stem
        if PurePosixPath(target).suffix.lower() in FIGURE_EXTS
        else target
    )
    found = [
        n
        for n in names
        if PurePosixPath(n).stem == stem and PurePosixPath(n).suffix.lower() in FIGURE_EXTS
    ]
    found.sort(key=lambda n: FIGURE_EXTS.index(PurePosixPath(n).suffix.lower()))
    return found[0] if found else None
