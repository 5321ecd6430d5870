"""What ``histofetch merge`` (:mod:`histofetch.merge`) did: :class:`MergeSummary`, its
counts and the lines the command prints from them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from histocore.manifest import Manifest


@dataclass
class MergeSummary:
    runs: int = 0
    #: records and images added to the output
    records: int = 0
    images: int = 0
    #: records whose id or PMCID the output held before this merge (not added again)
    already: int = 0
    #: records and images the inputs hold more than once (left out)
    duplicate_records: int = 0
    duplicate_images: int = 0
    #: inputs → the images of the records this merge adds left out as duplicates → the
    #: copy kept, which this merge adds, where it has no label of its own (their review log
    #: lines are carried about it, as ``same_pdf_images``), or None (the copy kept is the
    #: output's, or labelled itself: their lines are not carried)
    duplicate_images_of: dict[str, dict[str, str | None]] = field(default_factory=dict, repr=False)
    #: review log lines about such images not carried
    duplicate_lines_left: int = 0
    #: records naming neither PMID nor PMCID (``local:<hash>``) left out → the record of
    #: the same PDF bytes (``pdf_sha256``) with a PMID or PMCID kept in their place
    same_pdf: dict[str, str] = field(default_factory=dict)
    #: inputs → the images of their records left out as ``same_pdf`` → the image of the
    #: same bytes this merge added (their review log lines are carried about it), or None
    #: (the output held that image before, or none: their lines are not carried)
    same_pdf_images: dict[str, dict[str, str | None]] = field(default_factory=dict, repr=False)
    #: inputs → those images whose image of the same bytes the output held before this
    #: merge → its id: the lines an earlier merge carried about it are not counted again
    same_pdf_before: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    #: review log lines about such images not carried (no image added in their place)
    same_pdf_lines_left: int = 0
    per_run: dict[str, int] = field(default_factory=dict)
    #: runs named more than once (one folder, however spelt: read once)
    repeated: int = 0
    #: inputs the output's ``merged_from`` names already (merged into it before)
    merged_before: int = 0
    #: folder links inside an input pointing out of it (an ``images/`` moved to another
    #: disk) → how many files the rows name under each, brought from there
    via_links: dict[str, int] = field(default_factory=dict)
    #: such folder links → files the rows name under them that were left behind: no
    #: sha256 on the row to check them by, bytes that do not match it, or unreadable
    left_behind: dict[str, int] = field(default_factory=dict)
    #: review log lines added to the output's log
    log_lines: int = 0
    #: inputs (their folders) → ids of the images this merge added from each: only their
    #: review log lines are carried
    added_images: dict[str, set[str]] = field(default_factory=dict, repr=False)
    #: inputs' review logs → why lines of theirs were left out (not JSON objects, or the
    #: whole log: a link, not a regular file)
    log_left_out: dict[str, str] = field(default_factory=dict)
    #: ``.merge-*.part`` files an interrupted merge into the output left, removed
    stale_parts: int = 0
    #: inputs → how many paths their rows name cannot be looked up (a name too long for
    #: the file system, a NUL character, a lone surrogate): files left behind, the rows'
    #: paths kept
    unusable: dict[str, int] = field(default_factory=dict)
    #: such inputs → the first such path and why
    first_unusable: dict[str, str] = field(default_factory=dict)

    #: inputs → how many files their added rows name that are missing there (or no
    #: regular file): the rows added without them
    missing: dict[str, int] = field(default_factory=dict)
    #: such inputs → the first such row and its path
    first_missing: dict[str, str] = field(default_factory=dict)

    def note_missing(self, run: Manifest, row: str, rel: str) -> None:
        """Count a file an added row of ``run`` names that ``run`` does not hold."""
        key = str(run.run_dir)
        self.missing[key] = self.missing.get(key, 0) + 1
        self.first_missing.setdefault(key, f"{row}: {_short(rel)}")

    def note_unusable(self, run: Manifest, rel: str, why: str) -> None:
        """Count a row path of ``run`` that cannot be looked up (``why``), left as it is."""
        key = str(run.run_dir)
        self.unusable[key] = self.unusable.get(key, 0) + 1
        self.first_unusable.setdefault(key, f"{_short(rel)}: {why}")

    def warnings(self) -> list[str]:
        """One line per folder link out of an input that files were brought through or
        left behind at, per input review log whose lines were left out, per input whose
        rows name paths that cannot be looked up, and per input whose added rows name files
        missing there."""
        lines = [f"{log}: {why}" for log, why in self.log_left_out.items()]
        for run, n in self.unusable.items():
            lines.append(
                f"{run}: {plural(n, 'file')} the rows name left behind, "
                f"{'its path' if n == 1 else 'their paths'} not usable here (first: "
                f"{self.first_unusable[run]}); the rows keep the paths as they are"
            )
        for run, n in self.missing.items():
            one = n == 1
            lines.append(
                f"{run}: {plural(n, 'file')} the rows name {'is' if one else 'are'} not there "
                f"(first: {self.first_missing[run]}); "
                + ("its row added without it" if one else "their rows added without them")
            )
        for link in dict.fromkeys([*self.via_links, *self.left_behind]):
            said = []
            if n := self.via_links.get(link, 0):
                said.append(f"{plural(n, 'file')} the rows name under it brought from there")
            if n := self.left_behind.get(link, 0):
                said.append(
                    f"{plural(n, 'file')} left behind (not checked by the row's sha256: "
                    "copy them into the run folder and merge it into a new --out folder)"
                )
            lines.append(
                f"{link}: a folder link out of its run (to {os.path.realpath(link)}); "
                + "; ".join(said)
            )
        return lines

    def line(self) -> str:
        """One line; a clause that would say 0 is left out (a second merge into the same
        output said '0 records, 0 images (4 duplicate records, 0 duplicate images left
        out)', its own records counted as duplicates), and one run is 'run'."""
        counts = [
            plural(n, what) for n, what in ((self.records, "record"), (self.images, "image")) if n
        ]
        added = f"{', '.join(counts)} added" if counts else "nothing new added"
        if self.log_lines:
            added += f", {plural(self.log_lines, 'review log line')} carried"
        notes = (
            [f"{plural(self.repeated, 'run')} named more than once, read once"]
            if self.repeated
            else []
        )
        if self.merged_before:  # its records are 'already in the output', no duplicates
            notes.append(f"{plural(self.merged_before, 'run')} merged into it before")
        if self.already:
            notes.append(f"{plural(self.already, 'record')} already in the output")
        if self.stale_parts:
            notes.append(f"{plural(self.stale_parts, 'leftover .merge-*.part file')} removed")
        left = [
            plural(n, f"duplicate {what}")
            for n, what in ((self.duplicate_records, "record"), (self.duplicate_images, "image"))
            if n
        ]
        if left:
            notes.append(" and ".join(left) + " left out")
        if n := self.duplicate_lines_left:
            # not 'it': beside '1 duplicate record and 1 duplicate image' it named either
            images = "the image" if self.duplicate_images == 1 else "the images"
            notes[-1] += f"; {plural(n, 'review answer')} about {images} not carried"
        if n := len(self.same_pdf):
            notes.append(
                f"{plural(n, 'record')} without PMID or PMCID left out: "
                f"{'its PDF is' if n == 1 else 'their PDFs are'} a known article's "
                f"(e.g. {next(iter(self.same_pdf))} is {next(iter(self.same_pdf.values()))})"
                + (
                    f"; {plural(self.same_pdf_lines_left, 'review answer')} about "
                    f"{'it' if n == 1 else 'them'} not carried"
                    if self.same_pdf_lines_left
                    else ""
                )
            )
        return f"merged {plural(self.runs, 'run')}: {added}" + (
            f" ({', '.join(notes)})" if notes else ""
        )


def plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _short(rel: str, most: int = 60) -> str:
    """``rel`` as a warning names it: cut to ``most`` characters (a 300-character name)."""
    return rel if len(rel) <= most else f"{rel[:most]}… ({len(rel)} characters)"
