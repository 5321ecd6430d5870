"""NegEx-style assertion status of a finding in a caption: affirmed, negated or not asserted.

The algorithm is Chapman et al.'s NegEx (J Biomed Inform 2001): a finding is *negated* when
a negation trigger ("no", "without", "negative for", "free of" …) stands before it, or a
post-trigger ("… was not identified", "… absent") after it, within a short window that
stops at a clause boundary or a termination word ("but", "however" …). Pseudo-triggers
("not only", "no change") negate nothing. To NegEx's triggers we add *non-assertion*
triggers (ConText's hypothetical/uncertain class, Harkema et al. 2009) that matter in
figure captions: "distinction from", "mimicking", "risk of", "patients with" … — the
caption mentions the finding but does not say this image shows it.

Why our own ~100 lines and not a package: the maintained implementations (negspacy,
medspacy's ConText) run inside spaCy pipelines that need a tokenizer model and named
entities; a caption classifier with its own finding patterns needs only the trigger
logic, and these rules are covered by tests on real caption sentences.
"""

from __future__ import annotations

import re
from enum import Enum


class Assertion(str, Enum):
    AFFIRMED = "affirmed"
    NEGATED = "negated"
    NOT_ASSERTED = "not_asserted"  # hypothetical, compared with, or about patients not images


#: How many words before (or after) a finding a trigger may stand.
WINDOW = 6

_PRE_NEGATION = [
    r"no",
    r"not",
    r"nor",
    r"neither",
    r"without",
    r"absence of",
    r"absent",
    r"free of",
    r"free from",
    r"negative for",
    r"lack of",
    r"lacking",
    r"lacks",
    r"devoid of",
    r"no evidence of",
    r"no signs? of",
    r"never",
    r"ruled out",
    r"rules out",
    r"excluding",
    r"did not (?:show|reveal|contain|demonstrate)",
    r"does not (?:show|reveal|contain|demonstrate)",
    r"(?:showed|shows|showing|revealed|reveals|with) no",
    r"cannot be (?:seen|identified)",
]
_POST_NEGATION = [
    r"(?:is|are|was|were)\s+(?:not\s+(?:seen|identified|detected|found|present|observed|"
    r"evident|noted)|absent|negative)",
    r"not\s+(?:seen|identified|detected|found|present|observed|evident|noted)",
    r"absent",
    r"(?:is|are|was|were)\s+ruled out",
    r"(?:is|are|was|were)\s+excluded",
]
_PSEUDO = [
    r"not only",
    r"no (?:change|increase|difference|significant)",
    r"without (?:further|additional|any further)",
    r"not necessarily",
    r"no longer",
]
_NOT_ASSERTED = [
    r"distinction (?:from|between)",
    r"distinguish\w* (?:it |them )?from",
    r"differential diagnosis",
    r"mimic\w*",
    r"simulat\w*",
    r"resembl\w*",
    r"mistaken for",
    r"suspicious (?:for|of)",
    r"suspected",
    r"possible",
    r"probable",
    r"rule out",
    r"to exclude",
    r"versus",
    r"vs\.?",
    r"risk of",
    r"predict\w*",
    r"associat\w* with",
    r"correlat\w* with",
    r"(?:patients?|cases?|women|group|cohorts?|tumou?rs) with(?:out)?",
    r"history of",
    r"status",
    r"rate of",
    r"incidence of",
    r"whether",
    r"if",
]
_TERMINATORS = r"but|however|although|though|whereas|while|except|yet|which|whose|where|apart from"


def _alt(words: list[str]) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_PRE_RE = re.compile(rf"\b(?:{_alt(_PRE_NEGATION)})\b", re.IGNORECASE)
_POST_RE = re.compile(rf"^\W*(?:{_alt(_POST_NEGATION)})\b", re.IGNORECASE)
_PSEUDO_RE = re.compile(rf"\b(?:{_alt(_PSEUDO)})\b", re.IGNORECASE)
_NA_RE = re.compile(rf"(?:\b(?:{_alt(_NOT_ASSERTED)})\b)", re.IGNORECASE)
_TERM_RE = re.compile(rf"\b(?:{_TERMINATORS})\b", re.IGNORECASE)
# Clause ends: sentence punctuation (not a decimal point), semicolon, colon, bracket.
_CLAUSE_END = re.compile(r"[;:()\[\]]|[.!](?!\d)|\?")
_NON_PREFIX = re.compile(r"\b(?:non|un)-$", re.IGNORECASE)
_NON_START = re.compile(r"non-?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!](?!\d)|\?")


def _window_before(text: str, start: int) -> tuple[str, int]:
    """The clause text before ``start`` (at most :data:`WINDOW` words) and its offset."""
    cut = max((m.end() for m in _CLAUSE_END.finditer(text, 0, start)), default=0)
    terms = list(_TERM_RE.finditer(text, cut, start))
    if terms:
        cut = terms[-1].end()
    words = list(re.finditer(r"\S+", text[cut:start]))
    if len(words) > WINDOW:
        cut += words[-WINDOW].start()
    return text[cut:start], cut


def _window_after(text: str, end: int) -> str:
    after = text[end:]
    m = _CLAUSE_END.search(after)
    after = after[: m.start()] if m else after
    t = _TERM_RE.search(after)
    after = after[: t.start()] if t else after
    return " ".join(after.split()[: WINDOW + 2])


def assertion(text: str, start: int, end: int) -> tuple[Assertion, tuple[int, int] | None]:
    """Status of the finding ``text[start:end]`` and the trigger's span, if any."""
    prefix = _NON_PREFIX.search(text[:start]) or _NON_START.match(text, start, end)
    if prefix:  # "non-metastatic", "nonmetastatic"
        return Assertion.NEGATED, prefix.span()
    sentence_end = _SENTENCE_END.search(text, end)
    if sentence_end and sentence_end.group(0) == "?":
        return Assertion.NOT_ASSERTED, (sentence_end.start(), sentence_end.start() + 1)
    before, offset = _window_before(text, start)
    pseudo = [m.span() for m in _PSEUDO_RE.finditer(before)]

    def free(m: re.Match[str]) -> bool:
        return not any(a <= m.start() < b for a, b in pseudo)

    na = [m for m in _NA_RE.finditer(before) if free(m)]
    if na:
        m = na[-1]
        return Assertion.NOT_ASSERTED, (offset + m.start(), offset + m.end())
    pre = [m for m in _PRE_RE.finditer(before) if free(m)]
    if pre:
        m = pre[-1]
        return Assertion.NEGATED, (offset + m.start(), offset + m.end())
    after = _window_after(text, end)
    post = _POST_RE.search(after) or re.search(
        rf"\b(?:{_alt(_POST_NEGATION)})\b", after, re.IGNORECASE
    )
    if post:
        at = text.find(post.group(0).strip(), end)
        return Assertion.NEGATED, (at, at + len(post.group(0).strip()))
    return Assertion.AFFIRMED, None
