"""Macenko normalisation: real tiles from 5 Camelyon17 centres move onto the target's stains."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from histomodels.data.stain import REF_STAINS, MacenkoNormalizer, StainError, stain_vectors
from histomodels.synthetic import make_figure


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(0), -1, 1)))


def test_real_centres_are_pulled_onto_the_target() -> None:
    target = np.asarray(
        Image.open(shared_path("data", "external_he_images", "tiatoolbox_target_image.png"))
        .convert("RGB")
        .resize((400, 400))
    )
    norm = MacenkoNormalizer().fit(target)
    assert norm.stains.shape == (3, 2)
    before, after = [], []
    for path in sorted(shared_path("data", "camelyon17_centre_tiles").glob("*.jpeg")):
        tile = np.asarray(Image.open(path).convert("RGB").resize((384, 384)))
        out = norm.transform(tile)
        assert out.shape == tile.shape and out.dtype == np.uint8
        before.append(_angles(stain_vectors(tile)[0], norm.stains))
        after.append(_angles(stain_vectors(out)[0], norm.stains))
    before, after = np.array(before), np.array(after)
    assert after.mean() < before.mean() / 2, (before, after)
    assert after[:, 0].max() < 3  # haematoxylin direction within 3 degrees everywhere


def test_synthetic_round_trip_and_batches(tmp_path) -> None:
    fig = make_figure(2, 2, seed=4)
    norm = MacenkoNormalizer().fit(fig)
    # normalising an image onto its own stains changes it little
    assert np.abs(norm.transform(fig).astype(int) - fig).mean() < 6
    batch = np.stack([fig[:96, :96], fig[96:, 96:]])
    assert norm.transform(batch).shape == batch.shape
    norm.save(tmp_path / "stain.json")
    again = MacenkoNormalizer.load(tmp_path / "stain.json")
    assert np.allclose(again.stains, norm.stains) and np.allclose(again.max_c, norm.max_c)


def test_blank_patches_pass_through_and_are_counted() -> None:
    blank = np.full((96, 96, 3), 245, np.uint8)
    with pytest.raises(StainError):
        stain_vectors(blank)
    norm = MacenkoNormalizer()
    assert np.array_equal(norm.transform(blank), blank) and norm.n_skipped == 1
    with pytest.raises(StainError):
        MacenkoNormalizer().fit(blank)
    with pytest.raises(ValueError, match="uint8"):
        norm.transform(blank.astype(np.float32))


def test_bad_stain_settings_are_named(tmp_path) -> None:
    from histomodels.config import ConfigError, resolve_config
    from histomodels.data.stain import stain_normalizer

    bad = tmp_path / "stain.json"
    bad.write_text('{"stains": [[1, 2]], "max_c": [1, 2]}')
    with pytest.raises(StainError, match=r"stain\.json: expected stains 3x2"):
        stain_normalizer(str(bad))
    with pytest.raises(StainError, match="'macenko' or a stain JSON"):
        stain_normalizer(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="stain_norm must be 'macenko'"):
        resolve_config(stain_norm="macenko-ish")


def test_training_with_stain_norm_is_applied_again_at_inference(tmp_path) -> None:
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.data import open_dataset
    from histomodels.inference import Predictor, predict_logits
    from histomodels.synthetic import write_h5

    train_h5, val_h5 = write_h5(tmp_path / "t.h5", 48, seed=0), write_h5(tmp_path / "v.h5", 32, 1)
    out = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(out),
         "--stain-norm", "macenko", "--model-config", '{"width": 8, "depth": 2}',
         "--epochs", "1", "--threads", "1", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    pred = Predictor.load(out / "best.pt", device="cpu", precision="fp32")
    assert pred.ckpt["stain"]["method"] == "macenko" and pred.stain is not None
    images = open_dataset(val_h5).load_all()[0][:16]
    normalised = MacenkoNormalizer().transform(images)
    assert not np.array_equal(normalised, images)
    expected = predict_logits(pred.model, normalised, precision="fp32")
    assert np.allclose(pred.logits(images), expected, atol=1e-5)
    assert not np.allclose(pred.logits(images, prepared=True), expected, atol=1e-3)


def test_cli_fits_a_stain_file_from_a_reference_image(tmp_path) -> None:
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.data.stain import stain_normalizer

    ref = tmp_path / "ref.png"
    Image.fromarray(make_figure(2, 2, seed=4)).save(ref)
    out = tmp_path / "stain.json"
    r = CliRunner().invoke(app, ["data", "stain", str(ref), "--out", str(out)])
    assert r.exit_code == 0, r.output
    fitted = stain_normalizer(str(out))
    assert np.allclose(fitted.stains, MacenkoNormalizer().fit(make_figure(2, 2, seed=4)).stains)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(blank)
    r = CliRunner().invoke(app, ["data", "stain", str(blank), "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 1 and "blank.png" in r.stderr and not (tmp_path / "b.json").exists()
    # a grey (or black) image has stained pixels but one colour: its "H" and "E" were one
    # vector, written as settings that turned every training patch grey, exit 0
    for value in (128, 0):
        grey = tmp_path / f"grey{value}.png"
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(grey)
        r = CliRunner().invoke(app, ["data", "stain", str(grey), "--out", str(tmp_path / "g.json")])
        assert r.exit_code == 1, r.output
        assert r.stderr.strip() == (
            f"error: {grey}: the haematoxylin and eosin vectors are 0.0 degrees apart (at least "
            "5 needed): not two stains (a grey or one-colour image?)"
        )
        assert not (tmp_path / "g.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"\xff\xfe\x00 binary", "cannot read stain settings"),
        (b'{"a": "' + b"x" * (2 << 20) + b'"}', r"cannot read stain settings \(over 1 MB\)"),
        (b'{"stains": [[0.65, 0.07], [0.7, 0.99], [0.29, 0.11]], "max_c": [0, 1]}', "max_c"),
        (b'{"stains": [[0.65, 0.07], [0.7, 0.99], [0.29, 0.11]], "max_c": [NaN, 1]}', "max_c"),
        (b'{"stains": [[0.65, 0.07], [0.7, 0.99], [0.29, 0.11]], "max_c": [1, 1], "io": -5}', "io"),
        # what `data stain` wrote for a grey image: every patch normalised to grey
        (
            b'{"stains": [[0.577, 0.577], [0.577, 0.577], [0.577, 0.577]], "max_c": [1, 1]}',
            "vectors are 0.0 degrees apart",
        ),
        # each was taken and remixed every patch to one flat colour, exit 0: zero vectors to
        # the blank background, a huge one to black, negative ones to white, a max_c of
        # 1e-320 to the background again
        (
            b'{"stains": [[0, 0], [0, 0], [0, 0]], "max_c": [1, 1]}',
            r"the haematoxylin vector \[0\.0, 0\.0, 0\.0\] has length 0, expected a unit",
        ),
        (
            b'{"stains": [[1e308, 0.07], [0.7, 0.99], [0.29, 0.11]], "max_c": [1, 1]}',
            r"haematoxylin vector .* has length 1e\+308, expected a unit",
        ),
        (
            b'{"stains": [[-0.65, -0.07], [-0.7, -0.99], [-0.29, -0.11]], "max_c": [1, 1]}',
            "haematoxylin vector .* has a negative component",
        ),
        (
            b'{"stains": [[0.65, 0.07], [0.7, 0.99], [0.29, 0.11]], "max_c": [1e-320, 1]}',
            r"max_c \[1e-320, 1\.0\] is below 0\.01",
        ),
        # neither was checked: another method's settings were read as Macenko's, and a
        # max_c of 1e6 remixed every stained pixel to black, exit 0
        (
            b'{"method": "vahadane", "stains": [[0.65, 0.07], [0.7, 0.99], [0.29, 0.11]], '
            b'"max_c": [1, 1]}',
            r": method 'vahadane' is not one of 'macenko'$",
        ),
        (
            b'{"method": ["macenko"], "stains": [[0.65, 0.07], [0.7, 0.99], [0.29, 0.11]], '
            b'"max_c": [1, 1]}',
            r": method \['macenko'\] is not one of 'macenko'$",
        ),
        (
            b'{"stains": [[0.65, 0.07], [0.7, 0.99], [0.29, 0.11]], "max_c": [1e6, 1]}',
            r"max_c \[1000000\.0, 1\.0\] is above 30: every stained pixel would be remixed",
        ),
    ],
    ids=[
        "binary",
        "huge",
        "zero max_c",
        "nan max_c",
        "negative io",
        "one colour",
        "zero vectors",
        "long vector",
        "negative vectors",
        "tiny max_c",
        "unknown method",
        "method not a string",
        "huge max_c",
    ],
)
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_hostile_stain_settings_are_one_error(tmp_path, text, message) -> None:
    """A stain file (or a checkpoint's stain dict) that would divide by zero or take the log
    of a negative number is refused, not turned into NaN patches; a binary file is named.
    The one line comes without a numpy warning on the way (a 1e308 vector's length was
    "overflow encountered in dot", then inf)."""
    bad = tmp_path / "stain.json"
    bad.write_bytes(text)
    with pytest.raises(StainError, match=message) as err:
        MacenkoNormalizer.load(bad)
    assert str(err.value).startswith(str(bad))


def test_the_documented_max_c_range_starts_at_real_pcam_patches() -> None:
    """histomodels-data.md and MIN_MAX_C's error gave fitted max_c as 0.3 (or 0.3 to 10),
    but real 96 px PCam patches fit down to 0.2: the low end the docs give is what they fit."""
    import re
    from pathlib import Path

    from histomodels.data import open_dataset
    from histomodels.data.stain import MIN_MAX_C

    sample = shared_path("data", "pcam_real", "pcam_format_sample", "pcam_real_sample_x.h5")
    fitted = []
    for patch in open_dataset(sample).load_all()[0]:
        try:
            fitted.append(MacenkoNormalizer().fit(patch).max_c.min())
        except StainError:  # a blank patch
            continue
    lowest = round(float(min(fitted)), 1)
    doc = (Path(__file__).parents[2] / "docs" / "histomodels-data.md").read_text()
    said = re.search(r"special-stain images of `shared/data`.*? are ([\d.]+) to", doc, re.S)
    assert said is not None and float(said.group(1)) == lowest, (said, lowest)
    bad = {"stains": REF_STAINS.tolist(), "max_c": [MIN_MAX_C / 2, 1.0]}
    with pytest.raises(StainError, match=rf"a fitted max_c is about {lowest:g} to "):
        MacenkoNormalizer.from_dict(bad)


def _real_target() -> np.ndarray:
    from histomodels.predict import read_rgb

    return read_rgb(shared_path("data", "external_he_images", "tiatoolbox_target_image.png"))


def test_a_reference_with_too_little_tissue_is_refused_not_written(tmp_path) -> None:
    """`data stain` fitted max_c as the 99th percentile over all pixels, background included,
    and checked only the vectors: a reference with ~1 % tissue wrote max_c <= 0, exit 0, and
    every later load (train --stain-norm, the checkpoint) refused it."""
    from typer.testing import CliRunner

    from histomodels.cli import app

    canvas = np.full((1000, 1000, 3), 245, np.uint8)
    canvas[:80, :80] = _real_target()[:80, :80]
    ref, out = tmp_path / "ref.png", tmp_path / "s.json"
    Image.fromarray(canvas).save(ref)
    with pytest.raises(StainError, match="too little tissue"):
        MacenkoNormalizer().fit(canvas)
    r = CliRunner().invoke(app, ["data", "stain", str(ref), "--out", str(out)])
    assert r.exit_code == 1, r.output
    line = r.stderr.strip()
    assert line.startswith(f"error: {ref}: max_c [") and "\n" not in line, line
    assert "is below 0.01" in line and "too little tissue" in line, line
    assert not out.exists() and list(tmp_path.iterdir()) == [ref]


def test_a_real_reference_fits_saves_and_loads_back(tmp_path) -> None:
    target = _real_target()
    norm = MacenkoNormalizer().fit(target)
    norm.save(tmp_path / "s.json")
    again = MacenkoNormalizer.load(tmp_path / "s.json")
    assert np.allclose(again.stains, norm.stains) and np.allclose(again.max_c, norm.max_c)
    # max_c for a valid image is what it always was: stain_vectors' 99th percentile
    assert np.array_equal(norm.max_c, stain_vectors(target)[1])
    tile = target[:256, :256]
    assert np.array_equal(again.transform(tile), norm.transform(tile))


def test_a_huge_method_or_value_is_cut_in_the_error_line() -> None:
    """A stain file's ``method`` of 1 MB (or a stain value of 1 MB of text) was echoed whole:
    a 1 MB error line. The value is cut at 200 characters, as other messages cut it."""
    from histomodels.data.stain import MacenkoNormalizer, StainError

    huge = "x" * 1_000_000
    for data in ({"method": huge}, {"stains": [[huge]], "max_c": [1, 1]}):
        with pytest.raises(StainError) as err:
            MacenkoNormalizer.from_dict(data, "s.json")
        assert str(err.value).startswith("s.json: ") and len(str(err.value)) < 400, data.keys()
