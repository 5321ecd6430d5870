"""Caption-derived weak labels: what a figure's caption says about lymph-node metastasis.

Every kept figure or panel gets ``weak_label`` (``metastasis`` / ``no_metastasis`` /
``abstain``), the evidence spans behind it (offsets into ``caption``), the ``site`` the
caption describes (``lymph_node`` / ``breast`` / ``other`` / ``unknown``) and the rule
version. The rules, in order (documented with their measured agreement in
docs/weak-labels.md):

1. The caption is split into panel parts (:mod:`histofetch.captions`); a panel is read
   from its own part, the preamble giving shared context (the site).
2. Findings are matched: *positive* ("metastatic carcinoma", "micrometastasis", "isolated
   tumour cells", "tumour deposits", "nodal involvement", "extranodal extension", pN1…),
   *tumour* words ("carcinoma", "tumour cells", "melanoma" …) that count only in the same
   sentence as a lymph-node word, and *negative* statements ("negative sentinel node",
   "normal/benign/reactive lymph node", "tumour-free node", pN0).
3. Each finding's assertion comes from NegEx rules (:mod:`histofetch.negation`): "no
   evidence of metastatic carcinoma" is a negative finding; "distinction from a lymph
   node metastasis" or a question asserts nothing.
4. Site: a lymph-node word makes the part a lymph-node part unless it is about the primary
   tumour without a positive nodal finding; else breast, another organ, or unknown.
5. Label: only lymph-node parts are labelled. An affirmed positive finding → metastasis;
   else a negative finding → no_metastasis; anything else → ``abstain`` (captions omit
   findings: silence is never negative).

Leakage: a caption, article title or (local PDF) file name that mentions CAMELYON or
PatchCamelyon (PCam) data is flagged (``leakage`` contains ``"camelyon"``);
``histomodels eval --manifest`` excludes such figures from external metrics by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from histocore.manifest import WEAK_LABELS, Image, Manifest, Record
from histofetch.captions import normalise, panel_spans
from histofetch.negation import Assertion, assertion

#: Bump when a rule changes what a caption is read as (stored on every row). A row's label
#: is read from its own ``caption`` and ``panel_letter`` (both stored beside it), so reading
#: panel letters (filter's scorer 5) changed an input, not the rules; ``filter`` re-labels
#: every kept row on every run, so no row keeps a label its stored fields do not give.
RULES_VERSION = "caption-rules-1"

SITES = ("lymph_node", "breast", "other", "unknown")

_T = r"tumou?r"
_NODE = r"(?:lymph[\s-]*)?nodes?"
_POSITIVE = re.compile(
    r"\b(?:(?:micro|macro|non)?-?metasta(?:sis|ses|tic|sized|sizing|tised)\w*"
    rf"|isolated {_T} cells?|\bITCs?\b|{_T} deposits?|{_T}al deposits?"
    rf"|(?:nodal|lymph[\s-]*node) involvement|involved {_NODE}"
    r"|(?:extra-?nodal|extra-?capsular|perinodal) (?:extension|spread|invasion)"
    rf"|pN[1-3][a-c]?(?:mi)?\b|pN0\s?\(i\+\)|node-positive|{_T}-positive {_NODE}"
    rf"|positive (?:sentinel |axillary )?{_NODE}|(?:sentinel |axillary )?{_NODE} positive)",
    re.IGNORECASE,
)
#: Positive findings whose negation does not make a node negative ("no extranodal extension").
_POSITIVE_ONLY = re.compile(r"extra-?nodal|extra-?capsular|perinodal", re.IGNORECASE)
_TUMOUR = re.compile(
    r"\b(?:(?:adeno|squamous cell |basal cell |ductal |lobular |urothelial )?carcinomas?"
    rf"|melanomas?|sarcomas?|seminomas?|O?SCCs?|HNSCC|{_T}s?|{_T} cells?|cancer cells?"
    rf"|carcinoma cells?|malignant cells?|neoplastic cells?|{_T} (?:nests?|islands?|foci)"
    r"|malignan(?:cy|t))\b",
    re.IGNORECASE,
)
_NEGATIVE = re.compile(
    rf"\b(?:negative (?:sentinel |axillary |regional )?{_NODE}|node-negative"
    rf"|(?:sentinel |axillary )?{_NODE} (?:(?:is|are|was|were) )?negative"
    rf"|(?:{_T}|metastasis|cancer)-free (?:sentinel |axillary )?{_NODE}"
    rf"|(?:normal|benign|reactive|uninvolved|non-?involved|unremarkable|tumou?r-free)"
    rf" (?:sentinel |axillary |reactive |regional )*(?:lymph[\s-]*)?nodes?"
    r"|reactive (?:lymphadenopathy|lymphoid hyperplasia|lymphadenitis)"
    r"|pN0(?!\s?\(i\+\)))",
    re.IGNORECASE,
)
_LYMPH_NODE = re.compile(
    r"\b(?:lymph[\s-]*nod(?:e|es|al)|LNs?|nodal|nodes?|sentinel|lymphadenectomy"
    r"|lymphadenopathy|lymphadenitis|(?:subcapsular|marginal|medullary|nodal|lymphatic)"
    r" sinus(?:es)?|pN\d)",
)
_LYMPH_NODE_CI = re.compile(_LYMPH_NODE.pattern.replace("LNs?|", ""), re.IGNORECASE)
_BREAST = re.compile(
    r"\b(?:breast|mammary|DCIS|ductal carcinoma in situ|lobular carcinoma in situ|nipple"
    r"|mastectomy|lumpectomy)\b",
    re.IGNORECASE,
)
_OTHER = re.compile(
    r"\b(?:liver|hepatic|lungs?|pulmonary|bones?|marrow|brain|cerebr\w*|skin|derm(?:is|al)"
    r"|epiderm\w*|ile(?:um|al)|colon\w*|rect(?:um|al)|stomach|gastric|bowel|intestin\w*"
    r"|ovar(?:y|ies|ian)|uter(?:us|ine)|endometri\w*|cervix|cervical canal|kidneys?|renal"
    r"|thyroid|spleen|splenic|adrenal|pancrea\w*|prostat\w*|bladder|periton\w*|omentum"
    r"|pleura\w*|oral|tongue|gingiva\w*|muscle|soft tissue|o?esophag\w*|laryn\w*|pharyn\w*"
    r"|parotid|salivary|heart|myocard\w*|testis|testes|placenta\w*|meninge\w*|spinal)\b",
    re.IGNORECASE,
)
_PRIMARY = re.compile(
    rf"\b(?:primary (?:{_T}s?|lesions?|sites?|carcinomas?|cancers?|breast\w*|mass(?:es)?)"
    rf"|the primary\b|non-?metastatic {_T}s?)",
    re.IGNORECASE,
)
_CAMELYON = re.compile(r"camelyon|patch[\s-]?camelyon|\bP-?CAM\b", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.;!?])\s+|(?<=\))\s+(?=[A-Z])")


@dataclass
class Reading:
    """What one caption part says: label, site and the spans behind them."""

    label: str = "abstain"
    site: str = "unknown"
    evidence: list[dict[str, Any]] = field(default_factory=list)


def _span(kind: str, caption: str, start: int, end: int, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "start": start, "end": end, "text": caption[start:end], **extra}


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans inside ``text[start:end]``."""
    out, at = [], start
    for m in _SENTENCE.finditer(text, start, end):
        out.append((at, m.start()))
        at = m.end()
    out.append((at, end))
    return [(a, b) for a, b in out if b > a]


def _findings(caption: str, start: int, end: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(positive, negative, not-asserted) finding spans in ``caption[start:end]``."""
    pos: list[dict] = []
    neg: list[dict] = []
    na: list[dict] = []
    for s0, s1 in _sentences(caption, start, end):
        sentence_has_node = bool(
            _LYMPH_NODE.search(caption, s0, s1) or _LYMPH_NODE_CI.search(caption, s0, s1)
        )
        taken: list[tuple[int, int]] = []
        for m in _NEGATIVE.finditer(caption, s0, s1):
            status, trig = assertion(caption, m.start(), m.end())
            if status is Assertion.AFFIRMED:
                neg.append(_span("no_metastasis", caption, m.start(), m.end()))
            taken.append(m.span())
        matches = [(m, True) for m in _POSITIVE.finditer(caption, s0, s1)]
        if sentence_has_node:
            matches += [(m, False) for m in _TUMOUR.finditer(caption, s0, s1)]
        for m, strong in sorted(matches, key=lambda x: x[0].start()):
            if any(a <= m.start() < b or m.start() <= a < m.end() for a, b in taken):
                continue
            taken.append(m.span())
            status, trig = assertion(caption, m.start(), m.end())
            if status is Assertion.AFFIRMED:
                pos.append(_span("metastasis", caption, m.start(), m.end()))
            elif status is Assertion.NEGATED:
                if strong and _POSITIVE_ONLY.search(m.group(0)):
                    continue
                a = min(m.start(), trig[0]) if trig else m.start()
                b = max(m.end(), trig[1]) if trig else m.end()
                neg.append(_span("no_metastasis", caption, a, b))
            else:
                a = min(m.start(), trig[0]) if trig else m.start()
                b = max(m.end(), trig[1]) if trig else m.end()
                na.append(_span("not_asserted", caption, a, b))
    return pos, neg, na


def _site(caption: str, start: int, end: int, positive: bool) -> tuple[str, list[dict]]:
    node = list(_LYMPH_NODE.finditer(caption, start, end)) or list(
        _LYMPH_NODE_CI.finditer(caption, start, end)
    )
    primary = _PRIMARY.search(caption, start, end)
    breast = _BREAST.search(caption, start, end)
    other = _OTHER.search(caption, start, end)
    if node and (positive or not primary):
        return "lymph_node", [_span("site", caption, *node[0].span())]
    # "Liver metastasis of breast cancer": the organ with the finding, not the origin.
    order = (
        (("other", other), ("breast", breast))
        if positive
        else (("breast", breast), ("other", other))
    )
    for name, m in order:
        if m:
            return name, [_span("site", caption, *m.span())]
    if primary:
        return "other", [_span("site", caption, *primary.span())]
    return "unknown", []


def read_part(caption: str, start: int, end: int, context_site: str = "unknown") -> Reading:
    """Read one caption part (a panel's text, or the whole caption)."""
    pos, neg, na = _findings(caption, start, end)
    site, site_ev = _site(caption, start, end, bool(pos))
    if site == "unknown":
        site = context_site
    out = Reading(site=site, evidence=site_ev + _merge(caption, na))
    if site != "lymph_node":
        return out
    if pos:
        out.label, out.evidence = "metastasis", site_ev + _merge(caption, pos + neg + na)
    elif neg:
        out.label, out.evidence = "no_metastasis", site_ev + _merge(caption, neg + na)
    return out


def _merge(caption: str, spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Overlapping or adjacent spans of one kind become one ("metastatic" + "carcinoma")."""
    out: list[dict[str, Any]] = []
    for e in sorted(spans, key=lambda e: (e["kind"], e["start"])):
        last = out[-1] if out else None
        if last and last["kind"] == e["kind"] and e["start"] <= last["end"] + 1:
            last["end"] = max(last["end"], e["end"])
            last["text"] = caption[last["start"] : last["end"]]
            continue
        out.append(dict(e))
    return sorted(out, key=lambda e: e["start"])


def _combine(parts: list[Reading]) -> Reading:
    """One figure from its parts: any metastasis part makes it metastasis."""
    out = Reading()
    for want in ("metastasis", "no_metastasis"):
        hits = [p for p in parts if p.label == want]
        if hits:
            out.label = want
            break
    sites = [p.site for p in parts]
    out.site = next((s for s in SITES if s in sites), "unknown")
    seen = set()
    for p in parts:
        for e in p.evidence:
            key = (e["kind"], e["start"], e["end"])
            if key not in seen:
                seen.add(key)
                out.evidence.append(e)
    return out


def read_caption(caption: str | None, panel: str | None = None) -> Reading:
    """The weak label of a whole figure (``panel=None``) or of one panel (``"B"``).

    Evidence offsets index :func:`histofetch.captions.normalise`'s text of the caption.
    """
    text, spans = panel_spans(caption)
    _, p0, p1 = spans[0]
    preamble = read_part(text, p0, p1)
    whole_site = _site(text, 0, len(text), False)[0]
    context = preamble.site if preamble.site != "unknown" else whole_site
    panels = [read_part(text, a, b, context) for _, a, b in spans[1:]]
    if panel is not None and len(spans) > 1:
        own = [r for r, s in zip(panels, spans[1:], strict=True) if panel.upper() in s[0]]
        if not own:  # the caption names panels but not this one: nothing to go on
            return Reading(site=context)
        return _combine(own)
    if len(spans) == 1:
        return preamble
    if preamble.label != "abstain":  # "Sentinel node metastasis. (A) H&E (B) CK19"
        return _combine([preamble, *panels])
    return _combine(panels)


def leakage_flags(caption: str | None, title: str | None) -> list[str]:
    """``["camelyon"]`` when the caption or article title mentions CAMELYON/PCam data."""
    text = f"{normalise(caption)}\n{title or ''}"
    return ["camelyon"] if _CAMELYON.search(text) else []


def _panel_letter(img: Image) -> str | None:
    letter = img.panel_letter or img.extra.get("panel")
    return letter if isinstance(letter, str) and len(letter) == 1 else None


def label_image(img: Image, title: str | None = None) -> None:
    """Set the weak-label fields of one image row from its caption (and ``title``: the text
    of its record the leakage check reads, :func:`leakage_context`)."""
    reading = read_caption(img.caption, _panel_letter(img))
    img.weak_label = reading.label
    img.site = reading.site
    img.weak_label_evidence = reading.evidence
    img.weak_label_rules = RULES_VERSION
    flags = [f for f in (img.leakage or []) if f != "camelyon"]
    img.leakage = sorted(set(flags + leakage_flags(img.caption, title))) or None


def leakage_context(rec: Record | None) -> str | None:
    """What the CAMELYON/PCam check reads of an image's record besides its caption: the
    article title and, for a local PDF, its file name (``camelyon16_tumor_001_report.pdf``
    says where the paper came from even when the PDF's metadata title does not). ``_`` and
    ``.`` in the name count as spaces, so ``pcam_review`` reads as the word ``pcam``."""
    if rec is None:
        return None
    parts = [rec.title or ""]
    if rec.pdf_source == "local" and rec.pdf_path:
        parts.append(re.sub(r"[_.]+", " ", PurePath(rec.pdf_path).name))
    return "\n".join(parts)


def label_manifest(manifest: Manifest) -> dict[str, int]:
    """Weak-label every kept image (re-labels on every call; other rows are cleared) and
    flag leakage: CAMELYON/PCam mentions and cross-article near-duplicates.

    Returns counts per weak label plus ``camelyon`` and ``near_duplicate`` flag counts.
    """
    from histofetch.leakage import flag_near_duplicates

    counts: dict[str, int] = dict.fromkeys(WEAK_LABELS, 0)
    # a split figure kept for its panels is labelled too, but counted by its panels only
    counted = {img.id for img in manifest.kept_images()}
    for img in manifest.images.values():
        if img.kept and img.status == "ok":
            rec = manifest.records.get(img.record_id)
            label_image(img, leakage_context(rec))
            if img.id in counted:
                counts[img.weak_label or "abstain"] += 1
        else:
            img.weak_label = img.weak_label_evidence = img.site = img.weak_label_rules = None
    counts["near_duplicate"] = flag_near_duplicates(manifest)
    counts["camelyon"] = sum("camelyon" in (i.leakage or []) for i in manifest.kept_images())
    return counts
