"""The offline demo: the whole flow on the embedded SYNTHETIC default, in a few CPU minutes.

Nothing here is demo-only logic: it builds inputs (synthetic patches, a small PDF article)
and then calls the same library functions the CLIs call — histofetch extract → filter,
histomodels train → eval → eval on the manifest → report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from histocore.errors import DomainError, is_missing
from histocore.io import atomic_write_bytes, atomic_write_text, path_line
from histocore.manifest import Manifest


class DemoError(DomainError, RuntimeError):
    """The demo cannot run here (a missing optional package); the message says why."""


#: Which figure of the synthetic article shows what (page = figure number).
FIGURES = {
    1: ("metastasis", "Figure 1. H&E, lymph node with metastatic carcinoma clusters (SYNTHETIC)."),
    2: ("no_metastasis", "Figure 2. H&E, reactive lymph node without tumour (SYNTHETIC)."),
    3: (None, "Figure 3. Model attention heatmap (a colour map, not tissue)."),
    4: (None, "Figure 4. Patch-level accuracy per fold (bar chart)."),
}


def _heatmap(seed: int) -> np.ndarray:
    import matplotlib

    rng = np.random.default_rng(seed)
    field = rng.normal(size=(12, 16))
    field = np.kron(field, np.ones((24, 24)))
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(field, 12)
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    rgba = matplotlib.colormaps["magma"](field)
    return (rgba[..., :3] * 255).astype(np.uint8)


def _bar_chart() -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.bar(["fold 1", "fold 2", "fold 3"], [0.81, 0.84, 0.79], color="#4c72b0")
    ax.set_ylabel("accuracy")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def build_article(path: Path, seed: int = 0) -> Path:
    """A small PDF 'article' with two H&E figures and two distractors, one per page."""
    import pymupdf

    from histomodels.synthetic import make_figure

    images = {
        1: _png(make_figure(4, 6, seed=seed, tumour=True)),
        2: _png(make_figure(4, 6, seed=seed + 1, tumour=False)),
        3: _png(_heatmap(seed)),
        4: _bar_chart(),
    }
    doc = pymupdf.open()
    for page_no, (_, caption) in FIGURES.items():
        page = doc.new_page(width=595, height=842)
        if page_no == 1:
            page.insert_text(
                (50, 60), "A SYNTHETIC article made by the histomodels demo", fontsize=14
            )
        rect = pymupdf.Rect(60, 100, 535, 420)
        page.insert_image(rect, stream=images[page_no], keep_proportion=True)
        page.insert_textbox(pymupdf.Rect(60, 430, 535, 480), caption, fontsize=10)
    data = doc.tobytes()
    doc.close()
    atomic_write_bytes(path, data)
    return path


def run_demo(out: Path, *, minutes: float = 2.0, seed: int = 0, n_train: int = 3000) -> dict:
    """Run the demo into ``out`` and return the summary that is also written to JSON."""
    from rich.console import Console
    from rich.text import Text

    try:  # the demo mines its own article: histofetch is the demo extra, not a dependency
        from histofetch.extract import run_extract
        from histofetch.filter import run_filter
    except ImportError as exc:
        # only what the demo extra installs missing is advice: a pymupdf (or histofetch)
        # that is installed but fails as it imports is a broken install, not a missing one,
        # and keeps its traceback (its ImportError may name no module at all)
        if not is_missing(exc, "histofetch", "pymupdf"):
            raise
        raise DemoError(
            f"the demo needs histofetch ({exc.name} is missing): pip install 'histomodels[demo]'"
        ) from None
    from histomodels.config import TrainConfig
    from histomodels.evaluate import evaluate_checkpoint
    from histomodels.synthetic import write_h5
    from histomodels.training import train

    console = Console(stderr=True, markup=False)  # paths are printed as they are ("o[/x]")
    out = Path(out)
    data = out / "data"
    console.rule(Text("1/6 synthetic PCam-like patches (SYNTHETIC, not real tissue)", style="bold"))
    splits = {"train": (n_train, seed), "val": (600, seed + 1), "test": (600, seed + 2)}
    paths = {}
    for name, (n, s) in splits.items():
        paths[name] = data / f"synthetic_{name}.h5"
        if not paths[name].exists():
            write_h5(paths[name], n, seed=s)
        console.print(f"{name}: {n} patches → {path_line(paths[name])}")

    console.rule(Text("2/6 a small PDF article with figures", style="bold"))
    pdf = build_article(out / "literature" / "synthetic_article.pdf", seed=seed)
    console.print(f"article → {path_line(pdf)}")

    console.rule(Text("3/6 histofetch extract → filter", style="bold"))
    fetch_run = out / "fetch_run"
    console.print(run_extract(fetch_run, [pdf]).line())
    console.print(run_filter(fetch_run, purple=0.3).line())
    with Manifest.load(fetch_run) as manifest:
        # We made the article, so we know each figure's truth: label it as a person would.
        for img in manifest.images.values():
            label = FIGURES.get(img.page or 0, (None, ""))[0]
            if img.kept and label:
                img.label = label
        manifest.save()
        kept = manifest.kept_images()
    console.print(
        f"kept {len(kept)} of {len(manifest.images)} images: pages {[i.page for i in kept]}"
    )

    console.rule(Text("4/6 train the scratch CNN", style="bold"))
    cfg = TrainConfig(
        model="cnn",
        data=str(paths["train"]),
        val=str(paths["val"]),
        epochs=30,
        patience=5,
        time_budget=minutes,
        seed=seed,
    )
    run_dir = out / "run_cnn"
    result = train(cfg, run_dir)  # per-epoch lines: the histomodels.training logger

    console.rule(
        Text("5/6 evaluate: held-out synthetic patches and the literature manifest", style="bold")
    )
    metrics = evaluate_checkpoint(
        run_dir / "best.pt",
        str(paths["test"]),
        run_dir / "eval",
        val=str(paths["val"]),
        n_bootstrap=200,
    )
    external = _external(run_dir / "best.pt", fetch_run, run_dir / "literature_eval")
    shipped = _shipped(paths["test"], fetch_run, out / "pcam_cnn", console)

    console.rule(Text("6/6 report", style="bold"))
    report = _report([run_dir, *shipped.pop("folders", [])], out / "report")

    summary: dict[str, Any] = {
        "note": "SYNTHETIC data: these numbers show the code runs end to end, not clinical value",
        "train_patches": n_train,
        "epochs_run": getattr(result, "epochs_run", None),
        "test": {k: metrics.get(k) for k in ("roc_auc", "accuracy", "recall", "specificity")},
        "literature": external,
        "pretrained_pcam_cnn": shipped,
        "kept_images": len(kept),
        "images": len(manifest.images),
        "report": str(report) if report else None,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    console.rule(Text("done", style="bold"))
    console.print_json(json.dumps(summary, default=str))
    page = path_line(out / "report" / "report.html")
    console.print(f"open {page} for plots, curves and galleries")
    return summary


def _external(checkpoint: Path | str, run: Path, out: Path) -> dict:
    from histomodels.external import evaluate_manifest

    # The demo figures are painted at PCam scale, so the scale is known: say so rather than
    # rely on the nucleus-size estimate (which real, unknown-magnification figures need).
    result = evaluate_manifest(checkpoint, run, out, scale=1.0, n_bootstrap=200)
    keep = ("n_images", "n_tiles", "n_labelled", "top_k")
    summary: dict[str, Any] = {k: result.get(k) for k in keep}
    for agg, metrics in (result.get("image_metrics") or {}).items():
        summary[f"image_roc_auc_{agg}"] = metrics.get("roc_auc")
    summary["image_scores"] = str(out / "image_scores.csv")
    return summary


def _shipped(test: Path, run: Path, out: Path, console: Any) -> dict:
    """The shipped ``pcam-cnn`` (trained on real PCam patches) on the same synthetic test
    set and literature figures, next to the model just trained: no training, no network."""
    from histomodels import pretrained
    from histomodels.evaluate import evaluate_checkpoint

    if "pcam-cnn" not in pretrained.available():
        return {"note": "pcam-cnn is not shipped in this installation"}
    console.print("the shipped pcam-cnn (real PCam training data) on the same data:")
    m = evaluate_checkpoint("pcam-cnn", str(test), out / "eval", n_bootstrap=200, gallery=False)
    summary: dict[str, Any] = {
        "test": {k: m.get(k) for k in ("roc_auc", "accuracy", "recall", "specificity")},
        "threshold_source": m.get("threshold_source"),
        "literature": _external("pcam-cnn", run, out / "literature_eval"),
        # report columns pcam-cnn/eval and pcam-cnn/literature_eval (named by the model)
        "folders": [out / "eval", out / "literature_eval"],
    }
    return summary


def _report(runs: list[Path], out: Path) -> Path:
    from histomodels.report import build_report

    build_report(runs, out, title="histomodels demo (SYNTHETIC data)")
    return out / "report.html"
