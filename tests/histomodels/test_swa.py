"""Stochastic weight averaging (``swa``): the LR schedule's constant tail, the equal-weight
average of the epochs' weights, its recomputed BatchNorm statistics, resume and the CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from _trainkit import TINY, train_args
from typer.testing import CliRunner

from histomodels.checkpoint import read_checkpoint
from histomodels.cli import app
from histomodels.config import ConfigError, TrainConfig, validate
from histomodels.models import create_model
from histomodels.synthetic import make_patches
from histomodels.training import train
from histomodels.training.base import Callback
from histomodels.training.schedule import LRSchedule

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def arrays():
    return make_patches(64, seed=0), make_patches(48, seed=1)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        model="cnn", model_config=TINY, epochs=4, batch_size=16, progress=False, threads=1,
        bf16=False, eval_batch_size=32, patience=10,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _factors(cfg: TrainConfig, steps: int) -> tuple[list[float], list[bool]]:
    sched = LRSchedule(cfg, steps_per_epoch=steps // cfg.epochs)
    factors, averaging = [], []
    for _ in range(steps):
        factors.append(sched.factor())
        averaging.append(sched.averaging())
        sched.step_count += 1
    return factors, averaging


def test_the_schedule_anneals_to_swa_lr_then_holds_it():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, swa=0.5, swa_lr=0.2)
    f, avg = _factors(cfg, 100)  # 10 warm-up steps, then a span of 90: SWA from step 55
    assert f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(f[10:55]))  # cosine down
    assert f[54] == pytest.approx(0.2, abs=0.01) and f[54] > 0.2
    assert f[55:] == [0.2] * 45
    assert avg == [False] * 55 + [True] * 45
    # without swa: the usual cosine to min_lr_ratio, never averaging
    f0, avg0 = _factors(TrainConfig(epochs=10, warmup_epochs=1), 100)
    assert not any(avg0) and f0[-1] == pytest.approx(0.01, abs=0.001) and f0[:11] == f[:11]
    # a time budget counts as progress too
    sched = LRSchedule(cfg, steps_per_epoch=10)
    sched.step_count = 20
    assert sched.factor(time_fraction=0.6) == 0.2 and sched.averaging()


class Raw(Callback):
    """The trained (raw) weights at each validation."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_validate_start(self, trainer) -> None:
        state = trainer.model.state_dict()  # on the training device: compared on the CPU
        self.weights.append({k: v.detach().cpu().clone() for k, v in state.items()})


def test_the_validated_model_is_the_average_of_the_phase_with_its_own_statistics(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    raw = Raw()
    res = train(
        _cfg(swa=0.5), tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv), callbacks=[raw]
    )
    # 4 steps an epoch, 4 of warm-up, a span of 12, averaging from step 6: epochs 3 and 4
    counts = [h.get("swa_models", 0) for h in res.history]
    assert counts == [0, 0, 1, 2]
    n = counts[-1]
    last = read_checkpoint(tmp_path / "r" / "last.pt")
    for k, _ in create_model("cnn", **last["model_config"]).named_parameters():
        mean = torch.stack([w[k] for w in raw.weights[-n:]]).mean(0)
        assert torch.allclose(last["state_dict"][k], mean, atol=1e-6), k
        assert torch.equal(last["train_state_dict"][k], raw.weights[-1][k])
    # BatchNorm statistics: recomputed for the average, not the last raw model's
    stats = [k for k in last["state_dict"] if k.endswith("running_mean")]
    assert stats and any(
        not torch.allclose(last["state_dict"][k], raw.weights[-1][k]) for k in stats
    )
    # the same run without SWA trains the same first epochs, then differs
    plain = train(_cfg(), tmp_path / "p", train_data=(xt, yt), val_data=(xv, yv))
    assert plain.history[0]["train_loss"] == res.history[0]["train_loss"]
    assert "swa_models" not in plain.history[-1]


class StopBefore(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_run_resumed_inside_the_phase_ends_with_the_same_average(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    whole = train(_cfg(swa=0.5), tmp_path / "a", train_data=(xt, yt), val_data=(xv, yv))
    assert whole.history[2].get("swa_models", 0) >= 1  # epoch 3 already averaged
    with pytest.raises(KeyboardInterrupt):
        train(
            _cfg(swa=0.5),
            tmp_path / "b",
            train_data=(xt, yt),
            val_data=(xv, yv),
            callbacks=[StopBefore(4)],
        )
    resumed = train(
        _cfg(swa=0.5), tmp_path / "b", resume=True, train_data=(xt, yt), val_data=(xv, yv)
    )
    assert [h.get("swa_models") for h in resumed.history] == [
        h.get("swa_models") for h in whole.history
    ]
    a = read_checkpoint(tmp_path / "a" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), [
        k for k in a if not torch.allclose(a[k].float(), b[k].float(), atol=1e-6)
    ]


def test_off_by_default_range_checked_and_on_the_command_line(tmp_path):
    assert TrainConfig().swa == 0
    for bad in (TrainConfig(swa=1.0), TrainConfig(swa=-0.1), TrainConfig(swa=0.5, swa_lr=0.0)):
        with pytest.raises(ConfigError, match="swa"):
            validate(bad)
    with pytest.raises(ConfigError, match="choose one"):
        validate(TrainConfig(swa=0.5, ema=0.99))
    args, out = train_args(tmp_path, epochs=2)
    r = CliRunner().invoke(app, [*args, "--swa", "0.5"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["swa"] == 0.5
    assert json.loads((out / "history.json").read_text())[-1]["swa_models"] == 1
    r = CliRunner().invoke(app, [*args[:-1], "--swa", "1.5"])
    assert r.exit_code == 2 and "--swa" in r.stderr


def test_warm_up_is_never_averaged_even_when_the_phase_starts_at_once(arrays, tmp_path):
    sched = LRSchedule(TrainConfig(epochs=10, warmup_epochs=1, swa=0.005), steps_per_epoch=10)
    seen = []
    for _ in range(12):
        sched.factor()
        seen.append(sched.averaging())
        sched.step_count += 1
    assert seen == [False] * 11 + [True]  # warm-up, one annealing step, then the phase
    (xt, yt), (xv, yv) = arrays
    res = train(_cfg(swa=0.04), tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    assert [h.get("swa_models", 0) for h in res.history] == [0, 1, 2, 3]  # epoch 1: warm-up


def test_a_run_resumed_with_more_epochs_validates_the_trained_weights_until_its_later_phase(
    arrays, tmp_path
):
    (xt, yt), (xv, yv) = arrays
    run = tmp_path / "r"
    train(_cfg(swa=0.5), run, train_data=(xt, yt), val_data=(xv, yv))
    raw = Raw()
    res = train(
        _cfg(swa=0.5, epochs=12),
        run,
        resume=True,
        train_data=(xt, yt),
        val_data=(xv, yv),
        callbacks=[raw],
    )
    # 12 epochs: warm-up 4 steps, span 44, averaging from step 22 (epoch 7's steps 24-27)
    counts = [h.get("swa_models", 0) for h in res.history]
    assert counts == [0, 0, 1, 2, 0, 0, 1, 2, 3, 4, 5, 6]  # anew from epoch 7, not 3, 4, ...
    losses = [h["val_loss"] for h in res.history[4:6]]
    assert losses[0] != losses[1]  # the trained weights, not a frozen average
    last = read_checkpoint(run / "last.pt")
    for k, _ in create_model("cnn", **last["model_config"]).named_parameters():
        mean = torch.stack([w[k] for w in raw.weights[-6:]]).mean(0)
        assert torch.allclose(last["state_dict"][k], mean, atol=1e-6), k


def test_a_run_stopped_before_the_phase_says_nothing_was_averaged(arrays, tmp_path, caplog):
    (xt, yt), (xv, yv) = arrays
    with caplog.at_level("WARNING", logger="histomodels.training"):
        train(
            _cfg(swa=0.9, patience=1, epochs=30),
            tmp_path / "r",
            train_data=(xt, yt),
            val_data=(xv, yv),
            callbacks=[StopAt(3)],
        )
    assert "before the averaging phase began; nothing was averaged" in caplog.text


class StopAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def should_stop(self, trainer) -> str | None:
        return "early" if trainer.epoch >= self.epoch else None


def test_other_schedules_and_a_tune_searching_ema_are_refused(tmp_path):
    from histomodels.tune import TuneError, tune

    for schedule in ("plateau", "constant"):
        with pytest.raises(ConfigError, match="cosine"):
            validate(TrainConfig(swa=0.5, schedule=schedule))
    data, val = make_patches(16, seed=0), make_patches(16, seed=1)
    with pytest.raises(TuneError, match="--fix ema=0"):
        tune(data, val, tmp_path / "t", trials=1, trial_epochs=1, base=TrainConfig(swa=0.5))
    assert not (tmp_path / "t").exists()


def test_a_tune_saved_before_the_swa_keys_existed_still_resumes(tmp_path):
    from histomodels.tune import SETTINGS_FILE, TuneError, _check_settings, _reusable

    base = _reusable(TrainConfig(epochs=8))
    old = {k: v for k, v in base.items() if k not in ("swa", "swa_lr")}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"fixed": {}, "base": old, "limit": {}}))
    _check_settings(tmp_path, {"fixed": {}, "base": base, "limit": {}})  # no error
    changed = _reusable(TrainConfig(epochs=8, swa=0.5))
    with pytest.raises(TuneError, match="differs in swa"):
        _check_settings(tmp_path, {"fixed": {}, "base": changed, "limit": {}})
