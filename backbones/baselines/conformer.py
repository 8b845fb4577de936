"""Conformer (Peng et al. 2021, "Conformer: Local Features Coupling Global Representations for Visual
Recognition"), the MSF-CA paper's Table VIII comparison row.

Variant: Conformer-B (channel ratio 6, embedding 576, 12 transformer blocks of 9 heads, patch 16): 83.3 M /
23.3 G in the Conformer paper for 1,000 classes; with the ceramic set's 24 classes it has 81.226 M
parameters, the figure of MSF-CA Table VIII (tested).

A ResNet stem (7x7/2 conv, max-pool) feeds a CNN branch of bottleneck blocks and a transformer branch
(4x4/4 patch conv to tokens + a class token) side by side. Each of the 11 coupled stages (ConvTransBlock)
runs a bottleneck, hands its 3x3 map to the transformer through an FCU-down (1x1 conv, average pooling to
the token grid, LayerNorm, GELU; added to the tokens), runs a transformer block, and returns the tokens to
the CNN through an FCU-up (1x1 conv, BN, ReLU, nearest up-sampling; added inside a second bottleneck, the
"fusion block"). Stages 2-4, 5-8, 9-12 work at strides 4, 8, 16 of the CNN branch (widths 384, 768, 1,536);
the last fusion block halves the map. Two classifiers: the CNN branch's (global average pool + linear) and
the transformer's (LayerNorm class token + linear).

Logits: the sum of both classifiers' outputs, the Conformer paper's inference rule. Training: the paper
sums the two classifiers' cross-entropy losses; this project's task trains on the summed logits (ours),
which keeps every loss of the framework applicable. ``forward_features`` returns the CNN map with the
normalised class token broadcast over it as extra channels (``1536 + 576`` channels), so that
``forward_head`` can apply both classifiers to one tensor.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import calculate_drop_path_rates, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from backbones.baselines._contract import BaselineContract, baseline_cfg, create

_LN = partial(nn.LayerNorm, eps=1e-6)


class ConvBlock(nn.Module):
    """Bottleneck (1x1, 3x3, 1x1, expansion 4) that can add the transformer's map before its 3x3 conv."""

    def __init__(self, inplanes: int, outplanes: int, stride: int = 1, res_conv: bool = False) -> None:
        super().__init__()
        med = outplanes // 4
        self.conv1 = nn.Conv2d(inplanes, med, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(med, eps=1e-6)
        self.conv2 = nn.Conv2d(med, med, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(med, eps=1e-6)
        self.conv3 = nn.Conv2d(med, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes, eps=1e-6)
        self.act = nn.ReLU(inplace=True)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
            self.residual_bn = nn.BatchNorm2d(outplanes, eps=1e-6)

    def forward(self, x: Tensor, x_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        residual = x
        x = self.act(self.bn1(self.conv1(x)))
        x2 = self.act(self.bn2(self.conv2(x if x_t is None else x + x_t)))
        x = self.bn3(self.conv3(x2))
        if self.res_conv:
            residual = self.residual_bn(self.residual_conv(residual))
        return self.act(x + residual), x2


class FCUDown(nn.Module):
    """CNN map -> tokens: 1x1 conv, average pooling to the token grid, LayerNorm, GELU; class token kept."""

    def __init__(self, inplanes: int, outplanes: int, dw_stride: int) -> None:
        super().__init__()
        self.conv_project = nn.Conv2d(inplanes, outplanes, 1)
        self.sample_pooling = nn.AvgPool2d(dw_stride, dw_stride)
        self.ln = _LN(outplanes)
        self.act = nn.GELU()

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        x = self.sample_pooling(self.conv_project(x)).flatten(2).transpose(1, 2)
        return torch.cat([x_t[:, :1], self.act(self.ln(x))], dim=1)


class FCUUp(nn.Module):
    """Tokens -> CNN map: 1x1 conv, BN, ReLU, nearest up-sampling by ``up_stride``."""

    def __init__(self, inplanes: int, outplanes: int, up_stride: int) -> None:
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(inplanes, outplanes, 1)
        self.bn = nn.BatchNorm2d(outplanes, eps=1e-6)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        x = x[:, 1:].transpose(1, 2).reshape(b, c, h, w)
        x = self.act(self.bn(self.conv_project(x)))
        return F.interpolate(x, size=(h * self.up_stride, w * self.up_stride))


class ConvTransBlock(nn.Module):
    """One coupled stage: bottleneck, FCU-down, transformer block, FCU-up, fusion bottleneck."""

    def __init__(
        self,
        inplanes: int,
        outplanes: int,
        res_conv: bool,
        stride: int,
        dw_stride: int,
        embed_dim: int,
        num_heads: int,
        drop_path: float,
        last_fusion: bool = False,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.cnn_block = ConvBlock(inplanes, outplanes, stride=stride, res_conv=res_conv)
        self.fusion_block = ConvBlock(
            outplanes, outplanes, stride=2 if last_fusion else 1, res_conv=last_fusion
        )
        self.squeeze_block = FCUDown(outplanes // 4, embed_dim, dw_stride)
        self.expand_block = FCUUp(embed_dim, outplanes // 4, dw_stride)
        self.trans_block = Block(
            embed_dim, num_heads, qkv_bias=True, proj_drop=drop, drop_path=drop_path, norm_layer=_LN
        )
        self.dw_stride = dw_stride

    def forward(self, x: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        x, x2 = self.cnn_block(x)
        h, w = x2.shape[-2:]
        x_t = self.trans_block(self.squeeze_block(x2, x_t) + x_t)
        x_t_r = self.expand_block(x_t, h // self.dw_stride, w // self.dw_stride)
        x, _ = self.fusion_block(x, x_t_r)
        return x, x_t


class Conformer(BaselineContract, nn.Module):
    """Conformer: coupled CNN and transformer branches, two classifiers whose logits are summed.

    Args:
        num_classes: classifier outputs (0: no classifiers).
        in_chans: input channels.
        channel_ratio: CNN width multiplier (Conformer-B: 6 -> 384 / 768 / 1,536 channels).
        embed_dim, depth, num_heads: the transformer branch (Conformer-B: 576, 12, 9).
        drop_rate: dropout in the transformer blocks.
        drop_path_rate: stochastic depth of the transformer blocks, linear over depth.
    """

    pool_kinds = ("avg",)  # both branches pooled (the two heads of Conformer)

    no_weight_decay_names = ("cls_token",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        channel_ratio: int = 6,
        embed_dim: int = 576,
        depth: int = 12,
        num_heads: int = 9,
        patch_size: int = 16,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if depth != 12:
            raise ValueError("Conformer's stage layout (2-4, 5-8, 9-12) needs depth 12")
        self.num_classes = num_classes
        self.global_pool = global_pool
        c1, c2, c3 = 64 * channel_ratio, 128 * channel_ratio, 256 * channel_ratio
        self.conv_dim, self.embed_dim = c3, embed_dim
        self.num_features = self.head_hidden_size = c3 + embed_dim
        self.grad_checkpointing = False
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        dw = patch_size // 4
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv_1 = ConvBlock(64, c1, res_conv=True)
        self.trans_patch_conv = nn.Conv2d(64, embed_dim, dw, stride=dw)
        self.trans_1 = Block(
            embed_dim, num_heads, qkv_bias=True, proj_drop=drop_rate, drop_path=dpr[0], norm_layer=_LN
        )
        stages = []
        for i in range(2, depth + 1):
            if i <= 4:
                inp, out, stride, dws = c1, c1, 1, dw
            elif i <= 8:
                inp, out, stride, dws = (c1 if i == 5 else c2), c2, (2 if i == 5 else 1), dw // 2
            else:
                inp, out, stride, dws = (c2 if i == 9 else c3), c3, (2 if i == 9 else 1), dw // 4
            stages.append(
                ConvTransBlock(
                    inp,
                    out,
                    res_conv=i in (5, 9),
                    stride=stride,
                    dw_stride=dws,
                    embed_dim=embed_dim,
                    num_heads=num_heads,
                    drop_path=dpr[i - 1],
                    last_fusion=i == depth,
                    drop=drop_rate,
                )
            )
        self.conv_trans = nn.ModuleList(stages)
        self.trans_norm = _LN(embed_dim)
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.conv_cls_head: nn.Module = nn.Identity()
        self.trans_cls_head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return nn.ModuleList([self.conv_cls_head, self.trans_cls_head])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.conv_cls_head = nn.Linear(self.conv_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.trans_cls_head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x_base = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x, _ = self.conv_1(x_base)
        x_t = self.trans_patch_conv(x_base).flatten(2).transpose(1, 2)
        x_t = self.trans_1(torch.cat([self.cls_token.expand(b, -1, -1), x_t], dim=1))
        for stage in self.conv_trans:
            x, x_t = self.checkpointed(stage, x, x_t)
        cls = self.trans_norm(x_t[:, 0])
        return torch.cat([x, cls[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        conv = self.pooling(x[:, : self.conv_dim]).flatten(1)
        cls = x[:, self.conv_dim :, 0, 0]
        if pre_logits or self.num_classes == 0:
            return torch.cat([conv, cls], dim=1)
        return self.conv_cls_head(conv) + self.trans_cls_head(cls)


default_cfgs = generate_default_cfgs(
    {"conformer_base_patch16": baseline_cfg("conv1", classifier=("conv_cls_head", "trans_cls_head"))}
)


@register_model
def conformer_base_patch16(pretrained: bool = False, **kwargs: Any) -> Conformer:
    """Conformer-B (81.226 M parameters at 24 classes, MSF-CA Table VIII)."""
    return create(
        Conformer,
        "conformer_base_patch16",
        pretrained,
        features="its CNN and transformer branches are coupled at every stage; there is no single pyramid",
        **kwargs,
    )
