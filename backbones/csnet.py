"""CS-Net: a ResNet trunk with the cross-layer self-attention (CS) module.

Paper: J. Chen, S. Yu, J. Liang, "A Cross-layer Self-attention Learning Network for Fine-grained
Classification", ICCECE 2023. Only the abstract is available; the CS module's equations (1)-(6) and the
reasons for each choice are in :mod:`backbones.layers.cross_layer_attention`; docs/csnet.md has the design
notes, the ablation table and the experiment files.

Architecture::

    image -> timm ResNet trunk -> stage `low_stage` map L (default stage 3, 1024 ch, stride 16)
                               -> stage 4 map H (2048 ch, stride 32)
          -> CS module: L_r = combine(CLCA(L, H), CLSA(L, H));  F = fusion(L_r, H)   (Eqs. 1-6)
          -> global average pool -> dropout -> linear classifier

Choices the abstract leaves open, all constructor arguments of :class:`CSNet`:

* trunk: ResNet-101 (the paper's) or any timm ResNet (``resnet50`` for ``csnet50``); the trunk is timm's
  own ``ResNet`` under ``self.trunk``, so plain timm/torchvision ResNet state dicts load into it
  (``pretrained_trunk_prefix = "trunk."``; see :mod:`backbones.pretrained`);
* which stages: the high layer is the last stage; ``low_stage`` picks the low layer (1, 2 or 3; default 3,
  the usual choice in cross-layer fine-grained work since stage-3 maps still localise parts at stride 16);
* ``combine`` (sum | serial | concat), ``fusion`` (conv | sum | concat | none), ``fusion_dim``,
  ``reduction``, ``heads``, ``value`` (low | high), ``gamma_init``: see the layer module.

Ablations (registered names; the abstract names the three sub-modules, we add one control row):

==================== ======= ======= ========= ==============================================
name                 channel spatial fusion    meaning
==================== ======= ======= ========= ==============================================
``csnet101_baseline``    no      no      none      ResNet-101 alone (GAP of stage 4)
``csnet101_low``     no      no      concat    + pooled stage-3 features, no attention (control)
``csnet101_channel`` yes     no      concat    + cross-layer channel attention
``csnet101_spatial`` no      yes     concat    + cross-layer spatial attention
``csnet101_both``    yes     yes     concat    + both attentions (combined by ``combine``)
``csnet101``         yes     yes     conv      + learned fusion module: the full CS-Net
==================== ======= ======= ========= ==============================================

Fusion controls (ours): the learned ``conv`` fusion with fewer attentions, so each attention's gain is
measured on top of the fusion module as well as without it:

============================ ======= ======= ====== ==============================================
name                         channel spatial fusion meaning
============================ ======= ======= ====== ==============================================
``csnet101_fusion``          no      no      conv   conv fusion of stage 3 and 4, no attention
``csnet101_channel_fusion``  yes     no      conv   + cross-layer channel attention
``csnet101_spatial_fusion``  no      yes     conv   + cross-layer spatial attention
============================ ======= ======= ====== ==============================================

``csnet50`` / ``csnet50_baseline`` are the full model and the baseline on ResNet-50.
"""

from __future__ import annotations

import os
from typing import Any

import timm
import torch
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from backbones import _factory
from backbones.errors import ModelConfigError
from backbones.layers.cross_layer_attention import (
    CombineMode,
    CrossLayerSelfAttention,
    FusionMode,
    ValueSource,
)
from backbones.pretrained import load_pretrained


class CSNet(nn.Module):
    """CS-Net: ResNet trunk + cross-layer self-attention module + classifier (timm model contract).

    Args:
        trunk: name of a timm ResNet-family model (``resnet101``, ``resnet50``, ``resnet18``, ...); built with
            ``num_classes=0, global_pool=""``, so its parameters keep timm's key names under ``trunk.``.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        in_chans: input channels.
        low_stage: trunk stage (1-3) whose output is the low-layer map; the high layer is stage 4.
        channel_attn: cross-layer channel attention on/off (ablation switch).
        spatial_attn: cross-layer spatial attention on/off (ablation switch).
        combine: channel/spatial combination, ``"sum"`` | ``"serial"`` | ``"concat"``.
        fusion: low/high fusion, ``"conv"`` | ``"sum"`` | ``"concat"`` | ``"none"``.
        fusion_dim: bottleneck width of the ``"conv"`` fusion (``None``: single 1x1 conv).
        reduction: query/key reduction of the spatial attention (``d = C_low // reduction``).
        heads: heads of the spatial attention.
        value: attention values from the ``"low"`` layer (default) or the ``"high"`` layer.
        gamma_init: initial residual gates of the attentions.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth inside the trunk.
        global_pool: timm pooling type of the head (``"avg"``, ``"max"``, ``"avgmax"``, ...).
        pretrained_trunk: load timm's hub ImageNet weights into the trunk (needs internet). For a local file
            use :func:`backbones.pretrained.load_pretrained` instead (or ``pretrained=<path>`` in a factory).
    """

    #: plain ResNet keys (``layer3.4.conv1.weight``) load as ``trunk.layer3.4.conv1.weight``.
    pretrained_trunk_prefix = "trunk."

    def __init__(
        self,
        trunk: str = "resnet101",
        num_classes: int = 1000,
        in_chans: int = 3,
        low_stage: int = 3,
        channel_attn: bool = True,
        spatial_attn: bool = True,
        combine: CombineMode = "sum",
        fusion: FusionMode = "conv",
        fusion_dim: int | None = 512,
        reduction: int = 8,
        heads: int = 1,
        value: ValueSource = "low",
        gamma_init: float = 0.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        pretrained_trunk: bool = False,
    ) -> None:
        super().__init__()
        if low_stage not in (1, 2, 3):
            raise ModelConfigError(
                f"low_stage must be 1, 2 or 3 (the high layer is stage 4), got {low_stage}"
            )
        self.trunk = timm.create_model(
            trunk,
            pretrained=pretrained_trunk,
            num_classes=0,
            global_pool="",
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
        )
        if not hasattr(self.trunk, "layer4"):
            raise ModelConfigError(f"trunk '{trunk}' is not a timm ResNet-family model (no layer1..layer4)")
        stage_channels = {i: self.trunk.feature_info[i]["num_chs"] for i in range(1, 5)}  # 0 is the stem
        self.low_stage = low_stage
        self.cs = CrossLayerSelfAttention(
            stage_channels[low_stage],
            stage_channels[4],
            channel_attn=channel_attn,
            spatial_attn=spatial_attn,
            combine=combine,
            fusion=fusion,
            fusion_dim=fusion_dim,
            reduction=reduction,
            heads=heads,
            value=value,
            gamma_init=gamma_init,
        )
        self.num_classes = num_classes
        self.num_features = self.cs.out_channels
        self.drop_rate = drop_rate
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.head_hidden_size = (
            self.head.num_features
        )  # pooled width (2x num_features for "avgmax"/"catavgmax")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the trunk's residual blocks (the CS module is small next to them)."""
        self.trunk.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier for ``num_classes`` outputs (0 removes it)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        self.head_hidden_size = self.head.num_features

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The trunk's low-layer map ``L`` and high-layer map ``H``."""
        low, high = self.trunk.forward_intermediates(x, indices=[self.low_stage, 4], intermediates_only=True)
        return low, high

    def forward_features(self, x: Tensor) -> Tensor:
        """Fused feature map ``F`` (B, num_features, H/32, W/32) of Eq. (6)."""
        low, high = self.forward_stages(x)
        return self.cs(low, high)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global pooling, dropout and classifier (``pre_logits``: the pooled vector)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))


#: timm pretrained-config entries: CUB-style 448 input (Sec. 4.1), no hub weights of CS-Net's own.
_CFG = dict(
    input_size=(3, 448, 448),
    pool_size=(14, 14),
    crop_pct=448 / 512,
    first_conv="trunk.conv1",
    classifier="head.fc",
)

_ABLATIONS: dict[str, dict[str, Any]] = {
    "baseline": dict(channel_attn=False, spatial_attn=False, fusion="none"),
    "low": dict(channel_attn=False, spatial_attn=False, fusion="concat"),
    "channel": dict(channel_attn=True, spatial_attn=False, fusion="concat"),
    "spatial": dict(channel_attn=False, spatial_attn=True, fusion="concat"),
    "both": dict(channel_attn=True, spatial_attn=True, fusion="concat"),
    "full": dict(channel_attn=True, spatial_attn=True, fusion="conv"),
    "fusion": dict(channel_attn=False, spatial_attn=False, fusion="conv"),
    "channel_fusion": dict(channel_attn=True, spatial_attn=False, fusion="conv"),
    "spatial_fusion": dict(channel_attn=False, spatial_attn=True, fusion="conv"),
}


def _create_csnet(
    variant: str,
    default_trunk: str,
    ablation: str,
    pretrained: bool | str | os.PathLike = False,
    **kwargs: Any,
) -> CSNet:
    """Build a registered variant; ``pretrained`` is timm's bool (hub weights) or a local checkpoint path.

    ``pretrained=True`` loads the *trunk's* timm hub weights (the CS module has none of its own).
    ``kwargs`` override the variant's defaults, the trunk included (``trunk="resnet18"`` for quick tests).
    """
    local = pretrained if isinstance(pretrained, (str, os.PathLike)) else None
    model = _factory.build(
        CSNet,
        variant,
        False,
        no_weights="",
        features="the CS module fuses stages 3 and 4 into one map; build the trunk itself "
        "(timm.create_model(trunk, features_only=True)) for per-stage maps.",
        **{"trunk": default_trunk, **_ABLATIONS[ablation], **kwargs},
        pretrained_trunk=bool(pretrained) and local is None,
    )
    if local is not None:
        load_pretrained(model, local)
    return model


default_cfgs = generate_default_cfgs(
    {
        name: _factory.cfg(**_CFG)
        for name in [
            "csnet101",
            "csnet101_baseline",
            "csnet101_low",
            "csnet101_channel",
            "csnet101_spatial",
            "csnet101_both",
            "csnet101_fusion",
            "csnet101_channel_fusion",
            "csnet101_spatial_fusion",
            "csnet50",
            "csnet50_baseline",
        ]
    }
)


@register_model
def csnet101(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """CS-Net on ResNet-101: channel + spatial cross-layer attention and the learned fusion (full model)."""
    return _create_csnet("csnet101", "resnet101", "full", pretrained, **kwargs)


@register_model
def csnet101_baseline(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Ablation: the ResNet-101 backbone alone."""
    return _create_csnet("csnet101_baseline", "resnet101", "baseline", pretrained, **kwargs)


@register_model
def csnet101_low(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Control: ResNet-101 + pooled stage-3 features concatenated, no attention."""
    return _create_csnet("csnet101_low", "resnet101", "low", pretrained, **kwargs)


@register_model
def csnet101_channel(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Ablation: + cross-layer channel attention (parameter-free concat fusion)."""
    return _create_csnet("csnet101_channel", "resnet101", "channel", pretrained, **kwargs)


@register_model
def csnet101_spatial(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Ablation: + cross-layer spatial attention (parameter-free concat fusion)."""
    return _create_csnet("csnet101_spatial", "resnet101", "spatial", pretrained, **kwargs)


@register_model
def csnet101_both(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Ablation: + channel and spatial cross-layer attention (parameter-free concat fusion)."""
    return _create_csnet("csnet101_both", "resnet101", "both", pretrained, **kwargs)


@register_model
def csnet101_fusion(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Control: the learned conv fusion of stage-3 and stage-4 features, no attention."""
    return _create_csnet("csnet101_fusion", "resnet101", "fusion", pretrained, **kwargs)


@register_model
def csnet101_channel_fusion(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Control: cross-layer channel attention + the learned conv fusion (no spatial attention)."""
    return _create_csnet("csnet101_channel_fusion", "resnet101", "channel_fusion", pretrained, **kwargs)


@register_model
def csnet101_spatial_fusion(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Control: cross-layer spatial attention + the learned conv fusion (no channel attention)."""
    return _create_csnet("csnet101_spatial_fusion", "resnet101", "spatial_fusion", pretrained, **kwargs)


@register_model
def csnet50(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """CS-Net on ResNet-50 (full model)."""
    return _create_csnet("csnet50", "resnet50", "full", pretrained, **kwargs)


@register_model
def csnet50_baseline(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """Ablation: the ResNet-50 backbone alone."""
    return _create_csnet("csnet50_baseline", "resnet50", "baseline", pretrained, **kwargs)
