"""H&E decision on real papers: precision and recall per signal against labels given by eye.

    python benchmarks/he_filter_eval.py [--shared ../shared] [--run /tmp/he-eval] [--sheets]

Extracts every image of the konrad-gerlach report and the article PDFs in
``fixtures/pdfs`` (none of which the classifier was trained on), runs ``filter`` (panels,
colour, classifier, caption), then re-decides the run with signals switched off
(decide/evaluate.py MODES) and scores each against ``tests/histofetch/data/
he_eval_labels.tsv``. Prints a table and writes ``benchmarks/results/he_filter_eval.json``.
Report only: nothing here feeds back into a threshold. A round that tries a decision
change also scores the shipped decision on the same run (rounds 5 and 6 of issue 14:
``_before_native_scale`` and ``_before_small_images`` in their results files; the code is
in their commits, 924e30e and fecc73e).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("histocore", "histofetch"):
    sys.path.insert(0, str(ROOT / "packages" / pkg / "src"))

from histocore.manifest import Manifest  # noqa: E402
from histofetch.decide.evaluate import evaluate, read_labels  # noqa: E402
from histofetch.extract import run_extract  # noqa: E402
from histofetch.filter import run_filter  # noqa: E402

LABELS = ROOT / "tests" / "histofetch" / "data" / "he_eval_labels.tsv"
EVAL_PDFS = ("data/pdfs/konrad-gerlach_report.pdf", "fixtures/pdfs")


def run_eval(shared: Path, run_dir: Path, *, sheets: bool = False) -> dict:
    """Extract + filter the evaluation PDFs into ``run_dir`` and score every mode."""
    run_extract(run_dir, [shared / p for p in EVAL_PDFS])
    run_filter(run_dir, sheet=sheets)
    manifest = Manifest.load(run_dir)
    labels = read_labels(LABELS)
    result: dict[str, Any] = dict(evaluate(manifest, labels))
    result["_sweep_p_keep"] = sweep(manifest, labels)
    rows = [i for i in manifest.images.values() if i.status == "ok"]
    result["_unlabelled"] = sorted(i.id for i in rows if i.sha256 not in labels)
    return result


def sweep(manifest: Manifest, labels: dict[str, str]) -> dict:
    """Figure-level precision/recall of the default decision at other ``p_keep`` values
    (report only: the shipped default is set on the classifier's validation sources)."""
    from histofetch.decide.evaluate import score
    from histofetch.decide.rules import Thresholds
    from histofetch.filter import decide_image

    figures = [i for i in manifest.images.values() if i.source != "panel" and i.status == "ok"]
    out = {}
    default = Thresholds()
    for p_keep in (0.05, 0.1, 0.15, 0.25, 0.5):
        limits = Thresholds(p_keep=p_keep, p_caption=min(default.p_caption, p_keep))
        for img in figures:
            decide_image(manifest, img, limits)
        s = score(figures, labels)
        out[str(p_keep)] = {"precision": s.precision, "recall": s.recall, "kept": s.kept}
    for img in figures:
        decide_image(manifest, img, Thresholds())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    default_shared = Path(os.environ.get("HISTO_SHARED", ROOT.parent / "shared"))
    ap.add_argument("--shared", type=Path, default=default_shared)
    ap.add_argument("--run", type=Path, default=None, help="Run folder (default: a temp dir).")
    ap.add_argument("--sheets", action="store_true", help="Also write the contact sheets.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/he_filter_eval.json")
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or Path(tmp) / "run"
        result = run_eval(args.shared, run_dir, sheets=args.sheets)
    result["_seconds"] = round(time.time() - t0)
    print(
        f"{'mode':40s} {'unit':8s} {'n':>4s} {'H&E':>4s} {'kept':>4s} {'prec':>6s} {'recall':>6s}"
    )
    for mode, units in result.items():
        if mode.startswith("_"):
            continue
        for unit, s in units.items():
            print(
                f"{mode:40s} {unit:8s} {s['n']:4d} {s['positives']:4d} {s['kept']:4d} "
                f"{s['precision']:6.3f} {s['recall']:6.3f}"
            )
    print("p_keep sweep (figures, report only):", json.dumps(result["_sweep_p_keep"]))
    print(f"unlabelled rows: {len(result['_unlabelled'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
