"""Shared timing utilities of the benchmarks: warm-up, median of N, interleaved side-by-side ratios.

Every comparison the benchmarks print is a ratio measured in one run: the cases being compared are timed
round-robin (A, B, C, A, B, C, ...) after a warm-up, so a burst of load from another process on a shared
machine hits all of them alike, and the median over the rounds is reported. Absolute figures (img/s) are
printed too, with the machine they were measured on (:func:`machine_info`).

Also here: training FLOPs (``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward), the
bf16 dense peak of known GPUs for MFU, peak memory (CUDA: ``max_memory_allocated``; CPU: the growth of the
process's peak resident set, reset through ``/proc/self/clear_refs``), and the results file writer.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_FILE = RESULTS_DIR / "RESULTS.md"

#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by a substring of ``torch.cuda.get_device_name``;
#: first match wins, so the more specific names come first. Sources: NVIDIA data sheets.
BF16_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5 (also "H100 80GB HBM3")
    ("H200", 989.0),  # same compute as H100 SXM, more memory
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.0),
    ("RTX A6000", 155.0),
    ("RTX 4090", 165.0),  # fp32 accumulate
    ("RTX 3090", 71.0),  # fp32 accumulate
]


def bf16_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by name (``None`` if unknown: MFU is then not reported)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


# --------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work (no-op on CPU), so wall-clock intervals cover the work itself."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Seconds of one call of ``fn``, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_ms(fn: Callable[[], Any], device: torch.device | str, runs: int, warmup: int = 1) -> float:
    """Median milliseconds per call of ``fn`` over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn, device) for _ in range(runs)) * 1e3


@dataclass
class Timing:
    """Seconds per call of one case, over the timed rounds."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Relative spread (max - min) / median: how noisy the machine was for this case."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.seconds else float("nan")

    def rate(self, items: float) -> float:
        """Items per second at the median time (``items`` processed per call)."""
        return items / self.median


def interleaved(
    cases: dict[str, Callable[[], Any]], device: torch.device | str, warmup: int = 1, reps: int = 5
) -> dict[str, Timing]:
    """Time several cases round-robin: ``warmup`` untimed rounds, then ``reps`` timed rounds.

    Args:
        cases: name -> zero-argument callable doing one unit of work (a step, a batch, an epoch).
        device: where the work runs (synchronised around every call).
        warmup: untimed rounds (allocator, cuDNN autotuning, lazy initialisation, compilation).
        reps: timed rounds; the median is reported.

    Returns:
        name -> :class:`Timing`.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    synchronize(device)
    out = {name: Timing(name) for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            out[name].seconds.append(time_once(fn, device))
    return out


def ratio(a: Timing, b: Timing) -> float:
    """Median over rounds of the per-round ratio a/b (robust to load that changes between rounds)."""
    return statistics.median(x / y for x, y in zip(a.seconds, b.seconds))


# ----------------------------------------------------------------------------------------- FLOPs and memory
def train_step_flops(model: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor] | None = None) -> int:
    """FLOPs of one forward + backward of ``model`` on ``x`` (``FlopCounterMode``: 2 per multiply-add).

    Counts convolutions, matmuls and attention, not element-wise ops, norms or pooling.
    """
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        loss = loss_fn(out) if loss_fn is not None else out.float().sum()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _vm_hwm_bytes() -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else None


def _vm_rss_bytes() -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else None


@dataclass
class PeakMemory:
    """Result of :func:`peak_memory`: peak bytes above the starting point, or ``None`` if not measurable."""

    bytes: int | None = None
    how: str = ""

    @property
    def mib(self) -> float | None:
        return None if self.bytes is None else self.bytes / 2**20


@contextmanager
def peak_memory(device: torch.device | str) -> Iterator[PeakMemory]:
    """Measure the peak memory of the enclosed work.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at entry (tensors, not the caching
    allocator's reserve). CPU: growth of the process's peak resident set (``VmHWM``, reset at entry by writing
    ``5`` to ``/proc/self/clear_refs``); includes allocator and library buffers, and is ``None`` where Linux
    does not allow the reset.
    """
    device = torch.device(device)
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - start
        result.how = "cuda max_memory_allocated"
        return
    start = None
    try:
        Path("/proc/self/clear_refs").write_text("5")
        start = _vm_rss_bytes()
    except OSError:
        pass
    yield result
    end = _vm_hwm_bytes()
    if start is not None and end is not None:
        result.bytes = max(0, end - start)
        result.how = "RSS peak growth"


# ---------------------------------------------------------------------------------------- machine + results
def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str) -> dict[str, str]:
    """Date, machine, device and library versions to record next to every figure."""
    import lightning
    import timm

    device = torch.device(device)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu_model()} ({os.cpu_count()} cores, {usable} usable, "
        f"torch threads {torch.get_num_threads()})",
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = bf16_peak_tflops(name)
        info["gpu"] = (
            f"{name} (bf16 dense peak {peak:g} TFLOP/s)" if peak else f"{name} (peak unknown: no MFU)"
        )
        info["cuda"] = str(torch.version.cuda)
    else:
        info["gpu"] = "none (CPU run)"
    return info


def info_line(info: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in info.items())


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table (floats formatted by the caller)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell (``-`` for missing values)."""
    if value is None or value != value:  # NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


_HEADER = """# Benchmark results

Written by `make bench` (`python -m benchmarks [--device cpu|cuda] [--quick] [--sections ...]`). Each section
below is replaced when that section is run again on the same kind of device and kept otherwise, and carries
the date, machine and versions it was measured with. Comparisons are ratios measured side by side in one
run (interleaved rounds, median), which holds up on a shared, noisy machine better than absolute figures.
"""


def update_results(key: str, title: str, body: str, info: dict[str, str], path: Path = RESULTS_FILE) -> None:
    """Insert or replace the section ``key`` (e.g. ``framework-cpu``) of the results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else _HEADER
    begin, end = f"<!-- section:{key} -->", f"<!-- /section:{key} -->"
    block = f"{begin}\n## {title}\n\n_{info_line(info)}_\n\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def configure_threads(device: torch.device | str, threads: int | None) -> int:
    """Set torch's CPU threads (default 1 for CPU runs: per-core figures, and on a machine shared with other
    jobs more threads than free cores make every step several times slower through spin-waiting)."""
    if threads is None:
        threads = 1 if torch.device(device).type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def saved_activation_bytes(model: nn.Module, step: Callable[[], Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward during ``step()`` (weights excluded).

    ``step`` runs the forward and returns the loss; the backward is run afterwards to free the graph. A
    device-independent stand-in for activation memory (the bulk of a training step's peak on any device).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def top_ops(
    fn: Callable[[], Any], device: torch.device | str, limit: int = 5
) -> list[tuple[str, float, int]]:
    """``torch.profiler`` over one call of ``fn``: the ``limit`` ops with most self time (name, %, calls)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else []
    )
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    cuda = torch.device(device).type == "cuda"
    events = prof.key_averages()

    def self_time(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) if cuda else e.self_cpu_time_total)

    total = sum(self_time(e) for e in events) or 1.0
    ranked = sorted(events, key=self_time, reverse=True)[:limit]
    return [(e.key, 100.0 * self_time(e) / total, int(e.count)) for e in ranked]
