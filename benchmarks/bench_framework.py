"""Framework overhead: a Lightning ``fit`` step against a bare PyTorch training loop, same model/data/batch.

Run ``python -m benchmarks.bench_framework [--device cpu|cuda] [--quick]`` (or ``python -m benchmarks
--sections framework``). One ResNet-18 (timm, CIFAR-size 32x32 input) module object is trained by four
loops, round-robin (every round runs each loop once), on the same list of batches already on the device:

* ``bare``: ``zero_grad / forward / cross_entropy / backward / step`` in a Python ``for`` loop;
* ``lightning``: a minimal LightningModule with exactly that step, ``Trainer`` with logger, checkpointing,
  progress bar and model summary off (pure framework overhead);
* ``task``: the project's :class:`~lightning_modules.ClassificationTask` (torchmetrics accuracy and mean loss
  updated every step, ``self.log`` of the loss), same flags off;
* ``task + defaults``: the task with the trainer settings of ``experiments/base.yaml``: W&B logger (offline),
  ``ModelCheckpoint`` + ``LearningRateMonitor``, progress bar (to /dev/null), ``log_every_n_steps: 20``,
  ``benchmark: true``, the atomic checkpoint plugin.

Timing excludes start-up: each loop is timed from the start of its step ``--skip`` to the end of its last
step (a callback in the Lightning loops; the device is synchronised at both points), so trainer
construction, the first steps (lazy initialisation, optimiser state) and the end of the epoch (checkpoint
writing) are not in the per-step figure; the whole ``fit()`` wall time is printed separately.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from benchmarks.harness import (
    Timing,
    configure_threads,
    fmt,
    machine_info,
    markdown_table,
    ratio,
    synchronize,
    update_results,
)


class _Batches:
    """The same in-memory batches for every loop (an iterable with a length, not a list of dataloaders)."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _StepTimer(Callback):
    """Wall time from the start of step ``skip`` to the end of the last step (device synchronised)."""

    def __init__(self, skip: int, last: int, device: torch.device) -> None:
        self.skip, self.last, self.device = skip, last, device
        self.t0 = self.t1 = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.skip:
            synchronize(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.last:
            synchronize(self.device)
            self.t1 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


class _PlainModule(L.LightningModule):
    """The bare loop's step as a LightningModule (nothing else)."""

    def __init__(self, net: nn.Module, lr: float) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def bare_loop(
    net: nn.Module, batches: list[tuple[Tensor, Tensor]], lr: float, skip: int, device: torch.device
) -> float:
    """Seconds of steps ``skip..`` of a plain PyTorch loop over ``batches`` (fresh optimiser, like a new
    fit)."""
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    t0 = 0.0
    for i, (x, y) in enumerate(batches):
        if i == skip:
            synchronize(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    synchronize(device)
    return time.perf_counter() - t0


def _trainer(device: torch.device, timer: _StepTimer, defaults: bool, workdir: str) -> L.Trainer:
    common: dict[str, Any] = dict(
        accelerator=device.type,
        devices=1,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        default_root_dir=workdir,
        precision="32-true",
    )
    if not defaults:
        return L.Trainer(
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **common,
        )
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from lightning_modules.checkpoint_io import AtomicCheckpointIO

    try:
        from lightning.pytorch.loggers import WandbLogger

        logger: Any = WandbLogger(project="paperbench-bench", save_dir=workdir, offline=True)
    except Exception:  # noqa: BLE001 - wandb missing or broken: the CSV logger is the documented alternative
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(workdir)
    common["callbacks"] = [
        timer,
        ModelCheckpoint(
            dirpath=os.path.join(workdir, "ckpt"),
            monitor="val/acc1",
            mode="max",
            save_top_k=1,
            save_last=True,
        ),
        LearningRateMonitor(logging_interval="step"),
    ]
    return L.Trainer(
        logger=logger,
        enable_progress_bar=True,
        log_every_n_steps=20,
        benchmark=True,
        plugins=[AtomicCheckpointIO()],
        **common,
    )


def tiny_overhead(device: torch.device, quick: bool, skip: int = 5) -> dict[str, float]:
    """Absolute per-step cost of Lightning's loop: bare vs Lightning (flags off) on a tiny MLP.

    The step itself costs well under a millisecond, so the difference is the framework's own time per step
    (hooks, progress tracking, result collection), measured far above the noise of a shared machine.
    """
    steps, rounds, batch = (150, 3, 32) if quick else (250, 4, 32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(batch, 3, 32, 32, generator=gen).to(device),
            torch.randint(0, 10, (batch,), generator=gen).to(device),
        )
        for _ in range(steps)
    ]
    data = _Batches(batches)
    plain = _PlainModule(net, 0.01)

    def lightning() -> float:
        timer = _StepTimer(skip, steps - 1, device)
        with tempfile.TemporaryDirectory(prefix="bench-fw-") as workdir, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = _trainer(device, timer, False, workdir)
            with contextlib.redirect_stdout(io.StringIO()):
                trainer.fit(plain, train_dataloaders=data)
        return timer.seconds

    bare_loop(net, batches, 0.01, skip, device)
    bare_t, light_t = Timing("bare"), Timing("lightning")
    for _ in range(rounds):
        bare_t.seconds.append(bare_loop(net, batches, 0.01, skip, device))
        light_t.seconds.append(lightning())
    timed = steps - skip
    return {
        "bare_ms": bare_t.median / timed * 1e3,
        "lightning_ms": light_t.median / timed * 1e3,
        "overhead_ms": (light_t.median - bare_t.median) / timed * 1e3,
        "spread": light_t.spread,
        "steps": timed,
        "rounds": rounds,
    }


def run(
    device: torch.device,
    quick: bool = False,
    batch_size: int | None = None,
    steps: int | None = None,
    rounds: int | None = None,
    skip: int = 2,
) -> tuple[str, dict[str, Any]]:
    """Measure the four loops; return the markdown section and the raw figures."""
    from lightning_modules import ClassificationTask

    cuda = device.type == "cuda"
    batch_size = batch_size or (256 if cuda else 32)
    steps = steps or ((60 if not quick else 30) if cuda else (10 if quick else 12))
    rounds = rounds or (2 if quick else 3)
    lr = 0.01
    torch.manual_seed(0)
    task = ClassificationTask(
        backbone="resnet18", num_classes=10, optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9)
    )
    task.to(device)
    net = task.backbone
    plain = _PlainModule(net, lr)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(batch_size, 3, 32, 32, generator=gen).to(device),
            torch.randint(0, 10, (batch_size,), generator=gen).to(device),
        )
        for _ in range(steps)
    ]
    data = _Batches(batches)
    timed_steps = steps - skip

    fit_walls: dict[str, list[float]] = {}

    def lightning_case(module: L.LightningModule, defaults: bool, name: str) -> Callable[[], float]:
        def go() -> float:
            timer = _StepTimer(skip, steps - 1, device)
            with tempfile.TemporaryDirectory(prefix="bench-fw-") as workdir, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = _trainer(device, timer, defaults, workdir)
                sink = open(os.devnull, "w")  # noqa: SIM115 - the progress bar still renders, unseen
                start = time.perf_counter()
                with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(io.StringIO()):
                    trainer.fit(module, train_dataloaders=data)
                fit_walls.setdefault(name, []).append(time.perf_counter() - start)
                sink.close()
                if defaults and hasattr(trainer.logger, "experiment"):
                    with contextlib.suppress(Exception):
                        import wandb

                        wandb.finish(quiet=True)
            return timer.seconds

        return go

    cases: dict[str, Callable[[], float]] = {
        "bare PyTorch loop": lambda: bare_loop(net, batches, lr, skip, device),
        "Lightning, logger/ckpt/progress off": lightning_case(plain, False, "lightning"),
        "ClassificationTask, logger/ckpt/progress off": lightning_case(task, False, "task"),
        (
            "ClassificationTask + base.yaml defaults (W&B offline, ckpt, LR monitor, progress bar)"
        ): lightning_case(task, True, "task-defaults"),
    }
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("WANDB_SILENT", "true")
    cases["bare PyTorch loop"]()  # process warm-up (allocator, oneDNN/cuDNN kernels); not timed
    timings = {name: Timing(name) for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            timings[name].seconds.append(fn())
    bare = timings["bare PyTorch loop"]
    rows = []
    figures: dict[str, Any] = {"batch_size": batch_size, "timed_steps": timed_steps, "rounds": rounds}
    wall_keys = {
        "Lightning, logger/ckpt/progress off": "lightning",
        "ClassificationTask, logger/ckpt/progress off": "task",
    }
    for name, t in timings.items():
        per_step = t.median / timed_steps
        r = ratio(t, bare)
        overhead_ms = (t.median - bare.median) / timed_steps * 1e3
        wall_key = wall_keys.get(name, "task-defaults" if "defaults" in name else None)
        wall = fit_walls.get(wall_key) if wall_key else None
        rows.append(
            [
                name,
                fmt(per_step * 1e3, 2),
                fmt(batch_size / per_step),
                f"{r:.3f}x",
                "-" if name == bare.name else f"{overhead_ms:+.2f}",
                f"{t.spread * 100:.0f}%",
                fmt(min(wall), 2) if wall else "-",
            ]
        )
        figures[name] = {"ms_per_step": per_step * 1e3, "ratio": r}
    target = figures["Lightning, logger/ckpt/progress off"]["ratio"]
    tiny = tiny_overhead(device, quick)
    figures["tiny"] = tiny
    bare_ms = figures["bare PyTorch loop"]["ms_per_step"]
    projected = 1 + tiny["overhead_ms"] / bare_ms
    body = (
        f"ResNet-18 (timm, 10 classes), 32x32 input, batch {batch_size}, SGD momentum, "
        f"{timed_steps} timed steps "
        f"per run after {skip} untimed, {rounds} interleaved rounds, median; same module object and the same "
        f"in-memory batches on `{device.type}` for every loop.\n\n"
        + markdown_table(
            [
                "loop",
                "ms/step",
                "img/s",
                "vs bare (median of per-round ratios)",
                "overhead ms/step",
                "spread",
                "whole fit() s (incl. start-up)",
            ],
            rows,
        )
        + f"\n\nDirect measurement: Lightning / bare = **{target:.3f}x** on this run "
        "('spread' is (max - min) / median "
        "of the rounds: on a shared machine a difference below the spread is noise).\n\n"
        f"Lightning's own time per step, measured where it is visible "
        f"(a 3072-64-10 MLP, batch 32, whose step costs "
        f"{tiny['bare_ms']:.2f} ms bare; {tiny['steps']} timed steps, {tiny['rounds']} interleaved rounds): "
        f"{tiny['lightning_ms']:.2f} ms/step in Lightning -> **{tiny['overhead_ms']:+.2f} ms per step** "
        f"(spread {tiny['spread'] * 100:.0f}%). "
        f"On the ResNet-18 step above ({bare_ms:.0f} ms) that is a ratio of "
        f"**{projected:.4f}x** (target <= 1.03x: {'met' if projected <= 1.03 else 'NOT met'}); "
        "the 1.03x target "
        f"holds for any step longer than {tiny['overhead_ms'] / 0.03:.1f} ms."
    )
    return body, figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on CPU)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    configure_threads(device, args.threads)
    body, figures = run(device, args.quick, args.batch_size, args.steps, args.rounds)
    info = machine_info(device)
    print(f"\n## Framework overhead ({device.type})\n\n{body}\n")
    if not args.no_write:
        update_results(
            f"framework-{device.type}",
            f"Framework overhead: Lightning vs bare PyTorch ({device.type})",
            body,
            info,
        )
    return figures


if __name__ == "__main__":
    main()
