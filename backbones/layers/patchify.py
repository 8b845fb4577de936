"""Patchify downsampling: a 2x2, stride-2 convolution (ViT/Swin "patchify" style) for ResNet stages.

Paper: Z. Tan, Z.-H. Xu, "ACANet: A Fine-grained Image Classification Optimization Method Based on
Convolution and Attention Fusion", Sec. 3.3, Fig. 7(b), Fig. 2(c). The paper replaces ResNet's
downsampling (the 3x3/2 max-pool of the stem, Fig. 7(a), and the strided shortcut of the first block of
stages 2-4, the dashed curve of Fig. 2(c)) by a non-overlapping 2x2 convolution with stride 2. Fig. 7(b)
pads "only two sides" of the input: we pad the right and bottom by one pixel when the size is odd (on even
sizes that padding would never be read by a stride-2 2x2 window), i.e. ceil-mode output size
``ceil(H / 2)``, the same size as ResNet's padded max-pool / strided 3x3 conv.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PatchifyConv2d(nn.Conv2d):
    """Non-overlapping ``patch x patch`` conv with stride ``patch``; right/bottom zero padding if needed.

    A subclass of :class:`torch.nn.Conv2d` (same ``weight``/``bias`` names), so fusion, FLOP counters and
    state-dict tools treat it as a convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        patch: patch size = kernel size = stride (2 in ACANet).
        bias: conv bias (``False`` when a BatchNorm follows).
    """

    def __init__(self, in_channels: int, out_channels: int, patch: int = 2, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size=patch, stride=patch, padding=0, bias=bias)
        self.patch = patch

    def forward(self, x: Tensor) -> Tensor:
        pad_h = (-x.shape[-2]) % self.patch
        pad_w = (-x.shape[-1]) % self.patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return super().forward(x)


def patchify_downsample(in_channels: int, out_channels: int, patch: int = 2) -> nn.Sequential:
    """Patchify conv followed by BatchNorm (the ResNet ``downsample`` / stem-pool replacement)."""
    return nn.Sequential(PatchifyConv2d(in_channels, out_channels, patch), nn.BatchNorm2d(out_channels))
