"""The Ax tune study on unseen slides (issue 11): record a ``histomodels tune`` folder as a
results JSON, turn its winner into ``pcam_real.py --set`` options, and pair a 60-epoch run
of the winner with the shipped ``pcam-cnn`` on PCam valid.

    python benchmarks/pcam_real.py --write-splits SPLITS              # fit/select/report
    histomodels tune --data SPLITS/train.h5 --val SPLITS/select.h5 --out TUNE \\
        --config BASE.json --trial-epochs 8 --fix width=16 --fix centre=pool \\
        --trials 20 --sobol-trials 8 --threads 2
    histomodels train --config BASE.json --data SPLITS/train.h5 --val SPLITS/select.h5 \
        --out REF --epochs 8 --patience 9 --threads 2                # the base alone
    python benchmarks/tune_unseen_slides.py record TUNE --reference REF --tag _e8
    python benchmarks/tune_unseen_slides.py sets TUNE                 # --set KEY=JSON ...
    python benchmarks/pcam_real.py --runs cnn --budget 0 --epochs 60 --patience 1000 \\
        --threads 2 --seed 0 $(... sets TUNE) --tag _e60_tuned
    python benchmarks/tune_unseen_slides.py pair RUN/best.pt --tag _e60_tuned

``pair`` scores the 2,907 PCam-valid patches with both models (plain and 8-view TTA) and
writes the paired bootstrap Δ AUC (``recipe_levers.paired_auc``, 1,000 resamples).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: trial-record keys kept in the results table
TRIAL_KEYS = ("trial", "status", "val_auc", "val_accuracy", "epochs", "best_epoch", "seconds")


def record(args: argparse.Namespace) -> int:
    """``TUNE`` → ``RESULTS/tune_unseen_slides{tag}.json`` and a markdown table."""
    from histocore.io import atomic_write_text

    tune_dir: Path = args.tune
    trials = json.loads((tune_dir / "trials.json").read_text())
    settings = json.loads((tune_dir / "tune.json").read_text())
    rows = [{**{k: t.get(k) for k in TRIAL_KEYS}, "params": t["params"]} for t in trials]
    done = [r for r in rows if r["status"] == "completed"]
    best = max(done, key=lambda r: r["val_auc"]) if done else None
    doc = {
        "protocol": "unseen-slides: trials fit on 'fit' (6,461 PCam-train patches), objective = "
        "best AUC on 'select' (1,140, same slide pool); PCam valid not seen",
        "limit": trials[0].get("limit") if trials else None,
        "fixed": settings.get("fixed"),
        "base": settings.get("base"),
        "n_trials": len(rows),
        "n_completed": len(done),
        "best": best,
        "trials": rows,
    }
    if args.reference:  # the base config trained the same way, outside the tune
        hist = json.loads((args.reference / "history.json").read_text())
        top = max(hist, key=lambda h: h["val_auc"])
        doc["reference"] = {
            "run": str(args.reference),
            "what": "the base config alone, same epochs, data and seed (histomodels train)",
            "val_auc": top["val_auc"],
            "val_accuracy": top["val_accuracy"],
            "epochs": len(hist),
        }
        print(f"reference (base config): select AUC {top['val_auc']:.4f}", file=sys.stderr)
    out = args.results / f"tune_unseen_slides{args.tag}.json"
    atomic_write_text(out, json.dumps(doc, indent=1, default=str) + "\n")
    names = sorted({k for r in rows for k in r["params"]})
    print("| trial | select AUC | acc. | s | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for r in rows:
        auc = f"{r['val_auc']:.4f}" if r.get("val_auc") is not None else r["status"]
        vals = [_short(r["params"].get(k)) for k in names]
        acc = f"{r['val_accuracy']:.3f}" if r.get("val_accuracy") is not None else ""
        print(f"| {r['trial']} | {auc} | {acc} | {r['seconds']} | " + " | ".join(vals) + " |")
    print(f"→ {out}", file=sys.stderr)
    return 0


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def sets(args: argparse.Namespace) -> int:
    """The winner's config as ``--set KEY=JSON`` options (keys that differ from the
    defaults; ``model_config`` whole)."""
    from histomodels.config import TrainConfig

    best = json.loads((args.tune / "best_config.json").read_text())["config"]
    default = TrainConfig().to_dict()
    out = []
    for key, value in best.items():
        if key in ("seed", "threads", "progress") or value == default.get(key):
            continue
        out += ["--set", f"{key}={json.dumps(value)}"]
    print(shlex.join(out))
    return 0


def pair(args: argparse.Namespace) -> int:
    """Paired Δ AUC (plain and TTA) of ``NEW`` against ``--baseline`` on PCam valid."""
    import numpy as np
    import pcam_real
    import torch
    from recipe_levers import paired_auc

    from histocore.io import atomic_write_text
    from histomodels.inference import Predictor, sigmoid

    torch.set_num_threads(args.threads)
    x_rep, y_rep = pcam_real.dev_splits(args.data_dir, "unseen-slides")["report"]
    images, y = x_rep.numpy(), y_rep.numpy().astype(int)

    def probs(ckpt: str, tta: bool):
        pred = Predictor.load(ckpt, device="cpu", precision="fp32")
        return np.asarray(sigmoid(pred.logits(images, tta=tta)))

    doc = {"baseline": args.baseline, "new": str(args.new)}
    for name, tta in (("plain", False), ("tta", True)):
        doc[name] = paired_auc(y, probs(args.baseline, tta), probs(str(args.new), tta))
        d = doc[name]
        print(
            f"{name}: AUC {d['auc']:.4f} vs {d['baseline_auc']:.4f}, Δ {d['delta']:+.4f} "
            f"[{d['delta_ci'][0]:+.4f}, {d['delta_ci'][1]:+.4f}]"
        )
    out = args.results / f"cnn{args.tag}_paired.json"
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    print(f"→ {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from pcam_real import DEFAULT_DATA

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("record", help="tune folder → results JSON + table")
    r.add_argument("tune", type=Path)
    r.add_argument("--reference", type=Path, help="run folder of the base config alone")
    s = sub.add_parser("sets", help="the winner as pcam_real.py --set options")
    s.add_argument("tune", type=Path)
    q = sub.add_parser("pair", help="paired Δ AUC against the shipped model on PCam valid")
    q.add_argument("new", type=Path, help="checkpoint or run folder")
    q.add_argument("--baseline", default="pcam-cnn")
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    for sp in (r, q):
        sp.add_argument("--tag", default="", help="suffix of the result file name")
        sp.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    return {"record": record, "sets": sets, "pair": pair}[args.action](args)


if __name__ == "__main__":
    raise SystemExit(main())
