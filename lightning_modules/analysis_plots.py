"""The figures of a test analysis (MSF-CA Fig. 10): confusion matrix, per-class AUC/AP, ROC and PR curves.

Drawn with matplotlib's Agg backend into PNG files; :func:`plot_analysis` draws all four.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["plot_analysis", "plot_confusion", "plot_curves", "plot_per_class"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_analysis(
    logits: Tensor,
    labels: Tensor,
    confusion: Tensor,
    auc: np.ndarray,
    ap: np.ndarray,
    names: Sequence[str],
    out_dir: Path,
    max_curve_classes: int = 100,
) -> dict[str, Path]:
    """Draw the four figures into ``out_dir``; ROC/PR curves only up to ``max_curve_classes`` classes."""
    files = {
        "confusion_png": plot_confusion(confusion, names, out_dir / "confusion_matrix.png"),
        "per_class_png": plot_per_class(auc, ap, names, out_dir / "per_class_auc_ap.png"),
    }
    if len(names) <= max_curve_classes:
        files.update(plot_curves(logits, labels, auc, ap, names, out_dir))
    return files


def plot_confusion(confusion: Tensor, names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix; counts written in the cells up to 30 classes."""
    plt = _pyplot()
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
    _save(plt, fig, path)
    return path


def plot_per_class(auc: np.ndarray, ap: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Bar charts of per-class AUC and AP (MSF-CA Fig. 10 (c, d))."""
    plt = _pyplot()
    c = len(names)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.25 * c), 4), sharex=True)
    for axis, values, label in ((axes[0], auc, "AUC"), (axes[1], ap, "AP")):
        axis.bar(range(c), np.nan_to_num(values), color="tab:blue")
        axis.set_ylim(0, 1.02)
        axis.set_title(f"per-class {label} (mean {np.nanmean(values):.4f})")
        axis.set_xlabel("class")
        if c <= 30:
            axis.set_xticks(range(c), names, rotation=90, fontsize=7)
    _save(plt, fig, path)
    return path


def plot_curves(
    logits: Tensor, labels: Tensor, auc: np.ndarray, ap: np.ndarray, names: Sequence[str], out_dir: Path
) -> dict[str, Path]:
    """One-vs-rest ROC and PR curves, one line per class (MSF-CA Fig. 10 (a, b))."""
    from torchmetrics.functional.classification import multiclass_precision_recall_curve, multiclass_roc

    plt = _pyplot()
    c = len(names)
    probs = logits.double().softmax(dim=1)
    fpr, tpr, _ = multiclass_roc(probs, labels, c, thresholds=None)
    precision, recall, _ = multiclass_precision_recall_curve(probs, labels, c, thresholds=None)
    files: dict[str, Path] = {}
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
        if c <= 30:
            axis.legend(fontsize=6, ncol=2, loc="lower right" if kind == "roc" else "lower left")
        files[f"{kind}_png"] = out_dir / f"{kind}_curves.png"
        _save(plt, fig, files[f"{kind}_png"])
    return files


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
