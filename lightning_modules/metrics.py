"""Classification metrics selectable by name from YAML (``model.init_args.metrics``).

All are torchmetrics objects, so they accumulate per device and synchronise across DDP ranks when computed.
Names and their definitions (papers' conventions):

=========  ===========================================================================
acc1..5    top-k accuracy, micro-averaged over samples (``MulticlassAccuracy(top_k=k)``)
precision  macro-averaged precision over classes
recall     macro-averaged recall
f1         macro-averaged F1
kappa      Cohen's kappa
auroc      mAUC: mean one-vs-rest ROC AUC over classes (exact, no binning)
ap         mAP: mean average precision over classes (exact)
=========  ===========================================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassCohenKappa,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

METRICS: dict[str, Callable[[int], Metric]] = {
    "acc1": lambda n: MulticlassAccuracy(n, top_k=1, average="micro"),
    "acc2": lambda n: MulticlassAccuracy(n, top_k=2, average="micro"),
    "acc3": lambda n: MulticlassAccuracy(n, top_k=3, average="micro"),
    "acc5": lambda n: MulticlassAccuracy(n, top_k=5, average="micro"),
    "precision": lambda n: MulticlassPrecision(n, average="macro"),
    "recall": lambda n: MulticlassRecall(n, average="macro"),
    "f1": lambda n: MulticlassF1Score(n, average="macro"),
    "kappa": lambda n: MulticlassCohenKappa(n),
    "auroc": lambda n: MulticlassAUROC(n, average="macro", thresholds=None),
    "ap": lambda n: MulticlassAveragePrecision(n, average="macro", thresholds=None),
}


class UnknownMetricError(ValueError):
    """A metric name in the YAML that this project does not define."""

    user_error = True


_TOP_K = {"acc1": 1, "acc2": 2, "acc3": 3, "acc5": 5}


def build_metrics(names: Sequence[str], num_classes: int, prefix: str) -> MetricCollection:
    """Build a ``MetricCollection`` of the named metrics, keys ``f"{prefix}{name}"``.

    Top-k accuracies with k >= num_classes are dropped with a warning (they would always be 1).

    Raises:
        ValueError: an unknown metric name (the message lists the available ones).
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UnknownMetricError(
            f"unknown metric(s) {unknown} in model.init_args.metrics; available: {sorted(METRICS)}"
        )
    chosen = {}
    for name in names:
        if name in _TOP_K and _TOP_K[name] >= num_classes and name != "acc1":
            warnings.warn(
                f"metric {name} skipped: top-{_TOP_K[name]} is trivial with {num_classes} classes",
                stacklevel=2,
            )
            continue
        chosen[name] = METRICS[name](num_classes)
    # compute_groups=False: torchmetrics would otherwise merge metrics whose states are equal after the first
    # update and then update only one of them: with a first batch right at top-1, acc3 (top-3 counts) and f1
    # (macro, top-1) were merged and f1 reported top-3 counts (1.0 at 99.3 % accuracy)
    return MetricCollection(chosen, prefix=prefix, compute_groups=False)


def per_class_auc_ap(
    scores: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    num_classes: int | None = None,
    *,
    logits: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest ROC AUC and average precision for every class (MSF-CA Fig. 10, Tables III, V).

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
    ap = multiclass_average_precision(probs, labels, num_classes, average=None, thresholds=None)
    ap = ap.double().numpy()
    counts = torch.bincount(labels, minlength=num_classes).numpy()
    undefined = (counts == 0) | (counts == labels.numel())
    auc[undefined] = np.nan
    ap[undefined] = np.nan
    return auc, ap


def confusion_matrix(logits: Tensor, labels: Tensor) -> Tensor:
    """``(C, C)`` counts: row = true class, column = arg-max prediction."""
    num_classes = logits.shape[1]
    preds = logits.argmax(dim=1)
    flat = labels.long() * num_classes + preds
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)
