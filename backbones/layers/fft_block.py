"""The FFT block: Inner / Middle / Outer transformer streams fused layer by layer.

Paper: Zhu et al., "Image Recognition based on Multi-scale Feature Fusion Transformer", Sec. III.C,
Eq. 3-18 and Fig. 3. Each stream is a pre-norm transformer layer (Eq. 5-6, 10-11, 16-17); before the
Middle (Outer) layer runs, the Inner (Middle) embeddings are unfolded, flattened and linearly projected
and added to the Middle (Outer) embeddings (Eq. 9, 15), the TNT pattern (``Y^i += Vec(X^i) W + b``).

Choices the paper leaves open, and what we do:

* **What Eq. 9/15 unfold** ("Vec flattens the embedded sequence locally", "unfold [25]" = PyTorch's
  ``nn.Unfold``, which "extracts sliding local blocks"): the finer stream's tokens are laid back on their
  2-D grid, ``nn.Unfold`` with a ``K x K`` kernel extracts, for every token of the coarser stream, the
  ``K x K`` block of finer tokens around it, ``Vec`` flattens the block to ``K*K*c`` numbers and a
  ``Linear(K*K*c, c')`` projects it. ``Vec(unfold(X)) W + b`` is the linear map of a ``Conv2d(c, c', K)``
  on the token grid, and the projection is stored as that conv's weight (``proj.weight``, ``(c', c, K, K)``).
  It is *computed* as one matrix product of the unfolded blocks with the weight viewed as
  ``(c', c*K*K)`` (:class:`_BlockLinear`, which keeps only the padded token grid for backward, not the
  ``K*K``-fold unfold): on an 8x8 grid the conv's kernel is as large as its input, and the conv path spent
  most of its time reordering the 8x8 weight (and its gradient) into the convolution library's layout. Tests
  check the equality against ``F.unfold`` + ``Linear`` and the conv. The stride is the ratio of the two
  grids and the zero padding keeps one output per coarser token. ``K`` is not given; ``K = 8``
  (64 flattened tokens) is the only kernel that brings all three variants of Table II within 10% of their
  parameter counts (``K = 7`` gives 224 M for Base, ``K = 9`` 325 M, against 266 M); see :mod:`backbones.fft`.
* **Which layer's Inner tokens** Eq. 9 fuses: it writes ``X_{l-1}`` (the Inner input of layer l). Read
  literally, the Inner and Middle layers of the last block would feed nothing and never train. We follow
  TNT, which Eq. 9 copies: the finer stream's *output* of the same block is fused.
* **Border of the unfold**: ``nn.Unfold`` zero-pads, and a zero border tells a block where it sits: the
  fused tokens carry absolute position even without the position encodings (Table V "without position"
  keeps that implicit position). ``fusion_padding="circular"`` (ours, not in the paper) wraps the grid
  instead, so the fusion is equivariant to cyclic shifts of the token grid and adds no position of its own
  (the ResNet-18 trunk's zero-padded convolutions still see the image border); default ``"zeros"``.
* **Normalisation of the fused tokens**: TNT's equation also shows only ``Vec(X) W + b`` while its code
  applies a LayerNorm before the projection; we do the same (``fusion_norm=True``), switchable.
* **Attention width**: Table II lists "Patch dim, Mlp dim, Heads" (the vocabulary of lucidrains'
  vit-pytorch, where each head has ``dim_head = 64`` whatever the width). Heads change the parameter count
  in Table II (Large differs from Base only by 18 vs 16 heads and depth), so heads are ``head_dim = 64``
  wide: the q, k, v width is ``heads * 64`` (1024 for Base), no qkv bias, output projection with bias.
* Each stream's layer is the standard pre-norm ViT block (Eq. 5-6), so it is timm's ``Block`` with
  timm's ``Attention`` (``attn_head_dim=64``; fused ``F.scaled_dot_product_attention``); the class token
  is only in the Outer stream and receives no fused tokens (as in TNT).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

__all__ = ["MultiHeadSelfAttention", "TransformerLayer", "StreamFusion", "FFTBlock"]


class MultiHeadSelfAttention(Attention):
    """timm's ``Attention`` with a fixed per-head width (``inner = num_heads * head_dim`` may differ from
    ``dim``; timm's ``attn_head_dim``), plus the explicit softmax weights for the Fig. 7 maps.

    Same parameters as before (``qkv`` without bias, ``proj`` with bias); the forward is timm's
    (``F.scaled_dot_product_attention`` where timm's fused-attention switch allows it).

    Args:
        dim: token width.
        num_heads: number of heads.
        head_dim: width of each head.
        qkv_bias: bias on the q, k, v projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        **kwargs: passed to timm's ``Attention`` (what timm's ``Block`` gives its attention layer).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int = 64,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dim,
            num_heads=num_heads,
            attn_head_dim=head_dim,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            **kwargs,
        )

    def attention_weights(self, x: Tensor) -> Tensor:
        """Softmax attention ``(B, heads, N, N)`` of the tokens ``x`` (no dropout), as the forward uses it."""
        b, n, _ = x.shape
        q, k, _ = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


class TransformerLayer(Block):
    """Pre-norm transformer layer (Eq. 5-6): ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``.

    This is the standard pre-norm ViT block, so it *is* timm's ``Block`` (``norm1``, ``attn``, ``norm2``,
    ``mlp`` as before: same ``state_dict``), with ``nn.LayerNorm`` (eps 1e-5), an MLP of exactly
    ``mlp_dim`` hidden units (GELU), no layer scale, and the attention replaced by
    :class:`MultiHeadSelfAttention` for the paper's fixed 64-wide heads.

    Args:
        dim: token width ("patch dim").
        num_heads: attention heads.
        head_dim: width of each head.
        mlp_dim: hidden width of the MLP ("mlp dim"), GELU.
        attn_drop: attention-weight dropout.
        proj_drop: dropout after the attention projection and inside/after the MLP.
        drop_path: stochastic depth rate (0 in the paper, which does not mention it).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            mlp_ratio=mlp_dim / dim,
            proj_drop=proj_drop,
            attn_drop=attn_drop,
            drop_path=drop_path,
            norm_layer=nn.LayerNorm,
            attn_layer=MultiHeadSelfAttention,  # built with its default head_dim (64)
        )
        if self.attn.head_dim != head_dim:
            self.attn = MultiHeadSelfAttention(
                dim, num_heads, head_dim, attn_drop=attn_drop, proj_drop=proj_drop
            )
        if self.mlp.fc1.out_features != mlp_dim:  # int(dim * mlp_dim / dim) rounded down
            self.mlp = Mlp(dim, hidden_features=mlp_dim, act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: Tensor, return_attn: bool = False) -> tuple[Tensor, Tensor | None]:  # type: ignore[override]
        """``(timm Block output, the attention weights if return_attn else None)``."""
        attn = self.attn.attention_weights(self.norm1(x)) if return_attn else None
        return super().forward(x), attn


def _fusion_geometry(src: int, dst: int, kernel: int) -> tuple[int, int, int]:
    """Stride and (left, right) zero padding so that unfolding ``src`` positions gives ``dst`` blocks."""
    stride = max(1, src // dst)
    total = max(0, (dst - 1) * stride + kernel - src)
    return stride, total // 2, total - total // 2


def _blocks(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """Rows ``Vec`` of every ``K x K`` block of the padded grid ``x`` (B, c, H, W): ``(B*h'*w', c*K*K)``.

    Row order ``(b, i, j)`` (token order of the coarser stream), column order ``(c, ky, kx)`` (the order of
    ``nn.Unfold`` and of a conv weight flattened from dim 1). The strided window view is copied once.
    """
    (kh, kw), (sh, sw), (h2, w2) = kernel, stride, out_hw
    win = x.unfold(2, kh, sh).unfold(3, kw, sw)[:, :, :h2, :w2]  # (B, c, h', w', K, K), a view
    return win.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


class _BlockLinear(torch.autograd.Function):
    """``out[b, i] = Vec(block_i(x_b)) @ W.flatten(1).T + bias`` as one matmul; saves ``x`` and ``W`` only.

    Forward: the blocks are copied out of the padded grid and multiplied with the weight viewed as
    ``(c', c*K*K)`` (no copy of the weight). Backward recomputes the blocks (a copy, no FLOPs) for the weight
    gradient and folds the blocks' gradient back onto the grid (``F.fold``, the adjoint of the unfold), so
    activation memory is the padded grid, as with the conv, instead of the ``K*K``-fold unfold.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor, bias: Tensor, stride: tuple[int, int], out_hw: tuple[int, int]
    ):  # type: ignore[override]
        kernel = (weight.shape[2], weight.shape[3])
        out = torch.addmm(bias, _blocks(x, kernel, stride, out_hw), weight.flatten(1).t())
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.out_hw = stride, out_hw
        return out.view(x.shape[0], out_hw[0] * out_hw[1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        (sh, sw), (h2, w2) = ctx.stride, ctx.out_hw
        kernel = (weight.shape[2], weight.shape[3])
        g = grad.reshape(-1, weight.shape[0]).to(weight.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            gb = (g @ weight.flatten(1)).view(x.shape[0], h2, w2, -1)  # (B, h', w', c*K*K)
            oh = (x.shape[2] - kernel[0]) // sh + 1
            ow = (x.shape[3] - kernel[1]) // sw + 1
            if (oh, ow) != (h2, w2):  # blocks cropped in forward get a zero gradient
                gb = F.pad(gb, (0, 0, 0, ow - w2, 0, oh - h2))
            gb = gb.flatten(1, 2).transpose(1, 2)  # (B, c*K*K, oh*ow), F.fold's layout
            grad_x = F.fold(gb, (x.shape[2], x.shape[3]), kernel, stride=(sh, sw)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ _blocks(x, kernel, (sh, sw), (h2, w2))).view_as(weight)
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None


class StreamFusion(nn.Module):
    """Eq. 9 / 15: ``Y^i += Vec(unfold_K(X))^i W + b`` for every token i of the coarser stream.

    The finer stream's tokens ``(B, h*w, c)`` are put back on their ``h x w`` grid; around each of the
    ``h' x w'`` positions of the coarser grid a ``K x K`` block of finer tokens (zero padded at the border)
    is flattened and projected to ``c'``. The parameters are those of a ``Conv2d(c, c', K)`` with stride
    ``h // h'`` (the same linear map as ``nn.Unfold(K)`` followed by ``nn.Linear(K*K*c, c')``); the product
    runs as one matmul of the unfolded blocks (see the module docstring).

    Args:
        src_dim: width c of the finer stream.
        dst_dim: width c' of the coarser stream.
        kernel_size: K, the side of the unfolded block (see the module docstring for the choice of 8).
        norm: LayerNorm on the finer tokens before the projection (TNT's code does this).
        padding: ``"zeros"`` (``nn.Unfold``'s border, the paper) or ``"circular"`` (the grid wraps around:
            no implicit position from the border; see the module docstring).
    """

    def __init__(
        self,
        src_dim: int,
        dst_dim: int,
        kernel_size: int = 8,
        norm: bool = True,
        padding: Literal["zeros", "circular"] = "zeros",
    ) -> None:
        super().__init__()
        if padding not in ("zeros", "circular"):
            raise ValueError(f"fusion padding must be 'zeros' or 'circular', got {padding!r}")
        self.kernel_size = kernel_size
        self.padding = padding
        self.norm = nn.LayerNorm(src_dim) if norm else nn.Identity()
        self.proj = nn.Conv2d(src_dim, dst_dim, kernel_size)
        # ViT's trunc-normal(0.02) scaled by 1/K so a block of K*K tokens adds as much as one token would
        trunc_normal_(self.proj.weight, std=0.02 / kernel_size)
        nn.init.zeros_(self.proj.bias)

    def _pad(self, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        if self.padding == "zeros":
            return F.pad(x, pads)
        if max(pads[:2]) > x.shape[3] or max(pads[2:]) > x.shape[2]:
            raise ValueError(
                f"circular fusion padding {pads} is wider than the {x.shape[2]}x{x.shape[3]} token grid"
            )
        return F.pad(x, pads, mode="circular")

    def forward(self, src: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
        """Project ``src`` tokens ``(B, h*w, c)`` on ``src_grid`` to ``(B, h'*w', c')`` on ``dst_grid``."""
        b, n, c = src.shape
        (h, w), (h2, w2) = src_grid, dst_grid
        x = self.norm(src).transpose(1, 2).reshape(b, c, h, w)
        sh, top, bottom = _fusion_geometry(h, h2, self.kernel_size)
        sw, left, right = _fusion_geometry(w, w2, self.kernel_size)
        x = self._pad(x, (left, right, top, bottom))
        weight, bias = self.proj.weight, self.proj.bias
        dev = x.device.type
        if dev != "meta" and torch.is_autocast_enabled(
            dev
        ):  # what autocast does for F.linear, done before the Function
            dtype = torch.get_autocast_dtype(dev)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        return _BlockLinear.apply(x, weight, bias, (sh, sw), (h2, w2))

    def forward_conv(self, src: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
        """The same map as a ``K x K`` convolution (the former formulation; a reference)."""
        b, n, c = src.shape
        (h, w), (h2, w2) = src_grid, dst_grid
        x = self.norm(src).transpose(1, 2).reshape(b, c, h, w)
        sh, top, bottom = _fusion_geometry(h, h2, self.kernel_size)
        sw, left, right = _fusion_geometry(w, w2, self.kernel_size)
        x = self._pad(x, (left, right, top, bottom))
        x = F.conv2d(x, self.proj.weight, self.proj.bias, stride=(sh, sw))[:, :, :h2, :w2]
        return x.flatten(2).transpose(1, 2)

    def forward_unfold(self, src: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
        """The literal Eq. 9: ``nn.Unfold`` + ``Vec`` + ``Linear``; slow reference for the tests."""
        b, n, c = src.shape
        (h, w), (h2, w2) = src_grid, dst_grid
        x = self.norm(src).transpose(1, 2).reshape(b, c, h, w)
        sh, top, bottom = _fusion_geometry(h, h2, self.kernel_size)
        sw, left, right = _fusion_geometry(w, w2, self.kernel_size)
        x = self._pad(x, (left, right, top, bottom))
        oh = (x.shape[2] - self.kernel_size) // sh + 1
        ow = (x.shape[3] - self.kernel_size) // sw + 1
        blocks = F.unfold(x, self.kernel_size, stride=(sh, sw))  # (B, c*K*K, oh*ow): Vec of each block
        blocks = blocks.view(b, -1, oh, ow)[:, :, :h2, :w2].flatten(2).transpose(1, 2)
        return blocks @ self.proj.weight.flatten(1).t() + self.proj.bias


class FFTBlock(nn.Module):
    """One FFT block (Eq. 18): ``X_l, Y_l, Z_l = FFT(X_{l-1}, Y_{l-1}, Z_{l-1})`` for 1 to 3 streams.

    Streams are ordered fine to coarse (Inner, Middle, Outer); the last one carries the class token at
    index 0. Each stream but the first first receives the fused output of the previous stream (Eq. 9/15),
    then runs its transformer layer.

    Args:
        dims: width of each stream.
        num_heads: attention heads (all streams).
        head_dim: width of each head.
        mlp_dim: MLP hidden width (all streams).
        fusion_kernel: K of the unfold in Eq. 9/15.
        fusion_norm: LayerNorm before the fusion projection.
        fusion_padding: border of the fusion's unfold, ``"zeros"`` (paper) or ``"circular"``.
        attn_drop: attention-weight dropout.
        proj_drop: projection/MLP dropout.
        drop_path: stochastic depth rate of this block.
    """

    def __init__(
        self,
        dims: list[int],
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        fusion_kernel: int = 8,
        fusion_norm: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        fusion_padding: Literal["zeros", "circular"] = "zeros",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(d, num_heads, head_dim, mlp_dim, attn_drop, proj_drop, drop_path) for d in dims
        )
        self.fusions = nn.ModuleList(
            StreamFusion(dims[i - 1], dims[i], fusion_kernel, fusion_norm, fusion_padding)
            for i in range(1, len(dims))
        )

    def forward(
        self, tokens: list[Tensor], grids: list[tuple[int, int]], return_attn: bool = False
    ) -> tuple[list[Tensor], Tensor | None]:
        """Run every stream; returns the new token lists and, if asked, the last stream's attention."""
        last = len(tokens) - 1
        out: list[Tensor] = []
        attn = None
        for i, (layer, x) in enumerate(zip(self.layers, tokens)):
            if i > 0:
                fused = self.fusions[i - 1](out[i - 1], grids[i - 1], grids[i])
                x = torch.cat([x[:, :1], x[:, 1:] + fused], dim=1) if i == last else x + fused
            x, a = layer(x, return_attn=return_attn and i == last)
            out.append(x)
            attn = a if i == last else attn
        return out, attn


def grid_of(size: tuple[int, int], patch: int) -> tuple[int, int]:
    """Token grid of a ``size`` map cut into ``patch x patch`` patches (the border is zero padded)."""
    return math.ceil(size[0] / patch), math.ceil(size[1] / patch)
