"""Test-time analysis callback: saved predictions, confusion matrix, per-class ROC/PR curves, AUC and AP.

During ``trainer.test``, :class:`TestAnalysis` collects the logits ``test_step`` returns
(``ClassificationTask.test_step`` returns them), the labels and the dataset index of every sample,
gathers them from every DDP rank in dataset order (:mod:`lightning_modules.gather`) and, on global
rank 0, writes to the run folder (``trainer.log_dir``, or ``output_dir``):

* ``predictions.pt`` / ``predictions.npz`` (:mod:`lightning_modules.predictions`): the input of
  ``python -m tools.wilcoxon``;
* ``analysis/confusion_matrix.csv`` and ``analysis/per_class.csv`` (:mod:`lightning_modules.analysis_tables`);
* the figures of MSF-CA Fig. 10 (:mod:`lightning_modules.analysis_plots`);
* with a ``WandbLogger``, the figures and tables to W&B (:mod:`lightning_modules.wandb_media`).

``python -m tools.analysis predictions.pt --out dir`` writes the same files from a saved predictions file.

YAML::

    trainer:
      callbacks:
        - class_path: lightning_modules.analysis.TestAnalysis
          init_args: {max_curve_classes: 50}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_modules.analysis_tables import write_confusion_csv, write_per_class_csv
from lightning_modules.gather import gather_in_dataset_order, sampler_indices
from lightning_modules.metrics import confusion_matrix, per_class_auc_ap
from lightning_modules.predictions import save_predictions
from lightning_modules.wandb_media import log_analysis_to_wandb

__all__ = ["TestAnalysis", "write_analysis"]


class TestAnalysis(Callback):
    """Save per-sample test predictions and per-class analysis plots/tables (see the module docstring).

    Args:
        output_dir: folder for the files; default ``trainer.log_dir`` (the run folder).
        max_curve_classes: draw ROC/PR curves only when the dataset has at most this many classes
            (1000 ImageNet curves are neither readable nor cheap); the CSV always has every class.
        plots: write PNG figures (``False``: predictions and CSV only).
        log_to_wandb: log images and tables to every attached ``WandbLogger``.
        prefix: key prefix for W&B (``test/confusion_matrix`` ...).
    """

    def __init__(
        self,
        output_dir: str | None = None,
        max_curve_classes: int = 100,
        plots: bool = True,
        log_to_wandb: bool = True,
        prefix: str = "test",
    ) -> None:
        self.output_dir = output_dir
        self.max_curve_classes = max_curve_classes
        self.plots = plots
        self.log_to_wandb = log_to_wandb
        self.prefix = prefix
        self._logits: list[Tensor] = []
        self._labels: list[Tensor] = []
        self.last_files: dict[str, Path] = {}

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._logits, self._labels = [], []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0:  # one test set per run; extra dataloaders are not analysed
            return
        labels = batch[1]
        logits = outputs.get("logits") if isinstance(outputs, dict) else outputs
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
            with torch.no_grad():  # test_step did not return the logits: compute them again
                logits = pl_module(batch[0])
        self._logits.append(logits.detach().float().cpu())
        self._labels.append(labels.detach().long().cpu())

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._logits:
            return
        logits = torch.cat(self._logits)
        labels = torch.cat(self._labels)
        self._logits, self._labels = [], []
        loader = _test_loader(trainer)
        indices = sampler_indices(loader)
        if indices is not None:
            # batches came in sampler order; limit_test_batches may have stopped early
            indices = indices[: len(labels)] if len(indices) >= len(labels) else None
        logits, labels, indices = gather_in_dataset_order(
            pl_module, logits, labels, indices, _dataset_len(loader)
        )
        out_dir = self.output_dir or trainer.log_dir or trainer.default_root_dir  # log_dir: all ranks
        if not trainer.is_global_zero:
            return
        self.last_files = write_analysis(
            logits,
            labels,
            out_dir,
            class_names=_class_names(trainer),
            plots=self.plots,
            max_curve_classes=self.max_curve_classes,
            indices=indices,
        )
        if self.log_to_wandb:
            log_analysis_to_wandb(trainer, self.prefix, self.last_files)


def write_analysis(
    logits: Tensor,
    labels: Tensor,
    out_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    plots: bool = True,
    max_curve_classes: int = 100,
    indices: Tensor | None = None,
) -> dict[str, Path]:
    """Write predictions, confusion matrix, per-class AUC/AP and curves for ``(logits, labels)``.

    Args:
        logits: ``(N, C)`` class scores.
        labels: ``(N,)`` true classes.
        out_dir: the run folder; predictions go there, the rest under ``analysis/``.
        class_names: ``C`` names (default ``0..C-1``).
        plots: write the PNG figures.
        max_curve_classes: skip the ROC/PR figures above this many classes.
        indices: ``(N,)`` dataset index of each row, stored with the predictions.

    Returns:
        ``{kind: path}`` of every file written (``predictions``, ``confusion_csv``, ``per_class_csv``, ...).
    """
    ana = Path(out_dir) / "analysis"
    ana.mkdir(parents=True, exist_ok=True)
    logits, labels = logits.float().cpu(), labels.long().cpu()
    num_classes = logits.shape[1]
    names = [str(n) for n in class_names] if class_names and len(class_names) == num_classes else None
    names = names or [str(i) for i in range(num_classes)]
    files = save_predictions(out_dir, logits, labels, names, indices)
    confusion = confusion_matrix(logits, labels)
    auc, ap = per_class_auc_ap(logits, labels, num_classes)
    files["confusion_csv"] = write_confusion_csv(ana / "confusion_matrix.csv", confusion, names)
    files["per_class_csv"] = write_per_class_csv(ana / "per_class.csv", confusion, auc, ap, names)
    if plots:
        from lightning_modules.analysis_plots import plot_analysis

        files.update(plot_analysis(logits, labels, confusion, auc, ap, names, ana, max_curve_classes))
    return files


def _test_loader(trainer: Trainer) -> Any:
    loaders = trainer.test_dataloaders
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


def _dataset_len(loader: Any) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


def _class_names(trainer: Trainer) -> list[str] | None:
    dm = getattr(trainer, "datamodule", None)
    names = getattr(dm, "class_names", None) or getattr(dm, "classes", None)
    return [str(n) for n in names] if names else None
