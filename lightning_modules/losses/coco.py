"""Congenerous cosine (COCO) loss (Liu, Li, Wang, "Rethinking Feature Discrimination and Polymerization for
Large-scale Recognition", NIPS 2017 Deep Learning Workshop, arXiv:1710.00870)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.losses._utils import (
    autocast_off,
    check_bind_args,
    check_target,
    check_width,
    get_output,
    require_bound,
)
from lightning_modules.losses.base import TaskLoss

_EPS = 1e-12


def coco_alpha_lower_bound(num_classes: int, epsilon: float = 0.01) -> float:
    """Smallest scale for which an ideal configuration (class centroids on a regular simplex, every feature on
    its centroid) can reach a loss <= ``epsilon``: ``(K-1)/K * log((K-1) / (exp(epsilon) - 1))``.

    Our derivation, following the paper's argument for the scale factor (target cosine 1, the others
    ``-1/(K-1)``); it is 9.8 for K = 200 and epsilon = 0.01.
    """
    k = num_classes
    return (k - 1) / k * math.log((k - 1) / math.expm1(epsilon))


class COCOLoss(TaskLoss):
    r"""Congenerous cosine loss: softmax over scaled cosines between features and learned class centroids.

    Paper Sec. 3: ``x_hat = alpha * x / ||x||`` (features normalised then scaled), ``c_hat_k = c_k / ||c_k||``,
    ``p_k = exp(c_hat_k . x_hat) / sum_m exp(c_hat_m . x_hat)``, ``L = -1/N sum_i log p_{y_i}``.
    The centroids ``c_k`` (num_classes, num_features) are parameters learned by back-propagation together
    with the network (the paper's final formulation; its earlier version averaged features within the
    mini-batch, which is not implemented). The scale ``alpha`` must be large enough for the softmax to be
    able to reach a small loss on many classes (the paper's analysis of the optimal scale); see :func:`coco_alpha_lower_bound`
    (9.8 for 200 classes; our default 10). :meth:`predict` returns ``alpha cos(x, c_k)``.
    Outputs needed: ``"embeddings"``; the backbone's own classifier is unused. fp32 under autocast.

    Args:
        alpha: the feature scale after normalisation.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})

    def __init__(self, alpha: float = 10.0) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"COCOLoss alpha must be > 0, got {alpha}.")
        self.alpha = float(alpha)
        self.register_parameter("centers", None)

    def bind(self, num_features: int, num_classes: int) -> None:
        """Create the class centroids (num_classes, num_features), Xavier-initialised."""
        check_bind_args(self, num_features, num_classes)
        centers = torch.empty(num_classes, num_features)
        nn.init.xavier_uniform_(centers)
        self.centers = nn.Parameter(centers)

    def _scaled_cosine(self, outputs: dict[str, Tensor]) -> Tensor:
        x = get_output(self, outputs, "embeddings")
        centers = require_bound(self, self.centers)
        check_width(self, x, centers)
        with autocast_off(x.device):
            x_hat = self.alpha * F.normalize(x.float(), dim=1, eps=_EPS)
            c_hat = F.normalize(centers.float(), dim=1, eps=_EPS)
            return x_hat @ c_hat.t()

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss"}``."""
        logits = self._scaled_cosine(outputs)
        target = check_target(target, logits.shape[1], self)
        with autocast_off(logits.device):
            loss = F.cross_entropy(logits, target)
        return {"loss": loss}

    def predict(self, outputs: dict[str, Tensor]) -> Tensor:
        """``alpha cos(x, c_k)`` (B, num_classes)."""
        return self._scaled_cosine(outputs)
