"""Cross-scale coordinate attention (MSF-CA paper, Algorithm 1, Eq. 1-4).

Paper: Zhuang, Xu, Xia, Li, Zhang, "Ceramic Microscope Image Classification Based on Multi-Scale Fusion
Bottleneck Structure and Chunking Attention Mechanism", Sec. III-A-1.

The module is Coordinate Attention (Hou et al., houqb/CoordAttention) with one change: the H-profile
(pooling along the X axis, Eq. 1 top) is taken from one feature map ``x_x`` and the W-profile (pooling along
the Y axis, Eq. 1 bottom) from another map ``x_y`` of a different scale, so the two axis scores D_x, D_y of
Eq. 3 mix information of both scales. The output re-weights ``x_x`` only (Eq. 4).

Choices the paper leaves open, and what we do:

* Reduced width: Eq. 2 writes ``C -> C/r`` with r = 32; for the split widths of the multi-scale bottleneck
  (26 ... 208 channels) C/r would be 0-6 channels, so we keep the reference Coordinate Attention rule
  ``mip = max(8, C // r)`` (REFERENCES.md). The parameter count of the paper's "+Cross Scale" model
  (36.100 M, Table I) is reproduced exactly with this rule (see ``backbones/msfca.py``).
* Activation R ("a deformation of ReLU that limits the range to [0, 1]"): the hard sigmoid
  ``ReLU6(x + 3) / 6``. Algorithm 1 then multiplies R(S) by S itself (step 3: "Eq. (2) without R", step 4:
  ``V = X * S``), which is exactly the h-swish of Coordinate Attention; S shares the 1x1 conv and BN of
  Eq. 2 (a separate conv would add parameters the paper's tables do not have).
* All 1x1 convs have a bias, as in the reference code (:class:`backbones.layers.pointwise.PointwiseConv2d`:
  ``nn.Conv2d`` parameters, computed as a matmul where the weight outweighs the map).
* Both inputs must have the same shape (the paper states this requirement).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.errors import ModelConfigError
from backbones.layers.pointwise import PointwiseConv2d


class CrossScaleCoordAttention(nn.Module):
    """Phi(X_x, X_y) of Algorithm 1: coordinate attention whose X and Y profiles come from two scales.

    Args:
        channels: channels C of both inputs.
        reduction: squeeze ratio r of Eq. 2 (paper: 32).
        min_channels: lower bound of the squeezed width (reference Coordinate Attention: 8).
    """

    def __init__(self, channels: int, reduction: int = 32, min_channels: int = 8) -> None:
        super().__init__()
        mip = max(min_channels, channels // reduction)
        self.channels = channels
        self.conv1 = PointwiseConv2d(channels, mip)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv_h = PointwiseConv2d(mip, channels)
        self.conv_w = PointwiseConv2d(mip, channels)

    def forward(self, x_x: Tensor, x_y: Tensor) -> Tensor:
        """Return ``x_x * D_x * D_y`` (Eq. 4).

        Args:
            x_x: (B, C, H, W) map that is pooled along W (its H profile) and re-weighted.
            x_y: (B, C, H, W) map of the other scale, pooled along H (its W profile).
        """
        if x_x.shape != x_y.shape:
            raise ModelConfigError(
                f"CrossScaleCoordAttention needs two maps of the same shape, got {tuple(x_x.shape)} "
                f"and {tuple(x_y.shape)}"
            )
        h, w = x_x.shape[-2:]
        y_x = x_x.mean(dim=3, keepdim=True)  # Eq. 1, (B, C, H, 1)
        y_y = x_y.mean(dim=2, keepdim=True).transpose(2, 3)  # Eq. 1, (B, C, W, 1)
        s = self.bn1(self.conv1(torch.cat([y_x, y_y], dim=2)))  # Eq. 2 without R: S
        v = F.hardsigmoid(s) * s  # Alg. 1 step 4: V = R(S) * S
        v_h, v_w = torch.split(v, [h, w], dim=2)  # Alg. 1 step 5
        d_x = torch.sigmoid(self.conv_h(v_h))  # Eq. 3, (B, C, H, 1)
        d_y = torch.sigmoid(self.conv_w(v_w.transpose(2, 3)))  # Eq. 3, (B, C, 1, W)
        return x_x * d_x * d_y  # Eq. 4
