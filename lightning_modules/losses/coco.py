"""Congenerous cosine (COCO) loss (Liu, Li, Wang, "Rethinking Feature Discrimination and Polymerization for
Large-scale Recognition", NIPS 2017 Deep Learning Workshop, arXiv:1710.00870)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from lightning_modules.losses._utils import LossConfigError
from lightning_modules.losses.margin import CosFaceLoss


def coco_alpha_lower_bound(num_classes: int, epsilon: float = 0.01) -> float:
    """Smallest scale for which an ideal configuration (class centroids on a regular simplex, every feature on
    its centroid) can reach a loss <= ``epsilon``: ``(K-1)/K * log((K-1) / (exp(epsilon) - 1))``.

    Our derivation, following the paper's argument for the scale factor (target cosine 1, the others
    ``-1/(K-1)``); it is 9.8 for K = 200 and epsilon = 0.01.
    """
    k = num_classes
    return (k - 1) / k * math.log((k - 1) / math.expm1(epsilon))


class COCOLoss(CosFaceLoss):
    r"""Congenerous cosine loss: softmax over scaled cosines between features and learned class centroids.

    Paper Sec. 3: ``x_hat = alpha * x / ||x||`` (features normalised, then scaled),
    ``c_hat_k = c_k / ||c_k||``,
    ``p_k = exp(c_hat_k . x_hat) / sum_m exp(c_hat_m . x_hat)``, ``L = -1/N sum_i log p_{y_i}``: the
    normalised classifier of :class:`~lightning_modules.losses.margin.CosFaceLoss` with ``s = alpha`` and
    no margin (``m = 0``). The centroids ``c_k`` are its ``weight`` (num_classes, num_features), learned by
    back-propagation with the network (the paper's final formulation; its earlier version averaged features
    within the mini-batch, which is not implemented). ``alpha`` must be large enough for the softmax to
    reach a small loss on many classes: :func:`coco_alpha_lower_bound` (9.8 for 200 classes; our default
    10). :meth:`predict` returns ``alpha cos(x, c_k)``. Outputs needed: ``"embeddings"``. fp32 under autocast.

    Args:
        alpha: the feature scale after normalisation.
    """

    def __init__(self, alpha: float = 10.0) -> None:
        if alpha <= 0:
            raise LossConfigError(f"COCOLoss alpha must be > 0, got {alpha}.")
        super().__init__(s=alpha, m=0.0)
        self.alpha = float(alpha)

    @property
    def centers(self) -> Tensor | None:
        """The class centroids ``c_k`` (the classifier ``weight``)."""
        return self.weight

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        legacy = prefix + "centers"  # checkpoints written before COCOLoss shared the normalised classifier
        if legacy in state_dict and prefix + "weight" not in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(legacy)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
