"""HorNet (Rao et al. 2022, "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated
Convolutions"), the MSF-CA paper's Table VIII comparison row.

Variant: HorNet-B 7x7 (base width 128, depths 2-3-18-2, gnConv orders 2-3-4-5 per stage, depth-wise 7x7
convolution, scale s = 1/3): 87 M / 15.6 G in the HorNet paper for 1,000 classes; with the ceramic set's
24 classes it has 86.256 M parameters, the figure of MSF-CA Table VIII (tested).

gnConv (Eq. 3-4 of the HorNet paper): a 1x1 projection to ``2C`` channels splits into ``p0`` (``C / 2^(n-1)``
channels) and the features ``q_0 .. q_{n-1}`` of widths ``C / 2^(n-1-k)``, all of which go through one
depth-wise 7x7 conv (scaled by ``s``); then ``p_{k+1} = g_k(p_k) * q_k`` with 1x1 convs ``g_k`` widening
``p_k`` to the next width, and a final 1x1 projection. A block is ConvNeXt-like: LayerNorm, gnConv,
layer scale, residual; LayerNorm, MLP (4x), layer scale, residual.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, LayerNorm, LayerNorm2d, calculate_drop_path_rates, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from backbones.baselines._contract import BaselineContract, baseline_cfg, create


class GnConv(nn.Module):
    """Recursive gated convolution of order ``order`` (the paper's gnConv)."""

    def __init__(self, dim: int, order: int = 5, kernel_size: int = 7, scale: float = 1.0) -> None:
        super().__init__()
        self.order = order
        self.dims = [dim // 2**i for i in range(order)][::-1]
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        width = sum(self.dims)
        self.dwconv = nn.Conv2d(width, width, kernel_size, padding=kernel_size // 2, groups=width)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        pwa, abc = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        gates = torch.split(self.dwconv(abc) * self.scale, self.dims, dim=1)
        x = pwa * gates[0]
        for pw, gate in zip(self.pws, gates[1:], strict=True):
            x = pw(x) * gate
        return self.proj_out(x)


class HorBlock(nn.Module):
    """LayerNorm -> gnConv -> layer scale (residual), LayerNorm -> MLP -> layer scale (residual)."""

    def __init__(
        self, dim: int, order: int, scale: float, drop_path: float = 0.0, ls_init: float = 1e-6
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.gnconv = GnConv(dim, order=order, scale=scale)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(ls_init * torch.ones(dim))
        self.gamma2 = nn.Parameter(ls_init * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.gamma1.view(-1, 1, 1) * self.gnconv(self.norm1(x)))
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(x.permute(0, 2, 3, 1)))))
        return x + self.drop_path((self.gamma2 * y).permute(0, 3, 1, 2))


class HorNet(BaselineContract, nn.Module):
    """HorNet: 4x4/4 stem, four stages of :class:`HorBlock` with 2x2/2 downsampling, LayerNorm + linear head.

    Args:
        num_classes: classifier outputs (0: no classifier).
        in_chans: input channels.
        base_dim: width of stage 1 (stages double it).
        depths: blocks per stage.
        orders: gnConv order per stage.
        gnconv_scale: the scale ``s`` of the depth-wise conv output.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear over blocks.
        global_pool: ``"avg"`` (the paper's) or ``""``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        base_dim: int = 128,
        depths: tuple[int, ...] = (2, 3, 18, 2),
        orders: tuple[int, ...] = (2, 3, 4, 5),
        gnconv_scale: float = 1.0 / 3.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        dims = [base_dim * 2**i for i in range(4)]
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
            for i in range(3)
        )
        rates = calculate_drop_path_rates(drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        for i, (depth, order) in enumerate(zip(depths, orders, strict=True)):
            start = sum(depths[:i])
            block = partial(HorBlock, dims[i], order, gnconv_scale)
            self.stages.append(nn.Sequential(*(block(drop_path=rates[start + j]) for j in range(depth))))
        self.feature_info = [
            {"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"} for i in range(4)
        ]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d | nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _stage(self, i: int, x: Tensor) -> Tensor:
        x = self.stem(x) if i == 0 else self.downsample[i - 1](x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            from timm.models import checkpoint_seq

            return checkpoint_seq(self.stages[i], x)
        return self.stages[i](x)

    def forward_features(self, x: Tensor) -> Tensor:
        for i in range(4):
            x = self._stage(i, x)
        return x

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's intermediate-feature API: the output of each selected stage (NCHW)."""
        if output_fmt != "NCHW":
            raise ValueError("HorNet intermediates are NCHW only")
        take, max_index = feature_take_indices(4, indices)
        intermediates = []
        for i in range(4 if not stop_early else max_index + 1):
            x = self._stage(i, x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = self.norm(x.mean((-2, -1)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


default_cfgs = generate_default_cfgs({"hornet_base_7x7": baseline_cfg("stem.0", crop_pct=0.9)})


@register_model
def hornet_base_7x7(pretrained: bool = False, **kwargs: Any) -> HorNet:
    """HorNet-B with 7x7 depth-wise gnConv (86.256 M parameters at 24 classes, MSF-CA Table VIII)."""
    return create(
        HorNet,
        "hornet_base_7x7",
        pretrained,
        feature_cfg={"feature_cls": "getter", "out_indices": (0, 1, 2, 3)},
        **kwargs,
    )
