"""``--deterministic``: PyTorch's deterministic algorithms while a run trains (CUDA runs
bit-identical for a seed; ``test_cuda.py`` checks that on a GPU), the process's own settings
back afterwards (also when setup fails), the key kept by a resumed run, and the generator
state a resume restores."""

from __future__ import annotations

import json
import os

import pytest
import torch
from _trainkit import TINY, train_args
from typer.testing import CliRunner

from histomodels.checkpoint import read_checkpoint, save_checkpoint
from histomodels.cli import app
from histomodels.config import TrainConfig
from histomodels.data import DatasetError
from histomodels.synthetic import make_patches
from histomodels.training import Callback, Trainer, train


class Seen(Callback):
    """Notes the torch settings in force while the run trains."""

    def __init__(self) -> None:
        self.settings: set[tuple[bool, bool, bool, bool]] = set()

    def on_step_end(self, trainer) -> None:
        self.settings.add(_settings())


def _settings() -> tuple[bool, bool, bool, bool]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(model="cnn", model_config=TINY, epochs=1, batch_size=16, progress=False,
                       threads=1, device="cpu", **kw)  # fmt: skip


def test_deterministic_runs_under_deterministic_algorithms_and_restores_the_process(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    (xt, yt), (xv, yv) = make_patches(32, seed=0), make_patches(24, seed=1)
    before = _settings()
    runs = {}
    for on in (True, False):
        seen = Seen()
        runs[on] = tmp_path / str(on)
        train(_cfg(deterministic=on), runs[on], train_data=(xt, yt), val_data=(xv, yv),
              callbacks=[seen])  # fmt: skip
        assert seen.settings == ({(True, True, True, False)} if on else {before})
        assert _settings() == before  # the caller's settings are back
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"  # set for cuBLAS, kept
    # on the CPU the switch changes no kernel this CNN uses: the same weights either way
    a, b = (read_checkpoint(runs[on] / "last.pt")["state_dict"] for on in (True, False))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_option_is_recorded_and_kept_by_a_resumed_run(tmp_path):
    args, out = train_args(tmp_path, epochs=1)
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--deterministic"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["deterministic"] is True
    more = [*args[: args.index("--epochs") + 1], "2", *args[args.index("--epochs") + 2 :]]
    resumed = runner.invoke(app, [*more, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "config.json").read_text())["deterministic"] is True
    refused = runner.invoke(app, [*args, "--resume", "--no-deterministic"])
    assert refused.exit_code != 0 and "deterministic" in refused.output


def test_resuming_a_run_from_before_the_option_with_it_is_refused(tmp_path):
    """A run saved before ``deterministic`` existed has no such key: ``--resume
    --deterministic`` was dropped silently (the run went on, recording false)."""
    args, out = train_args(tmp_path, epochs=1)
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    saved = json.loads((out / "config.json").read_text())
    del saved["deterministic"]
    (out / "config.json").write_text(json.dumps(saved))
    r = runner.invoke(app, [*args, "--resume", "--deterministic"])
    assert r.exit_code == 1, r.output
    assert "deterministic True (the run's False)" in r.stderr


def test_a_damaged_generator_state_in_last_pt_is_one_error_line(tmp_path):
    args, out = train_args(tmp_path, epochs=1)
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    state = read_checkpoint(out / "last.pt")
    state["rng"] = torch.zeros(7, dtype=torch.uint8)
    save_checkpoint(out / "last.pt", state)
    more = [*args[: args.index("--epochs") + 1], "2", *args[args.index("--epochs") + 2 :]]
    r = runner.invoke(app, [*more, "--resume"])
    assert r.exit_code == 1, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {out / 'last.pt'}: its random generator state cannot be ")
    assert "size to be 7" in line and line.endswith("); --overwrite trains anew")


def test_a_setup_that_fails_gives_the_settings_back(tmp_path):
    (xt, yt), (xv, yv) = make_patches(32, seed=0), make_patches(24, seed=1)
    before = _settings()
    trainer = Trainer(_cfg(deterministic=True), tmp_path / "r", train_data=(xt, yt * 7),
                      val_data=(xv, yv))  # fmt: skip
    with pytest.raises(DatasetError):
        trainer.setup()
    assert _settings() == before
