"""ACANet: ResNet-18 with ACCB + FCSA residual blocks and patchify downsampling (+ its ablations).

Paper: Z. Tan, Z.-H. Xu, "ACANet: A Fine-grained Image Classification Optimization Method Based on
Convolution and Attention Fusion" (Journal of Computers, 2024). Sec. 3.1 ACCB (Eq. 1-4,
:mod:`backbones.layers.accb`), Sec. 3.2 FCSA (Eq. 5-11, :mod:`backbones.layers.fcsa`), Sec. 3.3 downsampling
layer (Fig. 7, :mod:`backbones.layers.patchify`), Fig. 1 / Fig. 2(c) the residual block and network,
Table 4 the ablations.

Registered models (``timm.create_model(name, num_classes=...)``):

==========================  =====================================================================
``acanet18``                ACANet-18: ACCB + FCSA blocks, patchify downsampling (Tables 2-4)
``acanet18_no_accb``        Table 4 "Minus ACCB": ACCB -> plain 3x3 conv + BN
``acanet18_no_fcsa_accb``   both -> plain 3x3 convs, ResNet downsampling; Table 4 "Minus (FCSA+ACCB)"
                            + patchify
``resnet18_mc``             ResNet-18 (same class, plain config) with the MC-Loss last stage
==========================  =====================================================================

Every MC-Loss row uses ``mc_channels_per_class=3, last_stride=1`` (``backbone_kwargs``), which makes the last
stage ``3 * num_classes`` planes wide (600 for CUB) at stride 1 (14 x 14 at 224 px), as the Mutual-Channel
Loss reference does for ResNet-18; ``forward_features`` then returns the ``(B, 3 * num_classes, H, W)`` map
MC-Loss reads. The classifier of the MC rows is the Mutual-Channel Loss reference head (``mc_head``, on by
default whenever the MC stage is built): global *max* pooling of that map, then BN - FC 512 - BN - ELU - FC;
the other rows keep ResNet's avg-pool + linear.

Choices the paper leaves open (ours; the figures of the paper are not available as text):

* **Which convs become ACCB / FCSA.** In every BasicBlock the first 3x3 conv (+ its BN) is an ACCB (it
  carries the block's stride) and the second 3x3 conv is an FCSA (stride 1) followed by the block's BN
  (Fig. 1: ACCB, then the fusion module, then the residual add). The 7x7 stem conv stays plain.
  Without FCSA (``use_fcsa=False``) the second conv is a plain 3x3 conv; without ACCB the first is.
  With ``use_accb=use_fcsa=False, downsample="conv"`` the network *is* timm's ``resnet18``
  (identical state-dict keys and function).
* **FCSA hyper-parameters**: ACmix's defaults, 4 heads, 7x7 attention window (shrunk on maps smaller than
  the window), 3x3 shift convolution; FCSA in all four stages (``fcsa_stages``). A stage whose width is not
  divisible by ``fcsa_heads`` (the MC-Loss stage of Flowers-102: 3 x 102 = 306 planes) uses the largest
  head count below it that divides the width (3).
* **Downsampling layer** (``downsample="patchify"``): the stem's 3x3/2 max-pool (Fig. 7(a)) becomes a 2x2/2
  conv + BN (Fig. 7(b)), and the 1x1/2 projection shortcut of the first block of stages 2-4 (dashed curve
  of Fig. 2(c)) becomes a 2x2/2 conv + BN. The strided 3x3 of the main path stays (as an ACCB).
  The paper calls this layer "a downsampling auxiliary component of FCSA" and, discussing the
  "Minus (FCSA+ACCB)" row, can be read as removing it with FCSA; but that network is Table 2's ResNet-18
  (52.50 CE / 59.95 MC) while the row reports 48.98 / 60.39, so the Table 4 row files keep the patchify
  layer (``backbone_kwargs: {downsample: patchify}``, the reading that matches the figures). The
  registered ``acanet18_no_fcsa_accb`` alone uses ResNet's downsampling (= timm's ``resnet18``).
* **Head**: global average pooling, dropout (``drop_rate``, default 0), linear classifier (ResNet's head);
  the MC-Loss rows use the reference MC-Loss head instead (see above; dropout before its last FC).
* **Init**: Kaiming-normal (fan_out) convs, BN gamma 1 / beta 0, no zero-init of the last BN; the FCSA
  modules re-apply their own shift-kernel init afterwards.
* **Deployment**: :meth:`ACANet.switch_to_deploy` fuses every ACCB into one 3x3 conv with bias. The FCSA
  has no re-parameterisation (its attention is input dependent), so only the no-FCSA variants fuse into
  exactly a plain-conv ResNet-18.

The paper reports accuracies only (no parameter count); ours at 200 classes, 224 px:
see ``docs/acanet.md`` and ``benchmarks/results/acanet.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from backbones import _factory
from backbones.errors import ModelConfigError
from backbones.layers.accb import ACCB
from backbones.layers.fcsa import FCSA
from backbones.layers.patchify import patchify_downsample

DownsampleType = Literal["patchify", "conv"]


class ACANetBlock(nn.Module):
    """ResNet BasicBlock with an ACCB first conv and an FCSA second conv (each switchable off).

    State-dict names follow timm/torchvision's BasicBlock (``conv1``, ``bn1``, ``conv2``, ``bn2``,
    ``downsample.0/1``); with ACCB the ``conv1`` module holds the three branches and ``bn1`` is an identity.

    Args:
        in_channels: input channels.
        planes: output channels.
        stride: stride of the first conv (and of the shortcut).
        downsample: shortcut projection, or ``None`` for identity.
        use_accb: ACCB instead of conv3x3 + BN for the first conv.
        use_fcsa: FCSA instead of conv3x3 for the second conv.
        fcsa_heads: FCSA heads.
        fcsa_window: FCSA attention window.
        accb_gamma_init: initial BN gamma of the ACCB branches.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        use_accb: bool = True,
        use_fcsa: bool = True,
        fcsa_heads: int = 4,
        fcsa_window: int = 7,
        accb_gamma_init: float = 1.0,
    ) -> None:
        super().__init__()
        if use_accb:
            self.conv1: nn.Module = ACCB(in_channels, planes, 3, stride=stride, gamma_init=accb_gamma_init)
            self.bn1: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        if use_fcsa:
            self.conv2: nn.Module = FCSA(planes, planes, heads=fcsa_heads, window=fcsa_window)
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class ACANet(nn.Module):
    """ACANet (ResNet-style, BasicBlocks); ablations and the MC-Loss last stage are constructor options.

    Args:
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input image channels.
        layers: blocks per stage (ResNet-18: ``(2, 2, 2, 2)``).
        channels: planes per stage (ResNet-18: ``(64, 128, 256, 512)``).
        use_accb: ACCB as the first conv of every block (Table 4 "Minus ACCB": ``False``).
        use_fcsa: FCSA as the second conv of the blocks of ``fcsa_stages``.
        downsample: ``"patchify"`` (paper Sec. 3.3) or ``"conv"`` (ResNet: max-pool stem, 1x1/2 shortcuts).
        fcsa_stages: stages (1-4) whose blocks get an FCSA when ``use_fcsa``.
        fcsa_heads: FCSA attention heads.
        fcsa_window: FCSA attention window.
        accb_gamma_init: initial BN gamma of each ACCB branch.
        mc_channels_per_class: MC-Loss ``xi``; if set, the last stage has ``xi * num_classes`` planes.
        last_stride: stride of the last stage (1 for the MC-Loss recipe).
        mc_head: the Mutual-Channel Loss reference head (global max pool, BN - FC ``mc_hidden`` - BN -
            ELU - FC) instead of avg-pool + linear; ``None`` (default): on iff ``mc_channels_per_class``.
        mc_hidden: hidden width of the MC head (the reference's 512).
        drop_rate: dropout before the classifier.
        global_pool: ``"avg"`` (average pooling, or the MC head's pooled hidden layer with ``mc_head``) or
            ``""`` (no pooling: ``forward`` returns the last map; timm's convention, only with
            ``num_classes=0``).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        layers: Sequence[int] = (2, 2, 2, 2),
        channels: Sequence[int] = (64, 128, 256, 512),
        use_accb: bool = True,
        use_fcsa: bool = True,
        downsample: DownsampleType = "patchify",
        fcsa_stages: Sequence[int] = (1, 2, 3, 4),
        fcsa_heads: int = 4,
        fcsa_window: int = 7,
        accb_gamma_init: float = 1.0,
        mc_channels_per_class: int | None = None,
        last_stride: int = 2,
        mc_head: bool | None = None,
        mc_hidden: int = 512,
        drop_rate: float = 0.0,
        global_pool: Literal["avg", ""] = "avg",
    ) -> None:
        super().__init__()
        if downsample not in ("patchify", "conv"):
            raise ModelConfigError(f"ACANet downsample must be 'patchify' or 'conv', got {downsample!r}")
        _factory.check_global_pool("ACANet", global_pool, num_classes)
        if len(layers) != 4 or len(channels) != 4:
            raise ModelConfigError("ACANet needs four stages (layers and channels of length 4)")
        channels = list(channels)
        if mc_channels_per_class is not None:
            if mc_channels_per_class < 1 or num_classes < 1:
                raise ModelConfigError("mc_channels_per_class needs a positive value and num_classes >= 1")
            channels[-1] = mc_channels_per_class * num_classes
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.use_accb, self.use_fcsa, self.downsample_type = use_accb, use_fcsa, downsample
        self.mc_channels_per_class = mc_channels_per_class
        self.grad_checkpointing = False

        stem_width = 64
        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        if downsample == "patchify":
            self.maxpool: nn.Module = patchify_downsample(stem_width, stem_width)
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=stem_width, reduction=2, module="act1")]

        in_channels, reduction = stem_width, 4
        strides = (1, 2, 2, last_stride)
        for index, (depth, planes, stride) in enumerate(zip(layers, channels, strides), start=1):
            blocks = []
            for block_index in range(depth):
                block_stride = stride if block_index == 0 else 1
                shortcut = None
                if block_stride != 1 or in_channels != planes:
                    if downsample == "patchify" and block_stride == 2:
                        shortcut = patchify_downsample(in_channels, planes)
                    else:
                        shortcut = nn.Sequential(
                            nn.Conv2d(in_channels, planes, 1, stride=block_stride, bias=False),
                            nn.BatchNorm2d(planes),
                        )
                blocks.append(
                    ACANetBlock(
                        in_channels,
                        planes,
                        block_stride,
                        shortcut,
                        use_accb=use_accb,
                        use_fcsa=use_fcsa and index in fcsa_stages,
                        fcsa_heads=_divisor_at_most(planes, fcsa_heads),
                        fcsa_window=fcsa_window,
                        accb_gamma_init=accb_gamma_init,
                    )
                )
                in_channels = planes
            reduction *= stride
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=planes, reduction=reduction, module=f"layer{index}"))

        self.num_features = in_channels
        self.mc_head = mc_channels_per_class is not None if mc_head is None else mc_head
        self.mc_hidden = mc_hidden
        self._set_pool(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = (
            nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        )
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Blocks with their own init run last so the global loop cannot overwrite it (ACmix pitfall).
        for module in self.modules():
            if isinstance(module, FCSA):
                module.reset_parameters()
            elif isinstance(module, ACCB):
                module.reset_bn_gamma()

    # ----- timm model contract -------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def _set_pool(self, global_pool: str) -> None:
        """``"avg"``: average pooling or, with the MC head, its pooled hidden layer; ``""``: no pooling."""
        self.global_pool_type = global_pool
        if not global_pool:
            self.global_pool: nn.Module = nn.Identity()
            self.head_hidden_size = self.num_features
        elif self.mc_head:
            self.global_pool = MCHiddenLayer(self.num_features, self.mc_hidden, pool="max")
            self.head_hidden_size = self.mc_hidden
        else:
            self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
            self.head_hidden_size = self.num_features

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (the MC-Loss last-stage width is kept as built); ``global_pool`` as in
        ``__init__`` (``None`` keeps the pooling; a changed one is built new)."""
        if global_pool is not None:
            _factory.check_global_pool("ACANet", global_pool, num_classes)
            if global_pool != self.global_pool_type:
                self._set_pool(global_pool)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                for block in stage:
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # ----- re-parameterisation ---------------------------------------------------------------------------
    @torch.no_grad()
    def switch_to_deploy(self) -> ACANet:
        """Fuse every ACCB into a single 3x3 conv with bias (exact in eval mode); returns ``self``."""
        for module in self.modules():
            if isinstance(module, ACCB):
                module.switch_to_deploy()
        return self

    fuse = switch_to_deploy

    # ----- pretrained ResNet weights ---------------------------------------------------------------------
    def pretrained_key_map(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a timm/torchvision ResNet-18 state dict onto this model.

        A plain ``layerX.Y.conv1`` / ``bn1`` goes into the square branch of that block's ACCB (the
        asymmetric branches keep their init). A 1x1 stride-2 shortcut kernel becomes the 2x2 patchify
        kernel with the 1x1 weights at the top-left tap and zeros elsewhere - the same function, since a
        1x1 stride-2 conv reads exactly the top-left pixel of every 2x2 patch. The stem's patchify conv has
        no ResNet counterpart and keeps its init; the classifier is skipped by the loader for its shape.
        """
        own = self.state_dict()
        mapped: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            new_key = key
            if key not in own and key.startswith("layer"):
                parts = key.split(".")
                if len(parts) == 4 and parts[2] == "conv1":
                    new_key = ".".join(parts[:2] + ["conv1", "square_conv", parts[3]])
                elif len(parts) == 4 and parts[2] == "bn1":
                    new_key = ".".join(parts[:2] + ["conv1", "square_bn", parts[3]])
            target = own.get(new_key)
            if (
                target is not None
                and new_key.endswith("downsample.0.weight")
                and value.shape[-2:] == (1, 1)
                and target.shape == (*value.shape[:2], 2, 2)
            ):
                value = torch.nn.functional.pad(value, (0, 1, 0, 1))  # 1x1 tap at the top-left of 2x2
            mapped[new_key] = value
        return mapped


class MCHiddenLayer(nn.Module):
    """The Mutual-Channel Loss reference head up to its last FC: pool, flatten, BN - FC - BN - ELU.

    Args:
        in_features: channels of the pooled map (times ``grid ** 2`` inputs of the first BN/FC).
        hidden: width of the hidden FC (the reference's 512).
        pool: ``"max"`` (global max pool, the ResNet-18 reference) or ``"adaptive_max"`` with ``grid``
            (the VGG-16 reference's 2x2/2 max-pool of the 14 x 14 map, i.e. a 7 x 7 grid at 224 px).
        grid: output grid of the adaptive max-pool.
    """

    def __init__(self, in_features: int, hidden: int = 512, pool: str = "max", grid: int = 1) -> None:
        super().__init__()
        self.pool = nn.AdaptiveMaxPool2d(grid if pool == "adaptive_max" else 1)
        flat = in_features * (grid * grid if pool == "adaptive_max" else 1)
        self.bn_in = nn.BatchNorm1d(flat)
        self.fc_hidden = nn.Linear(flat, hidden)
        self.bn_hidden = nn.BatchNorm1d(hidden)
        self.act = nn.ELU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn_hidden(self.fc_hidden(self.bn_in(self.pool(x).flatten(1)))))


def _divisor_at_most(channels: int, heads: int) -> int:
    """Largest head count <= ``heads`` dividing ``channels`` (e.g. 3 for the 306-plane MC stage of
    Flowers)."""
    return next(h for h in range(min(heads, channels), 0, -1) if channels % h == 0)


def _create_acanet(variant: str, pretrained: bool = False, defaults: dict[str, Any] | None = None, **kwargs):
    return _factory.build(
        ACANet,
        variant,
        pretrained,
        no_weights=f"{variant} has no downloadable weights; train from scratch (as the paper does) or pass a "
        "local ResNet-18 state dict as the task's `pretrained: /path/to/resnet18.pth`.",
        **{**(defaults or {}), **kwargs},
    )


#: timm pretrained-config entries (no hub weights).
default_cfgs = generate_default_cfgs(
    {name: _factory.cfg() for name in ("acanet18", "acanet18_no_accb", "acanet18_no_fcsa_accb")}
    # last stage at stride 1 (the MC-Loss reference's 14 x 14 map at 224 px)
    | {"resnet18_mc": _factory.cfg(pool_size=(14, 14))}
)


@register_model
def acanet18(pretrained: bool = False, **kwargs: Any) -> ACANet:
    """ACANet-18 (paper Fig. 2(c)): ACCB + FCSA blocks, patchify downsampling."""
    return _create_acanet("acanet18", pretrained, **kwargs)


@register_model
def acanet18_no_accb(pretrained: bool = False, **kwargs: Any) -> ACANet:
    """Table 4 "Minus ACCB": the ACCB of every block is a plain 3x3 conv + BN."""
    return _create_acanet("acanet18_no_accb", pretrained, dict(use_accb=False), **kwargs)


@register_model
def acanet18_no_fcsa_accb(pretrained: bool = False, **kwargs: Any) -> ACANet:
    """ACCB and FCSA as plain 3x3 convs, ResNet downsampling (= ResNet-18); the Table 4 rows add patchify."""
    return _create_acanet(
        "acanet18_no_fcsa_accb", pretrained, dict(use_accb=False, use_fcsa=False, downsample="conv"), **kwargs
    )


@register_model
def resnet18_mc(pretrained: bool = False, **kwargs: Any) -> ACANet:
    """ResNet-18 for MC-Loss (Table 2): resnet18 layout, last stage ``3 * num_classes`` planes at stride 1,
    the MC-Loss reference head (global max pool, BN - FC 512 - BN - ELU - FC)."""
    defaults = dict(use_accb=False, use_fcsa=False, downsample="conv", mc_channels_per_class=3, last_stride=1)
    return _create_acanet("resnet18_mc", pretrained, defaults, **kwargs)
