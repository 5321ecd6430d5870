"""Every registered model builds, maps a 96 px batch to one logit and round-trips a checkpoint."""

from __future__ import annotations

import pytest
import torch

from histomodels.checkpoint import load_model, make_checkpoint, read_checkpoint, save_checkpoint
from histomodels.models import create_model, list_models


def test_registry_lists_the_zoo():
    names = set(list_models())
    assert {
        "cnn",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "efficientnet_b1",
        "efficientnet_lite0",
    } <= names


def _round_trip(name, tmp_path, **cfg):
    torch.manual_seed(0)
    model = create_model(name, **cfg).eval()
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (3, 1)
    assert torch.isfinite(y).all()
    path = save_checkpoint(tmp_path / "m.pt", make_checkpoint(model, name, cfg))
    torch.load(path, weights_only=True)  # plain dict, no code
    again, ckpt = load_model(path)
    assert ckpt["model"] == name and ckpt["model_config"] == cfg
    with torch.no_grad():
        torch.testing.assert_close(again(x), y)


#: Models that cannot be built without a config of their own, and the smallest one that works.
NEEDS_CONFIG = {
    "ensemble": {
        "members": [
            {"model": "cnn", "model_config": {"width": 4}, "mean": [0.5] * 3,
             "std": [0.25] * 3, "input_size": 96, "temperature": t}
            for t in (1.0, 2.0)
        ]
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_registered_model_round_trips(name, tmp_path):
    _round_trip(name, tmp_path, **NEEDS_CONFIG.get(name, {}))


@pytest.mark.parametrize("name", sorted(set(list_models()) - set(NEEDS_CONFIG)))
def test_every_builders_defaults_keep_its_own_rules(name):
    """Each builder states its values' ranges in its signature (``Annotated`` bounds,
    ``Literal`` choices), which ``check_config`` reads: every default must keep them, or a
    config naming the default would be refused."""
    import inspect

    from histomodels.models.registry import _builder, check_config, config_keys

    fn, _ = _builder(name)
    params = inspect.signature(fn).parameters
    for key in sorted(config_keys(name)):
        check_config(name, {key: params[key].default})


def test_timm_prefix_model_with_kwargs_round_trips(tmp_path):
    _round_trip("timm/resnet10t", tmp_path, drop_rate=0.1)


def test_resized_input_is_part_of_the_model(tmp_path):
    model = create_model("mobilenet_v3_small", input_size=128).eval()
    seen = []
    inner = model.inner
    assert isinstance(inner, torch.nn.Module)
    inner.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))
    assert seen == [(128, 128)]
    _round_trip("mobilenet_v3_small", tmp_path, input_size=128)


@pytest.mark.parametrize(
    "cfg", [{"norm": "group"}, {"norm": "none", "depth": 2, "blocks": 1}, {"width": 8, "depth": 5}]
)
def test_cnn_configurations(cfg, tmp_path):
    _round_trip("cnn", tmp_path, **cfg)
    ckpt = read_checkpoint(tmp_path / "m.pt")
    assert ckpt["model_config"] == cfg


def test_cnn_depth_and_width_change_the_network():
    small = create_model("cnn", depth=2, width=8)
    big = create_model("cnn", depth=4, width=32)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(big) / 50
    assert big.num_features == 256


def test_bad_model_settings_are_clear():
    with pytest.raises(ValueError, match="normalisation"):
        create_model("cnn", norm="layer")
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model("timm/not_a_model_xyz")
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("cnn", pretrained=True)


def test_a_folder_without_best_pt_is_said_as_such(tmp_path, monkeypatch):
    from histomodels.checkpoint import CheckpointError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(CheckpointError, match=r"^emptyrun: a folder without best\.pt"):
        read_checkpoint("emptyrun")
    (tmp_path / "pcam-cnn").mkdir()  # the shipped model's name as a local folder
    with pytest.raises(CheckpointError, match=r"^\./pcam-cnn: a folder without best\.pt"):
        read_checkpoint("./pcam-cnn")
