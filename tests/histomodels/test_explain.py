"""Grad-CAM finds where the evidence is, for any architecture, and the error gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from histomodels.explain import error_gallery, grad_cam, last_feature_layer
from histomodels.models import create_model

torch.set_num_threads(1)


def _red_detector() -> nn.Module:
    """logit = mean over pixels of relu(normalised red): evidence sits where red is."""
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        assert conv.bias is not None
        conv.bias.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    head = nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def _images() -> np.ndarray:
    x = np.full((2, 96, 96, 3), 60, np.uint8)
    x[0, 8:32, 8:32] = (255, 60, 60)  # red square top-left
    x[1, 60:90, 50:80] = (255, 60, 60)  # bottom-right
    return x


def test_grad_cam_localises_evidence() -> None:
    cams = grad_cam(_red_detector(), _images())
    assert cams.shape == (2, 96, 96)
    assert cams.min() >= 0 and cams.max() <= 1
    assert cams[0, 8:32, 8:32].mean() > 0.8 and cams[0, 50:, 50:].mean() < 0.1
    assert cams[1, 60:90, 50:80].mean() > 0.8 and cams[1, :40, :40].mean() < 0.1


def test_works_on_zoo_models_without_per_model_code() -> None:
    x = np.random.default_rng(0).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8)
    for name, cfg in (("cnn", {"depth": 2, "width": 8}), ("mobilenet_v3_small", {})):
        model = create_model(name, pretrained=False, **cfg).eval()
        layer = last_feature_layer(model, torch.zeros(1, 3, 96, 96))
        cams = grad_cam(model, x, layer=layer)
        assert cams.shape == (2, 96, 96) and np.isfinite(cams).all(), name
        assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_error_gallery_picks_most_confident_errors(tmp_path: Path) -> None:
    x = np.repeat(_images(), 3, axis=0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.9, 0.6, 0.1, 0.05, 0.4, 0.8])
    ids = [f"p{i}" for i in range(6)]
    shown = error_gallery(_red_detector(), x, labels, probs, ids, 0.5, tmp_path / "g.png", k=1)
    assert shown == {"false_positives": ["p0"], "false_negatives": ["p3"]}
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_error_gallery_prints_a_threshold_as_the_text_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its title said 'at threshold 1.000' for 0.99996."""
    import matplotlib.figure

    titles: list[str] = []
    savefig = matplotlib.figure.Figure.savefig

    def record(fig: matplotlib.figure.Figure, *args: Any, **kw: Any) -> None:
        titles.append(fig.get_suptitle())
        savefig(fig, *args, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    x = np.repeat(_images(), 3, axis=0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.99999, 0.6, 0.1, 0.05, 0.4, 0.8])
    error_gallery(_red_detector(), x, labels, probs, [f"p{i}" for i in range(6)], 0.99996,
                  tmp_path / "g.png", k=1)  # fmt: skip
    assert len(titles) == 1 and "at threshold 0.99996 " in titles[0], titles
