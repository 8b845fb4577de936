"""TokenFusion: "Improved Image Classification with Token Fusion" (Choi, Kim, Wang, Ha).

ViT patch tokens (Eq. 1) and ResNet-101 feature-map tokens (each pixel of a stage map is a token) are
fused in three ways, each with 12 pre-norm transformer blocks (Eq. 2-3, timm's ViT ``Block``, which
uses ``F.scaled_dot_product_attention``) and one of three pooling heads (Fig. 5):

* ``method="late"`` (Method 1, Fig. 2): a ViT encoder on the patch tokens and a transformer encoder on
  the ResNet-101 map tokens run in parallel (6 + 6 blocks); the late fusion block up-samples the
  coarser token map (UpConv or copy) and merges by concatenation or addition (Fig. 6 variants).
* ``method="early"`` (Method 2, Fig. 3): bridge blocks (UpConv or copy, then 1x1 conv) bring the five
  ResNet-101 stage maps to the input resolution with 3 channels each; concatenated with the image they
  form the H x W x 18 unified map, which a ViT (12 blocks) processes (Fig. 7: copy instead of UpConv,
  or a single bridge from the last stage).
* ``method="layer"`` (Method 3, Fig. 4): five mixing blocks aligned with the five ResNet-101 stages
  (conv1, layer1-4); each runs transformer blocks (2) on the patch tokens, turns the stage map into
  tokens on the patch grid and integrates the concatenation; then two transformer blocks (5 x 2 + 2 =
  12). Fig. 8 adds a class token that is kept out of the mixing (``class_token=True``).

Heads (``head=``): ``token`` (token-wise pooling, Fig. 5a), ``channel`` (channel-wise pooling,
Fig. 5b), ``mixing`` (both, Fig. 5c); see :class:`backbones.layers.token_fusion_blocks.PoolingHead`.

Choices the paper leaves open (all constructor arguments; see docs/tokenfusion.md):

* Transformer size: ViT-B/16 (D = 768, 12 heads, MLP ratio 4, qkv bias, patch 16). With it the
  layer-by-layer model with the channel-wise head has 138.0 M parameters against the paper's 140 M
  (-1.4 %); the paper gives no width, and ViT-B is the ViT it compares with (Table 2).
* ResNet-101 is timm's ``ResNet(Bottleneck, [3, 4, 23, 3])`` under ``trunk.`` with timm/torchvision key
  names, so a plain ``resnet101`` state dict loads (``pretrained_trunk_prefix``); its ``fc`` is dropped.
  The five stages are conv1 (after BN + ReLU, stride 2, before the max-pool), layer1 ... layer4
  (strides 4, 8, 16, 32), as in He et al.'s conv1 ... conv5_x.
* Late fusion: the CNN encoder reads the last stage (``late_stage=4``, 7 x 7 x 2048 at 224), embedded
  per pixel by a linear layer + position embedding (Eq. 1 with P = 1). The coarser of the two token
  maps is up-sampled (see ``LateFusion``); concatenation is along channels. 6 + 6 blocks.
* Early fusion: 3 channels per bridge (18 = 3 + 5 x 3), UpConv width 3, BN + ReLU after the UpConv;
  the "single" variant uses one bridge from the last stage (a 6-channel unified map).
* Layer-by-layer: stage maps are coupled to the patch grid as in Conformer (1x1 conv, average pooling
  or copy, LayerNorm, GELU); integration by ``t + Linear([LN(t), c])``.
* No final LayerNorm on the token stream; each head normalises after pooling (timm ``fc_norm``). With the
  token-wise head this makes the MLP output bias of a stream's last block (``blocks.11.mlp.fc2.bias``,
  ``cnn_blocks.5.mlp.fc2.bias``, ...) zero-gradient by construction: it adds one constant to every
  token's channel mean, which the LayerNorm over tokens removes. It stays (a timm ``Block`` parameter,
  used by the other heads); tests/test_tokenfusion.py names these biases.
* Inputs of any size divisible by 32 run (position embeddings are resampled; the token-wise head
  resamples its per-token vector to the built grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet
from timm.models.vision_transformer import Block
from torch import nn

from backbones import _factory
from backbones.errors import ModelConfigError
from backbones.layers.token_fusion_blocks import (
    BridgeBlock,
    FeatureMapTokens,
    HeadType,
    LateFusion,
    Merge,
    MixingFusion,
    PatchTokens,
    PoolingHead,
    Upsample,
    map_to_tokens,
    tokens_to_map,
)

__all__ = ["TokenFusion"]

Method = Literal["late", "early", "layer"]
BridgeStages = Literal["multi", "single"]

#: Strides of the five ResNet stages (conv1, layer1, layer2, layer3, layer4).
STAGE_STRIDES = (2, 4, 8, 16, 32)


def _linspace(end: float, steps: int) -> list[float]:
    """Stochastic-depth rates 0 ... end (pure Python, so models can be built on the meta device)."""
    return [end * i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0] * steps


def _block_stack(depth: int, dpr: Sequence[float], **block_kwargs: Any) -> nn.Sequential:
    return nn.Sequential(*[Block(drop_path=dpr[i], **block_kwargs) for i in range(depth)])


class TokenFusion(nn.Module):
    """The TokenFusion family: late, early and layer-by-layer fusion of ViT and ResNet-101 tokens.

    Args:
        method: ``"late"`` (Fig. 2), ``"early"`` (Fig. 3) or ``"layer"`` (Fig. 4).
        head: ``"token"``, ``"channel"`` or ``"mixing"`` pooling head (Fig. 5).
        num_classes: classifier outputs.
        img_size: input size position embeddings and the token-wise head are built for.
        in_chans: input image channels.
        patch_size: ViT patch side P (Eq. 1).
        embed_dim: token width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias in the qkv projection.
        resnet_layers: bottlenecks per ResNet stage ((3, 4, 23, 3) = ResNet-101).
        resnet_channels: ResNet stage planes ((64, 128, 256, 512) = ResNet-101; outputs are 4x).
        late_stage: ResNet stage (1-4) whose map feeds the late-fusion CNN encoder.
        late_vit_depth: blocks of the late-fusion ViT encoder.
        late_cnn_depth: blocks of the late-fusion CNN-token encoder.
        late_upsample: ``"upconv"`` or ``"copy"`` in the late fusion block (Fig. 2b, 6).
        late_merge: ``"concat"`` or ``"add"`` in the late fusion block.
        early_depth: blocks of the early-fusion ViT.
        bridge_upsample: ``"upconv"`` or ``"copy"`` in the bridge blocks (Fig. 3b, 7).
        bridge_stages: ``"multi"`` (a bridge per stage) or ``"single"`` (last stage only).
        bridge_channels: channels each bridge adds to the unified map.
        mixing_depths: transformer blocks in each of the five mixing blocks.
        final_depth: transformer blocks after the mixing blocks.
        class_token: add a class token kept out of the mixing (Fig. 8; ``method="layer"`` only).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear over each stream's blocks.
        attn_drop_rate: attention dropout.
        proj_drop_rate: dropout after the attention and MLP projections.
    """

    #: Plain ``resnet101`` state dict keys load under this prefix (see backbones.pretrained).
    pretrained_trunk_prefix = "trunk."

    def __init__(
        self,
        method: Method = "layer",
        head: HeadType = "channel",
        num_classes: int = 1000,
        img_size: int = 224,
        in_chans: int = 3,
        patch_size: int = 16,
        embed_dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        resnet_layers: Sequence[int] = (3, 4, 23, 3),
        resnet_channels: Sequence[int] = (64, 128, 256, 512),
        late_stage: int = 4,
        late_vit_depth: int = 6,
        late_cnn_depth: int = 6,
        late_upsample: Upsample = "upconv",
        late_merge: Merge = "concat",
        early_depth: int = 12,
        bridge_upsample: Upsample = "upconv",
        bridge_stages: BridgeStages = "multi",
        bridge_channels: int = 3,
        mixing_depths: Sequence[int] = (2, 2, 2, 2, 2),
        final_depth: int = 2,
        class_token: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if method not in ("late", "early", "layer"):
            raise ModelConfigError(f"TokenFusion method must be 'late', 'early' or 'layer', got {method!r}")
        if class_token and method != "layer":
            raise ModelConfigError(
                "class_token=True is the layer-by-layer variant of Fig. 8; use method='layer'"
            )
        if img_size % 32 or img_size % patch_size:
            raise ModelConfigError(
                f"img_size must be divisible by 32 and by patch_size={patch_size}, got {img_size}"
            )
        if len(resnet_layers) != 4 or len(resnet_channels) != 4:
            raise ModelConfigError("resnet_layers and resnet_channels need 4 entries (layer1..layer4)")
        self.method = method
        self.num_classes = num_classes
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.drop_rate = drop_rate
        self.num_prefix_tokens = 1 if class_token else 0
        self.grad_checkpointing = False
        block_kwargs = dict(
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop_rate,
            proj_drop=proj_drop_rate,
        )

        # ResNet-101 trunk with timm/torchvision key names (conv1, bn1, layer1..4) under ``trunk.``.
        self.trunk = ResNet(
            block=Bottleneck,
            layers=tuple(resnet_layers),
            channels=tuple(resnet_channels),
            in_chans=in_chans,
            num_classes=0,
        )
        self.stage_channels = (self.trunk.conv1.out_channels,) + tuple(4 * c for c in resnet_channels)
        self.num_stages = 5
        if method == "late":
            if late_stage not in (1, 2, 3, 4):
                raise ModelConfigError(f"late_stage must be one of 1..4 (layer1..layer4), got {late_stage}")
            self.num_stages = late_stage + 1
            for i in range(late_stage + 1, 5):  # stages after the one the CNN encoder reads are unused
                setattr(self.trunk, f"layer{i}", nn.Identity())
        self.trunk.fc = nn.Identity()

        grid = (img_size // patch_size, img_size // patch_size)
        if method == "late":
            self._build_late(
                img_size,
                in_chans,
                patch_size,
                late_stage,
                late_vit_depth,
                late_cnn_depth,
                late_upsample,
                late_merge,
                drop_path_rate,
                block_kwargs,
            )
        elif method == "early":
            self._build_early(
                img_size,
                in_chans,
                patch_size,
                early_depth,
                bridge_upsample,
                bridge_stages,
                bridge_channels,
                drop_path_rate,
                block_kwargs,
            )
            self.head_grid = grid
        else:
            self._build_layer(
                img_size,
                in_chans,
                patch_size,
                mixing_depths,
                final_depth,
                class_token,
                drop_path_rate,
                block_kwargs,
            )
            self.head_grid = grid

        self.head = PoolingHead(
            head, self.token_dim, self.head_grid, self.num_prefix_tokens, num_classes, drop_rate
        )
        self.num_features = self.head_hidden_size = self.head.num_features
        self.global_pool = head
        for name, module in self.named_children():
            if name != "trunk":
                module.apply(_init_transformer_weights)

    # ------------------------------------------------------------------ construction
    def _build_late(
        self,
        img_size: int,
        in_chans: int,
        patch_size: int,
        stage: int,
        vit_depth: int,
        cnn_depth: int,
        upsample: Upsample,
        merge: Merge,
        drop_path_rate: float,
        block_kwargs: dict[str, Any],
    ) -> None:
        stride = STAGE_STRIDES[stage]
        self.late_stage = stage
        self.patch_tokens = PatchTokens(img_size, patch_size, in_chans, self.embed_dim)
        self.vit_blocks = _block_stack(vit_depth, _linspace(drop_path_rate, vit_depth), **block_kwargs)
        # Eq. 1 with P = 1: every pixel of the stage map is a token, linearly embedded + position.
        self.cnn_embed = nn.Linear(self.stage_channels[stage], self.embed_dim)
        self.cnn_grid = (img_size // stride, img_size // stride)
        self.cnn_pos_embed = nn.Parameter(torch.zeros(1, self.cnn_grid[0] * self.cnn_grid[1], self.embed_dim))
        trunc_normal_(self.cnn_pos_embed, std=0.02)
        self.cnn_blocks = _block_stack(cnn_depth, _linspace(drop_path_rate, cnn_depth), **block_kwargs)
        self.late_coarse = "cnn" if stride >= patch_size else "vit"
        scale = max(stride, patch_size) // min(stride, patch_size)
        self.late_fusion = LateFusion(self.embed_dim, scale, upsample, merge)
        self.token_dim = self.late_fusion.out_dim
        fine = min(stride, patch_size)
        self.head_grid = (img_size // fine, img_size // fine)

    def _build_early(
        self,
        img_size: int,
        in_chans: int,
        patch_size: int,
        depth: int,
        upsample: Upsample,
        stages: BridgeStages,
        bridge_channels: int,
        drop_path_rate: float,
        block_kwargs: dict[str, Any],
    ) -> None:
        if stages not in ("multi", "single"):
            raise ModelConfigError(f"bridge_stages must be 'multi' or 'single', got {stages!r}")
        self.bridge_stage_ids = (0, 1, 2, 3, 4) if stages == "multi" else (4,)
        self.bridges = nn.ModuleList(
            BridgeBlock(self.stage_channels[i], STAGE_STRIDES[i], upsample, bridge_channels, bridge_channels)
            for i in self.bridge_stage_ids
        )
        self.unified_channels = in_chans + bridge_channels * len(self.bridge_stage_ids)
        self.patch_tokens = PatchTokens(img_size, patch_size, self.unified_channels, self.embed_dim)
        self.blocks = _block_stack(depth, _linspace(drop_path_rate, depth), **block_kwargs)
        self.token_dim = self.embed_dim

    def _build_layer(
        self,
        img_size: int,
        in_chans: int,
        patch_size: int,
        mixing_depths: Sequence[int],
        final_depth: int,
        class_token: bool,
        drop_path_rate: float,
        block_kwargs: dict[str, Any],
    ) -> None:
        if len(mixing_depths) != 5:
            raise ModelConfigError(f"mixing_depths needs one depth per ResNet stage (5), got {mixing_depths}")
        total = sum(mixing_depths) + final_depth
        dpr = _linspace(drop_path_rate, total)
        self.patch_tokens = PatchTokens(img_size, patch_size, in_chans, self.embed_dim, class_token)
        self.mixing_blocks = nn.ModuleList()
        start = 0
        for depth in mixing_depths:
            self.mixing_blocks.append(_block_stack(depth, dpr[start : start + depth], **block_kwargs))
            start += depth
        self.stage_tokens = nn.ModuleList(FeatureMapTokens(c, self.embed_dim) for c in self.stage_channels)
        self.mixing_fusions = nn.ModuleList(
            MixingFusion(self.embed_dim, self.num_prefix_tokens) for _ in self.stage_channels
        )
        self.final_blocks = _block_stack(final_depth, dpr[start:], **block_kwargs)
        self.token_dim = self.embed_dim

    # ------------------------------------------------------------------ trunk
    def _stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run ResNet stage ``index`` (0 = conv1 + BN + ReLU, 1 = max-pool + layer1, 2-4 = layer2-4)."""
        t = self.trunk
        if index == 0:
            return t.act1(t.bn1(t.conv1(x)))
        if index == 1:
            x = t.maxpool(x)
        return self._run_blocks(getattr(t, f"layer{index}"), x)

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ResNet stage maps this method uses (strides 2, 4, 8, 16, 32)."""
        maps = []
        for i in range(self.num_stages):
            x = self._stage(i, x)
            maps.append(x)
        return maps

    def _check_input(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % 32 or w % 32 or h % self.patch_size or w % self.patch_size:
            raise ModelConfigError(
                f"TokenFusion needs an input side divisible by 32 (ResNet stride) and by the patch size "
                f"{self.patch_size}; got {h}x{w}. Resize/crop to e.g. 64 or 224."
            )

    # ------------------------------------------------------------------ forward
    def _run_blocks(self, blocks: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run a block sequence (transformer blocks or ResNet bottlenecks), checkpointed if enabled."""
        if self.grad_checkpointing and self.training and isinstance(blocks, nn.Sequential) and len(blocks):
            return checkpoint_seq(blocks, x)
        return blocks(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Fused tokens (B, N, C): C = 2D for late concatenation, D otherwise."""
        self._check_input(x)
        if self.method == "late":
            return self._forward_late(x)
        if self.method == "early":
            return self._forward_early(x)
        return self._forward_layer(x)

    def _forward_late(self, x: torch.Tensor) -> torch.Tensor:
        vit, grid = self.patch_tokens(x)
        vit = self._run_blocks(self.vit_blocks, vit)
        fmap = self.stage_maps(x)[-1]
        cnn_grid = tuple(fmap.shape[-2:])
        pos = resample_abs_pos_embed(
            self.cnn_pos_embed, new_size=list(cnn_grid), old_size=list(self.cnn_grid), num_prefix_tokens=0
        )
        cnn = self._run_blocks(self.cnn_blocks, self.cnn_embed(map_to_tokens(fmap)) + pos)
        vit_map, cnn_map = tokens_to_map(vit, grid), tokens_to_map(cnn, cnn_grid)
        if self.late_coarse == "cnn":
            return self.late_fusion(vit_map, cnn_map)
        return self.late_fusion(cnn_map, vit_map)

    def _forward_early(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.stage_maps(x)
        bridged = [bridge(maps[i]) for bridge, i in zip(self.bridges, self.bridge_stage_ids)]
        unified = torch.cat([x, *bridged], dim=1)  # B, 3 + 3 * bridges, H, W
        tokens, _ = self.patch_tokens(unified)
        return self._run_blocks(self.blocks, tokens)

    def _forward_layer(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.patch_tokens(x)
        fmap = x
        for i in range(5):  # one mixing block per ResNet stage
            fmap = self._stage(i, fmap)
            tokens = self._run_blocks(self.mixing_blocks[i], tokens)
            tokens = self.mixing_fusions[i](tokens, self.stage_tokens[i](fmap, grid))
        return self._run_blocks(self.final_blocks, tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the tokens (Fig. 5), dropout, classify; ``pre_logits`` returns the pooled vector."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ timm contract
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: HeadType | None = None) -> None:
        """New classifier; ``global_pool`` (``token``/``channel``/``mixing``) also switches the head."""
        self.num_classes = num_classes
        param = next(self.trunk.parameters())
        if global_pool is not None and global_pool != self.head.kind:
            self.head = PoolingHead(
                global_pool,
                self.token_dim,
                self.head_grid,
                self.num_prefix_tokens,
                num_classes,
                self.drop_rate,
            )
            self.global_pool = global_pool
            self.num_features = self.head_hidden_size = self.head.num_features
        else:
            self.head.reset(num_classes)
        self.head.to(device=param.device, dtype=param.dtype)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks (and ResNet stages) in the backward pass to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position embeddings and the class token are not decayed (timm ViT convention)."""
        names = {n for n, _ in self.named_parameters() if n.endswith(("pos_embed", "cls_token"))}
        return names


def _init_transformer_weights(module: nn.Module) -> None:
    """timm ViT init for the new (non-ResNet) parts: truncated normal 0.02 for linear layers."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


_VARIANTS: dict[str, dict[str, Any]] = {
    # Table 1 (basic models, Fig. 2-4); the head is chosen with ``head=``.
    "tokenfusion_late": dict(method="late"),
    "tokenfusion_early": dict(method="early"),
    "tokenfusion_layer": dict(method="layer"),
    # Table 4 rows (Fig. 6-8).
    "tokenfusion_late_upconv_add": dict(method="late", late_upsample="upconv", late_merge="add"),
    "tokenfusion_late_copy_concat": dict(method="late", late_upsample="copy", late_merge="concat"),
    "tokenfusion_late_copy_add": dict(method="late", late_upsample="copy", late_merge="add"),
    "tokenfusion_early_copy_multi": dict(method="early", bridge_upsample="copy", bridge_stages="multi"),
    "tokenfusion_early_upconv_single": dict(method="early", bridge_upsample="upconv", bridge_stages="single"),
    "tokenfusion_early_copy_single": dict(method="early", bridge_upsample="copy", bridge_stages="single"),
    "tokenfusion_layer_cls": dict(method="layer", class_token=True),
}
#: timm pretrained-config entries (no hub weights: the ResNet-101 trunk loads from a local file).
default_cfgs = generate_default_cfgs(
    {name: _factory.cfg(pool_size=None, first_conv="trunk.conv1", classifier="head.fc") for name in _VARIANTS}
)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    return _factory.build(
        TokenFusion,
        variant,
        pretrained,
        no_weights=f"{variant}: there are no published TokenFusion weights to download. Initialise the "
        "ResNet-101 trunk from a local file instead: `pretrained: /path/to/resnet101.pth` in the task (plain "
        "timm/torchvision resnet101 state dict; keys load under 'trunk.').",
        features="TokenFusion's fused tokens exist only after the last fusion (no per-stage feature maps "
        "of one stream); use forward_features (B, N, C tokens) instead.",
        **{**_VARIANTS[variant], **kwargs},
    )


@register_model
def tokenfusion_late(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Method 1, late token fusion with parallel encoders (Fig. 2): UpConv + concatenation."""
    return _create("tokenfusion_late", pretrained, **kwargs)


@register_model
def tokenfusion_early(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Method 2, early token fusion (Fig. 3): UpConv bridges from all five stages (multi-weight)."""
    return _create("tokenfusion_early", pretrained, **kwargs)


@register_model
def tokenfusion_layer(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Method 3, token fusion layer by layer (Fig. 4): five mixing blocks + two transformer blocks."""
    return _create("tokenfusion_layer", pretrained, **kwargs)


@register_model
def tokenfusion_late_upconv_add(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Late fusion, UpConv + element-wise addition (Fig. 6b, Table 4)."""
    return _create("tokenfusion_late_upconv_add", pretrained, **kwargs)


@register_model
def tokenfusion_late_copy_concat(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Late fusion, copy + concatenation (Fig. 6c, Table 4)."""
    return _create("tokenfusion_late_copy_concat", pretrained, **kwargs)


@register_model
def tokenfusion_late_copy_add(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Late fusion, copy + element-wise addition (Fig. 6d, Table 4)."""
    return _create("tokenfusion_late_copy_add", pretrained, **kwargs)


@register_model
def tokenfusion_early_copy_multi(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Early fusion, copy bridges from all five stages (Fig. 7b, Table 4)."""
    return _create("tokenfusion_early_copy_multi", pretrained, **kwargs)


@register_model
def tokenfusion_early_upconv_single(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Early fusion, one UpConv bridge from the last stage (Fig. 7c, Table 4)."""
    return _create("tokenfusion_early_upconv_single", pretrained, **kwargs)


@register_model
def tokenfusion_early_copy_single(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Early fusion, one copy bridge from the last stage (Fig. 7d, Table 4)."""
    return _create("tokenfusion_early_copy_single", pretrained, **kwargs)


@register_model
def tokenfusion_layer_cls(pretrained: bool = False, **kwargs: Any) -> TokenFusion:
    """Layer-by-layer fusion with a class token kept out of the mixing (Fig. 8, Table 4)."""
    return _create("tokenfusion_layer_cls", pretrained, **kwargs)
