"""Losses selectable from YAML (``model.init_args.loss``); see :mod:`lightning_modules.losses.base`."""

from lightning_modules.losses._exports import *  # noqa: F403
from lightning_modules.losses._exports import __all__ as _loss_names
from lightning_modules.losses.base import TaskLoss, compute_loss

__all__ = ["TaskLoss", "compute_loss", *_loss_names]
