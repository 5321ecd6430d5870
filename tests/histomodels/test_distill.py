"""Distillation (``teacher``, ``distill_weight``, ``distill_temperature``; issue 11): offline
8-view TTA soft targets from a teacher checkpoint, cached in the run folder, and the loss."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import names_the_file_in_the_way, refused_with

from histomodels.checkpoint import read_checkpoint
from histomodels.config import ConfigError, TrainConfig, validate
from histomodels.inference import Predictor
from histomodels.synthetic import make_patches
from histomodels.training import train
from histomodels.training.callbacks import LabelSmoothing
from histomodels.training.distill import (
    CACHE_NAME,
    DistillLoss,
    distill_targets,
    teacher_logits,
    written_by_a_run,
)

torch.set_num_threads(1)
TINY = {"width": 8, "depth": 2}


def _cfg(**kw) -> TrainConfig:
    base = dict(model_config=TINY, epochs=1, batch_size=16, progress=False, threads=1, bf16=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return make_patches(48, seed=0), make_patches(32, seed=1)


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A tiny teacher trained in the test: a few patches, one epoch."""
    (xt, yt), (xv, yv) = data
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(_cfg(seed=7), run, train_data=(xt, yt), val_data=(xv, yv))
    return run / "best.pt"


def test_distill_loss_is_the_weighted_sum_of_hard_and_soft_terms() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5])
    target = torch.tensor([[1.0, 0.8], [0.0, 0.3], [1.0, 0.5]])
    hard = F.binary_cross_entropy_with_logits(logits, target[:, 0])
    assert torch.isclose(DistillLoss(0.0, 2.0)(logits, target), hard)
    soft = F.binary_cross_entropy_with_logits(logits / 2, target[:, 1])
    assert torch.isclose(DistillLoss(1.0, 2.0)(logits, target), 4 * soft)
    assert torch.isclose(DistillLoss(0.25, 2.0)(logits, target), 0.75 * hard + 0.25 * 4 * soft)


def test_label_smoothing_leaves_the_teacher_column_alone() -> None:
    y = torch.tensor([[1.0, 0.9], [0.0, 0.2]])
    # the lever never looks at the trainer, so none is built for it
    _, out = LabelSmoothing(0.2).on_batch(None, torch.zeros(2), y)  # pyright: ignore[reportArgumentType]
    assert torch.allclose(out, torch.tensor([[0.9, 0.9], [0.1, 0.2]]))


def test_soft_targets_are_the_teachers_tta_probabilities_and_are_cached(data, teacher, tmp_path):
    (xt, yt), _ = data
    cfg = _cfg(teacher=str(teacher), distill_temperature=2.0)
    said: list[str] = []
    run = tmp_path / "run"
    y = distill_targets(
        cfg, torch.from_numpy(xt), torch.from_numpy(yt).float(), run, say=said.append
    )
    assert y.shape == (len(xt), 2) and torch.equal(y[:, 0], torch.from_numpy(yt).float())
    want = Predictor.load(teacher, device="cpu", precision="auto").logits(xt, tta=True)
    np.testing.assert_allclose(y[:, 1].numpy(), 1 / (1 + np.exp(-want / 2.0)), atol=1e-5)
    assert (run / CACHE_NAME).is_file() and "scoring 48 training patches" in said[-1]
    # the same patches and teacher: the cache answers; other patches: scored again
    again = distill_targets(
        cfg, torch.from_numpy(xt), torch.from_numpy(yt).float(), run, say=said.append
    )
    assert "reusing" in said[-1] and torch.equal(again, y)
    other = torch.from_numpy(xt).flip(1).contiguous()
    distill_targets(cfg, other, torch.from_numpy(yt).float(), run, say=said.append)
    assert "scoring" in said[-1]


def test_training_with_a_teacher_reuses_the_cache_on_resume(data, teacher, tmp_path, caplog):
    (xt, yt), (xv, yv) = data
    run = tmp_path / "student"
    cfg = _cfg(teacher=str(teacher), distill_weight=0.7, mixup=0.4, label_smoothing=0.1)
    res = train(cfg, run, train_data=(xt, yt), val_data=(xv, yv))
    assert np.isfinite(res.history[0]["train_loss"]) and res.history[0]["train_loss"] > 0
    cache = run / CACHE_NAME
    stamp = os.stat(cache).st_mtime_ns
    conf = read_checkpoint(run / "best.pt")["train_config"]
    assert conf["teacher"] == str(teacher) and conf["distill_weight"] == 0.7
    # the package logger's level too: a CLI test run before may have set it to WARNING
    with caplog.at_level(logging.INFO, logger="histomodels"):
        res2 = train(
            cfg.replace(epochs=2), run, train_data=(xt, yt), val_data=(xv, yv), resume=True
        )
    assert [h["epoch"] for h in res2.history] == [1, 2]
    assert any("teacher soft targets: reusing" in r.getMessage() for r in caplog.records)
    assert os.stat(cache).st_mtime_ns == stamp


def test_the_bce_against_the_labels_is_said_and_kept_beside_the_distilled_loss(
    data, teacher, tmp_path, caplog
):
    """With a teacher the epoch line and history gave the total loss alone (hard BCE and
    the w·T²-weighted soft term together): the BCE against the labels, the part that
    ``val_loss`` is, could not be told from the soft part. The line now says both, and
    ``history.json``/``history.csv`` keep it as ``train_bce`` (not in runs without one)."""
    (xt, yt), (xv, yv) = data
    cfg = _cfg(teacher=str(teacher), epochs=2)
    with caplog.at_level(logging.INFO, logger="histomodels"):
        res = train(cfg, tmp_path / "s", train_data=(xt, yt), val_data=(xv, yv))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2
    for line, row in zip(lines, res.history, strict=True):
        assert 0 < row["train_bce"] != row["train_loss"]
        want = f"loss (with distillation) {row['train_loss']:.4f}  bce {row['train_bce']:.4f}  "
        assert want in line, line
    saved = json.loads((tmp_path / "s" / "history.json").read_text())
    assert [r["train_bce"] for r in saved] == [r["train_bce"] for r in res.history]
    header, first = (tmp_path / "s" / "history.csv").read_text().splitlines()[:2]
    assert header.startswith("epoch,train_loss,train_bce,val_loss,")
    assert first.split(",")[2] == str(res.history[0]["train_bce"])
    # it is the BCE against the labels: with a weight near 0 the total is that BCE alone
    near = train(cfg.replace(distill_weight=1e-6, epochs=1), tmp_path / "n",
                 train_data=(xt, yt), val_data=(xv, yv))  # fmt: skip
    assert abs(near.history[0]["train_bce"] - near.history[0]["train_loss"]) < 1e-4
    # without a teacher the loss is that BCE: no second value, no empty column
    plain = train(_cfg(), tmp_path / "p", train_data=(xt, yt), val_data=(xv, yv))
    assert "train_bce" not in plain.history[0]
    assert "train_bce" not in (tmp_path / "p" / "history.csv").read_text()


def test_a_run_stopped_before_its_first_checkpoint_keeps_only_the_soft_targets(
    data, teacher, tmp_path, caplog
):
    """Ctrl-C during the first epoch: nothing that looks like a run is left, but the
    teacher's scoring (hours on a large set) stays for the rerun, which reuses it."""
    from histomodels.training import Callback

    class CtrlC(Callback):
        def on_epoch_start(self, trainer, epoch):
            raise KeyboardInterrupt

    (xt, yt), (xv, yv) = data
    run = tmp_path / "student"
    cfg = _cfg(teacher=str(teacher), randstain=0.5)  # randstain.json is written at setup
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, train_data=(xt, yt), val_data=(xv, yv), callbacks=[CtrlC()])
    assert [p.name for p in run.iterdir()] == [CACHE_NAME]
    with caplog.at_level(logging.INFO, logger="histomodels"):
        train(cfg, run, train_data=(xt, yt), val_data=(xv, yv))
    assert any("teacher soft targets: reusing" in r.getMessage() for r in caplog.records)
    assert (run / "last.pt").is_file() and (run / "config.json").is_file()


def test_distillation_settings_are_checked(teacher) -> None:
    assert TrainConfig().teacher is None
    with pytest.raises(ConfigError, match="teacher must be a checkpoint"):
        validate(TrainConfig(teacher="/nonexistent/best.pt"))
    with pytest.raises(ConfigError, match="distill_weight must be in"):
        validate(TrainConfig(teacher=str(teacher), distill_weight=1.5))
    with pytest.raises(ConfigError, match="distill_temperature > 0"):
        validate(TrainConfig(distill_temperature=0))
    assert validate(TrainConfig(teacher=str(teacher.parent))).teacher == str(teacher.parent)


def test_cli_teacher_option_bad_path_is_one_line(tmp_path) -> None:
    from typer.testing import CliRunner

    from histomodels.cli import app

    r = CliRunner().invoke(
        app, ["train", "--data", "x.h5", "--val", "y.h5", "--out", str(tmp_path / "r"),
              "--teacher", str(tmp_path / "missing.pt"), "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "teacher must be a checkpoint" in r.stderr


@pytest.mark.parametrize("option", ["--teacher", "--stain-norm"])
@pytest.mark.parametrize("under", ["", "/best.pt"])
def test_a_teacher_link_loop_is_the_link_loop_line(tmp_path, option: str, under: str) -> None:
    """``--teacher loop`` (``ln -s loop loop``) said 'teacher must be a checkpoint, a run
    folder with best.pt or a shipped model name', where ``--data loop`` names the loop; the
    same line now for it and for a path under it (and for --stain-norm's file)."""
    from typer.testing import CliRunner

    from histomodels.cli import app

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    r = CliRunner().invoke(
        app, ["train", "--data", "x.h5", "--val", "y.h5", "--out", str(tmp_path / "r"),
              option, f"{loop}{under}", "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 1
    assert r.stderr == f"error: {loop}: too many levels of symbolic links\n"
    assert not (tmp_path / "r").exists()


def test_a_folder_where_the_soft_targets_go_is_one_line_before_scoring(teacher, tmp_path):
    """A folder ``RUN/teacher_logits.npz`` was found only once the teacher had scored the
    whole training set (hours on a large set): one line now, before the data is read; a run
    without a teacher does not mind it (review 14)."""
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    train_h5, val_h5 = write_h5(tmp_path / "t.h5", 32, seed=0), write_h5(tmp_path / "v.h5", 24)
    run = tmp_path / "run"
    (run / "teacher_logits.npz").mkdir(parents=True)
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(run),
            "--epochs", "1", "--threads", "1", "--model-config", json.dumps(TINY)]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--teacher", str(teacher)])
    assert r.exit_code == 1, r.output
    assert r.stderr == f"error: {run / 'teacher_logits.npz'}: is a folder, not a file\n"
    r = CliRunner().invoke(app, [*args, "--quiet"])
    assert r.exit_code == 0, r.output


def test_a_rebuilt_shipped_teacher_is_scored_again(data, tmp_path, monkeypatch) -> None:
    """A shipped model named as teacher is keyed by its weights, not its name: after the
    shipped file changes (a rebuild), the cached soft targets are not reused."""
    import json
    import shutil

    from histomodels import pretrained

    (xt, yt), _ = data
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(pretrained.HERE / f"pcam-cnn{suffix}", shipped / f"pcam-cnn{suffix}")
    monkeypatch.setattr(pretrained, "HERE", shipped)
    cfg, run, said = _cfg(teacher="pcam-cnn"), tmp_path / "run", []
    x, y = torch.from_numpy(xt), torch.from_numpy(yt).float()
    first = distill_targets(cfg, x, y, run, say=said.append)
    assert "scoring" in said[-1]
    distill_targets(cfg, x, y, run, say=said.append)
    assert "reusing" in said[-1]
    # the shipped weights are rebuilt (here: every tensor halved), the sidecar follows
    state = pretrained.checkpoint_dict("pcam-cnn")["state_dict"]
    weights = pretrained.save_pretrained(
        shipped / "pcam-cnn.safetensors", {k: v / 2 for k, v in state.items()}
    )
    meta = json.loads((shipped / "pcam-cnn.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (shipped / "pcam-cnn.json").write_text(json.dumps(meta))
    again = distill_targets(cfg, x, y, run, say=said.append)
    assert "scoring" in said[-1] and not torch.equal(again, first)


def test_a_shipped_teacher_named_like_a_local_file_is_identified_as_the_shipped_one(
    tmp_path, monkeypatch
) -> None:
    """``--teacher pcam-cnn`` scores with the shipped model also where a file ``./pcam-cnn``
    is, so its cache must be keyed by the shipped weights, not by that file's sha256 (the
    file's key was taken: a later edit of the file dropped the cache of a teacher that had
    not changed, and a rebuilt shipped model kept it)."""
    from histocore.io import file_sha256
    from histomodels.training.distill import teacher_digest

    monkeypatch.chdir(tmp_path)
    Path("pcam-cnn").write_bytes(b"a teacher of my own")
    assert teacher_digest("pcam-cnn").startswith("pretrained:pcam-cnn:")
    assert teacher_digest("./pcam-cnn") == file_sha256(Path("pcam-cnn"))


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04 not a zip", b""],
    ids=["broken zip", "empty"],
)
def test_a_damaged_cache_is_scored_again(data, teacher, tmp_path, content) -> None:
    (xt, yt), _ = data
    run, said = tmp_path / "run", []
    run.mkdir()
    (run / CACHE_NAME).write_bytes(content)
    x, y = torch.from_numpy(xt), torch.from_numpy(yt).float()
    distill_targets(_cfg(teacher=str(teacher)), x, y, run, say=said.append)
    assert "scoring" in said[-1]
    distill_targets(_cfg(teacher=str(teacher)), x, y, run, say=said.append)
    assert "reusing" in said[-1]


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "short logits"])
def test_a_damaged_real_cache_is_named_scored_again_and_replaced(
    data, teacher, tmp_path, caplog, damage
) -> None:
    """A cache written by a real scoring, then cut short (a copy that stopped half-way), one
    byte of its logits flipped (the zip's CRC-32 catches it), or rewritten under the right
    key with too few logits: a warning names the file, the teacher scores again, and the
    file is replaced by a whole one that the next call reuses. ``train`` takes each for the
    run's own (a truncated one, its zip directory lost, was refused: remove it), and not a
    numpy archive of the user's cut short."""
    (xt, _), _ = data
    x, run, said = torch.from_numpy(xt), tmp_path / "run", []
    good = teacher_logits(str(teacher), x, run, say=said.append)
    cache = run / CACHE_NAME
    raw = cache.read_bytes()
    if damage == "truncated":
        cache.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped byte":
        at = raw.index(good.tobytes()[:16]) + 8  # inside the stored logits
        cache.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    else:
        with np.load(cache) as z:
            key = str(z["key"])
        np.savez(cache, key=np.array(key), logits=good[:-3])
    assert written_by_a_run(cache)
    if damage == "truncated":  # a numpy archive of the user's, cut short: not the run's
        mine = tmp_path / "mine.npz"
        np.savez(mine, data=np.zeros(1000), key=np.array("k"))
        mine.write_bytes(mine.read_bytes()[:1500])
        assert not written_by_a_run(mine)
        np.savez(mine, key=np.arange(5), embeddings=np.zeros((100, 8)))  # key.npy first too
        mine.write_bytes(mine.read_bytes()[:1500])
        assert not written_by_a_run(mine)
    with caplog.at_level(logging.WARNING, logger="histomodels.training.distill"):
        again = teacher_logits(str(teacher), x, run, say=said.append)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"{cache}: damaged teacher cache" in warned[0], warned
    if damage == "flipped byte":
        assert "CRC" in warned[0]
    assert "scoring" in said[-1] and np.array_equal(again, good)
    with np.load(cache) as z:  # replaced by a whole file
        assert np.array_equal(z["logits"], good)
    teacher_logits(str(teacher), x, run, say=said.append)
    assert "reusing" in said[-1]


def test_targets_cached_at_one_precision_are_not_reused_at_another(data, teacher, tmp_path):
    """bf16 autocast moves the teacher's logits: a cache made with it (e.g. on a GPU, or a
    CPU with native bf16, where ``auto`` picks it) is not the fp32 teacher's, and back."""
    (xt, _), _ = data
    x, run, said = torch.from_numpy(xt), tmp_path / "run", []
    fp32 = teacher_logits(str(teacher), x, run, precision="fp32", say=said.append)
    assert said[-1].endswith("(8-view TTA, fp32 on cpu)")
    with np.load(run / CACHE_NAME) as z:
        assert str(z["key"]).endswith(":fp32:cpu")
    bf16 = teacher_logits(str(teacher), x, run, precision="bf16", say=said.append)
    assert "scoring" in said[-1] and "bf16 on cpu" in said[-1]
    assert not np.array_equal(bf16, fp32)  # what a reused cache would have returned
    np.testing.assert_allclose(bf16, fp32, atol=0.1)  # the same teacher, at bf16's precision
    again = teacher_logits(str(teacher), x, run, precision="bf16", say=said.append)
    assert "reusing" in said[-1] and np.array_equal(again, bf16)
    teacher_logits(str(teacher), x, run, precision="fp32", say=said.append)
    assert "scoring" in said[-1]


def test_a_cache_under_a_file_names_the_file(data, teacher, tmp_path) -> None:
    """``teacher_logits(..., run_dir=a/run)`` (``a`` a file) made its folder with a plain mkdir (see
    conftest.names_the_file_in_the_way)."""
    x = torch.from_numpy(data[0][0][:8])
    names_the_file_in_the_way(tmp_path, lambda a: teacher_logits(str(teacher), x, a / "run"))


def test_the_training_time_curve_shows_the_bce_beside_the_total_loss(monkeypatch, tmp_path):
    """learning_curve.png, drawn after every epoch, plotted ``train_loss`` only, the loss
    with the distillation term; the report's curves (from history.json) show ``train_bce``
    beside it: the training-time plot now does too (and without a teacher, no such line)."""
    from types import SimpleNamespace
    from typing import Any

    import histomodels.plots
    from histomodels.training.callbacks import Curves

    drawn: list[list[dict]] = []
    monkeypatch.setattr(
        histomodels.plots, "curves_plot", lambda rows, path, title: drawn.append(rows)
    )
    row = {"epoch": 1, "train_loss": 1.7, "train_bce": 0.52, "val_loss": 0.7, "val_auc": 0.8,
           "val_accuracy": 0.7, "lr": 0.001}  # fmt: skip
    plain = {k: v for k, v in row.items() if k != "train_bce"}
    for history in ([row], [plain]):
        trainer: Any = SimpleNamespace(  # what Curves reads of a Trainer
            history=history, run_dir=tmp_path, cfg=SimpleNamespace(model="cnn")
        )
        Curves().on_epoch_end(trainer, history[-1], improved=True, stop=None)
    assert drawn[0][0]["train_bce"] == 0.52 and drawn[0][0]["train_loss"] == 1.7
    assert "train_bce" not in drawn[1][0]
    assert histomodels.plots.curve_groups(drawn[0])["loss"] == [
        "train_bce",
        "train_loss",
        "val_loss",
    ]


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("teacher", "teacher must be a checkpoint, a run folder with best.pt or a shipped model"),
        ("stain_norm", "stain_norm must be 'macenko' or a stain JSON file"),
    ],
)
def test_a_nul_byte_in_a_config_path_is_the_config_line(tmp_path, key: str, said: str) -> None:
    """A NUL byte in a config file's ``teacher`` or ``stain_norm`` ended in a traceback
    (``Path.resolve`` raises ValueError, which the link-loop check did not catch); it is the
    config's own line again, naming the file and the value."""
    from typer.testing import CliRunner

    from histomodels.cli import app

    config = tmp_path / "c1.json"
    config.write_text(json.dumps({key: "a\x00b"}))
    r = CliRunner().invoke(
        app, ["train", "--config", str(config), "--data", "x.h5", "--val", "y.h5",
              "--out", str(tmp_path / "r"), "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(f"error: {config}: {said}") and "'a\\x00b'" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_file_of_the_users_where_the_soft_targets_go_is_not_replaced(tmp_path) -> None:
    """``RUN/teacher_logits.npz`` was not among the names train judges before replacing: a
    file of the user's own there was read as a damaged cache ("scoring again") and replaced
    by the teacher's soft targets. Only a cache a run wrote (a zip of ``key.npy`` and
    ``logits.npy``) is replaced now; anything else is one line before the data is read."""
    from typer.testing import CliRunner

    from histomodels.cli import app
    from histomodels.synthetic import write_h5

    train_h5, val_h5 = write_h5(tmp_path / "t.h5", 32, seed=0), write_h5(tmp_path / "v.h5", 24)
    run = tmp_path / "run"
    run.mkdir()
    mine = run / "teacher_logits.npz"
    mine.write_bytes(b"my own notes, not numpy")
    args = ["train", "--data", str(train_h5), "--val", str(val_h5), "--out", str(run),
            "--epochs", "1", "--threads", "1", "--model-config", json.dumps(TINY), "--quiet",
            "--teacher", "pcam-cnn"]  # fmt: skip
    assert refused_with(CliRunner().invoke(app, args)) == (
        f"{mine}: exists and is not the teacher's soft targets a run wrote (a numpy "
        ".npz of their key and logits); training would replace it: choose another --out, or "
        "remove it first"
    )
    assert [p.name for p in run.iterdir()] == [mine.name]
    assert mine.read_bytes() == b"my own notes, not numpy"
    np.savez(mine, other=np.zeros(3))  # a numpy archive, but not the cache
    assert not written_by_a_run(mine)
    assert CliRunner().invoke(app, args).exit_code == 1
    mine.unlink()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert written_by_a_run(mine)  # the run's own cache: replaced by a rerun
    r = CliRunner().invoke(app, [*args, "--overwrite", "--seed", "3"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("member", ["key.npy", "logits.npy"])
def test_a_cache_member_declaring_more_than_it_needs_is_not_inflated(
    data, teacher, tmp_path, caplog, member
) -> None:
    """Only the cache's member names were checked: a ``key.npy`` (or ``logits.npy``)
    declaring far more than a key or the patches' logits take was inflated in full (300 M
    items: 1.7 GB) before the key was compared. Its declared size (the zip's central
    directory) is checked first now: a warning, scored again, nothing inflated; the CLI
    does not take such a file for the cache a run wrote (review 45 M5)."""
    import io
    import zipfile

    (xt, _), _ = data
    x, run, said = torch.from_numpy(xt), tmp_path / "run", []
    good = teacher_logits(str(teacher), x, run, say=said.append)
    cache = run / CACHE_NAME
    with np.load(cache) as z:
        key = str(z["key"])
    big = {"key.npy": np.array("k" * 100_000), "logits.npy": np.zeros(len(x) * 100)}
    arrays = {"key": np.array(key), "logits": good} | {member[:-4]: big[member]}
    buf = io.BytesIO()
    np.savez_compressed(buf, key=arrays["key"], logits=arrays["logits"])
    cache.write_bytes(buf.getvalue())
    with zipfile.ZipFile(cache) as z:
        assert cache.stat().st_size < z.getinfo(member).file_size // 10  # well compressed
    if member == "key.npy":
        assert not written_by_a_run(cache)
    with caplog.at_level(logging.WARNING, logger="histomodels.training.distill"):
        again = teacher_logits(str(teacher), x, run, say=said.append)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"{member} declares" in warned[0], warned
    assert "scoring" in said[-1] and np.array_equal(again, good)
