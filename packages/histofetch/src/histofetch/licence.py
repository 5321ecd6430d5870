"""Article licences: one spelling for every source, and the ``--licence`` reuse policy.

The PMC Cloud Service states a ``license_code`` (``CC BY``, ``CC BY-NC-ND``, ``CC0``,
``TDM``...); JATS states a licence as a Creative Commons URL, a ``license-type`` or a
sentence. Both become the same code here, so a run counts figures per licence in one
vocabulary. ``TDM`` (author manuscripts usable for text and data mining only) is kept as
such: it is not a reuse licence.
"""

from __future__ import annotations

import re

#: Licences that allow commercial reuse (the issue's definition, plus public domain).
COMMERCIAL = frozenset({"CC0", "CC BY", "CC BY-SA", "CC BY-ND", "public domain"})
#: Licences that allow at least non-commercial reuse.
NONCOMMERCIAL = COMMERCIAL | frozenset({"CC BY-NC", "CC BY-NC-SA", "CC BY-NC-ND"})
#: ``--licence`` choices (:data:`histofetch.choices.LicencePolicy`) → the licences each
#: accepts (``None``: anything, unknown too).
POLICIES: dict[str, frozenset[str] | None] = {
    "any": None,
    "commercial": COMMERCIAL,
    "noncommercial": NONCOMMERCIAL,
}

_CC_URL = re.compile(r"creativecommons\.org/licenses/([a-z-]+)/", re.IGNORECASE)
_CC_PARTS = {"by": "BY", "nc": "NC", "sa": "SA", "nd": "ND"}
_CC_WORDS = (  # longest first: a sentence naming a licence in words
    ("attribution-noncommercial-noderiv", "CC BY-NC-ND"),
    ("attribution-noncommercial-sharealike", "CC BY-NC-SA"),
    ("attribution-noncommercial", "CC BY-NC"),
    ("attribution-noderiv", "CC BY-ND"),
    ("attribution-sharealike", "CC BY-SA"),
    ("attribution", "CC BY"),
)


def normalise(value: str | None) -> str | None:
    """One code for a licence given as a code, a URL, a ``license-type`` or a sentence."""
    if not value:
        return None
    text = " ".join(str(value).split())
    lowered = text.lower()
    if lowered in ("none", "", "null"):
        return None
    if lowered == "tdm":
        return "TDM"
    if "publicdomain/zero" in lowered or re.fullmatch(r"cc[ -]?0(?: 1\.0)?", lowered):
        return "CC0"
    if "public-domain" in lowered or "public domain" in lowered or "publicdomain/mark" in lowered:
        return "public domain"
    match = _CC_URL.search(text)
    if match:
        return _cc_code(match.group(1))
    # a code spelt otherwise: 'cc_by', SPDX 'CC-BY-4.0', 'CC BY-NC-SA 3.0 IGO' (a port),
    # 'CC BY NC license' (ranked unknown before); a port is a country code or IGO, never
    # a licence element: 'CC BY 4.0 NC' is no port of CC BY (it read as CC BY, commercial)
    code = re.sub(r"[ _-]+", " ", lowered).removesuffix(" license").removesuffix(" licence")
    port = r"(?: (?:igo|(?!nc\b|sa\b|nd\b)[a-z]{2}))"
    match = re.fullmatch(rf"(?:cc)? ?(by(?: (?:nc|sa|nd))*)(?: \d\.\d{port}?)?", code)
    if match:
        return _cc_code(match.group(1))
    squashed = lowered.replace(" ", "-").replace("commercial-", "commercial")
    if "creative" in lowered or "commons" in lowered:
        for words, code in _CC_WORDS:
            if words in squashed:
                return code
    return text[:40]


def _cc_code(parts: str) -> str:
    names = [_CC_PARTS.get(p, p.upper()) for p in re.split(r"[ -]", parts.lower()) if p]
    return "CC " + "-".join(names)


def reuse_rank(value: str | None) -> int:
    """How much reuse a licence allows, most first: 2 commercial reuse (:data:`COMMERCIAL`),
    1 non-commercial reuse only (:data:`NONCOMMERCIAL`), 0 anything else (``TDM``, unknown,
    none). ``value`` in any spelling :func:`normalise` takes."""
    code = normalise(value)
    return 2 if code in COMMERCIAL else 1 if code in NONCOMMERCIAL else 0


def allowed(code: str | None, policy: str) -> bool:
    """Whether a licence meets a ``--licence`` policy (unknown licences meet only ``any``)."""
    accepted = POLICIES[policy]
    return accepted is None or code in accepted
