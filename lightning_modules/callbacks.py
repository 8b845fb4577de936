"""Callbacks used by the CLI."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` in the run folder *and* send the full resolved config to every logger.

    W&B gets it as the run config (nested, so runs can be filtered and grouped by any key, e.g.
    ``model.init_args.backbone``); other loggers get it through ``log_hyperparams``. Runs on rank 0 only
    (no collectives here, as Lightning requires).
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        import yaml

        as_dict = yaml.safe_load(config)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(as_dict, allow_val_change=True)
            else:
                logger.log_hyperparams({"config": as_dict})
