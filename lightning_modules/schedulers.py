"""Learning-rate schedules with linear warm-up, usable from YAML as ``lr_scheduler`` callables.

Units are those of ``model.init_args.lr_scheduler_interval``: epochs by default, optimiser steps with
``interval: step``. Closed-form ``LRScheduler`` subclasses, so they checkpoint and resume exactly.

Example (MSF-CA recipe: warm-up 1e-4 -> 1e-3 over 30 epochs, then cosine to 400)::

    lr_scheduler:
      class_path: lightning_modules.schedulers.WarmupCosineLR
      init_args: {warmup_epochs: 30, max_epochs: 400, warmup_start_factor: 0.1}
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


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
