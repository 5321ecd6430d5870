"""Issue 11's training levers (each a TrainConfig key, off by default): centre-safe cut-out,
mixup. Each is checked for what it promises and that a run with it trains and records it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from histomodels.checkpoint import read_checkpoint
from histomodels.cli import app
from histomodels.config import ConfigError, TrainConfig, validate
from histomodels.data.transforms import Augment, centre_box, cutout_mask
from histomodels.synthetic import make_patches, write_h5
from histomodels.training import train
from histomodels.training.levers import Mixup
from histomodels.training.trainer import Trainer

torch.set_num_threads(1)
TINY = {"width": 8, "depth": 2, "blocks": 1}


@pytest.fixture(scope="module")
def arrays():
    return make_patches(64, seed=0), make_patches(48, seed=1)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="cnn", model_config=TINY, epochs=1, batch_size=16, progress=False, threads=1)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------ cut-out


def test_centre_box_is_pcams_label_region() -> None:
    assert centre_box(96) == (32, 64)


def test_cutout_never_touches_the_centre_and_changes_the_outside() -> None:
    x = torch.from_numpy(make_patches(32, seed=5)[0])
    changed = 0
    for seed in range(40):
        out = Augment(0.0, seed=seed, cutout=1.0)(x)
        assert out.shape == x.shape and out.dtype == torch.uint8
        assert torch.equal(out[:, 32:64, 32:64], x[:, 32:64, 32:64]), seed
        changed += int((out != x).flatten(1).any(1).sum())
    # every patch gets 1-3 rectangles; only one lying wholly inside the centre changes nothing
    assert changed > 0.9 * 40 * len(x)
    # the filled pixels carry the patch's mean colour
    out = Augment(0.0, seed=0, cutout=1.0)(x)
    mask = cutout_mask(len(x), 96, 96, 1.0, torch.Generator().manual_seed(0))
    i = int(mask.flatten(1).any(1).nonzero()[0])
    filled = out[i][mask[i]].float()
    assert (filled - x[i].float().mean((0, 1))).abs().max() <= 0.5


def test_cutout_mask_probability_sizes_and_seed() -> None:
    g = torch.Generator().manual_seed(1)
    m = cutout_mask(2000, 96, 96, 0.3, g)
    assert not m[:, 32:64, 32:64].any()
    hit = m.flatten(1).any(1).float().mean().item()
    assert 0.24 < hit < 0.32  # p = 0.3, minus rectangles lying wholly in the centre
    area = m.flatten(1).sum(1)
    assert area.max() <= 3 * 32 * 32 and area[area > 0].min() >= 1
    a = cutout_mask(8, 96, 96, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(a, cutout_mask(8, 96, 96, 1.0, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, cutout_mask(8, 96, 96, 1.0, torch.Generator().manual_seed(8)))


def test_cutout_with_full_augmentation_keeps_shape_and_is_repeatable() -> None:
    x = torch.from_numpy(make_patches(8, seed=2)[0])
    a = Augment(1.0, seed=3, cutout=0.5)(x)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, Augment(1.0, seed=3, cutout=0.5)(x))
    assert not torch.equal(a, Augment(1.0, seed=3)(x))
    with pytest.raises(ValueError, match="cutout"):
        Augment(cutout=1.5)


# -------------------------------------------------------------------------------- mixup


def test_mixup_targets_are_the_same_convex_combinations_as_the_inputs(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    trainer = Trainer(_cfg(mixup=0.4), tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    trainer.setup()
    n = 64
    x = torch.eye(n)  # sample i is the one-hot e_i, so each mix shows its partner and lam
    y = torch.rand(n, generator=torch.Generator().manual_seed(0))
    mix = Mixup(0.4)
    mix.on_epoch_start(trainer, 1)
    xm, ym = mix.on_batch(trainer, x, y)
    assert xm.shape == x.shape and ym.shape == y.shape
    lams = []
    for i in range(n):
        lam = float(xm[i, i])
        others = [j for j in range(n) if j != i and xm[i, j] > 0]
        assert len(others) <= 1 and torch.isclose(xm[i].sum(), torch.tensor(1.0))
        j = others[0] if others else i
        assert 0 <= lam <= 1
        assert float(ym[i]) == pytest.approx(lam * float(y[i]) + (1 - lam) * float(y[j]), abs=1e-6)
        lams.append(lam)
    assert np.std(lams) > 0.05  # Beta(0.4, 0.4) spreads lam toward 0 and 1, per sample
    # seeded by seed, epoch and rank: the same epoch mixes the same way, another does not
    again = Mixup(0.4)
    again.on_epoch_start(trainer, 1)
    assert torch.equal(again.on_batch(trainer, x, y)[1], ym)
    again.on_epoch_start(trainer, 2)
    assert not torch.equal(again.on_batch(trainer, x, y)[1], ym)


def test_training_with_cutout_mixup_and_label_smoothing(arrays, tmp_path):
    (xt, yt), (xv, yv) = arrays
    cfg = _cfg(cutout=0.5, mixup=0.4, label_smoothing=0.1, bf16=False, epochs=2)
    a = train(cfg, tmp_path / "a", train_data=(xt, yt), val_data=(xv, yv))
    b = train(cfg, tmp_path / "b", train_data=(xt, yt), val_data=(xv, yv))
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert all(np.isfinite(h["train_loss"]) and h["train_loss"] > 0 for h in a.history)
    plain_cfg = _cfg(bf16=False, epochs=2)
    plain = train(plain_cfg, tmp_path / "c", train_data=(xt, yt), val_data=(xv, yv))
    assert plain.history[0]["train_loss"] != a.history[0]["train_loss"]
    saved = read_checkpoint(tmp_path / "a" / "best.pt")["train_config"]
    assert saved["cutout"] == 0.5 and saved["mixup"] == 0.4


def test_levers_are_off_by_default_and_range_checked() -> None:
    cfg = TrainConfig()
    assert cfg.cutout == 0 and cfg.mixup == 0
    with pytest.raises(ConfigError, match="cutout"):
        validate(TrainConfig(cutout=1.5))
    with pytest.raises(ConfigError, match="mixup"):
        validate(TrainConfig(mixup=-0.1))


def test_cli_flags_reach_the_run_config(tmp_path):
    train_h5 = write_h5(tmp_path / "train.h5", 32, seed=0)
    val_h5 = write_h5(tmp_path / "val.h5", 24, seed=1)
    out = tmp_path / "r"
    r = CliRunner().invoke(
        app,
        ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(out),
         "--model-config", json.dumps(TINY), "--epochs", "1", "--batch-size", "16",
         "--cutout", "0.25", "--mixup", "0.2", "--threads", "1", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    used = json.loads((out / "config.json").read_text())
    assert used["cutout"] == 0.25 and used["mixup"] == 0.2
    r = CliRunner().invoke(
        app, ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(out / "x"),
              "--cutout", "2", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 2 and "Invalid value for '--cutout'" in r.stderr
