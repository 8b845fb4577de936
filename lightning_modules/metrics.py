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
    return MetricCollection(chosen, prefix=prefix)
