"""Model throughput: training/inference img/s, peak memory, MFU, FLOP-matched ResNet ratio; fast defaults.

Run ``python -m benchmarks.bench_models [--device cpu|cuda] [--quick] [--models ...]``. Two tables:

1. **Models**: the ResNet-18/50 baselines and every paper model (``acanet18``, ``msfca50``, ``fft_tiny``,
   ``fft_base``, ``csnet101``, ``tokenfusion_layer``). Per model: parameters, forward GMACs per image
   (``FlopCounterMode`` FLOPs / 2, at the benchmark's input size), training img/s (forward + backward + SGD
   step, cross-entropy), inference img/s (eval, ``inference_mode``), peak memory of a training step,
   MFU on GPU
   (training FLOPs per step from ``FlopCounterMode`` over one forward + backward, divided by step time and the
   GPU's dense bf16 peak), and the model's *FLOP efficiency* against its FLOP-matched ResNet: the timm ResNet
   (18/34/50/101/152) whose forward FLOPs at the same input size are closest (log scale), timed in the same
   interleaved rounds; ratio = (img/s x GFLOPs of the model) / (img/s x GFLOPs of the ResNet), i.e. the
   img/s per GFLOP of work relative to a plain ResNet's. Below 0.7x is flagged (the model's extra FLOPs are
   slower than convolutions: element-wise attention, FFTs, small matmuls, reshapes). Models with a fast
   path that replaced a slower formulation (FFT fusion, FCSA, MSF-CA's 1x1 convs; see
   :mod:`benchmarks.old_formulations`) are also timed, in the same rounds, with the old formulation
   switched back on a copy of the model: its FLOP efficiency and the new/old training speed-up sit beside
   the new figures.
   CPU: fp32, small input (64 px) and batch (2) and few rounds, so the table runs in about a minute or two;
   CUDA: the papers' sizes (224 px; CS-Net 448 px), bf16 autocast + channels_last, larger batches.
2. **Fast defaults**, one by one on ResNet-50: channels_last, bf16 autocast, fused optimiser,
   ``cudnn.benchmark`` (CUDA), ``torch.compile`` (CUDA; on CPU only with ``--compile``: compiling takes
   minutes on two cores), and all together, each as a ratio to the plain fp32 NCHW eager step.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import backbones  # noqa: F401 - registers the papers' models
from benchmarks.harness import (
    bf16_peak_tflops,
    configure_threads,
    fmt,
    interleaved,
    machine_info,
    markdown_table,
    peak_memory,
    ratio,
    saved_activation_bytes,
    synchronize,
    top_ops,
    train_step_flops,
    update_results,
)
from benchmarks.old_formulations import use_old_formulations
from lightning_modules.complexity import count_macs, count_params

BASELINES = ["resnet18", "resnet50"]
PAPER_MODELS = ["acanet18", "msfca50", "fft_tiny", "fft_base", "csnet101", "tokenfusion_layer"]
# --quick on CPU: the models with a fast path (issue 20), each timed beside its old formulation
QUICK_CPU_MODELS = ["acanet18", "fft_tiny", "msfca50", "fft_base"]
RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
FULL_SIZE = {"csnet101": 448}  # the recipe's input size on GPU (others 224)
CUDA_BATCH = {"fft_base": 64, "tokenfusion_layer": 64, "msfca50": 64, "csnet101": 32}
NUM_CLASSES = 100
FLAG = 0.7


@dataclass
class Setting:
    device: torch.device
    size: int
    batch: int
    amp: bool
    channels_last: bool


def _make(name: str, device: torch.device | str, channels_last: bool = False) -> nn.Module:
    model = timm.create_model(name, num_classes=NUM_CLASSES)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _meta_fwd_flops(name: str, size: int) -> int | None:
    """Forward FLOPs per image on the meta device (no memory, no init time); ``None`` if the model refuses."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=NUM_CLASSES)
        model.eval()
        return 2 * count_macs(model, torch.empty(1, 3, size, size, device="meta"))
    except Exception:  # noqa: BLE001 - fall back to counting on a real model
        return None


def matched_resnet(flops: float, size: int, cache: dict[tuple[str, int], int]) -> str:
    """The timm ResNet whose forward FLOPs at ``size`` are closest to ``flops`` (log distance)."""
    best, best_d = "resnet50", math.inf
    for name in RESNETS:
        key = (name, size)
        if key not in cache:
            cache[key] = _meta_fwd_flops(name, size) or 0
        if cache[key] > 0:
            d = abs(math.log(cache[key] / flops))
            if d < best_d:
                best, best_d = name, d
    return best


class Runner:
    """A model with its training step and inference call at one setting."""

    def __init__(
        self,
        name: str,
        s: Setting,
        model: nn.Module | None = None,
        fused: bool = False,
        compile_model: bool = False,
    ) -> None:
        self.name, self.s = name, s
        self.model = model if model is not None else _make(name, s.device, s.channels_last)
        kwargs: dict[str, Any] = {"fused": True} if fused else {}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, **kwargs)
        self.fn = torch.compile(self.model) if compile_model else self.model
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(s.batch, 3, s.size, s.size, generator=gen).to(s.device)
        self.x = x.contiguous(memory_format=torch.channels_last) if s.channels_last else x
        self.y = torch.randint(0, NUM_CLASSES, (s.batch,), generator=gen).to(s.device)

    def _autocast(self):
        if self.s.amp:
            return torch.autocast(self.s.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.cross_entropy(self.fn(self.x), self.y)
        loss.backward()
        self.opt.step()

    def infer(self) -> Tensor:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            return self.fn(self.x)

    def train_flops(self) -> int:
        self.model.train()
        with self._autocast():
            return train_step_flops(self.model, self.x, lambda out: F.cross_entropy(out, self.y))


def _row_figures(
    r: Runner, train_s: float, infer_s: float, flops_step: int, peak_tflops: float | None
) -> dict[str, Any]:
    b = r.s.batch
    achieved = flops_step / train_s / 1e12
    return {
        "train_img_s": b / train_s,
        "infer_img_s": b / infer_s,
        "train_gflop_img": flops_step / b / 1e9,
        "achieved_tflops": achieved,
        "mfu": achieved / peak_tflops if peak_tflops else None,
    }


def models_table(
    device: torch.device,
    quick: bool,
    names: list[str],
    reps: int | None,
    size: int | None,
    batch: int | None,
    profile: bool = True,
) -> tuple[str, list[dict[str, Any]]]:
    cuda = device.type == "cuda"
    reps = reps or (2 if not cuda else 10) if quick else reps or (3 if not cuda else 20)
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device)) if cuda else None
    flops_cache: dict[tuple[str, int], int] = {}
    rows, records = [], []
    profiles: list[str] = []
    for name in names:
        s = Setting(
            device,
            size or (FULL_SIZE.get(name, 224) if cuda else 64),
            batch or (CUDA_BATCH.get(name, 128) if cuda else 2),
            amp=cuda,
            channels_last=cuda,
        )
        try:
            model_runner = Runner(name, s)
        except Exception as err:  # noqa: BLE001 - report and go on with the other models
            rows.append([name, f"error: {type(err).__name__}: {str(err)[:80]}"] + ["-"] * 13)
            continue
        params = count_params(model_runner.model) / 1e6
        fwd = _meta_fwd_flops(name, s.size)
        if fwd is None:
            model_runner.model.eval()
            fwd = 2 * count_macs(model_runner.model, model_runner.x[:1])
        flops_cache[(name, s.size)] = fwd
        is_baseline = name in RESNETS
        ref_name = name if is_baseline else matched_resnet(fwd, s.size, flops_cache)
        runners = {"model": model_runner}
        if not is_baseline:
            runners["ref"] = Runner(ref_name, s)
            old_model = copy.deepcopy(model_runner.model)
            if use_old_formulations(old_model):  # same weights, former formulation of the fast-path layers
                runners["old"] = Runner(name, s, model=old_model)
        step_flops = {k: r.train_flops() for k, r in runners.items() if k != "old"}
        cases: dict[str, Callable[[], Any]] = {}
        for k, r in runners.items():
            cases[f"{k}-train"] = r.train_step
            cases[f"{k}-infer"] = r.infer
        timings = interleaved(cases, device, warmup=1, reps=reps)
        with peak_memory(device) as mem:
            model_runner.train_step()
        synchronize(device)
        mr = model_runner
        mr.model.train()

        def fwd_loss(mr: Runner = mr) -> Tensor:
            with mr._autocast():
                return F.cross_entropy(mr.fn(mr.x), mr.y)

        act_mib = saved_activation_bytes(mr.model, fwd_loss) / 2**20
        fig = _row_figures(
            model_runner,
            timings["model-train"].median,
            timings["model-infer"].median,
            step_flops["model"],
            peak,
        )
        eff_train = eff_infer = eff_old = speedup = None
        if "old" in runners:  # the same FLOP count (same linear maps), timed with the former formulation
            eff_old = (1 / ratio(timings["old-train"], timings["ref-train"])) * (
                step_flops["model"] / step_flops["ref"]
            )
            speedup = 1 / ratio(timings["model-train"], timings["old-train"])
        if "ref" in runners:
            ref_fwd = flops_cache[(ref_name, s.size)]
            # img/s per GFLOP relative to the ResNet: (t_ref / t_model) x (flops_model / flops_ref)
            eff_train = (1 / ratio(timings["model-train"], timings["ref-train"])) * (
                step_flops["model"] / step_flops["ref"]
            )
            eff_infer = (1 / ratio(timings["model-infer"], timings["ref-infer"])) * (fwd / ref_fwd)
        flag = " **<0.7x**" if eff_train is not None and eff_train < FLAG else ""
        if flag and profile:
            ops = top_ops(model_runner.train_step, device)
            profiles.append(
                f"- `{name}` ({s.size}px, batch {s.batch}): "
                + ", ".join(f"`{op}` {pct:.0f}% ({calls} calls)" for op, pct, calls in ops)
            )
        rows.append(
            [
                name,
                f"{s.size}px b{s.batch}",
                fmt(params),
                fmt(fwd / 2e9, 2),
                fmt(fig["train_img_s"]),
                fmt(fig["infer_img_s"]),
                fmt(mem.mib, 0) if cuda and mem.mib is not None else "-",
                fmt(act_mib, 1),
                fmt(fig["achieved_tflops"] * 1e3, 1),
                f"{fig['mfu'] * 100:.1f}%" if fig["mfu"] is not None else "-",
                ref_name if not is_baseline else "(baseline)",
                (f"{eff_train:.2f}x{flag}" if eff_train is not None else "-"),
                (f"{eff_infer:.2f}x" if eff_infer is not None else "-"),
                (f"{eff_old:.2f}x" if eff_old is not None else "-"),
                (f"{speedup:.2f}x" if speedup is not None else "-"),
            ]
        )
        records.append(
            {
                "model": name,
                "ref": ref_name,
                "eff_train": eff_train,
                "eff_infer": eff_infer,
                "eff_train_old": eff_old,
                "speedup_vs_old": speedup,
                **fig,
            }
        )
        del runners, model_runner
        if cuda:
            torch.cuda.empty_cache()
    mode = "bf16 autocast + channels_last, eager" if cuda else "fp32, NCHW, eager"
    memo = (
        "peak mem: CUDA max_memory_allocated during one training step above what was allocated before it "
        "(GPU only); saved activations: bytes autograd keeps for backward (weights excluded), any device"
    )
    body = (
        f"{mode}; {NUM_CLASSES} classes; SGD momentum; {reps} interleaved rounds after 1 warm-up, median. "
        "GMACs: forward, per image, FlopCounterMode / 2. Achieved GFLOP/s: training FLOPs "
        f"(forward + backward, FlopCounterMode) per second. Memory: {memo}. MFU: against the GPU's dense "
        "bf16 peak (GPU only). FLOP efficiency: the model's img/s x GFLOPs divided by that of its "
        "FLOP-matched ResNet measured in the same rounds "
        "(1.0x = the model turns FLOPs into images as fast as a plain "
        "ResNet); < 0.7x flagged. Old formulation: the same model with the layers that have a fast path "
        "switched back to the formulation it replaced (benchmarks/old_formulations.py), same rounds; "
        "speed-up = old / new training step time.\n\n"
        + markdown_table(
            [
                "model",
                "input",
                "params (M)",
                "GMACs/img",
                "train img/s",
                "infer img/s",
                "peak mem (MiB)",
                "saved activations (MiB)",
                "achieved GFLOP/s (train)",
                "MFU",
                "FLOP-matched ResNet",
                "FLOP eff. train",
                "FLOP eff. infer",
                "FLOP eff. train, old formulation",
                "train speed-up vs old",
            ],
            rows,
        )
    )
    if profiles:
        body += (
            "\n\nProfile of the flagged models (`torch.profiler`, one training step, top ops by self time on "
            f"{device.type}; owners: see the model's docs):\n\n" + "\n".join(profiles)
        )
    return body, records


def fast_defaults_table(
    device: torch.device,
    quick: bool,
    compile_cpu: bool,
    reps: int | None,
    size: int | None,
    batch: int | None,
) -> tuple[str, dict[str, float]]:
    """ResNet-50 training step with each fast default alone and all together, as ratios to the plain step."""
    cuda = device.type == "cuda"
    size = size or (224 if cuda else 96)
    batch = batch or (256 if cuda else 4)
    reps = reps or ((10 if cuda else 2) if quick else (20 if cuda else 3))
    base = Setting(device, size, batch, amp=False, channels_last=False)
    torch.manual_seed(0)
    model = _make("resnet50", device)

    def variant(
        channels_last: bool = False, amp: bool = False, fused: bool = False, compile_model: bool = False
    ) -> Runner:
        s = Setting(device, size, batch, amp=amp, channels_last=channels_last)
        m = copy.deepcopy(model)  # Module.to(memory_format=...) converts in place: one copy per variant
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return Runner("resnet50", s, model=m, fused=fused, compile_model=compile_model)

    def with_cudnn_benchmark(r: Runner, on: bool) -> Callable[[], None]:
        def go() -> None:
            torch.backends.cudnn.benchmark = on
            r.train_step()

        return go

    variants: dict[str, tuple[Callable[[], None], str]] = {}
    notes: list[str] = []
    plain = Runner("resnet50", base, model=model)
    variants["plain (fp32, NCHW, eager, foreach SGD)"] = (with_cudnn_benchmark(plain, False), "")
    variants["+ channels_last"] = (with_cudnn_benchmark(variant(channels_last=True), False), "")
    variants["+ bf16 autocast"] = (with_cudnn_benchmark(variant(amp=True), False), "")
    variants["+ bf16 autocast + channels_last"] = (with_cudnn_benchmark(variant(True, True), False), "")
    try:
        fused = variant(fused=True)
        fused.train_step()
        variants["+ fused SGD"] = (with_cudnn_benchmark(fused, False), "")
    except (RuntimeError, TypeError) as err:
        notes.append(f"fused SGD not available on {device.type}: {str(err)[:100]}")
    if cuda:
        variants["+ cudnn.benchmark"] = (
            with_cudnn_benchmark(Runner("resnet50", base, model=model), True),
            "",
        )
    do_compile = cuda or compile_cpu
    if do_compile:
        variants["+ torch.compile"] = (with_cudnn_benchmark(variant(compile_model=True), cuda), "")
    else:
        notes.append(
            "torch.compile not measured on CPU (compiling ResNet-50 takes minutes on two shared cores; "
            "pass --compile to include it)"
        )
    all_on = variant(True, True, fused="+ fused SGD" in variants, compile_model=do_compile)
    variants["all of the above"] = (with_cudnn_benchmark(all_on, cuda), "")
    timings = interleaved(
        {k: v[0] for k, v in variants.items()}, device, warmup=2 if do_compile else 1, reps=reps
    )
    torch.backends.cudnn.benchmark = False
    plain_t = timings["plain (fp32, NCHW, eager, foreach SGD)"]
    rows, figures = [], {}
    for name, t in timings.items():
        sp = 1 / ratio(t, plain_t)
        rows.append([name, fmt(batch / t.median), f"{sp:.2f}x", f"{t.spread * 100:.0f}%"])
        figures[name] = batch / t.median
    body = (
        f"ResNet-50 training step (forward + backward + SGD), {size}px, batch {batch}, "
        f"{reps} interleaved rounds, "
        "median; speed-up = median of per-round time ratios to the plain step.\n\n"
        + markdown_table(["setting", "train img/s", "speed-up vs plain", "spread"], rows)
        + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")
    )
    if cuda:
        best = max(figures.values())
        body += (
            f"\n\nTarget (issue 9): ResNet-50 at 224 on one H100 >= 5,000 training img/s with the fast path: "
            f"best here {best:,.0f} img/s."
        )
    return body, figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="*", default=None, help=f"default: {BASELINES + PAPER_MODELS}")
    parser.add_argument("--tables", default="models,fast", help="models,fast")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="input size for every model (default 64 CPU)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="include torch.compile on CPU")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on CPU)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    configure_threads(device, args.threads)
    tables = set(args.tables.split(","))
    names = args.models or (
        BASELINES + (QUICK_CPU_MODELS if args.quick and device.type == "cpu" else PAPER_MODELS)
    )
    info = machine_info(device)
    out: dict[str, Any] = {}
    if "models" in tables:
        body, records = models_table(device, args.quick, names, args.reps, args.size, args.batch)
        if args.quick and device.type == "cpu" and not args.models:
            body += "\n\n(--quick on CPU: csnet101 and tokenfusion_layer left out; run without --quick.)"
        print(f"\n## Models ({device.type})\n\n{body}\n")
        out["models"] = records
        if not args.no_write:
            update_results(
                f"models-{device.type}",
                f"Models: throughput, memory, MFU, FLOP efficiency ({device.type})",
                body,
                info,
            )
    if "fast" in tables:
        body, figures = fast_defaults_table(device, args.quick, args.compile, args.reps, None, None)
        print(f"\n## Fast defaults ({device.type})\n\n{body}\n")
        out["fast"] = figures
        if not args.no_write:
            update_results(
                f"fast-{device.type}", f"Fast defaults one by one, ResNet-50 ({device.type})", body, info
            )
    return out


if __name__ == "__main__":
    main()
