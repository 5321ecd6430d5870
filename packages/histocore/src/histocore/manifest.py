"""The run manifest: the one file format shared by histofetch and histomodels.

A run folder holds ``manifest.jsonl``: line 1 is a header object, every other line is
one row, either an article (``kind == "record"``) or an image taken from it
(``kind == "image"``). Rows are keyed by ``id``; the file is always rewritten whole via
a temp file and ``os.replace`` so a kill at any moment leaves either the old or the new
manifest, never half of one. The schema is documented in ``docs/manifest.md``; bump
``SCHEMA_VERSION`` on any incompatible change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from histocore.io import atomic_write_text

SCHEMA_NAME = "histofetch.manifest"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.jsonl"

#: How far a record has got. Stages skip records already at or past their own stage.
STAGES = ("searched", "downloaded", "extracted", "filtered")
#: Labels a person can give an image (``histomodels label``, ``histofetch review``).
IMAGE_LABELS = ("metastasis", "no_metastasis", "not_usable")
#: Caption-derived weak labels (``Image.weak_label``).
WEAK_LABELS = ("metastasis", "no_metastasis", "abstain")


class ManifestError(ValueError):
    """A manifest file that cannot be read; the message names the file and line."""


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
    #: The route that gave the article's files: "pmc-cloud", "europepmc", or a PDF route.
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
    n_images: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "record"

    def fail(self, stage: str, reason: str) -> None:
        """Mark this record failed at ``stage`` with a one-line reason."""
        self.status, self.failed_stage, self.reason = "failed", stage, reason.splitlines()[0][:500]

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


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(cls)}
    known = {k: v for k, v in data.items() if k in names}
    unknown = {k: v for k, v in data.items() if k not in names}
    if unknown:  # keep fields written by a newer minor version instead of dropping them
        known.setdefault("extra", {}).update(unknown)
    try:
        return cls(**known)
    except TypeError as exc:
        raise ManifestError(f"{where}: {exc}") from None


@dataclass
class Manifest:
    """In-memory manifest of a run folder; ``save()`` writes it atomically."""

    run_dir: Path
    query: str | None = None
    records: dict[str, Record] = field(default_factory=dict)
    images: dict[str, Image] = field(default_factory=dict)
    header_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @classmethod
    def load(cls, run_dir: str | Path, *, create: bool = False) -> Manifest:
        """Read ``run_dir/manifest.jsonl``; with ``create`` an absent one is a new, empty run."""
        run_dir = Path(run_dir)
        path = run_dir / MANIFEST_NAME
        if not path.exists():
            if create:
                return cls(run_dir=run_dir)
            raise ManifestError(f"{path}: no manifest here (is this a histofetch run folder?)")
        manifest = cls(run_dir=run_dir)
        with path.open(encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        if not lines:
            raise ManifestError(f"{path}: empty file, expected a header line")
        for lineno, line in enumerate(lines, start=1):
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"{where}: expected a JSON object")
            if lineno == 1:
                manifest._read_header(obj, where)
                continue
            kind = obj.get("kind")
            if kind == "record":
                rec = _from_dict(Record, obj, where)
                manifest.records[rec.id] = rec
            elif kind == "image":
                img = _from_dict(Image, obj, where)
                manifest.images[img.id] = img
            else:
                raise ManifestError(f"{where}: unknown row kind {kind!r}")
        return manifest

    def _read_header(self, obj: dict[str, Any], where: str) -> None:
        if obj.get("schema") != SCHEMA_NAME:
            raise ManifestError(f"{where}: not a {SCHEMA_NAME} header")
        version = obj.get("version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ManifestError(
                f"{where}: schema version {version!r} is newer than this reader "
                f"({SCHEMA_VERSION}); upgrade histofetch"
            )
        self.query = obj.get("query")
        self.header_extra = {
            k: v for k, v in obj.items() if k not in {"kind", "schema", "version", "query"}
        }

    def header(self) -> dict[str, Any]:
        return {
            "kind": "header",
            "schema": SCHEMA_NAME,
            "version": SCHEMA_VERSION,
            "query": self.query,
            **self.header_extra,
        }

    def rows(self) -> Iterator[dict[str, Any]]:
        """Rows in a stable order: records as added, each followed by its images."""
        by_record: dict[str, list[Image]] = {}
        for img in self.images.values():
            by_record.setdefault(img.record_id, []).append(img)
        for rec in self.records.values():
            yield asdict(rec)
            for img in sorted(by_record.pop(rec.id, []), key=_image_order):
                yield asdict(img)
        for orphans in by_record.values():  # images whose record row is missing
            for img in sorted(orphans, key=_image_order):
                yield asdict(img)

    def save(self) -> Path:
        """Write the whole manifest via temp file + rename (atomic on POSIX)."""
        lines = [json.dumps(self.header(), sort_keys=True)]
        lines += [json.dumps(row, sort_keys=True) for row in self.rows()]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        return self.path

    # -- convenience -----------------------------------------------------------------
    def add_record(self, record: Record) -> Record:
        """Insert or replace a record (keyed by id, so re-adding never duplicates)."""
        self.records[record.id] = record
        return record

    def add_image(self, image: Image) -> Image:
        self.images[image.id] = image
        return image

    def images_of(self, record_id: str) -> list[Image]:
        return sorted(
            (i for i in self.images.values() if i.record_id == record_id), key=_image_order
        )

    def drop_images_of(self, record_id: str) -> None:
        for key in [k for k, i in self.images.items() if i.record_id == record_id]:
            del self.images[key]

    def kept_images(self) -> list[Image]:
        return [i for i in self.images.values() if i.kept and i.status == "ok"]

    def resolve(self, rel: str | None) -> Path | None:
        """Absolute path of a file the manifest names relative to the run folder."""
        if rel is None:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.run_dir / p

    def relative(self, path: str | Path) -> str:
        """Path as stored in the manifest: relative to the run folder when inside it."""
        path = Path(path)
        try:
            return path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())


def _image_order(img: Image) -> tuple[Any, ...]:
    return (img.source != "pdf", img.page or 0, img.id)
