"""An S3-like bucket that plays the PMC Cloud Service (``pmc-oa-opendata``) in tests.

It answers like the real bucket (see ../shared/fixtures/pmc_cloud/PROVENANCE.md):
ListObjectsV2 (``list-type=2``) with ``prefix``, ``delimiter`` and ``max-keys`` paging
(``IsTruncated``, ``NextContinuationToken``, ``continuation-token``) in the namespace
``http://s3.amazonaws.com/doc/2006-03-01/``, ``KeyCount`` 0 for a prefix with nothing,
object GETs with an MD5 ``ETag``, the ``NoSuchKey`` XML 404, and ``503 SlowDown`` (queue
:func:`slow_down` with ``FakeNcbi.inject``). ``page_limit`` caps keys per page so tests
see truncated listings without thousands of objects. Article versions are built by
:meth:`FakeBucket.add_version` in the real layout and metadata JSON shape.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from conftest import SHARED

BUCKET = "pmc-oa-opendata"
PREFIX = f"/{BUCKET}/"
NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML = {"Content-Type": "application/xml"}
RECORDED = SHARED / "fixtures" / "pmc_cloud"
#: The shape of a real metadata JSON (recorded_metadata() reads the real one when present).
METADATA_TEMPLATE: dict[str, Any] = {
    "pmcid": "PMC12855588",
    "version": 1,
    "pmid": 41623473,
    "doi": "10.1016/j.isci.2025.114581",
    "title": "A title",
    "is_pmc_openaccess": True,
    "is_manuscript": False,
    "is_historical_ocr": False,
    "is_retracted": False,
    "license_code": "CC BY",
    "xml_url": "",
    "pdf_url": "",
    "text_url": "",
    "media_urls": [],
}


def recorded_metadata() -> dict[str, Any]:
    """The recorded metadata JSON when ../shared is there, else the same shape."""
    path = RECORDED / "metadata_PMC12855588.1.json"
    if path.exists():
        return json.loads(path.read_text())
    return dict(METADATA_TEMPLATE)


def slow_down() -> tuple[int, dict[str, str], bytes]:
    """S3's answer to too many requests."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        "<Message>Please reduce your request rate.</Message>"
        "<RequestId>4442587FB7D0A2F9</RequestId><HostId>x</HostId></Error>"
    )
    return 503, XML, body.encode()


def _s3_uri(key: str, data: bytes) -> str:
    return f"s3://{BUCKET}/{quote(key)}?md5={hashlib.md5(data).hexdigest()}"


@dataclass
class FakeBucket:
    objects: dict[str, bytes] = field(default_factory=dict)
    #: Most keys (and common prefixes) per listing page, whatever ``max-keys`` asks.
    page_limit: int = 1000

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def add_version(
        self,
        pmcid: str,
        version: int,
        *,
        jats: bytes | None,
        media: dict[str, bytes] | None = None,
        pdf: bytes | None = None,
        list_media: bool = True,
        wrong_md5: tuple[str, ...] = (),
        **meta: Any,
    ) -> dict[str, Any]:
        """Store one article version as the bucket lays it out; returns its JSON.

        ``list_media=False`` leaves ``media_urls`` empty (as in the recorded JSON);
        ``wrong_md5`` names files whose JSON MD5 does not match their bytes.
        """
        name = f"{pmcid}.{version}"
        doc = recorded_metadata()
        # The recorded shape, this article's identity (the recorded ids belong to another).
        doc.update(pmcid=pmcid, version=version, pdf_url=None, media_urls=[], pmid=None, doi=None)
        doc.update(title=f"Article {name}", citation=f"Test J. 2026;{version}:1")
        files: dict[str, bytes] = {}
        if jats is not None:
            files[f"{name}.xml"] = jats
        files[f"{name}.txt"] = b"plain text of the article"
        if pdf is not None:
            files[f"{name}.pdf"] = pdf
        files.update(media or {})
        for fname, data in files.items():
            key = f"{name}/{fname}"
            self.put(key, data)
            uri = _s3_uri(key, b"tampered" if fname in wrong_md5 else data)
            if fname.endswith(".xml"):
                doc["xml_url"] = uri
            elif fname.endswith(".txt"):
                doc["text_url"] = uri
            elif fname.endswith(".pdf") and fname == f"{name}.pdf":
                doc["pdf_url"] = uri
            elif list_media:
                doc["media_urls"].append(uri)
        if jats is None:
            doc["xml_url"] = None
        if pdf is None:
            doc.pop("pdf_url")
        doc.update(meta)
        body = json.dumps(doc).encode()
        self.put(f"{name}/{name}.json", body)
        self.put(f"metadata/{name}.json", body)
        return doc

    # -- the S3 API -----------------------------------------------------------------------
    def answer(self, key: str, params: dict[str, str]) -> tuple[int, dict, bytes]:
        key = unquote(key)
        if key == "":
            if params.get("list-type") != "2":
                return 400, XML, _error("InvalidArgument", "only ListObjectsV2 is played here")
            return self.list_objects(params)
        data = self.objects.get(key)
        if data is None:
            return 404, XML, _error("NoSuchKey", "The specified key does not exist.", key)
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        ctype = "application/octet-stream"
        if key.endswith(".json"):
            ctype = "application/json"
        elif key.endswith(".xml"):
            ctype = "text/xml"
        return 200, {"Content-Type": ctype, "ETag": etag}, data

    def list_objects(self, params: dict[str, str]) -> tuple[int, dict, bytes]:
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        max_keys = min(int(params.get("max-keys", 1000)), self.page_limit)
        token = params.get("continuation-token")
        after = base64.urlsafe_b64decode(token.encode()).decode() if token else None
        entries: list[tuple[str, str]] = []  # (kind, name) in key order, prefixes rolled up
        for key in sorted(k for k in self.objects if k.startswith(prefix)):
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                if not entries or entries[-1] != ("prefix", common):
                    entries.append(("prefix", common))
            else:
                entries.append(("key", key))
        if after is not None:
            entries = [e for e in entries if e[1] > after and not e[1].startswith(after)]
        page, more = entries[:max_keys], len(entries) > max_keys
        parts = [
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{NS}">',
            f"<Name>{BUCKET}</Name><Prefix>{escape(prefix)}</Prefix>",
        ]
        if token:
            parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if more:
            nxt = base64.urlsafe_b64encode(page[-1][1].encode()).decode()
            parts.append(f"<NextContinuationToken>{nxt}</NextContinuationToken>")
        parts.append(f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        parts.append(f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>")
        for kind, name in page:
            if kind == "key":
                data = self.objects[name]
                parts.append(
                    f"<Contents><Key>{escape(name)}</Key>"
                    "<LastModified>2026-09-01T10:00:00.000Z</LastModified>"
                    f"<ETag>&quot;{hashlib.md5(data).hexdigest()}&quot;</ETag>"
                    f"<Size>{len(data)}</Size><StorageClass>STANDARD</StorageClass></Contents>"
                )
        for kind, name in page:
            if kind == "prefix":
                parts.append(f"<CommonPrefixes><Prefix>{escape(name)}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        return 200, XML, "".join(parts).encode()


def _error(code: str, message: str, key: str | None = None) -> bytes:
    key_xml = f"<Key>{escape(key)}</Key>" if key is not None else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message>{key_xml}<RequestId>5M1QYB0Z4AAHBJC2</RequestId>"
        "<HostId>x</HostId></Error>"
    ).encode()


# -- article material: the real JATS and real H&E pixels when ../shared is there ----------
JATS_DIR = SHARED / "fixtures" / "jats"
TILES = SHARED / "data" / "camelyon16_tiles_didsr" / "tumor"
FALLBACK_JATS = b"""<?xml version="1.0" encoding="UTF-8"?>
<article xmlns:xlink="http://www.w3.org/1999/xlink"><front><article-meta>
<title-group><article-title>Stage at diagnosis</article-title></title-group>
<permissions><license license-type="creative-commons"
 xlink:href="http://creativecommons.org/licenses/by-nc/3.0"><license-p>CC BY-NC</license-p>
</license></permissions></article-meta></front><body><sec><p>
<fig id="MDS526F1" position="float"><label>Figure 1.</label><caption><p>Deprivation
inequalities in advanced stage at diagnosis by cancer.</p></caption>
<graphic xlink:href="mds52601"/></fig><fig id="MDS526F2" position="float"><label>Figure
2.</label><caption><p>Age inequalities in advanced stage diagnosis.</p></caption>
<graphic xlink:href="mds52602"/></fig></p></sec></body></article>"""


def real_jats() -> bytes:
    """A real PMC JATS file with two figures, hrefs ``mds52601``/``mds52602`` (no extension)."""
    path = JATS_DIR / "pmc_mds526_annonc_breast_stage.nxml"
    return path.read_bytes() if path.exists() else FALLBACK_JATS


def he_jpeg(n: int = 0, size: int = 256) -> bytes:
    """JPEG bytes of a real Camelyon16 tumour tile (a synthetic H&E-like one without ../shared)."""
    import io

    import numpy as np
    from PIL import Image

    tiles = sorted(TILES.glob("*.webp")) if TILES.exists() else []
    if tiles:
        with Image.open(tiles[n % len(tiles)]) as im:
            img = im.convert("RGB").resize((size, size))
    else:
        from pdf_factory import he_like

        img = Image.fromarray(np.ascontiguousarray(he_like(size, size, seed=n)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def recorded_listing(name: str) -> bytes | None:
    path = RECORDED / name
    return path.read_bytes() if path.exists() else None


def paths_exist(*paths: Path) -> bool:
    return all(p.exists() for p in paths)
