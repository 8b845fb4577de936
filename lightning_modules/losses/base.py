"""The loss interface of :class:`lightning_modules.ClassificationTask`.

A plain ``nn.Module`` loss (``torch.nn.CrossEntropyLoss`` and friends) is called as ``loss(logits, target)``.
A :class:`TaskLoss` instead receives the backbone's outputs as a dict, so losses that need more than the
logits can ask for it:

* ``"logits"``: ``forward_head(features)``, shape ``(B, num_classes)``;
* ``"features"``: the output of ``forward_features`` (the last feature map ``(B, C, H, W)`` for CNNs,
  the token sequence for transformers) - MC-Loss uses it;
* ``"embeddings"``: ``forward_head(features, pre_logits=True)``, the pooled penultimate vector
  ``(B, num_features)`` - Center, LGM, A-Softmax, COCO and CosFace use it.

Losses that own parameters (class centres, a normalised classifier) create them in :meth:`TaskLoss.bind`,
which the task calls once with the backbone's ``num_features`` and the dataset's ``num_classes``; as
sub-modules of the task, those parameters are optimised and checkpointed with the model. A loss whose own
weights define the decision (margin losses) overrides :meth:`TaskLoss.predict`, and the task's metrics then
use its logits.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


class TaskLoss(nn.Module):
    """Base class for losses that need the backbone's intermediate outputs.

    Subclasses set ``requires`` to the output names they read and implement :meth:`forward`, returning a
    dict with at least ``"loss"`` (the scalar to minimise); any other entries (``"ce"``, ``"div"``, ...)
    are logged as ``train/loss_<name>``.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"logits"})

    def bind(self, num_features: int, num_classes: int) -> None:  # noqa: B027 - optional hook
        """Create parameters that depend on the backbone width or the number of classes."""

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict(self, outputs: dict[str, Tensor]) -> Tensor:
        """Class scores used for the metrics; the backbone's logits unless the loss owns the classifier."""
        return outputs["logits"]


def compute_loss(loss: nn.Module, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
    """Call ``loss`` the way it expects and always return a dict with ``"loss"``."""
    if isinstance(loss, TaskLoss):
        result = loss(outputs, target)
        if not isinstance(result, dict):
            result = {"loss": result}
        return result
    value = loss(outputs["logits"], target)
    return {"loss": value if isinstance(value, torch.Tensor) else torch.as_tensor(value)}
