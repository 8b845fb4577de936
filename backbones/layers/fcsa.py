"""FCSA: Fusion of Convolution and Self-Attention (ACmix design), computed without the 49x unfold.

Paper: Z. Tan, Z.-H. Xu, "ACANet: A Fine-grained Image Classification Optimization Method Based on
Convolution and Attention Fusion", Sec. 3.2, Eq. (5)-(11), Figs. 4-6. The module is the design of ACmix
(X. Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022,
``LeapLabTHU/ACmix/ResNet/test_bottleneck.py``): stage I is three shared 1x1 projections q, k, v (Eq. 10);
stage II has two paths that reuse them:

* attention path (Eq. 9, 11): per head, local self-attention in a ``window x window`` neighbourhood
  (reflect padding) with a relative positional term: logits ``q_i . (k_j + pe_i - pe_j)`` where ``pe`` is
  a 1x1 conv of a 2-channel coordinate grid in [-1, 1]; ``q`` is scaled by ``head_dim ** -0.5``;
* convolution path (Eq. 5-8, Fig. 4): q, k, v viewed as ``3 * heads`` maps of ``head_dim`` channels, a
  1x1 "fc" mixes them into ``k_conv ** 2`` maps, and a grouped ``k_conv x k_conv`` conv initialised as
  shift kernels performs the shift-and-aggregate of Eq. 7-8;
* output ``rate1 * attention + rate2 * convolution``, both learnable scalars initialised to 0.5.

Efficient implementation (this file) - the function is ACmix's, the memory is not:

* ACmix unfolds k, v and the positional map into ``window**2`` copies (49x the feature map, kept for
  backward). Here the queries are cut into tiles of at most 14x14 and every tile attends to the halo of
  reflect-padded keys around it in one masked ``F.scaled_dot_product_attention`` call (the mask keeps
  each query's ``window x window`` neighbourhood), so activation memory is a few copies of the map (the
  halo is at most 2x a tile) instead of O(window**2*C*H*W), and the work runs in one fused kernel. (The
  previous formulation, a Python loop over the 49 offsets with custom autograd functions, is kept as the
  reference in ``benchmarks/old_formulations.py``.)
* The positional term needs no per-offset tensor: ``q_i . pe_i`` is constant over the keys of query ``i``
  and cancels in the softmax, so the logits are ``q_i . (k_j - pe_j)``: the keys are shifted once by the
  (bias-free) positional map before padding. At the border the reflect padding of ``k - pe`` uses the
  reflected coordinates, exactly as ACmix's padded ``pe``.
* The coordinate grid is created in the activations' dtype/device, so fp16/bf16 (autocast or ``.half()``)
  work (ACmix creates it in fp32 on the host: issues #7/#15/#18/#21).
* ``reset_parameters`` (shift kernels, rates 0.5) is the module's own; a model-level init loop must call
  it after any global init (ACANet does) so the shift initialisation is not overwritten.

Choices the paper leaves open (ours, from ACmix): ``heads=4``, attention window 7, conv kernel 3, the
attention stride is always 1 (ACANet strides in the ACCB before the FCSA). On maps smaller than the
window (e.g. 2x2 at the 64 px smoke-test size) reflect padding is impossible, so the window shrinks to the
largest odd size ``<= 2 * min(H, W) - 1`` (no parameters depend on the window size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.errors import ModelConfigError


def effective_window(window: int, height: int, width: int) -> int:
    """Largest odd window ``<= window`` whose reflect padding fits an ``height x width`` map."""
    return max(1, min(window, 2 * min(height, width) - 1))


def coordinate_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """ACmix's ``position()``: ``(1, 2, H, W)``, channel 0 the x (width) and channel 1 the y coordinate."""
    loc_w = torch.linspace(-1.0, 1.0, width, device=device).unsqueeze(0).expand(height, width)
    loc_h = torch.linspace(-1.0, 1.0, height, device=device).unsqueeze(1).expand(height, width)
    return torch.stack([loc_w, loc_h]).unsqueeze(0).to(dtype)


def _reflect_pad(x: Tensor, pad: int) -> Tensor:
    return F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x


#: Largest side of a query tile of :func:`local_window_attention` (two 7x7 windows: the halo of keys
#: around a tile is at most ``(14 + 6) ** 2 / 14 ** 2 = 2x`` the tile, the masked logits ``400 / 49``).
MAX_TILE = 14


def _tiles(n: int) -> tuple[int, int]:
    """Number and side of the query tiles covering ``n`` positions (as even as possible, side <= MAX_TILE)."""
    count = -(-n // MAX_TILE)
    return count, -(-n // count)


def window_mask(tile_h: int, tile_w: int, window: int, device: torch.device) -> Tensor:
    """``(tile_h*tile_w, halo_h*halo_w)`` bool: query ``(a, b)`` of a tile sees halo key ``(y, x)`` iff
    ``0 <= y - a < window`` and ``0 <= x - b < window`` (its ``window x window`` neighbourhood)."""
    halo_h, halo_w = tile_h + window - 1, tile_w + window - 1
    qy = torch.arange(tile_h, device=device).view(-1, 1, 1, 1)
    qx = torch.arange(tile_w, device=device).view(1, -1, 1, 1)
    ky = torch.arange(halo_h, device=device).view(1, 1, -1, 1)
    kx = torch.arange(halo_w, device=device).view(1, 1, 1, -1)
    mask = (ky - qy >= 0) & (ky - qy < window) & (kx - qx >= 0) & (kx - qx < window)
    return mask.reshape(tile_h * tile_w, halo_h * halo_w)


def local_window_attention(q: Tensor, k: Tensor, v: Tensor, pos_weight: Tensor, window: int) -> Tensor:
    """ACmix's local attention with relative coordinate encoding, as one masked attention over tiles.

    ACmix's logits are ``q_i . (k_j + pe_i - pe_j)``. The term ``q_i . pe_i`` is the same for every key
    ``j`` of query ``i``, so the softmax cancels it: the attention equals ``softmax_j(q_i . (k_j - pe_j))``.
    With ``pe = W_p loc`` (a 1x1 conv of the coordinate grid; ACmix's bias cancels the same way), the keys
    are shifted once by ``-pe`` and no positional tensor per offset is needed. Reflect padding of
    ``k - pe`` gives the reflected coordinates at the border, exactly as ACmix pads ``pe``.

    The queries are cut into tiles of at most ``MAX_TILE x MAX_TILE``; each tile attends to the
    ``(tile + window - 1)**2`` halo of the reflect-padded keys around it through one
    ``F.scaled_dot_product_attention`` call over all tiles, with a boolean mask that keeps exactly each
    query's ``window x window`` neighbourhood (the same mask for every tile). The map is zero padded at the
    bottom/right to whole tiles; the extra queries (whose masks reach only the extra keys) are cropped.
    The fused kernel keeps no attention matrix: saved for backward are the tiled queries, the halo keys
    and values (at most 2x the map each) and the output.

    Args:
        q: scaled queries ``(B*heads, head_dim, H, W)``.
        k: keys, same shape.
        v: values, same shape.
        pos_weight: the positional 1x1 conv's kernel as a ``(head_dim, 2)`` matrix.
        window: odd attention window (already adapted to the map size).

    Returns:
        ``(B*heads, head_dim, H, W)``.
    """
    bh, d, h, w = q.shape
    grid = coordinate_grid(h, w, q.device, q.dtype)
    pe = F.conv2d(grid, pos_weight.to(q.dtype)[:, :, None, None])  # (1, head_dim, H, W)
    pad = window // 2
    (nh, th), (nw, tw) = _tiles(h), _tiles(w)
    extra_h, extra_w = nh * th - h, nw * tw - w
    halo_h, halo_w = th + 2 * pad, tw + 2 * pad

    def halo(t: Tensor) -> Tensor:  # (BH, d, H+2p+e, W+2p+e) -> (BH, tiles, halo_h*halo_w, d)
        t = F.pad(_reflect_pad(t, pad), (0, extra_w, 0, extra_h))
        t = t.unfold(2, halo_h, th).unfold(3, halo_w, tw)  # (BH, d, nh, nw, halo_h, halo_w), a view
        return t.permute(0, 2, 3, 4, 5, 1).reshape(bh, nh * nw, halo_h * halo_w, d)

    qt = F.pad(q, (0, extra_w, 0, extra_h)).reshape(bh, d, nh, th, nw, tw)
    qt = qt.permute(0, 2, 4, 3, 5, 1).reshape(bh, nh * nw, th * tw, d)
    mask = window_mask(th, tw, window, q.device)
    out = F.scaled_dot_product_attention(qt, halo(k - pe), halo(v.to(q.dtype)), attn_mask=mask, scale=1.0)
    out = out.reshape(bh, nh, nw, th, tw, d).permute(0, 5, 1, 3, 2, 4).reshape(bh, d, nh * th, nw * tw)
    return out[:, :, :h, :w].to(v.dtype)


class FCSA(nn.Module):
    """Fusion of Convolution and Self-Attention (ACmix), efficient, any float dtype, stride 1.

    Parameter names follow ACmix (``conv1/2/3`` = q/k/v projections, ``conv_p``, ``fc``, ``dep_conv``,
    ``rate1``, ``rate2``) so the reference implementation in the tests reads like the original. The
    attention path calls ``self.local_attention`` (:func:`local_window_attention`), a class attribute
    so that a reference formulation can be set on one instance (``benchmarks/old_formulations.py``).

    Args:
        in_channels: input channels.
        out_channels: output channels (divisible by ``heads``).
        heads: attention heads (ACmix: 4).
        window: attention window (ACmix ``kernel_att``: 7).
        kernel_conv: kernel of the shift-aggregation convolution (ACmix: 3).
    """

    def __init__(
        self, in_channels: int, out_channels: int, heads: int = 4, window: int = 7, kernel_conv: int = 3
    ) -> None:
        super().__init__()
        if out_channels % heads:
            raise ModelConfigError(f"FCSA out_channels ({out_channels}) must be divisible by heads ({heads})")
        if window % 2 != 1 or kernel_conv % 2 != 1:
            raise ModelConfigError(f"FCSA window ({window}) and kernel_conv ({kernel_conv}) must be odd")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.heads, self.window, self.kernel_conv = heads, window, kernel_conv
        self.head_dim = out_channels // heads
        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1)
        # ACmix's conv_p has a bias, but it cancels in pe_i - pe_j: dropped so that no parameter is
        # unused (DDP) and the function is unchanged.
        self.conv_p = nn.Conv2d(2, self.head_dim, 1, bias=False)
        self.fc = nn.Conv2d(3 * heads, kernel_conv * kernel_conv, 1, bias=False)
        self.dep_conv = nn.Conv2d(
            kernel_conv * kernel_conv * self.head_dim,
            out_channels,
            kernel_conv,
            padding=kernel_conv // 2,
            groups=self.head_dim,
            bias=True,
        )
        self.reset_parameters()

    local_attention = staticmethod(local_window_attention)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ACmix init: rates 0.5, ``dep_conv`` as shift kernels (input i one-hot at ``divmod(i, k)``)."""
        self.rate1.fill_(0.5)
        self.rate2.fill_(0.5)
        k = self.kernel_conv
        shift = torch.zeros(k * k, k, k, device=self.dep_conv.weight.device, dtype=self.dep_conv.weight.dtype)
        for i in range(k * k):
            shift[i, i // k, i % k] = 1.0
        self.dep_conv.weight.copy_(shift.unsqueeze(0).expand_as(self.dep_conv.weight))
        self.dep_conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        b, c, h, w = q.shape
        heads, head_dim = self.heads, self.head_dim

        # attention path
        window = effective_window(self.window, h, w)
        scaling = float(head_dim) ** -0.5
        out_att = self.local_attention(
            q.reshape(b * heads, head_dim, h, w) * scaling,
            k.reshape(b * heads, head_dim, h, w),
            v.reshape(b * heads, head_dim, h, w),
            self.conv_p.weight[:, :, 0, 0],
            window,
        ).reshape(b, c, h, w)

        # convolution path (shift aggregation)
        f_all = self.fc(
            torch.cat(
                [t.reshape(b, heads, head_dim, h * w) for t in (q, k, v)],
                dim=1,
            )
        )  # (B, k_conv**2, head_dim, H*W)
        f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, h, w)
        out_conv = self.dep_conv(f_conv)
        return self.rate1 * out_att + self.rate2 * out_conv

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, heads={self.heads}, window={self.window}"


def fcsa_unfold_reference(module: FCSA, x: Tensor) -> Tensor:
    """ACmix's forward, line by line (unfold of k, v and pe over the window): the slow reference.

    Used by the tests (equality with :meth:`FCSA.forward`) and by ``benchmarks/bench_acanet.py``
    (speed/memory baseline). Stride 1, float32 positional grid created like ACmix (then cast to ``x``'s
    dtype so the reference also runs in the tests' dtypes).
    """
    m = module
    q, k, v = m.conv1(x), m.conv2(x), m.conv3(x)
    scaling = float(m.head_dim) ** -0.5
    b, c, h, w = q.shape
    kernel_att = effective_window(m.window, h, w)
    pad = kernel_att // 2
    pad_att = nn.ReflectionPad2d(pad)
    unfold = nn.Unfold(kernel_size=kernel_att, padding=0, stride=1)

    loc_w = torch.linspace(-1.0, 1.0, w).unsqueeze(0).repeat(h, 1)
    loc_h = torch.linspace(-1.0, 1.0, h).unsqueeze(1).repeat(1, w)
    loc = torch.cat([loc_w.unsqueeze(0), loc_h.unsqueeze(0)], 0).unsqueeze(0).to(x.device, q.dtype)
    pe = m.conv_p(loc)

    q_att = q.view(b * m.heads, m.head_dim, h, w) * scaling
    k_att = k.view(b * m.heads, m.head_dim, h, w)
    v_att = v.view(b * m.heads, m.head_dim, h, w)
    q_pe = pe
    n = kernel_att * kernel_att
    unfold_k = unfold(pad_att(k_att)).view(b * m.heads, m.head_dim, n, h, w)
    unfold_rpe = unfold(pad_att(pe)).view(1, m.head_dim, n, h, w)
    att = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_rpe)).sum(1)
    att = torch.softmax(att, dim=1)
    out_att = unfold(pad_att(v_att)).view(b * m.heads, m.head_dim, n, h, w)
    out_att = (att.unsqueeze(1) * out_att).sum(2).view(b, m.out_channels, h, w)

    f_all = m.fc(
        torch.cat(
            [
                q.view(b, m.heads, m.head_dim, h * w),
                k.view(b, m.heads, m.head_dim, h * w),
                v.view(b, m.heads, m.head_dim, h * w),
            ],
            1,
        )
    )
    f_conv = f_all.permute(0, 2, 1, 3).reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])
    out_conv = m.dep_conv(f_conv)
    return m.rate1 * out_att + m.rate2 * out_conv
