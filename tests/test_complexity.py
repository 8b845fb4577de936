"""The one MAC/parameter counter (lightning_modules.complexity) on hand-counted layers."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.complexity import count_macs, count_params, macs_by_module


def _net() -> nn.Sequential:
    # conv: 4 out x 3 in x 3 x 3 per output pixel, 8 x 8 pixels; linear: 4 x 4 x 8 x 8 in, 10 out
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))


def test_macs_and_params_hand_counted():
    net = _net().train()
    expected = 4 * 3 * 9 * 64 + 4 * 64 * 10
    assert count_macs(net, 8) == expected
    assert count_macs(net, (8, 8)) == expected
    assert count_macs(net, torch.zeros(2, 3, 8, 8)) == 2 * expected
    assert net.training  # the count runs in eval mode and restores the mode
    assert count_params(net) == (4 * 27 + 4) + (256 * 10 + 10)


def test_meta_device_and_per_module_counts():
    with torch.device("meta"):
        net = _net()
    assert count_macs(net, 8) == 4 * 3 * 9 * 64 + 4 * 64 * 10
    per_module = macs_by_module(net, 8)
    assert per_module["Global"] == count_macs(net, 8)
    assert per_module["Sequential.0"] == 4 * 3 * 9 * 64
    assert count_macs(lambda x: net[0](x), 8) == 4 * 3 * 9 * 64  # any callable of one tensor
