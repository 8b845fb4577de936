"""The timm-contract boilerplate the four comparison models share, written once.

* :class:`BaselineContract`: a mixin (first base, before ``nn.Module``) with ``forward``,
  ``get_classifier``, ``reset_classifier`` (one ``nn.Linear`` named ``head`` over ``head_hidden_size``),
  ``set_grad_checkpointing``, ``no_weight_decay`` (the names in ``no_weight_decay_names``) and
  :meth:`~BaselineContract.checkpointed`, the activation-checkpointed call of one stage or block. A model
  with another head layout (Conformer's two classifiers) overrides the head methods.
* :func:`baseline_cfg`: the family's ``default_cfgs`` entry (224 px, ImageNet mean/std, bicubic, ``head``).
* :func:`create`: the registered factory's body, :func:`backbones._factory.build` with the shared refusal of
  ``pretrained=True`` (none of these models has downloadable weights).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from backbones._factory import build, cfg, check_global_pool

__all__ = ["BaselineContract", "baseline_cfg", "create"]

NO_WEIGHTS = (
    "{}: no downloadable weights are registered for this model; pass a local state dict through the "
    "task's `pretrained: <file>`."
)


def baseline_cfg(first_conv: str, **overrides: Any) -> dict[str, Any]:
    """A pretrained-cfg entry: :func:`backbones._factory.cfg`, bicubic resizing, classifier ``head``."""
    return cfg(first_conv=first_conv, **{"classifier": "head", "interpolation": "bicubic", **overrides})


def create(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    *,
    features: str | None = None,
    feature_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Build ``variant`` through timm (:func:`backbones._factory.build`); ``pretrained=True`` is refused.

    Args:
        model_cls: the family's class.
        variant: registered name.
        pretrained: timm's flag (refused with one message naming the way to load a local state dict).
        features: ``None`` when ``features_only`` is supported, else the reason it is not.
        feature_cfg: timm's feature-extraction config.
        **kwargs: what ``timm.create_model`` passed on.
    """
    return build(
        model_cls,
        variant,
        pretrained,
        no_weights=NO_WEIGHTS.format(variant),
        features=features,
        feature_cfg=feature_cfg,
        **kwargs,
    )


class BaselineContract:
    """timm's head and checkpointing API for a model with one linear classifier ``head``.

    The model sets ``num_classes``, ``head_hidden_size`` (the classifier's input width),
    ``grad_checkpointing`` and ``head``, and defines ``forward_features`` and ``forward_head``.
    """

    head: nn.Module
    num_classes: int
    head_hidden_size: int
    grad_checkpointing: bool
    training: bool
    #: the ``global_pool`` values ``forward_head`` implements ("" = no pooling, timm's convention)
    pool_kinds: tuple[str, ...] = ("avg", "")
    #: parameters timm's optimiser factory keeps out of weight decay (class tokens, position embeddings)
    no_weight_decay_names: tuple[str, ...] = ()

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set(self.no_weight_decay_names)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            check_global_pool(type(self).__name__, global_pool, num_classes, self.pool_kinds)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def checkpointed(self, module: nn.Module, *args: Tensor) -> Any:
        """``module(*args)``, recomputed in the backward pass when gradient checkpointing is on (training)."""
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
        return module(*args)
