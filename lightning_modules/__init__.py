"""LightningModules: the training task around a backbone, plus its metrics, schedulers and callbacks."""

from lightning_modules.task import ClassificationTask, create_backbone

__all__ = ["ClassificationTask", "create_backbone"]
