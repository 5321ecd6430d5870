"""The H&E filter: synthetic look-alikes here, then the real PDFs in ../shared."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import PIL.Image
import pytest
from conftest import shared_path
from pdf_factory import build_image_pdf, he_like

from histocore.manifest import Image, Manifest
from histofetch.decide.colour import score_rgb
from histofetch.extract import run_extract
from histofetch.filter import Thresholds, decide, run_filter, store_scores


def _smooth_field(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((6, 6))
    field = np.asarray(PIL.Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), 3))
    return field / 255.0


def colour_map(name: str, seed: int = 0) -> np.ndarray:
    """A model heatmap / feature map: a smooth field through a matplotlib colour map."""
    rgba = matplotlib.colormaps[name](_smooth_field(seed=seed) ** 2)
    return (rgba[..., :3] * 255).astype(np.uint8)


def magenta_fluorescence(seed: int = 0) -> np.ndarray:
    """RNA-FISH-like tile: magenta spots on a black background (a naive purple count's trap)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 96, 3), np.float32)
    yy, xx = np.mgrid[:96, :96]
    for _ in range(12):
        cy, cx = rng.integers(10, 86, 2)
        spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
        img += spot[..., None] * np.array([230, 40, 220])
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def bar_chart() -> np.ndarray:
    img = np.full((96, 96, 3), 255, np.uint8)
    for k, height in enumerate((40, 70, 55)):
        img[90 - height : 90, 10 + k * 28 : 30 + k * 28] = (200, 120, 190)  # flat pink bars
    img[90, :] = 0
    return img


def composite_figure() -> np.ndarray:
    """A real-paper-style composite: one micrograph panel beside two bar charts."""
    fig = np.full((320, 640, 3), 255, np.uint8)
    fig[40:190, 40:190] = he_like(150, 150, seed=7)
    chart = np.asarray(PIL.Image.fromarray(bar_chart()).resize((180, 180), 0))
    fig[40:220, 260:440] = chart
    fig[40:220, 450:630] = chart
    return fig


def _decision(rgb: np.ndarray, **kw) -> Image:
    h, w = rgb.shape[:2]
    img = Image(id="x", record_id="r", path="x.png", sha256="", width=w, height=h)
    store_scores(img, score_rgb(rgb))
    decide(img, Thresholds(**kw))
    return img


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_he_like_tissue_is_kept(seed: int) -> None:
    img = _decision(he_like(seed=seed))
    assert img.kept, img.filter_reason
    assert img.tissue_fraction > 0.9 and img.purple_ratio > 0.9 and img.he_score > 0.9


@pytest.mark.parametrize("name", ["inferno", "magma", "plasma", "jet", "viridis", "hsv"])
def test_colour_map_heatmaps_are_rejected(name: str) -> None:
    img = _decision(colour_map(name))
    assert not img.kept, (name, img.extra["colour"])


def test_magenta_fluorescence_is_rejected_though_a_naive_count_keeps_it() -> None:
    rgb = magenta_fluorescence()
    img = _decision(rgb)
    assert not img.kept
    assert img.extra["colour"]["tissue_blocks"] == 0
    assert img.extra["colour"]["naive_purple"] > 0.1


def test_tiny_crops_are_not_judged() -> None:
    img = _decision(he_like(60, 60))
    assert not img.kept and img.filter_reason == "too small to judge (60x60 px < 64)"
    assert _decision(he_like(60, 60), min_side=32).kept


def test_flat_charts_and_greyscale_tissue_are_rejected() -> None:
    assert not _decision(bar_chart()).kept
    grey = np.repeat(he_like().mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert not _decision(grey).kept


def test_composite_figure_is_kept_on_its_tissue_region() -> None:
    img = _decision(composite_figure())
    colour = img.extra["colour"]
    assert img.kept, img.filter_reason
    assert colour["purple_ratio_image"] < 0.3  # a whole-image count would reject it
    assert 0.05 < img.tissue_fraction < 0.4


def _scored_run(tmp_path: Path) -> Path:
    images = [he_like(seed=1), he_like(seed=2), colour_map("inferno"), magenta_fluorescence()]
    pdf = build_image_pdf(tmp_path / "mix.pdf", images, caption="Figure 1: mixed.")
    run_dir = tmp_path / "run"
    run_extract(run_dir, [pdf])
    return run_dir


def test_run_filter_scores_keeps_and_writes_sheets(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    summary = run_filter(run_dir)
    assert (summary.done, summary.failed) == (1, 0)
    manifest = Manifest.load(run_dir)
    kept = {i.page for i in manifest.images.values() if i.kept}
    assert kept == {1, 2}
    for img in manifest.images.values():
        assert img.purple_ratio is not None and img.he_score is not None
        assert img.tissue_fraction is not None
        assert img.kept or img.filter_reason
    assert manifest.header_extra["filter_thresholds"]["purple"] == 0.3
    for name in ("kept.png", "rejected.png"):
        with PIL.Image.open(run_dir / "sheets" / name) as sheet:
            assert sheet.format == "PNG" and sheet.width > 128


def test_thresholds_are_reapplied_without_rereading_images(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    run_filter(run_dir, sheet=False)
    for png in (run_dir / "images").rglob("*.png"):
        png.unlink()  # scores live in the manifest; a re-read would now fail
    summary = run_filter(run_dir, purple=0.999, sheet=False)
    assert summary.skipped == 1 and summary.failed == 0
    manifest = Manifest.load(run_dir)
    assert not manifest.kept_images()
    assert all(i.status == "ok" for i in manifest.images.values())
    reasons = {i.filter_reason.split(" (")[0] for i in manifest.images.values()}
    assert "purple ratio too low" in reasons
    run_filter(run_dir, purple=0.3, min_he=0.5, sheet=False)
    assert len(Manifest.load(run_dir).kept_images()) == 2


def test_unknown_threshold_is_an_error(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    with pytest.raises(ValueError, match="unknown filter threshold"):
        run_filter(run_dir, purpl=0.4)


def test_unreadable_image_fails_only_its_row(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    manifest = Manifest.load(run_dir)
    first = manifest.images_of(next(iter(manifest.records)))[0]
    manifest.resolve(first.path).write_bytes(b"not a png")
    summary = run_filter(run_dir, sheet=False)
    assert summary.failed == 0
    again = Manifest.load(run_dir)
    bad = again.images[first.id]
    assert bad.status == "failed" and bad.reason.startswith("cannot read image")
    assert len(again.kept_images()) == 1


# -- real PDFs -----------------------------------------------------------------------------

# Unique rows of konrad-gerlach_report.pdf that are real PCam H&E patches (looked at on the
# contact sheet, checked against captions): Fig. 1, 2 (dataset examples), Fig. 4, Fig. 7,
# the input images of Fig. 10-12, and Fig. 14 (H&E with red boxes drawn on).
KONRAD_HE = {
    *(f"p003_{n:03d}" for n in range(1, 10)),
    *(f"p004_{n:03d}" for n in range(1, 10)),
    "p005_007", "p005_008", "p005_009",
    *(f"p006_{n:03d}" for n in range(4, 9)),
    "p007_002", "p007_007",
    *(f"p008_{n:03d}" for n in range(4, 11)),
    "p008_015",
}  # fmt: skip
# H&E patches that are mostly white background or pigment with one tissue block: the
# filter rejects them as "tissue region too small" (measured; documented).
KONRAD_SPARSE = {"p003_002", "p003_003", "p003_009", "p006_004"}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    pdfs = [
        shared_path("data", "pdfs", "konrad-gerlach_report.pdf"),
        shared_path("data", "pdfs", "sinanbertan_report.pdf"),
        shared_path("fixtures", "pdfs"),
    ]
    run_dir = tmp_path_factory.mktemp("real") / "run"
    run_extract(run_dir, pdfs)
    run_filter(run_dir)
    return Manifest.load(run_dir)


def _by_pdf(manifest: Manifest, name: str) -> dict[str, Image]:
    (rec,) = [r for r in manifest.records.values() if Path(r.pdf_path).name == name]
    return {i.id.rsplit("/", 1)[1]: i for i in manifest.images_of(rec.id)}


@pytest.mark.realdata
@pytest.mark.slow
def test_konrad_gerlach_keeps_he_and_rejects_heatmaps_and_feature_maps(
    real_run: Manifest,
) -> None:
    images = _by_pdf(real_run, "konrad-gerlach_report.pdf")
    kept = {k for k, i in images.items() if i.kept}
    assert kept == KONRAD_HE - KONRAD_SPARSE  # 32 H&E kept, no heatmap or feature map
    inferno = [k for k in images if k.startswith("p007_") and k not in KONRAD_HE]
    assert len(inferno) >= 15 and not kept & set(inferno)
    # a naive purple count would have kept many of the rejected colour maps
    naive = [i for k, i in images.items() if k not in KONRAD_HE]
    assert sum(i.extra["colour"]["naive_purple"] >= 0.3 for i in naive) >= 10


@pytest.mark.realdata
@pytest.mark.slow
def test_fixture_pdfs_end_as_provenance_says(real_run: Manifest) -> None:
    bawaneh = _by_pdf(real_run, "pos_bawaneh2022_cancers14_4849_TNBC_HE_lung_metastasis.pdf")
    assert {k for k, i in bawaneh.items() if i.kept} == {
        "p006_001", "p009_001", "p010_001", "p011_001", "p011_002"
    }  # fmt: skip  # composite figures with H&E panels (Fig. 1G, 4E, 5, 6A)
    li = _by_pdf(real_run, "pos_li2022_science_abi9591_HE_lung_PAS_kidney.pdf")
    lung = next(i for i in li.values() if (i.width, i.height) == (565, 567))
    assert lung.kept  # Fig. 6F H&E lung
    scrna = li["p008_004"]  # the purple/yellow scRNA-seq heatmap on p.8 (img 55)
    assert scrna.extra["colour"]["naive_purple"] > 0.15
    assert not scrna.kept  # the purple/yellow scRNA-seq heatmap trap
    cote = _by_pdf(real_run, "hardneg_cote2023_elife91357_magenta_RNA_FISH.pdf")
    fish = [i for i in cote.values() if i.page == 12 and (i.width, i.height) == (201, 201)]
    assert fish and not any(i.kept for i in fish)
    assert any(i.extra["colour"]["naive_purple"] > 0.7 for i in fish)
    assert not any(i.kept for i in cote.values())
    assert cote["p006_002"].filter_reason.startswith("too small to judge")  # 60x60 pink noise
    soler = _by_pdf(real_run, "neg_soler2014_plosone_0107412_charts_photos.pdf")
    assert soler and not any(i.kept for i in soler.values())
    sinan = _by_pdf(real_run, "sinanbertan_report.pdf")
    assert {k for k, i in sinan.items() if i.kept} == {"p026_001", "p042_001"}
    failed = [r for r in real_run.records.values() if r.status == "failed"]
    assert [Path(r.pdf_path).name for r in failed] == [
        "bad_pdfplumber_encrypted_password_example.pdf"
    ]


@pytest.mark.realdata
@pytest.mark.slow
def test_fixture_pdf_figures_get_weak_labels_from_their_captions(real_run: Manifest) -> None:
    """No fixture PDF shows a lymph node (lung metastasis, kidney, PCam patches in a student
    report): every kept figure gets a weak label, and it is abstain (weak-labels.md)."""
    kept = real_run.kept_images()
    assert kept and all(i.weak_label_rules for i in kept)
    assert {i.weak_label for i in kept} == {"abstain"}
    bawaneh = _by_pdf(real_run, "pos_bawaneh2022_cancers14_4849_TNBC_HE_lung_metastasis.pdf")
    lung = [i for i in bawaneh.values() if i.kept and "lung metastasis" in (i.caption or "")]
    assert lung and all(i.site == "other" for i in lung)  # a metastasis, but not in a node
    assert all(i.weak_label is None for i in real_run.images.values() if not i.kept)


@pytest.mark.realdata
def test_real_he_tiles_are_kept() -> None:
    paths = sorted(shared_path("data", "camelyon16_tiles_didsr").rglob("*.webp"))[::6]
    paths += sorted(shared_path("data", "camelyon17_centre_tiles").glob("*.jpeg"))
    paths += [shared_path("data", "external_he_images", "tiatoolbox_target_image.png")]
    from histofetch.decide.colour import load_rgb

    kept = [_decision(load_rgb(p)).kept for p in paths]
    assert len(paths) >= 15 and all(kept)


def test_images_scored_by_an_older_scorer_are_scored_again(tmp_path: Path) -> None:
    from histofetch.filter import SCORER_VERSION

    run_dir = _scored_run(tmp_path)
    run_filter(run_dir, sheet=False)
    manifest = Manifest.load(run_dir)
    stale = manifest.images_of(next(iter(manifest.records)))[2]
    stale.extra["colour"]["scorer"] = SCORER_VERSION - 1
    manifest.save()
    summary = run_filter(run_dir, sheet=False)
    assert summary.done == 1  # the record is taken again for its one stale image
    again = Manifest.load(run_dir)
    assert again.images[stale.id].extra["colour"]["scorer"] == SCORER_VERSION
    assert len(again.kept_images()) == 2


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_image_fails_its_row_without_decoding(tmp_path: Path) -> None:
    run_dir = _scored_run(tmp_path)
    manifest = Manifest.load(run_dir)
    rec_id = next(iter(manifest.records))
    bomb = run_dir / "images" / "package" / "bomb.png"
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(_png_header_only(100_000, 100_000))  # 10 gigapixels declared
    manifest.add_image(
        Image(
            id=f"{rec_id}/bomb",
            record_id=rec_id,
            path="images/package/bomb.png",
            sha256="",
            width=100_000,
            height=100_000,
            source="package",
        )
    )
    manifest.save()
    summary = run_filter(run_dir, sheet=False)
    assert summary.failed == 0
    row = Manifest.load(run_dir).images[f"{rec_id}/bomb"]
    assert row.status == "failed" and "exceeds limit" in row.reason
    assert row.kept is False
