"""The loss classes selectable from YAML as ``lightning_modules.losses.<Name>`` (re-exported by __init__)."""

from lightning_modules.losses.center import CenterLoss
from lightning_modules.losses.coco import COCOLoss
from lightning_modules.losses.focal import FocalLoss
from lightning_modules.losses.lgm import LGMLoss
from lightning_modules.losses.margin import ASoftmaxLoss, CosFaceLoss
from lightning_modules.losses.mcloss import MCLoss

__all__ = ["ASoftmaxLoss", "COCOLoss", "CenterLoss", "CosFaceLoss", "FocalLoss", "LGMLoss", "MCLoss"]
