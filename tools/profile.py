"""Complexity of any experiment or timm model: parameters, multiply-accumulates and latency.

Conventions (printed with every table):

* **Params (M)**: every parameter of the classifier network (trunk + head for the experiment's number
  of classes), in millions; loss-owned parameters (centres, margin classifiers) are not counted.
* **MACs (G)**: multiply-accumulates of one forward pass for ONE image, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per multiply-add on convolutions,
  matmuls and attention) divided by 2. This is the papers' "FLOPs" convention (thop/ptflops, ResNet-50
  at 224 = 4.1 G). Element-wise operations, normalisation and pooling are not counted.
* **Latency (ms)**: wall time of one forward pass of a batch in eval mode under ``torch.inference_mode``,
  median over ``--runs`` timed runs after ``--warmup`` untimed ones (CUDA is synchronised around each).

Examples::

    python -m tools.profile --model resnet50 --num-classes 1000
    python -m tools.profile --config experiments/msfca/msfca50_ceramic.yaml --device cuda --batch-size 32
    python -m tools.profile --config experiments/a.yaml --config experiments/b.yaml --csv complexity.csv

A row built from an experiment file whose paper table states its size (``tools/published/*.csv``,
``params_m`` / ``gmacs`` cells naming that file) shows the table's figures beside ours.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lightning_modules.complexity import count_macs, count_params
from tools.common import Loaded, ToolError, load_network, run_main

CONVENTION = (
    "Params: all parameters of the network, millions. MACs: multiply-accumulates per image "
    "(FlopCounterMode FLOPs / 2, the papers' 'FLOPs'), giga. Latency: ms per batch, median of the timed "
    "runs, warm-up excluded."
)


@dataclass
class ProfileRow:
    """One line of the complexity table."""

    name: str
    image_size: int
    params_m: float
    gmacs: float
    batch_size: int
    latency_ms: float | None
    device: str
    dtype: str
    paper_params_m: float | None = None
    paper_gmacs: float | None = None


def published_complexity(experiment: str) -> tuple[float | None, float | None]:
    """The ``params_m`` and ``gmacs`` a paper's table gives for the row of experiment file ``experiment``."""
    from tools.report import PAPERS, read_published

    found: dict[str, float] = {}
    for paper in PAPERS:
        for row in read_published(paper):
            if row["metric"] in ("params_m", "gmacs") and experiment in row["experiment"].split("|"):
                found.setdefault(row["metric"], float(row["value"]))
    return found.get("params_m"), found.get("gmacs")


def measure_latency(
    model: nn.Module,
    inputs: torch.Tensor,
    runs: int = 20,
    warmup: int = 5,
    dtype: torch.dtype | None = None,
) -> float:
    """Median milliseconds of ``model(inputs)`` over ``runs`` timed calls after ``warmup`` calls.

    Args:
        model: network in eval mode on the inputs' device.
        inputs: one batch.
        runs: timed calls (the median is returned).
        warmup: untimed calls first (cuDNN autotuning, lazy init, caches).
        dtype: autocast dtype (``torch.bfloat16``) or ``None`` for full precision.
    """
    if runs < 1:
        raise ToolError("--runs must be at least 1")
    device_type = inputs.device.type
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    autocast = torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + runs):
            sync()
            start = time.perf_counter()
            model(inputs)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def profile_network(
    loaded: Loaded,
    image_size: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    runs: int = 20,
    warmup: int = 5,
    dtype: str = "float32",
) -> ProfileRow:
    """Params, MACs (one image) and latency (one batch) of a loaded network."""
    size = int(image_size or loaded.image_size or 224)
    model = loaded.network.eval()
    params = count_params(model)
    macs = float(count_macs(model, size))
    latency = None
    if runs > 0:
        if device == "cuda" and not torch.cuda.is_available():
            raise ToolError("--device cuda requested but torch sees no GPU; use --device cpu")
        model = model.to(device)
        x = torch.randn(batch_size, 3, size, size, device=device)
        amp = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        latency = measure_latency(model, x, runs=runs, warmup=warmup, dtype=amp)
        model.to("cpu")
    paper_params, paper_gmacs = published_complexity(loaded.name) if loaded.task is not None else (None, None)
    return ProfileRow(
        loaded.name,
        size,
        params / 1e6,
        macs / 1e9,
        batch_size,
        latency,
        device,
        dtype,
        paper_params,
        paper_gmacs,
    )


def to_markdown(rows: Sequence[ProfileRow]) -> str:
    """A markdown table of profile rows."""
    paper = any(r.paper_params_m is not None or r.paper_gmacs is not None for r in rows)
    extra = (" paper Params (M) | paper MACs (G) |", " ---: | ---: |") if paper else ("", "")
    lines = [
        "| model | input | Params (M) | MACs (G) |" + extra[0] + " batch | latency (ms) | device | dtype |",
        "| --- | --- | ---: | ---: |" + extra[1] + " ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lat = f"{r.latency_ms:.2f}" if r.latency_ms is not None else "-"
        figures = ""
        if paper:
            figures = "".join(
                f" {v:.3f} |" if v is not None else " - |" for v in (r.paper_params_m, r.paper_gmacs)
            )
        lines.append(
            f"| {r.name} | {r.image_size} | {r.params_m:.3f} | {r.gmacs:.3f} |{figures} {r.batch_size} "
            f"| {lat} | {r.device} | {r.dtype} |"
        )
    return "\n".join(lines)


def write_csv(rows: Sequence[ProfileRow], path: str | os.PathLike) -> None:
    """Write profile rows to CSV (one column per :class:`ProfileRow` field)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))


def main(argv: Sequence[str] | None = None) -> list[ProfileRow]:
    """Parse arguments, profile every requested experiment/model, print the table."""
    parser = argparse.ArgumentParser(prog="python -m tools.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="experiment YAML, one table row each (repeatable); compose files with commas: a.yaml,b.yaml",
    )
    parser.add_argument("--model", action="append", default=[], help="timm model name (repeatable)")
    parser.add_argument("--num-classes", type=int, default=None, help="classes for --model (default 1000)")
    parser.add_argument("--ckpt_path", default=None, help="(unused for complexity; accepted for symmetry)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--image-size", type=int, default=None, help="default: the YAML's, else 224")
    parser.add_argument("--batch-size", type=int, default=1, help="batch for the latency measurement")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--runs", type=int, default=20, help="timed runs (0: skip latency)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    if not args.config and not args.model:
        raise ToolError("give at least one --config experiments/X.yaml or --model <timm name>")

    rows = []
    for entry in args.config:
        loaded = load_network(configs=entry.split(","), overrides=args.override)
        rows.append(
            profile_network(
                loaded, args.image_size, args.batch_size, args.device, args.runs, args.warmup, args.dtype
            )
        )
    for name in args.model:
        loaded = load_network(model=name, num_classes=args.num_classes)
        rows.append(
            profile_network(
                loaded, args.image_size, args.batch_size, args.device, args.runs, args.warmup, args.dtype
            )
        )
    print(to_markdown(rows))
    print(f"\n{CONVENTION}")
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return rows


if __name__ == "__main__":
    raise SystemExit(run_main(main))
