"""Prefetch: the next batch is made in a background thread; the weights stay bit for bit the
same, errors and Ctrl-C come out of train(), and no thread outlives an epoch."""

from __future__ import annotations

import threading

import pytest
import torch

from histomodels.checkpoint import read_checkpoint
from histomodels.config import TrainConfig
from histomodels.synthetic import make_patches
from histomodels.training import Callback, train
from histomodels.training.prefetch import THREAD_PREFIX, Prefetcher, use_prefetch

TINY = {"width": 8, "depth": 2, "blocks": 1}


@pytest.fixture(scope="module")
def arrays():
    return make_patches(64, seed=0), make_patches(32, seed=1)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        model="cnn", model_config=TINY, epochs=2, batch_size=16, progress=False, threads=1,
        jpeg_blur=0.5, cutout=0.3, randstain=0.5, mixup=0.4, label_smoothing=0.1,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _prefetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


class CutAfter(Callback):
    """Ends every epoch after ``steps`` optimizer steps (as a time budget does) and notes the
    prefetch threads alive during training."""

    def __init__(self, steps: int) -> None:
        self.steps, self.count, self.seen_threads = steps, 0, set()

    def on_epoch_start(self, trainer, epoch) -> None:
        self.count = 0

    def on_step_end(self, trainer) -> bool:
        self.seen_threads.update(_prefetch_threads())
        self.count += 1
        return self.count >= self.steps


def _weights(run) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "last.pt")["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cut", [None, 2])
def test_prefetch_on_and_off_train_the_same_weights(arrays, tmp_path, cut):
    """Augmentation (JPEG/blur, cut-out, RandStain), mixup and label smoothing, 4 batches an
    epoch; with ``cut`` each epoch ends after 2 steps, so prefetch made a batch in vain."""
    (xt, yt), (xv, yv) = arrays
    runs, seen = {}, {}
    for on in (False, True):
        cb = CutAfter(cut or 10**9)
        res = train(_cfg(prefetch=on), tmp_path / str(on), train_data=(xt, yt),
                    val_data=(xv, yv), callbacks=[cb])  # fmt: skip
        runs[on], seen[on] = res, cb.seen_threads
        assert not _prefetch_threads()
    assert seen == {False: set(), True: {f"{THREAD_PREFIX}_0"}}  # a thread only when on
    off, on = runs[False], runs[True]
    assert [h["train_loss"] for h in off.history] == [h["train_loss"] for h in on.history]
    assert off.best_metrics == on.best_metrics
    assert _same(_weights(tmp_path / "False"), _weights(tmp_path / "True"))
    assert on.train_patches_per_s > 0 and len(on.history) == 2
    if cut:
        assert off.history[0]["train_patches_per_s"] and off.best_epoch >= 1


def test_streamed_data_with_prefetch_and_the_cli_option(tmp_path, monkeypatch):
    """Out-of-core data (blocks read by the worker thread) trains the same weights; the CLI's
    --prefetch/--no-prefetch reach the config, also on --resume."""
    import json

    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    monkeypatch.setenv("HISTOMODELS_CACHE_BYTES", "1")  # stream every split in blocks
    data = {"data": str(write_h5(tmp_path / "train.h5", 64, seed=0)),
            "val": str(write_h5(tmp_path / "val.h5", 32, seed=1))}  # fmt: skip
    for on in (False, True):
        train(_cfg(prefetch=on, epochs=1, **data), tmp_path / str(on))
    assert _same(_weights(tmp_path / "False"), _weights(tmp_path / "True"))
    run = tmp_path / "cli"
    args = ["train", "--data", data["data"], "--val", data["val"], "--out", str(run),
            "--model-config", json.dumps(TINY), "--batch-size", "16", "--threads", "1",
            "--quiet"]  # fmt: skip
    for extra in (["--epochs", "1", "--no-prefetch"], ["--epochs", "2", "--prefetch", "--resume"]):
        r = CliRunner().invoke(app, [*args, *extra])
        assert r.exit_code == 0, r.output
    assert json.loads((run / "config.json").read_text())["prefetch"] is True
    assert len(json.loads((run / "history.json").read_text())) == 2
    assert not _prefetch_threads()


def test_prefetch_with_a_real_time_budget_stops_cleanly(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    res = train(_cfg(epochs=50, time_budget=0.002, prefetch=True), tmp_path / "r",
                train_data=(xt, yt), val_data=(xv, yv))  # fmt: skip
    assert res.stop_reason == "budget" and len(res.history) == 1
    assert not _prefetch_threads()


def test_an_error_inside_augmentation_comes_out_of_train(arrays, tmp_path, monkeypatch):
    """libjpeg failing inside the JPEG re-encode (in the worker thread) is the same error in
    train()'s caller, with the worker's frames in its traceback; the thread is gone."""
    from PIL import JpegImagePlugin

    def broken_encoder(*args, **kwargs):
        raise OSError("encoder error -2 when writing image file")

    monkeypatch.setitem(JpegImagePlugin.Image.SAVE, "JPEG", broken_encoder)
    (xt, yt), (xv, yv) = arrays
    before = set(threading.enumerate())
    with pytest.raises(OSError, match="encoder error -2") as info:
        train(_cfg(jpeg_blur=1.0, prefetch=True), tmp_path / "r", train_data=(xt, yt),
              val_data=(xv, yv))  # fmt: skip
    names = [e.name for e in info.traceback]
    assert "_jpeg_u8" in names and "fit_epoch" in names  # where libjpeg failed, and the loop
    assert not _prefetch_threads() and set(threading.enumerate()) <= before


def test_ctrl_c_during_training_leaves_no_thread(arrays, tmp_path):
    class Interrupt(Callback):
        def on_step_end(self, trainer) -> None:
            raise KeyboardInterrupt

    (xt, yt), (xv, yv) = arrays
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(prefetch=True), tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv),
              callbacks=[Interrupt()])  # fmt: skip
    assert not _prefetch_threads()


def test_prefetcher_keeps_order_and_joins_its_thread_after_an_early_break():
    made: list[int] = []

    def make(b: int) -> int:
        made.append(b)
        return b * b

    with Prefetcher(make, 6) as items:
        got = []
        for item in items:
            got.append(item)
            if len(got) == 3:
                break
    assert got == [0, 1, 4]
    assert made in ([0, 1, 2], [0, 1, 2, 3])  # the one made ahead is cancelled or discarded
    assert not _prefetch_threads()
    with Prefetcher(make, 3, enabled=False) as items:
        assert list(items) == [0, 1, 4]
    with Prefetcher(make, 0) as items:
        assert list(items) == []


def test_prefetcher_raises_the_workers_error_when_its_item_is_asked_for():
    def make(b: int) -> int:
        if b == 2:
            raise ValueError(f"batch {b} is bad")
        return b

    got = []
    with pytest.raises(ValueError, match="batch 2 is bad") as info, Prefetcher(make, 5) as items:
        for item in items:
            got.append(item)
    assert got == [0, 1] and info.traceback[-1].name == "make"
    assert not _prefetch_threads()


def test_prefetch_default_is_on_for_cuda_only():
    assert use_prefetch(None, torch.device("cuda")) is True
    assert use_prefetch(None, torch.device("cpu")) is False
    assert use_prefetch(True, torch.device("cpu")) is True
    assert use_prefetch(False, torch.device("cuda")) is False
