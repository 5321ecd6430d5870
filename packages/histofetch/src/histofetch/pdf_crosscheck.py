"""The pdfplumber cross-check: image XObjects per page as a second parser (pdfminer) sees them.

A PDF whose count differs from PyMuPDF's is flagged (``count_mismatch``) for a person to look
at; the walk over each page's resources is bounded (:data:`MAX_WALK_NODES`) against hostile
files.
"""

from __future__ import annotations

import io
from typing import Any

import pymupdf

#: Most resource dictionaries one page's object walk may visit (forms nested in forms).
MAX_WALK_NODES = 10_000


class WalkBudgetExceeded(RuntimeError):
    """An object walk visited more nodes than :data:`MAX_WALK_NODES` (a hostile file)."""


def pdfplumber_count(data: bytes) -> dict[str, Any]:
    """Image XObjects per page as pdfplumber's parser (pdfminer) sees them, summed.

    This walks each page's resources (and nested form XObjects) instead of
    ``page.images``, which lays out every character and takes minutes on long articles.
    Files pdfplumber cannot parse are retried on a copy PyMuPDF rewrote (pdfplumber's own
    ``repair=True`` needs ghostscript, which is often absent). A walk over its work budget
    gives ``pdfplumber_error`` at once (a repaired copy would hold the same object graph).
    """
    import pdfplumber

    def count(blob: bytes) -> int:
        with pdfplumber.open(io.BytesIO(blob)) as pdf:
            return sum(_count_xobject_images(p.page_obj.resources) for p in pdf.pages)

    try:
        return {"pdfplumber_images": count(data)}
    except WalkBudgetExceeded as exc:
        return {"pdfplumber_error": str(exc)}
    except Exception as first:
        try:
            with pymupdf.open(stream=data, filetype="pdf") as doc:
                repaired = doc.tobytes(garbage=1, clean=True)
            return {"pdfplumber_images": count(repaired), "pdfplumber_repaired": True}
        except Exception:
            return {"pdfplumber_error": f"{type(first).__name__}: {first}"[:300]}


def _count_xobject_images(resources: Any, depth: int = 0) -> int:
    """Distinct image XObjects reachable from a resource dict (forms followed, 8 deep).

    Each form is walked once (a visited set keyed by object id), and the walk stops with
    :class:`WalkBudgetExceeded` after :data:`MAX_WALK_NODES` resource dictionaries, so a
    small file of forms linking to forms cannot make the work grow exponentially.
    """
    from pdfminer.pdftypes import resolve1

    seen: set[int] = set()
    visited: set[int] = set()
    budget = [MAX_WALK_NODES]

    def walk(res: Any, level: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise WalkBudgetExceeded(f"object walk over {MAX_WALK_NODES} resource dictionaries")
        res = resolve1(res)
        xobjects = resolve1(res.get("XObject")) if isinstance(res, dict) else None
        if not isinstance(xobjects, dict):
            return
        for ref in xobjects.values():
            obj = resolve1(ref)
            key = getattr(ref, "objid", id(obj))
            attrs = getattr(obj, "attrs", {})
            subtype = getattr(resolve1(attrs.get("Subtype")), "name", None)
            if subtype == "Image":
                seen.add(key)
            elif subtype == "Form" and level < 8 and key not in visited:
                visited.add(key)
                walk(attrs.get("Resources"), level + 1)

    walk(resources, depth)
    return len(seen)
