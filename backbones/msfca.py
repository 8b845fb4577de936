"""MSF-CA ResNet-50: multi-scale fusion bottleneck + chunking attention (ceramic microscopy paper).

Paper: Zhihuang Zhuang, Xing Xu, Xuwen Xia, Yuanxiang Li, Yinglong Zhang, "Ceramic Microscope Image
Classification Based on Multi-Scale Fusion Bottleneck Structure and Chunking Attention Mechanism".

One class, :class:`MSFCAResNet` (a subclass of timm's ``ResNet``, so stem/stage/head names,
``forward_features``,
``forward_head``, ``reset_classifier`` and ``feature_info`` are timm's), with the paper's ablations as
constructor arguments:

* ``bottleneck="standard"``: the ResNet-50 bottleneck; ``"msf"``: the multi-scale fusion bottleneck
  (:class:`MSFBottleneck`, Algorithm 2, Eq. 5-6, Fig. 3) with cross-scale coordinate attention
  (:class:`backbones.layers.cross_scale_attention.CrossScaleCoordAttention`, Algorithm 1, Eq. 1-4).
* ``attention``: ``"none"``, ``"pa"``, ``"ca"``, ``"pca_serial"``, ``"pca_parallel"`` (Eq. 9-16,
  :mod:`backbones.layers.chunking_attention`), embedded in every bottleneck of the stages selected by
  ``version`` (Table VII): A = stages 1-4, B = 1 and 4 (the paper's main model), C = 2-4, D = 4.

Every choice the paper leaves open was settled against its parameter and FLOP tables (24 classes, 224x224,
FLOPs = multiply-accumulates counted like ``thop``: convs + linear + 2 per BatchNorm element, no matmuls).
The reconstruction reproduces every parameter count of Tables I, II, IV and VI to within 0.01 %:

1. **Where the chunking attention sits.** One module per bottleneck, at the block's output width 4*planes
   (``+PA`` = 23.557 + 3 x PA(256) + 3 x PA(2048) = 37.143 M exactly; one module per stage would give a
   third of that). Inside the block we put it after the last BN, before the residual sum (the SE position;
   ``attn_position="post"`` puts it after the residual ReLU instead, which has the same cost).
2. **PA**: Q, K = C -> C/32, V = C -> C, biases, on the reflect-padded map (56 -> 64, 28 -> 36, 14 -> 16,
   7 -> 9): the FLOP deltas of "+PA" (1.951 G) and of versions A/C/D match the 1x1 convs on the padded maps.
3. **CA**: one C -> SC projection shared by Q, K, V plus the SC -> C conv of Eq. 16, SC = the smallest perfect
   square >= C (2 * C * SC + SC + C parameters per module); this reproduces +CA (49.966 M) and versions A-D
   (86.125 / 63.551 / 85.521 / 62.947 M) to the parameter; three C -> SC convs (literal Eq. 13) would not.
4. **MSF bottleneck width**: the split width is Res2Net's ``floor(planes * 26 / 64)`` with s = 4 (the
   paper cites Res2Net [25] and shows s = 4), so conv1 is in -> 4w and conv3 is (3s - 2) w = 10 w -> 4 planes.
5. **Cross-scale attention**: one module per adjacent pair (s - 1 = 3 per block) used for both directions,
   Phi(y_{i-1}, y_i) and Phi(y_i, y_{i-1}); squeezed width max(8, w // 32). Separate modules per direction
   (``share_pair_attention=False``) add 0.12 M (36.22 M instead of 36.10 M).
6. **MSF trunk = Res2Net-v1b**: the "+Cross Scale" model (36.100 M, 6.535 G) is matched exactly only with the
   Res2Net-v1b trunk that the official Res2Net code ships: a deep stem (3x3 convs 3-32-32-64) and average-
   pool shortcuts. With the 7x7 stem the same blocks give 36.081 M / 6.295 G; the deep stem adds exactly
   the missing 0.019 M and 0.240 G. So ``stem_type``/``avg_down`` default to the deep stem + avg-down for
   ``bottleneck="msf"`` and to the plain ResNet-50 stem (23.557 M / 4.109 G) for ``"standard"``.
7. **Stride**: as in Res2Net, the first block of every stage is a "stage" block: its three 3x3 convs take
   their own splits (no y_{i-1} + x_i chaining, which is impossible across a stride) with the stage stride,
   and the untouched last split is average-pooled (3x3, stride, padding 1). Other blocks chain (Eq. 5).
8. Conv init: kaiming-normal (fan-out) as in the official ResNet/Res2Net code; the last BN of each block is
   *not* zero-initialised by default (neither official code does; ``zero_init_last=True`` enables it).

With ``torch.utils.flop_counter`` (which also counts the attention matmuls but not BN) our MACs are within
3 % of every FLOP figure of the paper; the exact figures are in ``docs/msfca.md`` and the tests.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet
from torch import Tensor, nn

from backbones import _factory
from backbones.errors import ModelConfigError
from backbones.layers.chunking_attention import create_chunking_attention
from backbones.layers.cross_scale_attention import CrossScaleCoordAttention
from backbones.layers.pointwise import PointwiseConv2d, as_pointwise

__all__ = ["MSFBottleneck", "ChunkBottleneck", "MSFCAResNet", "VERSION_STAGES"]

#: Table VII: stages (1-based) that carry chunking attention in each embedding version.
VERSION_STAGES: dict[str, tuple[int, ...]] = {"A": (1, 2, 3, 4), "B": (1, 4), "C": (2, 3, 4), "D": (4,)}

AttentionKind = Literal["none", "pa", "ca", "pca_serial", "pca_parallel"]


class ChunkBottleneck(Bottleneck):
    """timm's ResNet bottleneck with an optional chunking attention module ``chunk_attn``.

    The module is attached by :class:`MSFCAResNet` (``None`` otherwise) and applied after ``bn3`` (before the
    residual sum) or, with ``chunk_attn_position="post"``, after the block's final ReLU.

    Its 1x1 convs (``conv1``, ``conv3`` and the shortcut's) are :class:`PointwiseConv2d` (same parameters
    and ``state_dict``; see :func:`_pointwise_shortcut`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conv1 = as_pointwise(self.conv1)
        self.conv3 = as_pointwise(self.conv3)
        _pointwise_shortcut(self.downsample)
        self.chunk_attn: nn.Module | None = None
        self.chunk_attn_position = "block"

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.conv2(x)
        x = self.act2(self.drop_block(self.bn2(x)))
        x = self.aa(x)
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.chunk_attn is not None and self.chunk_attn_position == "block":
            x = self.chunk_attn(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x = self.act3(x + shortcut)
        if self.chunk_attn is not None and self.chunk_attn_position == "post":
            x = self.chunk_attn(x)
        return x


def _pointwise_shortcut(downsample: nn.Module | None) -> None:
    """Make the shortcut's plain 1x1 conv (timm's average-pool shortcut ``downsample.1``) a
    :class:`PointwiseConv2d`, in place.

    PyTorch sends a 1x1 stride-1 conv at batch < 16 on one CPU thread to ``aten::_slow_conv2d``, which is
    slow when the weight outweighs the input (the deep stages at small inputs; see
    :mod:`backbones.layers.pointwise`). Strided shortcut convs take the fast kernels already.
    """
    if isinstance(downsample, nn.Sequential):
        for i, layer in enumerate(downsample):
            downsample[i] = as_pointwise(layer)


class MSFBottleneck(nn.Module):
    """Multi-scale fusion bottleneck (Algorithm 2, Eq. 5-6, Fig. 3).

    1x1 conv to ``scale * width``; split into ``scale`` parts; chained 3x3 convs on the first ``scale - 1``
    parts (Eq. 5); cross-scale coordinate attention between adjacent scales in both directions (Eq. 6);
    concatenation of the ``3 * scale - 2`` maps [y1, z12, z21, y2, z23, z32, y3, z34, z43, x4] (Alg. 2 line
    19 for s = 4); 1x1 conv back to ``4 * planes``; BN; residual; ReLU. Parameter names follow timm's
    ``Bottle2neck`` (conv1, bn1, convs, bns, conv3, bn3, downsample), so Res2Net-50 weights load into the
    unchanged parts.

    Args:
        inplanes: input channels.
        planes: bottleneck planes; output has ``4 * planes`` channels.
        stride: stride of the 3x3 convs (first block of a stage).
        downsample: shortcut projection (built by timm's ``make_blocks``).
        cardinality: groups of the 3x3 convs (1 in the paper).
        base_width: split width is ``floor(planes * base_width / 64) * cardinality`` (Res2Net: 26).
        scale: number of splits s (paper: 4).
        csa_reduction: r of the cross-scale attention (paper: 32).
        csa_min_channels: lower bound of the cross-scale attention's squeezed width.
        share_pair_attention: one cross-scale attention module per adjacent pair, used in both directions.
        dilation: dilation of the 3x3 convs.
        first_dilation: dilation of the first block.
        act_layer: activation class.
        norm_layer: normalisation class.
        drop_block: optional DropBlock factory.
        drop_path: optional DropPath module.
        device: parameter device.
        dtype: parameter dtype.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        base_width: int = 26,
        scale: int = 4,
        csa_reduction: int = 32,
        csa_min_channels: int = 8,
        share_pair_attention: bool = True,
        dilation: int = 1,
        first_dilation: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        drop_block: Any = None,
        drop_path: nn.Module | None = None,
        device: Any = None,
        dtype: Any = None,
        **_: Any,
    ) -> None:
        super().__init__()
        if scale < 2:
            raise ModelConfigError(f"MSFBottleneck needs scale >= 2 (adjacent scales to fuse), got {scale}")
        dd = {"device": device, "dtype": dtype}
        width = int(math.floor(planes * (base_width / 64.0))) * cardinality
        outplanes = planes * self.expansion
        first_dilation = first_dilation or dilation
        self.scale = scale
        self.width = width
        self.is_first = stride > 1 or downsample is not None

        # 1x1 convs on the matmul fast path when weight-bound (backbones.layers.pointwise); nn.Conv2d params
        self.conv1 = PointwiseConv2d(inplanes, width * scale, bias=False, **dd)
        self.bn1 = norm_layer(width * scale, **dd)
        self.convs = nn.ModuleList(
            nn.Conv2d(
                width,
                width,
                3,
                stride=stride,
                padding=first_dilation,
                dilation=first_dilation,
                groups=cardinality,
                bias=False,
                **dd,
            )
            for _ in range(scale - 1)
        )
        self.bns = nn.ModuleList(norm_layer(width, **dd) for _ in range(scale - 1))
        # Res2Net "stage" block: the untouched last split is pooled to the strided size.
        self.pool = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1) if self.is_first else None
        n_attn = (scale - 1) if share_pair_attention else 2 * (scale - 1)
        self.share_pair_attention = share_pair_attention
        self.csa = nn.ModuleList(
            CrossScaleCoordAttention(width, reduction=csa_reduction, min_channels=csa_min_channels).to(**dd)
            for _ in range(n_attn)
        )
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.conv3 = PointwiseConv2d(width * (3 * scale - 2), outplanes, bias=False, **dd)
        self.bn3 = norm_layer(outplanes, **dd)
        self.relu = act_layer(inplace=True)
        self.downsample = downsample
        _pointwise_shortcut(self.downsample)
        self.drop_path = drop_path
        self.chunk_attn: nn.Module | None = None
        self.chunk_attn_position = "block"

    def zero_init_last(self) -> None:
        """Zero the last BN's weight (timm's ``zero_init_last`` hook)."""
        if getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def _fuse(self, pair: int, lower: Tensor, upper: Tensor) -> list[Tensor]:
        """Eq. 6: [Phi(y_{i-1}, y_i), Phi(y_i, y_{i-1})] for the adjacent pair ``pair``."""
        if self.share_pair_attention:
            fwd = bwd = self.csa[pair]
        else:
            fwd, bwd = self.csa[2 * pair], self.csa[2 * pair + 1]
        return [fwd(lower, upper), bwd(upper, lower)]

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        splits = torch.split(out, self.width, dim=1)

        pieces: list[Tensor] = []
        prev: Tensor | None = None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            inp = splits[i] if (i == 0 or self.is_first or prev is None) else prev + splits[i]
            cur = self.relu(bn(conv(inp)))  # Eq. 5, Alg. 2 lines 5-6 / 11-12
            if prev is not None:
                pieces += self._fuse(i - 1, prev, cur)  # Alg. 2 lines 7-8
            pieces.append(cur)
            prev = cur
        last = self.pool(splits[-1]) if self.pool is not None else splits[-1]  # y_s = x_s
        assert prev is not None
        pieces += self._fuse(self.scale - 2, prev, last)  # Alg. 2 lines 17-18
        pieces.append(last)

        out = self.drop_block(torch.cat(pieces, dim=1))  # 3s - 2 maps
        out = self.bn3(self.conv3(out))
        if self.chunk_attn is not None and self.chunk_attn_position == "block":
            out = self.chunk_attn(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out = self.relu(out + shortcut)
        if self.chunk_attn is not None and self.chunk_attn_position == "post":
            out = self.chunk_attn(out)
        return out


class MSFCAResNet(ResNet):
    """ResNet-50 with multi-scale fusion bottlenecks and chunking attention (MSF-CA, Fig. 6).

    Args:
        layers: blocks per stage (paper: 3, 4, 6, 3).
        channels: bottleneck planes per stage (paper: 64, 128, 256, 512; smaller values make tiny
            test models).
        bottleneck: ``"standard"`` ResNet bottleneck or ``"msf"`` multi-scale fusion bottleneck.
        attention: chunking attention embedded in the selected stages (``"none"`` for the bare trunk).
        version: embedding version of Table VII (A: all stages, B: 1 and 4, C: 2-4, D: 4).
        attn_stages: explicit 1-based stage list; overrides ``version``.
        attn_position: ``"block"`` (after the last BN, before the residual sum) or ``"post"``
            (after the block).
        num_classes: classifier outputs.
        in_chans: input channels.
        stem_type: ``"auto"`` (deep stem for MSF, 7x7 for standard; see module docstring, item 6),
            ``""`` (7x7 conv) or ``"deep"`` (3x3 convs 32-32-64).
        avg_down: average-pool shortcut; ``None`` = same rule as ``stem_type="auto"``.
        base_width: bottleneck width factor; ``None`` = 26 for MSF (Res2Net), 64 for standard.
        scale: MSF splits s (paper: 4).
        csa_reduction: cross-scale attention squeeze ratio r (paper: 32).
        csa_min_channels: lower bound of the cross-scale attention's squeezed width.
        share_pair_attention: one cross-scale attention per adjacent pair, used in both directions.
        pa_reduction: PA's Q/K squeeze ratio r (32).
        ca_qkv: ``"shared"`` (one C -> SC projection for Q, K, V) or ``"separate"`` (literal Eq. 13).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth.
        global_pool: timm pooling type.
        zero_init_last: zero-init the last BN of every residual branch.
        device: parameter device.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        channels: tuple[int, ...] = (64, 128, 256, 512),
        bottleneck: Literal["standard", "msf"] = "msf",
        attention: AttentionKind = "pca_parallel",
        version: Literal["A", "B", "C", "D"] = "B",
        attn_stages: tuple[int, ...] | None = None,
        attn_position: Literal["block", "post"] = "block",
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_type: Literal["auto", "", "deep"] = "auto",
        avg_down: bool | None = None,
        base_width: int | None = None,
        scale: int = 4,
        csa_reduction: int = 32,
        csa_min_channels: int = 8,
        share_pair_attention: bool = True,
        pa_reduction: int = 32,
        ca_qkv: Literal["shared", "separate"] = "shared",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        zero_init_last: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if bottleneck not in ("standard", "msf"):
            raise ModelConfigError(f"bottleneck must be 'standard' or 'msf', got {bottleneck!r}")
        if attention not in ("none", "pa", "ca", "pca_serial", "pca_parallel"):
            raise ModelConfigError(
                f"attention must be one of none, pa, ca, pca_serial, pca_parallel; got {attention!r}"
            )
        if attn_position not in ("block", "post"):
            raise ModelConfigError(f"attn_position must be 'block' or 'post', got {attn_position!r}")
        if attn_stages is None:
            if version not in VERSION_STAGES:
                raise ModelConfigError(f"version must be one of A, B, C, D (Table VII), got {version!r}")
            attn_stages = VERSION_STAGES[version]
        attn_stages = tuple(int(s) for s in attn_stages)
        if any(s < 1 or s > len(layers) for s in attn_stages):
            raise ModelConfigError(f"attn_stages {attn_stages} outside 1..{len(layers)}")
        msf = bottleneck == "msf"
        if stem_type == "auto":
            stem_type = "deep" if msf else ""
        if avg_down is None:
            avg_down = msf
        if base_width is None:
            base_width = 26 if msf else 64
        block: type[nn.Module] = MSFBottleneck if msf else ChunkBottleneck
        block_args: dict[str, Any] = {}
        if msf:
            block_args = dict(
                scale=scale,
                csa_reduction=csa_reduction,
                csa_min_channels=csa_min_channels,
                share_pair_attention=share_pair_attention,
            )
        super().__init__(
            block=block,  # type: ignore[arg-type]
            layers=tuple(layers),
            channels=tuple(channels),
            num_classes=num_classes,
            in_chans=in_chans,
            global_pool=global_pool,
            base_width=base_width,
            stem_width=32 if stem_type == "deep" else 64,
            stem_type=stem_type,
            avg_down=avg_down,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            zero_init_last=zero_init_last,
            block_args=block_args,
            device=device,
            dtype=dtype,
        )
        self.bottleneck = bottleneck
        self.attention = attention
        self.attn_stages = attn_stages if attention != "none" else ()
        self.avg_down = avg_down
        for stage in self.attn_stages:
            for blk in getattr(self, f"layer{stage}"):
                channels = blk.bn3.num_features
                attn = create_chunking_attention(
                    attention, channels, pa_reduction=pa_reduction, ca_qkv=ca_qkv
                )
                if device is not None or dtype is not None:
                    attn = attn.to(device=device, dtype=dtype)
                blk.chunk_attn = attn
                blk.chunk_attn_position = attn_position

    def pretrained_key_map(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a plain ResNet state dict onto this model (hook of
        :func:`backbones.pretrained.load_pretrained`).

        Trunk names are timm's (``conv1``, ``bn1``, ``layerN.M.conv1`` ..., MSF blocks use timm
        ``Bottle2neck`` names), so ResNet-50 weights load as they are into the standard-bottleneck variants
        and Res2Net-50d weights into the MSF variants (except ``conv3``, whose input is 10w instead of 4w).
        The one rename: a plain shortcut ``downsample.0`` (conv) / ``downsample.1`` (BN) becomes
        ``downsample.1`` / ``downsample.2`` when this model uses average-pool shortcuts.
        """
        if not self.avg_down:
            return dict(state_dict)
        plain = re.compile(r"^(layer\d+\.\d+\.downsample)\.([01])\.(.+)$")
        mapped: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            match = plain.match(key)
            conv_key = f"{match[1]}.0.weight" if match else ""
            if match and conv_key in state_dict and state_dict[conv_key].ndim == 4:
                key = f"{match[1]}.{int(match[2]) + 1}.{match[3]}"
            mapped[key] = value
        return mapped


_VARIANTS: dict[str, dict[str, Any]] = {
    # Table VIII "Ours" / Table VI version B of "+Cross Scale +PCA-Parallel": the paper's final model.
    "msfca50": dict(bottleneck="msf", attention="pca_parallel", version="B"),
    # Tables I/II baseline: plain ResNet-50 (identical to timm resnet50).
    "msfca50_baseline": dict(bottleneck="standard", attention="none"),
    # Table I "+Cross Scale" (= Table IV baseline).
    "msfca50_msf": dict(bottleneck="msf", attention="none"),
    # Table II (standard bottleneck, version B).
    "msfca50_pa": dict(bottleneck="standard", attention="pa", version="B"),
    "msfca50_ca": dict(bottleneck="standard", attention="ca", version="B"),
    "msfca50_pca_serial": dict(bottleneck="standard", attention="pca_serial", version="B"),
    "msfca50_pca_parallel": dict(bottleneck="standard", attention="pca_parallel", version="B"),
    # Table IV (MSF bottleneck, version B).
    "msfca50_msf_pa": dict(bottleneck="msf", attention="pa", version="B"),
    "msfca50_msf_ca": dict(bottleneck="msf", attention="ca", version="B"),
    "msfca50_msf_pca_serial": dict(bottleneck="msf", attention="pca_serial", version="B"),
    "msfca50_msf_pca_parallel": dict(bottleneck="msf", attention="pca_parallel", version="B"),
}

# The MSF variants have the deep stem (module docstring, item 6): their first conv is ``conv1.0``.
default_cfgs = generate_default_cfgs(
    {
        name: _factory.cfg(first_conv="conv1.0" if args["bottleneck"] == "msf" else "conv1")
        for name, args in _VARIANTS.items()
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    model = _factory.build(
        MSFCAResNet,
        variant,
        pretrained,
        no_weights=f"{variant}: no hub weights exist for this paper model. "
        "Set `pretrained: <path>` in the task "
        "(a local ResNet-50 state dict for the standard-bottleneck variants, Res2Net-50d for the MSF "
        "ones); it is loaded with backbones.load_pretrained.",
        **{**_VARIANTS[variant], **kwargs},
    )
    stem = getattr(model, "conv1", None)
    if isinstance(stem, nn.Sequential):  # deep stem (also when stem_type="deep" is asked explicitly)
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "first_conv": "conv1.0"}
    return model


@register_model
def msfca50(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """MSF-CA ResNet-50, the paper's final model: MSF bottleneck + PCA-parallel, version B (76.094 M)."""
    return _create("msfca50", pretrained, **kwargs)


@register_model
def msfca50_baseline(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """Baseline ResNet-50 (Tables I, II: 23.557 M, 4.109 G)."""
    return _create("msfca50_baseline", pretrained, **kwargs)


@register_model
def msfca50_msf(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """ResNet-50 with multi-scale fusion bottlenecks (Table I "+Cross Scale": 36.1 M, 6.535 G)."""
    return _create("msfca50_msf", pretrained, **kwargs)


@register_model
def msfca50_pa(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """ResNet-50 + spatial chunking attention in stages 1 and 4 (Table II "+PA": 37.143 M, 6.06 G)."""
    return _create("msfca50_pa", pretrained, **kwargs)


@register_model
def msfca50_ca(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """ResNet-50 + channel chunking attention in stages 1 and 4 (Table II "+CA": 49.966 M, 6.677 G)."""
    return _create("msfca50_ca", pretrained, **kwargs)


@register_model
def msfca50_pca_serial(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """ResNet-50 + serial PCA, version B (Table II "+PCA-Serial": 63.551 M, 8.627 G)."""
    return _create("msfca50_pca_serial", pretrained, **kwargs)


@register_model
def msfca50_pca_parallel(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """ResNet-50 + parallel PCA, version B (Table II "+PCA-Parallel": 63.551 M, 8.627 G)."""
    return _create("msfca50_pca_parallel", pretrained, **kwargs)


@register_model
def msfca50_msf_pa(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """MSF ResNet-50 + PA, version B (Table IV "+PA": 49.685 M, 8.485 G)."""
    return _create("msfca50_msf_pa", pretrained, **kwargs)


@register_model
def msfca50_msf_ca(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """MSF ResNet-50 + CA, version B (Table IV "+CA": 62.508 M, 9.102 G)."""
    return _create("msfca50_msf_ca", pretrained, **kwargs)


@register_model
def msfca50_msf_pca_serial(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """MSF ResNet-50 + serial PCA, version B (Table IV "+PCA-Serial": 76.094 M, 11.052 G)."""
    return _create("msfca50_msf_pca_serial", pretrained, **kwargs)


@register_model
def msfca50_msf_pca_parallel(pretrained: bool = False, **kwargs: Any) -> MSFCAResNet:
    """MSF ResNet-50 + parallel PCA, version B (Table IV "+PCA-Parallel": 76.094 M, 11.052 G)."""
    return _create("msfca50_msf_pca_parallel", pretrained, **kwargs)
