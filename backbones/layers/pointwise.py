"""1x1 convolutions that stay on a fast kernel when their weight outweighs their input.

PyTorch sends a 1x1, stride-1, undilated fp32 convolution on the CPU with a batch below 16 and one
thread to ``aten::_slow_conv2d`` (``ConvParams::use_mkldnn`` in ``aten/src/ATen/native/Convolution.cpp``:
"for 1x1 filters, MKLDNN is faster than THNN when multi-threaded, but THNN is faster when
single-threaded"). Grouping, dilation, dtype, padding mode and memory layout play no part: it is the
1x1 kernel, the small batch and the single thread. That kernel loops over the samples; for a layer whose
weight is larger than its input (MSF-CA's channel attention maps 2048 channels to 2116 on a 2x2 or 7x7
map, PA's value conv on a 4x4 map) its backward spends most of its time re-reading and re-writing the
weight gradient per sample: ``msfca50`` spent 74 % of a training step there (64 px, batch 2, one thread).

:class:`PointwiseConv2d` is an ``nn.Conv2d`` (same parameters, same ``state_dict``) whose forward computes
a plain 1x1 convolution as one matrix product ``W @ x`` over the flattened map when the weight has at
least as many elements as the input (weight-bound: the product reads the weight once, forward and
backward, whatever the batch), and as the convolution otherwise (where the conv kernels are as fast or
faster). The result is the same linear map; tests check outputs and gradients against ``F.conv2d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PointwiseConv2d", "as_pointwise", "pointwise_conv"]


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1, stride-1, ungrouped convolution; one matmul when the weight outweighs the input."""
    if weight.numel() < x.numel():
        return F.conv2d(x, weight, bias)
    b, c, h, w = x.shape
    out = torch.matmul(weight.flatten(1), x.reshape(b, c, h * w))  # (B, O, H*W)
    if bias is not None:
        out = out + bias.unsqueeze(-1)
    return out.view(b, -1, h, w)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)`` computed by :func:`pointwise_conv`.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        bias: learnable bias.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self, in_channels: int, out_channels: int, bias: bool = True, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return pointwise_conv(x, self.weight, self.bias)


def _is_plain_pointwise(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def as_pointwise(conv: nn.Module) -> nn.Module:
    """``conv`` as a :class:`PointwiseConv2d` holding the *same* parameter objects, if it is a plain 1x1 conv.

    For layers built by code we do not own (timm's bottleneck ``conv1``/``conv3``, its average-pool
    shortcut's conv). The new module is made on the meta device, so no memory is allocated and no random
    number is drawn (a seeded model initialises exactly as before); ``state_dict`` keys and values are
    unchanged. Anything else (strided, dilated, grouped, padded, already converted) is returned as it is.
    """
    if not _is_plain_pointwise(conv):
        return conv
    new = PointwiseConv2d(conv.in_channels, conv.out_channels, bias=conv.bias is not None, device="meta")
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new
