"""Does each recipe learn? A short training of every recipe family on real CIFAR-10 photographs.

Before a 600-epoch job, check that the recipe, exactly as its YAML states it, moves at all::

    python -m tools.learncheck --quick                       # two cheap families, under a minute on CPU
    python -m tools.learncheck                               # one row per family (overfit mode)
    python -m tools.learncheck --rows 'fft_*' --rows '*vgg16_cub_ce*'
    python -m tools.learncheck --mode generalise --rows 'resnet18_*'

**What runs is what the file says.** Each row is parsed and instantiated by the project's LightningCLI
(:func:`lightning_modules.cli.cli_main`, so ``base.yaml``, ``_base_`` composition, class resolution and the
``data.num_classes`` link apply): backbone and its kwargs, loss and its parameters, optimiser, learning rate
with the batch rule (``lr_reference_batch_size``), scheduler, augmentation, trainer settings (gradient
clipping, accumulation, callbacks such as the NaN guard). What the check changes, and only that:

* **data**: real CIFAR-10 JPEGs (``../shared/data/cifar10-mini.zip``; ``cifar10-train.zip`` in generalise
  mode) read by :class:`datamodules.ImageFolderDataModule` from a small ``train/``/``val/`` folder tree,
  ``min(10, the row's classes)`` classes (MC-Loss models rebuild their channels-per-class head for that
  count through the ``data.num_classes`` link); the row's augmentation arguments (crop mode, padding,
  flips, rotation, jitter, mean/std) are kept, sizes scaled to the check's input size;
* **input size**: the smallest size >= 32 px (CIFAR's own resolution) the model accepts, found by a forward
  pass on the meta device; fixed-size models (``img_size`` in their kwargs) are built for it;
* **length**: a fixed number of optimiser steps; the schedule is compressed proportionally (every duration
  argument x steps / the row's epochs, stepped per optimiser step: milestones, warm-up, cosine length,
  plateau patience; ``ReduceLROnPlateau`` watches ``train/loss`` since there is no validation epoch);
* **batch**: the row's per-device batch, capped by model size (big models: 4), on one device; the batch
  rule rescales the learning rate as it would on any machine (rows without ``lr_reference_batch_size``
  keep their lr as written);
* **precision**: the row's on CUDA; ``32-true`` on CPU (bf16 autocast has no fast CPU path here);
* **pre-training**: none (``pretrained: none``, nothing is downloaded); the notes say so where the row
  loads weights or its paper fine-tunes them (``pretrained_required``).

**Modes and verdicts.** *overfit* (every family): a fixed set of training images, each seen 12-64 times
(:func:`choose_budget`); ``learns`` when the training loss falls by at least half (``(first - last) /
|first| >= 0.5``, means of the first and last tenth of the steps) and the training accuracy of the last
epoch reaches :data:`TRAIN_ACC_BAR`; ``stuck`` when, after the whole budget, the accuracy is below twice
chance both in training and re-read in eval mode (for cross-entropy that is a loss near ln C; a loss that
fell back from an early spike, as lr 0.1 without warm-up produces, is not counted as moving); ``diverged``
on a NaN/inf loss or a loss that doubled; ``slow`` otherwise (it moves, but not enough in the steps given).
*generalise* (cheap families only): a few thousand training images and held-out validation images;
``learns`` when validation accuracy >= 2 x chance.
``error`` when the row could not be built or run (the message is kept).

**Exit status**: 0 when every family learns, 1 when any family does not (a CI-style check can fail),
2 on bad arguments; when the CIFAR-10 archive is absent the check prints one line and exits 0 without
writing anything.

**Output**: the table (row, family, params, input, batch, steps, images/s, loss first -> last, train and
val accuracy, chance, verdict, notes) and a last line ``N/M families learn``. A default run (all families:
no ``--rows``/``--quick``/``--shard``) also writes its section of ``benchmarks/results/learning.md`` (date,
machine, versions), leaving the file's other sections alone; ``--output`` writes any run, ``--json`` writes
the rows as JSON. ``--shard 1/2`` and ``--shard 2/2`` split a run over two processes (round robin over the
cheapest-first order); ``--render a.json b.json`` merges their JSON files into the results section.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fnmatch
import gc
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tools.common import ToolError, run_main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "learning.md"

#: candidate input sizes, smallest first (32 px is CIFAR-10's own resolution: nothing smaller is tried)
SIZES = (32, 64, 96, 128, 160, 192, 224, 256)
#: overfit verdict: training accuracy of the last epoch needed for ``learns``
TRAIN_ACC_BAR = 0.5
#: ``learns`` also needs the loss to fall by at least this fraction of its first value
LOSS_FALL = 0.5
#: generalise verdict: validation accuracy needed, in multiples of chance
VAL_ACC_FACTOR = 2.0
#: generalise mode runs only families up to this many parameters (CPU budget)
GENERALISE_MAX_PARAMS = 30e6
#: rows of ``--quick``: two cheap ResNet-18 families, the quick-start recipe (CE, AdamW, warm-up + cosine) and
#: ACANet's MC-Loss recipe (SGD lr 0.1, multi-step)
QUICK_ROWS = ("quickstart", "resnet18_cub_mcloss")


@dataclass(frozen=True)
class Budget:
    """Size of one check: images per class, batch cap and optimiser steps."""

    images_per_class: int
    max_batch: int
    steps: int
    val_per_class: int = 0


def choose_budget(params: float, mode: str, quick: bool, overrides: dict[str, int] | None = None) -> Budget:
    """Images per class, batch cap and steps by mode and model size; ``--images-per-class``, ``--max-batch``
    and ``--steps`` given on the command line replace the size's values (shorter or longer runs).

    Overfit: each image is seen 12-64 times (steps x batch / images); the biggest models get few images and
    a small batch so that they fit CPU memory and time.
    """
    if mode == "generalise":
        budget = Budget(images_per_class=300, max_batch=64, steps=300, val_per_class=100)
    elif quick:
        budget = Budget(images_per_class=4, max_batch=10, steps=40)
    elif params <= 30e6:
        budget = Budget(images_per_class=10, max_batch=32, steps=200)
    elif params <= 150e6:
        budget = Budget(images_per_class=8, max_batch=16, steps=100)
    else:
        budget = Budget(images_per_class=2, max_batch=4, steps=60)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return replace(budget, **given)


#: which init arguments of each scheduler are durations (in the scheduler's interval units)
DURATIONS: dict[str, tuple[str, ...]] = {
    "MultiStepLR": ("milestones",),
    "StepLR": ("step_size",),
    "CosineAnnealingLR": ("T_max",),
    "CosineAnnealingWarmRestarts": ("T_0",),
    "ReduceLROnPlateau": ("patience", "cooldown"),
    "WarmupReduceLROnPlateau": ("warmup_epochs", "patience", "cooldown"),
    "LinearLR": ("total_iters",),
    "ConstantLR": ("total_iters",),
    "PolynomialLR": ("total_iters",),
    "WarmupCosineLR": ("warmup_epochs", "max_epochs"),
    "WarmupMultiStepLR": ("milestones", "warmup_epochs"),
}
#: callbacks of a run's bookkeeping, not of its training (checkpoints, resume, signals, logging, test
#: analysis): left out of the check; every other callback of the row (NaN guard, EMA, ...) is kept
NOT_TRAINING = (
    "ModelCheckpoint",
    "LearningRateMonitor",
    "TestAnalysis",
    "RNGStateCallback",
    "SignalCheckpoint",
    "PredictionWriter",
)
#: data arguments kept from the row (augmentation); sizes are rescaled, the rest is the check's own
AUGMENTATION = (
    "train_crop",
    "crop_padding",
    "scale",
    "hflip",
    "vflip",
    "rotation",
    "color_jitter",
    "mean",
    "std",
)


# ------------------------------------------------------------------------------------------------ rows
def row_files() -> list[Path]:
    """Every experiment row: ``experiments/**/*.yaml`` except ``base.yaml`` and ``_``-prefixed fragments
    (the recipe and dataset files rows compose with ``_base_``)."""
    files = []
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        rel = path.relative_to(EXPERIMENTS)
        if rel.as_posix() == "base.yaml" or any(part.startswith("_") for part in rel.parts):
            continue
        files.append(path)
    return files


def row_name(path: Path) -> str:
    """The row's path under ``experiments/`` without ``.yaml`` (``acanet/resnet18_cub_ce``)."""
    try:
        return path.resolve().relative_to(EXPERIMENTS.resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.with_suffix("").as_posix()


def select_rows(patterns: Sequence[str], files: Sequence[Path]) -> list[Path]:
    """Rows whose name, stem or file name matches any of the glob ``patterns``."""
    chosen = []
    for path in files:
        names = (row_name(path), path.stem, path.name)
        if any(fnmatch.fnmatch(n, pat) for pat in patterns for n in names):
            chosen.append(path)
    if not chosen:
        raise ToolError(
            f"--rows {' '.join(patterns)} matches no experiment row (rows look like "
            f"{', '.join(row_name(p) for p in files[:3])}, ...)"
        )
    return chosen


def _short(class_path: str | None, default: str) -> str:
    return str(class_path).rsplit(".", 1)[-1] if class_path else default


def _quiet() -> contextlib.AbstractContextManager:
    """Silence Lightning's and jsonargparse's chatter while rows are parsed and trained."""
    import logging

    stack = contextlib.ExitStack()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logger = logging.getLogger(name)
        old = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, old)
    catcher = warnings.catch_warnings()
    stack.enter_context(catcher)
    warnings.simplefilter("ignore")
    return stack


def build_cli(path: Path, extra: Sequence[str], workdir: Path, meta: bool):
    """The project's CLI for ``path`` (run=False: model, datamodule and trainer built, nothing run)."""
    import torch

    from lightning_modules.cli import cli_main

    args = [
        "--config",
        str(path),
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(workdir),
        *extra,
    ]
    with _quiet(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        if meta:
            with torch.device("meta"):
                return cli_main(args=args, run=False)
        return cli_main(args=args, run=False)


def _task_defaults() -> dict[str, Any]:
    """What :class:`~lightning_modules.task.ClassificationTask` uses when a row leaves a key out."""
    import inspect

    from lightning_modules.task import ClassificationTask

    params = inspect.signature(ClassificationTask.__init__).parameters
    optimizer = params["optimizer"].default
    return {
        "backbone": params["backbone"].default,
        # loss None: the task's own nn.CrossEntropyLoss(label_smoothing=...)
        "loss": "CrossEntropyLoss",
        "optimizer": getattr(optimizer, "__name__", str(optimizer)),
        "scheduler": "constant",
        "lr_scheduler_interval": params["lr_scheduler_interval"].default,
    }


def family_name(backbone: str, loss: str, optimizer: str, scheduler: str) -> str:
    return f"{backbone} / {loss} / {optimizer} / {scheduler}"


@dataclass
class Row:
    """One experiment row as its files state it: ``base.yaml`` and the row's ``_base_`` chain merged by
    :func:`lightning_modules.config_compose.compose` (the expansion the CLI applies). The check then runs the
    row through the CLI itself and refuses to go on if the CLI built another family."""

    path: Path
    name: str
    family: str
    backbone: str
    backbone_kwargs: dict[str, Any]
    loss: str
    image_size: int
    batch_size: int
    max_epochs: int
    precision: str
    pretrained: Any
    callbacks: list[dict[str, Any]] = field(repr=False)
    model_init: dict[str, Any] = field(repr=False)
    data: dict[str, Any] = field(repr=False)
    #: a ``TensorCacheDataModule`` row: the cache's own arguments (``data`` is then its inner datamodule)
    tensor_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def num_classes(self) -> int:
        """The row's number of classes: its datamodule, constructed alone (no files are read)."""
        import importlib

        module, _, name = str(self.data.get("class_path", "")).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ToolError(f"{self.name}: data class {self.data.get('class_path')!r} not found") from err
        with _quiet():
            return int(cls(**(self.data.get("init_args") or {})).num_classes)


def read_row(path: Path, defaults: dict[str, Any] | None = None) -> Row:
    """The row as its composed files state it (fast: YAML only, nothing parsed or built)."""
    from lightning_modules.config_compose import compose

    defaults = defaults or _task_defaults()
    base = EXPERIMENTS / "base.yaml"
    cfg = compose(*([base] if base.is_file() else []), path)
    init = dict((cfg.get("model") or {}).get("init_args") or {})
    data = dict(cfg.get("data") or {})
    cache: dict[str, Any] = {}
    if _short(data.get("class_path"), "") == "TensorCacheDataModule":  # the inner module holds the settings
        cache = {k: v for k, v in (data.get("init_args") or {}).items() if k != "datamodule"}
        data = dict((data.get("init_args") or {}).get("datamodule") or {})
    data_init = data.get("init_args") or {}
    trainer = cfg.get("trainer") or {}

    def cls(key: str, default: str) -> str:
        value = init.get(key)
        return _short(value.get("class_path"), default) if isinstance(value, dict) else default

    loss = cls("loss", defaults["loss"])
    backbone = init.get("backbone") or defaults["backbone"]
    return Row(
        path=path,
        name=row_name(path),
        family=family_name(
            backbone,
            loss,
            cls("optimizer", defaults["optimizer"]),
            cls("lr_scheduler", defaults["scheduler"]),
        ),
        backbone=backbone,
        backbone_kwargs=dict(init.get("backbone_kwargs") or {}),
        loss=loss,
        image_size=int(data_init.get("image_size") or 224),
        batch_size=int(data_init.get("batch_size") or 32),
        max_epochs=int(trainer.get("max_epochs") or 0),
        precision=str(trainer.get("precision") or "32-true"),
        pretrained=init.get("pretrained"),
        callbacks=list(trainer.get("callbacks") or []),
        model_init={"lr_scheduler_interval": defaults["lr_scheduler_interval"], **init},
        data=data,
        tensor_cache=cache,
    )


def group_rows(paths: Sequence[Path]) -> dict[str, list[Row]]:
    """Rows grouped by recipe family (same backbone, loss class, optimiser class, scheduler class)."""
    defaults = _task_defaults()
    out: dict[str, list[Row]] = {}
    for path in paths:
        row = read_row(path, defaults)
        out.setdefault(row.family, []).append(row)
    return out


def cheapest(rows: Sequence[Row]) -> Row:
    """The row of a family that costs least to run: smallest input, then batch, then name."""
    return min(rows, key=lambda r: (r.image_size, r.batch_size, r.name))


def built_family(trainer, task) -> str:
    """The family that actually trained: the task's backbone and loss, the trainer's optimiser and
    scheduler."""
    optimizer = type(trainer.optimizers[0]).__name__ if trainer.optimizers else "none"
    configs = trainer.lr_scheduler_configs
    scheduler = type(configs[0].scheduler).__name__ if configs else "constant"
    return family_name(task.hparams.backbone, type(task.loss).__name__, optimizer, scheduler)


# ------------------------------------------------------------------------------------------------ data
class SkipRow(Exception):
    """A row this mode does not run (generalise mode: too big for the CPU budget)."""


def cifar_members(archive: Path) -> dict[str, list[str]]:
    """``{class name: sorted member names}`` of a CIFAR-10 ImageFolder zip (``.../train/<class>/<n>.jpg``)."""
    by_class: dict[str, list[str]] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) >= 2 and parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                by_class.setdefault(parts[-2], []).append(name)
    if len(by_class) < 2:
        raise ToolError(f"{archive} holds no ImageFolder tree (<split>/<class>/<image>.jpg)")
    return {c: sorted(v) for c, v in sorted(by_class.items())}


def build_image_tree(
    archive: Path, dest: Path, num_classes: int, train_per_class: int, val_per_class: int
) -> Path:
    """Write ``dest/{train,val,test}/<class>/`` from the first images of the first classes (test = val).

    ``val_per_class == 0`` (overfit mode): ``val/`` holds the training images themselves, so the evaluation
    pass measures how well the set was fitted, without augmentation and in eval mode.
    """
    members = cifar_members(archive)
    classes = list(members)[:num_classes]
    with zipfile.ZipFile(archive) as zf:
        for cls in classes:
            names = members[cls]
            need = train_per_class + val_per_class
            if len(names) < need:
                raise ToolError(f"{archive}: class {cls} has {len(names)} images, the check needs {need}")
            train, val = names[:train_per_class], names[train_per_class:need]
            # with test/ beside it, val/ is the validation split (and test/ is not used)
            for split, chosen in (("train", train), ("val", val or train), ("test", val or train)):
                folder = dest / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                for name in chosen:
                    (folder / Path(name).name).write_bytes(zf.read(name))
    return dest


# ------------------------------------------------------------------------------------------------ schedule
def compress_scheduler(
    scheduler: dict[str, Any] | None, factor: float, total_steps: int
) -> tuple[dict[str, Any] | None, str]:
    """The scheduler config with every duration multiplied by ``factor`` (row epochs -> check steps).

    Rounded to whole steps; a duration that was positive stays at least 1; lengths stay within the run.
    Raises :class:`ToolError` for a scheduler whose duration arguments are not known.
    """
    if not scheduler:
        return None, ""
    class_path = scheduler.get("class_path", "")
    name = _short(class_path, "")
    if name not in DURATIONS:
        raise ToolError(f"learncheck does not know which arguments of {class_path} are durations")
    args = dict(scheduler.get("init_args") or {})
    changed = []
    for key in DURATIONS[name]:
        if key not in args or args[key] is None:
            continue

        def scale(value: float) -> int:
            scaled = int(round(value * factor))
            return min(total_steps, max(1 if value > 0 else 0, scaled))

        old = args[key]
        args[key] = [scale(v) for v in old] if isinstance(old, (list, tuple)) else scale(old)
        changed.append(f"{key} {old}->{args[key]}")
    if name == "WarmupCosineLR" and args.get("warmup_epochs", 0) >= args.get("max_epochs", total_steps):
        args["warmup_epochs"] = max(0, args["max_epochs"] - 1)
    return {"class_path": class_path, "init_args": args}, ", ".join(changed)


# ------------------------------------------------------------------------------------------------ model size
def smallest_size(
    row: Row, num_classes: int, sizes: Sequence[int] = SIZES
) -> tuple[int, dict[str, Any], int]:
    """The smallest of :data:`SIZES` the model takes, the backbone kwargs that build it for that size, and
    the backbone's parameter count.

    Tried on the meta device (no memory, no compute), on the CPU where an op has no meta kernel: the
    kwargs as written, then with ``img_size`` set for models that fix their input size at construction.
    """
    import torch

    from lightning_modules.task import create_backbone

    errors = []
    for size in sizes:
        variants = []
        if "img_size" in row.backbone_kwargs:
            variants.append({**row.backbone_kwargs, "img_size": size})
        else:
            variants += [dict(row.backbone_kwargs), {**row.backbone_kwargs, "img_size": size}]
        for kwargs in variants:
            for device in ("meta", "cpu"):  # cpu only where an op has no meta kernel (autocast regions)
                try:
                    with _quiet(), torch.device(device), torch.no_grad():
                        net = create_backbone(row.backbone, num_classes, **kwargs)
                        net.eval()
                        net.forward_features(torch.zeros(2, 3, size, size))
                    return size, kwargs, sum(p.numel() for p in net.parameters())
                except Exception as err:  # noqa: BLE001 - any failure means "not this size"
                    errors.append(f"{size}px ({device}): {type(err).__name__}: {str(err)[:120]}")
                    if "device type" not in str(err) and "meta" not in str(err):
                        break
    raise ToolError(f"{row.backbone} accepts none of {tuple(sizes)} px: " + "; ".join(errors[-2:]))


# ------------------------------------------------------------------------------------------------ run
@dataclass
class Result:
    """The outcome of one row's check (one line of the table)."""

    row: str
    family: str
    params_m: float
    size: int = 0
    batch: int = 0
    steps: int = 0
    images: int = 0
    lr: float = float("nan")
    images_per_s: float = float("nan")
    loss_first: float = float("nan")
    loss_last: float = float("nan")
    train_acc: float = float("nan")
    val_acc: float = float("nan")
    chance: float = float("nan")
    verdict: str = "error"
    notes: str = ""
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list, repr=False)


def verdict(losses: Sequence[float], train_acc: float, val_acc: float, chance: float, mode: str) -> str:
    """``learns`` / ``slow`` / ``stuck`` / ``diverged`` from the per-step losses and the accuracies."""
    if not losses or not all(math.isfinite(v) for v in losses):
        return "diverged"
    first, last = loss_ends(losses)
    fall = (first - last) / max(abs(first), 1e-12)
    if fall <= -1.0:  # the loss doubled
        return "diverged"
    if mode == "overfit":
        if fall >= LOSS_FALL and train_acc >= TRAIN_ACC_BAR:
            return "learns"
    elif val_acc >= VAL_ACC_FACTOR * chance:
        return "learns"
    # the training accuracy and the eval-mode one (overfit: the training images re-read) both below twice
    # chance after the whole budget: stuck, even when the loss fell from an early spike (lr 0.1 without
    # warm-up lifts it far above ln C in the first steps, and its fall back is no learning)
    accuracy = max(train_acc, val_acc if math.isfinite(val_acc) else train_acc)
    if accuracy < 2 * chance:
        return "stuck"
    return "slow"


def loss_ends(losses: Sequence[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last tenth of the steps (at least one step each)."""
    k = max(1, len(losses) // 10)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def _image_folder_defaults() -> dict[str, Any]:
    """Constructor defaults of :class:`datamodules.ImageFolderDataModule` and its base classes."""
    import inspect

    from datamodules import ImageFolderDataModule

    out: dict[str, Any] = {}
    for cls in reversed(ImageFolderDataModule.__mro__):
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if param.default is not inspect.Parameter.empty:
                out[name] = list(param.default) if isinstance(param.default, tuple) else param.default
    return out


def _recorder():
    """A Lightning callback recording the loss and wall time of every training step."""
    from lightning.pytorch.callbacks import Callback

    class StepRecorder(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.times: list[float] = []
            self.lrs: list[float] = []
            self._t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._t0 = time.perf_counter()
            if not self.lrs:  # the learning rate after the batch rule, before the schedule's factors
                group = trainer.optimizers[0].param_groups[0]
                self.lrs.append(float(group.get("initial_lr", group["lr"])))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss.detach().float()))
            self.times.append(time.perf_counter() - self._t0)
            if not math.isfinite(self.losses[-1]):
                trainer.should_stop = True

    return StepRecorder()


def _evaluate(model, loader, device: str) -> float:
    """Top-1 accuracy of ``model`` (eval mode, no augmentation) over ``loader``."""
    import torch

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += int((model(x).argmax(-1) == y).sum())
            total += int(y.numel())
    return correct / max(total, 1)


def run_row(
    row: Row,
    mode: str,
    device: str,
    archive: Path,
    workdir: Path,
    quick: bool,
    overrides: dict[str, int],
    probe: tuple[int, dict[str, Any], int] | None = None,
) -> Result:
    """Train ``row``'s recipe on real images as described in the module docstring."""
    import torch

    started = time.perf_counter()
    notes: list[str] = []
    num_classes = min(10, row.num_classes())
    size, kwargs, params = probe or smallest_size(row, num_classes)
    if mode == "generalise" and device == "cpu" and params > GENERALISE_MAX_PARAMS:
        raise SkipRow(f"{params / 1e6:.0f} M parameters (generalise mode: families up to 30 M on CPU)")
    result = Result(row=row.name, family=row.family, params_m=params / 1e6, chance=1.0 / num_classes)
    if kwargs != row.backbone_kwargs:
        notes.append(f"img_size {row.backbone_kwargs.get('img_size', '-')}->{size}")
    budget = choose_budget(params, mode, quick, overrides)
    images = budget.images_per_class * num_classes
    batch = min(row.batch_size, budget.max_batch, images)
    steps_per_epoch = images // batch
    epochs = max(1, round(budget.steps / steps_per_epoch))
    steps = epochs * steps_per_epoch
    if batch != row.batch_size:
        notes.append(f"batch {row.batch_size}->{batch}")
    tree = build_image_tree(
        archive, workdir / "images", num_classes, budget.images_per_class, budget.val_per_class
    )

    init = row.model_init
    factor = steps / max(1, row.max_epochs)
    interval = init.get("lr_scheduler_interval") or "epoch"
    if interval != "epoch":
        raise ToolError(
            f"{row.name}: lr_scheduler_interval {interval!r}: the schedule's length in steps depends on the "
            "row's dataset size, which the check does not know; only epoch-interval rows are compressed"
        )
    scheduler, changed = compress_scheduler(init.get("lr_scheduler"), factor, steps)
    if changed:
        notes.append(f"schedule x{factor:.3g}: {changed}")
    precision = row.precision if device == "cuda" else "32-true"
    if precision != row.precision:
        notes.append(f"precision {row.precision}->{precision}")
    if row.pretrained not in (None, False, "none", "None", ""):
        notes.append(f"pretrained {row.pretrained!r}->none (from scratch)")
    elif init.get("pretrained_required"):
        notes.append("paper fine-tunes pre-trained weights; here from scratch (pretrained: none)")

    row_data = row.data.get("init_args") or {}
    data = {k: row_data[k] for k in AUGMENTATION if k in row_data}
    ratio = size / max(1, row.image_size)
    resize = row_data.get("resize_size")
    data.update(
        root=str(tree),
        split="folders",
        image_size=size,
        resize_size=None if resize is None else max(size, int(round(resize * ratio))),
        crop_padding=int(round((data.get("crop_padding") or 0) * ratio)),
        batch_size=batch,
        num_workers=0,
    )
    # jsonargparse carries the row's other data arguments over to the new class where it accepts them
    # (num_classes: 24, val_fraction, split_ratios, ...): give each of them the folder module's default
    for key, default in _image_folder_defaults().items():
        if key in row_data and key not in data:
            data[key] = default
    callbacks = [cb for cb in row.callbacks if not _short(cb.get("class_path"), "").endswith(NOT_TRAINING)]
    data_cfg: dict[str, Any] = {"class_path": "datamodules.ImageFolderDataModule", "init_args": data}
    if row.tensor_cache:
        # the row's own cache around the real images, so that its batch pipeline is what trains
        cache_args = {**row.tensor_cache, "device": "cuda" if device == "cuda" else "cpu"}
        cache_args.update(cache_dir=str(workdir / "tensor_cache"), datamodule=data_cfg)
        data_cfg = {"class_path": "datamodules.tensor_cache.TensorCacheDataModule", "init_args": cache_args}
    extra = [
        "--data",
        json.dumps(data_cfg),
        "--model.init_args.backbone_kwargs",
        json.dumps(kwargs),
        "--model.init_args.pretrained",
        "none",  # random init chosen explicitly (recipes with pretrained_required refuse null)
        "--model.init_args.lr_scheduler_interval",
        "step",
        "--trainer.callbacks",
        json.dumps(callbacks),
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.accelerator",
        "gpu" if device == "cuda" else "cpu",
        "--trainer.devices",
        "1",
        "--trainer.num_nodes",
        "1",
        "--trainer.strategy",
        "auto",
        "--trainer.sync_batchnorm",
        "false",
        "--trainer.precision",
        precision,
    ]
    if scheduler is not None:
        extra += ["--model.init_args.lr_scheduler", json.dumps(scheduler)]
        if _short(scheduler["class_path"], "") in ("ReduceLROnPlateau", "WarmupReduceLROnPlateau"):
            extra += ["--model.init_args.lr_scheduler_monitor", "train/loss"]
    result.size, result.batch, result.steps, result.images = size, batch, steps, images
    cli = build_cli(row.path, extra, workdir / "run", meta=False)
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    from lightning.pytorch.cli import SaveConfigCallback

    recorder = _recorder()
    # the CLI's config saver would write config.yaml into a run folder: not a run, nothing to save
    trainer.callbacks[:] = [cb for cb in trainer.callbacks if not isinstance(cb, SaveConfigCallback)]
    trainer.callbacks.append(recorder)
    try:
        with _quiet():
            trainer.fit(model, datamodule=dm)
    except FloatingPointError as err:  # the NaN guard of base.yaml (NonFiniteLossError)
        notes.append(str(err).split(".")[0])
        recorder.losses.append(float("nan"))
    if trainer.optimizers and built_family(trainer, model) != row.family:
        raise ToolError(
            f"the files state family {row.family}, the CLI trained {built_family(trainer, model)}"
        )
    result.lr = recorder.lrs[0] if recorder.lrs else float("nan")
    losses = result.losses = recorder.losses
    if len(recorder.times) > 3:
        timed = recorder.times[2:]
        result.images_per_s = batch * len(timed) / sum(timed)
    if losses:
        result.loss_first, result.loss_last = loss_ends(losses)
    train_acc = trainer.callback_metrics.get("train/acc1")
    result.train_acc = float(train_acc) if train_acc is not None else float("nan")
    if losses and all(math.isfinite(v) for v in losses):
        dm.setup("validate")
        model.to(torch.device(device))
        result.val_acc = _evaluate(model, dm.val_dataloader(), device)
    result.verdict = verdict(losses, result.train_acc, result.val_acc, result.chance, mode)
    if losses and result.loss_last > result.loss_first:
        notes.append("loss rose")
    if mode == "overfit" and result.verdict == "stuck" and row.loss in ("CrossEntropyLoss", "FocalLoss"):
        notes.append(f"loss {result.loss_last:.3g} vs ln C {math.log(num_classes):.3g}")
    result.notes = "; ".join(notes)
    result.seconds = time.perf_counter() - started
    del cli, model, dm, trainer
    gc.collect()
    _release_heap()
    return result


def _release_heap() -> None:
    """Give freed heap back to the OS between rows (``malloc_trim``): glibc keeps freed memory in its arenas,
    and a shard of the 2026-12-02 run held 8 GB resident after 35 families, before its largest ones."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


# ------------------------------------------------------------------------------------------------ report
def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


HEADER = (
    "| row | family | params (M) | input | batch | steps | lr | images/s | loss first -> last | "
    "train acc | val acc | chance | verdict | notes |"
)


def table(results: Sequence[Result]) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in results:
        lines.append(
            f"| {r.row} | {r.family} | {_fmt(r.params_m, '.1f')} | {r.size or '-'} | {r.batch or '-'} | "
            f"{r.steps or '-'} | {_fmt(r.lr, '.3g')} | {_fmt(r.images_per_s, '.1f')} | "
            f"{_fmt(r.loss_first, '.3g')} -> {_fmt(r.loss_last, '.3g')} | {_fmt(r.train_acc, '.2f')} | "
            f"{_fmt(r.val_acc, '.2f')} | {_fmt(r.chance, '.2f')} | **{r.verdict}** | {r.notes} |"
        )
    return "\n".join(lines)


def summary(results: Sequence[Result], families: int | None = None) -> str:
    """``N/M families learn`` (M: the families run, or all families when given)."""
    learn = sum(r.verdict == "learns" for r in results)
    return f"{learn}/{families if families is not None else len(results)} families learn"


def environment() -> str:
    import lightning
    import timm
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; CPU {cpu} ({os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads); GPU {gpu}; Python {platform.python_version()}, torch "
        f"{torch.__version__}, lightning {lightning.__version__}, timm {timm.__version__}"
    )


def write_section(path: Path, key: str, body: str) -> None:
    """Replace the section between ``<!-- learncheck:KEY -->`` markers in ``path`` (append it when new)."""
    begin, end = f"<!-- learncheck:{key} -->", f"<!-- /learncheck:{key} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.is_file() else "# Learning check: does each recipe learn?\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def report(args, command: str, files, groups, results: Sequence[Result], progress: str = "") -> str:
    """The markdown section of one run: environment, command, table, summary line last."""
    return (
        f"## {args.mode} mode, {args.device}\n\n{environment()}\n\n"
        f"Command: `{command}`; {len(files)} rows in {len(groups)} families. {progress}\n\n"
        f"{table(results)}\n\n{summary(results, len(groups))}\n"
    )


def _probe_params(probe: Any) -> float:
    return float(probe[2]) if isinstance(probe, tuple) else math.inf


def render(args, files, groups) -> int:
    """``--render``: the table of earlier runs' JSON files, in family order, written like a run's."""
    by_family: dict[str, Result] = {}
    for path in args.render:
        for item in json.loads(path.read_text()):
            res = Result(**item)
            if res.losses:  # the verdict by this version's rules, from the recorded losses
                res.verdict = verdict(res.losses, res.train_acc, res.val_acc, res.chance, args.mode)
                rose = "loss rose"
                if res.loss_last > res.loss_first and rose not in res.notes:
                    res.notes = "; ".join(n for n in (res.notes, rose) if n)
            old = by_family.get(res.family)
            # a family run twice (e.g. rerun after an error): the run that got through counts, else the first
            if old is None or (old.verdict == "error" and res.verdict != "error"):
                by_family[res.family] = res
    results = list(by_family.values())
    order = {fam: i for i, fam in enumerate(groups)}
    results.sort(
        key=lambda r: (r.params_m if math.isfinite(r.params_m) else math.inf, order.get(r.family, 0))
    )
    missing = [fam for fam in groups if fam not in {r.family for r in results}]
    note = f"Not run: {', '.join(missing)}." if missing else ""
    command = "; ".join(dict.fromkeys(item for path in args.render for item in _commands(path))) or "-"
    print(table(results))
    print(summary(results, len(groups)))
    output = args.output or RESULTS
    write_section(output, f"{args.mode}:{args.device}", report(args, command, files, groups, results, note))
    print(f"written: {output}")
    return 0 if all(r.verdict == "learns" for r in results) and not missing else 1


def _commands(path: Path) -> list[str]:
    side = path.with_suffix(".command")
    return [side.read_text().strip()] if side.is_file() else []


# ------------------------------------------------------------------------------------------------ main
def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return int(text)


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N with 1 <= K <= N, e.g. 1/2")
    return int(k), int(n)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.learncheck",
        description="Train each recipe family briefly on real CIFAR-10 images and say whether it learns.",
    )
    parser.add_argument("--rows", action="append", default=[], help="glob on row names (repeatable)")
    parser.add_argument("--mode", choices=("overfit", "generalise"), default="overfit")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--quick", action="store_true", help=f"the cheapest row of {len(QUICK_ROWS)} families"
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder of cifar10-*.zip")
    parser.add_argument(
        "--output", type=Path, default=None, help=f"markdown results file (default run: {RESULTS})"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--list", action="store_true", help="print the families and their rows, run nothing")
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        default=None,
        help="run nothing: merge the --json files of earlier runs (e.g. halves run in parallel) into a table",
    )
    parser.add_argument(
        "--input-size",
        type=lambda v: 0 if v == "row" else int(v),
        default=None,
        help="input size in px, or 'row' for the row's own (default: the smallest the model takes)",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="K/N",
        help="run only every N-th family from the K-th (1-based) of the cheapest-first order, e.g. two "
        "single-threaded processes with 1/2 and 2/2 and --json each, merged by --render",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--images-per-class", type=_positive, default=None, help="replace the budget's images"
    )
    parser.add_argument("--max-batch", type=_positive, default=None, help="replace the budget's batch cap")
    parser.add_argument("--steps", type=_positive, default=None, help="replace the budget's optimiser steps")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files = row_files()
    if args.rows:
        files = select_rows(args.rows, files)
    elif args.quick:
        files = select_rows(QUICK_ROWS, files)
    archive = args.data_dir / ("cifar10-mini.zip" if args.mode == "overfit" else "cifar10-train.zip")
    if not args.list and not archive.is_file():
        print(f"learncheck: skipped, {archive} not found (real CIFAR-10 JPEGs; see ../shared/data/README.md)")
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ToolError("--device cuda: no CUDA device is available")
    groups = group_rows(files)
    if args.render:
        return render(args, files, groups)
    if args.list:
        for fam, members in groups.items():
            print(f"{fam}: {', '.join(r.name for r in members)}")
        print(f"{len(groups)} families, {len(files)} rows")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = {"images_per_class": args.images_per_class, "max_batch": args.max_batch, "steps": args.steps}
    chosen = [cheapest(members) for members in groups.values()]
    # cheapest families first (so an interrupted run has covered the most), sizes probed on the meta device
    probes: dict[str, Any] = {}
    for row in chosen:
        try:
            sizes = SIZES if args.input_size is None else [args.input_size or row.image_size]
            probes[row.name] = smallest_size(row, min(10, row.num_classes()), sizes)
        except Exception as err:  # noqa: BLE001 - reported as the row's error when its turn comes
            probes[row.name] = err
    chosen.sort(key=lambda r: (_probe_params(probes[r.name]), r.name))
    if args.shard:  # round robin over the cheapest-first order: shards of about equal cost
        k, n = args.shard
        chosen = chosen[k - 1 :: n]
    output = args.output or (RESULTS if not (args.rows or args.quick or args.shard) else None)
    command = f"python -m tools.learncheck {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    work = Path(tempfile.mkdtemp(prefix="learncheck-"))
    results: list[Result] = []
    try:
        for i, row in enumerate(chosen):
            print(f"[{i + 1}/{len(chosen)}] {row.name} ({row.family}) ...", flush=True)
            row_dir = work / f"row{i}"
            try:
                if isinstance(probes[row.name], Exception):
                    raise probes[row.name]
                res = run_row(
                    row, args.mode, args.device, archive, row_dir, args.quick, overrides, probes[row.name]
                )
            except SkipRow as why:
                print(f"    skipped: {why}")
                continue
            except Exception as err:  # noqa: BLE001 - a row that cannot run is a finding, not a crash
                res = Result(row=row.name, family=row.family, params_m=float("nan"))
                res.notes = f"{type(err).__name__}: {str(err)[:300]}".replace("|", "/").replace("\n", " ")
            shutil.rmtree(row_dir, ignore_errors=True)
            results.append(res)
            print(
                f"    {res.verdict}: loss {_fmt(res.loss_first, '.3g')} -> {_fmt(res.loss_last, '.3g')}, "
                f"train acc {_fmt(res.train_acc, '.2f')}, val acc {_fmt(res.val_acc, '.2f')}, "
                f"{res.images_per_s:.1f} img/s, {res.seconds:.0f} s",
                flush=True,
            )
            if args.json is not None:
                args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
                args.json.with_suffix(".command").write_text(command)
            if output is not None and len(results) < len(chosen):  # partial results survive an interruption
                progress = f"(in progress: {len(results)} of {len(chosen)} families run)"
                write_section(
                    output,
                    f"{args.mode}:{args.device}",
                    report(args, command, files, groups, results, progress),
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    print(summary(results))
    if output is not None:
        write_section(output, f"{args.mode}:{args.device}", report(args, command, files, groups, results))
        print(f"written: {output}")
    return 0 if all(r.verdict == "learns" for r in results) else 1


def run_main_code(fn) -> int:
    """Like :func:`tools.common.run_main`, but passing on ``fn``'s own exit status."""
    status = {"code": 0}

    def wrapped(argv):
        status["code"] = fn(argv)

    if run_main(wrapped) != 0:
        return 2
    return status["code"]


if __name__ == "__main__":
    sys.exit(run_main_code(main))
