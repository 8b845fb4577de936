"""Every experiments/*.yaml: parsed, its model and datamodule built; short fits on official-layout fixtures.

Default suite: every file is parsed and instantiated (the model on the meta device, so even FFT-Large costs
nothing), and one or two training steps run at 64x64 for one file per model family and one per datamodule.
``make test-slow`` runs the short fit for every file.
"""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import main as cli
from tests.dataset_fixtures import build_dataset_fixture

EXPERIMENTS = sorted(p for p in (cli.ROOT / "experiments").glob("*.yaml") if p.name != "base.yaml")
SMOKE = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _family(path: Path) -> str:
    """Model family of an experiment: the backbone name's leading letters (acanet, fft, vgg, resnet, ...)."""
    backbone = _raw(path).get("model", {}).get("init_args", {}).get("backbone", "resnet18")
    return re.match(r"[a-z]*", backbone).group(0)


# the cheapest representative where a family's first file is a heavy model (FFT-Base: 271 M parameters)
PREFERRED = {"fft": "fft_tiny_cifar10.yaml", "vgg": "vgg16_cub_mcloss.yaml"}


def _data_class(path: Path) -> str:
    return _raw(path).get("data", {}).get("class_path", "")


def _default_smoke_set() -> set[str]:
    """The first file of each model family, plus the first file of each datamodule not yet covered."""
    chosen: dict[str, Path] = {fam: cli.ROOT / "experiments" / name for fam, name in PREFERRED.items()}
    for path in EXPERIMENTS:
        chosen.setdefault(_family(path), path)
    covered = {_data_class(p) for p in chosen.values()}
    for path in EXPERIMENTS:
        if _data_class(path) not in covered:
            chosen[path.name] = path
            covered.add(_data_class(path))
    return {p.name for p in chosen.values()}


DEFAULT_SMOKE = _default_smoke_set()


def test_there_is_an_experiment_per_paper():
    names = {p.name for p in EXPERIMENTS}
    assert {"quickstart.yaml", "acanet_cub.yaml"} <= names
    for prefix in ("acanet18_", "msfca50", "fft_", "csnet101", "tokenfusion_"):
        assert any(n.startswith(prefix) for n in names), prefix


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_parses_and_instantiates(path: Path):
    with torch.device("meta"):
        built = cli.cli_main(args=["--config", str(path), *SMOKE], run=False)
    assert built.datamodule.num_classes >= 2
    head = built.model.backbone.get_classifier()
    out_features = getattr(head, "out_features", getattr(head, "out_channels", None))
    if out_features is not None and not _raw(path).get("model", {}).get("init_args", {}).get("loss"):
        assert out_features == built.datamodule.num_classes  # data.num_classes is linked into the model
    dumped = yaml.safe_load(built.parser.dump(built.config, skip_none=False))  # what --print_config prints
    assert dumped["model"]["class_path"] == "lightning_modules.ClassificationTask"


def test_print_config_flag_works(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(cli.ROOT / "main.py"),
            "fit",
            "--config",
            str(cli.ROOT / "experiments" / "acanet_cub.yaml"),
            "--print_config",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = yaml.safe_load(proc.stdout)
    assert printed["model"]["init_args"]["backbone"].startswith("acanet18")
    assert printed["trainer"]["callbacks"]  # base.yaml defaults are merged in


def smoke_fit(path: Path, tmp_path: Path) -> None:
    overrides = build_dataset_fixture(_data_class(path), tmp_path / "data")
    args = [
        "fit",
        "--config",
        str(path),
        *SMOKE,
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.fast_dev_run",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--trainer.num_nodes",
        "1",
        "--trainer.precision",
        "32-true",
        "--trainer.sync_batchnorm",
        "false",
        "--test_after_fit",
        "false",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.image_size",
        "64",
        "--data.init_args.resize_size",
        "64",
    ]
    backbone_kwargs = _raw(path).get("model", {}).get("init_args", {}).get("backbone_kwargs") or {}
    if "img_size" in backbone_kwargs:  # fixed-size ViT-style baselines: build them for the smoke size
        args += ["--model.init_args.backbone_kwargs", json.dumps({**backbone_kwargs, "img_size": 64})]
    for key, value in overrides.items():
        args += [f"--data.init_args.{key}", "null" if value is None else str(value)]
    built = cli.cli_main(args=args)
    finished = built.trainer.state.finished
    loss = built.trainer.callback_metrics.get("train/loss")
    # model <-> trainer reference cycles keep the weights, gradients and optimiser state (several GB for
    # FFT-Large) alive until a full collection: free them before the next file's fit
    del built
    gc.collect()
    assert finished, f"{path.name} did not finish"
    assert loss is not None and torch.isfinite(loss), f"{path.name}: train/loss {loss}"


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.name in DEFAULT_SMOKE], ids=lambda p: p.stem)
def test_smoke_fit_one_per_family_and_datamodule(path: Path, tmp_path: Path):
    smoke_fit(path, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [p for p in EXPERIMENTS if p.name not in DEFAULT_SMOKE], ids=lambda p: p.stem
)
def test_smoke_fit_every_experiment(path: Path, tmp_path: Path):
    smoke_fit(path, tmp_path)
