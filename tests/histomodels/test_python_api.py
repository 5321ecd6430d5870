"""The Python API as a notebook uses it: the shipped model, patches in every usual form,
a DataLoader over ``open_dataset``, and a caller's model left as it was."""

from __future__ import annotations

import collections.abc
import re
import typing
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from histomodels.data.readers import open_dataset
from histomodels.inference import (
    Patches,
    Predictor,
    patch_batches,
    patch_count,
    predict_logits,
    sigmoid,
)
from histomodels.models import create_model, list_models
from histomodels.models.weights import WeightsError
from histomodels.preprocess import to_input
from histomodels.synthetic import make_patches, write_h5


@pytest.fixture(scope="module")
def pred() -> Predictor:
    return Predictor.load("pcam-cnn", device="cpu")


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return make_patches(6, seed=3)[0]


def test_predictor_takes_a_tensor_batch_a_single_image_and_pil_images(
    pred: Predictor, patches: np.ndarray
) -> None:
    """Anything not a numpy array was taken for a list of batches: a DataLoader's uint8
    tensor batch and one [96, 96, 3] image failed with ``shape '[96, -1]' is invalid``, a
    PIL image with ``'Image' object is not iterable``."""
    want = pred.logits(patches)
    assert want.shape == (6,)
    np.testing.assert_allclose(pred.logits(torch.from_numpy(patches)), want, rtol=1e-5)
    np.testing.assert_allclose(pred.logits(patches[2]), want[2:3], rtol=1e-5)
    np.testing.assert_allclose(pred.logits(torch.from_numpy(patches[2])), want[2:3], rtol=1e-5)
    np.testing.assert_allclose(pred.logits(Image.fromarray(patches[1])), want[1:2], rtol=1e-5)
    images = [Image.fromarray(p) for p in patches]
    np.testing.assert_allclose(pred.logits(images, batch_size=4), want, rtol=1e-5)
    np.testing.assert_allclose(pred.logits(list(patches)), want, rtol=1e-5)
    batches = [torch.from_numpy(patches[:4]), patches[4], patches[5:]]  # batches and images
    np.testing.assert_allclose(pred.logits(batches), want, rtol=1e-5)


@pytest.mark.parametrize(
    ("given", "error", "words"),
    [
        ("x.png", TypeError, "got str"),
        (42, TypeError, "got int"),
        ([[1, 2, 3]], TypeError, "item 0: expected uint8 RGB patches"),
        (np.zeros((2, 3, 96, 96), np.uint8), ValueError, r"got shape \(2, 3, 96, 96\)"),
        (np.zeros((96, 96), np.uint8), ValueError, r"got shape \(96, 96\)"),
        # one channels-first image (docs/python-api.md: "refused by its shape") was told
        # the shape it had been made into, (1, 3, 96, 96), not the one given
        (torch.zeros(3, 96, 96, dtype=torch.uint8), ValueError, r"got shape \(3, 96, 96\)"),
        (np.zeros((3, 96, 96), np.uint8), ValueError, r"got shape \(3, 96, 96\)"),
    ],
)
def test_predictor_names_what_it_takes(
    pred: Predictor, given: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        pred.logits(given)  # pyright: ignore[reportArgumentType]  (what the test is about)


def test_patches_is_a_union_a_type_checker_checks() -> None:
    """``Patches`` held ``Any`` (for a PIL image), so to pyright the whole union was ``Any``
    and ``pred.logits("x.png")`` passed the type check."""
    args = typing.get_args(Patches)
    assert Any not in args
    assert {np.ndarray, torch.Tensor, Image.Image} <= set(args)
    (iterable,) = [a for a in args if typing.get_origin(a) is collections.abc.Iterable]
    assert Any not in typing.get_args(typing.get_args(iterable)[0])


def test_single_images_of_two_shapes_are_scored_in_two_batches(pred: Predictor) -> None:
    """A list of single images is stacked into batches, a new one where the shape changes
    (so no batch ever holds two shapes)."""
    small = make_patches(2, seed=4)[0]
    large = np.pad(small[1:], ((0, 0), (16, 16), (16, 16), (0, 0)), mode="reflect")
    got = list(patch_batches([small[0], small[1], large[0], Image.fromarray(small[0])], 8))
    assert [tuple(b.shape) for b in got] == [(2, 96, 96, 3), (1, 128, 128, 3), (1, 96, 96, 3)]
    want = np.concatenate([pred.logits(small), pred.logits(large), pred.logits(small[:1])])
    np.testing.assert_allclose(
        pred.logits([small[0], small[1], large[0], small[0]]), want, rtol=1e-5
    )


def test_patch_count_is_what_patch_batches_reads(patches: np.ndarray) -> None:
    """``evaluate_arrays`` checks its labels against :func:`patch_count` before scoring:
    the count of every form :func:`patch_batches` takes whole, and None where it reads
    batches one by one or refuses the shape (so the shape's own error is said)."""
    tensor = torch.from_numpy(patches)
    six, one = len(patches), 1
    for whole, n in ((patches, six), (patches[0], one), (tensor, six), (tensor[0], one),
                     (Image.fromarray(patches[0]), one)):  # fmt: skip
        assert patch_count(whole) == sum(len(b) for b in patch_batches(whole, 4)) == n
    assert patch_count([patches[:2], patches[2:]]) is None  # an iterable: read as it comes
    for refused in (patches[..., 0], tensor[0].permute(2, 0, 1), patches[..., :2]):
        assert patch_count(refused) is None
        with pytest.raises(ValueError, match="got shape"):
            next(patch_batches(refused, 4))


def test_float_patches_are_refused_not_divided_by_255_again(
    pred: Predictor, patches: np.ndarray
) -> None:
    """Float [0, 1] patches were divided by 255 again: nearly black input, wrong scores."""
    floats = patches.astype(np.float32) / 255
    with pytest.raises(ValueError, match=r"expected uint8 RGB patches .*got float32; multiply"):
        to_input(floats)
    with pytest.raises(ValueError, match="got float32"):
        pred.logits(floats)
    with pytest.raises(ValueError, match="got float32"):
        pred.logits(torch.from_numpy(floats))
    with pytest.raises(ValueError, match="got float64"):
        to_input(torch.from_numpy(patches.astype(np.float64)))


@pytest.mark.parametrize(
    ("dtype", "advice", "not_said"),
    [
        (np.uint16, r"got uint16; .*16-bit image \(0-65535\): \(x // 257\)", "floats"),
        (np.int64, r"got int64; if its values are already 0-255, cast", "floats"),
        (np.bool_, r"got bool; a boolean array is a mask", "floats"),
        (np.float32, r"got float32; multiply \[0, 1\] floats by 255", "16-bit"),
        # big-endian (an HDF5 file's): str(dtype) is '>f4', which was told "no pixel values"
        (np.dtype(">f4"), r"got float32; multiply \[0, 1\] floats by 255", "16-bit"),
        (np.dtype(">i2"), r"got int16; .*16-bit image \(0-65535\): \(x // 257\)", "floats"),
    ],
)
def test_the_uint8_refusal_gives_advice_for_its_dtype(
    pred: Predictor, patches: np.ndarray, dtype: type | np.dtype, advice: str, not_said: str
) -> None:
    """Integer and boolean patches were told to 'multiply [0, 1] floats by 255'; big-endian
    ones (review 47 M3), that they held no pixel values."""
    given = patches.astype(dtype)
    for call in (to_input, pred.logits):
        with pytest.raises(ValueError, match=advice) as caught:
            call(given)
        assert not_said not in str(caught.value)
        assert "torch" not in str(caught.value)  # numpy input: numpy advice


@pytest.mark.parametrize(
    ("dtype", "advice"),
    [
        (torch.int16, r"got int16; .*\(x // 257\)\.to\(torch\.uint8\)$"),
        (torch.int64, r"cast: x\.to\(torch\.uint8\);"),
        (torch.float32, r"round and cast: \(x \* 255\)\.round\(\)\.to\(torch\.uint8\)$"),
        (torch.complex64, r"got complex64; those are no pixel values"),
    ],
)  # fmt: skip
def test_a_tensor_is_told_the_torch_form(
    pred: Predictor, patches: np.ndarray, dtype: torch.dtype, advice: str
) -> None:
    """The 16-bit hint was ``(x // 257).astype(np.uint8)`` for a tensor too (no such method)."""
    given = torch.from_numpy(patches).to(dtype)
    for call in (to_input, pred.logits):
        with pytest.raises(ValueError, match=advice) as caught:
            call(given)
        assert "np." not in str(caught.value)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 8, 8, 3), np.complex64),
        np.zeros((2, 8, 8, 3), object),
        np.zeros((2, 8, 8, 3), "datetime64[s]"),
        np.zeros((2, 8, 8, 3), "<U3"),
    ],
    ids=["complex", "object", "datetime", "str"],
)
def test_non_numeric_patches_are_not_told_to_scale_floats(
    pred: Predictor, array: np.ndarray
) -> None:
    """Object, complex, datetime and str arrays were told to 'multiply [0, 1] floats by 255'."""
    for call in (to_input, pred.logits):  # to_input: torch's TypeError before
        with pytest.raises(ValueError, match="those are no pixel values") as caught:
            call(array)
        assert "floats" not in str(caught.value)


def test_shipped_model_from_create_model_and_list_models(
    pred: Predictor, patches: np.ndarray
) -> None:
    """There was no documented way to load the shipped model from Python: ``weights=
    "pcam-cnn"`` was taken for a file name, and the default ``cnn`` (centre none) does not
    fit its weights anyway."""
    assert list_models(pretrained=True) == ["pcam-cnn"]
    assert "cnn" in list_models() and "pcam-cnn" not in list_models()
    model = create_model("cnn", weights="pcam-cnn")
    assert model.training  # as any create_model
    logits = predict_logits(model, patches)
    np.testing.assert_allclose(logits, pred.logits(patches), rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightsError, match="shipped weights of model 'cnn', not of 'mobilenet"):
        create_model("mobilenet_v3_small", weights="pcam-cnn")
    with pytest.raises(WeightsError, match="do not fit cnn"):
        create_model("cnn", weights="pcam-cnn", width=8)


def test_shipped_weights_that_do_not_fit_say_which_tensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error kept only the first line of torch's message, ``Error(s) in loading
    state_dict for CNN:``: which tensors were missing, unexpected or of another shape was
    lost. It now counts each kind and names the first few, on one line."""
    with pytest.raises(WeightsError, match="do not fit cnn") as caught:
        create_model("cnn", weights="pcam-cnn", width=8)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 1200
    assert re.search(r"\d+ of another shape \(weights vs model\) \(\S+ \(\d+", message)
    assert "and " in message and " more" in message  # more than three: the rest counted

    from histomodels import pretrained

    real = pretrained.checkpoint_dict

    def changed(name: str) -> dict:
        ckpt = real(name)
        sd = dict(ckpt["state_dict"])
        first = next(iter(sd))
        sd["extra.weight"] = sd.pop(first)
        return {**ckpt, "state_dict": sd}

    monkeypatch.setattr(pretrained, "checkpoint_dict", changed)
    with pytest.raises(WeightsError) as caught:
        create_model("cnn", weights="pcam-cnn")
    message = str(caught.value)
    assert re.search(r"1 missing from the weights \([\w.]+\)", message)
    assert "1 unexpected in the weights (extra.weight)" in message


def test_predictor_probabilities_apply_the_temperature_and_threshold_is_shipped(
    pred: Predictor, patches: np.ndarray
) -> None:
    probs = pred.probabilities(patches)
    assert pred.temperature != 1.0
    np.testing.assert_allclose(probs, sigmoid(pred.logits(patches), pred.temperature))
    assert pred.threshold == pytest.approx(0.392332)


def test_predict_logits_leaves_the_callers_model_as_it_was(patches: np.ndarray) -> None:
    """predict_logits left a caller's model in eval mode and channels_last."""
    model = create_model("cnn").train()
    conv = next(p for p in model.parameters() if p.ndim == 4)
    assert conv.is_contiguous()
    predict_logits(model, patches)
    assert model.training
    conv = next(p for p in model.parameters() if p.ndim == 4)
    assert conv.is_contiguous()
    model = model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    predict_logits(model, patches, channels_last=False)
    assert not model.training
    conv = next(p for p in model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_a_dataloader_over_open_dataset_warns_nothing_and_scores(
    tmp_path: Path, pred: Predictor
) -> None:
    """Dataset items were read-only arrays: the default collate warned "The given NumPy
    array is not writable" (in every worker), and to_input once more."""
    ds = open_dataset(write_h5(tmp_path / "p.h5", 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = ds[0][0]
        to_input(image)
        scores = [pred.probabilities(x) for x, _, _ in DataLoader(ds, batch_size=4)]
    assert np.concatenate(scores).shape == (10,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_only = image.copy()
        read_only.flags.writeable = False
        to_input(read_only)


def test_training_from_the_shipped_weights(pred: Predictor, patches: np.ndarray) -> None:
    """``weights="pcam-cnn"`` in a TrainConfig (``train --weights pcam-cnn``) was ``error:
    pcam-cnn: no such weights file``; the run's network now starts from the shipped one."""
    from histomodels.config import TrainConfig, validate
    from histomodels.training.network import build_model

    cfg = validate(TrainConfig(model="cnn", weights="pcam-cnn"))
    model = build_model(cfg, torch.device("cpu"))
    np.testing.assert_allclose(predict_logits(model, patches), pred.logits(patches), rtol=1e-5)


def test_pil_images_score_as_predict_scores_their_files(
    pred: Predictor, patches: np.ndarray, tmp_path: Path
) -> None:
    """PIL input was converted with ``Image.convert("RGB")``, not predict's decoder: an
    RGBA patch with alpha 128 went black where predict composites it on white (0.452 vs
    0.216), 12-bit grey was clipped at 255, mode-F [0, 1] floats were scored as black. A
    PIL image, opened from its file or made in memory, now scores as ``predict_paths``
    scores the file; a 32-bit float or integer grey image is refused, as predict refuses it."""
    import csv

    from histomodels.predict import predict_paths

    rgba = np.dstack([patches[0], np.full(patches[0].shape[:2], 128, np.uint8)])
    grey12 = (patches[1].mean(axis=2) * 16).astype(np.uint16)  # 12-bit values, 0..4080
    made = {"rgba.png": Image.fromarray(rgba, "RGBA"), "grey12.png": Image.fromarray(grey12)}
    for name, im in made.items():
        im.save(tmp_path / name)
    paths = [tmp_path / name for name in made]
    out = tmp_path / "scores.csv"
    predict_paths("pcam-cnn", paths, out, draw_heatmaps=False, device="cpu")
    with out.open(newline="") as fh:
        by_file = {Path(r["path"]).name: float(r["probability"]) for r in csv.DictReader(fh)}
    assert set(by_file) == set(made)
    for name, im in made.items():
        with Image.open(tmp_path / name) as opened:
            from_file = float(pred.probabilities(opened)[0])
        in_memory = float(pred.probabilities(im)[0])
        assert from_file == pytest.approx(by_file[name], abs=1e-6), name
        assert in_memory == pytest.approx(by_file[name], abs=1e-6), name
    for mode, values in [("F", patches[2].mean(axis=2) / 255), ("I", grey12.astype(np.int32))]:
        with pytest.raises(ValueError, match=f"mode {mode}"):
            pred.probabilities(
                Image.fromarray(values.astype(np.float32 if mode == "F" else np.int32), mode)
            )


def test_a_patch_dataset_is_a_torch_dataset_to_type_checkers_and_pickles(tmp_path: Path) -> None:
    """``DataLoader(open_dataset(path))`` needed a ``# type: ignore``: ``PatchDataset`` was
    no ``torch.utils.data.Dataset`` to pyright (the assignment below failed the type
    check; the project's pyright run covers this file). It is one to type checkers now,
    while at run time it stays a plain class: it pickles and goes to worker processes."""
    import pickle

    from torch.utils.data import Dataset

    ds = open_dataset(write_h5(tmp_path / "p.h5", 10))
    typed: Dataset[tuple[np.ndarray, int, str]] = ds  # a pyright error before
    again = pickle.loads(pickle.dumps(typed))
    assert len(again) == 10 and again[3][2] == ds[3][2]
    assert np.array_equal(again[3][0], ds[3][0])
    ids = [i for _, _, batch in DataLoader(ds, batch_size=5, num_workers=2) for i in batch]
    assert ids == ds.ids()
