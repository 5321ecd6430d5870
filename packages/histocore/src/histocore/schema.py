"""The run manifest's schema: its rows (:class:`Record`, :class:`Image`), their vocabularies
and the checks every row passes when it is read.

Standard library only and below everything else in histocore: :mod:`histocore.jsonl`,
:mod:`histocore.sync` and :mod:`histocore.manifest` build on it (``histocore.manifest``
re-exports every public name, the API both packages use). Documented in
``docs/manifest.md``; bump ``SCHEMA_VERSION`` on any incompatible change.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, NoReturn

from histocore.errors import ManifestError
from histocore.io import NotJSON, loads_json, text_shown

SCHEMA_NAME = "histofetch.manifest"
#: 2: rows live in ``run.sqlite``; records gained ``transient``. Version-1 files are read
#: (and migrated into a store) unchanged.
SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.jsonl"

#: How far a record has got. Stages skip records already at or past their own stage.
STAGES = ("searched", "downloaded", "extracted", "filtered")
#: Labels a person can give an image (``histomodels label``, ``histofetch review``).
IMAGE_LABELS = ("metastasis", "no_metastasis", "not_usable")
#: Caption-derived weak labels (``Image.weak_label``).
WEAK_LABELS = ("metastasis", "no_metastasis", "abstain")


@dataclass
class Record:
    """One article: where it came from, where its PDF is, how far it got."""

    id: str
    query: str | None = None
    pmid: str | None = None
    pmcid: str | None = None
    doi: str | None = None
    title: str | None = None
    journal: str | None = None
    year: int | None = None
    license: str | None = None
    open_access: bool | None = None
    # -- article files (PMC Cloud Service, Europe PMC; issue 9) -------------------------
    #: The route that gave the article's files: "pmc-cloud", "europepmc", or a PDF route
    #: ("pmc-cloud-pdf": the bucket's PDF of a version without JATS).
    route: str | None = None
    #: PMC article version taken from the PMC Cloud Service (``PMCn.<version>``).
    pmc_version: int | None = None
    is_retracted: bool | None = None
    is_manuscript: bool | None = None
    citation: str | None = None
    # -- end issue 9 ---------------------------------------------------------------------
    pdf_path: str | None = None
    pdf_sha256: str | None = None
    pdf_source: str | None = None
    stage: str = "searched"
    status: str = "ok"
    reason: str | None = None
    failed_stage: str | None = None
    # -- run store (issue 13): failed for a passing reason (network, disk full, busy):
    #: the next run of the stage retries it without ``--retry-failed``.
    transient: bool | None = None
    # -- end run store ---------------------------------------------------------------------
    n_images: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "record"

    def fail(self, stage: str, reason: str, *, transient: bool = False) -> None:
        """Mark this record failed at ``stage`` with a one-line reason; ``transient`` when
        the cause may pass (the next run retries it)."""
        self.status, self.failed_stage = "failed", stage
        self.reason = (reason.splitlines() or [""])[0][:500]
        self.transient = transient

    def reached(self, stage: str) -> bool:
        """True if the record has completed ``stage`` (or a later one)."""
        return STAGES.index(self.stage) >= STAGES.index(stage)


@dataclass
class Image:
    """One raster image: a figure file named by the article's JATS, or one taken from its PDF."""

    id: str
    record_id: str
    path: str
    sha256: str
    width: int
    height: int
    page: int | None = None
    bbox: list[float] | None = None
    source: str = "pdf"
    caption: str | None = None
    # -- figures from JATS (issue 9): the <fig> this file belongs to ----------------------
    figure_id: str | None = None
    figure_label: str | None = None
    # -- end issue 9 ---------------------------------------------------------------------
    purple_ratio: float | None = None
    he_score: float | None = None
    tissue_fraction: float | None = None
    kept: bool | None = None
    filter_reason: str | None = None
    # -- panels and the learned H&E check (histofetch panels.py, decide/) --------------
    # A compound figure split into panels keeps its row; each panel gets its own row
    # (source "panel") naming the figure, the pixel box in it and the letter when read.
    p_he: float | None = None  # the shipped CNN's H&E probability (decide/classifier.py)
    parent_id: str | None = None  # panel rows: the figure's image id
    panel_bbox: list[int] | None = None  # panel rows: (x0, y0, x1, y1) px in the figure
    panel_letter: str | None = None  # "A", "B", … when read (OCR) or matched to the caption
    n_panels: int | None = None  # figure rows: panels split off (0: a single panel)
    # -- end panels --------------------------------------------------------------------
    label: str | None = None
    # -- weak labels, review and leakage (issue 15) --------------------------------------
    #: Caption-derived label: metastasis / no_metastasis / abstain (histofetch.labels).
    weak_label: str | None = None
    #: Spans of ``caption`` behind it: ``{"kind", "start", "end", "text"}`` each.
    weak_label_evidence: list[dict[str, Any]] | None = None
    #: What the caption says the image shows: lymph_node / breast / other / unknown.
    site: str | None = None
    #: Version of the caption rules that wrote the three fields above.
    weak_label_rules: str | None = None
    #: Who set ``label`` (review page / ``histomodels label``) and when (UTC, ISO 8601).
    label_by: str | None = None
    label_at: str | None = None
    #: Leakage flags: "camelyon" (CAMELYON/PCam-derived paper), "near_duplicate:<id>",
    #: "training_duplicate" (perceptual hash matches a training patch).
    leakage: list[str] | None = None
    #: 64-bit perceptual hash (dHash, hex) for near-duplicate checks.
    phash: str | None = None
    # -- end issue 15 ---------------------------------------------------------------------
    status: str = "ok"
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "image"


_FIELDS: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    if cls not in _FIELDS:
        _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return _FIELDS[cls]


_NAME_SETS: dict[type, frozenset[str]] = {}


def _name_set(cls: type) -> frozenset[str]:
    """:func:`_names` as a set, made once a class (not once a row read)."""
    if cls not in _NAME_SETS:
        _NAME_SETS[cls] = frozenset(_names(cls))
    return _NAME_SETS[cls]


def row_of(obj: Record | Image) -> dict[str, Any]:
    """A row as a dict (what ``dataclasses.asdict`` gives, without its deep copy)."""
    return {name: getattr(obj, name) for name in _names(type(obj))}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or isinstance(v, float)


#: Type checks for the field annotations used above (fields with other annotations are
#: not checked here; add a line when adding a field of a new type).
_TYPE_CHECKS: dict[str, Any] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "bool": lambda v: isinstance(v, bool),
    "float": _is_number,
    "list[float]": lambda v: isinstance(v, list) and all(map(_is_number, v)),
    # leakage flags and weak-label evidence: readers iterate them (a string's characters,
    # an int's TypeError: the review page's 500, histofetch label's AttributeError)
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list[dict[str, Any]]": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "dict[str, Any]": lambda v: isinstance(v, dict),
}


#: Per row class: ``(field name, annotation, optional, type checks)`` of each field whose
#: annotation :data:`_TYPE_CHECKS` knows, worked out once (it was, for every row read:
#: 100,000 figures spent most of a run's load parsing the same annotations again).
_PLANS: dict[type, tuple[tuple[str, Any, bool, tuple[Any, ...]], ...]] = {}


def _plan(cls: type) -> tuple[tuple[str, Any, bool, tuple[Any, ...]], ...]:
    if cls not in _PLANS:
        plan = []
        for f in fields(cls):
            kinds = [k.strip() for k in str(f.type).split("|")]
            optional = "None" in kinds
            checks = tuple(_TYPE_CHECKS[k] for k in kinds if k in _TYPE_CHECKS)
            if len(checks) != len(kinds) - optional:  # an annotation we do not know: skip
                continue
            plan.append((f.name, f.type, optional, checks))
        _PLANS[cls] = tuple(plan)
    return _PLANS[cls]


#: The exact types a JSON value of each annotation may have (``type(v)``: a ``bool`` is no
#: ``int``); a value of another type (a list, a subclass) is asked the field's own checks.
_EXACT_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "dict[str, Any]": (dict,),
}

#: Per row class: field name -> (the exact types that pass at once, the field's checks).
_QUICK: dict[type, dict[str, tuple[frozenset[type], tuple[Any, ...]]]] = {}


def _quick(cls: type) -> dict[str, tuple[frozenset[type], tuple[Any, ...]]]:
    """:func:`_plan` by field name, with the exact types each field takes without a call
    (``None`` where it is optional), made once a class."""
    if cls not in _QUICK:
        quick = {}
        for name, annotation, optional, checks in _plan(cls):
            kinds = [k.strip() for k in str(annotation).split("|")]
            exact = {t for k in kinds for t in _EXACT_TYPES.get(k, ())}
            if optional:
                exact.add(type(None))
            quick[name] = (frozenset(exact), checks)
        _QUICK[cls] = quick
    return _QUICK[cls]


def _check_row(cls: type, row: dict[str, Any], where: str) -> None:
    """Schema check of one row: field types, stage and label values (ManifestError);
    ``where`` names the row. Each value is looked at once, by its exact type first (a
    call per field, for every row read, was most of reading a large run's rows); a row
    that fails is said as :func:`_field_error` says it (the first bad field in the
    class's order)."""
    quick = _quick(cls)
    for name, value in row.items():
        spec = quick.get(name)
        if spec is None or type(value) in spec[0]:
            continue
        for check in spec[1]:
            if check(value):
                break
        else:
            _field_error(cls, row, where)
    if cls is Record and row.get("stage", "searched") not in STAGES:
        raise ManifestError(f"{where}: stage {row['stage']!r} is not one of {', '.join(STAGES)}")
    label = row.get("label")
    if cls is Image and label is not None and label not in IMAGE_LABELS:
        raise ManifestError(f"{where}: label {label!r} is not one of {', '.join(IMAGE_LABELS)}")


def _field_error(cls: type, row: dict[str, Any], where: str) -> NoReturn:
    """Raise the ManifestError of the first field of ``row`` (in the class's order) whose
    value has a type its annotation does not allow."""
    for name, annotation, optional, checks in _plan(cls):
        if name not in row:
            continue
        value = row[name]
        if value is None and optional:
            continue
        for check in checks:  # a loop, not any(): one generator less a field of a row
            if check(value):
                break
        else:
            raise ManifestError(
                f"{where}: field {name!r} is {json.dumps(value)[:60]}, expected {annotation}"
            )
    raise AssertionError(f"{where}: no field of the row is bad")  # _check_row's caller's bug


#: Per row class: every field's default in the class's order (None for one without), the
#: fields with no default, and the fields made by a ``default_factory``; None for a class
#: whose ``__init__`` does more (a ``__post_init__``: not our row classes).
_DEFAULTS: dict[
    type, tuple[dict[str, Any], frozenset[str], tuple[tuple[str, Any], ...]] | None
] = {}


def _new(cls: type, known: dict[str, Any]) -> Any:
    """``cls(**known)`` for a row of known field names, without the generated ``__init__``
    (35 keyword arguments a row: a fifth of reading a large run's rows). The same object:
    the defaults, a ``default_factory``'s new value, the fields in the class's order. A
    row missing a field with no default is left to ``cls(**known)`` (its TypeError)."""
    if cls not in _DEFAULTS:
        every = fields(cls)
        _DEFAULTS[cls] = (
            None
            if hasattr(cls, "__post_init__")
            else (
                {f.name: None if f.default is MISSING else f.default for f in every},
                frozenset(
                    f.name for f in every if f.default is MISSING and f.default_factory is MISSING
                ),
                tuple(
                    (f.name, f.default_factory) for f in every if f.default_factory is not MISSING
                ),
            )
        )
    plan = _DEFAULTS[cls]
    if plan is None or not plan[1] <= known.keys():
        return cls(**known)
    defaults, _, factories = plan
    values = defaults.copy()
    values.update(known)  # each key keeps its place: the class's order
    for name, factory in factories:
        if name not in known:
            values[name] = factory()
    obj = object.__new__(cls)
    obj.__dict__ = values
    return obj


def _from_dict(cls: type, data: dict[str, Any], where: str, *, named: bool = False) -> Any:
    """The row ``data`` as ``cls``; ``where`` (a file and line, or the store and the row's
    id if ``named``) starts every ManifestError."""
    if not isinstance(data, dict):  # a stored row's JSON may be any value
        raise ManifestError(f"{where}: {cls.__name__.lower()} row is not a JSON object")
    _check_row(
        cls, data, where if named else f"{where}: {data.get('kind', 'row')} {data.get('id')}"
    )
    names = _name_set(cls)
    if data.keys() <= names:  # most rows: every key a field
        known = data
    else:
        known = {k: v for k, v in data.items() if k in names}
        unknown = {k: v for k, v in data.items() if k not in names}
        # keep fields written by a newer minor version instead of dropping them
        extra = known.get("extra")
        known["extra"] = {**(extra if isinstance(extra, dict) else {}), **unknown}
    try:
        return _new(cls, known)
    except TypeError as exc:
        raise ManifestError(f"{where}: {exc}") from None


#: header keys the tools read back, and the shape each must have (the rest are only written)
_HEADER_LISTS = ("queries", "merged_from")
_HEADER_OBJECTS = ("last_search",)
_HEADER_BOOLS = ("filter_sheets",)


def check_header(query: Any, extra: dict[str, Any], where: str) -> None:
    """The header keys a run's readers use hold what its writers put there: ``query`` is
    text, ``queries`` and ``merged_from`` lists of text, ``last_search`` an object,
    ``filter_sheets`` true or false (a hand-edited ``"false"`` named the sheets). A
    hand-edited ``"queries": 5`` was a TypeError traceback in ``search`` and ``merge``,
    ``"abc"`` three queries of one letter, ``"last_search": 5`` an AttributeError in
    ``run``; each is one ManifestError as the run is read."""
    if query is not None and not isinstance(query, str):
        raise ManifestError(f"{where}: header 'query' is {text_shown(repr(query))}, expected text")
    for key in _HEADER_LISTS:
        value = extra.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            shown = text_shown(repr(value))
            raise ManifestError(f"{where}: header {key!r} is {shown}, expected a list of text")
    for key in _HEADER_OBJECTS:
        value = extra.get(key, {})
        if not isinstance(value, dict):
            shown = text_shown(repr(value))
            raise ManifestError(f"{where}: header {key!r} is {shown}, expected an object")
    for key in _HEADER_BOOLS:  # a hand-edited "false" or 0 read as true
        value = extra.get(key, True)
        if not isinstance(value, bool):
            shown = text_shown(repr(value))
            raise ManifestError(f"{where}: header {key!r} is {shown}, expected true or false")


def _row_json(data: str, where: str) -> dict[str, Any]:
    """A stored row's JSON object; a store from elsewhere may hold any text there (invalid
    JSON, arrays nested 100,000 deep, a 5,000-digit number, ``[1]``): one ManifestError,
    no traceback."""
    try:
        obj = loads_json(data)
    except NotJSON as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: row is not a JSON object")
    return obj


def _stored(cls: type, data: str, store: str, row_id: str) -> Any:
    """A run store's row of table ``records``/``images`` (key ``row_id``) as ``cls``: its
    errors name the store and the row (``run.sqlite: record pmid:1: …``)."""
    key = text_shown(row_id)  # a key cut says so
    where = f"{store}: {'record' if cls is Record else 'image'} {key}"
    return _from_dict(cls, _row_json(data, where), where, named=True)


def _record(data: str, store: str, row_id: str) -> Record:
    return _stored(Record, data, store, row_id)


def _image(data: str, store: str, row_id: str) -> Image:
    return _stored(Image, data, store, row_id)
