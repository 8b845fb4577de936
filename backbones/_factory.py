"""One timm factory path for every model family: ``build_model_with_cfg`` with the family's ``default_cfgs``.

Every ``@register_model`` function of :mod:`backbones` calls :func:`build`, so each registered model takes
what any timm caller passes to ``timm.create_model``: ``pretrained_cfg``/``pretrained_cfg_overlay`` (resolved
by timm and stored as ``model.pretrained_cfg``/``model.default_cfg``), ``cache_dir``, ``device`` (the model
is built directly there, e.g. on ``"meta"``), ``dtype``, ``features_only``/``out_indices`` where the family
supports feature extraction, and the model's own arguments (``num_classes``, ``drop_rate``, ...).

A family module defines ``default_cfgs = generate_default_cfgs({...})`` *before* its ``@register_model``
functions (timm reads it at registration) with :func:`cfg` entries.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from torch import nn

from backbones.errors import ModelConfigError


def cfg(**overrides: Any) -> dict[str, Any]:
    """A timm pretrained-cfg entry (no hub weights: ``url`` empty), ImageNet mean/std, 224 input."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        **overrides,
    }


def _takes(model_cls: type, name: str) -> bool:
    params = inspect.signature(model_cls.__init__).parameters
    return name in params


def build(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    *,
    no_weights: str,
    features: str | None = None,
    feature_cfg: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``variant`` of ``model_cls`` through timm's ``build_model_with_cfg``.

    Args:
        model_cls: the family's ``nn.Module``.
        variant: registered name (its ``default_cfgs`` entry gives the pretrained cfg).
        pretrained: timm's flag; none of these models has hub weights, so ``True`` is refused with
            ``no_weights`` (the family's explanation of how to load a local state dict instead).
        no_weights: message of the refusal of ``pretrained=True``.
        features: ``None`` when the family supports ``features_only`` (``feature_info`` or
            ``forward_intermediates``); otherwise the reason it does not, raised as a one-line error.
        feature_cfg: timm feature-extraction config (e.g. ``dict(feature_cls="getter")``).
        **kwargs: everything ``timm.create_model`` passed on, plus the variant's model arguments.
    """
    if pretrained:
        raise ModelConfigError(no_weights)
    if kwargs.get("features_only") and features is not None:
        raise ModelConfigError(f"{variant}: features_only is not supported: {features}")
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    native = _takes(model_cls, "device") and _takes(model_cls, "dtype")
    if native:  # the model creates its parameters on device/dtype itself (timm convention)
        kwargs.update(device=device, dtype=dtype)
    ctx = torch.device(device) if device is not None and not native else contextlib.nullcontext()
    with ctx:
        model = build_model_with_cfg(model_cls, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)
    if dtype is not None and not native:
        model.to(dtype=dtype)
    return model


def check_global_pool(
    variant: str, global_pool: str, num_classes: int, allowed: tuple[str, ...] = ("avg", "")
) -> None:
    """``global_pool`` is one of ``allowed``; ``""`` (no pooling: ``forward`` returns the last map or the
    tokens) only without a classifier (timm's rule: an unpooled output has no linear classifier)."""
    if global_pool not in allowed:
        raise ModelConfigError(
            f"{variant} supports global_pool {' / '.join(map(repr, allowed))}, got {global_pool!r}"
        )
    if not global_pool and num_classes > 0:
        raise ModelConfigError(f"{variant}: global_pool='' (no pooling) needs num_classes=0")
