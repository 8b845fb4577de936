"""The command line: ``python main.py {fit,validate,test,predict} --config experiments/<file>.yaml``.

A thin LightningCLI; ``main.py`` only calls :func:`main`. ``experiments/base.yaml`` (trainer defaults:
checkpointing, loggers, seed) is always loaded first; experiment files override it. What this file adds:

* ``data.num_classes`` is linked into ``model.init_args.num_classes``;
* every run gets a folder ``<trainer.default_root_dir>/<name>/seed<N>/`` (the last ``--config`` file's
  stem unless ``--name`` is given, and the resolved ``seed_everything``; the layout is in
  :mod:`lightning_modules.run_folder`): ``fit`` writes its ``config.yaml``, checkpoints and logger files
  there under a run lock; each evaluation gets its own record ``eval/<subcommand>-<checkpoint>/``;
* a row file's ``row:`` block (paper, tables, label, dataset, published figures; ``--row``,
  :mod:`lightning_modules.row_info`) names the W&B group, tags and ``paper.*`` config of the run;
* ``--ckpt_path`` (``last``, ``best`` or a file) is resolved and read before anything is built: a missing or
  unreadable checkpoint, or one of another architecture than the configured model, is one error;
* W&B runs offline when no W&B account is configured (``wandb sync`` uploads them later); a fit is one W&B
  run (its id kept for resumes), every evaluation its own (see :func:`configure_loggers`);
* ``sync_batchnorm`` is switched off on CPU (it needs GPUs);
* ``--test_after_fit true`` tests the best and the last checkpoint in the same process and W&B run
  (``test/best/*``, ``test/last/*``); ``predict`` writes ``predictions.csv`` (``--predict_dir``: any folder);
* errors in the user's input (a mistyped key, a missing dataset, an unknown model, a bad checkpoint, an input
  size the model cannot take) print one message.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_modules.callbacks import LoggerSaveConfigCallback
from lightning_modules.config_compose import expand_config_args
from lightning_modules.prediction_writer import CSVPredictionWriter
from lightning_modules.row_info import RowInfo, wandb_metadata
from lightning_modules.run_folder import (
    EVAL_DIR,
    RunLock,
    eval_record_dir,
    is_run_folder,
    is_seed_folder,
    read_checkpoint,
    resolve_ckpt_path,
    resolve_seed,
    run_dir_of_checkpoint,
    seed_folder,
)
from lightning_modules.task import CheckpointMismatchError

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "experiments" / "base.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
log = logging.getLogger("paperbench.cli")
#: model arguments a checkpoint's weights depend on: a ``--ckpt_path`` whose values differ is refused
ARCHITECTURE_KEYS = ("backbone", "backbone_kwargs", "ema_decay")
#: an evaluation's record folder, passed from the launching process to its DDP workers
RECORD_DIR_ENV = "PAPERBENCH_RECORD_DIR"


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock: RunLock | None = None
        try:
            super().__init__(*args, **kwargs)
        finally:  # the run folder is free again once the command is over (or failed)
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            if "LOCAL_RANK" not in os.environ:  # set for this command's DDP workers only
                os.environ.pop(RECORD_DIR_ENV, None)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # experiment files name their bases in `_base_` (expanded before parsing: config_compose); the key
        # itself is accepted and never printed or saved (help=SUPPRESS leaves it out of every dump)
        parser.add_argument("--_base_", type=str | list[str] | None, default=None, help=argparse.SUPPRESS)
        parser.add_argument(
            "--name", type=str | None, default=None, help="Run folder name (default: config stem)."
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the last and the best-validation checkpoints (test/last/*, test/best/*).",
        )
        parser.add_argument(
            "--predict_dir",
            type=str | None,
            default=None,
            help="predict: the images under this folder (recursively) instead of the test split.",
        )
        parser.add_argument("--predict_top_k", type=int, default=5, help="predict: classes per CSV row.")
        parser.add_argument(
            "--row",
            type=RowInfo | None,
            default=None,
            help="The run's place in its paper (paper, tables, label, dataset, variant, published figures); "
            "declared once in each row file, sent to every logger (lightning_modules/row_info.py).",
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    # ------------------------------------------------------------------ parsing
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; a mistyped key or a wrong value type is one :class:`ConfigKeyError`, not a usage dump."""
        for p in _all_parsers(parser):
            p.exit_on_error = False
        if args is None or isinstance(args, (list, tuple)):  # experiment files' `_base_` files first
            args = expand_config_args(sys.argv[1:] if args is None else args)
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
        printing = argv is not None and any(str(a).split("=")[0] == "--print_config" for a in argv)
        if printing:  # parse without it, then print the config with the folders this command will use
            args = [a for a in argv if str(a).split("=")[0] != "--print_config"]
        try:
            with warnings.catch_warnings():
                # the command line's own arguments, `_base_` files expanded: not the mix Lightning warns about
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise config_key_error(parser, err, argv) from None
        if printing:
            print_config_with_paths(parser, self.config)
            raise SystemExit(0)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path`` (``last``/``best``/a file) now; refuse a missing or unreadable one.

        Lightning would merge the checkpoint's hyper-parameters over the command line here. This CLI keeps
        what the user asked for where it can be applied (evaluation metrics, loss and optimiser settings) and
        refuses, naming the keys, a model the checkpoint cannot be loaded into. Only when no model is
        configured at all are the checkpoint's hyper-parameters used (Lightning's behaviour).
        """
        subcommand = self.config.get("subcommand")
        # the seed first: it names the run folder (<name>/seed<N>/) that `last`/`best` are looked up in
        where = self.config[subcommand] if subcommand else self.config
        where.seed_everything = resolve_seed(where.get("seed_everything"))
        if not subcommand:
            return
        cfg = self.config[subcommand]
        run_dir = run_location(cfg)[2]
        ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir, subcommand)
        if subcommand == "fit" and cfg.get("ckpt_path") == "last" and has_hpc_checkpoint(run_dir):
            ckpt = "hpc"  # a pre-emption checkpoint is newer than last.ckpt
        cfg.ckpt_path = ckpt
        if not ckpt or ckpt == "hpc":
            return
        hparams = dict(read_checkpoint(ckpt).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        model = cfg.get("model")
        if model is None or not model.get("class_path"):
            super()._parse_ckpt_path()
            return
        refuse_checkpoint_conflicts(model, hparams, ckpt)

    # ------------------------------------------------------------------ the run folder
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        as_given = cfg.clone()  # what config.yaml records: not the folders and ids filled in below
        root, name, run_dir = run_location(cfg)
        smoke = bool(cfg.trainer.get("fast_dev_run"))
        fitting = self.subcommand == "fit"
        if fitting and not smoke and not cfg.get("ckpt_path") and has_hpc_checkpoint(run_dir):
            # a pre-emption checkpoint (SLURM requeue, SIGTERM; lightning_modules/signals.py): resume from it
            cfg.ckpt_path = "hpc"
            print(f"resuming from the pre-emption checkpoint in {run_dir} (hpc_ckpt_*.ckpt)", file=sys.stderr)
        if self.subcommand in (None, "fit"):
            record_dir = run_dir
        else:  # an evaluation is recorded in the run folder of its checkpoint (or of an explicit --name),
            # in a new eval/ record, never over the fit's files
            if not cfg.get("name"):
                run_dir = run_dir_of_checkpoint(cfg.get("ckpt_path")) or run_dir
            record_dir = _same_on_all_ranks(
                lambda: eval_record_dir(run_dir, self.subcommand, cfg.get("ckpt_path"))
            )
        cfg.trainer.default_root_dir = str(run_dir)
        resuming = bool(cfg.get("ckpt_path"))
        if smoke:
            # a smoke run: keep no checkpoints (Lightning would still write last.ckpt), write no record
            cfg.trainer.callbacks = [
                cb
                for cb in cfg.trainer.get("callbacks") or []
                if not str(cb.get("class_path", "")).endswith("ModelCheckpoint")
            ]
        elif fitting:
            refuse_to_overwrite(cfg, run_dir)
            if _is_launching_process():
                self._lock = RunLock(run_dir)
                self._lock.acquire()
        new_wandb_id = configure_loggers(
            cfg, record_dir, name, resuming=resuming, subcommand=self.subcommand or "fit", smoke=smoke
        )
        configure_checkpoints(cfg, run_dir)
        for cb in cfg.trainer.get("callbacks") or []:
            if str(cb.get("class_path", "")).endswith("TestAnalysis") and not cb.init_args.get("output_dir"):
                cb.init_args.output_dir = str(record_dir if not fitting else run_dir / EVAL_DIR / "test")
        if cfg.trainer.get("sync_batchnorm") and not _cuda_requested(cfg):
            log.warning("sync_batchnorm needs GPUs; disabled for this CPU run")
            cfg.trainer.sync_batchnorm = False
        self.run_dir, self.record_dir = run_dir, record_dir
        self.save_config_kwargs = {
            **self.save_config_kwargs,
            "overwrite": True,
            "record_dir": None if smoke else str(record_dir),
            "run_root": str(root),
            "run_name": name,
            "wandb_id": new_wandb_id,
            "config_to_save": as_given,
        }

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.subcommand is None:
            return
        check_input_size(self.model, self.datamodule)
        size = getattr(self.datamodule, "image_size", None)
        if isinstance(size, int) and getattr(self.model, "example_input_array", None) is None:
            # the model summary then reports real FLOPs (one forward of one image at fit start)
            self.model.example_input_array = torch.zeros(1, 3, size, size)

    # ------------------------------------------------------------------ subcommands
    def after_fit(self) -> None:
        if not self.config.fit.get("test_after_fit") or self.trainer.interrupted:
            return
        for tag, ckpt in checkpoints_to_test(self.trainer):
            analysis = [cb for cb in self.trainer.callbacks if type(cb).__name__ == "TestAnalysis"]
            for cb in analysis:
                cb.output_dir = str(self.run_dir / EVAL_DIR / f"test-{tag}")
                cb.prefix = f"test/{tag}"
            self.model.test_key_prefix = f"test/{tag}"
            try:
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
            finally:
                self.model.test_key_prefix = "test"

    def predict(
        self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **kwargs: Any
    ) -> None:
        """Write ``predictions.csv`` (top-k classes: names and probabilities) into the evaluation record."""
        cfg = self.config.predict
        kwargs.pop("dataloaders", None)
        kwargs["return_predictions"] = False
        names = getattr(datamodule, "class_names", None)
        if cfg.get("predict_dir"):
            loader, paths = folder_loader(cfg.predict_dir, datamodule)
            labels, split = None, "predict_dir"
            run = {"dataloaders": loader}
        else:
            datamodule.setup("predict")
            dataset = datamodule.test_set
            samples = getattr(dataset, "samples", None)
            paths = [p for p, _ in samples] if samples is not None else None
            labels = getattr(dataset, "targets", None)
            split, run = "test", {"datamodule": datamodule}
            names = getattr(datamodule, "class_names", None) or names
        writer = CSVPredictionWriter(
            self.record_dir, cfg.get("predict_top_k") or 5, names, paths, labels, split_name=split
        )
        self.trainer.callbacks.append(writer)
        self.trainer.predict(model, ckpt_path=ckpt_path, **run, **kwargs)
        if self.trainer.is_global_zero:
            print(f"predictions: {writer.file}", file=sys.stderr)


def print_config_with_paths(parser: Any, config: Any) -> None:
    """``--print_config``: the resolved config, headed by the run folder and the logger paths it will use."""
    subcommand = config.get("subcommand")
    cfg = config[subcommand].clone() if subcommand else config.clone()
    root, name, run_dir = run_location(cfg)
    ckpt = cfg.get("ckpt_path")
    lines = [f"# run folder: {run_dir}", f"# checkpoints: {run_dir / 'checkpoints'}"]
    record = run_dir
    if subcommand not in (None, "fit"):
        try:
            ckpt = resolve_ckpt_path(ckpt, run_dir, subcommand)
        except FileNotFoundError as err:
            lines.append(f"# --ckpt_path: {err}")
            ckpt = None
        if not cfg.get("name"):
            run_dir = run_dir_of_checkpoint(ckpt) or run_dir
        record = eval_record_dir(run_dir, subcommand, ckpt)
        lines.append(f"# this {subcommand}'s record: {record}")
    cfg.trainer.default_root_dir = str(run_dir)
    kinds = [str(lg.get("class_path", "")).rsplit(".", 1)[-1] for lg in _iter_logger_cfgs(cfg)]
    configure_loggers(cfg, record, name, resuming=bool(ckpt), subcommand=subcommand or "fit")
    for kind, lg in zip(kinds, _iter_logger_cfgs(cfg)):
        args = lg.init_args
        if kind == "WandbLogger":
            where = Path(args.save_dir) / "wandb"
        elif kind == "CSVLogger":
            where = Path(args.save_dir) / args.get("name", "logs") / "metrics.csv"
        else:
            where = Path(args.get("save_dir") or record)
        lines.append(f"# logger {kind}: {where}")
    sub_parser = parser._subcommands_action._name_parser_map[subcommand] if subcommand else parser
    cfg.trainer.default_root_dir, cfg.name = str(root), name
    print("\n".join(lines))
    print(sub_parser.dump(cfg, skip_none=False))


def _all_parsers(parser: Any) -> list[Any]:
    found, todo = [], [parser]
    while todo:
        p = todo.pop()
        found.append(p)
        action = getattr(p, "_subcommands_action", None)
        if action is not None:
            todo.extend(action._name_parser_map.values())
    return found


def _is_launching_process() -> bool:
    """Rank 0 of node 0, or the process that starts the DDP workers (they set LOCAL_RANK themselves).

    Under ``srun`` every rank is started by SLURM (no LOCAL_RANK yet): only SLURM_PROCID 0 is rank 0.
    """
    return all(int(os.environ.get(var, 0)) == 0 for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _same_on_all_ranks(make_dir: Any) -> Path:
    """The evaluation's record folder, chosen once by the launching process and inherited by DDP workers."""
    if "LOCAL_RANK" in os.environ and os.environ.get(RECORD_DIR_ENV):
        return Path(os.environ[RECORD_DIR_ENV])
    folder = make_dir()
    if "LOCAL_RANK" not in os.environ:
        os.environ[RECORD_DIR_ENV] = str(folder)  # Lightning's DDP launcher copies the environment
    return folder


def run_location(cfg) -> tuple[Path, str, Path]:
    """``(root, name, run folder)``: the run folder is ``<root>/<name>/seed<N>/`` (N: ``seed_everything``).

    ``--config runs/X/seed42/config.yaml`` of a run means that run again (the saved file holds its name,
    root and seed); the ``config.yaml`` of a run folder of the layout before seeds (``runs/X/``) means
    that folder.
    """
    root = Path(cfg.trainer.default_root_dir or "runs")
    name = cfg.get("name")
    configs = [Path(str(p)) for p in (cfg.get("config") or [])]
    saved = configs[-1].resolve().parent if configs and configs[-1].name == "config.yaml" else None
    if saved is not None and is_run_folder(saved) and not is_seed_folder(saved.name):
        if name in (None, saved.name):  # a run of the one-level layout: that folder, never one below it
            return saved.parent, saved.name, saved
    if not name:
        if saved is not None and is_run_folder(saved):
            name = saved.parent.name  # the config.yaml of a run (saved before runs stored their name)
        else:
            name = experiment_name(cfg)
    if is_seed_folder(root.name) and (root / "config.yaml").is_file():  # never nest: runs/X/seed1/X/seed1
        root = root.parent.parent
    elif root.name == name and (root / "config.yaml").is_file():  # nor runs/X/X
        root = root.parent
    return root, name, root / name / seed_folder(cfg.get("seed_everything"))


def run_label(name: str, run_dir: Path) -> str:
    """The run's name with its seed (``resnet18_cub_ce-seed42``): the W&B run name."""
    return f"{name}-{run_dir.name}" if is_seed_folder(run_dir.name) else name


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


def configure_loggers(
    cfg, save_dir: Path, name: str, resuming: bool, subcommand: str = "fit", smoke: bool = False
) -> str | None:
    """Logger files under ``save_dir`` (the run folder, or an evaluation's record); W&B identity by rule.

    W&B rule: a ``fit`` is one W&B run, its id kept in ``<run>/wandb_id`` and reused by ``--ckpt_path``
    resumes (``test_after_fit`` logs into it too). Every ``test``/``validate``/``predict`` is its own W&B run
    (a new id, files in its record folder), so the fit's id is never shared by several offline folders.
    A refused command and ``fast_dev_run`` write no id. Returns a new fit id, for the caller to write into
    ``<run>/wandb_id`` once the fit starts.

    W&B identity from the ``row:`` block (:func:`lightning_modules.row_info.wandb_metadata`): ``group``
    ``<paper>/table<N>``, ``tags`` (paper, dataset, tables, loss, variant), ``config.paper.<metric>`` (the
    published figures) and ``config.row``; ``job_type`` = the subcommand; the run name carries the seed
    (``<name>-seed42``, an evaluation ``<name>-seed42/<record>``). Evaluations join their row's group too
    (``job_type`` tells them from the fits); a run without a row groups its evaluations under its name.
    What the user sets in ``dict_kwargs`` (group, tags, job_type, entity, config keys) or ``name`` wins.
    Under a W&B sweep agent (``WANDB_SWEEP_ID`` set) a fit takes the agent's ``WANDB_RUN_ID``.
    """
    new_id = None
    run_dir = Path(cfg.trainer.default_root_dir)
    label = run_label(name, run_dir)
    meta = wandb_metadata(cfg.get("row"), cfg.get("model"))
    for lg in _iter_logger_cfgs(cfg):
        class_path = str(lg.get("class_path", ""))
        args = lg.init_args
        if args.get("save_dir") in (None, "", "."):
            args.save_dir = str(save_dir)
        if class_path.endswith("WandbLogger"):
            mode = os.environ.get("WANDB_MODE")
            if not args.get("offline") and mode is None and not wandb_has_credentials():
                args.offline = True
                print(
                    "W&B: no account configured (wandb login / WANDB_API_KEY): logging offline.",
                    file=sys.stderr,
                )
            if args.get("offline") or mode in ("offline", "dryrun"):
                print(
                    f"W&B: offline run under {save_dir}/wandb; upload it later with: "
                    f"wandb sync {save_dir}/wandb/offline-run-*",
                    file=sys.stderr,
                )
            extra = dict(lg.get("dict_kwargs") or {})
            if meta:
                extra.setdefault("group", meta["group"])
                extra.setdefault("tags", meta["tags"])
                extra["config"] = {**meta["config"], **dict(extra.get("config") or {})}
            extra.setdefault("job_type", subcommand)
            if subcommand == "fit":
                args.name = args.get("name") or label
                if args.get("id") is None:
                    # under a W&B sweep agent the run must be the one the agent announced (WANDB_RUN_ID)
                    agent_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
                    args.id = agent_id or wandb_run_id(run_dir, resuming, write=False)
                    args.resume = "allow"
                    fresh = not (resuming and (run_dir / "wandb_id").is_file())
                    new_id = args.id if fresh and not smoke else None
            else:
                args.name = args.get("name") or f"{label}/{save_dir.name}"
                extra.setdefault("group", name)
            lg.dict_kwargs = extra
        elif class_path.endswith(("CSVLogger", "TensorBoardLogger")):
            if args.get("name") in (None, "lightning_logs"):
                args.name = "logs"
            if class_path == "lightning.pytorch.loggers.CSVLogger":
                # same arguments; no version_N folders, and a resume continues the same metrics.csv
                lg.class_path = "lightning_modules.loggers.RunCSVLogger"
                args.resume = resuming and subcommand == "fit"
    return new_id


def wandb_run_id(run_dir: Path, resuming: bool, write: bool = True) -> str:
    """The fit's W&B id: reused from ``run_dir/wandb_id`` when resuming, else new (written when ``write``)."""
    id_file = run_dir / "wandb_id"
    if resuming and id_file.is_file():
        return id_file.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if write and _is_launching_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    return run_id


def configure_checkpoints(cfg, run_dir: Path) -> None:
    """Checkpoints in ``run_dir/checkpoints`` (``--ckpt_path last`` finds them).

    The LR monitor is dropped when there is no logger.
    """
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
            "with `--name <new name>` (or `--trainer.default_root_dir <other folder>`); nothing was "
            "overwritten."
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


class InputSizeError(ValueError):
    """The model cannot take the datamodule's input size."""

    user_error = True


def check_input_size(model: Any, datamodule: Any) -> None:
    """Run the backbone once on one image of the configured size; a failure or NaN output is one message."""
    size = getattr(datamodule, "image_size", None)
    backbone = getattr(model, "backbone", None)
    if not isinstance(size, int) or backbone is None:
        return
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(x)
    except Exception as err:  # noqa: BLE001 - any failure here is the input size's
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise InputSizeError(
            f"model '{model.hparams.get('backbone', type(backbone).__name__)}' cannot take {size}x{size} "
            "inputs "
            f"({type(err).__name__}: {reason}). Set data.init_args.image_size to the model's input size (see "
            "the model's experiment YAML or timm's default_cfg['input_size'])."
        ) from None
    finally:
        backbone.train(was_training)
    if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
        raise InputSizeError(
            f"model '{model.hparams.get('backbone')}' gives non-finite outputs at {size}x{size} inputs (its "
            "feature maps shrink to nothing); use a larger data.init_args.image_size."
        )


def refuse_checkpoint_conflicts(model_cfg: Any, hparams: dict, ckpt: str) -> None:
    """Refuse a ``--ckpt_path`` whose architecture differs from the configured model, naming the keys."""

    def plain(value: Any) -> Any:
        if hasattr(value, "as_dict"):
            value = value.as_dict()
        return value if value not in ({}, None) else None

    args = model_cfg.get("init_args") or {}
    conflicts = []
    saved_class = hparams.get("_class_path")
    configured_class = str(model_cfg.get("class_path") or "")
    if saved_class and saved_class.rsplit(".", 1)[-1] != configured_class.rsplit(".", 1)[-1]:
        conflicts.append(f"model class {saved_class} (configured: {model_cfg.get('class_path')})")
    for key in ARCHITECTURE_KEYS:
        if key in hparams and plain(args.get(key)) != plain(hparams[key]):
            conflicts.append(f"{key}={hparams[key]!r} (configured: {plain(args.get(key))!r})")
    if conflicts:
        raise CheckpointMismatchError(
            f"--ckpt_path {ckpt} was trained with {'; '.join(conflicts)}. The checkpoint's weights only fit "
            "its own architecture: drop those arguments (or use the run's own config: --config "
            "<run>/config.yaml), "
            "or pass the file as model.init_args.pretrained to fine-tune."
        )


def checkpoints_to_test(trainer: Any) -> list[tuple[str, str | None]]:
    """``[("best", path), ("last", path)]`` after a fit; the in-memory weights stand in for a missing last."""
    last = best = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None):
            best = best or cb.best_model_path or None
        last_path = getattr(cb, "last_model_path", "") or (
            cb.best_model_path if getattr(cb, "monitor", None) is None else ""
        )
        last = last or last_path or None
    # best first: the last rows logged (and the logged ``epoch``) are then those of the latest epoch
    return ([("best", best)] if best else []) + [("last", last)]


def folder_loader(folder: str, datamodule: Any) -> tuple[Any, list[str]]:
    """A loader over every image under ``folder`` with the datamodule's evaluation transform."""
    from torch.utils.data import DataLoader

    from datamodules.base import ImageListDataset, list_images

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise PredictDirError(f"--predict_dir {folder}: no such folder")
    paths = list_images(root, "predict_dir")
    dataset = ImageListDataset([(p, 0) for p in paths], datamodule.eval_transform)
    batch = getattr(datamodule, "batch_size", 64)
    return DataLoader(dataset, batch_size=batch, num_workers=getattr(datamodule, "num_workers", 0)), paths


class PredictDirError(FileNotFoundError):
    user_error = True


class ConfigKeyError(ValueError):
    """A key of the configuration (YAML or command line) is unknown, or its value has the wrong type."""

    user_error = True


def _init_params(class_path: str) -> list[str]:
    """Constructor parameters of ``class_path`` and of its bases where it takes ``**kwargs``."""
    try:
        module, _, attr = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [
            p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _is_dataclass_path(class_path: str) -> bool:
    import dataclasses

    module, _, attr = class_path.rpartition(".")
    try:
        return dataclasses.is_dataclass(getattr(importlib.import_module(module), attr))
    except (ImportError, AttributeError, ValueError):
        return False


def _config_files(argv: Any) -> list[str]:
    argv = [str(a) for a in (argv or [])]
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return files


def _where(leaf: str, argv: Any) -> str:
    """``in <file>`` for the (last) config file that sets ``leaf``, else ``on the command line``."""
    for file in reversed(_config_files(argv)):
        try:
            text = Path(file).read_text()
        except OSError:
            continue
        if re.search(rf"(^|[\s{{,]){re.escape(leaf)}\s*:", text, re.MULTILINE):
            return f"in {file}"
    if any(leaf in str(a) for a in argv or []):
        return "on the command line"
    return "in the configuration"


def config_key_error(parser: Any, err: Exception, argv: Any) -> ConfigKeyError:
    """Turn jsonargparse's error (usage dump + nested Union errors) into one message naming the key."""
    msg = str(err)
    top = re.search(r'Parser key "([^"]+)"', msg)
    classes = re.findall(r"class_path '([^']+)'", msg)
    unknown = re.search(
        r"Option '([^']+)' is not accepted|No action for key \"([^\"]+)\"|Key \"([^\"]+)\" is not expected"
        r"|Unrecognized arguments: (\S+)",
        msg,
    )
    if unknown:
        leaf = next(g for g in unknown.groups() if g).lstrip("-")
        prefix = f"{top.group(1)}.init_args." if top and classes else ""
        if top and classes and _is_dataclass_path(classes[0]):  # a dataclass key (row:) has no init_args
            prefix = f"{top.group(1)}."
        if classes:
            valid = _init_params(classes[0])
            owner = f"arguments of {classes[0]}"
        else:
            valid = sorted({a.dest for p in _all_parsers(parser) for a in p._actions if a.dest})
            owner = "keys"
        short = leaf.split(".")[-1] if classes else leaf
        close = difflib.get_close_matches(short, valid, n=4, cutoff=0.5)
        hint = f" Did you mean: {', '.join(prefix + c for c in close)}?" if close else ""
        return ConfigKeyError(
            f"unknown key '{prefix}{leaf}' {_where(short.split('.')[-1], argv)}.{hint} Valid {owner}: "
            f"{', '.join(valid[:40])}{' ...' if len(valid) > 40 else ''}"
        )
    keys = re.findall(r'Parser key "([^"]+)"', msg)
    detail = [
        line.strip() for line in msg.splitlines() if line.strip().startswith(("Expected", "Given value"))
    ]
    if keys:
        key = keys[0] + (f".init_args.{keys[-1]}" if len(keys) > 1 and classes else "")
        leaf = keys[-1].split(".")[-1]
        why = "; ".join(dict.fromkeys(detail[:2])) or msg.strip().splitlines()[-1]
        return ConfigKeyError(f"wrong value for '{key}' {_where(leaf, argv)}: {why}")
    return ConfigKeyError(" ".join(msg.split())[:600])


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
    if sys.argv[1:2] == ["fit"]:  # SIGTERM / SLURM's SIGUSR1 from the first second on (see signals.py)
        from lightning_modules.signals import install_early_handlers

        install_early_handlers()
    try:
        cli_main()
    except Exception as err:  # noqa: BLE001
        user_err = find_user_error(err)
        if user_err is None or os.environ.get("PAPERBENCH_TRACEBACK"):
            raise
        print(f"error: {user_err}", file=sys.stderr)
        print("(set PAPERBENCH_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)
