"""Baselines of the ACANet paper's Tables 2-3 that timm does not provide as-is.

Paper: Z. Tan, Z.-H. Xu, "ACANet: A Fine-grained Image Classification Optimization Method Based on
Convolution and Attention Fusion", Table 2 (ResNet-18 / VGG-16 with eight losses) and Table 3 (GoogLeNet,
MobileNetV3, DenseNet, ConvNeXt with CE). ResNet-18, VGG-16, MobileNetV3, DenseNet and ConvNeXt come
straight from timm (``resnet18``, ``vgg16``, ``mobilenetv3_large_100``, ``densenet121``,
``convnext_tiny``; the paper does not name the sizes - these are ours). Registered here:

* ``googlenet``: torchvision's GoogLeNet (Szegedy et al. 2015, the paper's ref. [34]) with the timm model
  contract; timm has no GoogLeNet (its ``inception_v3`` is a different network). No auxiliary classifiers
  (the paper does not mention them), dropout 0.2 before the classifier (torchvision's default), torchvision's
  truncated-normal init.
* ``vgg16_mc``: timm's ``vgg16`` whose last conv has ``mc_channels_per_class * num_classes`` filters (600 for
  CUB), for the MC-Loss rows. As in the Mutual-Channel Loss reference code, MC-Loss reads the map *before*
  the last max-pool (600 x 14 x 14 at 224 px): ``forward_features`` stops there, and the head is the
  reference's: the 2x2/2 max-pool (an adaptive max-pool to 7 x 7, the same at 224 px and defined at smaller
  smoke sizes), flatten (600 x 7 x 7), BN - FC 512 - BN - ELU - FC. VGG's 4096-4096 MLP is not used. The
  reference's from-scratch VGG-16 has BN in its conv layers; ours keeps timm's ``vgg16`` trunk (no BN) so
  that the MC row differs from the other VGG-16 rows of Table 2 by loss and head only.
* ``vgg16_bn_mc``: the same with a BatchNorm after every conv (timm's ``vgg16_bn`` trunk), the BN variant
  (ours, not in the paper) for the MC rows; the CE and margin-loss rows use timm's ``vgg16_bn``. The paper
  does not say whether its VGG-16 has BN; the learning check found the no-BN VGG-16 rows stuck or diverging
  at the recipe's lr from scratch (``benchmarks/results/learning.md``), hence the labelled alternative.
(ResNet-18 with MC-Loss is ``resnet18_mc`` in :mod:`backbones.acanet`.)
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models.vgg import VGG, cfgs
from torch import Tensor, nn

from backbones import _factory
from backbones.acanet import MCHiddenLayer
from backbones.errors import ModelConfigError


def _no_weights(variant: str) -> str:
    return f"{variant} has no downloadable weights here; pass a local state dict as the task's `pretrained`."


class GoogLeNet(torchvision.models.GoogLeNet):
    """torchvision GoogLeNet (no aux heads) with ``forward_features`` / ``forward_head`` /
    ``reset_classifier``.

    Args:
        num_classes: classifier outputs (0: identity classifier).
        in_chans: must be 3 (torchvision's stem).
        drop_rate: dropout before the classifier (torchvision: 0.2).
        global_pool: ``"avg"`` or ``""`` (no pooling: ``forward`` returns the 1024-channel map; only with
            ``num_classes=0``, timm's rule).
    """

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2, global_pool: str = "avg"
    ) -> None:
        if in_chans != 3:
            raise ModelConfigError("googlenet supports in_chans=3 only")
        _factory.check_global_pool("googlenet", global_pool, num_classes)
        super().__init__(
            num_classes=max(num_classes, 1), aux_logits=False, transform_input=False, init_weights=True,
            dropout=drop_rate,
        )  # fmt: skip
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = 1024
        if num_classes == 0:
            self.fc = nn.Identity()
        self.global_pool_type = global_pool
        if not global_pool:
            self.avgpool = nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            _factory.check_global_pool("googlenet", global_pool, num_classes)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1)) if global_pool else nn.Identity()
            self.global_pool_type = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    _TRUNK = (
        "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
        "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
        "inception5a", "inception5b",
    )  # fmt: skip

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each trunk module (stem convs, inception blocks) in the backward pass."""
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        modules = [getattr(self, name) for name in self._TRUNK]
        if getattr(self, "grad_checkpointing", False) and self.training and torch.is_grad_enabled():
            return checkpoint_seq(nn.Sequential(*modules), x)
        for module in modules:
            x = module(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x)
        x = self.dropout(torch.flatten(x, 1) if self.global_pool_type else x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(x))


class VGGMC(nn.Module):
    """VGG-16 conv trunk (timm's ``vgg16`` layers) up to the map MC-Loss reads, with the MC-Loss
    reference head.

    Args:
        cfg: timm VGG layer config whose last conv is ``mc_channels_per_class * num_classes`` wide.
        num_classes: classifier outputs (0: no classifier).
        in_chans: input channels.
        hidden: hidden width of the head (the reference's 512).
        drop_rate: dropout before the last FC.
        batch_norm: a BatchNorm after every conv of the trunk (``vgg16_bn_mc``).
    """

    def __init__(self, cfg: list, num_classes: int = 1000, in_chans: int = 3, hidden: int = 512,
                 drop_rate: float = 0.0, batch_norm: bool = False) -> None:  # fmt: skip
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else None
        trunk = VGG(cfg, num_classes=1, in_chans=in_chans, norm_layer=norm)
        self.features = trunk.features[:-1]  # without the last max-pool: the head pools
        self.feature_info = trunk.feature_info
        self.num_classes = num_classes
        self.num_features = cfg[-2]
        self.hidden = hidden
        self._set_pool("avg")
        self.head_drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier; ``global_pool=""`` removes the pooled MC head too (the map is returned),
        ``"avg"`` builds it again (new weights) if it was removed."""
        if global_pool is not None:
            _factory.check_global_pool("vgg16_mc", global_pool, num_classes)
            if isinstance(self.pre_logits, nn.Identity) != (not global_pool):
                self._set_pool(global_pool)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _set_pool(self, global_pool: str) -> None:
        """``"avg"``: the reference head's pooled MC hidden layer; ``""``: none (forward returns the map)."""
        if global_pool:
            self.pre_logits: nn.Module = MCHiddenLayer(
                self.num_features, self.hidden, pool="adaptive_max", grid=7
            )
            self.head_hidden_size = self.hidden
        else:
            self.pre_logits = nn.Identity()
            self.head_hidden_size = self.num_features

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pre_logits(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


#: timm pretrained-config entries (no hub weights).
default_cfgs = generate_default_cfgs(
    {
        "googlenet": _factory.cfg(first_conv="conv1.conv", classifier="fc"),
        # forward_features stops before the last max-pool: the 14 x 14 map at 224 px
        "vgg16_mc": _factory.cfg(first_conv="features.0", classifier="fc", pool_size=(14, 14)),
        "vgg16_bn_mc": _factory.cfg(first_conv="features.0", classifier="fc", pool_size=(14, 14)),
    }
)


@register_model
def googlenet(pretrained: bool = False, **kwargs: Any) -> GoogLeNet:
    """GoogLeNet (torchvision architecture, no auxiliary classifiers) for Table 3."""
    return _factory.build(
        GoogLeNet,
        "googlenet",
        pretrained,
        no_weights=_no_weights("googlenet"),
        features="torchvision's GoogLeNet has no feature_info; use forward_features (the 1024-channel map).",
        **kwargs,
    )


def _vgg16_mc(variant: str, pretrained: bool, mc_channels_per_class: int, **kwargs: Any) -> VGGMC:
    num_classes = kwargs.get("num_classes", 1000)
    if mc_channels_per_class < 1 or num_classes < 1:
        raise ModelConfigError(f"{variant} needs mc_channels_per_class >= 1 and num_classes >= 1")
    cfg = list(cfgs["vgg16"])
    cfg[-2] = mc_channels_per_class * num_classes  # last conv before the final 'M'
    return _factory.build(
        VGGMC,
        variant,
        pretrained,
        no_weights=_no_weights(variant),
        features="the MC-Loss head reads the last conv map; use forward_features for it.",
        model_cfg=cfg,
        **kwargs,
    )


@register_model
def vgg16_mc(pretrained: bool = False, mc_channels_per_class: int = 3, **kwargs: Any) -> VGGMC:
    """VGG-16 with a ``mc_channels_per_class * num_classes``-wide last conv for MC-Loss (Table 2)."""
    return _vgg16_mc("vgg16_mc", pretrained, mc_channels_per_class, **kwargs)


@register_model
def vgg16_bn_mc(pretrained: bool = False, mc_channels_per_class: int = 3, **kwargs: Any) -> VGGMC:
    """``vgg16_mc`` with BatchNorm after every conv: the BN variant of the MC rows (ours, not the paper's)."""
    return _vgg16_mc("vgg16_bn_mc", pretrained, mc_channels_per_class, batch_norm=True, **kwargs)
