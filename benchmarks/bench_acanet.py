"""ACANet benchmarks: FCSA vs the ACmix unfold reference, and ACCB fusion vs a plain ResNet-18.

Run ``python -m benchmarks.bench_acanet`` (CPU, about a minute) or ``--device cuda``. Prints markdown tables:

1. FCSA (:mod:`backbones.layers.fcsa`) vs ``fcsa_unfold_reference`` (ACmix's unfold code), forward+backward
   time and activation memory at 56x56/64 ch and 28x28/128 ch (the ResNet-18 stage shapes at 224 px).
   Activation memory = bytes of the distinct storages autograd saves for backward
   (``torch.autograd.graph.saved_tensors_hooks``), on any device; on CUDA also the peak allocated memory of
   the forward+backward above the inputs and weights.
2. Inference latency (eval, ``inference_mode``) at 224 px: ACANet-18 before/after ``switch_to_deploy()``, the
   ACCB-only ResNet-18 (``use_fcsa=False``) before/after fusion, and timm's plain ``resnet18``. Latency is
   the minimum over interleaved repetitions (robust on a shared machine). MACs: ``FlopCounterMode`` counts
   convs/matmuls (FLOPs/2); the FCSA window products, element-wise ops it does not see, are added
   analytically (2 x window^2 x C x H x W MACs per FCSA).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
from collections.abc import Callable

import timm
import torch
from torch import Tensor, nn

import backbones  # noqa: F401 - registers acanet18
from backbones.acanet import ACANet
from backbones.layers.fcsa import FCSA, effective_window, fcsa_unfold_reference
from benchmarks.harness import median_ms
from lightning_modules.complexity import count_macs, count_params


def saved_activation_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn()`` builds its graph."""
    seen: set[int] = set()
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        if isinstance(t, nn.Parameter):
            return t
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total


def cuda_peak_bytes(fn: Callable[[], Tensor], device: torch.device) -> int:
    """Peak CUDA memory of forward+backward above what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn().float().sum().backward()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def bench_fcsa(device: torch.device, batch: int, reps: int, dtype: torch.dtype | None) -> list[str]:
    rows = [
        "| shape (B,C,H,W) | dtype | FCSA ms | unfold ref ms | speed-up | FCSA act. MiB | ref act. MiB "
        "| memory ratio |" + (" FCSA peak MiB | ref peak MiB |" if device.type == "cuda" else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if device.type == "cuda" else ""),
    ]
    for channels, size in ((64, 56), (128, 28)):
        rows.append(_fcsa_row(device, batch, channels, size, reps, dtype))
    return rows


def _fcsa_row(
    device: torch.device, batch: int, channels: int, size: int, reps: int, dtype: torch.dtype | None
) -> str:
    torch.manual_seed(0)
    module = FCSA(channels, channels).to(device)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)

    def run(fn: Callable[[Tensor], Tensor]) -> Callable[[], Tensor]:
        def call() -> Tensor:
            if dtype is None:
                return fn(x)
            with torch.autocast(device.type, dtype=dtype):
                return fn(x)

        return call

    fast = run(module)
    ref = run(lambda t: fcsa_unfold_reference(module, t))
    t_fast = median_ms(lambda: fast().float().sum().backward(), device, reps)
    t_ref = median_ms(lambda: ref().float().sum().backward(), device, reps)
    m_fast = saved_activation_bytes(fast)
    m_ref = saved_activation_bytes(ref)
    mib = 2**20
    row = (
        f"| ({batch},{channels},{size},{size}) | {str(dtype or torch.float32).split('.')[-1]} "
        f"| {t_fast:.1f} | {t_ref:.1f} | {t_ref / t_fast:.1f}x | {m_fast / mib:.1f} | {m_ref / mib:.1f} "
        f"| {m_ref / m_fast:.1f}x |"
    )
    if device.type == "cuda":
        p_fast, p_ref = cuda_peak_bytes(fast, device), cuda_peak_bytes(ref, device)
        row += f" {p_fast / mib:.0f} | {p_ref / mib:.0f} |"
    return row


def fcsa_window_macs(model: nn.Module, x: Tensor) -> int:
    """MACs of the FCSA window products (q.k and attn.v), which FlopCounterMode does not count."""
    total = 0

    def hook(module: FCSA, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        b, c, h, w = output.shape
        window = effective_window(module.window, h, w)
        total += 2 * window * window * b * c * h * w

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, FCSA)]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total


def macs(model: nn.Module, x: Tensor) -> int:
    return count_macs(model, x) + fcsa_window_macs(model, x)


def bench_fusion(device: torch.device, batch: int, reps: int, num_classes: int = 200) -> list[str]:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, device=device)
    acanet = timm.create_model("acanet18", num_classes=num_classes).to(device).eval()
    accb_resnet = ACANet(num_classes=num_classes, use_fcsa=False, downsample="conv").to(device).eval()
    resnet = timm.create_model("resnet18", num_classes=num_classes).to(device).eval()

    acanet_fused = copy.deepcopy(acanet).switch_to_deploy()
    accb_fused = copy.deepcopy(accb_resnet).switch_to_deploy()
    models = {
        "resnet18 (timm, plain)": resnet,
        "acanet18, training form": acanet,
        "acanet18, switch_to_deploy()": acanet_fused,
        "ACCB-ResNet-18 (no FCSA), training form": accb_resnet,
        "ACCB-ResNet-18 (no FCSA), switch_to_deploy()": accb_fused,
    }
    # Interleaved repetitions (one call of every model per round) and the minimum per model, so that a
    # shared, noisy machine biases no model in particular.
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)
        for _ in range(reps):
            for name, model in models.items():
                times[name].append(median_ms(lambda m=model: m(x), device, runs=1, warmup=0))
    results = [
        (name, min(times[name]), count_params(model), macs(model, x[:1])) for name, model in models.items()
    ]
    base = results[0][1]
    rows = [
        f"| model (224 px, batch {batch}) | latency ms (min of {reps}) | vs resnet18 | params (M) "
        "| GMACs / image |",
        "|---|---|---|---|---|",
    ]
    for name, ms, params, mac in results:
        rows.append(f"| {name} | {ms:.1f} | {ms / base:.3f}x | {params / 1e6:.3f} | {mac / 1e9:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--fcsa-batch", type=int, default=None, help="default: 2 on CPU, 32 on CUDA")
    parser.add_argument("--model-batch", type=int, default=None, help="default: 1 on CPU, 64 on CUDA")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3 CPU, 20 CUDA)")
    parser.add_argument("--bf16", action="store_true", help="also time FCSA under bf16 autocast")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
    reps = args.reps or (20 if cuda else 5)
    fcsa_batch = args.fcsa_batch or (32 if cuda else 2)
    model_batch = args.model_batch or (64 if cuda else 1)

    where = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()}"
    print(f"# ACANet benchmark - {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"device: {device} ({where}), torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
        f"reps {reps} (median)\n"
    )
    print("## FCSA vs ACmix unfold reference (forward + backward)\n")
    print("\n".join(bench_fcsa(device, fcsa_batch, reps, None)))
    if args.bf16 or cuda:
        print("\n".join(bench_fcsa(device, fcsa_batch, reps, torch.bfloat16)[2:]))
    print("\n## Inference latency: ACCB fusion vs plain ResNet-18 (200 classes)\n")
    print("\n".join(bench_fusion(device, model_batch, reps)))


if __name__ == "__main__":
    main()
