"""Focal loss (Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object Detection", ICCV 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.losses._utils import LossConfigError, autocast_off


class FocalLoss(nn.Module):
    r"""Multi-class softmax focal loss, a plain ``loss(logits, target)`` module.

    Paper Eq. 5 (``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)``), with ``p`` the softmax of the logits
    (the paper's Sec. 3 states the loss for the binary/sigmoid case and notes it extends to the multi-class
    softmax case, which is what classification uses). With label smoothing ``eps`` the one-hot target
    becomes ``q = (1 - eps) onehot(y) + eps / K`` and every class contributes:

    .. math::  L_i = -\sum_k \alpha_k\, q_k\, (1 - p_k)^\gamma \log p_k

    which reduces to Eq. 5 for ``eps = 0``. ``gamma = 0``, ``alpha = None`` is plain cross-entropy.

    Args:
        gamma: focusing parameter (paper: 2 works best).
        alpha: class balance weight: ``None`` (1 for all classes), a float (a constant factor, the paper's
            0.25 is meaningful only for the binary one-vs-background case) or one weight per class.
        label_smoothing: ``eps`` above, in [0, 1).
        reduction: ``"mean"`` over the batch (unweighted mean even with per-class alpha), ``"sum"`` or
            ``"none"``.

    Choices the paper leaves open: the multi-class form, per-class alpha, label smoothing, the reduction.
    Computed in fp32 (log-softmax) also under bf16 autocast.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise LossConfigError(f"FocalLoss gamma must be >= 0, got {gamma}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise LossConfigError(f"FocalLoss label_smoothing must be in [0, 1), got {label_smoothing}.")
        if reduction not in ("mean", "sum", "none"):
            raise LossConfigError(f"FocalLoss reduction must be mean, sum or none, got {reduction!r}.")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.alpha_scalar: float | None = None
        if alpha is None or isinstance(alpha, int | float):
            self.alpha_scalar = None if alpha is None else float(alpha)
            self.register_buffer("alpha", None)
        else:
            self.register_buffer("alpha", torch.as_tensor(list(alpha), dtype=torch.float32), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the focal loss of ``logits`` (B, K) against class indices ``target`` (B,)."""
        if logits.ndim != 2:
            raise ValueError(f"FocalLoss expects logits of shape (B, K), got {tuple(logits.shape)}.")
        num_classes = logits.shape[1]
        with autocast_off(logits.device):
            log_p = F.log_softmax(logits.float(), dim=1)
            # 1 - p computed as -expm1(log p): exact for p close to 1; the clamp keeps d/dp (1-p)^gamma
            # finite for 0 < gamma < 1 (it passes no gradient when it clamps).
            one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
            per_class = -(one_minus_p.pow(self.gamma) * log_p)  # (B, K)
            if self.alpha is not None:
                if self.alpha.numel() != num_classes:
                    raise ValueError(
                        f"FocalLoss got {self.alpha.numel()} per-class alpha weights "
                        f"for {num_classes} classes."
                    )
                per_class = per_class * self.alpha.to(per_class.device)
            elif self.alpha_scalar is not None:
                per_class = per_class * self.alpha_scalar
            if self.label_smoothing > 0:
                q = torch.full_like(per_class, self.label_smoothing / num_classes)
                q.scatter_add_(
                    1, target.long()[:, None], torch.full_like(q[:, :1], 1.0 - self.label_smoothing)
                )
                loss = (q * per_class).sum(dim=1)
            else:
                loss = per_class.gather(1, target.long()[:, None]).squeeze(1)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
