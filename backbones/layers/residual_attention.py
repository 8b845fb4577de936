"""Residual Attention Module (RAM) of FFT: CBAM-style channel then spatial gates plus a residual.

Paper: Zhu et al., "Image Recognition based on Multi-scale Feature Fusion Transformer", Sec. III.B,
Eq. 1-2 and Fig. 2::

    F'  = CA(F)  * F          (1)   CA(F)  in R^{C x 1 x 1}
    F'' = SA(F') * F' + F     (2)   SA(F') in R^{1 x H x W}

The gates are the CBAM ones (Woo et al., ECCV 2018), which the paper describes but does not specify
further; the residual ``+ F`` is the "residual attention" idea of Wang et al. (CVPR 2017, the paper's
ref. [22]). Reuse of :mod:`timm.layers.cbam` and where it differs from the original CBAM code
(Jongchan/attention-module):

* channel gate: ``timm.layers.cbam.ChannelAttn`` with ``mlp_bias=True`` is exactly CBAM's gate (shared
  MLP ``C -> C/r -> C`` on the average- and max-pooled vectors, summed, sigmoid); timm's 1x1 convs are
  the same maps as CBAM's ``nn.Linear`` layers. timm's default ``mlp_bias=False`` is *not* the original,
  so we pass ``True``. Reduction ratio r = 16 (CBAM's default; the FFT paper gives none).
* spatial gate: ``timm.layers.cbam.SpatialAttn`` = 7x7 conv (no bias) + BatchNorm + sigmoid on the
  channel-pooled maps, as in CBAM, except that timm concatenates ``[mean, max]`` where CBAM concatenates
  ``[max, mean]``. That only permutes the two input channels of a learned conv, so the function class is
  identical (a CBAM checkpoint would need its conv weight's input channels swapped).
"""

from __future__ import annotations

from timm.layers.cbam import ChannelAttn, SpatialAttn
from torch import Tensor, nn

__all__ = ["ResidualAttention"]


class ResidualAttention(nn.Module):
    """RAM (Eq. 1-2): ``SA(CA(F) * F) * (CA(F) * F) + F``; keeps the shape ``(B, C, H, W)``.

    Args:
        channels: number of channels C of the feature map.
        reduction: channel-MLP reduction ratio r (hidden width ``C // r``, at least 1). Paper: not given;
            CBAM's 16.
        spatial_kernel_size: kernel of the spatial gate's conv. Paper: not given; CBAM's 7.
        residual: add the input back (Eq. 2's ``+ F``). ``False`` gives plain CBAM (for comparison only).
    """

    def __init__(
        self, channels: int, reduction: int = 16, spatial_kernel_size: int = 7, residual: bool = True
    ) -> None:
        super().__init__()
        self.channel = ChannelAttn(channels, rd_channels=max(1, channels // reduction), mlp_bias=True)
        self.spatial = SpatialAttn(spatial_kernel_size)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.spatial(self.channel(x))  # timm's gates return x * gate(x): Eq. 1, then SA(F') * F'
        return out + x if self.residual else out
