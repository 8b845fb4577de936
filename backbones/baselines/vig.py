"""Vision GNN (Han et al. 2022, "Vision GNN: An Image is Worth Graph of Nodes"), the MSF-CA paper's
Table VIII comparison row "ViG-B" (also in its Grad-CAM and t-SNE figures).

Variant: isotropic ViG-B (16 blocks of width 640, 14 x 14 = 196 nodes at 224 px): 86.8 M / 17.7 G in the
ViG paper for 1,000 classes; with the ceramic set's 24 classes it has 85.8 M parameters (MSF-CA Table VIII:
85.841 M; tested within 0.1 %).

A stem of five 3x3 convs (four stride 2) turns the image into a grid of node features, plus a learned
position embedding. Each block is a *Grapher* (1x1 conv + BN, a dynamic k-NN graph over the nodes, a
max-relative graph convolution ``[x_i, max_j (x_j - x_i)]`` -> grouped 1x1 conv + BN + GELU, 1x1 conv + BN,
residual) followed by an FFN (1x1 convs with BN, 4x, residual). The neighbour count grows linearly from
k = 9 to 18 over the blocks (truncated to integers) and block ``i`` uses dilation ``i // 4 + 1`` (dilated
k-NN: the ``k x d`` nearest, every ``d``-th), as in the ViG reference; the k-NN runs on
L2-normalised features, with the node itself included.
The graph is built for the whole batch by one distance matmul and one ``topk``: no Python
loop over nodes or images. At inputs smaller than 224 px (fewer nodes than ``k x d``), ``k x d`` is capped
at the number of nodes (ours: the reference assumes 196 nodes) and the position embedding is resized
bicubically.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, calculate_drop_path_rates, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from backbones._factory import check_global_pool
from backbones.baselines._contract import BaselineContract, baseline_cfg, create


def knn_graph(x: Tensor, k: int, dilation: int) -> Tensor:
    """Indices ``(B, N, k)`` of each node's dilated k nearest nodes (L2-normalised features ``(B, N, C)``)."""
    x = F.normalize(x.detach(), dim=-1)
    dist = -2 * x @ x.transpose(1, 2) + (x * x).sum(-1, keepdim=True) + (x * x).sum(-1).unsqueeze(1)
    span = min(k * dilation, x.shape[1])
    idx = dist.topk(span, dim=-1, largest=False).indices
    return idx[:, :, ::dilation][:, :, :k]


class MRGraphConv(nn.Module):
    """Max-relative graph conv on a dynamic k-NN graph: ``[x_i, max_j (x_j - x_i)]`` -> conv + BN + GELU."""

    def __init__(self, dim: int, out_dim: int, k: int, dilation: int) -> None:
        super().__init__()
        self.k, self.dilation = k, dilation
        self.nn = nn.Sequential(nn.Conv2d(2 * dim, out_dim, 1, groups=4), nn.BatchNorm2d(out_dim), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        nodes = x.flatten(2)  # (B, C, N)
        idx = knn_graph(nodes.transpose(1, 2), self.k, self.dilation)  # (B, N, k)
        neighbours = _gather_neighbours(nodes, idx)  # (B, C, N, k)
        rel = (neighbours - nodes.unsqueeze(-1)).amax(dim=-1)  # (B, C, N)
        # channels interleaved [x_0, rel_0, x_1, rel_1, ...] as in the reference (it matters for groups=4)
        feat = torch.stack([nodes, rel], dim=2).reshape(b, 2 * c, h * w, 1)
        return self.nn(feat).reshape(b, -1, h, w)


def _gather_neighbours(nodes: Tensor, idx: Tensor) -> Tensor:
    """``out[b, c, n, j] = nodes[b, c, idx[b, n, j]]``: node features ``(B, C, N)``, indices ``(B, N, k)``."""
    b, c, n = nodes.shape
    flat = idx.reshape(b, 1, -1).expand(b, c, -1)
    return torch.gather(nodes, 2, flat).reshape(b, c, n, idx.shape[-1])


class Grapher(nn.Module):
    """1x1 conv + BN -> max-relative graph conv (2x width) -> 1x1 conv + BN, with a residual."""

    def __init__(self, dim: int, k: int, dilation: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim))
        self.graph_conv = MRGraphConv(dim, 2 * dim, k, dilation)
        self.fc2 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.fc2(self.graph_conv(self.fc1(x))))


class FFN(nn.Module):
    """1x1 conv + BN -> GELU -> 1x1 conv + BN (hidden ``4 dim``), with a residual."""

    def __init__(self, dim: int, hidden: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.BatchNorm2d(hidden))
        self.act = nn.GELU()
        self.fc2 = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.fc2(self.act(self.fc1(x))))


class ViG(BaselineContract, nn.Module):
    """Isotropic Vision GNN: conv stem (/16) + position embedding, ``depth`` x (Grapher, FFN), conv head.

    Args:
        num_classes: classifier outputs (0: no classifier).
        in_chans: input channels.
        dim: node feature width (ViG-B: 640).
        depth: number of Grapher + FFN blocks.
        k: neighbours of the first block (the last has ``2 k``).
        img_size: size the position embedding is made for (14 x 14 nodes at 224).
        drop_rate: dropout in the head.
        drop_path_rate: stochastic depth, linear over blocks.
    """

    no_weight_decay_names = ("pos_embed",)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        dim: int = 640,
        depth: int = 16,
        k: int = 9,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        check_global_pool("ViG", global_pool, num_classes, self.pool_kinds)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = dim
        self.head_hidden_size = 1024
        self.grad_checkpointing = False
        widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        stem: list[nn.Module] = []
        for i in range(4):
            stem += [
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1),
                nn.BatchNorm2d(widths[i + 1]),
            ]
            stem.append(nn.GELU())
        stem += [nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim)]
        self.stem = nn.Sequential(*stem)
        grid = img_size // 16
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, grid, grid))
        ks = [k + (k * i) // (depth - 1) if depth > 1 else k for i in range(depth)]  # int(linspace(k, 2k))
        max_dilation = max(1, grid * grid // max(ks))
        rates = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(
                    Grapher(dim, ks[i], min(i // 4 + 1, max_dilation), rates[i]), FFN(dim, 4 * dim, rates[i])
                )
                for i in range(depth)
            )
        )
        self.feature_info = [{"num_chs": dim, "reduction": 16, "module": f"blocks.{i}"} for i in range(depth)]
        self.head_hidden = nn.Sequential(
            nn.Conv2d(dim, 1024, 1), nn.BatchNorm2d(1024), nn.GELU(), nn.Dropout(drop_rate)
        )
        self.head = nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d | nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _embed(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        pos = self.pos_embed
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
        return x + pos

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._embed(x)
        for blk in self.blocks:
            x = self.checkpointed(blk, x)
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
        """timm's intermediate-feature API: the node map after each selected block (NCHW)."""
        if output_fmt != "NCHW":
            raise ValueError("ViG intermediates are NCHW only")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._embed(x)
        intermediates = []
        for i, blk in enumerate(self.blocks):
            if stop_early and i > max_index:
                break
            x = self.checkpointed(blk, x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if not self.global_pool:  # "": the unpooled node map, no head (timm's convention, num_classes=0)
            return x
        x = self.head_hidden(F.adaptive_avg_pool2d(x, 1)).flatten(1)
        return x if pre_logits else self.head(x)


default_cfgs = generate_default_cfgs(
    {
        "vig_b_224": baseline_cfg("stem.0", pool_size=(14, 14)),  # forward_features: the 14 x 14 node map
    }
)


@register_model
def vig_b_224(pretrained: bool = False, **kwargs: Any) -> ViG:
    """Isotropic ViG-B (85.8 M parameters at 24 classes, MSF-CA Table VIII)."""
    return create(
        ViG,
        "vig_b_224",
        pretrained,
        features="isotropic: every block works at one scale (1/16), there is no pyramid",
        **kwargs,
    )
