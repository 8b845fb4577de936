"""Callbacks used by the CLI."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` in the command's record folder *and* send the resolved config to every logger.

    ``fit`` records into the run folder; an evaluation into its own ``<run>/eval/<sub>-<ckpt>/`` (so the
    fit's ``config.yaml`` keeps saying how the model was trained); ``fast_dev_run`` records nothing
    (``record_dir=None``). The saved file names the run (``name`` and the root folder, not the run folder),
    so ``--config runs/X/config.yaml`` means run ``runs/X`` again. W&B gets the config as the run config
    (nested, so runs can be filtered and grouped by any key, e.g. ``model.init_args.backbone``); other
    loggers get it through ``log_hyperparams``. Runs on rank 0 only (no collectives here, as Lightning
    requires). A fit's new W&B id is written to ``<run>/wandb_id`` here, i.e. only once the fit starts.

    Args:
        record_dir: folder of ``config.yaml`` (``None``: write no file).
        run_root: ``trainer.default_root_dir`` as the user gave it (written into the saved config).
        run_name: the run's name (written as ``name``).
        wandb_id: a new fit's W&B id to write into ``<run>/wandb_id``.
        config_to_save: the config as the user gave it (default: the one Lightning passes, which holds the
            folders and ids the CLI filled in; a reused file would then log into this record again).
    """

    def __init__(
        self,
        *args: Any,
        record_dir: str | None = None,
        run_root: str | None = None,
        run_name: str | None = None,
        wandb_id: str | None = None,
        config_to_save: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)
        self.record_dir, self.run_root, self.run_name = record_dir, run_root, run_name
        self.wandb_id, self.config_to_save = wandb_id, config_to_save

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        import yaml

        config = (self.config_to_save if self.config_to_save is not None else self.config).clone()
        if self.run_root is not None:
            config.trainer.default_root_dir = self.run_root
            config.name = self.run_name
        if self.record_dir is not None:
            if stage == "fit":
                config.ckpt_path = None  # reusing the file starts the same run, it does not resume
            os.makedirs(self.record_dir, exist_ok=True)
            self.parser.save(
                config, os.path.join(self.record_dir, "config.yaml"), skip_none=False, overwrite=True
            )
            if self.wandb_id and stage == "fit":
                with open(os.path.join(trainer.default_root_dir, "wandb_id"), "w") as f:
                    f.write(self.wandb_id)
        as_dict = yaml.safe_load(self.parser.dump(config, skip_none=False, format="yaml"))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(as_dict, allow_val_change=True)
            else:
                logger.log_hyperparams({"config": as_dict})


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; nothing after the last good checkpoint was saved."""

    user_error = True


class FiniteLossGuard(Callback):
    """Stop at the first non-finite training loss, naming the step and batch, before anything is saved.

    The check costs one device-to-host copy of a scalar every ``check_every_n_steps`` steps (the default 1
    catches the exact batch; raise it on GPUs if that sync matters). Because the error is raised before
    the next checkpoint, the last checkpoint on disk is the last good state to resume from.

    Args:
        check_every_n_steps: how often to check the loss.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._batch_idx = -1

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        # before backward and the optimiser step: the weights are still the last good ones
        if trainer.global_step % self.check_every_n_steps or bool(torch.isfinite(loss.detach()).all()):
            return
        saved = [
            getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
            for cb in trainer.checkpoint_callbacks
        ]
        ckpt = next((p for p in saved if p), "none saved yet")
        raise NonFiniteLossError(
            f"training loss is {loss.item()} at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, "
            f"batch {self._batch_idx}). Stopped before the update and before saving; last good checkpoint: "
            f"{ckpt}. Usual fixes: lower the learning rate or add warm-up, use bf16 instead of fp16, "
            "check the inputs of that batch."
        )


class RNGStateCallback(Callback):
    """Save and restore the Python, NumPy and torch RNG states with every checkpoint.

    Lightning does not checkpoint RNG states, so a resumed run would shuffle and augment differently from an
    uninterrupted one. With this callback, resuming from an epoch-boundary checkpoint reproduces the
    uninterrupted run exactly on CPU (deterministic kernels, ``num_workers: 0`` or seeded workers).
    The states are stored as tensors and ints, so checkpoints still load with ``weights_only=True``.
    """

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        state = {
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "numpy_has_gauss": int(np_state[3]),
            "numpy_gauss": float(np_state[4]),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        random.setstate(
            (state_dict["python_version"], tuple(state_dict["python"]), state_dict["python_gauss"])
        )
        np.random.set_state(
            (
                "MT19937",
                state_dict["numpy_keys"].numpy().astype(np.uint32),
                state_dict["numpy_pos"],
                state_dict["numpy_has_gauss"],
                state_dict["numpy_gauss"],
            )
        )
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
