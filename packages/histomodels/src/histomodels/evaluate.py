"""``histomodels eval``: metrics with confidence intervals, calibration, operating point,
plots and an error gallery for one checkpoint on one labelled patch dataset.

Protocol (so numbers are honest): temperature and threshold are fitted on the *validation*
set only, then frozen and applied to the *test* set. Without a validation set the stored
temperature and the model's shipped threshold (else 0.5) are used, and ``threshold_source``
says so.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from histocore.csvcells import safe_cell
from histocore.errors import UsageError, describe
from histocore.io import (
    NotJSON,
    RefusedFile,
    atomic_write_json,
    atomic_write_text,
    expand_home,
    holds_a_file,
    json_safe,
    loads_json,
    make_parents,
    number_text,
    read_capped,
    same_file,
)
from histocore.progress import task
from histomodels import pretrained
from histomodels.checkpoint import (
    decision_threshold,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from histomodels.choices import STORE_TEMPERATURE, THRESHOLD_RULES
from histomodels.data.base import DatasetError, PatchDataset, pixel_digests, rows_also_in
from histomodels.inference import Predictor, patch_count, sigmoid


def _load(
    data: Any,
    scale: float | None = None,
    size: int = 96,
    fixed: bool = False,
    option: str = "--scale",
    origin_split: str | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """A path (any supported dataset format) or a PatchDataset → arrays; with ``scale``,
    images of any size, each resized and fitted to ``size`` (:class:`ScaledPatches`).
    ``fixed``: the model enlarges smaller input to ``size`` itself (an ensemble member,
    a backbone with an ``input_size``), so images scaled under ``size`` are refused: they
    would be scored at another magnification than ``scale`` says. ``option``: the one that
    sets ``scale``, for the magnification warning. ``origin_split``: keep only those origin
    splits of a path's patches (the encoded HDF5 reader's filter)."""
    from histomodels.data import open_dataset
    from histomodels.data.readers import is_run_folder

    if isinstance(data, (str, Path)) and scale is not None and is_run_folder(expand_home(data)):
        raise DatasetError(
            f"{data}: a histofetch run: its figures are resized by their own factor "
            "(eval --manifest); a scale applies to patch and tile data"
        )
    try:
        if isinstance(data, (str, Path)):
            kw: dict[str, Any] = {} if scale is None else {"patch_size": None}
            ds = open_dataset(
                data, **kw, **({"origin_split": origin_split} if origin_split else {})
            )
        elif origin_split:
            raise ValueError(f"origin_split={origin_split!r} filters a path, not a {type(data)}")
        else:
            ds = data
        if scale is not None:
            ds = ScaledPatches(ds, scale, size, option=option)
        images, labels, ids = ds.load_all()
    except DatasetError as exc:
        if scale is None and re.search(r" px, expected \d+x\d+$", str(exc)):
            # what a folder of 20x/40x tiles meets first: say the option that reads them
            raise DatasetError(
                f"{exc}; for tiles of another size or magnification give {option} F (0.25 "
                "for 40x tiles: PCam is ~10x)"
            ) from None
        raise
    source = str(getattr(ds, "source", data))
    if scale is not None and fixed and images.shape[1:3] != (size, size):
        h, w = images.shape[1:3]
        raise DatasetError(
            f"{source}: at scale {number_text(scale)} the images are {w}x{h} px, and this model "
            f"enlarges its input to {size} px itself (another magnification); give a {option} at "
            f"which they are at least {size} px, or score them with a single model"
        )
    return images, np.asarray(labels, np.int64), list(ids), source


def _input_geometry(pred: Predictor) -> tuple[int, bool]:
    """``pred``'s input size and whether its model resizes its input itself: the ``size``
    and ``fixed`` of :func:`_load`."""
    return int(pred.ckpt.get("input_size", 96)), resizes_input(pred.model)


def resizes_input(model: torch.nn.Module) -> bool:
    """Whether ``model`` resizes what it is given to a fixed size before its network (an
    ensemble's members, a backbone built with an ``input_size``)."""
    from histomodels.models.ensemble import Member
    from histomodels.models.torchvision_zoo import InputResize

    return any(isinstance(m, InputResize | Member) for m in model.modules())


class ScaledPatches(PatchDataset):
    """``base``'s images, each resized by ``scale`` with ``predict --scale``'s resize
    (:func:`histomodels.predict.scaled`), then fitted to the model's ``size`` keeping that
    magnification: a side longer than ``size`` is cut to its central ``size`` px (PCam's
    geometry: the label is about the centre), a shorter one is kept (the models pool over
    the whole map). Under :data:`histomodels.predict.MIN_SCALED_SIDE` px a side, or over the
    readers' pixel limit once resized, an image is refused; images that come out at different
    sizes are one :class:`DatasetError` (a batch holds one size)."""

    def __init__(
        self, base: PatchDataset, scale: float, size: int = 96, option: str = "--scale"
    ) -> None:
        from histomodels.predict import check_scale

        check_scale(scale)
        self.base, self.scale, self.size = base, float(scale), int(size)
        self.option = option  # what sets the scale, for the magnification warning
        self.source = str(getattr(base, "source", "dataset"))
        self.where = str(getattr(base, "root", self.source))  # the folder, for messages
        self._files: list[Path] | None = getattr(base, "files", None)  # FolderDataset's

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        img, label, pid, _ = self._item(index, measure=False)
        return img, label, pid

    def _item(self, index: int, measure: bool) -> tuple[np.ndarray, int, str, list[float]]:
        """The fitted image, its label and id, and (``measure``) the nucleus-size factor of
        the whole resized image (:func:`histomodels.predict.nucleus_scale`, ``[]`` if none)."""
        from histomodels.data.images import MAX_PIXELS
        from histomodels.predict import (
            MIN_SCALED_SIDE,
            PredictInputError,
            nucleus_scale,
            scaled,
            scaled_size,
        )

        img, label, pid = self.base[index]
        where = self._files[index] if self._files is not None else f"{self.where}: {pid}"
        h, w = img.shape[:2]
        try:
            # resized whole before its centre is cut: bounded memory
            scaled_size(where, w, h, self.scale, MAX_PIXELS)
            img = scaled(img, self.scale, where, MIN_SCALED_SIDE,
                         f"{MIN_SCALED_SIDE} px, PCam's label region")  # fmt: skip
        except PredictInputError as exc:
            raise DatasetError(str(exc)) from None
        factors = nucleus_scale(img, self.size) if measure else []
        h, w = img.shape[:2]
        y, x = max(0, (h - self.size) // 2), max(0, (w - self.size) // 2)
        fitted = np.ascontiguousarray(img[y : y + self.size, x : x + self.size])
        return fitted, label, pid, factors

    def labels(self) -> np.ndarray:
        return self.base.labels()

    def ids(self) -> list[str]:
        return self.base.ids()

    def load_all(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Every image resized and fitted, or one :class:`DatasetError` naming the sizes
        they come out at when they differ. The nuclei of the first images (whole, after
        the resize) are measured as ``predict`` does: one warning when they say the scale
        is off (PCam HDF5 patches are too small to measure at a scale under 2)."""
        from histomodels.data.cache import require_memory
        from histomodels.predict import SCALE_CHECK_IMAGES, warn_magnification

        n = len(self)
        if n == 0:
            raise DatasetError(f"{self.where}: no patches")
        require_memory(n * self.size * self.size * 3, self.where)  # fitted: at most size²
        with (
            ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool,
            task(f"decoding and resizing {self.source}", n) as shown,
        ):
            items: list[tuple[np.ndarray, int, str]] = []
            factors: list[float] = []
            for img, label, pid, factor in pool.map(
                lambda i: self._item(i, measure=i < SCALE_CHECK_IMAGES), range(n)
            ):
                items.append((img, label, pid))
                factors += factor
                shown.advance()
        sizes: dict[tuple[int, ...], list[str]] = {}
        for img, _, pid in items:
            sizes.setdefault(img.shape[:2], []).append(pid)
        if len(sizes) > 1:
            by_count = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
            found = ", ".join(f"{w}x{h} px ({len(ids)}, e.g. {ids[0]})"
                              for (h, w), ids in by_count)  # fmt: skip
            raise DatasetError(
                f"{self.where}: at scale {number_text(self.scale)} the images come out at "
                f"{len(sizes)} sizes: {found}; one under {self.size} px a side is scored whole, "
                "so all must share one size: resize or crop them alike, or evaluate each size "
                "apart"
            )
        warn_magnification(factors, self.scale, where=self.where, option=self.option)
        images = np.stack([img for img, _, _ in items])
        labels = np.array([label for _, label, _ in items], dtype=np.int64)
        return images, labels, [pid for _, _, pid in items]


def write_json(path: Path, obj: Any) -> None:
    """``metrics.json``: NumPy numbers as plain ones, NaN as null (:func:`json_safe`)."""
    atomic_write_json(path, json_safe(obj))


#: What ``eval --data`` writes into ``--out`` (:func:`evaluate_checkpoint`)
PATCH_OUTPUTS = ("predictions.csv", "metrics.json", "roc.png", "pr.png", "confusion.png",
                 "reliability.png", "threshold.png", "errors_gradcam.png")  # fmt: skip
#: What ``eval --manifest`` writes into ``--out`` (:func:`histomodels.external.
#: evaluate_manifest`), its ``heatmaps/`` folder besides
MANIFEST_OUTPUTS = ("image_scores.csv", "tile_predictions.csv", "metrics.json", "roc.png",
                    "pr.png", "reliability.png", "errors_sheet.png", "contact_sheet.png",
                    "score_hist_max.png", "score_hist_topk_mean.png")  # fmt: skip
#: The first line of each CSV eval writes, its first columns (tile_predictions.csv: see
#: histomodels.external.evaluate_manifest)
_CSV_STARTS = {"predictions.csv": b"id,label,", "image_scores.csv": b"image_id,record_id,",
               "tile_predictions.csv": b"id,image_id,row,"}  # fmt: skip


def refuse_to_replace_what_eval_did_not_write(
    out: Path, reads: dict[str, str | Path | None], *, manifest: bool
) -> None:
    """A :class:`UsageError` naming the file, before anything is read, when eval would
    replace in ``out`` a file it did not write: one it reads (``reads``: what it is, as
    the message says it, to its path: ``--data x`` with ``x`` our ``predictions.csv``), a
    pipe or device, or any file at one of its names in a folder that holds no earlier
    eval (its ``metrics.json``, or for one that was stopped before it, the first CSV it
    writes, :data:`_CSV_STARTS`): ``--out`` naming a folder of the user's own replaced its
    ``metrics.json``, ``predictions.csv`` (predict's), ``roc.png``. An earlier eval's
    folder is replaced as before, but a ``metrics.json`` that eval did not write is
    refused even there."""
    names = MANIFEST_OUTPUTS if manifest else PATCH_OUTPUTS
    if not out.is_dir():
        return
    would = "eval would replace it: choose another --out"
    held: list[str] = []
    for name in names:
        target = out / name
        for what, path in reads.items():
            if path is not None and same_file(target, path):
                raise UsageError(f"{target}: is {what}; {would}")
        refuse = functools.partial(_refused, target, would)
        if holds_a_file(target, refuse):  # a pipe or device: refused
            held.append(name)
    heatmaps = out / "heatmaps"
    if manifest and heatmaps.is_dir() and any(heatmaps.iterdir()):
        held.append("heatmaps")
    if not held:
        return
    try:
        ours = _earlier_eval(out, held)
        if ours and "metrics.json" in held:
            ours = _eval_metrics(out / "metrics.json")
    except OSError as exc:  # unreadable: an earlier eval or not, it cannot be told
        raise UsageError(describe(exc)) from None
    if not ours:
        name = "metrics.json" if "metrics.json" in held else held[0]
        raise UsageError(
            f"{out / name}: exists and was not written by eval; {would}, or remove it first"
        )


def _refused(path: Path, would: str, problem: str) -> UsageError:
    return UsageError(f"{path}: {problem}; {would}")


def _earlier_eval(out: Path, held: list[str]) -> bool:
    """Whether ``out`` holds an earlier eval: its ``metrics.json`` (``held`` names what is
    there), or one of the CSVs eval writes before it (an eval stopped midway)."""
    if "metrics.json" in held and _eval_metrics(out / "metrics.json"):
        return True
    for name, start in _CSV_STARTS.items():
        if name in held:
            with open(out / name, "rb") as fh:
                if fh.read(len(start)) == start:
                    return True
    return False


def _eval_metrics(path: Path) -> bool:
    """Whether the regular file ``path`` is a ``metrics.json`` eval wrote: a JSON object
    (up to 64 MB) naming the checkpoint and its model. One that cannot be read raises its
    ``OSError``."""
    try:
        obj = loads_json(read_capped(path, 64 << 20))
    except (RefusedFile, NotJSON):
        return False
    return isinstance(obj, dict) and "checkpoint" in obj and "model" in obj


def write_predictions(
    path: Path, ids: list[str], labels: np.ndarray, probs: np.ndarray, threshold: float
) -> None:
    """``predictions.csv``: each probability with 6 decimals, or as many more as it takes
    to be called at ``threshold`` (metrics.json's, printed exactly) as the metrics called
    it (0.99999955 was written ``1.000000``: a tumour call at a threshold of 0.9999996 that
    the metrics did not make)."""
    from histomodels.predict import probability_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label", "probability"])
    for i, y, p in zip(ids, labels, probs, strict=True):
        w.writerow([safe_cell(i), int(y), probability_text(float(p), threshold)])
    atomic_write_text(path, buf.getvalue())


NO_VALIDATION = "no validation set given"  # why eval used the shipped threshold, else 0.5
#: ``warning`` when ``val`` is the test data itself (the same file, by any path or link)
SAME_DATA = (
    "validation and test data are the same: temperature and threshold were fitted on "
    "the test set, so threshold-dependent metrics and calibration are optimistic"
)


def trained_on(ckpt: dict[str, Any], data: Any, origin_split: str | None = None) -> str | None:
    """A warning when ``data`` is the data the checkpoint was trained on, else None: its
    ``train_config``'s ``data`` names the same file (by any path or link; a relative one
    as it reads from here), or a file of the same size whose first and last MiB are the
    same bytes (a copy). Cheap: two stats, at most 4 MiB read. Rows of one encoded file
    split by origin (trained on ``kaggle_train``, tested on ``pcam_valid``) are not the
    training data: no warning when both name origin splits and they share none. Only a
    warning, so it never fails the eval: a recorded path no file system takes (a NUL byte in
    the checkpoint's train_config) or cannot read is no training data here."""
    trained = (ckpt.get("train_config") or {}) if isinstance(ckpt, dict) else {}
    train_data = trained.get("data") if isinstance(trained, dict) else None
    if not isinstance(train_data, str) or not train_data or not isinstance(data, (str, Path)):
        return None
    train_path, test_path = expand_home(train_data), expand_home(data)
    if same_file(train_path, test_path):
        how = "the same file"
    elif _same_content(train_path, test_path):
        how = f"the same bytes as {train_data}"
    else:
        return None
    from histomodels.choices import origin_splits

    train_split = trained.get("origin_split")
    if origin_split and isinstance(train_split, str) and train_split:
        try:
            if not origin_splits(origin_split) & origin_splits(train_split):
                return None  # other rows of the same file
        except UsageError:
            pass
    return (
        f"{data} is the model's training data ({how} as its train_config's data): the "
        "metrics are on patches it was trained on, not on unseen ones"
    )


#: bytes read from each end of two files of one size to tell a copy (:func:`trained_on`)
_ENDS = 1 << 20


def _same_content(a: Path, b: Path) -> bool:
    """Two regular files of one size whose first and last :data:`_ENDS` bytes agree."""
    try:
        if not (a.is_file() and b.is_file()):
            return False
        size = a.stat().st_size
        if size != b.stat().st_size:
            return False
        with a.open("rb") as fa, b.open("rb") as fb:
            for offset in (0, max(size - _ENDS, 0)):
                fa.seek(offset)
                fb.seek(offset)
                if fa.read(_ENDS) != fb.read(_ENDS):
                    return False
        return True
    except (OSError, ValueError):  # ValueError: a NUL byte in a path
        return False


def check_threshold_options(
    val: Any | None, threshold_rule: str | None, sensitivity: float | None
) -> None:
    """The operating-point options agree (before any model or data is loaded).

    A ``threshold_rule`` or ``sensitivity`` without ``val``, or a ``sensitivity`` with the
    rule ``youden``, is a caller's bug (``ValueError``, naming the arguments): a rule is
    applied on validation data, and without it the model's own threshold was used instead,
    silently (the command line refuses ``--threshold-rule`` or ``--sensitivity`` without
    ``--val``, and ``--sensitivity`` with ``youden``, first: usage errors)."""
    if threshold_rule is None:
        threshold_rule = "sensitivity"
    elif val is None:
        raise ValueError(
            f"threshold_rule={threshold_rule!r} needs validation data (val=...): the rule "
            "chooses the threshold there; without it the model's shipped threshold, else 0.5, "
            "is used, so pass threshold_rule=None"
        )
    if threshold_rule not in THRESHOLD_RULES:
        raise UsageError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}")
    if threshold_rule == "youden" and sensitivity is not None:
        raise ValueError(
            f"sensitivity={sensitivity!r} goes with threshold_rule='sensitivity', not 'youden'"
        )
    if val is None and sensitivity is not None:
        raise ValueError(
            f"sensitivity={sensitivity!r} needs validation data (val=...): the operating point "
            "is chosen there; without it the model's shipped threshold, else 0.5, is used, so "
            "pass sensitivity=None"
        )


def operating_point(
    pred: Predictor,
    checkpoint: str | Path,
    val: Any | None,
    infer: Callable[[np.ndarray, str], np.ndarray],
    *,
    default: tuple[float, str],
    threshold_rule: str | None = None,
    sensitivity: float | None = None,
    store_temperature: str = "beside",
    test_digests: list[bytes] | None = None,
    val_scale: float | None = None,
) -> dict[str, Any]:
    """The temperature and the threshold that scores are read with, and where they came from
    (``temperature``, ``threshold``, ``threshold_source``).

    Without ``val``: the model's own temperature and the ``default`` (threshold, source).
    With ``val`` (labelled PCam-style patches, scored by ``infer(images, description)``):
    T fitted there by temperature scaling, the threshold chosen there by
    ``threshold_rule``, ``validation`` (NLL before and after) and ``temperature_stored``
    (T kept as ``store_temperature`` says, for a checkpoint file). With ``test_digests``
    (``pixel_digests`` of the test patches), ``validation.test_patches_also_here`` counts
    the test patches with the same pixels as a validation patch and
    ``validation.patches_also_in_test`` the validation patches with those of a test patch
    (rows: a patch stored twice counts twice). ``val_scale``: the validation images are
    resized by it and fitted to the model's input first (:class:`ScaledPatches`, as
    :func:`evaluate_checkpoint` does the test images), and the temperature fitted on them
    is not stored beside the checkpoint."""
    from histomodels.calibration import fit_temperature, nll
    from histomodels.metrics import DEFAULT_SENSITIVITY, choose_threshold

    if val is None:
        return {"temperature": pred.temperature, "threshold": default[0],
                "threshold_source": default[1]}  # fmt: skip
    v_images, v_labels, _, v_source = _load(
        val, val_scale, *_input_geometry(pred), option="--val-scale"
    )
    if not np.isin(v_labels, (0, 1)).all():
        raise DatasetError(f"{v_source}: validation data must be fully labelled (0/1)")
    if len(np.unique(v_labels)) < 2:  # checked before inference; the error names the file
        named = val if isinstance(val, str | Path) else v_source
        raise DatasetError(f"{named}: validation data holds one class only; a threshold needs both")
    shared = None
    if test_digests is not None:
        v_digests = pixel_digests(v_images)
        shared = (rows_also_in(test_digests, v_digests), rows_also_in(v_digests, test_digests))
    v_logits = infer(v_images, "validation")
    temperature = fit_temperature(v_logits, v_labels)
    rule = threshold_rule or "sensitivity"
    target = (sensitivity or DEFAULT_SENSITIVITY) if rule == "sensitivity" else None
    threshold, how = choose_threshold(v_labels, sigmoid(v_logits, temperature), target)
    point: dict[str, Any] = {  # in the order metrics.json has always shown them
        "validation": {
            "data": v_source,
            "n": len(v_labels),
            "nll_before": nll(v_logits, v_labels),
            "nll_after": nll(v_logits, v_labels, temperature),
            "threshold_chosen_by": how,  # threshold_source's parts, for a CLI to show
        },
    }
    if val_scale is not None:
        point["validation"]["scale"] = float(val_scale)
    if shared is not None:
        point["validation"]["test_patches_also_here"] = shared[0]
        point["validation"]["patches_also_in_test"] = shared[1]
    path = resolve_checkpoint(checkpoint)
    # a shipped model (by its name, also where a file of that name is here) is package data;
    # a checkpoint file saved from one (its "pretrained" key kept) is a file
    shipped = pretrained.shipped_name(checkpoint) is not None
    if not shipped and path.is_file() and val_scale is not None:  # later runs: PCam scale
        point["temperature_stored"] = (
            f"not stored: fitted on images resized by {number_text(val_scale)}; used for "
            "these metrics only"
        )
    elif not shipped and path.is_file():
        point["temperature_stored"] = _store(store_temperature, path, temperature, v_source)
    elif store_temperature != "none":  # package data is not rewritten (it said nothing)
        point["temperature_stored"] = (
            f"not stored: {checkpoint} is a model shipped with histomodels; the temperature "
            "is used for these metrics only"
        )
    point.update(
        temperature=temperature,
        threshold=threshold,
        threshold_source=chosen_on_validation(how, v_source, len(v_labels)),
    )
    return point


def chosen_on_validation(how: str, data: str, n: int) -> str:
    """``threshold_source`` of a threshold chosen on validation data: by ``how``
    (:func:`histomodels.metrics.choose_threshold`'s rule) on ``data``, ``n`` patches (the
    ``validation`` block of metrics.json holds each part)."""
    return f"{how} on validation ({data}, n={n})"


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: Any,
    out: str | Path,
    *,
    val: Any | None = None,
    tta: bool = False,
    batch_size: int = 256,
    sensitivity: float | None = None,
    threshold_rule: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    precision: str = "fp32",
    device: str | None = None,
    store_temperature: str = "beside",
    gallery: bool = True,
    scale: float | None = None,
    val_scale: float | None = None,
    origin_split: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data`` and write metrics.json, predictions.csv and PNGs
    to ``out``. Returns the metrics dict. ``device`` defaults to CUDA when available.

    With ``val``, the operating point is chosen there by ``threshold_rule``: ``sensitivity``
    (the screening default, also for None: the highest threshold keeping ``sensitivity``,
    0.9 unless given, on validation) or ``youden``. Without it, a threshold shipped with the
    model (pretrained models) is used, else 0.5; a ``threshold_rule`` or ``sensitivity``
    then is a ``ValueError``. ``origin_split`` (a comma list) keeps only those origin splits
    of a ``data`` path (encoded HDF5 with ``manifest.csv`` beside it; not of ``val``).

    ``scale`` (tiles at another magnification: 0.25 for 40x, PCam is ~10x): every image of
    ``data`` and ``val``, of any size, is resized by it first and fitted to the model's
    input size (:class:`ScaledPatches`: a centre crop where larger, scored whole where
    smaller); ``scale`` and ``scored_px`` in the result say so. Without it, patches must be
    the model's size. ``val_scale`` resizes ``val`` instead (validation tiles from another
    scanner or magnification; 1: PCam patches as they are); default: ``scale``. A folder's
    label is the whole tile's, not PCam's "tumour in the central 32x32", so such numbers
    are not PCam numbers."""
    check_threshold_options(val, threshold_rule, sensitivity)
    for factor in (scale, val_scale):
        if factor is not None:
            from histomodels.predict import check_scale

            check_scale(factor)
    val_scale = scale if val_scale is None else val_scale
    out = Path(out)
    pred = Predictor.load(checkpoint, device=device, precision=precision)
    ckpt = pred.ckpt

    def infer(images: np.ndarray, desc: str, prepared: bool = False) -> np.ndarray:
        with task(desc, len(images)) as shown:
            return pred.logits(
                images, batch_size=batch_size, tta=tta, progress=shown.advance, prepared=prepared
            )

    images, labels, ids, source = _load(
        data, scale, *_input_geometry(pred), origin_split=origin_split
    )
    test_digests = pixel_digests(images) if val is not None else None
    images = pred.prepare(images)  # as the model sees them (the error gallery shows these)
    result: dict[str, Any] = {
        "checkpoint": pretrained.shown(checkpoint),  # ./pcam-cnn for a file named like it
        "shipped": pretrained.shipped_name(checkpoint) is not None,  # not a file saved from it
        "model": ckpt.get("model"),
        "data": source,
        **({"origin_split": origin_split} if origin_split else {}),  # n is of those rows only
        "tta": bool(tta) or pred.tta_inside,  # the scores average the 8 views either way
        # not "precision": the metric of that name (summarize) would overwrite it
        "inference_precision": pred.precision,
    }
    if pred.tta_inside:
        result["tta_inside_model"] = True
    training = trained_on(ckpt, data, origin_split)
    if training:  # recorded, and said by the CLI on stderr; not an error
        result["training_data_warning"] = training
    if scale is not None:
        result["scale"] = float(scale)
        result["scored_px"] = [int(images.shape[2]), int(images.shape[1])]  # width, height
    threshold, threshold_source = decision_threshold(ckpt, note=NO_VALIDATION)
    if (
        isinstance(val, (str, Path))
        and isinstance(data, (str, Path))
        and (str(val) == str(data) or same_file(val, data))  # by file identity: links too
    ):
        result["warning"] = SAME_DATA
    point = operating_point(
        pred, checkpoint, val, infer, default=(threshold, threshold_source),
        threshold_rule=threshold_rule, sensitivity=sensitivity,
        store_temperature=store_temperature, test_digests=test_digests, val_scale=val_scale,
    )  # fmt: skip
    threshold, temperature = point.pop("threshold"), point["temperature"]
    result.update(point)
    v_info = point.get("validation", {})
    shared, in_test = v_info.get("test_patches_also_here"), v_info.get("patches_also_in_test")
    if shared and "warning" not in result:
        how = "entirely" if in_test == v_info["n"] else "partly"
        result["warning"] = (
            f"{shared} of {len(images)} test patches are also in the validation data "
            f"(identical pixels): temperature and threshold were fitted {how} on the test set "
            f"({in_test} of {v_info['n']} validation patches), so threshold-dependent metrics "
            "and calibration are optimistic"
        )

    logits = infer(images, "test", prepared=True)
    probs = sigmoid(logits, temperature)
    make_parents(out / "predictions.csv")  # a file in the way: a: is a file, not a folder
    write_predictions(out / "predictions.csv", ids, labels, probs, threshold)
    labelled = np.isin(labels, (0, 1))
    result.update(
        patch_metrics(labels, logits, probs, threshold, n_bootstrap=n_bootstrap, seed=seed)
    )
    if not labelled.any():
        result["threshold"] = float(threshold)  # what the probabilities are read with
        write_json(out / "metrics.json", result)
        return result
    y, p = labels[labelled], probs[labelled]

    if len(np.unique(y)) == 2:
        from histomodels import plots

        plots.roc_plot(y, p, out / "roc.png", threshold)
        plots.pr_plot(y, p, out / "pr.png")
        plots.confusion_plot(
            result["tn"],
            result["fp"],
            result["fn"],
            result["tp"],
            out / "confusion.png",
            threshold,
        )
        plots.reliability_plot(y, p, out / "reliability.png")
        plots.threshold_plot(y, p, out / "threshold.png", threshold)
        if gallery:
            from histomodels.explain import error_gallery

            result["gallery"] = error_gallery(
                pred.model,
                images if labelled.all() else images[labelled],
                y,
                p,
                [ids[i] for i in np.flatnonzero(labelled)],
                threshold,
                out / "errors_gradcam.png",
                mean=pred.mean,
                std=pred.std,
            )
    else:
        result["note"] = "only one class present: ROC/PR plots and AUC are undefined"
    write_json(out / "metrics.json", result)
    return result


def patch_metrics(
    labels: np.ndarray,
    logits: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The numbers ``eval --data`` reports for scored patches, as its metrics.json holds
    them: ``n_unlabelled`` (labels not 0/1, left out), then for the labelled ones the
    metrics at ``threshold`` of the (calibrated) probabilities ``probs``, the raw
    ``logits`` read at a temperature, with
    95 % bootstrap CIs (:func:`histomodels.metrics.summarize`: ``roc_auc``, ``accuracy``,
    ``recall``, …, ``ci``), ``at_0.5``, ``threshold_sweep`` and ``uncalibrated`` (Brier,
    ECE and NLL of the raw logits); without any labelled patch only a ``note``."""
    from histomodels.calibration import nll
    from histomodels.metrics import binary_metrics, summarize, threshold_sweep

    labels, logits = np.asarray(labels), np.asarray(logits)
    labelled = np.isin(labels, (0, 1))
    result: dict[str, Any] = {"n_unlabelled": int((~labelled).sum())}
    if not labelled.any():
        result["note"] = "no labels in the data: predictions only, no metrics"
        return result
    y = labels[labelled].astype(np.int64)
    p = np.asarray(probs)[labelled]
    result.update(summarize(y, p, threshold, n_resamples=n_bootstrap, seed=seed))
    result["at_0.5"] = {k: v for k, v in binary_metrics(y, p, 0.5).items() if k != "ci"}
    result["threshold_sweep"] = threshold_sweep(y, p)
    raw_p = sigmoid(logits[labelled])
    result["uncalibrated"] = {
        k: binary_metrics(y, raw_p, threshold)[k] for k in ("brier", "ece")
    } | {"nll": nll(logits[labelled], y)}
    return result


def evaluate_arrays(
    model: Predictor | str | Path | torch.nn.Module,
    images: Any,
    labels: Any = None,
    *,
    threshold: float | None = None,
    tta: bool = False,
    batch_size: int = 256,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on patches in memory, as ``eval --data`` computes them
    (:func:`patch_metrics`), with no file read or written but the model's: a notebook's
    way to the numbers the command line reports.

    ``model``: a :class:`~histomodels.inference.Predictor` (its temperature and
    normalisation; it scores on its own device: ``device`` is ignored), a checkpoint, run
    folder or shipped model's name (loaded as one, on ``device``), or an ``nn.Module``
    mapping normalised ImageNet-style input to one logit per patch (temperature 1; a
    module giving more than one output per patch, say two class logits, is refused rather
    than scored by its first). A module is moved to ``device`` (default: where its
    parameters are; one without parameters needs ``device``) and stays there.
    ``images``: uint8 RGB patches as :meth:`Predictor.logits` takes them, with ``labels``
    (0/1 per patch; others are counted in ``n_unlabelled`` and left out, and labels none
    of which is 0 or 1 are refused), or a :class:`~histomodels.data.base.PatchDataset`
    (``open_dataset(path)``), whose labels are used. ``threshold``: the decision
    threshold, a number in [0, 1], default the model's shipped one, else 0.5 (no
    validation set here: choose one with :func:`histomodels.metrics.choose_threshold` on
    validation scores). ``n_bootstrap``: resamples for the CIs (0: none); ``batch_size``
    at least 1. Returns the metrics dict and ``n``, ``threshold``, ``threshold_source``,
    ``temperature`` and ``tta``; with one class labelled, a ``note`` that AUC is undefined
    (as ``eval``'s)."""
    from histomodels.checkpoint import decision_threshold
    from histomodels.inference import predict_logits

    if isinstance(images, PatchDataset):
        if labels is not None:
            raise ValueError("labels=... goes with image arrays; a dataset brings its own")
        images, labels, _ = images.load_all()
    elif labels is None:
        raise ValueError("labels=... is needed with image arrays (or pass a PatchDataset)")
    _check_arguments(threshold, batch_size, n_bootstrap)
    if labels is not None:  # strings, or 1/2 labels, gave no metrics and no word
        given = np.asarray(labels).reshape(-1)
        if len(given) and not np.isin(given, (0, 1)).any():
            raise ValueError(
                f"labels: none of the {len(given)} is 0 or 1 (the first is {given[0]!r}, "
                f"dtype {given.dtype}); give 0/1 per patch (others are left out as unlabelled)"
            )
    labels = np.asarray(labels).reshape(-1)
    n = patch_count(images)
    if n is not None and n != len(labels):  # before the model is loaded or scores them
        raise ValueError(f"{len(labels)} labels for {n} patch{'' if n == 1 else 'es'}")
    if isinstance(model, str | Path):
        model = Predictor.load(model, device=device)
    if isinstance(model, Predictor):
        logits = model.logits(images, batch_size=batch_size, tta=tta)
        temperature = model.temperature
        cut, source = decision_threshold(model.ckpt, threshold, note=NO_VALIDATION)
    else:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a Predictor, a path or an nn.Module, got {model!r}")
        first = next(model.parameters(), None)
        if device is not None:
            where: str | torch.device = device
        elif first is not None:
            where = first.device
        else:
            raise ValueError("model has no parameters to tell its device by: give device=")
        hook = model.register_forward_hook(_one_logit)
        try:
            logits = predict_logits(model, images, batch_size=batch_size, tta=tta, device=where)
        finally:
            hook.remove()
        temperature = 1.0
        cut, source = decision_threshold({}, threshold, note=NO_VALIDATION)  # else 0.5
    if len(labels) != len(logits):  # an iterable of batches: counted as scored
        n = len(logits)
        raise ValueError(f"{len(labels)} labels for {n} patch{'' if n == 1 else 'es'}")
    result: dict[str, Any] = {"n": len(labels), "threshold": float(cut),
                              "threshold_source": source, "temperature": float(temperature),
                              "tta": bool(tta)}  # fmt: skip
    probs = sigmoid(logits, temperature)
    result.update(patch_metrics(labels, logits, probs, cut, n_bootstrap=n_bootstrap, seed=seed))
    if "note" not in result and len(np.unique(labels[np.isin(labels, (0, 1))])) < 2:
        result["note"] = "only one class present: AUC is undefined"
    return result


def _check_arguments(threshold: Any, batch_size: Any, n_bootstrap: Any) -> None:
    """:func:`evaluate_arrays`' options, each refused with its own line (``threshold=True``
    was taken as 1, ``"0.3"`` failed inside a comparison, ``batch_size=0`` looped on no
    batch, a negative ``n_bootstrap`` gave no CIs without a word)."""
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise TypeError(f"threshold must be a number in [0, 1], got {threshold!r}")
        if not 0 <= threshold <= 1:  # NaN fails too
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    for name, value, least in (("batch_size", batch_size, 1), ("n_bootstrap", n_bootstrap, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")


def _one_logit(module: torch.nn.Module, inputs: Any, output: Any) -> None:
    """Forward hook: refuse a module giving more than one output per patch (two class
    logits were scored by the first, inverting AUC when it is the negative class's)."""
    import torch

    n = len(inputs[0])
    if not isinstance(output, torch.Tensor) or output.numel() != n:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
        raise ValueError(
            f"model gives output {shape} for {n} patches: evaluate_arrays needs one logit "
            "per patch ([N] or [N, 1]); for class logits pass a module returning "
            "logits[:, 1] - logits[:, 0]"
        )


def sidecar_checkpoint(
    checkpoint: str | Path, store_temperature: str, val_scale: float | None
) -> Path | None:
    """The checkpoint file beside which a temperature fitted on validation data is kept as
    its sidecar (:func:`operating_point`'s rule: a checkpoint file, not a shipped model;
    ``store_temperature`` ``"beside"``; not fitted on resized images), else None: what
    ``eval --val`` checks before anything is read (the rule was written out twice)."""
    if pretrained.shipped_name(checkpoint) is not None:  # package data: never written
        return None
    path = resolve_checkpoint(checkpoint)
    if path.is_file() and val_scale is None and store_temperature == "beside":
        return path
    return None


def _store(where: str, checkpoint: Path, temperature: float, source: str) -> bool | str:
    """Keep T ``beside`` the checkpoint (default), ``checkpoint`` (rewrite it) or ``none``."""
    from histomodels.calibration import write_calibration

    if where not in STORE_TEMPERATURE:
        raise UsageError(f"--store-temperature must be one of {', '.join(STORE_TEMPERATURE)}")
    if where == "none":
        return False
    if where == "beside":
        return write_calibration(checkpoint, temperature, source)
    return _store_temperature(checkpoint, temperature, source)


def _store_temperature(checkpoint: str | Path, temperature: float, source: str) -> bool | str:
    """Rewrite the checkpoint with the fitted temperature; a read-only one is left as it is.

    Returns True, or the reason it was not stored (the metrics still use the temperature).
    """
    import os

    path = Path(checkpoint)
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return f"{path} is read-only; temperature used for these metrics but not stored"
    raw = read_checkpoint(path)
    raw["temperature"] = temperature
    raw.setdefault("metrics", {})["temperature_fitted_on"] = source
    try:
        save_checkpoint(path, raw)
    except OSError as exc:  # read-only file system, permissions that os.access missed
        return f"{path}: temperature not stored ({exc.strerror or exc})"
    return True
