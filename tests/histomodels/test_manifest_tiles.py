"""histofetch run folders → tissue tiles at ~PCam scale, with parent ids, boxes and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image as PILImage

from histocore.manifest import Image, Manifest, Record
from histomodels.data import DatasetError, open_dataset
from histomodels.data.manifest_tiles import (
    ManifestTileDataset,
    estimate_scale,
    nucleus_diameter,
)
from histomodels.synthetic import make_figure


def _run(tmp_path: Path, figures: dict[str, tuple[np.ndarray, str | None]]) -> Path:
    """A run folder whose kept images are ``figures`` (id → (rgb, label))."""
    with Manifest.load(tmp_path, create=True) as m:
        _add_figures(m, tmp_path, figures)
    return tmp_path


def _add_figures(m: Manifest, tmp_path: Path, figures: dict) -> None:
    m.add_record(Record(id="pmid:1", stage="filtered"))
    (tmp_path / "images").mkdir(parents=True)
    for image_id, (rgb, label) in figures.items():
        rel = f"images/{image_id}.png"
        PILImage.fromarray(rgb).save(tmp_path / rel)
        m.add_image(
            Image(
                id=image_id,
                record_id="pmid:1",
                path=rel,
                sha256="0" * 64,
                width=rgb.shape[1],
                height=rgb.shape[0],
                kept=True,
                label=label,
            )
        )
    m.add_image(  # a figure the filter dropped: never tiled
        Image(
            id="dropped",
            record_id="pmid:1",
            path="images/none.png",
            sha256="0" * 64,
            width=10,
            height=10,
            kept=False,
        )
    )
    m.save()


def test_tiles_labels_and_boxes(tmp_path: Path) -> None:
    fig = make_figure(2, 3, seed=1)
    padded = np.full((192 + 96, 288, 3), 255, np.uint8)  # a white band: background tiles
    padded[:192] = fig
    run = _run(
        tmp_path,
        {
            "fig-a": (padded, "metastasis"),
            "fig-b": (make_figure(1, 2, seed=2, tumour=False), "no_metastasis"),
            "fig-c": (fig, "not_usable"),
            "fig-d": (make_figure(1, 1, seed=3), None),
        },
    )
    ds = open_dataset(run, scale=1.0)
    assert isinstance(ds, ManifestTileDataset)
    by_image = {}
    for t in ds.tiles:
        by_image.setdefault(t.image_id, []).append(t)
    assert set(by_image) == {"fig-a", "fig-b", "fig-d"}  # not_usable and unkept left out
    assert len(by_image["fig-a"]) == 6  # the white row of 3 tiles is skipped
    assert {t.label for t in by_image["fig-a"]} == {1}
    assert {t.label for t in by_image["fig-b"]} == {0}
    assert {t.label for t in by_image["fig-d"]} == {-1}
    assert ds.ids()[0] == "fig-a#r0c0"
    # a tile is exactly its box in the original figure at scale 1
    i = ds.ids().index("fig-a#r1c2")
    tile = ds.tiles[i]
    x0, y0, x1, y1 = (int(v) for v in tile.box)
    assert (x0, y0, x1, y1) == (192, 96, 288, 192)
    assert np.array_equal(ds[i][0], padded[y0:y1, x0:x1])
    assert ds[i][1] == 1 and tile.record_id == "pmid:1" and tile.scale_source == "given"
    assert ds.figures["fig-a"]["n_tiles"] == 6
    # half scale: the 288x288 figure becomes 144 px: one 96 px tile, box twice as large
    half = open_dataset(run, scale=0.5)
    assert isinstance(half, ManifestTileDataset)
    t = next(t for t in half.tiles if t.image_id == "fig-a")
    assert t.box[2] - t.box[0] == pytest.approx(192)


def test_missing_image_and_bad_label(tmp_path: Path) -> None:
    run = _run(tmp_path / "a", {"fig": (make_figure(1, 1), "metastasis")})
    (run / "images" / "fig.png").unlink()
    with pytest.raises(DatasetError, match=r"image fig: image file .* not found") as failed:
        open_dataset(run)
    # the error (and its traceback's frames) still held, the run store is closed already
    assert failed.value and not list(run.glob("run.sqlite-*"))
    run = _run(tmp_path / "b", {"fig": (make_figure(1, 1), "maybe")})
    with pytest.raises(DatasetError, match="image fig: label 'maybe'") as failed:
        open_dataset(run)  # refused by the store's reader: Manifest.load closes it
    assert failed.value and not list(run.glob("run.sqlite-*"))
    run = _run(tmp_path / "c", {"fig": (np.full((300, 300, 3), 255, np.uint8), None)})
    with pytest.raises(DatasetError, match="no tissue tiles"):
        open_dataset(run, scale=1.0)


def test_scale_estimate_follows_magnification() -> None:
    fig = make_figure(4, 4, seed=5)
    s1, src = estimate_scale(fig)
    assert src == "estimated" and 0.5 < s1 < 1.3  # synthetic nuclei are ~PCam-sized
    big = np.asarray(PILImage.fromarray(fig).resize((768, 768), PILImage.Resampling.BICUBIC))
    s2, _ = estimate_scale(big)
    assert s2 / s1 == pytest.approx(0.5, rel=0.25)  # twice the magnification, half the scale
    blank = np.full((200, 200, 3), 240, np.uint8)  # no nuclei at all: fall back to 1
    assert estimate_scale(blank) == (1.0, "default")


def test_real_40x_tiles_are_scaled_about_a_quarter() -> None:
    """Camelyon16 tiles are 40x (~0.24 um/px); PCam is ~0.97 um/px: expect a factor ~0.25."""
    root = shared_path("data", "camelyon16_tiles_didsr")
    scales = []
    for path in sorted(root.glob("*/*.webp"))[::11]:
        rgb = np.asarray(PILImage.open(path).convert("RGB"))
        scales.append(estimate_scale(rgb)[0])
    assert 0.15 < float(np.median(scales)) < 0.4, scales


def test_real_pcam_patches_read_at_scale_one() -> None:
    import h5py

    path = shared_path("data", "pcam_real", "pcam_format_sample", "pcam_real_sample_x.h5")
    with h5py.File(path) as f:
        dset = f["x"]
        assert isinstance(dset, h5py.Dataset)
        x = dset[:40]
    mosaic = x.reshape(5, 8, 96, 96, 3).swapaxes(1, 2).reshape(480, 768, 3)
    assert 3.5 < nucleus_diameter(mosaic) < 5.5
    assert 0.8 < estimate_scale(mosaic)[0] < 1.25


def test_patch_sized_figures_become_one_tile_each(tmp_path: Path) -> None:
    from histomodels.synthetic import make_patches

    x, _ = make_patches(2, seed=3)
    small = np.asarray(PILImage.fromarray(x[1]).resize((80, 80)))
    run = _run(tmp_path, {"a": (x[0], "metastasis"), "b": (small, None)})
    ds = ManifestTileDataset(run, min_tissue=0.0)
    assert {k: f["scale_source"] for k, f in ds.figures.items()} == {"a": "patch", "b": "patch"}
    assert [f["n_tiles"] for f in ds.figures.values()] == [1, 1]
    assert np.array_equal(ds.images[[t.image_id for t in ds.tiles].index("a")], x[0])


@pytest.mark.parametrize("scale", [1.0, 0.5, 1.5])
def test_predict_and_eval_manifest_keep_the_same_tiles(tmp_path: Path, scale: float) -> None:
    """`histomodels predict --scale s` and `eval --manifest` (scale s) cut one figure alike."""
    from histomodels.predict import image_tiles, read_rgb

    fig = np.full((530, 430, 3), 255, np.uint8)  # white margins that fit no whole tile
    fig[20:308, 37:421] = make_figure(3, 4, seed=4)
    run = _run(tmp_path, {"fig": (fig, "metastasis")})
    path = run / "images" / "fig.png"
    ds = ManifestTileDataset(run, scale=scale, min_tissue=0.5)
    boxes = [t.box for t in ds.tiles]
    _, tiles = image_tiles(read_rgb(path), path, scale=scale)
    keep = tiles.tissue >= 0.5
    assert 0 < keep.sum() < len(tiles.xy)  # some background tiles to leave out
    want = [(x / scale, y / scale, (x + 96) / scale, (y + 96) / scale) for x, y in tiles.xy[keep]]
    np.testing.assert_allclose(boxes, want, rtol=1e-12)
    np.testing.assert_array_equal(ds.images, tiles.patches[keep])
    np.testing.assert_allclose([t.tissue for t in ds.tiles], tiles.tissue[keep])
