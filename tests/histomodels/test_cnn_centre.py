"""The scratch CNN's centre-focused variants (``model_config={"centre": ...}``, issue 11):
a branch on the central crop, or attention pooling with a centre prior. ``"none"`` is the
builder's default (checkpoints without the key); the shipped pcam-cnn is ``"pool"``
(tests/histomodels/test_pretrained.py loads it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histomodels.checkpoint import load_model, make_checkpoint, save_checkpoint
from histomodels.config import TrainConfig
from histomodels.export import export_checkpoint
from histomodels.models import create_model
from histomodels.models.cnn import CentreBranch, CentrePool
from histomodels.synthetic import make_patches
from histomodels.training import train

torch.set_num_threads(1)


def test_none_is_the_plain_network() -> None:
    torch.manual_seed(0)
    plain = create_model("cnn")
    torch.manual_seed(0)
    none = create_model("cnn", centre="none")
    assert plain.state_dict().keys() == none.state_dict().keys()
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), none.state_dict().values(), strict=True)
    )
    assert not any("centre" in k for k in none.state_dict())


@pytest.mark.parametrize("centre", ["branch", "pool"])
def test_centre_variants_round_trip_and_export_to_onnx(centre, tmp_path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model("cnn", centre=centre, width=8).eval()
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (3, 1) and torch.isfinite(y).all()
    path = save_checkpoint(
        tmp_path / "m.pt", make_checkpoint(model, "cnn", {"centre": centre, "width": 8})
    )
    again, ckpt = load_model(path)
    assert ckpt["model_config"]["centre"] == centre
    with torch.no_grad():
        torch.testing.assert_close(again(x), y)
    res = export_checkpoint(path, "onnx", tmp_path / "m.onnx", exporter="legacy")
    assert res["max_abs_diff"] < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = np.asarray(sess.run(None, {"input": x[:2].numpy()})[0])
    assert out.shape == (2,)
    np.testing.assert_allclose(out, y[:2, 0].numpy(), atol=1e-4)


def test_branch_sees_only_the_central_crop() -> None:
    branch = CentreBranch(3, 4, "none").eval()
    x = torch.rand(2, 3, 96, 96)
    y = x.clone()
    y[:, :, :24] = 0  # outside the central 48x48 (rows/cols 24-71)
    y[:, :, :, 72:] = 1
    with torch.no_grad():
        assert torch.equal(branch(x), branch(y))
        z = x.clone()
        z[:, :, 48, 48] += 5
        assert not torch.equal(branch(x), branch(z))


def test_pool_weights_the_centre_most_at_the_start() -> None:
    pool = CentrePool(1)
    f = torch.zeros(2, 1, 12, 12)
    f[0, 0, 6, 6] = 1  # one active position at the centre, one in a corner
    f[1, 0, 0, 0] = 1
    with torch.no_grad():
        centre, corner = pool(f)[:, 0]
    assert centre > 20 * corner > 0


def test_unknown_centre_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown cnn centre 'middle'"):
        create_model("cnn", centre="middle")


def test_training_a_centre_variant(tmp_path) -> None:
    (xt, yt), (xv, yv) = make_patches(32, seed=0), make_patches(24, seed=1)
    cfg = TrainConfig(model_config={"width": 8, "depth": 2, "centre": "pool"}, epochs=1,
                      batch_size=16, progress=False, threads=1)  # fmt: skip
    res = train(cfg, tmp_path / "r", train_data=(xt, yt), val_data=(xv, yv))
    model, ckpt = load_model(tmp_path / "r" / "best.pt")
    assert ckpt["model_config"]["centre"] == "pool" and res.best_epoch == 1
    assert isinstance(model.centre, CentrePool)


def test_pool_prior_is_minus_r2_over_two_sigma2() -> None:
    # the prior is written to suit torch 2.11's dynamo ONNX exporter; it must still be
    # softmax(score - r^2 / (2 sigma^2)) as the docstring (and the shipped weights) say
    pool = CentrePool(4).eval()
    with torch.no_grad():
        pool.log_sigma.fill_(-0.7)
        pool.score.weight.normal_()
    f = torch.randn(2, 4, 5, 7)
    ys, xs = torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 7)
    r2 = ys.view(5, 1) ** 2 + xs.view(1, 7) ** 2
    prior = -r2 / (2 * torch.exp(torch.tensor(2 * -0.7)))
    attn = torch.softmax((pool.score(f) + prior).flatten(1), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(pool(f), torch.einsum("nk,nck->nc", attn, f.flatten(2)))
