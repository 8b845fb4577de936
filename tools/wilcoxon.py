"""Per-class AUC/AP of two runs and the Wilcoxon signed-rank test between them (MSF-CA Tables III, V).

Each run is a predictions file written by :class:`lightning_modules.analysis.TestAnalysis`
(``predictions.pt`` with ``logits`` (N, C) and ``labels`` (N,), or the same keys in ``predictions.npz``).
Both runs must be evaluated on the same test set (same per-class sample counts; the order may differ).

Per class ``c`` (one-vs-rest, on softmax probabilities): ROC AUC and average precision (AP, the step-wise
area under the precision-recall curve, ``sum_n (R_n - R_{n-1}) P_n``, as scikit-learn and torchmetrics
define it). A class with no positive (or no negative) test sample has no AUC/AP: it is ``nan`` and left
out of the test.

The test pairs the per-class values ``a`` (run A, the baseline) and ``b`` (run B): ``d = a - b``; zero
differences are dropped (``zero_method="wilcox"``), ``|d|`` is ranked with ties averaged, and, as in the
MSF-CA paper, **R+** is the sum of ranks where the baseline is greater (``d > 0``) and **R-** where it is
smaller. The statistic is ``min(R+, R-)``; the two-sided p-value comes from ``scipy.stats.wilcoxon``. The
default ``--method approx`` (normal approximation with tie correction, no continuity correction)
reproduces the paper's p-values from its R+/R- (e.g. Table III, +PA AUC: n = 14, R+ = 38.5 ->
p = 0.3795, paper 0.3792); ``--method exact`` or ``auto`` use scipy's other methods.

Example::

    python -m tools.wilcoxon runs/msfca50_baseline_ceramic/seed42/eval/test-best/predictions.pt \\
        runs/msfca50_msf_ceramic/seed42/eval/test-best/predictions.pt --names Baseline "+Cross Scale"
"""

from __future__ import annotations

import argparse
import csv
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from scipy import stats

from lightning_modules.metrics import per_class_auc_ap
from lightning_modules.predictions import load_predictions
from tools.common import ToolError, run_main


@dataclass
class SignedRankResult:
    """Wilcoxon signed-rank test of paired per-class values (baseline ``a`` vs. ``b``)."""

    n: int
    r_plus: float
    r_minus: float
    statistic: float
    p_value: float
    significant: bool
    alpha: float
    method: str


def signed_rank(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    alpha: float = 0.05,
    method: Literal["approx", "exact", "auto"] = "approx",
) -> SignedRankResult:
    """Wilcoxon signed-rank test of ``a`` (baseline) against ``b``; see the module docstring.

    Pairs with a ``nan`` on either side are dropped; zero differences are dropped (Wilcoxon's method).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ToolError(f"paired samples must have the same length, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    d = d[d != 0]
    if d.size == 0:
        return SignedRankResult(0, 0.0, 0.0, 0.0, 1.0, False, alpha, method)
    ranks = stats.rankdata(np.abs(d))
    r_plus = float(ranks[d > 0].sum())
    r_minus = float(ranks[d < 0].sum())
    kwargs = {"correction": False} if method == "approx" else {}
    res = stats.wilcoxon(
        a[keep], b[keep], zero_method="wilcox", alternative="two-sided", method=method, **kwargs
    )
    p = float(res.pvalue)
    return SignedRankResult(
        int(d.size), r_plus, r_minus, float(res.statistic), p, bool(p < alpha), alpha, method
    )


def compare_runs(
    path_a: str, path_b: str, alpha: float = 0.05, method: Literal["approx", "exact", "auto"] = "approx"
) -> dict[str, object]:
    """Per-class AUC/AP of two prediction files and the signed-rank test on each metric."""
    logits_a, labels_a = load_predictions(path_a)
    logits_b, labels_b = load_predictions(path_b)
    num_classes = max(logits_a.shape[1], logits_b.shape[1])
    counts_a = torch.bincount(labels_a.long(), minlength=num_classes)
    counts_b = torch.bincount(labels_b.long(), minlength=num_classes)
    if not torch.equal(counts_a, counts_b):
        raise ToolError(
            f"'{path_a}' and '{path_b}' were not evaluated on the same test samples (their per-class sample "
            "counts differ); the test needs paired per-class values from one test set"
        )
    if not torch.equal(labels_a.long(), labels_b.long()):
        warnings.warn(
            "the two runs list their test samples in different orders; per-class AUC/AP do not depend on it",
            stacklevel=2,
        )
    auc_a, ap_a = per_class_auc_ap(logits_a, labels_a, num_classes)
    auc_b, ap_b = per_class_auc_ap(logits_b, labels_b, num_classes)
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "ap_a": ap_a,
        "ap_b": ap_b,
        "auc": signed_rank(auc_a, auc_b, alpha, method),
        "ap": signed_rank(ap_a, ap_b, alpha, method),
    }


def format_table(result: dict[str, object], name_a: str, name_b: str) -> str:
    """Markdown in the layout of MSF-CA Table III: one row, AUC and AP blocks of R+, R-, p, Sig."""
    auc: SignedRankResult = result["auc"]  # type: ignore[assignment]
    ap: SignedRankResult = result["ap"]  # type: ignore[assignment]

    def cells(r: SignedRankResult) -> str:
        return f"{r.r_plus:g} | {r.r_minus:g} | {r.p_value:.4f} | {'Yes' if r.significant else 'No'} | {r.n}"

    return "\n".join(
        [
            f"| {name_a} vs. | AUC R+ | AUC R- | AUC p | AUC Sig. | AUC n "
            "| AP R+ | AP R- | AP p | AP Sig. | AP n |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
            f"| {name_b} | {cells(auc)} | {cells(ap)} |",
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Command line: ``python -m tools.wilcoxon A/predictions.pt B/predictions.pt``."""
    parser = argparse.ArgumentParser(prog="python -m tools.wilcoxon", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="baseline: predictions.pt/.npz or the run folder holding it")
    parser.add_argument("run_b", help="compared run: predictions.pt/.npz or its run folder")
    parser.add_argument("--names", nargs=2, default=None, metavar=("A", "B"), help="row labels")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--method", default="approx", choices=["approx", "exact", "auto"])
    parser.add_argument("--csv", default=None, help="write per-class AUC/AP of both runs and the test here")
    args = parser.parse_args(argv)
    name_a, name_b = args.names or (args.run_a, args.run_b)
    result = compare_runs(args.run_a, args.run_b, args.alpha, args.method)
    print(format_table(result, name_a, name_b))
    print(
        f"\nR+: sum of ranks where {name_a} > {name_b}; R-: where it is smaller (zero differences dropped). "
        f"Two-sided Wilcoxon signed-rank test, method={args.method}, alpha={args.alpha}."
    )
    for metric in ("auc", "ap"):
        a, b = result[f"{metric}_a"], result[f"{metric}_b"]
        print(f"mean {metric.upper()}: {name_a} {np.nanmean(a):.4f}  {name_b} {np.nanmean(b):.4f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "auc_a", "auc_b", "ap_a", "ap_b"])
            for c in range(len(result["auc_a"])):  # type: ignore[arg-type]
                writer.writerow([c] + [float(result[k][c]) for k in ("auc_a", "auc_b", "ap_a", "ap_b")])  # type: ignore[index]
            for metric in ("auc", "ap"):
                writer.writerow([f"# {metric}"] + [f"{k}={v}" for k, v in asdict(result[metric]).items()])  # type: ignore[call-overload]
        print(f"wrote {args.csv}")
    return result


if __name__ == "__main__":
    raise SystemExit(run_main(main))
