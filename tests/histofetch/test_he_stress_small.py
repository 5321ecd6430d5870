"""benchmarks/he_stress_small.py: every pool the small kinds draw from must hold images;
an empty one is one error line naming the pool and its folder, not a bare ValueError."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _stress_small():
    sys.path.insert(0, str(BENCH))
    import he_stress_small

    return he_stress_small


def _pools(rng: np.random.Generator) -> dict[str, list[tuple[bool, np.ndarray]]]:
    def imgs(n: int, side: int, held: bool = False) -> list[tuple[bool, np.ndarray]]:
        return [(held, rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]

    pools = {name: imgs(3, 160) for name in ("he", "ihc", "pas_special", "cytology_gross_other")}
    return pools | {"pcam": imgs(3, 96), "he_large": imgs(2, 512), "if": imgs(2, 160)}


@pytest.mark.parametrize(
    ("pool", "emptied", "folder", "what"),
    [
        ("if", lambda p: [(True, rgb) for _, rgb in p], "data/stain_types", "training-side"),
        ("he_large", lambda p: [], "data/camelyon17_centre_tiles", "no images"),
        ("ihc", lambda p: [], "data/stain_types", "no images"),
    ],
)
def test_an_empty_pool_is_named_with_its_folder(pool, emptied, folder, what) -> None:
    small = _stress_small()
    rng = np.random.default_rng(0)
    pools = _pools(rng)
    pools[pool] = emptied(pools[pool])
    made = {"ihc": pools["ihc"], "special": pools["pas_special"]}
    with pytest.raises(small.EmptyPool) as caught:
        small.small_items(pools, made, rng, per_kind=2)
    assert caught.value.folder == folder
    assert str(caught.value).startswith(f"{folder}: ") and f"{pool!r} pool" in str(caught.value)
    assert what in caught.value.problem


def test_full_pools_make_every_small_kind(tmp_path: Path) -> None:
    small = _stress_small()
    rng = np.random.default_rng(1)
    pools = _pools(rng)
    made = {"ihc": pools["ihc"], "special": pools["pas_special"]}
    items = small.small_items(pools, made, rng, per_kind=3)  # 2 per negative kind
    kinds = {kind for kind, *_ in items}
    assert {"he:small-pcam", "neg:small-if", "neg:small-fish"} <= kinds
    assert all(32 <= min(rgb.shape[:2]) <= 63 for *_, rgb in items)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_the_stress_script_says_which_pool_is_empty(tmp_path: Path) -> None:
    """A ../shared whose stain_types has immunofluorescence only from held-out sources."""
    import h5py

    sys.path.insert(0, str(BENCH))
    import he_classifier_data as D

    rng = np.random.default_rng(2)
    shared = tmp_path / "shared"
    pcam = shared / "data/pcam_real/dev"
    pcam.mkdir(parents=True)
    patches = [_png(rng.integers(100, 256, (96, 96, 3), dtype=np.uint8)) for _ in range(130)]
    with h5py.File(pcam / "train.h5", "w") as fh:
        encoded = fh.create_dataset("encoded", (len(patches),), dtype=h5py.vlen_dtype(np.uint8))
        for k, blob in enumerate(patches):
            encoded[k] = np.frombuffer(blob, np.uint8)
        fh["patch_id"] = np.array([f"synthetic_{k}".encode() for k in range(130)])
    for folder, name in [("camelyon16_tiles_didsr/a", "t.webp"),
                         ("camelyon17_centre_tiles", "t.jpeg")]:  # fmt: skip
        (shared / "data" / folder).mkdir(parents=True)
        PIL.Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
            shared / "data" / folder / name
        )
    stains = shared / "data/stain_types"
    held_out = sorted(D.VAL_SOURCES)[0]
    rows = []
    for cls in ("he_other", "ihc", "pas_special", "cytology_gross_other", "if"):
        (stains / cls).mkdir(parents=True)
        PIL.Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(
            stains / cls / "a.png"
        )
        rows.append({"file": f"{cls}/a.png", "class": cls,
                     "source_repo": held_out if cls == "if" else "someone/train"})  # fmt: skip
    with (stains / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "class", "source_repo"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out.json"
    res = subprocess.run(
        [sys.executable, str(BENCH / "he_decision_stress.py"), "--shared", str(shared),
         "--per-kind", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {stains}: no training-side images"), lines[0]
    assert "'if' pool" in lines[0] and not out.exists()
