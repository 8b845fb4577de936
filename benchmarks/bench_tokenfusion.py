"""TokenFusion benchmarks: parameters, MACs (total and per part), latency and training memory.

Run ``python -m benchmarks.bench_tokenfusion`` (CPU: parameters and MACs are counted on the meta device, so
it takes seconds; latency only with ``--runs N``) or ``--device cuda --runs 20 --batch-size 64`` on a GPU
(adds eval latency, train-step latency and the peak memory of a bf16 train step, the figure that decides
the per-GPU batch on a 24 GB RTX 3090). Prints one markdown row per registered ``tokenfusion*`` model:

* Params (M), 1000 classes, ``--head`` pooling head;
* MACs (G) per image at ``--image-size`` (``FlopCounterMode`` FLOPs / 2: convolutions, matmuls and
  ``scaled_dot_product_attention``; not element-wise ops, norms or pooling), split into the ResNet-101
  trunk, the 12 transformer blocks and the rest (embeddings, bridges / couplers / UpConv, head).
"""

from __future__ import annotations

import argparse
import platform

import timm
import torch
from timm.models.vision_transformer import Block
from torch import nn

import backbones  # noqa: F401 - registers the models
from backbones.tokenfusion import _VARIANTS
from benchmarks.harness import median_ms
from lightning_modules.complexity import count_params, macs_by_module


def mac_breakdown(model: nn.Module, image_size: int) -> dict[str, float]:
    """MACs (G) of one meta-device forward, total and split by module (trunk, transformer blocks)."""
    per_module = macs_by_module(model, torch.empty(1, 3, image_size, image_size, device="meta"))
    total = per_module["Global"] / 1e9

    def module_macs(names: list[str]) -> float:
        # each entry already holds its whole subtree, so only the listed (non-nested) names are summed
        return sum(per_module.get(n, 0) for n in names) / 1e9

    # FlopCounterMode names modules by their path under the root class name. The trunk's stages are called
    # one by one (never ``trunk(x)``), so its top-level children are counted.
    root = type(model).__name__
    blocks = [f"{root}.{n}" for n, m in model.named_modules() if isinstance(m, Block)]
    trunk = module_macs([f"{root}.trunk.{n}" for n, _ in model.trunk.named_children()])
    transformer = module_macs(blocks)
    return {"total": total, "trunk": trunk, "blocks": transformer, "other": total - trunk - transformer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--head", default="channel", choices=["token", "channel", "mixing"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=0, help="timed runs for latency (0: skip)")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    print(
        f"# TokenFusion complexity, {args.image_size} px, head={args.head}, {platform.processor() or 'cpu'}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    print()
    header = "| model | Params (M) | MACs (G) | trunk | 12 blocks | other |"
    sep = "| --- | ---: | ---: | ---: | ---: | ---: |"
    if args.runs:
        header += f" eval ms (b{args.batch_size}) | train ms | train peak GiB |"
        sep += " ---: | ---: | ---: |"
    print(header)
    print(sep)
    for name in _VARIANTS:
        with torch.device("meta"):
            meta_model = timm.create_model(name, head=args.head)
        params = count_params(meta_model) / 1e6
        macs = mac_breakdown(meta_model, args.image_size)
        row = (
            f"| {name} | {params:.1f} | {macs['total']:.2f} | {macs['trunk']:.2f} | {macs['blocks']:.2f} "
            f"| {macs['other']:.2f} |"
        )
        if args.runs:
            model = timm.create_model(name, head=args.head).to(device)
            x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
            y = torch.randint(0, 1000, (args.batch_size,), device=device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def train_step(
                model: nn.Module = model,
                x: torch.Tensor = x,
                y: torch.Tensor = y,
                opt: torch.optim.Optimizer = opt,
            ) -> None:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            def eval_step(model: nn.Module = model, x: torch.Tensor = x) -> None:
                with (
                    torch.inference_mode(),
                    torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
                ):
                    model(x)

            model.eval()
            eval_ms = median_ms(eval_step, device, args.runs, args.warmup)
            model.train()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            train_ms = median_ms(train_step, device, args.runs, args.warmup)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            row += f" {eval_ms:.1f} | {train_ms:.1f} | {peak:.1f} |"
            del model, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(row, flush=True)


if __name__ == "__main__":
    main()
