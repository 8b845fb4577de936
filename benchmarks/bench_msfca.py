"""MSF-CA figures: parameters and MACs of every model of Tables I, II, IV and VI against the paper.

Usage::

    python benchmarks/bench_msfca.py                 # params + MACs table (meta device, a minute on CPU)
    python benchmarks/bench_msfca.py --latency       # also forward latency at 224x224 (GPU if available)

Two MAC conventions are printed: ``torch.utils.flop_counter`` (convs, linears and matmuls incl. attention;
flops / 2) and the ``thop`` convention the paper's figures follow (convs and linears, 2 per BatchNorm
element, 1 per pooled element; attention matmuls not counted). The table goes to stdout in Markdown.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from torch import nn

import backbones  # noqa: F401  (registers the models)
from lightning_modules.complexity import count_macs, count_params

ROWS: list[tuple[str, str, dict, float, float]] = [
    ("I/II Baseline", "msfca50_baseline", {}, 23.557, 4.109),
    ("I +Cross Scale (IV Baseline)", "msfca50_msf", {}, 36.1, 6.535),
    ("II +PA", "msfca50_pa", {}, 37.143, 6.06),
    ("II +CA", "msfca50_ca", {}, 49.966, 6.677),
    ("II +PCA-Serial (VI B)", "msfca50_pca_serial", {}, 63.551, 8.627),
    ("II +PCA-Parallel", "msfca50_pca_parallel", {}, 63.551, 8.627),
    ("IV +PA", "msfca50_msf_pa", {}, 49.685, 8.485),
    ("IV +CA", "msfca50_msf_ca", {}, 62.508, 9.102),
    ("IV +PCA-Serial (VI B)", "msfca50_msf_pca_serial", {}, 76.094, 11.052),
    ("IV +PCA-Parallel (VI B, VIII Ours)", "msfca50", {}, 76.094, 11.052),
    ("VI PCA-Serial A", "msfca50_pca_serial", {"version": "A"}, 86.125, 16.066),
    ("VI PCA-Serial C", "msfca50_pca_serial", {"version": "C"}, 85.521, 13.925),
    ("VI PCA-Serial D", "msfca50_pca_serial", {"version": "D"}, 62.947, 6.485),
    ("VI MSF+PCA-Serial A", "msfca50_msf_pca_serial", {"version": "A"}, 98.668, 18.492),
    ("VI MSF+PCA-Serial C", "msfca50_msf_pca_serial", {"version": "C"}, 98.063, 16.35),
    ("VI MSF+PCA-Serial D", "msfca50_msf_pca_serial", {"version": "D"}, 75.489, 8.91),
    ("VI MSF+PCA-Parallel A", "msfca50_msf_pca_parallel", {"version": "A"}, 98.668, 18.492),
    ("VI MSF+PCA-Parallel C", "msfca50_msf_pca_parallel", {"version": "C"}, 98.063, 16.35),
    ("VI MSF+PCA-Parallel D", "msfca50_msf_pca_parallel", {"version": "D"}, 75.489, 8.91),
]


def thop_style_macs(model: nn.Module, x: torch.Tensor) -> float:
    """MACs as ``thop`` counts them: conv/linear MACs, 2 per BN element, pooled elements; no matmuls."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.BatchNorm2d):
            total += 2 * output.numel()
        elif isinstance(module, nn.AvgPool2d):
            k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            total += output.numel() * k * k

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total / 1e9


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> float:
    return count_macs(model, x) / 1e9


def latency_ms(name: str, kwargs: dict, device: torch.device, batch: int, reps: int) -> float:
    model = timm.create_model(name, num_classes=24, **kwargs).to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        for _ in range(3):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", action="store_true", help="also time a forward pass at 224x224")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the latency run")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    header = "| paper row | model | params (M) ours / paper | MACs (G) flop_counter | thop-style | paper |"
    if args.latency:
        header += f" latency ms (batch {args.batch}, {device.type}) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row, name, kwargs, paper_params, paper_macs in ROWS:
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=24, **kwargs)
            x = torch.empty(1, 3, 224, 224)
        params = count_params(model) / 1e6
        macs = flop_counter_macs(model, x)
        thop = thop_style_macs(model, x)
        model_label = name + "".join(f" {k}={v}" for k, v in kwargs.items())
        line = (
            f"| {row} | {model_label} | {params:.3f} / {paper_params} "
            f"({(params / paper_params - 1) * 100:+.2f} %) "
            f"| {macs:.3f} ({(macs / paper_macs - 1) * 100:+.1f} %) "
            f"| {thop:.3f} ({(thop / paper_macs - 1) * 100:+.1f} %) "
            f"| {paper_macs} |"
        )
        if args.latency:
            line += f" {latency_ms(name, kwargs, device, args.batch, args.reps):.1f} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
