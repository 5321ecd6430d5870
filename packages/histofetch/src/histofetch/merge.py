"""``histofetch merge RUN... --out RUN``: join run folders (e.g. shards) into one run.

* Records are keyed by id; a record present in several runs is taken once, from the run
  where it got furthest (an ``ok`` record at a later stage wins, ties go to the first run).
  A record already in the output (a second merge into the same folder) is kept as it is
  there: it may hold reviewed labels and decisions, and a merge never deletes what the
  output holds; merge into a new folder to take further-along copies.
* Records with the same PMCID under different ids (an article found by PubMed in one run
  and by PMC in another) are one article: the first is kept.
* Records with the same PDF bytes (``pdf_sha256``) are one article too: a record that
  names neither PMID nor PMCID (``local:<hash>``, a local PDF given to ``extract``) is
  left out where a record with a PMID or PMCID holds the same PDF, one the output holds
  with that PDF or this merge adds (its licence and figures
  are that one's: kept, its images had gone to the ``local:`` record before), and counted
  in ``summary.same_pdf``. Its images' review answers go to the image of the same bytes
  added in its place (log lines carried about it, :mod:`histofetch.merge_logs`; the label
  where that image has none); where the output held that image before, or none of those
  bytes is added (left out with the record), they are counted, not carried (not those an
  earlier merge carried there: a rerun says nothing of them). A ``local:``
  record the output holds stays, with its figures: the known record merged later gets
  none (merge both in one command, or into a new folder).
* What the inputs' stores remember of renamed records is carried: ``renamed:<old id>``
  (a record a search renamed) and ``rename_refused:<old id>`` (see
  :meth:`histocore.store.RunStore.rename_record`).
* An image whose sha256 is already in the merged run (the same figure in two articles, or
  twice in one) is not added again; the record notes it in ``extra["merge_duplicates"]``
  (its image id → the id of the copy kept). Of the copies this merge adds from different
  articles, the one kept is first a whole one (rows ok, its file in its input), then one
  ``filter`` kept (over an undecided one, over one it rejected), then that of the record
  whose licence allows the most reuse
  (:func:`histofetch.licence.reuse_rank`; ties: the first), not simply the first: a CC BY
  copy is not left out for a CC BY-NC one merged before it. A copy the output holds stays.
  A figure and the panels ``filter`` split off it are one unit: a figure copy left out
  takes its panels with it (noted in ``merge_duplicates`` too: → the copy kept of the
  panel's bytes, else of its figure), so no row names a parent the output lacks; a panel
  never replaces a figure (one of a figure's bytes is left out for it).
  The review answers on a copy left out go to the copy kept where this merge adds it and
  it has no label of its own: its label (the newest by ``label_at`` of the copies carried
  to it, ``local:`` ones too: :func:`_carried_labels`; none where its own log's last
  answer about it is an undo), and its log lines carried about it
  (:mod:`histofetch.merge_logs`); else they are counted, not carried
  (``summary.duplicate_lines_left``; a left-out panel's likewise, where an image of its
  bytes is kept, else counted). The licence rule never loses a reviewed copy's
  answers to an unlabelled one, but for a reviewed panel of a figure left out whose
  copy kept has no twin panel: its answers are counted, not carried.
* Where the files the rows name go, and the paths the rows are given:
  :mod:`histofetch.merge_paths`; files copied through part files, and those a killed
  merge left removed: :mod:`histofetch.merge_parts`; the inputs' review logs carried:
  :mod:`histofetch.merge_logs`; what the command prints: :mod:`histofetch.merge_summary`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from dataclasses import replace
from pathlib import Path

from histocore.io import file_in_the_way, locked_folder, unnameable
from histocore.manifest import STAGES, Image, Manifest, ManifestError, Record, run_folder
from histocore.store import RENAME_REFUSED, RENAMED
from histofetch.licence import reuse_rank
from histofetch.merge_logs import (
    LOG_NAME,
    AnswerTime,
    answer_time,
    answered_after,
    check_out_log,
    merge_logs,
    undone,
)
from histofetch.merge_parts import copy_whole, remove_stale_parts
from histofetch.merge_paths import Names, names_for, place_of
from histofetch.merge_summary import MergeSummary

__all__ = ["MergeSummary", "merge_runs"]


def _rank(rec: Record) -> tuple[int, int]:
    stage = STAGES.index(rec.stage) if rec.stage in STAGES else -1
    return (rec.status == "ok", stage)


def merge_runs(sources: list[Path], out: Path) -> MergeSummary:
    """Merge ``sources`` into ``out`` (created, or added to). Raises ManifestError.

    A folder named twice (``shards/1 shards/1``, or once through a link) is read once: its
    records counted as duplicates of themselves before. A second merge into ``out`` while
    one runs is refused (:func:`histocore.io.locked_folder`)."""
    # a run's manifest.jsonl or run.sqlite is its folder, before the guards: the file form
    # of the output got past 'the output cannot also be an input'
    out = run_folder(out)
    unique: dict[object, Path] = {}
    named: dict[object, int] = {}
    for source in map(run_folder, sources):
        key = _folder_key(source)
        unique.setdefault(key, source)
        named[key] = named.get(key, 0) + 1
    if _folder_key(out) in unique:
        raise ManifestError(f"{out}: the output cannot also be an input")
    # every store closed, also on an error; a new output folder removed again if the merge
    # fails before anything is written into it; a second merge into it at once is refused
    # (it chose the same free names, appended the carried review log lines twice,
    # committed over the first)
    busy = functools.partial(ManifestError, f"{out}: another merge is writing to it")
    with locked_folder(out, busy), contextlib.ExitStack() as stores:
        # before anything is written, and under the lock: checked before it, the log could
        # be changed between the check and the lock by the merge holding it
        check_out_log(out / LOG_NAME)
        loaded = [stores.enter_context(Manifest.load(s)) for s in unique.values()]
        merged = stores.enter_context(Manifest.load(out, create=True))
        summary = _merge(loaded, merged)
    summary.repeated = sum(n > 1 for n in named.values())
    return summary


def _folder_key(path: Path) -> object:
    """What tells one folder from another however it is named (links, ``..``, bind
    mounts): its device and inode, or its resolved path where it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return path.resolve()
    return (st.st_dev, st.st_ino)


def _merge(loaded: list[Manifest], merged: Manifest) -> MergeSummary:
    summary = MergeSummary(runs=len(loaded))
    before = set(merged.header_extra.get("merged_from", []))
    summary.merged_before = sum(str(run.run_dir.resolve()) in before for run in loaded)
    best: dict[str, tuple[Record, Manifest]] = {}
    for run in loaded:  # the furthest copy of each record id
        for rec in run.records.values():
            if rec.id not in best or _rank(rec) > _rank(best[rec.id][0]):
                best[rec.id] = (rec, run)
    _refuse_image_id_clashes(best, merged)
    merged.open_store()  # its refusals (a run.sqlite-wal link) before any file is brought
    names = names_for(merged)  # before the stale part files: where sheets/ files go
    summary.stale_parts = remove_stale_parts(merged, loaded, names.sheets)  # none refused
    pmcids = {r.pmcid: r.id for r in merged.records.values() if r.pmcid}
    ids_before, pmcids_before = set(merged.records), set(pmcids)  # the output's own
    hashes = {i.sha256: i.id for i in merged.images.values()}
    same_pdf = _same_pdf(best, merged)
    own_label: set[str] = set()  # added images labelled before: the copy's answers not carried
    adding: list[tuple[Record, Manifest]] = []  # the records this merge adds, in order
    for rid, (rec, run) in best.items():
        if rid in same_pdf:
            summary.same_pdf[rid] = same_pdf[rid]
            continue
        if rid in merged.records or (rec.pmcid and pmcids.get(rec.pmcid, rid) != rid):
            if rid in ids_before or rec.pmcid in pmcids_before:
                summary.already += 1
            else:
                summary.duplicate_records += 1
            continue
        if rec.pmcid:
            pmcids[rec.pmcid] = rid
        adding.append((rec, run))
    keeper, with_figure = _keepers(adding, hashes)
    labelled = _carried_labels(best, same_pdf, {rec.id for rec, _ in adding}, keeper)
    # the copies kept that would take a carried label whose own log ends with an undo
    # (label null): unlabelled by hand, they stay so unless the carried answer is newer
    takers: dict[Path, tuple[Manifest, set[str]]] = {}
    for rec, run in adding:
        for img in run.images_of(rec.id):
            kept = keeper.get(img.sha256)
            if (
                kept is not None
                and kept.id == img.id
                and img.label is None
                and img.sha256 in labelled
            ):
                takers.setdefault(run.run_dir, (run, set()))[1].add(img.id)
    undone_at = {k: v for run, ids in takers.values() for k, v in undone(run, ids).items()}
    for rec, run in adding:
        rid = rec.id
        rec = replace(rec, extra=dict(rec.extra))
        rec.pdf_path = _bring(run, merged, rec.pdf_path, summary, rec.pdf_sha256, names, rid)
        dropped: dict[str, str] = {}
        moved = summary.duplicate_images_of.setdefault(str(run.run_dir), {})
        for img in run.images_of(rid):
            if img.id in with_figure:
                # a panel of a figure copy left out: left out with it; its answers go to the
                # copy of its bytes this merge adds where it has no label, else not carried
                same = keeper.get(img.sha256)
                if same is None:  # the output's copy of its bytes, else its figure's kept
                    dropped[img.id] = hashes.get(img.sha256, with_figure[img.id])
                    moved[img.id] = None
                else:
                    dropped[img.id] = same.id
                    moved[img.id] = same.id if same.label is None else None
                continue
            if img.sha256 not in keeper:  # the output's copy: its own answers stand
                dropped[img.id] = hashes[img.sha256]
                moved[img.id] = None
                continue
            if (kept := keeper[img.sha256]).id != img.id:
                # another copy this merge adds (whole, kept by filter, of a freer licence
                # or the first: _keepers): this one's review answers go to it where it has
                # no label; the label the newest carried (_carried_labels)
                dropped[img.id] = kept.id
                moved[img.id] = kept.id if kept.label is None else None
                continue
            hashes[img.sha256] = img.id
            if img.label is not None:
                own_label.add(img.id)
            elif (copy := labelled.get(img.sha256)) is not None and (
                img.id not in undone_at or answered_after(_answered_at(copy), undone_at[img.id])
            ):  # an undo newer than the newest carried answer (or as old) stands
                img = replace(img, label=copy.label, label_by=copy.label_by, label_at=copy.label_at)
            path = _bring(run, merged, img.path, summary, img.sha256, names, img.id) or img.path
            merged.add_image(replace(img, path=path))
            summary.images += 1
            summary.added_images.setdefault(str(run.run_dir), set()).add(img.id)
        if dropped:
            rec.extra["merge_duplicates"] = dropped
            summary.duplicate_images += len(dropped)
        merged.add_record(rec)
        summary.records += 1
        summary.per_run[str(run.run_dir)] = summary.per_run.get(str(run.run_dir), 0) + 1
    summary.duplicate_records += sum(len(r.records) for r in loaded) - len(best)
    _same_pdf_images(best, hashes, summary, own_label)
    _merge_header(merged, loaded)
    # The log lines before the store: a merge stopped while appending them (SIGKILL, a
    # full disk) has committed nothing, so run again it adds the same images, counts the
    # lines already appended as held and appends the rest (the lines were appended after
    # the commit: run again, it added nothing and carried nothing, the rest lost). And the
    # review page cannot answer about an added image before its carried lines are in.
    merge_logs(loaded, merged.run_dir / LOG_NAME, summary)
    merged.commit()
    merged.add_rename_notes(_rename_notes(loaded, merged))
    merged.export()
    return summary


def _carried_labels(
    best: dict[str, tuple[Record, Manifest]],
    same_pdf: dict[str, str],
    adding: set[str],
    keeper: dict[str, Image],
) -> dict[str, Image]:
    """The bytes (sha256) → the labelled copy whose label the image of those bytes this
    merge adds takes where it has none: of the copies whose answers are carried to it (a
    left-out ``local:`` record's images, the added copies left out for another copy this
    merge adds), the newest answer by ``label_at``, ties to the first in merge order (the
    inputs', each in its order). Their log lines are appended in input order, so the log's
    newest answer is the store's (the first, or a ``local:`` copy's, disagreed with it)."""
    labelled: dict[str, Image] = {}
    for rid, (_, run) in best.items():
        if rid not in same_pdf and rid not in adding:
            continue
        for img in run.images_of(rid):
            if img.label is None or keeper.get(img.sha256, img).id == img.id:
                continue
            now = labelled.get(img.sha256)
            if now is None or answered_after(_answered_at(img), _answered_at(now)):
                labelled[img.sha256] = img
    return labelled


def _answered_at(img: Image) -> AnswerTime:
    """``img.label_at`` as a time (:func:`histofetch.merge_logs.answer_time`)."""
    return answer_time(img.label_at)


def _keepers(
    adding: list[tuple[Record, Manifest]], held: dict[str, str]
) -> tuple[dict[str, Image], dict[str, str]]:
    """The bytes (sha256) of images that the records ``adding`` hold and the output does
    not (``held``) → the copy kept: of copies in different articles, the one whose
    record's licence allows the most reuse (:func:`histofetch.licence.reuse_rank`: a CC BY
    copy, not a CC BY-NC one merged before it), ties to the first; within one record, its
    first copy. Before the licence, a whole copy (:func:`_whole`) is kept before one whose
    file is missing from its input or whose row failed, and then one ``filter`` kept
    (``kept=True``) before an undecided one before one it rejected: the others' review
    answers go to the copy kept (see :func:`_merge`), and a rejected copy took a reviewed,
    kept figure's label out of :meth:`~histocore.manifest.Manifest.kept_images` and the
    review page.

    A figure and the panels ``filter`` split off it are one unit: the figures are chosen
    first, and a figure copy left out takes its panels with it (they name it as their
    ``parent_id``: added, they named a row the output does not hold, and a filter of the
    output split the kept copy into the same pixels again). Those panels are returned
    apart: their image id → the id of their figure's copy kept. The panels of the figures
    kept are chosen among themselves as any image is; a panel of the same bytes as a figure
    (of another article) is left out for that figure, which a panel never replaces."""
    keeper: dict[str, Image] = {}
    rank: dict[str, tuple[bool, int, int]] = {}

    def offer(rec: Record, run: Manifest, img: Image) -> None:
        if img.sha256 in held:
            return
        mine = (_whole(rec, run, img), _KEPT_RANK[img.kept], reuse_rank(rec.license))
        if img.sha256 not in keeper or mine > rank[img.sha256]:
            keeper[img.sha256] = img
            rank[img.sha256] = mine

    def figure_of(run: Manifest, img: Image) -> Image | None:
        parent = run.images.get(img.parent_id) if img.parent_id else None
        return parent if parent is not None and parent.record_id == img.record_id else None

    def kept_of(figure: Image, chosen: dict[str, Image]) -> str:
        same = chosen.get(figure.sha256)
        return same.id if same is not None else held.get(figure.sha256, figure.id)

    # The figures are chosen first and stay chosen: a panel never replaces a figure (a
    # panel of the same bytes as a figure in another article is left out for that figure,
    # its answers going to it), so a figure kept keeps its panels and one left out takes
    # them with it, in one pass whatever the input order (a panel that replaced a figure
    # left that figure's panels named after a row the output lacked, and holding them back
    # in passes lost a kept figure's reviewed panels in chains of three articles).
    for rec, run in adding:  # the figures (rows no row of theirs is the parent of)
        for img in run.images_of(rec.id):
            if figure_of(run, img) is None:
                offer(rec, run, img)
    figures = dict(keeper)
    out: set[str] = set()  # the panels of figures left out
    for rec, run in adding:
        for img in run.images_of(rec.id):
            if (figure := figure_of(run, img)) is None:
                continue
            if figure.id in out or kept_of(figure, figures) != figure.id:
                out.add(img.id)  # a panel of a panel (filter splits none): with it
            elif img.sha256 not in figures:
                offer(rec, run, img)
    with_figure: dict[str, str] = {}
    for rec, run in adding:
        for img in run.images_of(rec.id):
            if (figure := figure_of(run, img)) is None:
                continue
            if figure.id in with_figure:
                with_figure[img.id] = with_figure[figure.id]
            elif img.id in out:
                with_figure[img.id] = kept_of(figure, keeper)
    return keeper, with_figure


_KEPT_RANK = {True: 2, None: 1, False: 0}  # filter's decision: kept, undecided, rejected


def _whole(rec: Record, run: Manifest, img: Image) -> bool:
    """Whether ``img`` is a copy worth keeping: its record's row and its own are ``ok`` and
    its file is in its input. (Kept for its licence, a CC BY copy whose file was missing
    or whose row failed was added without it, the ``ok``, decided CC BY-NC copy left out.)"""
    if rec.status != "ok" or img.status != "ok" or unnameable(img.path):
        return False
    try:
        return run.image_file(img.path).is_file()
    except (ManifestError, OSError):
        return False


def _known(rec: Record) -> bool:
    """Whether ``rec`` says which article it is (a PMID or PMCID: its licence, its route)."""
    return bool(rec.pmid or rec.pmcid)


def _same_pdf(best: dict[str, tuple[Record, Manifest]], merged: Manifest) -> dict[str, str]:
    """The inputs' records naming neither PMID nor PMCID whose PDF bytes (``pdf_sha256``)
    a known record (a PMID or PMCID) holds → that record's id (the first such, the
    output's before the inputs'). They are that article: merged as their own records, they
    took its figures (the same image hashes, added once: to whichever came first), leaving
    the known record with none. A known record counts only where the output holds it with
    that PDF or this merge adds it: one the merge leaves out (its id or PMCID already in
    the output, there without the PDF; a PMCID duplicate) took nothing's place, and the
    ``local:`` record left out for it lost its figures. Nor does a known record without the
    figures that is less far along than the ``local:`` one (``downloaded`` beside an
    ``extracted``, reviewed copy: the output had neither's figures nor the answers). A
    record the output holds is never left out (a merge never deletes what it holds)."""
    known: dict[str, Record] = {}
    for rec in merged.records.values():
        if rec.pdf_sha256 and _known(rec):
            known.setdefault(rec.pdf_sha256, rec)
    # which known records the loop in _merge adds: those whose id and PMCID the output
    # and the records before them do not hold (records left out here have no PMCID, so
    # leaving them out changes nothing of this)
    pmcids = {r.pmcid for r in merged.records.values() if r.pmcid}
    for rid, (rec, _) in best.items():
        if not _known(rec) or rid in merged.records or (rec.pmcid and rec.pmcid in pmcids):
            continue
        if rec.pmcid:
            pmcids.add(rec.pmcid)
        if rec.pdf_sha256:
            known.setdefault(rec.pdf_sha256, rec)
    return {
        rid: known[rec.pdf_sha256].id
        for rid, (rec, _) in best.items()
        if rec.pdf_sha256 in known
        and not _known(rec)
        and rid not in merged.records
        and _takes_its_place(known[rec.pdf_sha256], rec)
    }


def _takes_its_place(known: Record, local: Record) -> bool:
    """The known record holds the article's figures (extracted or further, not failed), or
    is at least as far along as the ``local:`` copy: compared by stage alone, a filtered,
    reviewed copy beside an extracted pmid record was merged too, and its figures (the same
    bytes) went to whichever came first, its answers lost or the known record left bare."""
    holds_figures = known.status == "ok" and _rank(known)[1] >= STAGES.index("extracted")
    return holds_figures or _rank(known) >= _rank(local)


def _same_pdf_images(
    best: dict[str, tuple[Record, Manifest]],
    hashes: dict[str, str],
    summary: MergeSummary,
    own_label: set[str],
) -> None:
    """The images of the ``local:`` records left out (``summary.same_pdf``) → the image of
    the same bytes this merge added (the known article's), or None where the output held
    that image before or holds none, or it came labelled itself (its label stands, and the
    log tells what the store holds): their review log lines are carried about that image
    (answers given on the local copy's review page were lost), or counted as not carried.
    Where the output held that image before, it is noted in ``summary.same_pdf_before``:
    the lines an earlier merge carried about it are there already, not counted again."""
    all_added = set().union(*summary.added_images.values())
    added = all_added - own_label
    for rid in summary.same_pdf:
        run = best[rid][1]
        moved = summary.same_pdf_images.setdefault(str(run.run_dir), {})
        before = summary.same_pdf_before.setdefault(str(run.run_dir), {})
        for img in run.images_of(rid):
            kept = hashes.get(img.sha256)
            moved[img.id] = kept if kept in added else None
            if kept is not None and kept not in all_added:
                before[img.id] = kept


def _rename_notes(loaded: list[Manifest], merged: Manifest) -> dict[str, str]:
    """The inputs' ``renamed:<old id>`` rows whose old id names no record of the output (a
    process holding the old row cannot claim it or write it back there either), and their
    ``rename_refused:<old id>`` rows of records the output holds (a search of the merged
    run meeting the refusal again says it with ``-v`` only, as it would have in the
    shard). The first input's row wins; the output's own are kept."""
    notes: dict[str, str] = {}
    for run in loaded:
        for key, value in run.rename_notes().items():
            refused = key.startswith(RENAME_REFUSED)
            old = key.removeprefix(RENAME_REFUSED if refused else RENAMED)
            if (old in merged.records) == refused:
                notes.setdefault(key, value)
    return notes


def _refuse_image_id_clashes(best: dict[str, tuple[Record, Manifest]], merged: Manifest) -> None:
    """Image ids are the run's keys: one naming images of two records (hand-edited shards)
    would keep one and drop the other silently, its label with it. Checked before anything
    is linked or written."""
    owner = {i.id: (i.record_id, merged.run_dir) for i in merged.images.values()}
    for rid, (_, run) in best.items():
        for img in run.images_of(rid):
            other, where = owner.setdefault(img.id, (rid, run.run_dir))
            if other != rid:
                raise ManifestError(
                    f"{run.run_dir}: image id {img.id!r} of record {rid} is also an image of "
                    f"record {other} (in {where}); nothing merged"
                )


def _merge_header(merged: Manifest, loaded: list[Manifest]) -> None:
    queries = list(merged.header_extra.get("queries", []))
    for run in loaded:
        merged.query = merged.query or run.query
        for query in [run.query, *run.header_extra.get("queries", [])]:
            if query and query != merged.query and query not in queries:
                queries.append(query)
    if queries:
        merged.header_extra["queries"] = queries
    sources = list(merged.header_extra.get("merged_from", []))
    for run in loaded:  # each once: a second merge of a shard listed it twice
        if str(run.run_dir.resolve()) not in sources:
            sources.append(str(run.run_dir.resolve()))
    merged.header_extra["merged_from"] = sources


def _bring(
    run: Manifest,
    merged: Manifest,
    rel: str | None,
    summary: MergeSummary,
    sha256: str | None,
    names: Names,
    row: str,
) -> str | None:
    """Link (or copy) a file named by a source run into the merged run; the new path.
    ``row``: the id of the record or image naming it (a file missing from its run is
    counted in ``summary.missing``, the first named with its row, for a warning).

    A row path is compared, reserved and brought in its normal form: ``pdfs/../pdfs/x.pdf``
    is ``pdfs/x.pdf``, which may be another row's (it was returned as it was, naming that
    row's file in the output), and is reserved also where opening it lands in the output
    (:func:`histofetch.merge_paths._landings`). A path leading out of the run, or
    absolute, is never linked: even when it leads back into the source run
    (``../../a/run/images/x.png``), the same path from the merged folder lands outside it;
    where it lands inside the output, the row gets a name kept from other rows' files.
    A file link pointing out of the run is never read. A folder link inside the run that
    points out (``images/`` moved to a bigger disk) is followed only for a file whose bytes
    hash to the row's ``sha256`` (``pdf_sha256``), copied, and counted in
    ``summary.via_links`` for the command to say so; any other is left behind and counted
    in ``summary.left_behind``. A shard is untrusted: a link to ``~/.ssh`` or ``/proc/self``
    with rows naming files under it would otherwise copy the user's secrets into an output
    meant to be shared; the hash of a file the shard's author has not seen is not theirs
    to write. A path that cannot be looked up (a name too long for the file system, a NUL
    character, a lone surrogate), or that a file in the output stands in the way of (a
    file of another row's where a folder of it would be), is left as it is, its file (if
    any) behind, and counted in
    ``summary.unusable`` for the command to say so: it stopped the merge half done."""
    if rel is None:
        return rel
    if why := unnameable(rel):  # no file has such a name: never looked up (ValueError)
        summary.note_unusable(run, rel, why)
        return rel
    try:
        place = place_of(run, merged, rel, summary, sha256, names, row)
    except OSError as exc:  # a name too long for the file system (or its path), unreadable
        summary.note_unusable(run, rel, (exc.strerror or str(exc)).lower())
        return rel
    if isinstance(place, str):
        return place
    src, dst, link = place
    if not dst.exists() and (in_the_way := file_in_the_way(dst)) is not None:
        # another row's file where a folder of this path would be ("pdfs/x.pdf" of one
        # shard, "pdfs/x.pdf/y.pdf" of another): left behind (it stopped the merge half done)
        blocker, problem = in_the_way
        with contextlib.suppress(ValueError):
            blocker = blocker.relative_to(merged.run_dir)
        summary.note_unusable(run, rel, f"{blocker.as_posix()} in the output: {problem}")
        return rel
    if link is not None:
        summary.via_links[str(link)] = summary.via_links.get(str(link), 0) + 1
    if not dst.exists():
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            # Outside the input: a copy, never a second name of that file.
            if link is not None or not _hard_link(src, dst):
                copy_whole(src, dst)
        except OSError as exc:  # a full disk, a source gone or unreadable
            raise ManifestError(_not_brought(exc, src, dst)) from None
    rel = dst.relative_to(merged.run_dir).as_posix()
    names.brought.update(names.landings(merged, rel))
    return rel


#: What a failed write says, whichever file an error names
_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


def _not_brought(exc: OSError, src: Path, dst: Path) -> str:
    """The error line of a file that could not be brought: the source it could not read, or
    the place it could not write (not the part file it was copied to, gone with it). The
    store is not committed; the files brought before it stay, and a merge run again takes
    them (a candidate holding the same bytes) and brings the rest."""
    problem = (exc.strerror or str(exc)).lower()
    # shutil's in-kernel copy names both files whichever failed: a full disk is the write's
    read = exc.filename is not None and os.fsdecode(exc.filename) == str(src)
    read = read and exc.errno not in _WRITE_ERRORS
    where = f"{src}: cannot be read" if read else f"{dst}: cannot be written"
    return f"{where} ({problem}); records not merged (a merge run again brings the rest)"


def _hard_link(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        return False
    return True
