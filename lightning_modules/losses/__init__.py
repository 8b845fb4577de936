"""Losses selectable from YAML (``model.init_args.loss``); see :mod:`lightning_modules.losses.base`."""

import importlib.util

from lightning_modules.losses.base import TaskLoss, compute_loss

__all__ = ["TaskLoss", "compute_loss"]

if importlib.util.find_spec("lightning_modules.losses._exports") is not None:
    from lightning_modules.losses._exports import *  # noqa: F403
    from lightning_modules.losses._exports import __all__ as _loss_names

    __all__ += list(_loss_names)
