"""CS-Net benchmarks: parameters, MACs and latency of every registered variant, and the CS module's cost.

Run ``python -m benchmarks.bench_csnet`` (CPU, a few minutes at 448 px) or
``--device cuda [--dtype bfloat16]``.
Prints a markdown table, one row per registered ``csnet*`` model:

* Params (M) for 200 classes (CUB);
* MACs (G) per image at ``--image-size`` (default 448, the recipe's), ``FlopCounterMode`` FLOPs / 2 (counts
  convolutions, matmuls and ``scaled_dot_product_attention``; not element-wise ops, norms or pooling);
* CS MACs (G): the part of the MACs spent in the CS module (model minus the same trunk's stage 1-4), and the
  same figure from the hand count of Eqs. (1)-(6) (``analytic``) as a cross-check;
* latency (ms): eval forward of a batch under ``inference_mode`` (median of ``--runs``), and train step
  (forward + backward) of the same batch.
"""

from __future__ import annotations

import argparse
import datetime
import platform

import timm
import torch
from torch import nn

import backbones  # noqa: F401 - registers the csnet models
from backbones.csnet import CSNet
from benchmarks.harness import median_ms
from lightning_modules.complexity import count_macs, count_params


def cs_macs_analytic(model: CSNet, image_size: int) -> float:
    """Hand count of the CS module's MACs (G) from Eqs. (1)-(6), for one image."""
    cs = model.cs
    info = model.trunk.feature_info
    cl, ch = info[model.low_stage]["num_chs"], info[4]["num_chs"]
    nh = (image_size // 32) ** 2
    nl = (image_size // info[model.low_stage]["reduction"]) ** 2
    total = 0
    if cs.channel is not None:  # key conv, Q K^T, A V
        total += ch * cl * nh + cl * cl * nh + cl * cl * (nl if cs.channel.value == "low" else nh)
    if cs.spatial is not None:
        d = cs.spatial.query.out_channels
        total += (
            cl * d * nl
            + ch * d * nh
            + cs.spatial.proj_value.in_channels * cl * nh
            + nl * nh * d
            + nl * nh * cl
        )
    if cs.merge is not None:
        total += 2 * cl * cl * nl
    if cs.fusion.mode == "conv":
        total += (
            sum(m.in_channels * m.out_channels for m in cs.fusion.modules() if isinstance(m, nn.Conv2d)) * nh
        )
    elif cs.fusion.mode == "sum":
        total += cl * ch * nh
    return total / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=sorted(timm.list_models("csnet*")))
    args = parser.parse_args()
    device, size = torch.device(args.device), args.image_size
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    name_dev = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"# CS-Net benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {name_dev}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.dtype}, {size}x{size}, "
        f"batch {args.batch_size}\n"
    )
    print(
        "| model | params (M) | MACs (G) | CS MACs (G) | CS MACs analytic (G) | eval (ms) | train step (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = timm.create_model(name, num_classes=200).to(device)
        one = torch.randn(1, 3, size, size, device=device)
        total = count_macs(model, one) / 1e9
        trunk = count_macs(
            lambda x, m=model: m.trunk.forward_intermediates(x, indices=[4], intermediates_only=True), one
        )
        trunk /= 1e9
        head = model.num_features * 200 / 1e9
        x = torch.randn(args.batch_size, 3, size, size, device=device)
        model.eval()

        def infer(m: nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.inference_mode(), torch.autocast(**amp):
                m(x)

        model.train()

        def step(m: nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.autocast(**amp):
                loss = m(x).float().logsumexp(1).mean()
            loss.backward()

        train_ms = median_ms(step, device, args.runs, args.warmup) if args.runs else float("nan")
        model.eval()
        eval_ms = median_ms(infer, device, args.runs, args.warmup) if args.runs else float("nan")
        params = count_params(model) / 1e6
        print(
            f"| {name} | {params:.2f} | {total:.2f} | {total - trunk - head:.3f} | "
            f"{cs_macs_analytic(model, size):.3f} | {eval_ms:.0f} | {train_ms:.0f} |"
        )
        del model


if __name__ == "__main__":
    main()
