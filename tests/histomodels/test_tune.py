"""Ax tuning: tiny Sobol trials, saved after each trial, resumable, best config reusable."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import names_the_file_in_the_way, unboxed

from histomodels.config import TrainConfig, resolve_config
from histomodels.synthetic import make_patches
from histomodels.training import train
from histomodels.tune import (
    EXPERIMENT_FILE,
    MAX_FAILED_IN_A_ROW,
    SPACE,
    TuneError,
    search_space,
    trial_config,
    trial_failure,
    tune,
)

#: an Ax parameterisation of the search space before the recipe levers (7 dimensions)
OLD_PARAMS = dict(
    lr=1e-3, weight_decay=1e-3, width=24, depth=3, dropout=0.2, batch_size=64, aug_strength=0.5
)
#: pins for tests whose behaviour does not depend on the network's size: the narrowest,
#: shallowest trials (a width-64, depth-5 trial's one backward pass took ~15 s on 2 cores)
SMALL = {"width": 16, "depth": 3}


@pytest.mark.slow
def test_tune_resumes_and_writes_a_config_train_accepts(tmp_path):
    data, val = make_patches(48, seed=0), make_patches(32, seed=1)
    base = TrainConfig(eval_batch_size=64, threads=1, model_config={"blocks": 1})
    out = tmp_path / "tune"
    kw = dict(trial_minutes=0.02, sobol_trials=5, quiet=True, base=base, fixed=SMALL)
    best = tune(data, val, out, trials=2, **kw)
    records = json.loads((out / "trials.json").read_text())
    assert [r["trial"] for r in records] == [0, 1]
    assert all(r["status"] == "completed" and 0 <= r["val_auc"] <= 1 for r in records)
    assert (out / "ax_experiment.json").is_file()
    assert best["val_auc"] == max(r["val_auc"] for r in records)
    # a second call with a larger total picks the experiment up: one new trial, not three
    tune(data, val, out, trials=3, **kw)
    records = json.loads((out / "trials.json").read_text())
    assert [r["trial"] for r in records] == [0, 1, 2]
    assert len({json.dumps(r["params"], sort_keys=True) for r in records}) == 3
    # best_config.json feeds `train --config`
    cfg = resolve_config(out / "best_config.json", epochs=1, progress=False)
    saved = json.loads((out / "best_config.json").read_text())
    params = next(r["params"] for r in records if r["trial"] == saved["trial"])
    assert cfg.lr == pytest.approx(params["lr"]) and cfg.batch_size == params["batch_size"]
    assert cfg.model_config["width"] == 16 and cfg.model_config["depth"] == 3  # the pins
    assert cfg.model_config["centre"] == params["centre"] and cfg.cutout == params["cutout"]
    assert cfg.mixup == params["mixup"] and cfg.ema == (params["ema"] or None)
    res = train(cfg, tmp_path / "run", train_data=data, val_data=val)
    assert res.history and (tmp_path / "run" / "best.pt").is_file()


def test_every_dimension_reaches_the_trial_config():
    levers = dict(
        centre="branch", cutout=0.3, mixup=0.2, randstain=0.1, jpeg_blur=0.25,
        label_smoothing=0.05, ema=0.999,
    )  # fmt: skip
    params = {**OLD_PARAMS, **levers}
    assert set(params) == {name for name, _, _ in SPACE}
    assert [p.name for p in search_space()] == [name for name, _, _ in SPACE]
    cfg = trial_config(params, TrainConfig(model_config={"blocks": 1}))
    assert cfg.model_config == {"centre": "branch", "blocks": 1, "width": 24, "depth": 3,
                                "dropout": 0.2}  # fmt: skip
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.aug_strength) == (1e-3, 1e-3, 64, 0.5)
    for key, value in levers.items():
        if key != "centre":
            assert getattr(cfg, key) == value, key
    # ema 0 is off, whatever the base config says
    assert trial_config({**params, "ema": 0.0}, TrainConfig(ema=0.99)).ema is None
    for name, kind, bounds in SPACE:  # every bound is a value the config accepts
        if kind != "choice":
            for edge in bounds:
                trial_config({**params, name: edge}, TrainConfig())


def test_an_older_experiment_keeps_the_network_its_trials_trained(tmp_path):
    """Parameters an older tune's space lacks take that tune's values: centre none (not
    the new pooling default) and the levers of the base config; its best_config.json (no
    centre key) reproduces the trial's network."""
    cfg = trial_config(OLD_PARAMS, TrainConfig(cutout=0.1))
    assert cfg.model_config["centre"] == "none" and cfg.cutout == 0.1 and cfg.ema is None
    old = {"val_auc": 0.9, "trial": 3,
           "config": {"model": "cnn", "model_config": {"width": 24}, "lr": 1e-3}}  # fmt: skip
    (tmp_path / "best_config.json").write_text(json.dumps(old))
    cfg = resolve_config(tmp_path / "best_config.json")
    assert cfg.model_config == {"centre": "none", "width": 24} and cfg.lr == 1e-3
    # a plain config file without the key gets the recipe default
    (tmp_path / "plain.json").write_text(json.dumps(old["config"]))
    assert resolve_config(tmp_path / "plain.json").model_config["centre"] == "pool"


@pytest.mark.slow
def test_tune_resumes_an_experiment_saved_with_the_older_space(tmp_path):
    from ax.api.client import Client

    data, val = make_patches(32, seed=0), make_patches(24, seed=1)
    out = tmp_path / "tune"
    out.mkdir()
    client = Client(random_seed=0)
    client.configure_experiment(parameters=search_space()[: len(OLD_PARAMS)], name="old")
    client.configure_optimization(objective="val_auc")
    client.configure_generation_strategy(method="fast", initialization_budget=3)
    client.save_to_json_file(str(out / EXPERIMENT_FILE))
    base = TrainConfig(eval_batch_size=64, threads=1, model_config={"blocks": 1})
    tune(data, val, out, trials=1, trial_minutes=0.02, quiet=True, base=base)
    (record,) = json.loads((out / "trials.json").read_text())
    assert record["status"] == "completed" and set(record["params"]) == set(OLD_PARAMS)
    assert record["config"]["model_config"]["centre"] == "none"


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # the test inspects whatever was raised
        return exc
    raise AssertionError("nothing raised")


def test_only_domain_errors_and_out_of_memory_fail_a_trial():
    import torch

    from histomodels.models import create_model

    cpu_oom = _raised(lambda: torch.empty(2**50, dtype=torch.uint8))  # the real allocator
    assert type(cpu_oom) is RuntimeError and trial_failure(cpu_oom).startswith("[enforce fail")
    cuda_oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert trial_failure(cuda_oom) == "CUDA out of memory. Tried to allocate 20.00 GiB"
    bad_norm = _raised(lambda: create_model("cnn", norm="bogus"))  # a domain error
    assert "bogus" in trial_failure(bad_norm)
    # programmer bugs: a shape mismatch, a wrong type, a bad value outside our error classes
    assert trial_failure(_raised(lambda: torch.nn.Linear(3, 1)(torch.zeros(2, 4)))) == ""
    assert trial_failure(_raised(lambda: torch.zeros(2).view(3))) == ""
    assert trial_failure(_raised(lambda: int("x"))) == ""


TINY = TrainConfig(eval_batch_size=64, threads=1, model_config={"blocks": 1})


@pytest.fixture
def tiny_data():
    return make_patches(32, seed=0), make_patches(24, seed=1)


def _conv_raising(monkeypatch, make_error):
    """Every convolution of the trials' training raises what ``make_error`` raises (torch's
    layer). The trial build on the meta device before training (``registry.check_build``:
    no memory, no data) runs the real layer: these faults happen while training."""
    import torch

    forward = torch.nn.Conv2d.forward

    def raising(self, x):
        return forward(self, x) if x.is_meta else make_error()

    monkeypatch.setattr(torch.nn.Conv2d, "forward", raising)


def test_out_of_memory_fails_the_trial_and_repeated_failures_stop_the_tune(
    tmp_path, tiny_data, monkeypatch
):
    import torch

    _conv_raising(monkeypatch, lambda: torch.empty(2**50, dtype=torch.uint8))
    out = tmp_path / "tune"
    with pytest.raises(TuneError, match=r"trials in a row failed.*DefaultCPUAllocator"):
        tune(*tiny_data, out, trials=2, trial_minutes=0.02, quiet=True, base=TINY)
    records = json.loads((out / "trials.json").read_text())
    assert len(records) == MAX_FAILED_IN_A_ROW
    assert all(r["status"] == "failed" and "can't allocate" in r["error"] for r in records)
    # tune has no --batch-size (training's hint): the way out is a pin, or narrower trials
    for r in records:
        if r["params"]["batch_size"] > 64:
            assert r["error"].endswith("; try --fix batch_size=64"), r["error"]
        else:
            assert "; batch_size 64 is the smallest the search tries" in r["error"], r["error"]
        assert "--batch-size" not in r["error"]


def test_a_trial_out_of_memory_in_validation_names_the_base_config(
    tmp_path, tiny_data, monkeypatch
):
    """eval_batch_size comes from the base config (--config), which the reason names."""
    from _trainkit import run_out_of_memory_in_validation

    run_out_of_memory_in_validation(monkeypatch)
    with pytest.raises(TuneError):
        tune(*tiny_data, tmp_path, trials=1, trial_epochs=1, quiet=True, base=TINY,
             base_name="c.json", fixed=SMALL)  # fmt: skip
    records = json.loads((tmp_path / "trials.json").read_text())
    assert len(records) == MAX_FAILED_IN_A_ROW
    for r in records:
        assert (  # the 24 validation patches in one batch, and what makes it smaller
            "out of memory validating batches of 24 patches (eval_batch_size 64, all 24 "
            "validation patches; an eval_batch_size under 24 makes them smaller)"
        ) in r["error"], r["error"]
        assert r["error"].endswith("; try a smaller eval_batch_size in c.json"), r["error"]


def test_a_bad_base_config_fails_trials_with_its_message(tmp_path, tiny_data):
    base = TINY.replace(model_config={"blocks": 1, "norm": "bogus"})
    with pytest.raises(TuneError, match="bogus"):
        tune(*tiny_data, tmp_path, trials=1, trial_minutes=0.02, quiet=True, base=base)
    records = json.loads((tmp_path / "trials.json").read_text())
    assert [r["status"] for r in records] == ["failed"] * MAX_FAILED_IN_A_ROW


def test_a_trial_build_refusal_names_the_trial_and_where_each_key_came_from(tmp_path):
    """8x8 px patches: depth 5 pools them to nothing, so the trial build refuses every trial.
    The refusal named neither the trial nor which keys the search, --fix or the base config
    file gave ('last: model_config {...}: cannot build cnn ...'); now it names them."""
    x, y = make_patches(32, seed=0)
    vx, vy = make_patches(24, seed=1)
    data = (np.ascontiguousarray(x[:, 44:52, 44:52]), y)
    val = (np.ascontiguousarray(vx[:, 44:52, 44:52]), vy)
    base = TINY.replace(model_config={"blocks": 2})
    with pytest.raises(TuneError) as info:
        tune(data, val, tmp_path, trials=1, trial_epochs=1, quiet=True, base=base,
             fixed={"depth": 5}, base_name="c.json")  # fmt: skip
    records = json.loads((tmp_path / "trials.json").read_text())
    assert [r["status"] for r in records] == ["failed"] * MAX_FAILED_IN_A_ROW
    for r in records:
        assert r["error"].startswith("c.json (blocks), the search ("), r["error"]
        assert ") and --fix (depth): model_config {" in r["error"]
        assert "cannot build cnn for 8x8 px patches" in r["error"]
    last = records[-1]
    assert f"(last, trial {last['trial']}: {last['error']})" in str(info.value)


def test_a_programmer_bug_in_a_trial_propagates_with_its_traceback(
    tmp_path, tiny_data, monkeypatch
):
    import torch

    _conv_raising(monkeypatch, lambda: torch.nn.Linear(3, 1)(torch.zeros(2, 4)))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as info:
        tune(*tiny_data, tmp_path, trials=1, trial_minutes=0.02, quiet=True, base=TINY)
    assert not isinstance(info.value, TuneError)
    assert any(e.name == "fit_epoch" for e in info.traceback)  # where it happened
    assert not (tmp_path / "trials.json").exists()  # not recorded as a failed trial


# --- pins, fixed-length trials, a base config, one teacher scoring per tune (issue 11) ---


def test_pins_are_checked_against_the_space_and_typed():
    from histomodels.tune_space import parse_fixed

    assert parse_fixed(["width=16", "centre=pool", "ema=0", "depth=4", "lr=1e-3"]) == {
        "width": 16, "centre": "pool", "ema": 0.0, "depth": 4, "lr": 1e-3,
    }  # fmt: skip
    assert type(parse_fixed(["width=16.0"])["width"]) is int
    for bad, message in [
        ("colour=red", "not a dimension"),
        ("width=20", "not one of 16, 24"),
        ("centre=middle", "not one of none, pool, branch"),
        ("lr=0.5", r"outside the search bounds \[0.0003, 0.01\]"),
        ("depth=3.5", "not an integer"),
        ("dropout=nan", "not a number"),
        ("width", "expected NAME=VALUE"),
        ("=16", "expected NAME=VALUE"),
    ]:
        with pytest.raises(TuneError, match=message):
            parse_fixed([bad])
    with pytest.raises(TuneError, match="nothing is left"):
        parse_fixed([f"{name}={bounds[0]}" for name, _, bounds in SPACE])
    with pytest.raises(TuneError, match="given twice"):
        parse_fixed(["width=16", "width=24"])


def test_pinned_dimensions_leave_the_search_and_reach_every_trial():
    fixed = {"width": 16, "centre": "pool"}
    names = [p.name for p in search_space(fixed)]
    assert "width" not in names and "centre" not in names and len(names) == len(SPACE) - 2
    params = {k: v for k, v in OLD_PARAMS.items() if k != "width"}
    cfg = trial_config(params, TrainConfig(), fixed)
    assert cfg.model_config["width"] == 16 and cfg.model_config["centre"] == "pool"


def test_trial_length_is_epochs_or_minutes_not_both():
    from histomodels.tune_space import trial_limit

    assert trial_limit(None, None) == {"minutes": 2.0}
    assert trial_limit(0.5, None) == {"minutes": 0.5}
    assert trial_limit(None, 8) == {"epochs": 8}
    with pytest.raises(TuneError, match="not both"):
        trial_limit(1.0, 8)
    with pytest.raises(TuneError, match=">= 1"):
        trial_limit(None, 0)
    for minutes in (float("inf"), float("nan"), 0.0):
        with pytest.raises(TuneError, match="finite number > 0"):
            trial_limit(minutes, None)


@pytest.mark.slow
def test_fixed_epoch_trials_with_pins_and_a_teacher_scored_once(tmp_path, tiny_data, caplog):
    """Every trial runs the same epochs (no clock), keeps the pins and says so; the teacher
    scores the training patches once for the whole tune; a resume with other pins or another
    base config is refused, with the same ones it continues."""
    import logging

    teacher = tmp_path / "teacher"
    small = TINY.replace(epochs=1, progress=False, model_config={"blocks": 1, **SMALL})
    train(small, teacher, train_data=tiny_data[0], val_data=tiny_data[1])
    base = TINY.replace(teacher=str(teacher / "best.pt"), distill_weight=0.5, jpeg_blur=0.5)
    out = tmp_path / "tune"
    fixed = ["width=16", "centre=pool", "depth=3"]
    kw = dict(trial_epochs=2, sobol_trials=5, quiet=True, base=base, fixed=fixed)
    with caplog.at_level(logging.INFO, logger="histomodels.training"):
        tune(*tiny_data, out, trials=2, **kw)
    said = [r.getMessage() for r in caplog.records]
    assert sum("teacher soft targets: scoring" in m for m in said) == 1
    assert sum("teacher soft targets: reusing" in m for m in said) == 1
    assert (out / "teacher_logits.npz").is_file()
    records = json.loads((out / "trials.json").read_text())
    for r in records:
        assert r["status"] == "completed" and r["epochs"] == 2
        assert r["limit"] == {"epochs": 2}
        assert r["fixed"] == {"width": 16, "centre": "pool", "depth": 3}
        assert "width" not in r["params"] and r["config"]["model_config"]["width"] == 16
        assert r["config"]["teacher"] == base.teacher and r["config"]["distill_weight"] == 0.5
        ran = json.loads((out / "trials" / f"{r['trial']:03d}" / "config.json").read_text())
        assert ran["time_budget"] is None and ran["epochs"] == 2
    assert "limit" in (out / "trials.csv").read_text().splitlines()[0]
    with pytest.raises(TuneError, match=r"pins .*width.*resuming would mix"):
        tune(*tiny_data, out, trials=3, **{**kw, "fixed": ["width=24", "centre=pool", "depth=3"]})
    with pytest.raises(TuneError, match="base config differs in distill_weight"):
        tune(*tiny_data, out, trials=3, **{**kw, "base": base.replace(distill_weight=0.7)})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="histomodels.training"):
        tune(*tiny_data, out, trials=3, **kw)  # the same settings: one more trial
    assert len(json.loads((out / "trials.json").read_text())) == 3
    assert not any("scoring" in r.getMessage() for r in caplog.records)
    # the shared scoring cut short (a disk that filled up, a copy that stopped): the next
    # trial names it, scores again, and its scoring replaces the shared file for the rest
    shared = out / "teacher_logits.npz"
    raw = shared.read_bytes()
    shared.write_bytes(raw[: len(raw) // 2])
    for total, scorings in [(4, 1), (5, 0)]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="histomodels"):
            tune(*tiny_data, out, trials=total, **kw)
        said = [r.getMessage() for r in caplog.records]
        assert sum("teacher soft targets: scoring" in m for m in said) == scorings, said
        assert sum("damaged teacher cache" in m for m in said) == scorings
    import io

    with np.load(shared) as z, np.load(io.BytesIO(raw)) as before:
        assert len(z["logits"]) == len(tiny_data[0][0])  # whole again
        assert np.array_equal(z["logits"], before["logits"])  # the same teacher and data


def test_cli_rejects_bad_pins_lengths_and_config_files(tmp_path):
    from typer.testing import CliRunner

    from histomodels.cli import app

    data = tmp_path / "d.h5"
    data.write_bytes(b"")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"lr": 1e-3, "colour": "red"}))
    backbone = tmp_path / "backbone.json"
    backbone.write_text(json.dumps({"model": "mobilenet_v2", "lr": 1e-3}))
    no_model = tmp_path / "no_model.json"
    no_model.write_text(json.dumps({"model": "resnet18", "lr": 1e-3}))
    args = ["tune", "--data", str(data), "--val", str(data), "--out", str(tmp_path / "t")]
    for extra, message in [
        # a malformed --fix, or both trial lengths, is a usage error, exit 2
        # (tests/histomodels/test_cli_options.py)
        (["--config", str(tmp_path / "missing.json")], "missing.json"),
        (["--config", str(bad_json)], "bad.json"),
        (["--config", str(unknown)], "colour"),
        (["--config", str(backbone)], "backbone.json: model 'mobilenet_v2' cannot be tuned"),
        (["--config", str(no_model)], "no_model.json: model: 'resnet18': unknown model"),
    ]:
        res = CliRunner().invoke(app, [*args, *extra])
        assert res.exit_code == 1, (extra, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "t").exists()


def test_cli_bad_training_data_is_one_line_and_leaves_no_tune_folder(tmp_path):
    """The data is decoded before the tune writes anything: no ``tune.json`` that a later
    tune in that folder would have to match."""
    from _hostile_h5 import truncated_png_h5
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    bad = truncated_png_h5(tmp_path / "bad.h5")
    val = write_h5(tmp_path / "val.h5", 24, seed=1)
    out = tmp_path / "t"
    args = ["tune", "--data", str(bad), "--val", str(val), "--out", str(out), "--trials", "1",
            "--trial-epochs", "1", "--quiet"]  # fmt: skip
    trainer_log = logging.getLogger("histomodels.training")
    level = trainer_log.level
    res = CliRunner().invoke(app, args)
    # the trials' per-epoch lines are quietened for the tune only, not for the process
    assert trainer_log.level == level
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: {bad} row 100: cannot decode image (image file is truncated)"
    ]
    assert not out.exists()


def test_a_resume_with_the_same_origin_splits_in_another_order_goes_on(tmp_path):
    """The same splits in another order are the same filter, as ``train --resume`` judges
    them; tune refused the resume (``base config differs in origin_split``). Other splits
    are still refused."""
    from _trainkit import encoded_h5_with_origins

    from histomodels.synthetic import write_h5

    (tmp_path / "t").mkdir()
    val = write_h5(tmp_path / "val.h5", 24, seed=1)
    data = encoded_h5_with_origins(tmp_path / "t" / "enc.h5", 33, make_patches(24, 1)[0][0])
    out = tmp_path / "tune"
    for trials, splits in ((1, "pcam_train,unknown"), (2, "unknown , pcam_train")):
        tune(data, val, out, trials=trials, trial_epochs=1, quiet=True, fixed=SMALL,
             base=TINY.replace(origin_split=splits))  # fmt: skip
    assert len(json.loads((out / "trials.json").read_text())) == 2
    with pytest.raises(TuneError, match="base config differs in origin_split"):
        tune(data, val, out, trials=3, trial_epochs=1, quiet=True, fixed=SMALL,
             base=TINY.replace(origin_split="pcam_train"))  # fmt: skip


def test_cli_origin_split_filters_the_training_data_as_train_does(tmp_path):
    """``tune`` had no ``--origin-split`` (only a base config's ``origin_split``): the
    option filters ``--data`` for every trial, over the file's value, and on data without
    origins it is a usage error naming it, before anything is written."""
    from _trainkit import encoded_h5_with_origins
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    (tmp_path / "t").mkdir()
    val = write_h5(tmp_path / "val.h5", 24, seed=1)
    data = encoded_h5_with_origins(tmp_path / "t" / "enc.h5", 33, make_patches(24, 1)[0][0])
    cfg = tmp_path / "base.json"
    cfg.write_text(json.dumps({"eval_batch_size": 64, "threads": 1, "origin_split": "x"}))
    out = tmp_path / "tune"
    args = ["tune", "--data", str(data), "--val", str(val), "--out", str(out), "--trials", "1",
            "--trial-epochs", "1", "--quiet", "--config", str(cfg),
            "--fix", "width=16", "--fix", "depth=3"]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--origin-split", "pcam_train"])
    assert res.exit_code == 0, res.output
    trial = json.loads((out / "trials" / "000" / "config.json").read_text())
    assert trial["origin_split"] == "pcam_train"
    from PIL import Image

    x, y = make_patches(8, seed=3)
    folders = tmp_path / "cls"
    for i in range(len(y)):
        (folders / str(int(y[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(folders / str(int(y[i])) / f"{i}.png")
    other = tmp_path / "tune2"
    res = CliRunner().invoke(app, ["tune", "--data", str(folders), "--val", str(val), "--out",
                                   str(other), "--origin-split", "pcam_train"])  # fmt: skip
    said = " ".join(unboxed(res.output).split())
    assert res.exit_code == 2, res.output
    assert "'--origin-split': does not apply to" in said and "image folder data" in said
    assert not other.exists()


def test_a_base_config_of_another_model_is_refused_not_turned_into_a_cnn(tmp_path, tiny_data):
    """A library caller passing a backbone's config gets a TuneError before any trial."""
    with pytest.raises(TuneError, match="model 'timm/resnet18' cannot be tuned"):
        train_set, val_set = tiny_data
        tune(train_set, val_set, tmp_path / "t", trials=1, trial_epochs=1,
             base=TrainConfig(model="timm/resnet18"))  # fmt: skip
    assert not (tmp_path / "t").exists()


def test_a_base_config_with_weights_must_pin_the_shape_they_fix(tmp_path, tiny_data):
    """``weights: pcam-cnn`` in the base config: every trial that sampled another width,
    depth or centre failed to load the weights, five in a row stopped the tune. The search
    of those is refused before any data is read, naming the pins that fit; pinned to them,
    a trial's network loads the shipped weights."""
    train_set, val_set = tiny_data
    base = TrainConfig(weights="pcam-cnn", eval_batch_size=64, threads=1)
    fit = "--fix width=16 --fix depth=4 --fix centre=pool"
    for pins, message in [
        ({}, f"the search changes width, depth, centre: every trial would fail to load them; "
             f"pin them to the shipped model's ({fit}), or tune without weights"),
        ({"width": 32, "depth": 4, "centre": "pool"}, "do not fit --fix width=32"),
    ]:  # fmt: skip
        with pytest.raises(TuneError, match=re.escape(message)):
            tune(train_set, val_set, tmp_path / "t", trials=1, trial_epochs=1, base=base,
                 fixed=pins, base_name="base.json")  # fmt: skip
        assert not (tmp_path / "t").exists()
    # pinned, every trial's network is the shipped one's (the search keeps dropout & co.)
    from histomodels.models import create_model

    pins = {"width": 16, "depth": 4, "centre": "pool"}
    params = {k: v for k, v in OLD_PARAMS.items() if k not in pins} | {"dropout": 0.1}
    cfg = trial_config(params, base, pins)  # as Ax samples it: the pins are not searched
    assert cfg.weights == "pcam-cnn" and cfg.model_config["dropout"] == 0.1
    create_model(cfg.model, weights=cfg.weights, **cfg.model_config)  # loads, or raises


def test_base_weights_named_like_a_shipped_model_are_the_shipped_model(tmp_path, monkeypatch):
    """``weights: pcam-cnn`` with a file ``./pcam-cnn`` in the working folder was judged as
    that file (a weights file: pins asked for as WIDTH...), while each trial's
    ``create_model`` now loads the shipped model: the pins asked for are the shipped
    model's; ``weights: ./pcam-cnn`` is the file."""
    from histomodels.tune_space import check_weights

    monkeypatch.chdir(tmp_path)
    Path("pcam-cnn").write_bytes(b"weights of my own")
    fit = "--fix width=16 --fix depth=4 --fix centre=pool"
    with pytest.raises(TuneError, match=re.escape(f"pin them to the shipped model's ({fit})")):
        check_weights(TrainConfig(weights="pcam-cnn"), {})
    mine = "pin them to the ones the weights were trained with (--fix width=WIDTH"
    with pytest.raises(TuneError, match=re.escape(mine)):
        check_weights(TrainConfig(weights="./pcam-cnn"), {})


def test_a_base_model_config_is_not_taken_for_the_shipped_model_s_shape(tmp_path, tiny_data):
    """``weights: pcam-cnn`` with ``model_config: {width: 32}``: the unpinned error gave
    ``--fix width=32`` as "the shipped model's" (it is 16), and pinned to 32 the check
    passed and every trial failed to load the weights. The base's width that does not fit is
    refused on a line of its own. For a weights file (not opened), the line echoes the
    values the base config gives instead of ``WIDTH``."""
    train_set, val_set = tiny_data
    base = TrainConfig(weights="pcam-cnn", model_config={"width": 32}, threads=1)
    clash = (
        "base.json: model_config width=32 does not fit weights 'pcam-cnn', a cnn with "
        "width=16; remove it from model_config, or tune without weights"
    )
    for pins in ({}, {"width": 32, "depth": 4, "centre": "pool"}):
        with pytest.raises(TuneError, match=f"^{re.escape(clash)}$"):
            tune(train_set, val_set, tmp_path / "t", trials=1, trial_epochs=1, base=base,
                 fixed=pins, base_name="base.json")  # fmt: skip
        assert not (tmp_path / "t").exists()
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not opened")
    base = TrainConfig(weights=str(weights), model_config={"width": 32, "depth": 3}, threads=1)
    with pytest.raises(
        TuneError, match=re.escape("(--fix width=32 --fix depth=3 --fix centre=pool)")
    ):
        tune(train_set, val_set, tmp_path / "t", trials=1, trial_epochs=1, base=base,
             base_name="base.json")  # fmt: skip
    assert not (tmp_path / "t").exists()


def test_compile_without_a_cpu_compiler_stops_the_tune_before_any_trial(tmp_path, tiny_data):
    """A base config with ``compile`` on a machine without a C++ compiler ran 5 trials, each
    failed by it, wrote the tune's files and only then stopped: one error before any trial."""
    import torch._inductor.config as inductor_config

    from histocore.errors import DomainError

    train_set, val_set = tiny_data
    with (
        inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-cxx"))}),
        pytest.raises(DomainError, match=r"--compile: torch\.compile needs a working C"),
    ):
        tune(train_set, val_set, tmp_path / "t", trials=2, trial_epochs=1,
             base=TrainConfig(compile=True, device="cpu"))  # fmt: skip
    assert not (tmp_path / "t").exists()


def test_the_declared_ax_platform_has_the_client_api_tune_uses():
    """``tune`` imports ``ax.api.client.Client`` and ``ax.api.configs``, which first ship in
    ax-platform 1.0.0 (0.5.0 has them only under ``ax.preview.api``), and passes
    ``mark_trial_failed(failed_reason=...)``, which 1.0.0 lacks and 1.1.0 has (checked on
    the three wheels, 2026-11-30). The bound was >=0.4: pip kept an older Ax, and
    ``histomodels tune`` then died on a ModuleNotFoundError or a TypeError."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = Path(__file__).parents[2] / "packages" / "histomodels" / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (ax,) = [Requirement(d) for d in deps if Requirement(d).name == "ax-platform"]
    lowest = [Version(s.version) for s in ax.specifier if s.operator in (">=", "==", "~=")]
    assert lowest and min(lowest) >= Version("1.1"), f"ax-platform is declared as {ax}"


def test_a_tune_does_not_resume_on_other_data(tmp_path, tiny_data):
    """Rerunning a tune's folder with other --data or --val resumed it: the new trials'
    AUCs, on other patches, were ranked with the old ones and best_config.json could name
    a trial of either. The patches and labels are recorded in tune.json and checked."""
    out = tmp_path / "tune"
    kw = dict(trial_epochs=1, sobol_trials=2, quiet=True, base=TINY, fixed=SMALL)
    tune(*tiny_data, out, trials=1, **kw)
    records = (out / "trials.json").read_text()
    other = make_patches(32, seed=7)
    with pytest.raises(TuneError, match=r"ran on other training patches \(or labels\); resuming"):
        tune(other, tiny_data[1], out, trials=2, **kw)
    relabelled = (tiny_data[1][0], 1 - tiny_data[1][1])
    with pytest.raises(TuneError, match="ran on other validation patches"):
        tune(tiny_data[0], relabelled, out, trials=2, **kw)
    assert (out / "trials.json").read_text() == records
    tune(*tiny_data, out, trials=2, **kw)  # the same data: it resumes
    assert len(json.loads((out / "trials.json").read_text())) == 2


def test_a_damaged_tune_json_is_one_error(tmp_path, tiny_data):
    """Resuming a tune folder whose tune.json was cut short or is not an object ended in
    json's or Python's traceback (JSONDecodeError, 'list' object has no attribute 'get')."""
    out = tmp_path / "tune"
    kw = dict(trial_epochs=1, sobol_trials=2, quiet=True, base=TINY, fixed=SMALL)
    tune(*tiny_data, out, trials=1, **kw)
    settings = out / "tune.json"
    good = settings.read_text()
    for bad, said in ((good[: len(good) // 2], "cannot read"), ("[]", "expected a JSON object"),
                      ('{"data": "x"}', "expected a JSON object")):  # fmt: skip
        settings.write_text(bad)
        with pytest.raises(TuneError, match=f"^{settings}: .*{said}"):
            tune(*tiny_data, out, trials=2, **kw)
    settings.write_text(good)
    kept = settings.stat().st_ino  # checked before anything is written: tune.json untouched
    trials = out / "trials.json"  # review: read with a bare json.loads (a traceback)
    for bad, said in (("[{", "cannot read"), ('[{"trial": "1"}]', "a list of trial records"),
                      ('{"trial": 0}', "a list of trial records"),
                      # review 3: KeyError 'val_auc' / 'params' tracebacks further on
                      ('[{"trial": 0, "status": "completed", "params": {}}]', "trial records"),
                      ('[{"trial": 0, "status": "failed"}]', "trial records"),
                      # review 4: a completed one without its config, a limit not a mapping
                      ('[{"trial": 0, "status": "completed", "params": {}, "val_auc": 0.9}]',
                       "trial records"),
                      ('[{"trial": 0, "status": "failed", "params": {}, "limit": [1]}]',
                       "trial records")):  # fmt: skip
        trials.write_text(bad)
        with pytest.raises(TuneError, match=f"^{trials}: .*{said}"):
            tune(*tiny_data, out, trials=2, **kw)
        assert settings.stat().st_ino == kept and settings.read_text() == good


def test_a_damaged_ax_experiment_is_one_error_before_anything_is_written(tmp_path, tiny_data):
    """Resuming a tune folder whose ax_experiment.json was cut short, or holds other JSON,
    ended in a traceback from Ax's decoder (JSONDecodeError, TypeError: list indices must be
    integers), after tune.json had been rewritten."""
    out = tmp_path / "tune"
    kw = dict(trial_epochs=1, sobol_trials=2, quiet=True, base=TINY, fixed=SMALL)
    tune(*tiny_data, out, trials=1, **kw)
    experiment, settings = out / "ax_experiment.json", out / "tune.json"
    good, before = experiment.read_text(), settings.read_bytes()
    for bad, said in ((good[: len(good) // 2], "JSONDecodeError"), ("[1, 2]", "TypeError"),
                      ("{}", "")):  # fmt: skip
        experiment.write_text(bad)
        with pytest.raises(
            TuneError, match=rf"^{experiment}: cannot load this experiment \({said}"
        ):
            tune(*tiny_data, out, trials=2, **kw)
        assert settings.read_bytes() == before
        assert experiment.read_text() == bad


def test_an_ax_experiment_that_is_no_file_is_refused_not_replaced(tmp_path, tiny_data):
    """An ``ax_experiment.json`` that is a link to ``/dev/zero`` (or a FIFO) was no file to
    ``is_file``: a new search started and replaced it. It is refused now, before
    ``tune.json`` is written, like a ``tune.json`` or ``trials.json`` that is no file."""
    out = tmp_path / "tune"
    out.mkdir()
    experiment = out / "ax_experiment.json"
    experiment.symlink_to("/dev/zero")
    with pytest.raises(TuneError, match=rf"^{experiment}: not a regular file \(a pipe"):
        tune(*tiny_data, out, trials=1, trial_epochs=1, quiet=True, base=TINY)
    assert experiment.is_symlink() and sorted(p.name for p in out.iterdir()) == [experiment.name]


def test_a_new_search_replaces_no_file_tune_did_not_write(tmp_path, tiny_data):
    """``tune --out FOLDER`` holding no experiment wrote tune.json, trials.json, trials.csv
    and best_config.json over files of the user's own of those names, a pipe's node too.
    Each is one error before the data is decoded, the folder as it was; a tune.json of
    tune's own (a tune stopped in its first trial) still starts the search afresh."""
    import os

    kw = dict(trials=1, trial_epochs=1, sobol_trials=1, quiet=True, base=TINY, fixed=SMALL)
    would = "tune would replace it: choose another --out"
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("best_config.json", "trials.csv", "tune.json"):
        (out / name).write_text("mine")
        with pytest.raises(TuneError) as refused:
            tune(*tiny_data, out, **kw)
        assert str(refused.value) == (
            f"{out / name}: exists and is not from an earlier tune (no ax_experiment.json "
            f"beside it); {would}, or remove it first"
        )
        assert [p.name for p in out.iterdir()] == [name]
        (out / name).unlink()
    os.mkfifo(out / "trials.json")
    with pytest.raises(TuneError) as refused:
        tune(*tiny_data, out, **kw)
    assert str(refused.value) == (
        f"{out / 'trials.json'}: not a regular file (a pipe, socket or device); {would}"
    )
    (out / "trials.json").unlink()
    (out / "best_config.json").write_text("mine")  # a dangling link is no experiment: the
    (out / "ax_experiment.json").symlink_to(tmp_path / "gone.json")  # check was skipped
    with pytest.raises(TuneError, match=r"best_config\.json: exists and is not from an earlier"):
        tune(*tiny_data, out, **kw)
    assert (out / "best_config.json").read_text() == "mine"
    done = tmp_path / "done"
    tune(*tiny_data, done, **kw)
    for p in done.iterdir():  # as a tune stopped in its first trial leaves it
        if p.name != "tune.json" and p.is_file():
            p.unlink()
    (done / "ax_experiment.json").unlink(missing_ok=True)
    tune(*tiny_data, done, **kw)
    assert (done / "best_config.json").is_file()


def test_shared_validation_patches_are_said_once_per_tune(tmp_path, tiny_data, caplog):
    """Every trial trains on the same patches: the warning that validation patches are also
    training patches came once per trial (3 trials: 3 lines)."""
    (x, y), _ = tiny_data
    val = (x[:16], y[:16])  # all 16 also training patches
    assert len(set(y[:16].tolist())) == 2
    base = TINY.replace(model_config={"blocks": 1, "width": 8, "depth": 2})
    with caplog.at_level(logging.WARNING, logger="histomodels"):
        tune((x, y), val, tmp_path / "t", trials=3, trial_epochs=1, sobol_trials=3, quiet=True,
             base=base, fixed=SMALL)  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "also in the training data" in r.getMessage()]
    assert said == [
        "16 of 16 validation patches are also in the training data (identical pixels): "
        "validation AUC, the best epoch and early stopping are then judged entirely on "
        "training patches"
    ]


def test_a_one_epoch_trial_is_said_in_the_singular(tmp_path, tiny_data, caplog):
    """The trial line read 'trial 0: val AUC … (1 epochs, 3 s)'."""
    with caplog.at_level(logging.INFO, logger="histomodels.tune"):
        tune(*tiny_data, tmp_path / "t", trials=1, trial_epochs=1, sobol_trials=1, base=TINY,
             fixed=SMALL)  # fmt: skip
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial 0:")]
    assert len(said) == 1 and re.match(r"trial 0: val AUC [\d.]+ \(1 epoch, \d+ s\) \{", said[0])


def test_a_base_config_origin_split_filters_the_training_data_of_every_trial(tmp_path, caplog):
    """``origin_split`` in the base config (a train --config key) keeps only those origin
    splits of ``data``, decoded once for all trials: the row of origin 'unknown' (a
    validation patch here) is not trained on, so no patch is shared with validation."""
    from _trainkit import encoded_h5_with_origins

    from histomodels.synthetic import write_h5

    (tmp_path / "t").mkdir()
    val = write_h5(tmp_path / "val.h5", 24, seed=1)
    data = encoded_h5_with_origins(tmp_path / "t" / "enc.h5", 33, make_patches(24, 1)[0][0])
    base = TINY.replace(origin_split="pcam_train")
    with caplog.at_level(logging.WARNING, logger="histomodels"):
        tune(data, val, tmp_path / "tune", trials=1, trial_epochs=1, quiet=True, base=base,
             fixed=SMALL)  # fmt: skip
    assert "also in the training data" not in caplog.text
    trial = json.loads((tmp_path / "tune" / "trials" / "000" / "config.json").read_text())
    assert trial["origin_split"] == "pcam_train"


def test_tune_out_under_a_file_names_the_file(tmp_path, tiny_data) -> None:
    """``tune(..., a/tune)`` (``a`` a file) made its folder with a plain mkdir (see
    conftest.names_the_file_in_the_way)."""
    names_the_file_in_the_way(
        tmp_path,
        lambda a: tune(*tiny_data, a / "tune", trials=1, trial_epochs=1, quiet=True, base=TINY),
    )


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "too_large"])
def test_an_ax_experiment_that_cannot_be_read_is_refused_before_the_data_is_decoded(
    tmp_path, tiny_data, monkeypatch, kind
):
    """The early check took only a regular file for an experiment (``is_file``), so a FIFO
    or ``/dev/zero`` ``ax_experiment.json`` (or one over the cap) was refused only after
    the training and validation data were decoded (minutes on a real dataset). It is now
    refused up front, by the rule of the read that follows."""
    import histomodels.tune as tune_module

    out = tmp_path / "tune"
    out.mkdir()
    experiment = out / "ax_experiment.json"
    if kind == "fifo":
        os.mkfifo(experiment)
    elif kind == "dev_zero":
        experiment.symlink_to("/dev/zero")
    else:
        experiment.write_text("{}" + " " * 64)
        monkeypatch.setattr(tune_module, "MAX_EXPERIMENT_BYTES", 32)

    def decoded(*_a, **_k):
        raise AssertionError("the data was decoded first")

    monkeypatch.setattr(tune_module, "load_split", decoded)
    problem = "over 32 bytes" if kind == "too_large" else r"not a regular file \(a pipe"
    with pytest.raises(TuneError, match=rf"^{experiment}: {problem}"):
        tune(*tiny_data, out, trials=1, trial_epochs=1, quiet=True, base=TINY)
    assert sorted(p.name for p in out.iterdir()) == [experiment.name]


def test_an_experiment_loads_with_an_ax_that_lacks_the_private_loader(tmp_path, monkeypatch):
    """tune read ``ax_experiment.json`` through Ax's private ``Client._from_json_snapshot``
    (Ax 1.x has no public loader from text), with no upper bound on Ax: an Ax without it was
    an ``AttributeError`` traceback at every resume. It now falls back to the public
    ``Client.load_from_json_file``."""
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig

    from histomodels.tune import EXPERIMENT_FILE, _load_experiment

    client = Client(random_seed=0)
    client.configure_experiment(
        parameters=[RangeParameterConfig(name="lr", parameter_type="float", bounds=(1e-4, 1e-2))],
        name="lr_only",
    )
    client.configure_optimization(objective="val_auc")
    path = tmp_path / EXPERIMENT_FILE
    client.save_to_json_file(str(path))
    # an Ax whose public loader restores the client by other private means
    restore = Client._from_json_snapshot.__func__  # type: ignore[attr-defined]
    monkeypatch.delattr(Client, "_from_json_snapshot")

    def public_loader(cls, filepath: str) -> Client:
        return restore(cls, snapshot=json.loads(Path(filepath).read_text()))

    monkeypatch.setattr(Client, "load_from_json_file", classmethod(public_loader))
    loaded = _load_experiment(path)
    assert isinstance(loaded, Client)
    assert loaded._experiment.name == "lr_only"
    assert list(loaded._experiment.search_space.parameters) == ["lr"]
