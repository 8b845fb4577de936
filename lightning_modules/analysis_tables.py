"""The CSV tables of a test analysis: confusion matrix and per-class support, AUC, AP and accuracy."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["write_confusion_csv", "write_per_class_csv"]


def write_confusion_csv(path: Path, confusion: Tensor, names: Sequence[str]) -> Path:
    """Rows: true class, columns: predicted class; counts."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        for i, row in enumerate(confusion.tolist()):
            writer.writerow([names[i], *row])
    return path


def write_per_class_csv(
    path: Path, confusion: Tensor, auc: np.ndarray, ap: np.ndarray, names: Sequence[str]
) -> Path:
    """One row per class (class, name, support, auc, ap, accuracy) and a final ``mean`` row."""
    support = confusion.sum(dim=1).numpy()
    correct = confusion.diag().numpy()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "name", "support", "auc", "ap", "accuracy"])
        for c, name in enumerate(names):
            acc = correct[c] / support[c] if support[c] else float("nan")
            writer.writerow([c, name, int(support[c]), f"{auc[c]:.6f}", f"{ap[c]:.6f}", f"{acc:.6f}"])
        mean_auc, mean_ap = f"{np.nanmean(auc):.6f}", f"{np.nanmean(ap):.6f}"
        writer.writerow(["mean", "", int(support.sum()), mean_auc, mean_ap, ""])
    return path
