"""Mutual-Channel Loss (Chang, Ding, Xie, Bhunia, Li, Ma, Wu, Guo, Song, "The Devil is in the Channels:
Mutual-Channel Loss for Fine-Grained Image Classification", IEEE TIP 29, 2020)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.losses._utils import LossConfigError, autocast_off, check_target, get_output
from lightning_modules.losses.base import TaskLoss


class MCLoss(TaskLoss):
    r"""Mutual-Channel loss: cross-entropy on the logits plus the two MC terms on the last feature map.

    The last feature map ``F`` (B, xi * K, H, W) is split into K groups of ``xi`` channels, one group per
    class (paper Sec. III; xi = 3 gives the 600-channel last stage for CUB's 200 classes).

    * Diversity component: a softmax over the H*W positions of every channel, cross-channel max
      pooling (CCMP) within each class group, summed over space, averaged over batch and classes:
      ``L_div = 1 - mean_{b,k} sum_hw max_j softmax_hw(F_{b,k,j})_hw / xi``, in ``[0, 1 - 1/xi]``
      (0 when the xi channels of every group peak at different positions).
    * Discriminality component: a random channel mask keeps ``mask_keep`` of the ``xi`` channels of
      every group (CWA, channel-wise attention: dropped channels are multiplied by 0, no rescaling; one mask
      per forward, shared by the whole batch), then CCMP, then global average pooling gives K class scores:
      ``L_dis = CE(GAP(CCMP(M * F)), y)``.

    Total, as in the reference training script: ``L = CE(logits, y) + alpha * L_dis + beta * L_div``
    (reference defaults alpha = 1.5, beta = 20; from scratch the author also suggests
    ``CE + 2 * (L_dis + 10 * L_div)``, i.e. alpha = 2, beta = 20).

    Reference implementation facts followed here (dongliangchang/Mutual-Channel-Loss): softmax over space
    per channel; the mask is regenerated every forward and shared across the batch; masked channels are
    zeroed (the features are post-ReLU, so 0 never wins a max it should not); CCMP then average pooling.
    Choices of ours: the random mask is applied in training mode only; in eval mode all channels are kept
    so the validation loss is deterministic (the reference computes no MC terms at validation at all).
    All MC maths runs in fp32, also under bf16 autocast.

    The backbone must produce ``channels_per_class * num_classes`` channels in its last feature map
    (the backbone's MC option, e.g. a 600-plane last stage for 200 classes). Outputs needed:
    ``"features"`` (B, C, H, W) and ``"logits"`` (B, K).

    Args:
        channels_per_class: xi, feature channels per class.
        alpha: weight of the discriminality term.
        beta: weight of the diversity term.
        mask_keep: channels kept per class group by the random mask (reference: 2 of 3).
        label_smoothing: label smoothing of the CE on the logits (the MC terms use hard targets).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"logits", "features"})

    def __init__(
        self,
        channels_per_class: int = 3,
        alpha: float = 1.5,
        beta: float = 20.0,
        mask_keep: int = 2,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if channels_per_class < 1:
            raise LossConfigError(f"MCLoss channels_per_class must be >= 1, got {channels_per_class}.")
        if not 1 <= mask_keep <= channels_per_class:
            raise LossConfigError(
                f"MCLoss mask_keep must be in [1, channels_per_class={channels_per_class}], got {mask_keep}."
            )
        self.channels_per_class = int(channels_per_class)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mask_keep = int(mask_keep)
        self.label_smoothing = float(label_smoothing)
        self.num_classes: int | None = None

    def _channel_error(self, channels: int, num_classes: int, where: str) -> ValueError:
        need = self.channels_per_class * num_classes
        return ValueError(
            f"MCLoss needs the backbone's last feature map to have channels_per_class x num_classes = "
            f"{self.channels_per_class} x {num_classes} = {need} channels, but {where} has {channels}. "
            f"Use a backbone with the Mutual-Channel last stage: `backbone: resnet18_mc` / `vgg16_mc`, or "
            f"`backbone_kwargs: {{mc_channels_per_class: {self.channels_per_class}}}` for acanet18 (600 "
            f"channels for 200 classes with channels_per_class=3; see docs/losses.md), or change "
            f"MCLoss(channels_per_class=...)."
        )

    def bind(self, num_features: int, num_classes: int) -> None:
        """Record ``num_classes``; the channel count is checked on the feature map itself in forward().

        ``num_features`` is not checked here: it is the pooled embedding width, which need not be the width
        of the feature map MC-Loss reads (VGG's pre-logits MLP, for example). A wrong width fails at the
        first forward, i.e. in Lightning's sanity check, with the message of :meth:`_channel_error`.
        """
        self.num_classes = int(num_classes)

    def make_mask(self, num_classes: int, device: torch.device | None = None) -> Tensor:
        """Random channel mask (num_classes, xi) with exactly ``mask_keep`` ones per row."""
        xi = self.channels_per_class
        keep = torch.rand(num_classes, xi, device=device).argsort(dim=1)[:, : self.mask_keep]
        return torch.zeros(num_classes, xi, device=device).scatter_(1, keep, 1.0)

    def _grouped(self, features: Tensor, num_classes: int) -> Tensor:
        if features.ndim != 4:
            raise ValueError(
                f"MCLoss needs a CNN feature map (B, C, H, W) as 'features', "
                f"got shape {tuple(features.shape)}."
            )
        b, c, h, w = features.shape
        if c != self.channels_per_class * num_classes:
            raise self._channel_error(c, num_classes, "the feature map")
        return features.float().reshape(b, num_classes, self.channels_per_class, h * w)

    def diversity(self, features: Tensor, num_classes: int) -> Tensor:
        """``L_div`` of a feature map (B, xi*K, H, W), a scalar in ``[0, 1 - 1/xi]``."""
        with autocast_off(features.device):
            g = self._grouped(features, num_classes)
            ccmp = g.softmax(dim=-1).amax(dim=2)  # (B, K, HW)
            return 1.0 - ccmp.sum(dim=-1).mean() / self.channels_per_class

    def discriminality_logits(self, features: Tensor, num_classes: int, mask: Tensor | None) -> Tensor:
        """Class scores ``GAP(CCMP(mask * F))`` (B, K); ``mask`` (K, xi) or None for all channels."""
        with autocast_off(features.device):
            g = self._grouped(features, num_classes)
            if mask is not None:
                g = g * mask.to(g)[None, :, :, None]
            return g.amax(dim=2).mean(dim=-1)

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss", "ce", "dis", "div"}``."""
        logits = get_output(self, outputs, "logits")
        features = get_output(self, outputs, "features")
        num_classes = logits.shape[1]
        if self.num_classes is not None and self.num_classes != num_classes:
            raise ValueError(f"MCLoss was bound to {self.num_classes} classes but got {num_classes} logits.")
        target = check_target(target, num_classes, self)
        mask = self.make_mask(num_classes, features.device) if self.training else None
        with autocast_off(logits.device):
            ce = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
            dis = F.cross_entropy(self.discriminality_logits(features, num_classes, mask), target)
            div = self.diversity(features, num_classes)
            loss = ce + self.alpha * dis + self.beta * div
        return {"loss": loss, "ce": ce.detach(), "dis": dis.detach(), "div": div.detach()}
