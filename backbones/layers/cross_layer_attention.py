"""Cross-layer self-attention (CS) module of CS-Net.

Paper: J. Chen, S. Yu, J. Liang, "A Cross-layer Self-attention Learning Network for Fine-grained
Classification", ICCECE 2023 (DOI 10.1109/ICCECE58074.2023.10135230). Only the abstract is available to us,
so every equation below is *our* design, chosen to match the abstract's three sentences:

* "cross-layer channel attention ... brings a channel self-attention by interacting information between
  low-layer and high-layer ... and then loads the channel self-attention into low-level to obtain finer
  low-level features" -> :class:`CrossLayerChannelAttention`;
* "cross-layer spatial attention has similar effect and can obtain finer low level features in the spatial
  dimension" -> :class:`CrossLayerSpatialAttention`;
* "the feature fusion module fuses low-level features with high-level features where low-level features can
  be obtained through combining channel and spatial features" -> :class:`CrossLayerFusion`, with the
  channel/spatial combination in :class:`CrossLayerSelfAttention`.

Notation (one image; the batch dimension is omitted): low-layer map ``L`` of shape ``C_l x H_l x W_l``
(ResNet stage 3 by default), high-layer map ``H`` of shape ``C_h x H_h x W_h`` (stage 4), ``N_l = H_l W_l``,
``N_h = H_h W_h``. In a ResNet the low map has twice the resolution of the high map (``N_l = 4 N_h``).
``P(.)`` is adaptive average pooling of a low-layer map onto the ``H_h x W_h`` grid (a 2x2 average for
stage 3; any ratio works, so an earlier low stage or odd input sizes are fine), ``vec`` flattens space.

Equations (numbered for reference from the code and docs/csnet.md):

(1) Channel affinity across layers. Each channel is described by its spatial response on the common
    ``H_h x W_h`` grid: low-layer descriptors ``Q_c = vec(P(L))`` (``C_l x N_h``), high-layer descriptors
    mapped into the low layer's channel space by a learned ``1x1`` conv + BN,
    ``K_c = vec(BN(W_k H))`` (``C_l x N_h``). ``A_c = softmax_row(Q_c K_c^T / sqrt(N_h))`` (``C_l x C_l``):
    entry ``(i, j)`` says how strongly low channel ``i`` co-fires with the high-layer channel mapped to slot
    ``j``. Why: this is DANet's channel attention (``softmax(X X^T)``), made cross-layer by taking the keys
    from the high layer so that the semantic layer decides which low-level channels belong together. The
    ``1/sqrt(N_h)`` temperature keeps the logits' scale independent of the input resolution (DANet has
    none; at 448 px it saturates the softmax).
(2) Loading the channel attention onto the low layer: ``Z_c = A_c vec(L)`` (``C_l x N_l``, at the low
    layer's full resolution), ``L_c = L + gamma_c Z_c`` with a learnable scalar ``gamma_c``. Why: the
    abstract loads the attention "into low-level", so the values are the low-level features themselves
    (``value="low"``); the alternative reading, values from the high layer (``value="high"``,
    ``Z_c = up(A_c K_c)``), injects high-level semantics instead and is a constructor argument.
(3) Spatial affinity across layers: ``Q_s = vec(W_q L)^T`` (``N_l x d``), ``K_s = vec(W_k' H)^T``
    (``N_h x d``), ``d = C_l / r`` (``reduction`` r, default 8 as in non-local/DANet),
    ``A_s = softmax_row(Q_s K_s^T / sqrt(d))`` (``N_l x N_h``): every low-layer position attends to the
    high-layer positions. This is where the 2x resolution difference is handled: queries keep the low
    layer's full resolution, keys live on the coarse grid, so no map is upsampled and the cost is
    ``N_l N_h d`` instead of ``N_l^2 d``.
(4) Loading the spatial attention onto the low layer: ``V_s = vec(W_v P(L))^T`` (``N_h x C_l``, the
    low-level content of the region under each high-layer position; ``value="high"``: ``W_v H``),
    ``Z_s = (A_s V_s)^T`` reshaped to ``C_l x H_l x W_l``, ``L_s = L + gamma_s Z_s``. Multi-head
    (``heads``) splits ``d`` and ``C_l`` into groups, as in any multi-head attention.
(5) Combining channel and spatial refinements (``combine``):
    ``"sum"`` (default, DANet's parallel sum): ``L_r = L + gamma_c Z_c + gamma_s Z_s``;
    ``"serial"`` (CBAM's order, channel first): ``L_r = CLSA(CLCA(L, H), H)``;
    ``"concat"``: ``L_r = ReLU(BN(W_cat [L_c; L_s]))``.
(6) Fusion with the high layer (``fusion``), on the high layer's grid ``D = P(L_r)``:
    ``"conv"`` (default, the full model): ``F = ReLU(H + BN_0(W_2 ReLU(BN(W_1 [D; H]))))`` with a bottleneck
    of width ``fusion_dim`` (``None``: a single ``1x1`` conv ``W [D; H]``); ``"sum"``:
    ``F = ReLU(H + BN_0(W D))``; ``"concat"`` (parameter-free): ``F = [D; H]``, whose global average pool is
    ``[GAP(L_r); GAP(H)]``, the classic multi-layer pooled descriptor; ``"none"``: ``F = H``.
    ``BN_0`` has its weight initialised to zero, so at initialisation ``F = H`` exactly: a pretrained trunk
    starts from its own features and the fusion learns a residual correction (timm's ``zero_init_last``
    idea). Why a residual and not a plain concat + conv: the plain version throws away the ImageNet
    features' calibration at step 0, which hurts fine-tuning on small fine-grained sets.

Gates ``gamma_c, gamma_s`` start at ``gamma_init`` (default 0, as DANet/SAGAN: the refinement grows from
the identity). Note that with ``fusion="conv"``/``"sum"`` the zero-initialised ``BN_0`` is a second gate in
series, so the attention parameters receive non-zero gradients from the third optimisation step on;
pass ``gamma_init > 0`` to start them earlier.

All attention products use :func:`torch.nn.functional.scaled_dot_product_attention` (one batched call per
attention, no Python loops over channels, positions or heads).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.errors import ModelConfigError

ValueSource = Literal["low", "high"]
CombineMode = Literal["sum", "serial", "concat"]
FusionMode = Literal["conv", "sum", "concat", "none"]


def _pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``P(.)``: average-pool a low-layer map onto the high layer's grid (identity if already there)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def _conv_bn(in_channels: int, out_channels: int, zero_init: bool = False) -> nn.Sequential:
    bn = nn.BatchNorm2d(out_channels)
    if zero_init:
        nn.init.zeros_(bn.weight)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), bn)


class CrossLayerChannelAttention(nn.Module):
    """Cross-layer channel attention, Eqs. (1)-(2) of the module docstring.

    Args:
        low_channels: channels ``C_l`` of the low-layer map (refined and returned).
        high_channels: channels ``C_h`` of the high-layer map (only steers the attention).
        value: ``"low"``: attention weights low-level channels (the abstract's reading);
            ``"high"``: attention gathers the high layer's (projected) channels.
        gamma_init: initial value of the residual gate ``gamma_c``.
    """

    def __init__(
        self, low_channels: int, high_channels: int, value: ValueSource = "low", gamma_init: float = 0.0
    ) -> None:
        super().__init__()
        if value not in ("low", "high"):
            raise ModelConfigError(f"value must be 'low' or 'high', got {value!r}")
        self.value = value
        self.key = _conv_bn(high_channels, low_channels)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def residual(self, low: Tensor, high: Tensor) -> Tensor:
        """``Z_c`` of Eq. (2), shape of ``low``."""
        b, c, hl, wl = low.shape
        size = (high.shape[-2], high.shape[-1])
        key = self.key(high)  # (B, C_l, H_h, W_h)
        dtype = key.dtype  # the autocast dtype when autocast is on
        query = _pool_to(low, size).flatten(2).unsqueeze(1).to(dtype)  # (B, 1, C_l, N_h): channels are tokens
        k = key.flatten(2).unsqueeze(1)
        if self.value == "low":
            v = low.flatten(2).unsqueeze(1).to(dtype)  # (B, 1, C_l, N_l)
            return F.scaled_dot_product_attention(query, k, v).view(b, c, hl, wl)
        out = F.scaled_dot_product_attention(query, k, k).view(b, c, *size)
        return F.interpolate(out, size=(hl, wl), mode="nearest")

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        """``L_c = L + gamma_c Z_c``."""
        return low + self.gamma * self.residual(low, high)


class CrossLayerSpatialAttention(nn.Module):
    """Cross-layer spatial attention, Eqs. (3)-(4) of the module docstring.

    Args:
        low_channels: channels ``C_l`` of the low-layer map (refined and returned).
        high_channels: channels ``C_h`` of the high-layer map (keys; values too with ``value="high"``).
        reduction: query/key width ``d = C_l // reduction``.
        heads: attention heads; must divide ``d`` and ``C_l``.
        value: ``"low"``: values are the low layer pooled onto the high grid; ``"high"``: the high layer.
        gamma_init: initial value of the residual gate ``gamma_s``.
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        reduction: int = 8,
        heads: int = 1,
        value: ValueSource = "low",
        gamma_init: float = 0.0,
    ) -> None:
        super().__init__()
        if value not in ("low", "high"):
            raise ModelConfigError(f"value must be 'low' or 'high', got {value!r}")
        dim = max(low_channels // reduction, 1)
        if dim % heads or low_channels % heads:
            raise ModelConfigError(
                f"heads={heads} must divide the query width {dim} and the channels {low_channels}"
            )
        self.value, self.heads = value, heads
        self.query = nn.Conv2d(low_channels, dim, 1)
        self.key = nn.Conv2d(high_channels, dim, 1)
        self.proj_value = nn.Conv2d(low_channels if value == "low" else high_channels, low_channels, 1)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def residual(self, low: Tensor, high: Tensor) -> Tensor:
        """``Z_s`` of Eq. (4), shape of ``low``."""
        b, c, hl, wl = low.shape
        size = (high.shape[-2], high.shape[-1])
        h = self.heads
        q = self.query(low)  # (B, d, H_l, W_l)
        k = self.key(high)  # (B, d, H_h, W_h)
        # 1x1 conv and average pooling commute; pooling first is 4x cheaper.
        v = self.proj_value(_pool_to(low, size) if self.value == "low" else high)  # (B, C_l, H_h, W_h)
        dtype = q.dtype
        q = q.reshape(b, h, -1, hl * wl).transpose(-1, -2)  # (B, h, N_l, d/h): positions are tokens
        k = k.reshape(b, h, -1, size[0] * size[1]).transpose(-1, -2).to(dtype)  # (B, h, N_h, d/h)
        v = v.reshape(b, h, c // h, -1).transpose(-1, -2).to(dtype)  # (B, h, N_h, C_l/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N_l, C_l/h)
        return out.transpose(-1, -2).reshape(b, c, hl, wl)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        """``L_s = L + gamma_s Z_s``."""
        return low + self.gamma * self.residual(low, high)


class CrossLayerFusion(nn.Module):
    """Fusion of the refined low-level map with the high-level map, Eq. (6) of the module docstring.

    Args:
        low_channels: channels of the refined low-level map.
        high_channels: channels of the high-level map.
        mode: ``"conv"`` | ``"sum"`` | ``"concat"`` | ``"none"``.
        hidden: bottleneck width of ``"conv"`` (``None``: one ``1x1`` conv from ``C_l + C_h`` to ``C_h``).

    Attributes:
        out_channels: channels of the fused map (``C_h``; ``C_l + C_h`` for ``"concat"``).
    """

    def __init__(
        self, low_channels: int, high_channels: int, mode: FusionMode = "conv", hidden: int | None = 512
    ) -> None:
        super().__init__()
        if mode not in ("conv", "sum", "concat", "none"):
            raise ModelConfigError(f"fusion must be one of conv, sum, concat, none; got {mode!r}")
        self.mode = mode
        self.out_channels = low_channels + high_channels if mode == "concat" else high_channels
        self.transform: nn.Module | None = None
        if mode == "conv":
            cat = low_channels + high_channels
            if hidden:
                self.transform = nn.Sequential(
                    _conv_bn(cat, hidden),
                    nn.ReLU(inplace=True),
                    _conv_bn(hidden, high_channels, zero_init=True),
                )
            else:
                self.transform = _conv_bn(cat, high_channels, zero_init=True)
        elif mode == "sum":
            self.transform = _conv_bn(low_channels, high_channels, zero_init=True)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        """Fuse; ``low`` may have any resolution that pools onto ``high``'s grid."""
        if self.mode == "none":
            return high
        down = _pool_to(low, (high.shape[-2], high.shape[-1])).to(high.dtype)
        if self.mode == "concat":
            return torch.cat([down, high], dim=1)
        x = torch.cat([down, high], dim=1) if self.mode == "conv" else down
        return F.relu(high + self.transform(x))


class CrossLayerSelfAttention(nn.Module):
    """The CS module: channel and spatial cross-layer attention on the low layer, then fusion (Eqs. 1-6).

    Args:
        low_channels: channels ``C_l`` of the low-layer map.
        high_channels: channels ``C_h`` of the high-layer map.
        channel_attn: use the cross-layer channel attention (Eqs. 1-2).
        spatial_attn: use the cross-layer spatial attention (Eqs. 3-4).
        combine: how channel and spatial refinements combine when both are on (Eq. 5).
        fusion: low/high fusion (Eq. 6). ``"none"`` is only allowed with both attentions off (the refined
            low-level map would otherwise be computed and discarded).
        fusion_dim: bottleneck width of ``fusion="conv"`` (``None``: single ``1x1`` conv).
        reduction: query/key reduction of the spatial attention.
        heads: heads of the spatial attention.
        value: where attention values come from, ``"low"`` or ``"high"`` (Eqs. 2 and 4).
        gamma_init: initial residual gates of both attentions.

    Attributes:
        out_channels: channels of the returned map.
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        channel_attn: bool = True,
        spatial_attn: bool = True,
        combine: CombineMode = "sum",
        fusion: FusionMode = "conv",
        fusion_dim: int | None = 512,
        reduction: int = 8,
        heads: int = 1,
        value: ValueSource = "low",
        gamma_init: float = 0.0,
    ) -> None:
        super().__init__()
        if combine not in ("sum", "serial", "concat"):
            raise ModelConfigError(f"combine must be sum, serial or concat; got {combine!r}")
        if fusion == "none" and (channel_attn or spatial_attn):
            raise ModelConfigError(
                "fusion='none' discards the refined low-level features; use fusion='concat' (parameter-free) "
                "for the attention-only ablations, or switch both attentions off"
            )
        self.combine = combine
        self.channel = (
            CrossLayerChannelAttention(low_channels, high_channels, value, gamma_init)
            if channel_attn
            else None
        )
        self.spatial = (
            CrossLayerSpatialAttention(low_channels, high_channels, reduction, heads, value, gamma_init)
            if spatial_attn
            else None
        )
        self.merge = (
            nn.Sequential(_conv_bn(2 * low_channels, low_channels), nn.ReLU(inplace=True))
            if combine == "concat" and channel_attn and spatial_attn
            else None
        )
        self.fusion = CrossLayerFusion(low_channels, high_channels, fusion, fusion_dim)
        self.out_channels = self.fusion.out_channels

    def refine(self, low: Tensor, high: Tensor) -> Tensor:
        """``L_r`` of Eq. (5)."""
        if self.channel is None and self.spatial is None:
            return low
        if self.spatial is None:
            return self.channel(low, high)
        if self.channel is None:
            return self.spatial(low, high)
        if self.combine == "serial":
            return self.spatial(self.channel(low, high), high)
        if self.combine == "sum":
            return (
                low
                + self.channel.gamma * self.channel.residual(low, high)
                + self.spatial.gamma * self.spatial.residual(low, high)
            )
        return self.merge(torch.cat([self.channel(low, high), self.spatial(low, high)], dim=1))

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        """Refine ``low`` with ``high`` and fuse: returns a map on ``high``'s grid with ``out_channels``."""
        return self.fusion(self.refine(low, high), high)
