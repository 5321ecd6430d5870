"""Stress set for histofetch's H&E decision: per-kind keep rates on training-side material.

    nice -n 10 python benchmarks/he_decision_stress.py [--shared ../shared] [--seed 0]

The evaluation papers (docs/benchmarks.md) only report; a change to the decision rule is
chosen here instead. Real H&E from ``../shared`` (PCam train patches without the
evaluation twins, Camelyon16/17 tiles, ``stain_types/he_other``) is turned into the kinds
of H&E the colour rule used to reject (issue 14): low-power slide thumbnails, small
patches on black or white padding, Gaussian blur, augmentation-style colour shifts, and
red-brown (eosin-heavy, brownish) staining. Negatives: the non-H&E classes of
``stain_types`` (IHC, PAS/special, fluorescence, cytology), look-alikes made from real
H&E by the classifier's material scripts (IHC, special stains, fluorescence, heatmap
overlays), drawn colour fields and pink/purple charts, and the same transforms applied
to IHC/PAS (so that a rule relaxed for padded or blurred H&E is seen admitting padded or
blurred IHC). Every image goes through what ``histofetch filter`` does to one figure:
colour scores, the shipped classifier, panels, then ``decide/rules.py`` without a caption.

Prints keep rates per kind, split by whether the source was held out from the
classifier's training (``held_out``: its validation sources), and writes
``benchmarks/results/he_decision_stress.json``. ``--set p_override=0.6 …`` also decides
with other thresholds (a candidate, side by side); ``--cache FILE`` keeps the measured
scores, so that candidates are compared without reading the images again (with the
settings they were measured with: a cache of other settings is refused). Round 4 of
issue 14 (docs/benchmarks.md) chose a graded override here:
``results/he_decision_stress_round4.json``. Round 5 added patches as ML reports embed them
(he_stress_embeddings.py: matplotlib axes and grids, upscaled, shrunk, JPEG, boxes, frames,
text, beside a saliency map) and chose decide/scale.py here; ``--native off`` measures the
decision as it was before (``--kinds he:up-,neg:up-`` measures some kinds only). Round 6
added images of 32–63 px (he_stress_small.py) and tried judging them (``min_side`` 32 with
a higher classifier bar); the evaluation did not move, so it was reverted:
``results/he_decision_stress_round6.json`` (candidate) and ``_round6_before.json``.
``--grid NAME=V1,V2,…`` counts what one threshold keeps at each value (round 6's
``p_small`` grid: ``results/he_decision_stress_round6_p_small*.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import PIL.Image
from PIL import ImageFilter
from skimage.color import hed2rgb, hsv2rgb, rgb2hed, rgb2hsv

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("histocore", "histofetch"):
    sys.path.insert(0, str(ROOT / "packages" / pkg / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import he_classifier_data as D  # noqa: E402
import he_classifier_material as M  # noqa: E402
import he_classifier_special as S  # noqa: E402
import he_stress_embeddings as E  # noqa: E402
from he_stress_embeddings import _resize  # noqa: E402
from he_stress_embeddings import window as _window  # noqa: E402
from he_stress_report import grid, parse_grid, parse_set, print_report, report  # noqa: E402
from he_stress_small import POOL_FOLDERS, EmptyPool, check_pools, small_items  # noqa: E402

from histofetch.decide import rules, scale  # noqa: E402
from histofetch.filter import score_pixels  # noqa: E402
from histofetch.panels import find_panels  # noqa: E402

#: H&E kinds (what the decision should keep) and what each is made of.
HE_KINDS = ("he:clean", "he:thumb", "he:pad-black", "he:pad-white", "he:blur", "he:colour",
            "he:red-brown")  # fmt: skip
#: Transforms also applied to IHC/PAS, so that a relaxation is seen on both sides.
TRANSFORMS = ("thumb", "pad-black", "pad-white", "blur", "colour", "red-brown")
#: Colour maps of the drawn scalar fields (feature and likelihood maps).
FIELD_CMAPS = ["magma", "inferno", "plasma", "RdPu", "PuRd", "BuPu", "jet", "viridis", "cool",
               "spring"]  # fmt: skip


@dataclass
class Item:
    kind: str  # "he:blur", "real:ihc", "made:pas", "neg:blur", …
    he: bool
    held_out: bool  # the source is one the classifier never trained on
    rgb: np.ndarray


# -- sources ---------------------------------------------------------------------------------
def _rgb(path: Path, side: int = 2048) -> np.ndarray:
    return D.load_rgb(path) if side <= 1024 else np.asarray(PIL.Image.open(path).convert("RGB"))


#: PCam training patches the stress set draws (usable ones: bright, no evaluation twin).
PCAM_PATCHES = 120


def _pcam_patches(shared: Path) -> tuple[list[np.ndarray], list[int]]:
    """PCam ``train.h5``'s patches and the indices of the usable ones; :class:`EmptyPool`
    (one error line) when the file is missing, unreadable or has too few."""
    from histomodels.data.errors import DatasetError

    src = shared / POOL_FOLDERS["pcam"]
    if not src.is_file():
        raise EmptyPool("pcam", problem="no such file (the stress set's 'pcam' pool)")
    try:
        ids, patches = D.pcam_train(shared)
    except (OSError, DatasetError, ValueError) as exc:  # truncated or not HDF5, bad rows
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EmptyPool("pcam", problem=f"cannot read it ({reason})") from None
    ok = [i for i, pid in enumerate(ids) if pid not in D.EVAL_TWINS and patches[i].mean() >= 70]
    if len(ok) < PCAM_PATCHES:
        raise EmptyPool(
            "pcam",
            problem=f"{len(ok)} usable patches (bright, not in an evaluation PDF); the stress "
            f"set draws {PCAM_PATCHES}",
        )
    return patches, ok


def sources(shared: Path, rng: np.random.Generator) -> dict[str, list[tuple[bool, np.ndarray]]]:
    """Pools of (held_out, image): "he" (small and mid-sized H&E), "he_large" (2048 px
    Camelyon17 tiles), and one per non-H&E ``stain_types`` class."""
    patches, ok = _pcam_patches(shared)
    pools: dict[str, list[tuple[bool, np.ndarray]]] = defaultdict(list)
    for i in rng.choice(ok, size=PCAM_PATCHES, replace=False):
        pools["pcam"].append((False, patches[int(i)]))
    for p in sorted((shared / "data/camelyon16_tiles_didsr").rglob("*.webp")):
        pools["he"].append((False, _rgb(p, 256)))
    for p in sorted((shared / "data/camelyon17_centre_tiles").glob("*.jpeg")):
        pools["he_large"].append((True, _rgb(p)))
    base = shared / "data/stain_types"
    if not (base / "labels.csv").is_file():
        raise EmptyPool("ihc", problem="no labels.csv (the look-alike pools are listed there)")
    with (base / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            held = row["source_repo"] in D.VAL_SOURCES
            name = "he" if row["class"] == "he_other" else row["class"]
            pools[name].append((held, _rgb(base / row["file"], 512)))
    return pools


# -- transforms (each keeps the stain; sizes as figures embed them) ---------------------------
def thumb(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A low-power view: the image shrunk 3–16× (anti-aliased), whole or as 1–3 pieces
    with irregular outlines on a white slide background."""
    h, w = rgb.shape[:2]
    factor = rng.uniform(3, 16) if min(h, w) >= 1024 else rng.uniform(2, 4)
    small = _resize(rgb, (max(24, round(w / factor)), max(24, round(h / factor))))
    if rng.random() < 0.5 or min(small.shape[:2]) < 48:
        out = small
    else:  # pieces on a slide
        side = int(min(small.shape[:2]) * rng.uniform(1.2, 1.8))
        canvas = np.full((side, side, 3), int(rng.integers(235, 256)), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            piece = _window(small, rng, 0.4, 0.9)
            size = piece.shape[0]
            shape = M.smooth((size, size), rng, cells=4)
            yy, xx = np.mgrid[:size, :size] / max(size - 1, 1) - 0.5
            inside = (shape - np.hypot(yy, xx) * rng.uniform(0.8, 1.4)) > rng.uniform(-0.2, 0.1)
            oy, ox = (int(rng.integers(0, side - size + 1)) for _ in range(2))
            canvas[oy : oy + size, ox : ox + size][inside] = piece[inside]
        out = canvas
    return out if min(out.shape[:2]) >= 64 else _resize(out, (max(64, out.shape[1]), 64))


def pad(rgb: np.ndarray, rng: np.random.Generator, value: int) -> np.ndarray:
    """A small patch (64–128 px) on uniform padding: all round, or on one or two sides."""
    side = int(rng.integers(64, 129))
    small = _resize(_window(rgb, rng, 0.5, 1.0), (side, side))
    k = [int(rng.integers(4, 48)) for _ in range(4)]  # top, bottom, left, right
    if rng.random() < 0.4:  # only some sides padded (a patch pasted into a grid cell)
        k = [v if rng.random() < 0.5 else 0 for v in k]
    out = np.full((side + k[0] + k[1], side + k[2] + k[3], 3), value, np.uint8)
    out[k[0] : k[0] + side, k[2] : k[2] + side] = small
    return out


def blur(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.choice([96, 128, 192, 256]))
    im = PIL.Image.fromarray(_resize(_window(rgb, rng, 0.5, 1.0), (side, side)))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.5))))


def colour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Augmentation-figure colour: hue rotation, saturation, brightness/contrast, gamma,
    or HED jitter (one or two of them)."""
    side = int(rng.choice([96, 128, 192, 256]))
    out = _resize(_window(rgb, rng, 0.5, 1.0), (side, side)).astype(np.float64) / 255
    for op in rng.choice(["hue", "sat", "bc", "gamma", "hed"], size=int(rng.integers(1, 3)),
                         replace=False):  # fmt: skip
        if op in {"hue", "sat"}:
            hsv = rgb2hsv(out)
            if op == "hue":
                hsv[..., 0] = (hsv[..., 0] + rng.choice([-1, 1]) * rng.uniform(0.02, 0.1)) % 1
            else:
                hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.6), 0, 1)
            out = hsv2rgb(hsv)
        elif op == "bc":
            out = (out - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.12, 0.12)
        elif op == "gamma":
            out = np.clip(out, 0, 1) ** rng.uniform(0.6, 1.6)
        else:
            hed = rgb2hed(M.u8(out))
            hed = hed * rng.uniform(0.7, 1.3, 3) + rng.uniform(-0.02, 0.02, 3)
            out = hed2rgb(hed)
    return M.u8(out)


def red_brown(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Eosin-heavy, brownish H&E: more eosin, less haematoxylin, a little brown (DAB-like)
    density where the tissue is, and a warm white balance."""
    side = int(rng.choice([96, 128, 192, 256]))
    tile = _resize(_window(rgb, rng, 0.5, 1.0), (side, side))
    hed = rgb2hed(tile)
    tissue = np.clip(hed[..., 0] + hed[..., 1], 0, None)
    hed[..., 1] *= rng.uniform(1.2, 2.2)
    hed[..., 0] *= rng.uniform(0.6, 1.0)
    hed[..., 2] += tissue * rng.uniform(0.1, 0.5)
    out = hed2rgb(hed) * np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.75, 0.95)])
    return M.u8(out)


def transform(name: str, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if name == "thumb":
        return thumb(rgb, rng)
    if name in {"pad-black", "pad-white"}:
        return pad(rgb, rng, 0 if name == "pad-black" else int(rng.integers(240, 256)))
    return {"blur": blur, "colour": colour, "red-brown": red_brown}[name](rgb, rng)


# -- the set ---------------------------------------------------------------------------------
def build(shared: Path, seed: int, per_kind: int = 60) -> list[Item]:
    """The stress set; :class:`EmptyPool` when ``shared`` lacks the images of a pool."""
    rng = np.random.default_rng(seed)
    pools = sources(shared, rng)
    check_pools(pools)
    items: list[Item] = []
    he_small = pools["he"] + pools["pcam"]
    large = pools["he_large"]

    def pick(pool: list[tuple[bool, np.ndarray]]) -> tuple[bool, np.ndarray]:
        return pool[int(rng.integers(len(pool)))]

    def crop_large() -> tuple[bool, np.ndarray]:
        held, rgb = pick(large)
        win = _window(rgb, rng, 0.12, 0.5)
        side = int(rng.integers(192, 513))
        return held, _resize(win, (side, side))

    for held, rgb in pools["he"]:
        items.append(Item("he:clean", True, held, rgb))
    for held, rgb in pools["pcam"][:40]:
        items.append(Item("he:clean", True, held, rgb))
    for _ in range(30):
        items.append(Item("he:clean", True, *crop_large()))
    for name in TRANSFORMS:
        for j in range(per_kind):
            if name == "thumb" and j % 2 == 0:
                held, rgb = pick(large)
                rgb = _window(rgb, rng, 0.5, 1.0)
            else:
                held, rgb = pick(he_small) if j % 3 else crop_large()
            items.append(Item(f"he:{name}", True, held, transform(name, rgb, rng)))
    # negatives: real look-alikes, as they are
    for cls in ("ihc", "pas_special", "if", "cytology_gross_other"):
        for held, rgb in pools[cls]:
            items.append(Item(f"real:{cls}", False, held, rgb))
    # made from real H&E (the classifier's material generators), at figure sizes
    made = {
        "ihc": M.to_ihc,
        "special": S.to_special,
        "fluor": M.to_fluor,
        "overlay": M.overlay,
    }
    made_rgbs: dict[str, list[tuple[bool, np.ndarray]]] = {"ihc": [], "special": []}
    for name, fn in made.items():
        for j in range(per_kind if name in {"ihc", "special"} else per_kind // 2):
            held, rgb = pick(he_small) if j % 2 else crop_large()
            side = int(rng.choice([96, 128, 192, 256]))
            out = fn(_resize(_window(rgb, rng, 0.5, 1.0), (side, side)), rng)
            items.append(Item(f"made:{name}", False, held, out))
            if name in made_rgbs:
                made_rgbs[name].append((held, out))
    for _ in range(per_kind // 2):
        side = int(rng.integers(96, 257))
        field = M.smooth((side, side), rng, cells=int(rng.integers(2, 10)))
        cmap = matplotlib.colormaps[rng.choice(FIELD_CMAPS)]
        noisy = np.clip(field + rng.normal(0, rng.uniform(0, 0.08), field.shape), 0, 1)
        items.append(Item("drawn:field", False, False, M.u8(cmap(noisy)[..., :3])))
    for chart in M.charts(rng, per_kind // 2):
        items.append(Item("drawn:chart", False, False, chart))
    # the same transforms on IHC/PAS (real and made): these must stay rejected
    look_alikes = pools["ihc"] + pools["pas_special"] + made_rgbs["ihc"] + made_rgbs["special"]
    for name in TRANSFORMS:
        for _ in range(per_kind // 2):
            held, rgb = pick(look_alikes)
            items.append(Item(f"neg:{name}", False, held, transform(name, rgb, rng)))
    items += embedded(pools, look_alikes, rng, per_kind)
    items += [Item(*t) for t in small_items(pools, made_rgbs, rng, per_kind)]  # round 6
    return items


def embedded(pools: dict, look_alikes: list, rng: np.random.Generator, per_kind: int) -> list:
    """Round 5: patches as ML reports embed them (he_stress_embeddings.py), H&E from PCam
    train (twins out) and Camelyon16 tiles, negatives from real and made IHC/PAS."""
    items: list[Item] = []
    for name in E.EMBEDDINGS:
        for he, n, pool in ((True, per_kind, pools["pcam"] + pools["he"][:89]),
                            (False, per_kind // 2, look_alikes)):  # fmt: skip
            for _ in range(n):
                held = [False]

                def draw(pool=pool) -> tuple[bool, np.ndarray]:
                    src_held, rgb = pool[int(rng.integers(len(pool)))]
                    if rgb.shape[:2] != (E.SIDE, E.SIDE):
                        rgb = _resize(_window(rgb, rng, 0.4, 1.0), (E.SIDE, E.SIDE))
                    return src_held, rgb

                def patch(held=held, draw=draw) -> np.ndarray:
                    src_held, rgb = draw()
                    for _ in range(7):  # up to 8 draws for a window with tissue, as reports pick
                        if E.content(rgb) >= 0.5:
                            break
                        src_held, rgb = draw()
                    held[0] |= src_held
                    return rgb

                def field() -> np.ndarray:
                    return M.smooth((E.SIDE, E.SIDE), rng, cells=int(rng.integers(2, 6)))

                rgb = E.embed(name, patch, field, rng)
                items.append(Item(f"{'he' if he else 'neg'}:{name}", he, held[0], rgb))
    return items


# -- scoring and deciding ----------------------------------------------------------------------
def measure(item: Item) -> dict:
    """What the filter stores for one figure (and its panels, when it splits)."""

    def one(rgb: np.ndarray) -> dict:
        scores = score_pixels(rgb)  # as the filter scores a row: one factor for both
        clf = scores.classifier
        return {
            "colour": scores.colour.as_dict() | {"native_factor": scores.factor},
            "p_he": round(clf.p_he, 4),
            "probs": {k: round(v, 4) for k, v in clf.probs.items()},
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
        }

    row = one(item.rgb)
    boxes = find_panels(item.rgb)
    row["panels"] = [one(item.rgb[y0:y1, x0:x1]) for x0, y0, x1, y1 in (p.bbox for p in boxes)]
    return {"kind": item.kind, "he": item.he, "held_out": item.held_out, **row}


# -- the cache of measured scores ------------------------------------------------------------
class CacheMismatch(Exception):
    """A ``--cache`` file measured with other settings (or by an older version of this
    script, which did not record them): its scores are not this run's."""


#: The helper modules the stress set is made with (hashed whole into ``stress_set``).
BUILDER_MODULES = ("he_stress_small.py", "he_stress_embeddings.py", "he_classifier_data.py",
                   "he_classifier_material.py", "he_classifier_special.py")  # fmt: skip


def stress_set_version() -> str:
    """sha256 (16 hex) of what builds and measures the stress set: this script's builders
    and ``measure``, their constants, and the helper modules they use. Any edit to them
    makes older caches refused (a comment too: refusing is cheap, stale scores are not)."""
    import hashlib
    import inspect

    own = (_rgb, _pcam_patches, sources, thumb, pad, blur, colour, red_brown, transform, build,
           embedded, measure)  # fmt: skip
    digest = hashlib.sha256(repr((HE_KINDS, TRANSFORMS, FIELD_CMAPS, PCAM_PATCHES)).encode())
    for fn in own:
        digest.update(inspect.getsource(fn).encode())
    here = Path(__file__).resolve().parent
    for name in BUILDER_MODULES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def weights_sha256() -> str:
    """sha256 of the shipped H&E classifier's weights (what ``p_he`` is computed with)."""
    from importlib import resources

    from histocore.io import file_sha256
    from histofetch.decide.classifier import WEIGHTS_NAME

    with resources.as_file(resources.files("histofetch") / "pretrained" / WEIGHTS_NAME) as path:
        return file_sha256(path)


def cache_settings(args: argparse.Namespace) -> dict:
    """What the measured scores depend on: the stress set (data, seed, size, kinds, the
    version of the code that builds it), the upscaling mode, the filter's scorer version
    and the classifier's weights."""
    from histofetch.filter import SCORER_VERSION

    return {
        "shared": str(Path(args.shared).resolve()),
        "seed": args.seed,
        "per_kind": args.per_kind,
        "kinds": args.kinds,
        "native": args.native,
        "scorer": SCORER_VERSION,
        "stress_set": stress_set_version(),
        "weights": weights_sha256(),
    }


def load_cache(path: Path, settings: dict) -> list[dict] | None:
    """The scores cached in ``path`` for exactly ``settings``; None when there is no file.
    Raises :class:`CacheMismatch` naming what differs."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheMismatch(f"{path}: not a readable cache ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("measured"), list):
        raise CacheMismatch(
            f"{path}: a cache without its settings (written before they were recorded); "
            "delete it or give another --cache file"
        )
    recorded = data.get("settings")
    had = recorded if isinstance(recorded, dict) else {}
    differ = [f"{k} {had.get(k)!r} (now {v!r})" for k, v in settings.items() if had.get(k) != v]
    if differ:
        raise CacheMismatch(
            f"{path}: measured with other settings: {', '.join(differ)}; delete it or give "
            "another --cache file"
        )
    return data["measured"]


def save_cache(path: Path, settings: dict, measured: list[dict]) -> None:
    from histocore.io import atomic_write_text

    atomic_write_text(path, json.dumps({"settings": settings, "measured": measured}))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    default_shared = Path(os.environ.get("HISTO_SHARED", ROOT.parent / "shared"))
    ap.add_argument("--shared", type=Path, default=default_shared)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-kind", type=int, default=60)
    ap.add_argument("--kinds", default="", help="Measure only kinds starting with these "
                    "(comma-separated, e.g. 'he:up-,neg:up-').")  # fmt: skip
    ap.add_argument("--native", choices=("all", "blocky", "off"), default=scale.MODE,
                    help="Which upscaling decide/scale.py undoes before scoring ('off': as "
                    "before round 5).")  # fmt: skip
    ap.add_argument("--cache", type=Path, default=None, help="Reuse/keep the measured scores "
                    "(refused when measured with other settings).")  # fmt: skip
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="Also decide with these rules.Thresholds changed.")  # fmt: skip
    ap.add_argument("--grid", default="", metavar="NAME=V1,V2,…",
                    help="Also count H&E and negatives kept with one rules.Thresholds "
                    "value at each of these (the others shipped), e.g. "
                    "'p_keep=0.02,0.04,0.1'.")  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/he_decision_stress.json")
    args = ap.parse_args()
    try:
        grid_of = parse_grid(args.grid) if args.grid else None
        if grid_of:
            rules.Thresholds.from_kwargs(**(vars(rules.Thresholds()) | {grid_of[0]: 0}))
    except ValueError as exc:
        sys.exit(f"error: --grid {args.grid}: {exc}")
    t0 = time.time()
    scale.MODE = args.native
    settings = cache_settings(args)
    try:
        measured = load_cache(args.cache, settings) if args.cache else None
    except CacheMismatch as exc:
        sys.exit(f"error: {exc}")
    cached = measured is not None
    if measured is None:
        try:
            items = build(args.shared, args.seed, args.per_kind)
        except EmptyPool as exc:
            sys.exit(f"error: {Path(args.shared) / exc.folder}: {exc.problem}")
        if args.kinds:
            items = [i for i in items if i.kind.startswith(tuple(args.kinds.split(",")))]
        print(f"{len(items)} stress images built in {time.time() - t0:.0f} s", file=sys.stderr)
        measured = []
        for k, item in enumerate(items):
            measured.append(measure(item))
            if k % 200 == 0:
                print(f"  measured {k}/{len(items)}", file=sys.stderr)
        if args.cache:
            save_cache(args.cache, settings, measured)
    limits = rules.Thresholds()
    result = {"default": report(measured, limits)}
    if args.set:  # a candidate: the shipped rule with other thresholds, side by side
        candidate = rules.Thresholds.from_kwargs(**(vars(limits) | parse_set(args.set)))
        result["candidate"] = report(measured, candidate) | {"thresholds": vars(candidate)}
    for name, rep in result.items():
        print_report(name, rep)
    if grid_of:  # one threshold swept on the same measured images
        result["grid"] = grid(measured, limits, *grid_of)
        print(f"\n== grid of {grid_of[0]} (H&E kept of {result['grid']['he']} / negatives "
              f"kept of {result['grid']['negatives']}):")  # fmt: skip
        for point in result["grid"]["points"]:
            print(f"  {point[grid_of[0]]:g}: {point['he_kept']} / {point['negatives_kept']}")
    result |= {"thresholds": vars(limits), "seed": args.seed, "images": len(measured)}
    result |= {"kinds": args.kinds} if args.kinds else {}
    if not cached:
        result["seconds"] = round(time.time() - t0)  # measuring, not re-deciding
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
