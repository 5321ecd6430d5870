"""Rebuild the shipped ``pcam-cnn`` weights bit for bit from the dev data.

Recipe: first a teacher, EfficientNet-Lite0 from the offline ImageNet weights fine-tuned for
``TEACHER_EPOCHS`` fixed epochs; then the default scratch CNN (``TrainConfig(model="cnn")``
defaults, centre pooling included, plus ``jpeg_blur`` = ``JPEG_BLUR``) distilled from it
(offline 8-view soft targets, :mod:`histomodels.training.distill`) for ``EPOCHS`` fixed
epochs (no time budget, no early stop). Both train on ``train.h5`` minus a stratified 15 %
"select" part (``pcam_real.dev_splits``, seed 1234); the epoch with the best AUC on
"select" is kept, its temperature is fitted on "select", and the operating point is chosen
there (sensitivity >= 0.9, Youden's J alongside). "select" comes from the same PCam-train
slide pool as the training patches. Every figure in the model card is on all of PCam
*valid* (2,907 patches from slides never trained or selected on), with 95 % bootstrap CIs.

Determinism: fixed seed, ``torch.use_deterministic_algorithms(True)``, a fixed thread count
(2), fixed epochs. The same torch build on the same CPU type gives the same bytes; the
weights' sha256 is in the sidecar and in ``benchmarks/results/pcam_cnn_build.json``.
``--check-determinism`` trains twice on a small subset and compares the sha256 of the
weights (a quick proof that the pipeline is deterministic on this machine).

Writes ``OUT/pcam-cnn.safetensors`` (the state dict) and ``OUT/pcam-cnn.json`` (config,
normalisation, temperature, threshold, data, metrics) atomically; by default OUT is the
package's ``histomodels/pretrained/`` folder. Usage::

    nice -n 10 python benchmarks/build_pcam_cnn.py                  # ~20 min on 2 idle cores
    python benchmarks/build_pcam_cnn.py --check-determinism         # two 2-epoch subset builds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histomodels.inference import Predictor
    from histomodels.training.result import TrainResult

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PRETRAINED = HERE.parent / "packages" / "histomodels" / "src" / "histomodels" / "pretrained"
NAME = "pcam-cnn"
EPOCHS = 60
#: distillation teacher: EfficientNet-Lite0 (offline ImageNet weights) fine-tuned for this
#: many fixed epochs on the same fit/select split first; 0 = no teacher
TEACHER_EPOCHS = 6
#: the teacher sees the patches resized to this size inside the model (None: 96 px)
TEACHER_INPUT_SIZE: int | None = None
#: the student's JPEG re-compression / blur augmentation (``TrainConfig.jpeg_blur``)
JPEG_BLUR = 0.5
#: the student's stochastic weight averaging (``TrainConfig.swa``: share of training before
#: the averaging phase; 0 = off, as shipped; measured in docs/benchmarks.md)
SWA = 0.0
THREADS = 2
SEED = 0
SENSITIVITY = 0.9


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_teacher(
    work: Path,
    fit,
    select,
    *,
    epochs: int,
    input_size: int | None = None,
    threads: int = THREADS,
) -> dict:
    """Fine-tune the Lite0 teacher (fixed epochs, deterministic on CPU) on the student's
    splits."""
    from pcam_real import lite0_config

    from histocore.io import file_sha256
    from histomodels.training import train

    cfg = lite0_config(
        model_config={"input_size": input_size} if input_size else {},
        epochs=epochs,
        patience=epochs + 1,
        time_budget=None,
        seed=SEED,
        threads=threads,
        progress=False,
    )
    t0 = time.perf_counter()
    res = train(cfg, work, train_data=fit, val_data=select)
    best = work / "best.pt"
    return {
        "checkpoint": best,
        "model": cfg.model,
        "epochs": epochs,
        "input_size": input_size or 96,
        "best_epoch": res.best_epoch,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "checkpoint_sha256": file_sha256(best),
        "recipe": f"FINETUNE_DEFAULTS + weights lite0-imagenet, fixed epochs, seed 0, {threads} "
        "threads",
    }


def train_recipe(
    fit,
    select,
    work: Path,
    *,
    epochs: int,
    teacher_epochs: int = 0,
    teacher_input_size: int | None = None,
    jpeg_blur: float = 0.0,
    swa: float = 0.0,
    threads: int = THREADS,
) -> tuple[dict | None, TrainResult, float]:
    """The shipped recipe on ``fit``/``select`` arrays: the Lite0 teacher (if
    ``teacher_epochs``), then the distilled scratch CNN in ``work``. Trains on CUDA when it
    is there (``TrainConfig.device`` None). Returns (teacher info, TrainResult, seconds)."""
    from histomodels.config import TrainConfig
    from histomodels.training import train

    teacher = None
    if teacher_epochs:
        teacher = train_teacher(
            work / "teacher",
            fit,
            select,
            epochs=teacher_epochs,
            input_size=teacher_input_size,
            threads=threads,
        )
        print(f"teacher: {teacher['train_seconds'] / 60:.1f} min", file=sys.stderr)
    cfg = TrainConfig(
        model="cnn",
        teacher=str(teacher["checkpoint"]) if teacher else None,
        jpeg_blur=jpeg_blur,
        swa=swa,
        epochs=epochs,
        patience=epochs + 1,  # fixed epochs: no early stop
        time_budget=None,
        seed=SEED,
        threads=threads,
        progress=False,  # the sidecar's train_config is the same however it is run
    )
    t_train = time.perf_counter()
    res = train(cfg, work, train_data=fit, val_data=select)
    return teacher, res, time.perf_counter() - t_train


def score_checkpoint(checkpoint: Path, splits: dict) -> tuple[Predictor, dict, dict]:
    """Calibrate on ``select`` (temperature), choose the operating point there
    (sensitivity >= ``SENSITIVITY``; Youden's J alongside) and score all of ``report``
    (PCam valid), on CPU in fp32. Returns (predictor, metrics, chosen values)."""
    import numpy as np

    from histomodels.calibration import fit_temperature
    from histomodels.inference import Predictor
    from histomodels.metrics import choose_threshold, summarize

    (x_sel, y_sel), (x_rep, y_rep) = splits["select"], splits["report"]
    pred = Predictor.load(checkpoint, device="cpu", precision="fp32")
    sel_logits = pred.logits(x_sel.numpy())
    temperature = fit_temperature(sel_logits, y_sel.numpy())
    p_sel = 1 / (1 + np.exp(-sel_logits.astype(np.float64) / temperature))
    threshold, rule = choose_threshold(y_sel.numpy(), p_sel, sensitivity=SENSITIVITY)
    youden, _ = choose_threshold(y_sel.numpy(), p_sel)

    rep_logits = pred.logits(x_rep.numpy())
    p_rep = 1 / (1 + np.exp(-rep_logits.astype(np.float64) / temperature))
    rep_tta = pred.logits(x_rep.numpy(), tta=True)
    p_rep_tta = 1 / (1 + np.exp(-rep_tta.astype(np.float64) / temperature))
    y = y_rep.numpy()
    metrics = {
        "at_threshold": summarize(y, p_rep, threshold),
        "at_youden": summarize(y, p_rep, youden),
        "at_0.5": summarize(y, p_rep, 0.5),
        "tta_at_threshold": summarize(y, p_rep_tta, threshold),
    }
    chosen = {
        "temperature": temperature,
        "threshold": threshold,
        "threshold_rule": rule,
        "youden_threshold": youden,
    }
    return pred, metrics, chosen


def build(
    data_dir: Path,
    out: Path,
    work: Path,
    *,
    epochs: int,
    limit: int | None,
    quiet: bool,
    teacher_epochs: int = 0,
    teacher_input_size: int | None = None,
    jpeg_blur: float = 0.0,
    swa: float = 0.0,
) -> dict:
    """Train (after the teacher, if any), calibrate, choose the threshold, score on PCam
    valid; write the artefact."""
    import torch
    from pcam_real import SELECT_FRACTION, SPLIT_SEED, TRAIN_ORIGINS, VAL_ORIGINS, dev_splits

    from histocore.cli import setup_logging
    from histocore.io import atomic_write_text
    from histomodels.pretrained import save_pretrained

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    splits = dev_splits(data_dir, "unseen-slides", limit=limit)
    (x_fit, y_fit), (x_sel, y_sel), (_, y_rep) = (splits[k] for k in ("fit", "select", "report"))
    print(
        f"data: fit {len(y_fit)}, select {len(y_sel)} (train.h5), report {len(y_rep)} "
        f"(PCam valid) decoded in {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )
    if not quiet:
        setup_logging()  # one line per epoch on stderr
    fit = (x_fit.numpy(), y_fit.numpy().astype("int64"))
    select = (x_sel.numpy(), y_sel.numpy().astype("int64"))
    teacher, res, train_s = train_recipe(
        fit,
        select,
        work,
        epochs=epochs,
        teacher_epochs=teacher_epochs,
        teacher_input_size=teacher_input_size,
        jpeg_blur=jpeg_blur,
        swa=swa,
    )
    pred, metrics, chosen = score_checkpoint(work / "best.pt", splits)
    temperature, threshold, rule, youden = (
        chosen[k] for k in ("temperature", "threshold", "threshold_rule", "youden_threshold")
    )
    y = y_rep.numpy()
    sidecar = {
        "name": NAME,
        "model": "cnn",
        "model_config": dict(pred.ckpt.get("model_config", {})),
        "input_size": int(pred.ckpt.get("input_size", 96)),
        "normalization": pred.ckpt["normalization"],
        "temperature": round(float(temperature), 6),
        "threshold": round(float(threshold), 6),
        "threshold_rule": rule,
        "youden_threshold": round(float(youden), 6),
        "epoch": int(pred.ckpt["epoch"]),
        "train_config": _portable(pred.ckpt["train_config"]),
        "teacher": ({k: v for k, v in teacher.items() if k != "checkpoint"} if teacher else None),
        "data": {
            "source": "PatchCamelyon (CC0) dev patches, shared/data/pcam_real/dev",
            "fit": f"train.h5 origin_split in {list(TRAIN_ORIGINS)} minus 'select': {len(y_fit)}",
            "select": f"stratified {SELECT_FRACTION:.0%} of train.h5 (seed {SPLIT_SEED}), "
            f"same slide pool as fit: {len(y_sel)}; chose epoch, temperature, threshold",
            "report": f"valid.h5 origin_split in {list(VAL_ORIGINS)} (PCam valid, slides never "
            f"trained or selected on): {len(y)}",
        },
        "metrics_pcam_valid": metrics,
        "licence": "weights trained on PCam (CC0 1.0)",
    }
    out.mkdir(parents=True, exist_ok=True)
    weights = save_pretrained(out / f"{NAME}.safetensors", pred.ckpt["state_dict"])
    sidecar["weights_sha256"] = sha256(weights)
    atomic_write_text(out / f"{NAME}.json", json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    return {
        "sidecar": sidecar,
        "weights": str(weights),
        "weights_bytes": weights.stat().st_size,
        "epochs_run": res.epochs_run,
        "best_epoch": res.best_epoch,
        "train_seconds": round(train_s, 1),
        "teacher_seconds": teacher["train_seconds"] if teacher else 0.0,
        "train_patches_per_s": round(res.train_patches_per_s, 1),
        "history": res.history,
    }


def _portable(train_config: dict) -> dict:
    """The training config with the teacher's local path replaced by where the build keeps
    it (the sidecar must not depend on where the build ran; the teacher's sha256 and recipe
    are in the sidecar's ``teacher``)."""
    cfg = dict(train_config)
    if cfg.get("teacher"):
        from histomodels.pretrained import BUILD_TEACHER

        cfg["teacher"] = BUILD_TEACHER
    return cfg


def main(argv: list[str] | None = None) -> int:
    from pcam_real import DEFAULT_DATA

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=PRETRAINED, help="folder for the weights + sidecar")
    p.add_argument("--work", type=Path, default=HERE / "runs" / NAME, help="training run folder")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument(
        "--teacher-epochs",
        type=int,
        default=TEACHER_EPOCHS,
        help="fine-tune a Lite0 teacher for N epochs first and distil from it (0: none)",
    )
    p.add_argument(
        "--teacher-input-size",
        type=int,
        default=TEACHER_INPUT_SIZE,
        help="resize the patches to this size inside the teacher (default: 96, no resize)",
    )
    p.add_argument("--jpeg-blur", type=float, default=JPEG_BLUR, help="student's jpeg_blur")
    p.add_argument("--swa", type=float, default=SWA, help="student's swa (0 = off)")
    p.add_argument("--limit", type=int, help="only the first N patches of each file (checks)")
    p.add_argument("--results", type=Path, default=HERE / "results" / "pcam_cnn_build.json")
    p.add_argument(
        "--check-determinism",
        action="store_true",
        help="build twice on --limit (default 768) patches for 2 epochs and compare sha256",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    import torch

    from histocore.io import atomic_write_text

    if args.check_determinism:
        limit, epochs = args.limit or 768, 2
        digests = []
        for i in (1, 2):
            folder = args.work.with_name(f"{NAME}-determinism-{i}")
            t0 = time.perf_counter()
            build(
                args.data_dir,
                folder,
                folder / "run",
                epochs=epochs,
                limit=limit,
                quiet=True,
                teacher_epochs=min(args.teacher_epochs, 1),
                teacher_input_size=args.teacher_input_size,
                jpeg_blur=args.jpeg_blur,
                swa=args.swa,
            )
            digests.append(sha256(folder / f"{NAME}.safetensors"))
            print(f"build {i}: sha256 {digests[-1]} ({time.perf_counter() - t0:.0f} s)")
        same = digests[0] == digests[1]
        print("deterministic: identical weights" if same else "NOT deterministic: weights differ")
        return 0 if same else 1

    t0 = time.perf_counter()
    info = build(
        args.data_dir,
        args.out,
        args.work,
        epochs=args.epochs,
        limit=args.limit,
        quiet=args.quiet,
        teacher_epochs=args.teacher_epochs,
        teacher_input_size=args.teacher_input_size,
        jpeg_blur=args.jpeg_blur,
        swa=args.swa,
    )
    info["wall_seconds"] = round(time.perf_counter() - t0, 1)
    info["environment"] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": THREADS,
        "note": "see docs/benchmarks.md for the load the build ran under",
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results, json.dumps(info, indent=1, default=str) + "\n")
    m = info["sidecar"]["metrics_pcam_valid"]["at_threshold"]
    print(
        f"{NAME}: best epoch {info['best_epoch']}/{info['epochs_run']}, "
        f"{info['train_seconds'] / 60:.1f} min, "
        f"PCam valid AUC {m['roc_auc']:.4f} {(m.get('ci') or {}).get('roc_auc')}, "
        f"recall {m['recall']:.3f}, "
        f"specificity {m['specificity']:.3f} at {info['sidecar']['threshold']:.3f}; "
        f"sha256 {info['sidecar']['weights_sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
