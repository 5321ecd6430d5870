"""Device and precision choices: the "auto" bf16 rule and the autocast/scaler it implies."""

from __future__ import annotations

import torch

from histomodels.device import autocast, grad_scaler, pick_device, set_threads, use_bf16


def test_auto_bf16_on_cpu_only_for_the_scratch_cnn() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("cnn", cpu, None) is True
    assert use_bf16("mobilenetv3_small_100", cpu, None) is False  # depthwise convs slow down
    assert use_bf16("cnn", cpu, False) is False  # an explicit choice wins
    assert use_bf16("efficientnet_b0", cpu, True) is True
    assert use_bf16("efficientnet_b0", torch.device("cuda"), None) is True  # AMP on CUDA


def test_autocast_runs_in_bf16_only_when_enabled() -> None:
    cpu = pick_device("cpu")
    assert cpu == torch.device("cpu")
    a, b = torch.ones(4, 4), torch.ones(4, 4)
    with autocast(cpu, True):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(cpu, False):
        assert (a @ b).dtype == torch.float32
    assert grad_scaler(cpu, True) is None  # bf16 on CPU needs no loss scaling


def test_set_threads_limits_torch_and_none_leaves_it() -> None:
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
