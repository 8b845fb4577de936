"""The project's command line (``python main.py {fit,validate,test,predict} --config experiments/<file>.yaml``).

A thin LightningCLI; ``main.py`` only calls :func:`main`. ``experiments/base.yaml`` (trainer defaults: checkpointing, loggers, seed) is always
loaded first; experiment files override it. What this file adds to plain LightningCLI:

* ``data.num_classes`` is linked into ``model.init_args.num_classes``;
* every run gets a folder ``<trainer.default_root_dir>/<experiment name>/`` (the name is the last
  ``--config`` file's stem unless ``--name`` is given) holding ``config.yaml``, ``checkpoints/`` and the
  logger files, so ``--ckpt_path last`` resumes the experiment and its W&B run id;
* W&B runs offline when no W&B account is configured (``wandb sync`` uploads them later);
* ``sync_batchnorm`` is switched off on CPU (it needs GPUs);
* ``--test_after_fit true`` tests the best checkpoint in the same process (and the same W&B run);
* errors in the user's input (missing dataset, unknown model, bad checkpoint) print one message.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_modules.callbacks import LoggerSaveConfigCallback

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "experiments" / "base.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
log = logging.getLogger("paperbench.cli")


def wandb_has_credentials() -> bool:
    """True when an API key is configured (env, netrc or wandb settings), i.e. online logging can work."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text() or "wandb" in netrc.read_text()
    except OSError:
        return False


class PaperCLI(LightningCLI):
    """LightningCLI with the project's conventions (see the module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--name", type=str | None, default=None, help="Run folder name (default: config stem)."
        )
        parser.add_argument(
            "--test_after_fit", type=bool, default=False, help="After fit, run test on the best checkpoint."
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit"):
            has_best = (
                self.trainer.checkpoint_callback is not None
                and self.trainer.checkpoint_callback.best_model_path
            )
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        name = cfg.get("name") or experiment_name(cfg)
        root = Path(cfg.trainer.default_root_dir or "runs")
        run_dir = root / name
        cfg.trainer.default_root_dir = str(run_dir)
        resuming = bool(cfg.get("ckpt_path")) or has_hpc_checkpoint(run_dir)
        if self.subcommand == "fit" and not cfg.get("ckpt_path") and has_hpc_checkpoint(run_dir):
            # a pre-emption checkpoint (SLURM requeue, SIGTERM; lightning_modules/signals.py): resume from it
            cfg.ckpt_path = "hpc"
            print(f"resuming from the pre-emption checkpoint in {run_dir} (hpc_ckpt_*.ckpt)", file=sys.stderr)
        configure_loggers(cfg, run_dir, name, resuming=resuming)
        configure_checkpoints(cfg, run_dir)
        if cfg.trainer.get("fast_dev_run"):
            # a smoke run: keep no checkpoints (Lightning would still write last.ckpt) and never block on them
            cfg.trainer.callbacks = [
                cb
                for cb in cfg.trainer.get("callbacks") or []
                if not str(cb.get("class_path", "")).endswith("ModelCheckpoint")
            ]
        elif self.subcommand == "fit":
            refuse_to_overwrite(cfg, run_dir)
        if cfg.trainer.get("sync_batchnorm") and not _cuda_requested(cfg):
            log.warning("sync_batchnorm needs GPUs; disabled for this CPU run")
            cfg.trainer.sync_batchnorm = False


def experiment_name(cfg) -> str:
    """Stem of the last ``--config`` file that is not base.yaml."""
    paths = [Path(str(p)) for p in (cfg.get("config") or [])]
    paths = [p for p in paths if p.resolve() != BASE_CONFIG]
    return paths[-1].stem if paths else "default"


def _iter_logger_cfgs(cfg):
    loggers = cfg.trainer.get("logger")
    if loggers is None or isinstance(loggers, bool):
        return []
    return loggers if isinstance(loggers, list) else [loggers]


def configure_loggers(cfg, run_dir: Path, name: str, resuming: bool) -> None:
    """Put logger files under the run folder; W&B offline without credentials; W&B id kept for resume."""
    for lg in _iter_logger_cfgs(cfg):
        class_path = str(lg.get("class_path", ""))
        args = lg.init_args
        if args.get("save_dir") in (None, "", "."):
            args.save_dir = str(run_dir)
        if class_path.endswith("WandbLogger"):
            args.name = args.get("name") or name
            mode = os.environ.get("WANDB_MODE")
            if not args.get("offline") and mode is None and not wandb_has_credentials():
                args.offline = True
                print(
                    "W&B: no account configured (wandb login / WANDB_API_KEY): logging offline.",
                    file=sys.stderr,
                )
            if args.get("offline") or mode in ("offline", "dryrun"):
                print(
                    f"W&B: offline run under {run_dir}/wandb; upload it later with: "
                    f"wandb sync {run_dir}/wandb/offline-run-*",
                    file=sys.stderr,
                )
            if args.get("id") is None:
                args.id = wandb_run_id(run_dir, resuming)
                args.resume = "allow"
        elif class_path.endswith(("CSVLogger", "TensorBoardLogger")):
            if args.get("name") in (None, "lightning_logs"):
                args.name = "logs"


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The run's W&B id: reused from ``run_dir/wandb_id`` when resuming, new otherwise."""
    id_file = run_dir / "wandb_id"
    if resuming and id_file.is_file():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    return run_id


def configure_checkpoints(cfg, run_dir: Path) -> None:
    """Checkpoints in ``run_dir/checkpoints`` (so ``--ckpt_path last`` finds them); no LR monitor without a logger."""
    if cfg.trainer.get("logger") in (False, None) and cfg.trainer.get("callbacks"):
        cfg.trainer.callbacks = [
            cb
            for cb in cfg.trainer.callbacks
            if not str(cb.get("class_path", "")).endswith("LearningRateMonitor")
        ]
    for cb in cfg.trainer.get("callbacks") or []:
        if str(cb.get("class_path", "")).endswith("ModelCheckpoint") and cb.init_args.get("dirpath") is None:
            cb.init_args.dirpath = str(run_dir / "checkpoints")


def has_hpc_checkpoint(run_dir: Path) -> bool:
    """A SLURM pre-emption checkpoint (written by Lightning on SIGUSR1, resumed automatically on requeue)."""
    return any(run_dir.glob("hpc_ckpt_*.ckpt"))


def refuse_to_overwrite(cfg, run_dir: Path) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if not cfg.get("ckpt_path") and last.exists() and not has_hpc_checkpoint(run_dir):
        raise RunExistsError(
            f"{run_dir} already holds a run ({last}). Resume it with `--ckpt_path last`, or start a new run "
            f"with `--name <new name>` (or `--trainer.default_root_dir <other folder>`); nothing was overwritten."
        )


class RunExistsError(FileExistsError):
    user_error = True


def _cuda_requested(cfg) -> bool:
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    if accelerator in {"cpu", "mps"}:
        return False
    import torch

    return torch.cuda.is_available()


def find_user_error(err: BaseException) -> BaseException | None:
    """The error raised for bad input (``user_error = True``), even when wrapped by jsonargparse/Lightning."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if getattr(err, "user_error", False):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def cli_main(args: list[str] | None = None, run: bool = True) -> PaperCLI:
    """Build (and by default run) the CLI; used by :func:`main` and the tests."""
    return PaperCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={cmd: {"default_config_files": [str(BASE_CONFIG)]} for cmd in SUBCOMMANDS}
        if run
        else {"default_config_files": [str(BASE_CONFIG)]},
        args=args,
        run=run,
    )


def main() -> None:
    try:
        cli_main()
    except Exception as err:  # noqa: BLE001
        user_err = find_user_error(err)
        if user_err is None or os.environ.get("PAPERBENCH_TRACEBACK"):
            raise
        print(f"error: {user_err}", file=sys.stderr)
        print("(set PAPERBENCH_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)
