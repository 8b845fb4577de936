"""``make bench`` / ``python -m benchmarks``: run the benchmark sections, print them, update RESULTS.md.

Usage::

    python -m benchmarks                                   # CPU, every default section (a few minutes)
    python -m benchmarks --quick                           # fewer models/steps/rounds
    python -m benchmarks --device cuda                     # GPU: the papers' sizes, bf16, MFU
    python -m benchmarks --sections framework,data         # a subset

Sections: ``framework`` (Lightning vs bare PyTorch, :mod:`benchmarks.bench_framework`), ``data`` (PIL
DataLoader vs tensor cache, :mod:`benchmarks.bench_data`), ``models`` (throughput, memory, MFU, FLOP
efficiency and the fast defaults, :mod:`benchmarks.bench_models`), and the paper helpers' own benchmarks when
their modules exist: ``acanet``, ``msfca`` (default), ``csnet``, ``tokenfusion``, ``datamodules`` (on
request; each prints its own tables, which are recorded too). Every section's figures go to
``benchmarks/results/RESULTS.md`` under a key ``<section>-<device>``, replacing that key's previous block
only, with the date, machine and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
import time
import traceback
from collections.abc import Callable

import torch

from benchmarks.harness import RESULTS_FILE, configure_threads, machine_info, update_results

OWN = ["framework", "data", "models"]
#: helper-owned benchmark modules: section -> (module, argv builder(device, quick), default section?)
EXTERNAL: dict[str, tuple[str, Callable[[str, bool], list[str]], bool]] = {
    "acanet": (
        "benchmarks.bench_acanet",
        lambda d, q: ["--device", d] + (["--reps", "1"] if q else []),
        True,
    ),
    "msfca": ("benchmarks.bench_msfca", lambda d, q: ["--latency"] if d == "cuda" else [], True),
    "csnet": (
        "benchmarks.bench_csnet",
        lambda d, q: (
            ["--device", d]
            + (
                ["--image-size", "224", "--runs", "1"]
                if d == "cpu"
                else ["--dtype", "bfloat16", "--batch-size", "32", "--runs", "20"]
            )
        ),
        False,
    ),
    "tokenfusion": (
        "benchmarks.bench_tokenfusion",
        lambda d, q: ["--device", d] + (["--runs", "20", "--batch-size", "64"] if d == "cuda" else []),
        False,
    ),
    "datamodules": ("benchmarks.bench_datamodules", lambda d, q: ["--n", "100"] if q else [], False),
}


class _Tee(io.TextIOBase):
    """Write to the terminal and keep a copy (to record a helper benchmark's printed tables)."""

    def __init__(self, stream) -> None:
        self.stream, self.buffer_ = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.buffer_.write(s)
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def run_external(section: str, device: str, quick: bool) -> str | None:
    """Call a helper benchmark's ``main()`` with its own argv; return what it printed (None if absent)."""
    module_name, argv_for, _ = EXTERNAL[section]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            print(f"[{section}] {module_name} not present; skipped")
            return None
        raise
    argv = [module_name, *argv_for(device, quick)]
    tee = _Tee(sys.stdout)
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(tee):
            module.main()  # parses sys.argv, set above
    finally:
        sys.argv = saved
    return tee.buffer_.getvalue()


def main(argv: list[str] | None = None) -> int:
    default_sections = OWN + [s for s, (_, _, default) in EXTERNAL.items() if default]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer models, steps and rounds; a smoke run: prints, does not update RESULTS.md",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument(
        "--sections",
        default=",".join(default_sections),
        help=f"comma-separated, from {OWN + list(EXTERNAL)} (default: {','.join(default_sections)})",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default 1 on CPU: per-core figures)"
    )
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in OWN and s not in EXTERNAL]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {OWN + list(EXTERNAL)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available on this machine")
    device = torch.device(args.device)
    threads = configure_threads(device, args.threads)
    write = not (args.quick or args.no_write)
    common = (
        ["--device", args.device, "--threads", str(threads)]
        + (["--quick"] if args.quick else [])
        + ([] if write else ["--no-write"])
    )
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    summary: list[tuple[str, str, float]] = []
    failed = []
    for section in sections:
        t0 = time.perf_counter()
        status = "ok"
        print(f"\n===== {section} ({args.device}) =====", flush=True)
        try:
            if section == "framework":
                from benchmarks import bench_framework

                bench_framework.main(common)
            elif section == "data":
                from benchmarks import bench_data

                status = "ok" if bench_data.main(common) is not None else "skipped (no data)"
            elif section == "models":
                from benchmarks import bench_models

                bench_models.main(common)
            else:
                out = run_external(section, args.device, args.quick)
                if out is None:
                    status = "skipped (module absent)"
                elif write:
                    update_results(
                        f"{section}-{args.device}",
                        f"{section} (helper benchmark, {args.device})",
                        out,
                        machine_info(device),
                    )
        except Exception:  # noqa: BLE001 - one broken section must not lose the others' figures
            traceback.print_exc()
            status = "FAILED (traceback above)"
            failed.append(section)
        summary.append((section, status, time.perf_counter() - t0))
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    lines = [f"| {s} | {st} | {t:.0f} |" for s, st, t in summary]
    body = (
        "| section | status | wall s |\n| --- | --- | --- |\n"
        + "\n".join(lines)
        + f"\n\nTotal {wall:.0f} s wall, {cpu:.0f} s CPU time of this process (its DataLoader workers and "
        f"W&B service not included); flags: {' '.join(sys.argv[1:] if argv is None else argv) or '(none)'}."
    )
    if device.type == "cpu":
        body += (
            "\n\nGPU figures: not recorded yet (no GPU was available to the session that wrote this "
            "file); run `python -m benchmarks --device cuda` on a GPU machine to add them."
        )
    if write:
        update_results(f"run-{args.device}", f"Last run ({args.device})", body, machine_info(device))
    print(f"\n{body}\n\nresults: {RESULTS_FILE if write else '(not written: --quick / --no-write)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
