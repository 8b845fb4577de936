"""FFT: multi-scale feature fusion transformer, and the two ResNet-18 hybrids of its Table III.

Paper: Zhefeng Zhu, Ke Qi, Wenbin Chen, Yicong Zhou, Peiyue Li, Zhenxian Liu, "Image Recognition based
on Multi-scale Feature Fusion Transformer" (Sec. III, Eq. 1-21, Tables II-V, Fig. 7).

Pipeline (Fig. 1): a ResNet-18 without pooling and fc gives four maps; the last three (128x32x32,
256x16x16, 512x8x8 at a 256x256 input, scaling with the input) each pass a residual attention module
(RAM, Eq. 1-2, :mod:`backbones.layers.residual_attention`), are cut into patches and projected to
embeddings (Eq. 3-4, 7-8, 12-13; a ``p x p`` conv with stride p, i.e. "pixel expansion and projection"),
get learnable position encodings (Eq. 19-21) and a zero-initialised class token on the Outer stream
(Eq. 14), and go through L stacked FFT blocks (Eq. 18, :mod:`backbones.layers.fft_block`). The class
token, after a final LayerNorm, feeds the linear classifier.

Registered models (``timm.create_model(name)``):

=================== ===================================================================================
``fft_tiny``         Table II Tiny: 3 blocks, patch dim 256, MLP 512, 12 heads (paper 43 M parameters)
``fft_base``         Table II Base: 6 blocks, patch dim 512, MLP 1024, 16 heads (paper 266 M)
``fft_large``        Table II Large: 12 blocks, patch dim 512, MLP 1024, 18 heads (paper 566 M)
``fft_base_no_ram``  Table V "Ours without ram" (``use_ram=False``)
``fft_base_no_pos``  Table V "Ours without position" (``use_pos_embed=False``)
``resnet18_vit``     Table III "Resnet18 vit": ResNet-18's last map (patch 1) into a plain ViT encoder
                     (one stream, no RAM, FFT-Base's encoder sizes; the paper gives none)
``resnet18_linear``  Table III "Resnet18 linear": ResNet-18, global average pooling, linear classifier
=================== ===================================================================================

Choices the paper leaves open (see also :mod:`backbones.layers.fft_block`):

* Patch sizes: not given. Default ``(4, 2, 1)`` on the (32, 16, 8) maps, so all three streams share one
  8x8 token grid at 256x256 (64 tokens each, token i of every stream covers the same 32x32 pixels). At
  32x32 (CIFAR's native size) this is a single token per stream, so CIFAR runs at 256 as in Sec. III.B
  (our reading), or with ``patch_sizes=(1, 1, 1)`` at 32.
* Eq. 9/15's unfold: a ``K x K`` block, ``K = 8`` (the only kernel matching Table II, below).
* Heads of width 64 (``head_dim``), so heads count in the parameter budget as in Table II.
* RAM reduction 16 and 7x7 spatial kernel (CBAM's defaults); dropout rates (the paper says "Dropout"
  only): ``drop_rate`` before the classifier and ``proj_drop_rate`` in the MLP / projections.
* Position encodings: learnable, trunc-normal(0.02), resampled (bicubic) when the input size differs from
  ``img_size``; the class token is zero-initialised as the paper says.

Parameter counts at 256x256 with a 1000-class head (Table II vs ours, checked by ``tests/test_fft.py``):
Tiny 43 M vs 47.1 M (+9.5%), Base 266 M vs 271.7 M (+2.1%), Large 566 M vs 539.2 M (-4.7%). The bulk is
in the fusion maps of Eq. 9/15 (2 per block, ``64 * c * c'`` each: 201 M of Base's 272 M), then the
transformer layers (57 M for Base) and ResNet-18 (11.2 M). Table II's three rows are not consistent with
any single rule: with everything else fixed, Base implies ~63 flattened tokens per fusion, Tiny ~57 and
Large ~69 (Large is Base with twice the blocks and 18 instead of 16 heads, yet has 2.13x its parameters).
K = 8 (64 tokens) is the only block size that keeps all three within 10%; with ``head_dim = dim / heads``
(timm's ViT rule) instead of 64, Large would fall 13% short. The remaining gap is that inconsistency, not
a missing part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from backbones import _factory
from backbones.errors import ModelConfigError
from backbones.layers.fft_block import FFTBlock, grid_of
from backbones.layers.residual_attention import ResidualAttention

__all__ = ["FFT"]

_STAGE_CHANNELS = (128, 256, 512)  # ResNet-18 layer2, layer3, layer4
_STAGE_STRIDES = (8, 16, 32)


class FFT(nn.Module):
    """Multi-scale feature fusion transformer on a ResNet-18 trunk (one class for every Table III/V row).

    Args:
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        img_size: input size the position encodings are built for (other sizes resample them).
        in_chans: input channels.
        embed_dim: "patch dim" of Table II (the width c = c' = c'' of every stream).
        depth: number L of stacked FFT blocks. ``0`` gives the "ResNet18 linear" model (ResNet-18, optional
            RAM on its last map, global average pooling, linear classifier).
        num_heads: attention heads.
        head_dim: width of each head (64 as in vit-pytorch; q/k/v width is ``num_heads * head_dim``).
        mlp_dim: "mlp dim" of Table II.
        num_streams: how many of ResNet-18's last three maps feed streams: 3 = Inner/Middle/Outer (FFT),
            1 = the last map only (plain ViT encoder, "ResNet18 vit").
        patch_sizes: patch side per used map, fine to coarse; default ``(4, 2, 1)[-num_streams:]``.
        fusion_kernel: K of Eq. 9/15's unfold.
        fusion_norm: LayerNorm on the finer tokens before the fusion projection.
        fusion_padding: border of the fusion's unfold: ``"zeros"`` (the paper's ``nn.Unfold``) or
            ``"circular"`` (ours: no implicit position from the fusion; :mod:`backbones.layers.fft_block`).
        use_ram: RAM on every used map (Table V "without ram": ``False``).
        use_pos_embed: position encodings Eq. 19-21 (Table V "without position": ``False``).
        ram_reduction: RAM channel-MLP reduction.
        ram_kernel_size: RAM spatial-gate kernel.
        global_pool: ``"token"`` (class token, the paper), ``"avg"`` (mean of the Outer patch tokens) or
            ``""`` (no pooling: ``forward`` returns the tokens / the map; only with ``num_classes=0``).
        drop_rate: dropout before the classifier.
        pos_drop_rate: dropout after adding the position encodings.
        proj_drop_rate: dropout after attention projections and in the MLPs.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
    """

    pretrained_trunk_prefix = "trunk."

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 256,
        in_chans: int = 3,
        embed_dim: int = 512,
        depth: int = 6,
        num_heads: int = 16,
        head_dim: int = 64,
        mlp_dim: int = 1024,
        num_streams: Literal[1, 2, 3] = 3,
        patch_sizes: Sequence[int] | None = None,
        fusion_kernel: int = 8,
        fusion_norm: bool = True,
        fusion_padding: Literal["zeros", "circular"] = "zeros",
        use_ram: bool = True,
        use_pos_embed: bool = True,
        ram_reduction: int = 16,
        ram_kernel_size: int = 7,
        global_pool: Literal["token", "avg", ""] = "token",
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        if num_streams not in (1, 2, 3):
            raise ModelConfigError(
                f"FFT num_streams must be 1, 2 or 3 (ResNet-18's last maps), got {num_streams}"
            )
        if fusion_padding not in ("zeros", "circular"):
            raise ModelConfigError(
                f"FFT fusion_padding must be 'zeros' or 'circular', got {fusion_padding!r}"
            )
        _factory.check_global_pool("FFT", global_pool, num_classes, ("token", "avg", ""))
        patch_sizes = tuple(patch_sizes) if patch_sizes is not None else (4, 2, 1)[-num_streams:]
        if len(patch_sizes) != num_streams:
            raise ModelConfigError(
                f"FFT patch_sizes needs one entry per stream ({num_streams}), got {patch_sizes}"
            )
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.depth = depth
        self.num_streams = num_streams if depth > 0 else 1
        self.patch_sizes = patch_sizes
        self.use_ram = use_ram
        self.use_pos_embed = use_pos_embed

        # torchvision/timm resnet18 key names under "trunk." (fc removed), so local weights load
        self.trunk = timm.create_model(
            "resnet18", pretrained=False, num_classes=0, global_pool="", in_chans=in_chans
        )
        stage_channels = _STAGE_CHANNELS[-self.num_streams :]
        self.ram = nn.ModuleList(
            ResidualAttention(c, ram_reduction, ram_kernel_size) if use_ram else nn.Identity()
            for c in stage_channels
        )
        self.head_drop = nn.Dropout(drop_rate)
        if depth == 0:  # "ResNet18 linear": pooled last map -> classifier
            self.embed_dim = self.num_features = self.head_hidden_size = stage_channels[-1]
            self.patch_embeds = nn.ModuleList()
            self.pos_embeds = nn.ParameterList()
            self.blocks = nn.ModuleList()
            self.cls_token = None
            self.norm = nn.Identity()
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
            return

        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.patch_embeds = nn.ModuleList(
            nn.Conv2d(c, embed_dim, p, stride=p) for c, p in zip(stage_channels, patch_sizes)
        )
        strides = _STAGE_STRIDES[-self.num_streams :]
        self.base_grids = [
            grid_of((-(-self.img_size[0] // s), -(-self.img_size[1] // s)), p)
            for s, p in zip(strides, patch_sizes)
        ]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))  # Eq. 14: "initialized with zero"
        self.pos_embeds = nn.ParameterList()
        if use_pos_embed:  # Eq. 19-21: n x c, m x c', (k + 1) x c''
            for i, (gh, gw) in enumerate(self.base_grids):
                prefix = 1 if i == self.num_streams - 1 else 0
                pos = nn.Parameter(torch.zeros(1, gh * gw + prefix, embed_dim))
                trunc_normal_(pos, std=0.02)
                self.pos_embeds.append(pos)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path_rate]
        dims = [embed_dim] * self.num_streams
        self.blocks = nn.ModuleList(
            FFTBlock(
                dims,
                num_heads,
                head_dim,
                mlp_dim,
                fusion_kernel,
                fusion_norm,
                attn_drop_rate,
                proj_drop_rate,
                rates[i],
                fusion_padding,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_transformer_weights()

    def _init_transformer_weights(self) -> None:
        # ViT-style init for the transformer part; the ResNet trunk and RAM keep timm's init
        for module in [*self.patch_embeds, *self.blocks, self.head]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for embed in self.patch_embeds:
            trunc_normal_(embed.weight, std=0.02)
            nn.init.zeros_(embed.bias)

    # ------------------------------------------------------------------ timm contract
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (class token, position encodings)."""
        names = {"cls_token"} if self.cls_token is not None else set()
        return names | {f"pos_embeds.{i}" for i in range(len(self.pos_embeds))}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each FFT block in the backward pass (and the trunk's residual blocks)."""
        self.grad_checkpointing = enable
        self.trunk.set_grad_checkpointing(enable)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (``num_classes=0`` removes it); optionally change the pooling."""
        self.num_classes = num_classes
        if global_pool is not None:
            _factory.check_global_pool("FFT", global_pool, num_classes, ("token", "avg", ""))
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ------------------------------------------------------------------ forward
    def extract_maps(self, x: Tensor) -> list[Tensor]:
        """ResNet-18 maps of the used stages (fine to coarse), each after its RAM (Sec. III.B)."""
        t = self.trunk
        x = t.maxpool(t.act1(t.bn1(t.conv1(x))))
        maps = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(t, name)(x)
            if name != "layer1":
                maps.append(x)
        return [ram(m) for ram, m in zip(self.ram, maps[-self.num_streams :])]

    def _embed(self, maps: list[Tensor]) -> tuple[list[Tensor], list[tuple[int, int]]]:
        tokens, grids = [], []
        for i, (fmap, embed, p) in enumerate(zip(maps, self.patch_embeds, self.patch_sizes)):
            h, w = fmap.shape[-2:]
            if h % p or w % p:  # zero-pad the map to whole patches
                fmap = F.pad(fmap, (0, -w % p, 0, -h % p))
            x = embed(fmap)
            grid = (x.shape[2], x.shape[3])
            x = x.flatten(2).transpose(1, 2)
            last = i == self.num_streams - 1
            if last:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            if self.use_pos_embed:
                pos = self.pos_embeds[i]
                if grid != self.base_grids[i]:
                    pos = resample_abs_pos_embed(
                        pos, list(grid), list(self.base_grids[i]), num_prefix_tokens=int(last)
                    )
                x = x + pos.to(x.dtype)
            tokens.append(self.pos_drop(x))
            grids.append(grid)
        return tokens, grids

    def _forward_tokens(self, x: Tensor, return_attn: bool = False) -> tuple[Tensor, list[Tensor]]:
        tokens, grids = self._embed(self.extract_maps(x))
        attns = []
        for block in self.blocks:
            if self.grad_checkpointing and self.training and not return_attn and torch.is_grad_enabled():
                tokens, attn = checkpoint(block, tokens, grids, use_reentrant=False)
            else:
                tokens, attn = block(tokens, grids, return_attn=return_attn)
            if attn is not None:
                attns.append(attn)
        self._last_grid = grids[-1]
        return self.norm(tokens[-1]), attns

    def forward_features(self, x: Tensor) -> Tensor:
        """Outer-stream tokens ``(B, 1 + k, C)`` after the final norm; the last map for ``depth=0``."""
        if self.depth == 0:
            return self.extract_maps(x)[-1]
        return self._forward_tokens(x)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool (class token, or mean of patch tokens / of the map), dropout, classifier."""
        if not self.global_pool:  # "": no pooling and no classifier (timm's convention)
            return x
        if x.ndim == 4:
            x = x.mean(dim=(2, 3))
        else:
            x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def outer_attention_maps(self, x: Tensor, query: int | None = None) -> Tensor:
        """Fig. 7: the Outer stream's attention from one query token to every patch token, per block.

        Args:
            x: images ``(B, 3, H, W)``.
            query: index (row-major) of the query patch on the Outer token grid; ``None`` = class token.

        Returns:
            ``(B, L, gh, gw)``: for each block, the softmax attention of the query (mean over heads) on the
            Outer patch tokens, on the Outer token grid (not renormalised after dropping the class token).
        """
        if self.depth == 0:
            raise ModelConfigError(
                "outer_attention_maps needs a transformer (depth > 0); resnet18_linear has none"
            )
        _, attns = self._forward_tokens(x, return_attn=True)
        gh, gw = self._last_grid
        row = 0 if query is None else query + 1
        if not 0 <= row < gh * gw + 1:
            raise ModelConfigError(f"query patch {query} is outside the {gh}x{gw} Outer token grid")
        maps = [a[:, :, row, 1:].mean(dim=1).reshape(-1, gh, gw) for a in attns]
        return torch.stack(maps, dim=1)


# ---------------------------------------------------------------------- registered variants
def _create(variant: str, pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> FFT:
    return _factory.build(
        FFT,
        variant,
        pretrained,
        no_weights="FFT models have no hub weights (no public code or checkpoints for the paper). Use "
        "`pretrained: /path/to/resnet18.pth` in the task to load a local ResNet-18 state dict "
        "into the trunk.",
        features="FFT fuses the three last ResNet-18 maps into one token sequence; there is no per-stage "
        "pyramid of its own (use forward_features for the (B, 1 + N, D) tokens).",
        **{**defaults, **kwargs},
    )


_TINY = dict(depth=3, embed_dim=256, mlp_dim=512, num_heads=12)
_BASE = dict(depth=6, embed_dim=512, mlp_dim=1024, num_heads=16)
_LARGE = dict(depth=12, embed_dim=512, mlp_dim=1024, num_heads=18)


#: timm pretrained-config entries: 256 input (Sec. IV-A), no hub weights.
default_cfgs = generate_default_cfgs(
    {
        name: _factory.cfg(
            input_size=(3, 256, 256), pool_size=None, first_conv="trunk.conv1", classifier="head"
        )
        for name in [
            "fft_tiny",
            "fft_base",
            "fft_large",
            "fft_base_no_ram",
            "fft_base_no_pos",
            "resnet18_vit",
        ]
    }
    | {
        "resnet18_linear": _factory.cfg(
            input_size=(3, 256, 256), pool_size=(8, 8), first_conv="trunk.conv1", classifier="head"
        )
    }  # fmt: skip
)


@register_model
def fft_tiny(pretrained: bool = False, **kwargs: Any) -> FFT:
    """FFT-Tiny (Table II): 3 FFT blocks, patch dim 256, MLP dim 512, 12 heads. Paper: 43 M parameters."""
    return _create("fft_tiny", pretrained, _TINY, kwargs)


@register_model
def fft_base(pretrained: bool = False, **kwargs: Any) -> FFT:
    """FFT-Base (Table II): 6 blocks, patch dim 512, MLP dim 1024, 16 heads. Paper: 266 M parameters."""
    return _create("fft_base", pretrained, _BASE, kwargs)


@register_model
def fft_large(pretrained: bool = False, **kwargs: Any) -> FFT:
    """FFT-Large (Table II "Lager"): 12 blocks, patch dim 512, MLP dim 1024, 18 heads. Paper: 566 M."""
    return _create("fft_large", pretrained, _LARGE, kwargs)


@register_model
def fft_base_no_ram(pretrained: bool = False, **kwargs: Any) -> FFT:
    """Table V "Ours without ram": FFT-Base without the residual attention modules."""
    return _create("fft_base_no_ram", pretrained, {**_BASE, "use_ram": False}, kwargs)


@register_model
def fft_base_no_pos(pretrained: bool = False, **kwargs: Any) -> FFT:
    """Table V "Ours without position": FFT-Base without the position encodings of Eq. 19-21."""
    return _create("fft_base_no_pos", pretrained, {**_BASE, "use_pos_embed": False}, kwargs)


@register_model
def resnet18_vit(pretrained: bool = False, **kwargs: Any) -> FFT:
    """Table III "Resnet18 vit": ResNet-18's last map (patch 1, 64 tokens at 256) into a ViT encoder.

    Encoder sizes are FFT-Base's (6 layers, width 512, MLP 1024, 16 heads of 64); the paper gives none.
    No RAM, one stream, so no fusion.
    """
    return _create("resnet18_vit", pretrained, {**_BASE, "num_streams": 1, "use_ram": False}, kwargs)


@register_model
def resnet18_linear(pretrained: bool = False, **kwargs: Any) -> FFT:
    """Table III "Resnet18 linear": ResNet-18 (no RAM), global average pooling, one linear layer."""
    return _create("resnet18_linear", pretrained, {"depth": 0, "num_streams": 1, "use_ram": False}, kwargs)
