"""Files written by older versions of histomodels, opened by this one: each is read as it
was meant, or refused with one line that says what to do (docs/histomodels-training.md,
"Files from older versions"). The old files are made here, in the shape those versions
wrote them; no file made by old code is checked in."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from histomodels.checkpoint import make_checkpoint, save_checkpoint
from histomodels.config import TrainConfig, check_model, parse_model_config, resolve_config
from histomodels.models import create_model
from histomodels.models.weights import WeightsError
from histomodels.synthetic import make_patches
from histomodels.training import train
from histomodels.training.network import build_model, network_hint

TINY = {"width": 8, "depth": 2, "blocks": 1}


@pytest.fixture(scope="module")
def arrays():
    return make_patches(32, seed=0), make_patches(24, seed=1)


def _cfg(**kw):
    base = dict(model="cnn", epochs=1, batch_size=16, progress=False, threads=1)
    return TrainConfig(**{**base, **kw})


def test_weights_from_a_checkpoint_older_than_centre_pooling_say_the_config_to_give(
    arrays, tmp_path
):
    """A cnn checkpoint written before centre pooling became the training default
    (2026-11-29) names no ``centre`` in its model_config: it is a ``centre: none`` network.
    ``train --weights`` of it built the default ``centre: pool`` network and said only
    '3 model tensors missing from the file, e.g. centre.log_sigma'; the line now names the
    model_config to give, and with it the run trains on from those weights."""
    old = create_model("cnn", **TINY)  # the builder's own default: no centre
    path = save_checkpoint(tmp_path / "old.pt", make_checkpoint(old, "cnn", dict(TINY)))
    (xt, yt), val = arrays
    with pytest.raises(WeightsError) as info:
        train(_cfg(model_config=dict(TINY), weights=str(path)), tmp_path / "r",
              train_data=(xt, yt), val_data=val)  # fmt: skip
    held = '{"blocks": 1, "centre": "none", "depth": 2, "width": 8}'
    assert str(info.value) == (
        f"{path}: 3 model tensors missing from the file, e.g. centre.log_sigma; it holds a cnn "
        f"of model_config {held} and this run builds {held.replace('none', 'pool')}: "
        f"give --model-config '{held}' (model_config in a config file) to train on from it"
    )
    assert not (tmp_path / "r").exists()
    res = train(_cfg(model_config={**TINY, "centre": "none"}, weights=str(path)), tmp_path / "r",
                train_data=(xt, yt), val_data=val)  # fmt: skip
    assert res.epochs_run == 1


def test_a_bare_state_dict_that_does_not_fit_gets_no_config_hint(arrays, tmp_path):
    """A bare state dict that does not fit names no model_config: it has none to name."""
    model = create_model("cnn", **TINY, centre="pool")
    bare = tmp_path / "bare.pt"
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("centre.")}
    torch.save(sd, bare)
    (xt, yt), val = arrays
    with pytest.raises(WeightsError) as info:
        train(_cfg(model_config=dict(TINY), weights=str(bare)), tmp_path / "r",
              train_data=(xt, yt), val_data=val)  # fmt: skip
    assert str(info.value).endswith("e.g. centre.log_sigma")


def _hint_of(cfg):
    """The hint of the error line ``train`` would print for ``cfg`` (the part after ``;``),
    or None when it has none: the model built as ``train`` builds it."""
    with pytest.raises(WeightsError) as info:
        build_model(cfg, torch.device("cpu"))
    _, _, hint = str(info.value).partition("; it holds")
    return ("it holds" + hint) if hint else None


def test_a_checkpoint_config_that_would_run_a_command_when_pasted_gets_no_hint(tmp_path):
    """The hint is text to paste into a shell, and a checkpoint is untrusted: a
    model_config value ``group'$(touch …)'`` was put inside ``--model-config '…'`` as it
    was, so pasting the advice ran the command. A config the model builder refuses now gets
    no hint; one it takes is quoted for the shell (``shlex.quote``)."""
    model = create_model("cnn", **TINY)
    hostile = {**TINY, "norm": "group'$(touch " + str(tmp_path / "PWNED") + ")'"}
    path = save_checkpoint(tmp_path / "bad.pt", make_checkpoint(model, "cnn", hostile))
    assert _hint_of(_cfg(model_config={**TINY, "width": 16}, weights=str(path))) is None
    assert network_hint(_cfg(model_config={**TINY, "width": 16}, weights=str(path))) is None


def test_the_config_hint_is_one_shell_word_that_parses_back_to_the_config(tmp_path):
    """A value the builder takes may still hold a quote (a timm ``global_pool`` is any
    string): what follows ``--model-config`` in the hint is one shell word (shlex quoting)
    whose text is the checkpoint's model_config as JSON; inside bare '…' the quote ended
    the word and the rest ran as shell text."""
    name = "timm/vit_tiny_patch16_224"
    held = {"global_pool": "token'; touch PWNED; '", "input_size": 96}
    model = create_model("cnn", **TINY)  # the hint reads the config only, not the tensors
    path = save_checkpoint(tmp_path / "vit.pt", make_checkpoint(model, name, held))
    hint = network_hint(_cfg(model=name, model_config={"input_size": 96}, weights=str(path)))
    assert hint is not None
    words = shlex.split(hint.partition("give ")[2])
    assert words[:2] == ["--model-config", json.dumps(held, sort_keys=True)]
    assert words[2:] == ["(model_config", "in", "a", "config", "file)", "to", "train", "on",
                         "from", "it"]  # fmt: skip


def test_following_the_hint_over_a_config_file_that_sets_model_config_builds_the_network(
    tmp_path,
):
    """A ``--config`` file that sets model_config (tune's best_config.json) and
    ``--model-config`` are merged key by key, so a key the checkpoint left at its default
    (here ``depth``) kept the file's value: the advice printed the checkpoint's keys alone,
    and following it gave the same error and the same advice again. The hint now spells
    out every key the run sets, with the builder's default where the checkpoint has none,
    and following it (merged as the CLI merges it) builds the network the checkpoint holds."""
    held = {"width": 8, "blocks": 1}  # depth: the builder's default, 4
    old = create_model("cnn", **held)
    path = save_checkpoint(tmp_path / "old.pt", make_checkpoint(old, "cnn", dict(held)))
    best = tmp_path / "best_config.json"
    best.write_text(json.dumps({"model_config": {"width": 8, "depth": 5}}))
    cfg = resolve_config(best, weights=str(path))
    hint = _hint_of(cfg)
    assert hint is not None
    given = shlex.split(hint.partition("give ")[2])[1]
    again = resolve_config(best, weights=str(path), model_config=parse_model_config(given))
    check_model(again)
    model = build_model(again, torch.device("cpu"))  # it was the same error again
    model.load_state_dict(old.state_dict())  # strict: the very network the file holds


def test_a_shipped_name_gets_no_hint_from_a_local_file_of_that_name(tmp_path, monkeypatch):
    """``--weights pcam-cnn`` is the shipped model even where a file ``pcam-cnn`` is in
    the working folder; its own error names its config. The hint read the local file's
    existence as a reason to read a checkpoint and named the shipped config a second time."""
    monkeypatch.chdir(tmp_path)
    model = create_model("cnn", **TINY)
    save_checkpoint(tmp_path / "pcam-cnn", make_checkpoint(model, "cnn", dict(TINY)))
    with pytest.raises(WeightsError) as info:
        build_model(_cfg(model_config={"width": 8}, weights="pcam-cnn"), torch.device("cpu"))
    assert str(info.value).startswith("pcam-cnn: its weights do not fit cnn")
    assert "; it holds" not in str(info.value)
