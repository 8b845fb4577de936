"""Shared helpers of the analysis tools: build a network, load weights, read images, log to W&B.

A network comes from either

* one or more experiment YAML files (``--config experiments/base.yaml --config experiments/X.yaml``),
  parsed and instantiated by the project's CLI (:class:`lightning_modules.cli.PaperCLI`, so the same
  defaults, links and class resolution apply; the trainer is not built), or
* a timm model name (``--model resnet50``; every model of ``backbones/`` is registered in timm).

``--ckpt_path`` then loads a Lightning checkpoint of ``ClassificationTask`` (keys ``backbone.*``,
``loss.*``) or a plain state dict.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from lightning_modules.safe_load import safe_load

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = ROOT / "experiments"


class ToolError(RuntimeError):
    """A bad input of an analysis tool; the message names the thing and the fix."""


def run_main(main: Any, argv: Sequence[str] | None = None) -> int:
    """Run a tool's ``main(argv)``; a :class:`ToolError` or a user error (``user_error = True``, e.g. a
    missing predictions file) becomes one clear line and exit code 2."""
    try:
        main(argv)
    except Exception as err:
        if not (isinstance(err, ToolError) or getattr(err, "user_error", False)):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------------------------- args
def add_model_args(parser: argparse.ArgumentParser, *, data: bool = True) -> None:
    """Add the common ``--config/--model/--ckpt_path/--num-classes/--override`` arguments."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--config",
        action="append",
        default=[],
        help="experiment YAML (repeatable, later files override earlier ones); experiments/base.yaml is "
        "added first automatically when it exists and is not given",
    )
    group.add_argument("--model", help="a timm model name instead of --config (e.g. resnet50, acanet18)")
    group.add_argument(
        "--ckpt_path", "--ckpt-path", dest="ckpt_path", help="Lightning checkpoint or state dict"
    )
    group.add_argument("--num-classes", type=int, default=None, help="classes for --model (default 1000)")
    group.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra LightningCLI argument for --config, e.g. data.init_args.root=/data/CUB_200_2011",
    )
    if data:
        group.add_argument(
            "--image-folder",
            help="an ImageFolder directory (<dir>/<class>/<image>) to read images from instead of the "
            "YAML's datamodule",
        )
        group.add_argument(
            "--split", default="test", choices=["train", "val", "test"], help="datamodule split"
        )


# ---------------------------------------------------------------------------------------- networks
@dataclass
class Loaded:
    """A network ready for analysis.

    Attributes:
        network: the classifier to analyse (the task's ``backbone`` for a ClassificationTask).
        name: a label for tables and file names (experiment file stem or timm name).
        task: the LightningModule when built from a YAML, else ``None``.
        datamodule: the YAML's datamodule, else ``None``.
        image_size: the input size the experiment uses (``data.image_size``), else ``None``.
    """

    network: nn.Module
    name: str
    task: nn.Module | None = None
    datamodule: Any = None
    image_size: int | None = None


def backbone_of(module: nn.Module) -> nn.Module:
    """The classifier network inside a task (``task.backbone``), or the module itself."""
    backbone = getattr(module, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else module


def _analysis_cli_class() -> type:
    """The project's CLI, parsing and instantiating model + data only (no trainer, loggers or callbacks)."""
    from lightning_modules.cli import PaperCLI

    class _ModelDataOnly(PaperCLI):
        def before_instantiate_classes(self) -> None:
            """Skip the project's run-folder set-up (it writes run folders and W&B ids)."""

        def instantiate_classes(self) -> None:
            trainer_cfg = self.config.get("trainer")
            if trainer_cfg is not None:  # loggers/callbacks/plugins could open W&B runs or write folders
                for key, value in (("logger", False), ("callbacks", None), ("plugins", None)):
                    if key in trainer_cfg:
                        trainer_cfg[key] = value
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = self._get(self.config_init, "data")
            self.model = self._get(self.config_init, "model")
            self.trainer = None

    return _ModelDataOnly


def config_files(configs: Sequence[str | os.PathLike]) -> list[str]:
    """Check that every experiment file exists and return the paths as strings."""
    paths = [os.fspath(c) for c in configs]
    for path in paths:
        if not os.path.isfile(path):
            raise ToolError(f"experiment file '{path}' does not exist (run from the project root?)")
    return paths


def instantiate_from_config(
    configs: Sequence[str | os.PathLike], overrides: Sequence[str] = ()
) -> tuple[nn.Module, Any]:
    """Parse experiment YAML files the LightningCLI way and build ``(model, datamodule)``.

    ``experiments/base.yaml`` is loaded first (``default_config_files``, as ``main.py`` does); the
    trainer, its loggers and callbacks are not built, and no run folder is created.

    Args:
        configs: YAML files, later ones override earlier ones.
        overrides: extra ``key=value`` arguments (``data.init_args.root=/data``).

    Returns:
        The instantiated LightningModule and LightningDataModule (``None`` when the YAML has no data).
    """
    args: list[str] = []
    for path in config_files(configs):
        args += ["--config", path]
    for item in overrides:
        if "=" not in item:
            raise ToolError(
                f"--override '{item}' must look like key=value (e.g. data.init_args.batch_size=8)"
            )
        args.append(f"--{item.lstrip('-')}")
    base = EXPERIMENTS_DIR / "base.yaml"
    parser_kwargs = {"default_config_files": [os.fspath(base.resolve())]} if base.is_file() else {}
    cli_cls = _analysis_cli_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli = cli_cls(
                model_class=None,
                datamodule_class=None,
                save_config_callback=None,
                parser_kwargs=parser_kwargs,
                args=args,
                run=False,
            )
    except SystemExit as err:  # jsonargparse prints its own message first
        raise ToolError(f"could not parse {list(configs)} (see the message above)") from err
    return cli.model, cli.datamodule


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a Lightning checkpoint or a state dict and return its flat ``{name: tensor}`` state dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ToolError(f"checkpoint '{path}' does not exist")
    obj = safe_load(path, map_location="cpu")  # refuses a file that pickles code (UnsafeCheckpointError)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ToolError(f"'{path}' holds no state dict (expected a Lightning .ckpt or model.state_dict())")
    return obj


def load_weights(module: nn.Module, state: dict[str, Tensor], *, what: str) -> None:
    """Load ``state`` into ``module`` (strict=False) after mapping prefixes; fail if nothing matches."""
    own = module.state_dict()
    if not any(k in own for k in state):
        for prefix in ("backbone.", "model.", "module."):
            stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if any(k in own for k in stripped):
                state = stripped
                break
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ToolError(
            f"no tensor of {what} fits {type(module).__name__} (file keys like {list(state)[:3]}, model "
            f"keys like {list(own)[:3]}); is the checkpoint from another model or number of classes?"
        )
    module.load_state_dict(usable, strict=False)
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        warnings.warn(
            f"{len(missing)} tensors not in {what} keep their init values: {missing[:5]}", stacklevel=2
        )


def load_network(
    configs: Sequence[str] = (),
    model: str | None = None,
    ckpt_path: str | None = None,
    num_classes: int | None = None,
    overrides: Sequence[str] = (),
) -> Loaded:
    """Build the network to analyse from experiment YAMLs or a timm name and load a checkpoint.

    Args:
        configs: experiment YAML files (LightningCLI style).
        model: a timm model name, used when ``configs`` is empty.
        ckpt_path: optional checkpoint (Lightning ``.ckpt`` of the task, or a state dict).
        num_classes: classes of the timm model (ignored for configs: the datamodule sets it).
        overrides: extra CLI arguments for the YAML (``key=value``).

    Returns:
        A :class:`Loaded` with the network in eval mode.
    """
    if bool(configs) == bool(model):
        raise ToolError("give either --config experiments/X.yaml (repeatable) or --model <timm name>")
    if configs:
        task, datamodule = instantiate_from_config(configs, overrides)
        if ckpt_path:
            load_weights(task, read_checkpoint(ckpt_path), what=f"checkpoint '{ckpt_path}'")
        task.eval()
        network = backbone_of(task)
        image_size = _datamodule_attr(datamodule, "image_size")
        return Loaded(network.eval(), Path(configs[-1]).stem, task, datamodule, image_size)
    import timm

    import backbones  # noqa: F401 - registers the project's models in timm

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        network = timm.create_model(model, pretrained=False, **kwargs)
    except RuntimeError as err:
        raise ToolError(
            f"unknown model '{model}': {err}. List models with timm.list_models('*name*')."
        ) from None
    if ckpt_path:
        load_weights(network, read_checkpoint(ckpt_path), what=f"checkpoint '{ckpt_path}'")
    return Loaded(network.eval(), str(model))


def _datamodule_attr(datamodule: Any, name: str) -> Any:
    if datamodule is None:
        return None
    value = getattr(datamodule, name, None)
    if value is None and hasattr(datamodule, "hparams"):
        value = datamodule.hparams.get(name)
    return value


def normalization_of(datamodule: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` a datamodule normalises with (ImageNet statistics when it does not say)."""
    mean = _datamodule_attr(datamodule, "mean") or IMAGENET_DEFAULT_MEAN
    std = _datamodule_attr(datamodule, "std") or IMAGENET_DEFAULT_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# ------------------------------------------------------------------------------------------- images
def image_folder_loader(
    root: str, image_size: int, batch_size: int, mean: Sequence[float], std: Sequence[float]
):
    """A deterministic DataLoader over an ImageFolder directory (resize + centre crop + normalise)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    if not os.path.isdir(root):
        raise ToolError(f"--image-folder '{root}' is not a directory (expected <dir>/<class>/<image files>)")
    tf = transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = datasets.ImageFolder(root, transform=tf)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0), list(dataset.classes)


def datamodule_loader(datamodule: Any, split: str):
    """The ``split`` DataLoader of a datamodule (after ``prepare_data``/``setup``) and its class names."""
    if datamodule is None:
        raise ToolError("this command needs images: give --config with a datamodule, or --image-folder DIR")
    stage = {"train": "fit", "val": "validate", "test": "test"}[split]
    try:
        datamodule.prepare_data()
        datamodule.setup(stage)
        loader = getattr(datamodule, f"{split}_dataloader")()
    except (FileNotFoundError, OSError, RuntimeError) as err:
        raise ToolError(f"the datamodule could not load the {split} split: {err}") from None
    classes = _datamodule_attr(datamodule, "class_names") or _datamodule_attr(datamodule, "classes")
    if classes is None:
        dataset = getattr(loader, "dataset", None)
        classes = getattr(dataset, "classes", None)
    return loader, list(classes) if classes is not None else None


def iterate_images(loader: Any, limit: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` batches until ``limit`` images were produced."""
    seen = 0
    for batch in loader:
        images, labels = batch[0], batch[1]
        take = min(limit - seen, images.shape[0])
        yield images[:take], labels[:take]
        seen += take
        if seen >= limit:
            return


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``Normalize(mean, std)``: ``(B, 3, H, W)`` in ``[0, 1]``."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)


# --------------------------------------------------------------------------------------------- W&B
def wandb_run(project: str | None, name: str | None, job_type: str) -> Any:
    """Start a W&B run when ``project`` is given (offline unless WANDB_MODE says otherwise), else ``None``."""
    if not project:
        return None
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    return wandb.init(project=project, name=name, job_type=job_type, reinit="finish_previous")


def log_images(run: Any, images: dict[str, str | os.PathLike]) -> None:
    """Log PNG files to a W&B run (no-op when ``run`` is ``None``)."""
    if run is None:
        return
    import wandb

    run.log({key: wandb.Image(os.fspath(path)) for key, path in images.items()})
