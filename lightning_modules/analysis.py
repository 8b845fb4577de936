"""Test-time analysis of a run: saved predictions, confusion matrix, per-class ROC/PR curves, AUC and AP.

:class:`TestAnalysis` is a Lightning callback. During ``trainer.test`` it collects the logits the task's
``test_step`` returns (``ClassificationTask.test_step`` returns them) and the batch labels, gathers them
from every DDP rank in dataset order, and on global rank 0 writes to the run folder
(``trainer.log_dir``, or ``output_dir``):

* ``predictions.pt`` (``{"logits": (N, C) float32, "labels": (N,) int64, "class_names": [...]}``) and
  ``predictions.npz`` (``logits``, ``labels``): the input of ``python -m tools.wilcoxon``;
* ``analysis/confusion_matrix.csv`` / ``.png`` (rows: true class, columns: predicted class; counts);
* ``analysis/per_class.csv`` (class, support, AUC, AP, accuracy) and ``per_class_auc_ap.png``
  (MSF-CA Fig. 10 (c, d));
* ``analysis/roc_curves.png`` and ``analysis/pr_curves.png``, one curve per class (MSF-CA Fig. 10 (a, b)).

When a :class:`~lightning.pytorch.loggers.WandbLogger` is attached, the images are logged as
``wandb.Image`` and the per-class table and confusion matrix as ``wandb.Table``: ``<prefix>/confusion_matrix``, ``per_class_auc_ap``, ``roc_curves``, ``pr_curves``
(images), ``<prefix>/per_class_table`` and ``confusion_matrix_table``.

AUC and AP are one-vs-rest on softmax probabilities (:func:`per_class_auc_ap`);
classes without positives in the test set get ``nan``.

DDP order: with Lightning's ``DistributedSampler`` (no shuffle) rank ``r`` sees samples ``r, r+W, ...``
of the padded index list, so interleaving the gathered per-rank predictions and dropping the padding
restores the dataset order; two runs are then paired sample by sample whatever their device counts.

YAML::

    trainer:
      callbacks:
        - class_path: lightning_modules.analysis.TestAnalysis
          init_args: {max_curve_classes: 50}

On demand, from a saved predictions file: ``python -m lightning_modules.analysis predictions.pt --out dir``.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

__all__ = ["TestAnalysis", "gather_in_dataset_order", "per_class_auc_ap", "write_analysis"]


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
        dataset_len = _test_dataset_len(trainer)
        logits, labels = gather_in_dataset_order(pl_module, logits, labels, dataset_len)
        out_dir = (
            self.output_dir or trainer.log_dir or trainer.default_root_dir
        )  # log_dir broadcasts: all ranks
        if not trainer.is_global_zero:
            return
        class_names = _class_names(trainer)
        self.last_files = write_analysis(
            logits,
            labels,
            out_dir,
            class_names=class_names,
            plots=self.plots,
            max_curve_classes=self.max_curve_classes,
        )
        if self.log_to_wandb:
            _log_to_wandb(trainer, self.prefix, self.last_files)


def per_class_auc_ap(
    scores: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    num_classes: int | None = None,
    *,
    logits: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest ROC AUC and average precision for every class.

    Args:
        scores: ``(N, C)`` logits (``logits=True``, softmax is applied) or probabilities.
        labels: ``(N,)`` integer class labels.
        num_classes: ``C`` (default: ``scores.shape[1]``).
        logits: whether ``scores`` are logits.

    Returns:
        ``(auc, ap)``, two float arrays of length ``C``; ``nan`` for classes with no positive or no negative.
    """
    from torchmetrics.functional.classification import multiclass_auroc, multiclass_average_precision

    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected scores (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    num_classes = int(num_classes or scores.shape[1])
    probs = scores.softmax(dim=1) if logits else scores
    auc = multiclass_auroc(probs, labels, num_classes, average=None, thresholds=None).double().numpy()
    ap = (
        multiclass_average_precision(probs, labels, num_classes, average=None, thresholds=None)
        .double()
        .numpy()
    )
    counts = torch.bincount(labels, minlength=num_classes).numpy()
    undefined = (counts == 0) | (counts == labels.numel())
    auc[undefined] = np.nan
    ap[undefined] = np.nan
    return auc, ap


# ------------------------------------------------------------------------------------------ gathering
def gather_in_dataset_order(
    pl_module: LightningModule, logits: Tensor, labels: Tensor, dataset_len: int | None = None
) -> tuple[Tensor, Tensor]:
    """All-gather per-rank predictions and restore the dataset order (see the module docstring).

    Ranks may hold different counts (a sampler without padding); then the per-rank blocks are padded for
    the collective, trimmed, and concatenated rank by rank.
    """
    world = pl_module.trainer.world_size if pl_module._trainer is not None else 1
    if world == 1:
        return logits, labels
    device = pl_module.device
    count = torch.tensor([logits.shape[0]], device=device)
    counts = pl_module.all_gather(count).view(-1).cpu()
    most = int(counts.max())
    pad = most - logits.shape[0]
    logits_p = torch.cat([logits, logits.new_zeros(pad, logits.shape[1])]).to(device)
    labels_p = torch.cat([labels, labels.new_full((pad,), -1)]).to(device)
    all_logits = pl_module.all_gather(logits_p).cpu()  # (world, most, C)
    all_labels = pl_module.all_gather(labels_p).cpu()  # (world, most)
    if bool((counts == most).all()):
        # interleave: position i*W + r holds rank r's i-th sample
        logits = all_logits.transpose(0, 1).reshape(-1, all_logits.shape[-1])
        labels = all_labels.transpose(0, 1).reshape(-1)
        if dataset_len is not None and dataset_len <= labels.shape[0]:
            logits, labels = logits[:dataset_len], labels[:dataset_len]
        return logits, labels
    parts = [(all_logits[r, : counts[r]], all_labels[r, : counts[r]]) for r in range(world)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _test_dataset_len(trainer: Trainer) -> int | None:
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return len(loader.dataset)  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        return None


def _class_names(trainer: Trainer) -> list[str] | None:
    dm = getattr(trainer, "datamodule", None)
    names = getattr(dm, "class_names", None) or getattr(dm, "classes", None)
    return [str(n) for n in names] if names else None


# ------------------------------------------------------------------------------------------- writing
def write_analysis(
    logits: Tensor,
    labels: Tensor,
    out_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    plots: bool = True,
    max_curve_classes: int = 100,
) -> dict[str, Path]:
    """Write predictions, confusion matrix, per-class AUC/AP and curves for ``(logits, labels)``.

    Args:
        logits: ``(N, C)`` class scores.
        labels: ``(N,)`` true classes.
        out_dir: the run folder; predictions go there, the rest under ``analysis/``.
        class_names: ``C`` names (default ``0..C-1``).
        plots: write the PNG figures.
        max_curve_classes: skip the ROC/PR figures above this many classes.

    Returns:
        ``{kind: path}`` of every file written (``predictions``, ``confusion_csv``, ``per_class_csv``, ...).
    """
    out = Path(out_dir)
    ana = out / "analysis"
    ana.mkdir(parents=True, exist_ok=True)
    logits = logits.float().cpu()
    labels = labels.long().cpu()
    num_classes = logits.shape[1]
    names = [str(n) for n in class_names] if class_names and len(class_names) == num_classes else None
    names = names or [str(i) for i in range(num_classes)]
    files: dict[str, Path] = {}

    files["predictions"] = out / "predictions.pt"
    torch.save({"logits": logits, "labels": labels, "class_names": names}, files["predictions"])
    files["predictions_npz"] = out / "predictions.npz"
    np.savez_compressed(files["predictions_npz"], logits=logits.numpy(), labels=labels.numpy())

    preds = logits.argmax(dim=1)
    confusion = torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(num_classes, -1)
    files["confusion_csv"] = ana / "confusion_matrix.csv"
    with open(files["confusion_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        for i, row in enumerate(confusion.tolist()):
            writer.writerow([names[i], *row])

    auc, ap = per_class_auc_ap(logits, labels, num_classes)
    support = confusion.sum(dim=1).numpy()
    correct = confusion.diag().numpy()
    files["per_class_csv"] = ana / "per_class.csv"
    with open(files["per_class_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "name", "support", "auc", "ap", "accuracy"])
        for c in range(num_classes):
            acc = correct[c] / support[c] if support[c] else float("nan")
            writer.writerow([c, names[c], int(support[c]), f"{auc[c]:.6f}", f"{ap[c]:.6f}", f"{acc:.6f}"])
        writer.writerow(
            ["mean", "", int(support.sum()), f"{np.nanmean(auc):.6f}", f"{np.nanmean(ap):.6f}", ""]
        )

    if plots:
        files.update(_plot_all(logits, labels, confusion, auc, ap, names, ana, max_curve_classes))
    return files


def _plot_all(
    logits: Tensor,
    labels: Tensor,
    confusion: Tensor,
    auc: np.ndarray,
    ap: np.ndarray,
    names: list[str],
    ana: Path,
    max_curve_classes: int,
) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, Path] = {}
    c = len(names)
    few = c <= 30

    size = min(4 + 0.35 * c, 24)
    fig, axis = plt.subplots(figsize=(size, size))
    norm = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    image = axis.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=axis, fraction=0.046, label="fraction of the true class")
    if few:
        axis.set_xticks(range(c), names, rotation=90)
        axis.set_yticks(range(c), names)
        for i in range(c):
            for j in range(c):
                if confusion[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    axis.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7, color=colour)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"Confusion matrix (accuracy {confusion.diag().sum() / confusion.sum():.4f})")
    files["confusion_png"] = ana / "confusion_matrix.png"
    fig.tight_layout()
    fig.savefig(files["confusion_png"], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.25 * c), 4), sharex=True)
    for axis, values, label in ((axes[0], auc, "AUC"), (axes[1], ap, "AP")):
        axis.bar(range(c), np.nan_to_num(values), color="tab:blue")
        axis.set_ylim(0, 1.02)
        axis.set_title(f"per-class {label} (mean {np.nanmean(values):.4f})")
        axis.set_xlabel("class")
        if few:
            axis.set_xticks(range(c), names, rotation=90, fontsize=7)
    files["per_class_png"] = ana / "per_class_auc_ap.png"
    fig.tight_layout()
    fig.savefig(files["per_class_png"], dpi=100)
    plt.close(fig)

    if c <= max_curve_classes:
        from torchmetrics.functional.classification import multiclass_precision_recall_curve, multiclass_roc

        probs = logits.double().softmax(dim=1)
        fpr, tpr, _ = multiclass_roc(probs, labels, c, thresholds=None)
        precision, recall, _ = multiclass_precision_recall_curve(probs, labels, c, thresholds=None)
        for kind, xs, ys, scores, xlabel, ylabel in (
            ("roc", fpr, tpr, auc, "false positive rate", "true positive rate"),
            ("pr", recall, precision, ap, "recall", "precision"),
        ):
            fig, axis = plt.subplots(figsize=(7, 6))
            for k in range(c):
                if np.isnan(scores[k]):
                    continue
                axis.plot(xs[k].numpy(), ys[k].numpy(), lw=1, label=f"{names[k]} ({scores[k]:.3f})")
            if kind == "roc":
                axis.plot([0, 1], [0, 1], "k--", lw=0.5)
            axis.set_xlabel(xlabel)
            axis.set_ylabel(ylabel)
            axis.set_xlim(0, 1)
            axis.set_ylim(0, 1.02)
            metric = "AUC" if kind == "roc" else "AP"
            axis.set_title(f"{kind.upper()} curve per class (mean {metric} {np.nanmean(scores):.4f})")
            if few:
                axis.legend(fontsize=6, ncol=2, loc="lower right" if kind == "roc" else "lower left")
            files[f"{kind}_png"] = ana / f"{kind}_curves.png"
            fig.tight_layout()
            fig.savefig(files[f"{kind}_png"], dpi=100)
            plt.close(fig)
    return files


def _log_to_wandb(trainer: Trainer, prefix: str, files: dict[str, Path]) -> None:
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
    for key in ("confusion_png", "per_class_png", "roc_png", "pr_png"):
        if key in files:
            payload[f"{prefix}/{files[key].stem}"] = wandb.Image(str(files[key]))
    for lg in loggers:
        lg.experiment.log(payload)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Regenerate the analysis files from a saved ``predictions.pt``/``.npz``."""
    from tools.wilcoxon import load_predictions

    parser = argparse.ArgumentParser(prog="python -m lightning_modules.analysis", description=main.__doc__)
    parser.add_argument("predictions", help="predictions.pt / .npz, or the run folder holding it")
    parser.add_argument("--out", default=None, help="output folder (default: the predictions file's folder)")
    parser.add_argument("--max-curve-classes", type=int, default=100)
    args = parser.parse_args(argv)
    logits, labels = load_predictions(args.predictions)
    path = Path(args.predictions)
    out = args.out or (path if path.is_dir() else path.parent)
    names = None
    pt = (path / "predictions.pt") if path.is_dir() else path
    if pt.suffix == ".pt" and pt.is_file():
        names = torch.load(pt, map_location="cpu", weights_only=True).get("class_names")
    files = write_analysis(logits, labels, out, class_names=names, max_curve_classes=args.max_curve_classes)
    for kind, file in files.items():
        print(f"{kind}: {file}")
    return files


if __name__ == "__main__":
    main()
