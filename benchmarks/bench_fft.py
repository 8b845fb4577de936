"""FFT paper: parameters and MACs of every model of its tables, and training throughput of one of them.

Parameters and MACs are computed on the ``meta`` device (no memory, no time), so even FFT-Large is free to
count. MACs = ``FlopCounterMode`` FLOPs / 2 for one image (the papers' "FLOPs" convention).
Throughput: optimiser steps of SGD on random images, after warm-up, in images per second.

Examples::

    python -m benchmarks.bench_fft                                  # table at 256x256, 1000 classes
    python -m benchmarks.bench_fft --throughput fft_base --device cuda --batch-size 64 --precision bf16
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import timm
import torch

import backbones  # noqa: F401 - registers the FFT models
from lightning_modules.complexity import count_macs, count_params

PAPER_PARAMS_M = {"fft_tiny": 43, "fft_base": 266, "fft_large": 566}
MODELS: dict[str, dict] = {
    "fft_tiny": {},
    "fft_base": {},
    "fft_large": {},
    "fft_base_no_ram": {},
    "fft_base_no_pos": {},
    "resnet18_vit": {},
    "resnet18_linear": {},
    "vit_base_patch16_224": {"dynamic_img_size": True},
    "deit_small_patch16_224": {"dynamic_img_size": True},
    "tnt_s_patch16_224": {},
}


def complexity(name: str, image_size: int, num_classes: int) -> tuple[float, float]:
    """(parameters in millions, GMACs per image) of ``name`` at ``image_size``."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=num_classes, img_size=image_size, **MODELS.get(name, {}))
    return count_params(model) / 1e6, count_macs(model, image_size) / 1e9


def throughput(
    name: str,
    image_size: int,
    num_classes: int,
    batch_size: int,
    device: str,
    precision: str,
    steps: int,
    warmup: int,
) -> float:
    """Training images per second (forward + backward + SGD step) on random data."""
    model = timm.create_model(name, num_classes=num_classes, img_size=image_size, **MODELS.get(name, {}))
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--throughput", metavar="MODEL", help="also time training steps of this model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    print(f"| model | Params (M) | paper (M) | GMACs @{args.image_size} |")
    print("|---|---|---|---|")
    for name in MODELS:
        params, macs = complexity(name, args.image_size, args.num_classes)
        paper = PAPER_PARAMS_M.get(name)
        gap = f"{paper} ({(params - paper) / paper:+.1%})" if paper else "-"
        print(f"| {name} | {params:.1f} | {gap} | {macs:.2f} |")
    if args.throughput:
        ips = throughput(
            args.throughput,
            args.image_size,
            args.num_classes,
            args.batch_size,
            args.device,
            args.precision,
            args.steps,
            args.warmup,
        )
        print(
            f"\n{args.throughput} training throughput: {ips:.1f} img/s "
            f"(batch {args.batch_size}, {args.image_size}px, {args.precision}, {args.device})"
        )


if __name__ == "__main__":
    main()
