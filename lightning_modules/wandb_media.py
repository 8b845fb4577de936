"""Log the files of a test analysis to every attached W&B logger (images and tables)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

__all__ = ["log_analysis_to_wandb"]

IMAGE_KEYS = ("confusion_png", "per_class_png", "roc_png", "pr_png")


def log_analysis_to_wandb(trainer: Trainer, prefix: str, files: dict[str, Path]) -> None:
    """``<prefix>/<figure stem>`` as ``wandb.Image``; ``per_class_table`` and ``confusion_matrix_table``."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    import wandb

    with open(files["per_class_csv"]) as f:
        rows = list(csv.reader(f))
    with open(files["confusion_csv"]) as f:
        confusion_rows = list(csv.reader(f))
    payload: dict[str, Any] = {
        f"{prefix}/per_class_table": wandb.Table(columns=rows[0], data=rows[1:-1]),
        f"{prefix}/confusion_matrix_table": wandb.Table(columns=confusion_rows[0], data=confusion_rows[1:]),
    }
    for key in IMAGE_KEYS:
        if key in files:
            payload[f"{prefix}/{files[key].stem}"] = wandb.Image(str(files[key]))
    for lg in loggers:
        lg.experiment.log(payload)
