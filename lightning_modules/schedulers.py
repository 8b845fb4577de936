"""Learning-rate schedules with linear warm-up, usable from YAML as ``lr_scheduler`` callables.

Units are those of ``model.init_args.lr_scheduler_interval``: epochs by default, optimiser steps with
``interval: step``. Closed-form ``LRScheduler`` subclasses, so they checkpoint and resume exactly.

Example (MSF-CA recipe: warm-up 1e-4 -> 1e-3 over 30 epochs, then cosine to 400)::

    lr_scheduler:
      class_path: lightning_modules.schedulers.WarmupCosineLR
      init_args: {warmup_epochs: 30, max_epochs: 400, warmup_start_factor: 0.1}

FFT scaled recipe: Goyal et al.'s gradual warm-up (from the reference batch's lr to the linearly scaled one
over 5 epochs), then PyTorch's ``ReduceLROnPlateau``::

    lr_scheduler:
      class_path: lightning_modules.schedulers.WarmupReduceLROnPlateau
      init_args: {warmup_epochs: 5, mode: min, factor: 0.1, patience: 10}
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau


def _warmup_factor(t: int, warmup: int, start: float) -> float:
    """Linear ramp from ``start`` (at t=0) to 1 (at t=warmup)."""
    return start + (1.0 - start) * t / warmup


class SchedulerConfigError(ValueError):
    """A scheduler argument out of range (user error: one line, exit 2)."""

    user_error = True


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from ``warmup_start_factor * lr`` to ``lr``, then cosine annealing to ``eta_min``.

    Args:
        optimizer: wrapped optimiser.
        warmup_epochs: length of the warm-up (interval units); 0 disables it.
        max_epochs: total schedule length including warm-up; the LR stays at ``eta_min`` afterwards.
        warmup_start_factor: LR multiplier at the first warm-up step (e.g. 0.1 for 1e-4 -> 1e-3).
        eta_min: final learning rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: int,
        max_epochs: int,
        warmup_start_factor: float = 0.0,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if not 0 <= warmup_epochs < max_epochs:
            raise SchedulerConfigError(
                f"scheduler needs 0 <= warmup_epochs ({warmup_epochs}) < max_epochs ({max_epochs})"
            )
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs
        self.warmup_start_factor, self.eta_min = warmup_start_factor, eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t = self.last_epoch
        if t < self.warmup_epochs:
            return [
                base * _warmup_factor(t, self.warmup_epochs, self.warmup_start_factor)
                for base in self.base_lrs
            ]
        progress = min(1.0, (t - self.warmup_epochs) / (self.max_epochs - self.warmup_epochs))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return [self.eta_min + (base - self.eta_min) * cosine for base in self.base_lrs]


class WarmupReduceLROnPlateau(ReduceLROnPlateau):
    """Linear warm-up for ``warmup_epochs`` steps, then PyTorch's ``ReduceLROnPlateau`` unchanged.

    Goyal et al. (2017) pair the linear scaling rule (lr x k for a k times larger batch) with a gradual
    warm-up from the small batch's lr to the scaled one. With ``warmup_start_factor: null`` (default) each
    parameter group starts at its ``reference_lr``, the lr before the task's linear scaling
    (``lr_reference_batch_size``; ``ClassificationTask.configure_optimizers`` records it), and reaches its
    scaled lr after ``warmup_epochs`` steps; a number instead starts every group at
    ``warmup_start_factor`` x its lr. The monitored metric is ignored during the warm-up (those epochs
    count neither as better nor as bad); the plateau rule applies from the first step after it. The state
    (warm-up position included) checkpoints with ``state_dict``.

    Args:
        optimizer: wrapped optimiser (its groups' ``lr`` are the targets of the warm-up).
        warmup_epochs: warm-up length in scheduler steps (epochs with ``lr_scheduler_interval: epoch``).
        warmup_start_factor: start lr as a fraction of the target; ``None``: each group's ``reference_lr``.
        **plateau: ``ReduceLROnPlateau`` arguments (``mode``, ``factor``, ``patience``, ...).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: int = 5,
        warmup_start_factor: float | None = None,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        if warmup_epochs < 0:
            raise SchedulerConfigError(f"scheduler needs warmup_epochs >= 0, got {warmup_epochs}")
        if warmup_start_factor is not None and not 0.0 <= warmup_start_factor <= 1.0:
            raise SchedulerConfigError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
        super().__init__(
            optimizer,
            mode=mode,
            factor=factor,
            patience=patience,
            threshold=threshold,
            threshold_mode=threshold_mode,
            cooldown=cooldown,
            min_lr=min_lr,
            eps=eps,
        )
        self.warmup_epochs = warmup_epochs
        self.warmup_done = 0
        self.target_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        if warmup_start_factor is None:
            self.start_lrs = [float(g.get("reference_lr", g["lr"])) for g in optimizer.param_groups]
        else:
            self.start_lrs = [warmup_start_factor * lr for lr in self.target_lrs]
        if warmup_epochs:
            self._set_lrs(0)

    def _set_lrs(self, t: int) -> None:
        for group, start, target in zip(self.optimizer.param_groups, self.start_lrs, self.target_lrs):
            group["lr"] = start + (target - start) * t / self.warmup_epochs
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        if self.warmup_done < self.warmup_epochs:
            self.warmup_done += 1
            self.last_epoch += 1
            self._set_lrs(self.warmup_done)
            return
        super().step(metrics, epoch)
