"""Does recomputing the BatchNorm statistics of a trained CNN help on unseen slides?

Two label-free variants of one checkpoint (default: the shipped ``pcam-cnn``), each paired
with the checkpoint as given on all of PCam valid (slides never trained or selected on),
unseen-slides protocol of ``pcam_real.py``:

- ``precise_bn``: the running means/variances recomputed over the un-augmented ``fit``
  patches (training statistics without the drift of the running average; Wu & Johnson,
  "Rethinking 'Batch' in BatchNorm", 2021);
- ``adabn``: the same over the *report* patches themselves (AdaBN, Li et al. 2016:
  adaptation to the target slides' stain, transductive: it uses the test images, never
  their labels).

Both also report accuracy/recall at the threshold chosen on "select" (Youden's J) as
``pcam_real.py`` does. Writes ``RESULTS/bn_recompute_<name>.json``; ~2 min on 2 cores::

    python benchmarks/bn_recompute.py [--checkpoint pcam-cnn]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def recompute_bn(model, images, mean, std, *, patches: int | None = None, batch_size: int = 256):
    """A copy of ``model`` with its BatchNorm statistics recomputed over ``images`` (uint8
    NHWC; a fixed sample of ``patches`` of them when given), as ``train --precise-bn``
    does before each validation (:func:`recompute_batchnorm`)."""
    import torch

    from histomodels.preprocess import to_input
    from histomodels.training.precise_bn import recompute_batchnorm

    if patches:
        gen = torch.Generator().manual_seed(0)
        images = images[torch.randperm(len(images), generator=gen)[:patches]]
    model = copy.deepcopy(model)
    batches = (
        to_input(images[i : i + batch_size], mean, std, channels_last=True)
        for i in range(0, len(images), batch_size)
    )
    if not recompute_batchnorm(model, batches):
        raise SystemExit("error: the model has no BatchNorm layer")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    import pcam_real
    import recipe_levers
    import torch

    from histocore.io import atomic_write_text
    from histomodels.checkpoint import load_model
    from histomodels.inference import norm_of
    from histomodels.metrics import choose_threshold

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--checkpoint", default="pcam-cnn", help="a checkpoint path or shipped name")
    p.add_argument("--data-dir", type=Path, default=pcam_real.DEFAULT_DATA)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--patches",
        type=int,
        default=0,
        help="precise_bn over a fixed sample of this many fit patches (0: all of them)",
    )
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = pcam_real.dev_splits(args.data_dir)
    x_fit, (x_sel, y_sel), (x_rep, y_rep) = splits["fit"][0], splits["select"], splits["report"]
    model, ckpt = load_model(args.checkpoint)
    mean, std = norm_of(ckpt)
    y_sel, y_rep = y_sel.numpy(), y_rep.numpy()

    def probs(m):
        p_sel, _ = pcam_real.predict(m, x_sel, bf16=False, tta=False)
        p_rep, _ = pcam_real.predict(m, x_rep, bf16=False, tta=False)
        return p_sel, p_rep

    base_sel, base_rep = probs(model)
    variants = {
        "precise_bn": recompute_bn(model, x_fit, mean, std, patches=args.patches),
        "adabn": recompute_bn(model, x_rep, mean, std),
    }
    base_thr, base_rule = choose_threshold(y_sel, base_sel)
    rows = {
        "as_given": {
            "at_0.5": pcam_real.scores(y_rep, base_rep, 0.5),
            "at_select_threshold": {
                **pcam_real.scores(y_rep, base_rep, base_thr),
                "rule": base_rule,
            },
        }
    }
    for name, m in variants.items():
        p_sel, p_rep = probs(m)
        thr, rule = choose_threshold(y_sel, p_sel)
        rows[name] = {
            **recipe_levers.paired_auc(y_rep, base_rep, p_rep),
            "at_0.5": pcam_real.scores(y_rep, p_rep, 0.5),
            "at_select_threshold": {**pcam_real.scores(y_rep, p_rep, thr), "rule": rule},
        }
        r = rows[name]
        print(
            f"{name:>10}: AUC {r['auc']:.4f} (as given {r['baseline_auc']:.4f}, "
            f"Δ {r['delta']:+.4f} [{r['delta_ci'][0]:+.4f}, {r['delta_ci'][1]:+.4f}]), "
            f"acc {r['at_select_threshold']['accuracy']:.3f} / recall "
            f"{r['at_select_threshold']['recall']:.3f} at Youden's J from select"
        )
    out = {
        "checkpoint": str(args.checkpoint),
        "protocol": "unseen-slides: report = all of PCam valid; select = 15% of train.h5",
        "fit_patches": len(x_fit),
        "precise_bn_patches": args.patches or len(x_fit),
        "report_patches": len(y_rep),
        "results": rows,
        "note": "adabn uses the report images (not labels): transductive",
    }
    name = Path(str(args.checkpoint)).stem
    suffix = f"_{args.patches}" if args.patches else ""
    path = args.results / f"bn_recompute_{name}{suffix}.json"
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
