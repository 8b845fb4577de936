"""ACCB: Asymmetric Convolution and Convolution Block (re-parameterisable k x k + k x 1 + 1 x k conv).

Paper: Z. Tan, Z.-H. Xu, "ACANet: A Fine-grained Image Classification Optimization Method Based on
Convolution and Attention Fusion", Sec. 3.1, Eq. (1)-(4), Fig. 3. The block is ACNet's ``ACBlock``
(Ding et al., ICCV 2019, ``DingXiaoH/ACNet/acnet/acb.py``): three bias-free convolutions - the square
k x k kernel, a vertical k x 1 and a horizontal 1 x k kernel - each followed by its own BatchNorm, outputs
summed (Eq. 1, additivity of convolution). At inference every BN is folded into its kernel
(``W * gamma / sigma``, bias ``beta - mu * gamma / sigma``, Eq. 2-3) and the two asymmetric kernels are added
into the centre column / row of the square kernel (Eq. 4), leaving one plain convolution with bias.

Choices the paper leaves open (ours, following ACNet):

* padding of the asymmetric branches: ``(p, p - k//2)`` for k x 1 and ``(p - k//2, p)`` for 1 x k, so all
  three branches see the same receptive-field centre (only ``padding >= k // 2`` is supported; ACNet's
  crop layer for smaller paddings is not needed by ACANet);
* BN gamma initialisation of the three branches: 1 (ACNet's default; ``gamma_init=1/3`` gives the
  ``reduce_gamma`` option of the README);
* the block already contains its BNs: do not put another BN after it.

The fusion is exact only in eval mode (BN running statistics), as in ACNet.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from backbones.errors import ModelConfigError


def fold_conv_bn(weight: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the preceding bias-free convolution (paper Eq. 2-3).

    Args:
        weight: convolution kernel ``(C_out, C_in / groups, kh, kw)``.
        bn: the BatchNorm that follows it.

    Returns:
        ``(kernel, bias)`` of the equivalent convolution.
    """
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class ACCB(nn.Module):
    """k x k conv + k x 1 conv + 1 x k conv, each with BN, summed; fusable into one k x k conv with bias.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd square kernel size k (3 in ACANet).
        stride: stride of all three branches.
        padding: padding of the square branch (default ``k // 2``, "same" at stride 1).
        groups: groups of all three branches.
        gamma_init: initial BN gamma of every branch (ACNet: 1, or 1/3 with ``reduce_gamma``).
        deploy: build directly in the fused form (one conv with bias).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        gamma_init: float = 1.0,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ModelConfigError(f"ACCB needs an odd kernel_size (got {kernel_size})")
        padding = kernel_size // 2 if padding is None else padding
        if padding < kernel_size // 2:
            raise ModelConfigError(
                f"ACCB supports padding >= kernel_size // 2 (got {padding} for k={kernel_size})"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.groups = groups
        self.gamma_init = gamma_init
        self.deploy = deploy
        conv_args = dict(stride=stride, groups=groups, bias=False)
        if deploy:
            self.fused_conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=True
            )
            return
        offset = padding - kernel_size // 2
        self.square_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, **conv_args)
        self.square_bn = nn.BatchNorm2d(out_channels)
        self.ver_conv = nn.Conv2d(
            in_channels, out_channels, (kernel_size, 1), padding=(padding, offset), **conv_args
        )
        self.ver_bn = nn.BatchNorm2d(out_channels)
        self.hor_conv = nn.Conv2d(
            in_channels, out_channels, (1, kernel_size), padding=(offset, padding), **conv_args
        )
        self.hor_bn = nn.BatchNorm2d(out_channels)
        self.reset_bn_gamma()

    def reset_bn_gamma(self) -> None:
        """Set the three branches' BN gamma to ``gamma_init`` (ACNet's ``init_gamma``)."""
        if self.deploy:
            return
        for bn in (self.square_bn, self.ver_bn, self.hor_bn):
            nn.init.constant_(bn.weight, self.gamma_init)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.fused_conv(x)
        square = self.square_bn(self.square_conv(x))
        vertical = self.ver_bn(self.ver_conv(x))
        horizontal = self.hor_bn(self.hor_conv(x))
        return square + vertical + horizontal

    @torch.no_grad()
    def get_fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """Kernel and bias of the single convolution equivalent to the block in eval mode (Eq. 2-4)."""
        if self.deploy:
            return self.fused_conv.weight.detach().clone(), self.fused_conv.bias.detach().clone()
        centre = self.kernel_size // 2
        kernel, bias = fold_conv_bn(self.square_conv.weight, self.square_bn)
        ver_kernel, ver_bias = fold_conv_bn(self.ver_conv.weight, self.ver_bn)
        hor_kernel, hor_bias = fold_conv_bn(self.hor_conv.weight, self.hor_bn)
        kernel = kernel.clone()
        kernel[:, :, :, centre : centre + 1] += ver_kernel  # k x 1 into the centre column
        kernel[:, :, centre : centre + 1, :] += hor_kernel  # 1 x k into the centre row
        return kernel, bias + ver_bias + hor_bias

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Replace the three branches by one plain ``nn.Conv2d`` with bias (idempotent)."""
        if self.deploy:
            return
        kernel, bias = self.get_fused_kernel_bias()
        fused = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            groups=self.groups,
            bias=True,
            device=kernel.device,
            dtype=kernel.dtype,
        )
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        for name in ("square_conv", "square_bn", "ver_conv", "ver_bn", "hor_conv", "hor_bn"):
            delattr(self, name)
        self.fused_conv = fused
        self.deploy = True

    fuse = switch_to_deploy

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, deploy={self.deploy}"
        )
