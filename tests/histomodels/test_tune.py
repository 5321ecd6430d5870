"""Ax tuning: tiny Sobol trials, saved after each trial, resumable, best config reusable."""

from __future__ import annotations

import json

import pytest

from histomodels.config import TrainConfig, resolve_config
from histomodels.synthetic import make_patches
from histomodels.training import train
from histomodels.tune import tune


@pytest.mark.slow
def test_tune_resumes_and_writes_a_config_train_accepts(tmp_path):
    data, val = make_patches(48, seed=0), make_patches(32, seed=1)
    base = TrainConfig(eval_batch_size=64, threads=1, model_config={"blocks": 1})
    out = tmp_path / "tune"
    best = tune(data, val, out, trials=2, trial_minutes=0.02, sobol_trials=5, quiet=True, base=base)
    records = json.loads((out / "trials.json").read_text())
    assert [r["trial"] for r in records] == [0, 1]
    assert all(r["status"] == "completed" and 0 <= r["val_auc"] <= 1 for r in records)
    assert (out / "ax_experiment.json").is_file()
    assert best["val_auc"] == max(r["val_auc"] for r in records)
    # a second call with a larger total picks the experiment up: one new trial, not three
    tune(data, val, out, trials=3, trial_minutes=0.02, sobol_trials=5, quiet=True, base=base)
    records = json.loads((out / "trials.json").read_text())
    assert [r["trial"] for r in records] == [0, 1, 2]
    assert len({json.dumps(r["params"], sort_keys=True) for r in records}) == 3
    # best_config.json feeds `train --config`
    cfg = resolve_config(out / "best_config.json", epochs=1, progress=False)
    saved = json.loads((out / "best_config.json").read_text())
    params = next(r["params"] for r in records if r["trial"] == saved["trial"])
    assert cfg.lr == pytest.approx(params["lr"]) and cfg.batch_size == params["batch_size"]
    assert cfg.model_config["width"] == params["width"]
    res = train(cfg, tmp_path / "run", train_data=data, val_data=val)
    assert res.history and (tmp_path / "run" / "best.pt").is_file()
