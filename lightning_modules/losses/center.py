"""Center loss (Wen, Zhang, Li, Qiao, "A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.losses._utils import (
    LossConfigError,
    all_reduce_sum_,
    autocast_off,
    check_bind_args,
    check_target,
    check_width,
    get_output,
    require_bound,
)
from lightning_modules.losses.base import TaskLoss


class CenterLoss(TaskLoss):
    r"""Softmax cross-entropy plus the center loss on the embeddings.

    Paper Eq. 2 and 5: ``L = L_S + lambda * L_C`` with
    ``L_C = 1/(2m) * sum_i ||x_i - c_{y_i}||^2`` over the m samples of the mini-batch (the paper writes
    ``1/2 sum_i``; the official Caffe layer divides by the batch size, as here, so lambda does not depend
    on the batch size). ``x_i`` are the embeddings (the pooled penultimate features, ``"embeddings"``).

    Centre update, paper Eq. 4 and Algorithm 1 (``alpha`` given): after the loss is computed, under no
    gradient,
    ``delta c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j])``, ``c_j <- c_j - alpha * delta c_j``;
    the centres are then a buffer (checkpointed, not touched by the optimiser). Under DDP the numerators and
    counts are summed over ranks first, so all ranks keep identical centres.
    With ``alpha=None`` the centres are instead an ``nn.Parameter`` learned by the task's optimiser through
    the gradient of ``lambda * L_C`` (the common PyTorch re-implementation; give them their own lr with
    ``param_groups: [{pattern: "loss\\.centers", lr_mult: ...}]``).

    Defaults are the paper's face-recognition setting (lambda = 0.003, alpha = 0.5). Choices the paper
    leaves open: centre initialisation (we use N(0, 0.01^2)); update only in training mode.
    Outputs needed: ``"embeddings"`` (B, D) and ``"logits"`` (B, K). Maths in fp32 under autocast.

    Args:
        weight: lambda, the weight of the center term.
        alpha: centre learning rate of the paper's update rule, or None for gradient-learned centres.
        label_smoothing: label smoothing of the softmax cross-entropy term.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"logits", "embeddings"})

    def __init__(
        self, weight: float = 0.003, alpha: float | None = 0.5, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if weight < 0:
            raise LossConfigError(f"CenterLoss weight (lambda) must be >= 0, got {weight}.")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise LossConfigError(
                f"CenterLoss alpha (centre learning rate) must be in [0, 1] or None, got {alpha}."
            )
        self.weight = float(weight)
        self.alpha = None if alpha is None else float(alpha)
        self.label_smoothing = float(label_smoothing)
        if self.alpha is None:
            self.register_parameter("centers", None)
        else:
            self.register_buffer("centers", None)

    def bind(self, num_features: int, num_classes: int) -> None:
        """Create the (num_classes, num_features) centres."""
        check_bind_args(self, num_features, num_classes)
        centers = torch.empty(num_classes, num_features)
        nn.init.normal_(centers, std=0.01)
        if self.alpha is None:
            self.centers = nn.Parameter(centers)
        else:
            self.centers = centers

    def center_term(self, embeddings: Tensor, target: Tensor) -> Tensor:
        """``L_C = 1/(2m) sum_i ||x_i - c_{y_i}||^2`` in fp32."""
        centers = require_bound(self, self.centers)
        check_width(self, embeddings, centers)
        with autocast_off(embeddings.device):
            diff = embeddings.float() - centers.float()[target]
            return 0.5 * diff.pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def update_centers(self, embeddings: Tensor, target: Tensor) -> None:
        """The paper's centre update (Eq. 4); only for ``alpha`` given."""
        centers = require_bound(self, self.centers)
        assert self.alpha is not None
        x = embeddings.detach().float()
        numer = torch.zeros_like(centers, dtype=torch.float32)
        numer.index_add_(0, target, centers.float()[target] - x)
        count = torch.zeros(centers.shape[0], device=centers.device, dtype=torch.float32)
        count.index_add_(0, target, torch.ones_like(target, dtype=torch.float32))
        all_reduce_sum_(numer, count)
        centers.sub_((self.alpha * numer / (1.0 + count)[:, None]).to(centers.dtype))

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss", "ce", "center"}``; updates the centres in training mode when ``alpha`` is set."""
        logits = get_output(self, outputs, "logits")
        embeddings = get_output(self, outputs, "embeddings")
        target = check_target(target, logits.shape[1], self)
        center = self.center_term(embeddings, target)
        with autocast_off(logits.device):
            ce = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
            loss = ce + self.weight * center
        if self.training and self.alpha is not None:
            self.update_centers(embeddings, target)
        return {"loss": loss, "ce": ce.detach(), "center": center.detach()}
