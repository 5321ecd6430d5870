"""Files written by older versions of histomodels, opened by this one: each is read as it
was meant, or refused with one line that says what to do (docs/histomodels-training.md,
"Files from older versions"). The old files are made here, in the shape those versions
wrote them; no file made by old code is checked in."""

from __future__ import annotations

import pytest
import torch

from histomodels.checkpoint import make_checkpoint, save_checkpoint
from histomodels.config import TrainConfig
from histomodels.models import create_model
from histomodels.models.weights import WeightsError
from histomodels.synthetic import make_patches
from histomodels.training import train

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
