"""CvT (Wu et al. 2021, "CvT: Introducing Convolutions to Vision Transformers"), the FFT paper's Tables III
and IV comparison row "CvT [1]".

Variant: CvT-13 (the CvT paper's Table 2: 20.0 M parameters, 4.5 GFLOPs at 224 for 1,000 classes; the FFT
paper does not name the size, CvT-13 is ours). Three stages, each a *convolutional token embedding*
(an overlapping strided conv + LayerNorm: 7x7/4, 3x3/2, 3x3/2 to 64, 192, 384 channels) followed by
1, 2 and 10 transformer blocks whose *convolutional projection* makes q, k and v by a depth-wise 3x3
conv + BN on the token map (stride 1 for q, 2 for k and v) and a linear layer. No position embedding;
a class token joins only in the last stage, and the classifier reads it after a LayerNorm.

As in the CvT reference code, attention logits are scaled by ``dim ** -0.5`` with ``dim`` the stage width
(not the head width); the class token bypasses the convolutional projection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, calculate_drop_path_rates, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from backbones.baselines._contract import BaselineContract, baseline_cfg, create


class ConvEmbed(nn.Module):
    """Convolutional token embedding: strided overlapping conv, then LayerNorm over channels (tokens)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvProjection(nn.Module):
    """Depth-wise ``k x k`` conv + BN of the token map, flattened back to tokens."""

    def __init__(self, dim: int, stride: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim, bias=False
        )
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)


class ConvAttention(nn.Module):
    """Multi-head attention over convolutionally projected q (stride 1) and k, v (stride ``stride_kv``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        stride_kv: int = 2,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        cls_token: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim**-0.5  # the CvT reference scales by the stage width
        self.cls_token = cls_token
        self.conv_proj_q = ConvProjection(dim, 1)
        self.conv_proj_k = ConvProjection(dim, stride_kv)
        self.conv_proj_v = ConvProjection(dim, stride_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        if self.cls_token:
            cls, x = x[:, :1], x[:, 1:]
        grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)
        q, k, v = self.conv_proj_q(grid), self.conv_proj_k(grid), self.conv_proj_v(grid)
        if self.cls_token:
            q, k, v = (torch.cat([cls, t], dim=1) for t in (q, k, v))
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))


class CvTBlock(nn.Module):
    """Pre-norm transformer block with :class:`ConvAttention` and an MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        cls_token: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ConvAttention(
            dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=drop, cls_token=cls_token
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvTStage(nn.Module):
    """Convolutional token embedding, then ``depth`` blocks (with a class token in the last stage)."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        stride: int,
        padding: int,
        cls_token: bool,
        drop_path: list[float],
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_embed = ConvEmbed(in_chans, dim, patch_size, stride, padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.blocks = nn.ModuleList(
            CvTBlock(dim, num_heads, drop=drop, drop_path=drop_path[i], cls_token=cls_token)
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = self.patch_embed(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens, h, w)
        cls = None
        if self.cls_token is not None:
            cls, tokens = tokens[:, 0], tokens[:, 1:]
        return tokens.transpose(1, 2).reshape(b, c, h, w), cls


class CvT(BaselineContract, nn.Module):
    """Convolutional vision transformer (three :class:`CvTStage`), classified from the last class token.

    ``forward_features`` returns the normalised class token ``(B, C)``, as the reference's features.

    Args:
        num_classes: classifier outputs (0: no classifier).
        in_chans: input channels.
        dims, depths, heads: per-stage width, blocks and attention heads.
        drop_rate: dropout in the blocks and before the classifier.
        drop_path_rate: stochastic depth of the last stage (the reference's 0.1), linear over its blocks.
    """

    pool_kinds = ("token",)  # the class token of the last stage (CvT's head)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        dims: tuple[int, ...] = (64, 192, 384),
        depths: tuple[int, ...] = (1, 2, 10),
        heads: tuple[int, ...] = (1, 3, 6),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        self.no_weight_decay_names = (f"stages.{len(dims) - 1}.cls_token",)
        patches = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
        self.stages = nn.ModuleList()
        chans = in_chans
        for i, (dim, depth, nh) in enumerate(zip(dims, depths, heads, strict=True)):
            last = i == len(dims) - 1
            rates = calculate_drop_path_rates(drop_path_rate, depth) if last else [0.0] * depth
            self.stages.append(CvTStage(chans, dim, depth, nh, *patches[i], cls_token=last, drop_path=rates))
            chans = dim
        self.feature_info = [
            {"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"} for i in range(len(dims))
        ]
        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        for stage in self.stages:
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        cls = None
        for stage in self.stages:
            x, cls = self.checkpointed(stage, x)
        return self.norm(cls)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's intermediate-feature API: each selected stage's token map (NCHW)."""
        if output_fmt != "NCHW":
            raise ValueError("CvT intermediates are NCHW only")
        take, max_index = feature_take_indices(len(self.stages), indices)
        intermediates, cls = [], None
        for i, stage in enumerate(self.stages):
            if stop_early and i > max_index:
                break
            x, cls = self.checkpointed(stage, x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return (self.norm(cls) if cls is not None else x), intermediates

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


default_cfgs = generate_default_cfgs(
    {
        "cvt_13": baseline_cfg("stages.0.patch_embed.proj", pool_size=(1, 1)),
    }
)


@register_model
def cvt_13(pretrained: bool = False, **kwargs: Any) -> CvT:
    """CvT-13 (20.0 M parameters / 4.5 GFLOPs at 224 for 1,000 classes; FFT Tables III and IV)."""
    return create(
        CvT,
        "cvt_13",
        pretrained,
        feature_cfg={"feature_cls": "getter", "out_indices": (0, 1, 2)},
        **kwargs,
    )
