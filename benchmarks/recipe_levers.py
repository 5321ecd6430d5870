"""Recipe levers for the scratch CNN, one at a time, on unseen slides (issue 11).

Each lever is the default ``cnn`` config with one key changed (``pcam_real.py --set``),
trained for the same fixed number of epochs and seed on the ``unseen-slides`` protocol
(fit: ``train.h5`` minus 15 % "select"; report: all 2,907 PCam-valid patches, slides never
trained or selected on). A lever is judged by its AUC on the report patches *paired* with
the baseline's: the difference and its 95 % CI come from one bootstrap over patches
(1,000 resamples, the same resample for both models), so slide-level noise shared by the
two runs cancels. The CI covers the patch sample only, not the spread between training
seeds (one seed per lever): a difference whose CI spans 0 is not a finding, and a small one
outside it may still be seed noise.

``run`` trains the levers not yet in ``--work`` (one after the other, through
``pcam_real.main``); ``table`` scores every finished run against the baseline checkpoint
and prints a markdown table, written to ``benchmarks/results/recipe_levers.json``.

    nice -n -19 python benchmarks/recipe_levers.py run --epochs 20 --threads 1
    python benchmarks/recipe_levers.py table --epochs 20 --baseline pcam-cnn

``--baseline RUN`` is the run (or checkpoint) every lever is paired with: the default config
at the same epochs and seed. The levers keep the *current* defaults for every other key, so
once a lever became a default (``centre: pool`` for the cnn, 2026-11-29), later levers are
measured on top of it; the 2026-11-29 figures and which baseline each had are in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: lever name -> TrainConfig keys changed from the defaults (model_config merges)
LEVERS: dict[str, dict] = {
    "ema": {"ema": 0.998},
    "randstain": {"randstain": 0.5},
    "cutout": {"cutout": 0.5},
    "mixup": {"mixup": 0.2},
    "jpegblur": {"jpeg_blur": 0.5},
    "label_smoothing": {"label_smoothing": 0.1},
    "centre_branch": {"model_config": {"centre": "branch"}},
    "centre_pool": {"model_config": {"centre": "pool"}},
    # teacher: EfficientNet-Lite0 fine-tuned on the same fit split, 6 fixed epochs
    # (`pcam_real.py --runs lite0 --budget 0 --epochs 6 --tag _e6`); offline TTA soft targets
    "distill": {"teacher": str(HERE / "runs" / "lite0_e6" / "best.pt")},
    # teacher: `histomodels ensemble` of the undistilled 60-epoch pcam-cnn and lite0_e6
    "distill_ensemble": {"teacher": str(HERE / "runs" / "ens_pcamcnn60_lite0" / "best.pt")},
}
#: the shipped recipe (build_pcam_cnn.py: its Lite0 teacher, JPEG/blur 0.5), plus one change
SHIPPED_TEACHER = HERE / "runs" / "pcam-cnn" / "teacher" / "best.pt"
SHIPPED: dict = {"teacher": str(SHIPPED_TEACHER), "jpeg_blur": 0.5}
LEVERS |= {
    "dw08": SHIPPED | {"distill_weight": 0.8},  # more weight on the teacher's soft targets
    "bs64": SHIPPED | {"batch_size": 64},  # twice the optimiser steps per epoch
    "stainnorm": SHIPPED | {"stain_norm": "macenko"},  # static Macenko, train and eval
    "aug15": SHIPPED | {"aug_strength": 1.5},  # stronger colour/HED jitter (default 1.0)
    "randstain_shipped": SHIPPED | {"randstain": 0.5},  # RandStainNA-style, at 60 epochs
    # 2026-11-30, session 13 (teacher: lite0_e6 retrained by `pcam_real.py --runs lite0
    # --budget 0 --epochs 6 --tag _e6 --threads 2`; pass it with --set teacher=... as these
    # runs did, or keep the shipped build's): BatchNorm statistics recomputed before every
    # validation, so the epoch is chosen with them; stochastic weight averaging over the
    # last quarter (the LR held at 0.1 x lr there; its BN statistics recomputed too)
    "pbn_train": SHIPPED | {"precise_bn": 2048},
    "swa75": SHIPPED | {"swa": 0.75},
}


def tag(lever: str, epochs: int) -> str:
    return f"_e{epochs}_{lever}"


def run(args: argparse.Namespace) -> int:
    import pcam_real

    for lever in args.levers:
        folder = args.work / f"cnn{tag(lever, args.epochs)}"
        if (folder / "best.pt").exists() and not args.force:
            print(f"{lever}: done already ({folder})", file=sys.stderr)
            continue
        sets = [f"{k}={json.dumps(v)}" for k, v in LEVERS[lever].items()]
        argv = ["--runs", "cnn", "--budget", "0", "--epochs", str(args.epochs)]
        argv += ["--patience", "1000", "--threads", str(args.threads), "--quiet"]
        argv += ["--work", str(args.work), "--results", str(args.results)]
        argv += ["--tag", tag(lever, args.epochs)] + [x for s in sets for x in ("--set", s)]
        t0 = time.perf_counter()
        rc = pcam_real.main(argv)
        print(f"{lever}: rc {rc}, {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
        if rc:
            return rc
    return 0


def _probs(checkpoint: str | Path, images):
    from histomodels.inference import Predictor, sigmoid

    pred = Predictor.load(checkpoint, device="cpu", precision="fp32")
    return sigmoid(pred.logits(images))


def paired_auc(y, p_base, p_new, *, resamples: int = 1000, seed: int = 0) -> dict:
    """AUC of both and of their difference, with one paired bootstrap over patches."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    deltas = []
    n = len(y)
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        if y[i].min() == y[i].max():
            continue
        deltas.append(roc_auc_score(y[i], p_new[i]) - roc_auc_score(y[i], p_base[i]))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    base, new = roc_auc_score(y, p_base), roc_auc_score(y, p_new)
    return {
        "auc": round(float(new), 4),
        "baseline_auc": round(float(base), 4),
        "delta": round(float(new - base), 4),
        "delta_ci": [round(float(lo), 4), round(float(hi), 4)],
    }


def table(args: argparse.Namespace) -> int:
    import numpy as np
    import pcam_real
    import torch

    from histocore.io import atomic_write_text

    torch.set_num_threads(args.threads)
    splits = pcam_real.dev_splits(args.data_dir, "unseen-slides")
    x_rep, y_rep = splits["report"]
    images, y = x_rep.numpy(), y_rep.numpy().astype(int)
    p_base = _probs(args.baseline, images)
    rows = []
    for lever in args.levers:
        ckpt = args.work / f"cnn{tag(lever, args.epochs)}" / "best.pt"
        if not ckpt.exists():
            continue
        p_new = _probs(ckpt, images)
        row = {"lever": lever, "changes": LEVERS[lever], "epochs": args.epochs}
        row.update(paired_auc(y, np.asarray(p_base), np.asarray(p_new)))
        result = args.results / f"cnn_unseen_slides{tag(lever, args.epochs)}.json"
        if result.exists():
            rec = json.loads(result.read_text())
            row["train_patches_per_s"] = rec.get("train_patches_per_s")
            row["best_epoch"] = rec.get("best_epoch")
            sel = rec["val"]["at_select_threshold"]
            row.update(accuracy=round(sel["accuracy"], 4), recall=round(sel["recall"], 4))
        rows.append(row)
    print(f"baseline {args.baseline}: report AUC {rows[0]['baseline_auc'] if rows else '?'}")
    print("| lever | changes | AUC | Δ AUC [95% CI, paired] | acc. | recall | best epoch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ch = ", ".join(f"{k}={v}" for k, v in r["changes"].items())
        print(
            f"| {r['lever']} | {ch} | {r['auc']:.4f} | {r['delta']:+.4f} "
            f"[{r['delta_ci'][0]:+.4f}, {r['delta_ci'][1]:+.4f}] | {r.get('accuracy', '')} | "
            f"{r.get('recall', '')} | {r.get('best_epoch', '')} |"
        )
    out = args.results / f"recipe_levers_e{args.epochs}{args.out_tag}.json"
    doc = {"baseline": str(args.baseline), "epochs": args.epochs, "rows": rows}
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    print(f"→ {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from pcam_real import DEFAULT_DATA

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("action", choices=("run", "table"))
    p.add_argument("--levers", default=",".join(LEVERS), help="comma-separated names")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline", default="pcam-cnn", help="checkpoint, run folder or pcam-cnn")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--work", type=Path, default=HERE / "runs")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--force", action="store_true", help="retrain levers already done")
    p.add_argument("--out-tag", default="", help="table: suffix for the result file name")
    args = p.parse_args(argv)
    args.levers = [x.strip() for x in args.levers.split(",") if x.strip()]
    unknown = sorted(set(args.levers) - set(LEVERS))
    if unknown:
        p.error(f"unknown levers {unknown}; known: {', '.join(LEVERS)}")
    return run(args) if args.action == "run" else table(args)


if __name__ == "__main__":
    sys.exit(main())
