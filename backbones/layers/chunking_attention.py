"""Spatial (PA), channel (CA) and combined (PCA) chunking attention of the MSF-CA paper (Eq. 9-16).

Paper: Zhuang, Xu, Xia, Li, Zhang, "Ceramic Microscope Image Classification Based on Multi-Scale Fusion
Bottleneck Structure and Chunking Attention Mechanism", Sec. III-B and III-C (Fig. 4-6).

Both modules split a tensor into sqrt(N) chunks of sqrt(N) elements (N = H*W spatial positions for PA, N = SC
channels for CA), pool every chunk into one "global abstract" key token, and let each chunk attend to the
sqrt(N) key tokens. Everything is computed with batched tensor ops (one ``scaled_dot_product_attention``
call over all chunks), so the cost is the paper's O(sqrt(N)^3 * d) instead of O(N^2 * d).

Choices the paper leaves open, and what we do (all checked against the paper's parameter/FLOP tables,
see ``backbones/msfca.py`` and ``docs/msfca.md``):

* **Eq. 11 / 15 contraction.** The score of chunk (i, j) has shape sqrt(N) x sqrt(N) (its elements x the
  key tokens) and is multiplied with the chunk's *own* values V^<i,j> (sqrt(N) elements x d). The key-token
  index is therefore contracted with the element index inside the chunk; this is well defined because a
  sqrt(N) grid of chunks has exactly as many chunks as each chunk has elements, and it is what Eq. 11, Eq. 15
  and the complexity analysis (Score in R^{Kh x Kw x sqrt(HW) x sqrt(HW)} times V in
  R^{Kh x Kw x sqrt(HW) x C}) state. We implement it literally.
* **PA reduction r** = 32 (the paper's r of Eq. 2; Q and K are C -> C/32, V is C -> C, all with bias). This
  gives exactly the paper's "+PA" parameter count (37.143 M). The Key bias is kept for that count although
  its gradient is zero by construction: it adds the same vector to every key token, which shifts all scores
  of a query equally, and the softmax over key tokens cancels the shift.
* **PA padding.** H and W are reflect-padded (mirror padding, Sec. III-B-2) to the next perfect squares,
  split as evenly as possible between the two borders (the extra row/column goes to the bottom/right).
  Q, K and V are computed on the padded map (this is what the paper's FLOP figures count: +1.951 G for
  "+PA" matches the 1x1 convs at 64x64 and 9x9 for the 56x56 and 7x7 maps) and the output is cropped back.
* **CA projection.** Eq. 13 lists three C -> SC convs, but the paper's parameter counts (+CA 49.966 M,
  versions A-D of Table VI) are reproduced exactly, to the parameter, only by ONE C -> SC 1x1 conv (with
  bias) shared by Query, Key and Value plus the SC -> C conv of Eq. 16; three separate convs would add
  about 26 M parameters to the +CA model. Default ``qkv="shared"``; ``qkv="separate"`` is the literal Eq. 13.
* **SC** is the smallest perfect square >= C (256 -> 256, 512 -> 529, 1024 -> 1024, 2048 -> 2116), as the
  text says ("the perfect square number greater than the original number of channels"), and again the
  parameter tables confirm it. The "4th-root grid" K_ch x K_cw of Eq. 14 is integral only when SC is a
  fourth power; we split the SC channels into sqrt(SC) contiguous chunks of sqrt(SC) channels, which for a
  fourth power is the paper's K_ch x K_cw block arrangement up to a fixed channel permutation that the
  surrounding learned 1x1 convs absorb.
* **Scales**: 1/sqrt(C/r) for PA (Eq. 11), 1/sqrt(H*W) for CA (Eq. 15).
* **Momentum** (Eq. 12): ``m = 0.5 * gamma / (1 + |gamma|) + 0.5``, one learnable scalar gamma per module,
  initialised to 0 (m = 0.5); ``Z = m * Y + (1 - m) * X``.
* All 1x1 convs are :class:`backbones.layers.pointwise.PointwiseConv2d` (``nn.Conv2d`` parameters; one
  matmul where the weight outweighs the map, which keeps them off PyTorch's slow CPU kernel).
* **PCA**: serial = CA(PA(x)) (spatial first: "further model the relationships between channels based on
  global spatial modeling"), parallel = PA(x) + CA(x) (point-wise sum, Sec. III-C).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.errors import ModelConfigError
from backbones.layers.pointwise import PointwiseConv2d

ChunkingKind = Literal["pa", "ca", "pca_serial", "pca_parallel"]


def ceil_sqrt(n: int) -> int:
    """Smallest integer k with k * k >= n."""
    k = math.isqrt(n)
    return k if k * k == n else k + 1


def _momentum(gamma: Tensor) -> Tensor:
    """Eq. 12: a learnable blend factor in (0, 1)."""
    return 0.5 * gamma / (1.0 + gamma.abs()) + 0.5


class SpatialChunkingAttention(nn.Module):
    """Spatial chunking attention PA (Eq. 9-12, Fig. 4).

    Args:
        channels: input/output channels C.
        reduction: r of Eq. 9 (Query and Key have C // r channels; paper: 32).
    """

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        qk = max(1, channels // reduction)
        self.query = PointwiseConv2d(channels, qk)
        self.key = PointwiseConv2d(channels, qk)
        self.value = PointwiseConv2d(channels, channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    @staticmethod
    def _to_chunks(t: Tensor, kh: int, kw: int) -> Tensor:
        """(B, C, kh*kh, kw*kw) -> (B, kh*kw patches, kh*kw positions, C)."""
        b, c = t.shape[:2]
        t = t.reshape(b, c, kh, kh, kw, kw)  # (b, c, patch row i, row in patch s, patch col j, col t)
        return t.permute(0, 2, 4, 3, 5, 1).reshape(b, kh * kw, kh * kw, c)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        kh, kw = ceil_sqrt(h), ceil_sqrt(w)  # K_h = sqrt(H), K_w = sqrt(W) after padding
        pad_h, pad_w = kh * kh - h, kw * kw - w
        top, left = pad_h // 2, pad_w // 2
        xp = F.pad(x, (left, pad_w - left, top, pad_h - top), mode="reflect") if pad_h or pad_w else x

        q = self._to_chunks(self.query(xp), kh, kw)  # (B, P, N, C/r)
        v = self._to_chunks(self.value(xp), kh, kw)  # (B, P, N, C)
        # Eq. 10: one key token per patch = the patch mean of Key -> (B, P, C/r), shared by all patches.
        k = F.avg_pool2d(self.key(xp), kernel_size=(kh, kw)).flatten(2).transpose(1, 2)
        k = k.unsqueeze(1).expand(-1, q.shape[1], -1, -1)
        y = F.scaled_dot_product_attention(q, k, v)  # Eq. 11 for every patch at once, scale 1/sqrt(C/r)

        y = y.reshape(b, kh, kw, kh, kw, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, kh * kh, kw * kw)
        y = y[:, :, top : top + h, left : left + w]  # merge patches by location, drop the padding
        m = _momentum(self.gamma).to(y.dtype)
        return m * y + (1.0 - m) * x  # Eq. 12


class ChannelChunkingAttention(nn.Module):
    """Channel chunking attention CA (Eq. 13-16, Fig. 5).

    Args:
        channels: input/output channels C.
        qkv: ``"shared"`` (default): one C -> SC conv gives Query, Key and Value (matches the paper's
            parameter tables); ``"separate"``: three C -> SC convs (literal Eq. 13).
    """

    def __init__(self, channels: int, qkv: Literal["shared", "separate"] = "shared") -> None:
        super().__init__()
        if qkv not in ("shared", "separate"):
            raise ModelConfigError(f"qkv must be 'shared' or 'separate', got {qkv!r}")
        self.chunks = ceil_sqrt(channels)
        self.sc = self.chunks * self.chunks
        self.qkv = qkv
        if qkv == "shared":
            self.proj = PointwiseConv2d(channels, self.sc)
        else:
            self.query = PointwiseConv2d(channels, self.sc)
            self.key = PointwiseConv2d(channels, self.sc)
            self.value = PointwiseConv2d(channels, self.sc)
        self.out = PointwiseConv2d(self.sc, channels)  # Eq. 16
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.chunks
        if self.qkv == "shared":
            q = k = v = self.proj(x).reshape(b, n, n, h * w)  # (B, chunk, channel in chunk, HW)
        else:
            q = self.query(x).reshape(b, n, n, h * w)
            k = self.key(x).reshape(b, n, n, h * w)
            v = self.value(x).reshape(b, n, n, h * w)
        # Eq. 14: one key token per chunk = the chunk's channel mean -> (B, sqrt(SC), HW).
        k = k.mean(dim=2).unsqueeze(1).expand(-1, n, -1, -1)
        y = F.scaled_dot_product_attention(q, k, v)  # Eq. 15, scale 1/sqrt(HW)
        y = self.out(y.reshape(b, self.sc, h, w))  # merge chunks by channel, Eq. 16
        m = _momentum(self.gamma).to(y.dtype)
        return m * y + (1.0 - m) * x


class PCA(nn.Module):
    """PA and CA combined in series (CA after PA) or in parallel (summed), Fig. 6 (b)/(c).

    Args:
        channels: input/output channels.
        mode: ``"serial"`` or ``"parallel"``.
        pa_reduction: r of PA.
        ca_qkv: CA projection layout (see :class:`ChannelChunkingAttention`).
    """

    def __init__(
        self,
        channels: int,
        mode: Literal["serial", "parallel"] = "serial",
        pa_reduction: int = 32,
        ca_qkv: Literal["shared", "separate"] = "shared",
    ) -> None:
        super().__init__()
        if mode not in ("serial", "parallel"):
            raise ModelConfigError(f"PCA mode must be 'serial' or 'parallel', got {mode!r}")
        self.mode = mode
        self.pa = SpatialChunkingAttention(channels, reduction=pa_reduction)
        self.ca = ChannelChunkingAttention(channels, qkv=ca_qkv)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "serial":
            return self.ca(self.pa(x))
        return self.pa(x) + self.ca(x)


def create_chunking_attention(
    kind: ChunkingKind,
    channels: int,
    pa_reduction: int = 32,
    ca_qkv: Literal["shared", "separate"] = "shared",
) -> nn.Module:
    """Build PA, CA or PCA (serial / parallel) for ``channels`` channels."""
    if kind == "pa":
        return SpatialChunkingAttention(channels, reduction=pa_reduction)
    if kind == "ca":
        return ChannelChunkingAttention(channels, qkv=ca_qkv)
    if kind in ("pca_serial", "pca_parallel"):
        return PCA(channels, mode=kind.split("_")[1], pa_reduction=pa_reduction, ca_qkv=ca_qkv)  # type: ignore[arg-type]
    raise ModelConfigError(
        f"unknown chunking attention {kind!r}; choose one of pa, ca, pca_serial, pca_parallel"
    )
