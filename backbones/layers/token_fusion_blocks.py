"""Building blocks of "Improved Image Classification with Token Fusion" (Choi, Kim, Wang, Ha).

The paper fuses two kinds of tokens: ViT patch tokens (Eq. 1) and ResNet-101 feature-map tokens
(every pixel of a stage's map is a token). This file holds the pieces that are new in the paper; the
transformer block of Eq. 2-3 is timm's ViT ``Block`` and the CNN is timm's ResNet-101.

* :class:`PatchTokens` -- Eq. 1: linear patch embedding + learned position embedding, optional class
  token (Fig. 8), position embedding resampled when the input size differs from the built size.
* :class:`FeatureMapTokens` -- a CNN map turned into tokens on the ViT token grid (Conformer's
  CNN -> transformer coupling: 1x1 conv, average pooling / nearest upsampling to the grid, LayerNorm,
  GELU); used by the layer-by-layer mixing blocks (Fig. 4b).
* :class:`UpConv` -- transposed convolution with kernel = stride = scale, the learned "UpConv" of
  Fig. 2b / 3b; ``copy`` (nearest-neighbour repetition) is its parameter-free counterpart (Fig. 6, 7).
* :class:`LateFusion` -- the late token fusion block (Fig. 2b, Fig. 6b-d).
* :class:`BridgeBlock` -- the early-fusion bridge block (Fig. 3b, Fig. 7b-d).
* :class:`MixingFusion` -- concatenation and integration of transformer and CNN tokens inside a
  mixing block (Fig. 4b), class token kept out of the mixing (Fig. 8b).
* :class:`PoolingHead` -- token-wise, channel-wise and mixing classification heads (Fig. 5).

Every choice the paper leaves open is written in the docstring of the class that makes it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, resample_abs_pos_embed, trunc_normal_
from torch import nn

from backbones.errors import ModelConfigError

Upsample = Literal["upconv", "copy"]
Merge = Literal["concat", "add"]
HeadType = Literal["token", "channel", "mixing"]


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) tokens -> (B, C, h, w) map (row-major token order, as ``flatten(2)`` produces)."""
    b, n, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])


def map_to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) map -> (B, h*w, C) tokens."""
    return fmap.flatten(2).transpose(1, 2)


def resample_to_grid(fmap: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bring a (B, C, h, w) map onto ``grid``: average pooling when it is finer, copy when coarser.

    Average pooling by the stride ratio is Conformer's CNN -> token down-sampling; repetition
    (nearest-neighbour) is the "copy" of the paper. For inputs whose side is divisible by 32 the ratios
    are integers, so ``adaptive_avg_pool2d`` is exactly a ``stride x stride`` average pooling.
    """
    h, w = fmap.shape[-2:]
    if (h, w) == tuple(grid):
        return fmap
    if h >= grid[0] and w >= grid[1]:
        return F.adaptive_avg_pool2d(fmap, grid)
    return F.interpolate(fmap, size=grid, mode="nearest")


class PatchTokens(nn.Module):
    """Eq. 1: ``t_0 = [x_p^1 E; ...; x_p^N E] + E_pos`` with an optional class token.

    The linear projection ``E`` of flattened P x P patches is the usual stride-P convolution (timm
    ``PatchEmbed``). The paper uses no class token ("we use all tokens for a classification task");
    the Fig. 8 variant adds one. Open choice: the class token gets no position embedding (it has no
    position; timm's ``no_embed_class`` style). When the input is not ``img_size`` the position
    embedding is resampled bicubically to the new grid (timm ``resample_abs_pos_embed``), so a model
    built for 224 also runs at the 64 x 64 smoke-test size.

    Args:
        img_size: input size the position embedding is built for.
        patch_size: patch side P.
        in_chans: input channels (3 for images, 18 for the early-fusion unified map).
        embed_dim: token width D.
        class_token: prepend a learned class token.
    """

    def __init__(
        self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, class_token: bool = False
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Return tokens (B, prefix + h*w, D) and the patch grid (h, w)."""
        x = self.patch_embed(x)  # B, h, w, D
        b, h, w, d = x.shape
        pos = resample_abs_pos_embed(
            self.pos_embed, new_size=[h, w], old_size=list(self.grid_size), num_prefix_tokens=0
        )
        x = x.reshape(b, h * w, d) + pos
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        return x, (h, w)


class FeatureMapTokens(nn.Module):
    """A ResNet stage map as tokens on the ViT grid (Conformer's FCU-down coupling).

    1x1 conv to the token width, resampling to the token grid (average pooling when the stage is finer
    than the grid, nearest "copy" when it is coarser: ResNet-101's last stage at /32 against the /16
    patch grid), flatten, LayerNorm, GELU. Open choice of this implementation (the paper only says the
    mixing block holds "a transformer and a CNN"): the 1x1 conv runs before the resampling, which is
    cheaper and, for the nearest copy, exactly equal to the other order.

    Args:
        in_channels: channels of the stage map.
        embed_dim: token width D.
    """

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.norm = nn.LayerNorm(embed_dim)
        self.act = nn.GELU()

    def forward(self, fmap: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, C, H, W) -> (B, grid_h * grid_w, D)."""
        x = resample_to_grid(self.proj(fmap), grid)
        return self.act(self.norm(map_to_tokens(x)))


class UpConv(nn.Module):
    """Learned ``scale``-times up-sampling: ``ConvTranspose2d(kernel=stride=scale)``.

    Every input pixel becomes a ``scale x scale`` block through its own learned linear map, the
    learned counterpart of "copy" (nearest repetition). The paper names the layer "UpConv" without
    details; kernel = stride (no overlap) is our reading. ``scale == 1`` degenerates to a 1x1 conv.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        scale: integer up-sampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=scale, stride=scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LateFusion(nn.Module):
    """Late token fusion block (Fig. 2b and Fig. 6b-d).

    The two encoders' token maps have different grids; the coarser one is brought to the finer grid by
    ``UpConv`` (learned, Fig. 2b / 6b) or ``copy`` (nearest repetition, Fig. 6c-d), then the two are
    merged per position by channel concatenation (2D channels, Fig. 2b / 6c) or element-wise sum
    (D channels, Fig. 6b / 6d).

    Open choices: the paper applies UpConv to the ViT tokens ("expanded four times"); with ViT-B/16
    patches (14 x 14 at 224) and the last ResNet-101 stage (7 x 7) it is the CNN grid that is coarser,
    so this block up-samples whichever stream is coarser (``coarse="cnn"`` by default, ``"vit"`` when the
    CNN tokens come from a finer stage). Concatenation is along channels, so both merge rules keep the
    same token count.

    Args:
        dim: token width D of both streams.
        scale: up-sampling factor of the coarse stream (>= 1).
        upsample: ``"upconv"`` or ``"copy"``.
        merge: ``"concat"`` or ``"add"``.
    """

    def __init__(self, dim: int, scale: int, upsample: Upsample = "upconv", merge: Merge = "concat") -> None:
        super().__init__()
        if upsample not in ("upconv", "copy"):
            raise ModelConfigError(f"late fusion upsample must be 'upconv' or 'copy', got {upsample!r}")
        if merge not in ("concat", "add"):
            raise ModelConfigError(f"late fusion merge must be 'concat' or 'add', got {merge!r}")
        self.scale = scale
        self.merge = merge
        self.up = UpConv(dim, dim, scale) if upsample == "upconv" else None
        self.out_dim = 2 * dim if merge == "concat" else dim

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Fuse (B, D, H, W) ``fine`` with (B, D, H/s, W/s) ``coarse``; return (B, H*W, out_dim) tokens."""
        if self.up is not None:
            coarse = self.up(coarse)
        elif self.scale > 1:
            coarse = F.interpolate(coarse, scale_factor=self.scale, mode="nearest")
        fused = torch.cat([fine, coarse], dim=1) if self.merge == "concat" else fine + coarse
        return map_to_tokens(fused)


class BridgeBlock(nn.Module):
    """Early-fusion bridge block (Fig. 3b, Fig. 7b-d): one ResNet stage map to the input resolution.

    ``upconv``: ``ConvTranspose2d(C, mid, kernel=stride=s)`` + BN + ReLU, then a 1x1 conv to
    ``out_channels``. ``copy``: nearest repetition by ``s`` and a 1x1 conv ``C -> out_channels``; it is
    computed as 1x1 conv then repetition, which is exactly equal (a 1x1 conv commutes with copying)
    and avoids materialising a 2048-channel full-resolution map.

    Open choices: the paper gives only "UpConv + 1x1 conv + concatenation" and the final H x W x 18
    map. 18 = 3 image channels + 5 bridges x 3 channels, so each bridge emits 3 channels; the UpConv's
    own output width (``mid_channels``) is not given, we use 3 as well, which keeps the model the size
    of the others (about 7 M parameters in the five UpConvs).

    Args:
        in_channels: channels of the stage map.
        scale: stride of the stage (2, 4, 8, 16, 32 for ResNet-101).
        upsample: ``"upconv"`` or ``"copy"``.
        out_channels: channels contributed to the unified map.
        mid_channels: output width of the UpConv.
    """

    def __init__(
        self,
        in_channels: int,
        scale: int,
        upsample: Upsample = "upconv",
        out_channels: int = 3,
        mid_channels: int = 3,
    ) -> None:
        super().__init__()
        if upsample not in ("upconv", "copy"):
            raise ModelConfigError(f"bridge upsample must be 'upconv' or 'copy', got {upsample!r}")
        self.scale = scale
        self.upsample = upsample
        if upsample == "upconv":
            self.up = nn.Sequential(
                nn.ConvTranspose2d(in_channels, mid_channels, kernel_size=scale, stride=scale, bias=False),
                nn.BatchNorm2d(mid_channels),
                nn.ReLU(inplace=True),
            )
            self.proj = nn.Conv2d(mid_channels, out_channels, kernel_size=1)
        else:
            self.up = None
            self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.up is not None:
            return self.proj(self.up(fmap))
        return F.interpolate(self.proj(fmap), scale_factor=self.scale, mode="nearest")


class MixingFusion(nn.Module):
    """Concatenation + integration of transformer and CNN tokens in a mixing block (Fig. 4b, 8b).

    ``t <- t + Linear(concat(LN(t), c))`` per patch position, where ``c`` are the CNN tokens of the
    aligned ResNet stage (:class:`FeatureMapTokens`). Prefix tokens (the Fig. 8 class token) have no
    CNN counterpart and skip the mixing. Open choices: channel-wise concatenation (so the class token
    can be "excluded from the combining process", which a token-axis concatenation would not need),
    a linear layer back to width D for the "integration", and a residual connection so the transformer
    stream passes unchanged at initialisation.

    Args:
        dim: token width D.
        num_prefix_tokens: leading tokens excluded from the mixing.
    """

    def __init__(self, dim: int, num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, tokens: torch.Tensor, cnn_tokens: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        prefix, patches = tokens[:, :p], tokens[:, p:]
        patches = patches + self.proj(torch.cat([self.norm(patches), cnn_tokens], dim=-1))
        return torch.cat([prefix, patches], dim=1) if p else patches


class PoolingHead(nn.Module):
    """Classification heads of Fig. 5.

    * ``token`` -- token-wise pooling (Fig. 5a, "average pooling by data depth"): each token is
      averaged over its channels, giving one value per token; the N-vector is classified.
    * ``channel`` -- channel-wise pooling (Fig. 5b, "average pooling by token"): each channel is
      averaged over the tokens (global average pooling), giving a D-vector.
    * ``mixing`` -- both vectors concatenated (Fig. 5c).

    The naming follows the figure captions. Open choices: a LayerNorm after each pooling (timm's
    ``fc_norm``; a norm before the channel mean would cancel it, since LayerNorm centres every token),
    then dropout and one linear classifier. The token-wise vector has one entry per token, so its size
    depends on the input: when the grid differs from the built one (e.g. 64 x 64 smoke tests of a
    224 model) the per-token map is resampled to the built grid (bilinear; prefix tokens kept).

    Args:
        kind: ``"token"``, ``"channel"`` or ``"mixing"``.
        dim: token width C of the fused tokens.
        grid: token grid at the built input size.
        num_prefix_tokens: leading (class) tokens, pooled like the others.
        num_classes: classifier outputs (0 = identity classifier).
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        kind: HeadType,
        dim: int,
        grid: tuple[int, int],
        num_prefix_tokens: int = 0,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in ("token", "channel", "mixing"):
            raise ModelConfigError(f"head must be 'token', 'channel' or 'mixing', got {kind!r}")
        self.kind = kind
        self.grid = tuple(grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.num_tokens = num_prefix_tokens + grid[0] * grid[1]
        use_channel = kind in ("channel", "mixing")
        use_token = kind in ("token", "mixing")
        self.channel_norm = nn.LayerNorm(dim) if use_channel else None
        self.token_norm = nn.LayerNorm(self.num_tokens) if use_token else None
        self.num_features = (dim if use_channel else 0) + (self.num_tokens if use_token else 0)
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        """Replace the classifier (``num_classes == 0`` gives an identity, as in timm)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def _token_vector(self, tokens: torch.Tensor) -> torch.Tensor:
        per_token = tokens.mean(dim=-1)  # B, N
        if per_token.shape[1] == self.num_tokens:
            return per_token
        p = self.num_prefix_tokens
        prefix, grid_vals = per_token[:, :p], per_token[:, p:]
        n = grid_vals.shape[1]
        side = math.isqrt(n)
        if side * side == n:
            resized = F.interpolate(
                grid_vals.reshape(-1, 1, side, side), size=self.grid, mode="bilinear", align_corners=False
            ).flatten(1)
        else:  # non-square input: resample along the row-major token order
            resized = F.interpolate(
                grid_vals.unsqueeze(1), size=self.grid[0] * self.grid[1], mode="linear", align_corners=False
            ).squeeze(1)
        return torch.cat([prefix, resized], dim=1)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, num_features) pooled, normalised vector."""
        parts = []
        if self.channel_norm is not None:
            parts.append(self.channel_norm(tokens.mean(dim=1)))
        if self.token_norm is not None:
            parts.append(self.token_norm(self._token_vector(tokens)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(tokens))
        return x if pre_logits else self.fc(x)
