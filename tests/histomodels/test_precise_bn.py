"""Precise BatchNorm (``precise_bn``): the running statistics recomputed over un-augmented
training patches before each validation; weights and the training trajectory untouched."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from _trainkit import TINY, train_args
from torch import nn
from typer.testing import CliRunner

from histomodels.checkpoint import load_model
from histomodels.cli import app
from histomodels.config import ConfigError, TrainConfig, validate
from histomodels.preprocess import to_input
from histomodels.synthetic import make_patches
from histomodels.training import train
from histomodels.training.precise_bn import PreciseBN, has_batchnorm, recompute_batchnorm
from histomodels.training.trainer import Trainer

torch.set_num_threads(1)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5),
    )  # fmt: skip


def _bn_inputs(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """What each BatchNorm layer receives from ``x`` with the net in eval mode."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        for m in net
        if isinstance(m, nn.BatchNorm2d)
    ]
    net.eval()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def test_statistics_are_the_exact_eval_mode_moments_and_weights_stay() -> None:
    net = _net()
    x = torch.randn(32, 3, 12, 12) * 2 + 1
    for m in net:  # stale statistics from "training"
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)  # type: ignore[union-attr]
            m.running_var.fill_(9.0)  # type: ignore[union-attr]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k}
    net.train()
    assert recompute_batchnorm(net, [x]) == 32
    assert net.training  # mode restored
    bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
    # the second layer's input depends on dropout being off: eval-mode inputs after the
    # recompute are what its statistics must describe (up to the first layer normalising
    # by the biased batch variance while it gathers: a factor sqrt(n / (n - 1)))
    for bn, inp in zip(bns, _bn_inputs(net, x), strict=True):
        mean, var = inp.mean((0, 2, 3)), inp.var((0, 2, 3), unbiased=True)
        assert torch.allclose(bn.running_mean, mean, rtol=1e-3, atol=1e-5)  # type: ignore[arg-type]
        assert torch.allclose(bn.running_var, var, rtol=1e-3, atol=1e-5)  # type: ignore[arg-type]
        assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 0  # type: ignore[arg-type]
    for k, v in net.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_unequal_batches_give_the_moments_of_everything_seen() -> None:
    """Every input counts the same, whatever its batch, and the spread between batches is
    part of the variance (an average of per-batch statistics gave mean 5, variance 0)."""
    bn = nn.BatchNorm2d(1)
    zeros, tens = torch.zeros(512, 1, 1, 1), torch.full((8, 1, 1, 1), 10.0)
    assert recompute_batchnorm(bn, [zeros, tens]) == 520
    both = torch.cat([zeros, tens]).flatten()
    assert float(bn.running_mean) == pytest.approx(float(both.mean()), rel=1e-6)  # type: ignore[arg-type]
    assert float(bn.running_var) == pytest.approx(float(both.var()), rel=1e-6)  # type: ignore[arg-type]
    assert int(bn.num_batches_tracked) == 0  # type: ignore[arg-type]


def test_an_error_midway_changes_nothing() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def batches():
        yield torch.randn(8, 3, 12, 12)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        recompute_batchnorm(net, batches())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_nothing_seen_changes_nothing() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recompute_batchnorm(net, []) == 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "num_batches" not in k)
    assert recompute_batchnorm(nn.Linear(2, 1), [torch.zeros(1, 2)]) == 0
    assert not has_batchnorm(nn.Linear(2, 1)) and has_batchnorm(net)


@pytest.fixture(scope="module")
def arrays():
    return make_patches(64, seed=0), make_patches(48, seed=1)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        model="cnn", model_config=TINY, epochs=2, batch_size=16, progress=False, threads=1,
        bf16=False, eval_batch_size=32,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_training_keeps_its_trajectory_and_saves_recomputed_statistics(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    plain = train(_cfg(), tmp_path / "plain", train_data=(xt, yt), val_data=(xv, yv))
    # a sample larger than the training set is all of it
    precise = train(_cfg(precise_bn=1000), tmp_path / "pbn", train_data=(xt, yt), val_data=(xv, yv))
    # the same optimisation: only what is validated and saved differs
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in precise.history]
    assert [h["val_loss"] for h in plain.history] != [h["val_loss"] for h in precise.history]
    model, ckpt = load_model(tmp_path / "pbn" / "best.pt")
    assert ckpt["train_config"]["precise_bn"] == 1000
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert saved
    cb = PreciseBN(1000)  # the callback's sample, in its order and batches
    fake = SimpleNamespace(x_train=torch.from_numpy(xt), cfg=SimpleNamespace(seed=0), model=model)
    cb.setup(fake)  # type: ignore[arg-type]
    assert cb.sample is not None and cb.sample.tolist() == list(range(64))  # read in order
    assert sorted(cb.order.tolist()) == list(range(64)) and cb.order.tolist() != list(range(64))
    x = torch.from_numpy(xt)[cb.sample][cb.order]
    recompute_batchnorm(
        model, [to_input(x[i : i + 32], channels_last=True) for i in range(0, 64, 32)]
    )
    # the run recomputed on its device: on CUDA, TF32 convolutions agree with the CPU's to ~1e-4
    tol = (2e-3, 1e-4) if torch.cuda.is_available() else (1e-4, 1e-5)
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.allclose(v, saved[k], rtol=tol[0], atol=tol[1]), k
    plain_model, _ = load_model(tmp_path / "plain" / "best.pt")
    stats = [k for k in saved if k.endswith("running_var")]
    assert any(not torch.allclose(plain_model.state_dict()[k], saved[k]) for k in stats)


def test_a_frozen_backbone_keeps_its_statistics(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    trainer = Trainer(_cfg(precise_bn=16), tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    trainer.setup()
    cb = next(c for c in trainer.callbacks if isinstance(c, PreciseBN))
    assert cb.sample is not None and len(cb.sample) == 16
    before = {k: v.clone() for k, v in trainer.eval_model.state_dict().items()}
    trainer.frozen = True
    cb.on_validate_start(trainer)
    assert all(torch.equal(v, before[k]) for k, v in trainer.eval_model.state_dict().items())
    trainer.frozen = False
    cb.on_validate_start(trainer)
    after = trainer.eval_model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before if "running_mean" in k)


def test_off_by_default_range_checked_and_on_the_command_line(tmp_path):
    assert TrainConfig().precise_bn == 0
    with pytest.raises(ConfigError, match="precise_bn"):
        validate(TrainConfig(precise_bn=-1))
    args, out = train_args(tmp_path, epochs=1)
    r = CliRunner().invoke(app, [*args, "--precise-bn", "20"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["precise_bn"] == 20
    r = CliRunner().invoke(app, [*args[:-1], "--precise-bn", "-3"])
    assert r.exit_code == 2 and "--precise-bn" in r.stderr


def test_a_model_without_batchnorm_says_so(arrays, tmp_path, caplog):
    (xt, yt), (xv, yv) = arrays
    cfg = _cfg(model="timm/vit_tiny_patch16_224", model_config={"img_size": 96, "depth": 1},
               precise_bn=16, epochs=1)  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    with caplog.at_level("WARNING", logger="histomodels.training"):
        trainer.setup()
    assert "has no BatchNorm layer" in caplog.text
