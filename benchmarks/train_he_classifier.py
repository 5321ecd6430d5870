"""Train histofetch's H&E image check and write ``histofetch/pretrained/he_classifier.safetensors``.

    nice -n 10 python benchmarks/train_he_classifier.py [--shared ../shared] [--epochs 7]

Reads ``/work/shared`` (``$HISTO_SHARED``) at train time only; nothing from it is committed.
Deterministic for a given ``--seed`` on one machine (CPU, fixed thread count).

Classes: ``he`` (H&E), ``ihc``, ``pas`` (PAS and other special stains), ``fluor`` (IF,
FISH, greyscale fluorescence), ``cyto`` (cytology, blood smears, gross photos), ``graphic``
(plots, heatmaps and overlays on tissue, colour maps, diagrams, text pages).

Material (he_classifier_data.py, he_classifier_material.py; sizes in the model card
``histofetch/pretrained/he_classifier.md`` and ``benchmarks/results/he_classifier.json``):

* real: PCam patches (a random 600, the 150 darkest and the 11 with pigment), Camelyon16
  tiles, Camelyon17 centre tiles, the TIAToolbox target, ``stain_types/`` (all five
  classes), the sinanbertan report's figures and text pages, text pages of the image-less
  fixture PDFs;
* made from real H&E by physics: IHC (HED deconvolution: eosin → DAB, nuclear DAB, a
  haematoxylin-only counterstain with faint DAB, and weak diffuse DAB in place of the
  eosin), special stains (PAS-like: eosin → magenta + dark-magenta membranes; Jones
  silver, Masson trichrome, picrosirius red), fluorescence, alpha-blended
  heatmaps/masks/filled contour maps;
* drawn: colour-mapped scalar fields and matplotlib UMAP/scatter/bar charts in pink and
  purple palettes;
* H&E made harder (stays ``he``): blur, colour shift, black padding, JPEG, drawn
  annotations (boxes, arrows, scale bars, panel letters, text), pigment granules by
  physics (haemosiderin, formalin pigment, melanin, carbon over the kept eosin; a quarter
  of the real H&E tiles also give an explicit pair: pigment → ``he``, pale DAB in place of
  the eosin → ``ihc``), real pigment (the deposits of the 11 pigmented PCam train patches
  pasted onto other H&E), dark haematoxylin-heavy scans, low magnification (sources shrunk
  onto white) and low-power compound tiles (cells of several sources with gutters).

The rule's classifier thresholds (``p_keep``, ``p_caption``, ``p_override``,
``p_override_caption`` of decide/rules.py) are chosen on the validation images (the mean
H&E probability of each held-out image's tiles, as the decision scores an image) by fixed
targets (:data:`TARGETS`) and written to the results JSON; rules.py's defaults must equal
them (tests/histofetch/test_rules.py checks).

The evaluation PDFs (the konrad-gerlach report and the article PDFs in
``fixtures/pdfs``) are NOT used, so docs/benchmarks.md reports on unseen papers.
Validation is held out by source: whole datasets/repositories (listed in ``VAL_SOURCES``)
and everything derived from them.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packages" / "histofetch" / "src"))
from histofetch.decide import classifier as C  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from he_classifier_data import CLASSES, STAIN_CLASS, VAL_SOURCES, build, load_rgb  # noqa: E402


# -- model ------------------------------------------------------------------------------------
def make_model():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [3, 16, 32, 64, 64]
            self.convs = nn.ModuleList(
                nn.Conv2d(a, b, 3, padding=1) for a, b in itertools.pairwise(widths)
            )
            self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
            self.fc = nn.Linear(2 * widths[-1], len(CLASSES))
            self.drop = nn.Dropout(0.2)

        def forward(self, x):
            x = (x / 255.0 - C.MEAN) / C.STD
            for k, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
                x = torch.relu(norm(conv(x)))
                if k < len(self.convs) - 1:
                    x = torch.max_pool2d(x, 2)
            pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
            return self.fc(self.drop(pooled))

    return Net()


def folded(model) -> dict[str, np.ndarray]:
    """Conv weights with batch norm folded in (eval mode), as the numpy forward expects."""
    out = {}
    for name, conv, norm in zip(C.CONV_LAYERS, model.convs, model.norms, strict=True):
        scale = (norm.weight / (norm.running_var + norm.eps).sqrt()).detach()
        out[f"{name}.weight"] = (conv.weight.detach() * scale[:, None, None, None]).numpy()
        out[f"{name}.bias"] = (
            (conv.bias.detach() - norm.running_mean) * scale + norm.bias.detach()
        ).numpy()
    out["fc.weight"] = model.fc.weight.detach().numpy()
    out["fc.bias"] = model.fc.bias.detach().numpy()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def colour_jitter(x, gen):
    """Scanner/stain variation (0…255 tensors): per-image channel gains, brightness,
    contrast and gamma; small enough that DAB stays brown and eosin pink."""
    import torch

    n = x.shape[0]

    def u(lo: float, hi: float, *shape: int):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    x = x / 255.0
    x = x * u(0.9, 1.1, 3, 1, 1) + u(-0.06, 0.06, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.8, 1.2, 1, 1, 1) + mean
    x = x.clamp(0, 1) ** u(0.8, 1.25, 1, 1, 1)
    return x * 255.0


def train(data, epochs: int, seed: int):
    import torch

    torch.manual_seed(seed)
    x, y = data["train"][:2]
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    yt = torch.from_numpy(y).long()
    counts = np.bincount(y, minlength=len(CLASSES))
    weight = torch.tensor(
        (counts.sum() / np.maximum(counts, 1) / len(CLASSES)) ** 0.5, dtype=torch.float32
    )
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 128 + 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        t0 = time.time()
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            batch = colour_jitter(xt[idx], gen)
            loss = torch.nn.functional.cross_entropy(
                model(batch), yt[idx], weight=weight, label_smoothing=0.05
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.time() - t0:.0f}s)",
            file=sys.stderr,
        )
    model.eval()
    return model


#: How decide/rules.py's classifier thresholds are set, on the validation images only (never
#: on the evaluation papers): a veto must keep the given recall of held-out H&E (below it
#: the classifier is confident the image is not H&E); an override of a failed soft colour
#: test must reach the given precision.
TARGETS = {
    "p_keep": ("recall", 0.95),
    "p_caption": ("recall", 0.98),  # the caption names H&E for this image/panel
    "p_override": ("precision", 0.98),
    "p_override_caption": ("precision", 0.95),
}
GRID = [round(float(t), 2) for t in np.arange(0.02, 0.99, 0.02)]


def per_image(p_he: np.ndarray, he: np.ndarray, groups: list[str]) -> tuple[np.ndarray, ...]:
    """Mean H&E probability and label per group (one source image and derivation), as the
    decision scores an image: the mean over its tiles."""
    keys = sorted(set(groups))
    index = {g: i for i, g in enumerate(keys)}
    at = np.array([index[g] for g in groups])
    n = np.bincount(at, minlength=len(keys))
    return np.bincount(at, weights=p_he, minlength=len(keys)) / n, np.bincount(
        at, weights=he, minlength=len(keys)
    ) / n >= 0.5


def report(tensors: dict[str, np.ndarray], data) -> dict:
    """Per-class accuracy, the rule's thresholds (:data:`TARGETS`, chosen per image: the
    mean over each validation image's tiles) and binary H&E precision/recall at
    ``p_keep``, per class and per derivation, on the held-out sources."""
    x, y, names, groups = data["val"]
    logits = np.concatenate([C.forward(tensors, x[i : i + 256]) for i in range(0, len(x), 256)])
    pred = logits.argmax(1)
    p_he = C.softmax(logits)[:, 0]
    he = y == 0
    p_img, he_img = per_image(p_he, he, groups)
    points = operating_points(p_img, he_img)
    thresholds = choose_thresholds(points)
    out: dict = {
        "val_tiles": len(x),
        "val_images": len(p_img),
        "val_he_images": int(he_img.sum()),
        "thresholds": thresholds,
        "per_class": {},
    }
    called = p_he >= thresholds["p_keep"]
    for k, cls in enumerate(CLASSES):
        m = y == k
        out["per_class"][cls] = {
            "n": int(m.sum()),
            "accuracy": round(float((pred[m] == k).mean()), 4) if m.any() else None,
            "called_he_at_p_keep": round(float(called[m].mean()), 4) if m.any() else None,
        }
    out["per_derivation"] = {}
    for name in sorted(set(names)):
        m = np.array([n == name for n in names])
        out["per_derivation"][name] = {
            "n": int(m.sum()),
            "called_he_at_p_keep": round(float(called[m].mean()), 4),
            "correct_he_call": round(float((called[m] == he[m]).mean()), 4),
        }
    tile_points = operating_points(p_he, he)
    out["he_precision_at_p_keep"] = points[str(thresholds["p_keep"])]["precision"]
    out["he_recall_at_p_keep"] = points[str(thresholds["p_keep"])]["recall"]
    out["tile_he_precision_at_p_keep"] = tile_points[str(thresholds["p_keep"])]["precision"]
    out["tile_he_recall_at_p_keep"] = tile_points[str(thresholds["p_keep"])]["recall"]
    out["operating_points"] = points
    out["tile_operating_points"] = tile_points
    return out


def operating_points(p_he: np.ndarray, he: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision/recall of ``p_he ≥ t`` on validation images or tiles, for every ``t`` of
    GRID."""
    points = {}
    for t in GRID:
        called = p_he >= t
        tp = int((called & he).sum())
        points[str(t)] = {
            "precision": round(tp / max(int(called.sum()), 1), 4),
            "recall": round(tp / max(int(he.sum()), 1), 4),
        }
    return points


def choose_thresholds(points: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each threshold of :data:`TARGETS`: the highest ``t`` that keeps the recall target, or
    the lowest that reaches the precision target (the most precise ``t`` when none does).
    An override is never below its veto."""
    out: dict[str, float] = {}
    for name, (metric, target) in TARGETS.items():
        if metric == "recall":
            ok = [t for t in GRID if points[str(t)]["recall"] >= target]
            out[name] = max(ok) if ok else GRID[0]
        else:
            ok = [t for t in GRID if points[str(t)]["precision"] >= target]
            out[name] = min(ok) if ok else max(GRID, key=lambda t: points[str(t)]["precision"])
    out["p_override"] = max(out["p_override"], out["p_keep"])
    out["p_override_caption"] = max(out["p_override_caption"], out["p_caption"])
    return out


def stain_type_errors(shared: Path, tensors: dict[str, np.ndarray], p_keep: float) -> dict:
    """Image-level error rates on ``stain_types`` (H&E rejected / look-alike called H&E at
    ``p_keep``), per class, separately for validation and training sources."""
    base = shared / "data/stain_types"
    tally: dict[str, dict[str, list[int]]] = {"val": {}, "train": {}}
    with (base / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            rgb = load_rgb(base / row["file"])
            tiles = C.grid_tiles(rgb)
            content = C.content_fraction(tiles) >= C.MIN_CONTENT
            probs = C.softmax(C.forward(tensors, tiles[content] if content.any() else tiles))
            is_he = STAIN_CLASS[row["class"]] == "he"
            wrong = (float(probs[:, 0].mean()) >= p_keep) != is_he
            part = "val" if row["source_repo"] in VAL_SOURCES else "train"
            tally[part].setdefault(row["class"], []).append(int(wrong))
    return {
        part: {c: {"n": len(v), "error_rate": round(sum(v) / len(v), 4)} for c, v in d.items()}
        for part, d in tally.items()
    }


def save_safetensors(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """Write float32 tensors as safetensors with a byte-stable header (sorted keys): the
    library's writer orders the metadata as a hash map does, so two identical trainings
    gave different files."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset, blobs = 0, []
    for name in sorted(tensors):
        blob = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        shape = list(tensors[name].shape)
        header[name] = {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("HISTO_SHARED", ROOT.parent / "shared"))
    )
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-image", type=int, default=10, help="Crops per real image (PCam: 2).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="Keep built tiles here (.npz); reuse.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "packages/histofetch/src/histofetch/pretrained" / C.WEIGHTS_NAME,
    )
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/he_classifier.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.cache and args.cache.exists():
        with np.load(args.cache, allow_pickle=False) as z:
            data = {
                p: tuple(z[f"{p}_{key}"] for key in ("x", "y"))
                + tuple(list(z[f"{p}_{key}"]) for key in ("names", "groups"))
                for p in ("train", "val")
            }
    else:
        data = build(args.shared, args.seed, args.per_image)
        if args.cache:
            arrays = {
                f"{part}_{key}": np.asarray(value)
                for part, d in data.items()
                for key, value in zip(("x", "y", "names", "groups"), d, strict=True)
            }
            np.savez(args.cache, allow_pickle=False, **arrays)  # as it is loaded
    sizes = {p: {c: int((d[1] == k).sum()) for k, c in enumerate(CLASSES)} for p, d in data.items()}
    print(f"data: {json.dumps(sizes)} ({time.time() - t0:.0f}s)", file=sys.stderr)
    model = train(data, args.epochs, args.seed)
    tensors = folded(model)
    with torch.no_grad():
        xv = torch.from_numpy(data["val"][0][:64]).permute(0, 3, 1, 2).float()
        diff = float(np.abs(model(xv).numpy() - C.forward(tensors, data["val"][0][:64])).max())
    metrics = report(tensors, data)
    metrics["stain_types_image_errors"] = stain_type_errors(
        args.shared, tensors, metrics["thresholds"]["p_keep"]
    )
    metrics |= {
        "tiles": sizes,
        "numpy_vs_torch_max_abs_diff": diff,
        "seed": args.seed,
        "epochs": args.epochs,
        "seconds": round(time.time() - t0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(
        tensors,
        args.out,
        metadata={
            "classes": json.dumps(CLASSES),
            "tile": str(C.TILE),
            "trained_by": "benchmarks/train_he_classifier.py",
            "seed": str(args.seed),
        },
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
