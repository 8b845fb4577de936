"""End-to-end runs through main.py: the quickstart, W&B offline files, real 2-process DDP (gloo)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wandb_records import read_run

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")


def run_cli(*args: str, cwd: Path, timeout: int = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_quickstart_end_to_end_with_wandb_offline(tmp_path):
    """The `make demo` job, shortened to 2 epochs at 16 px: trains, tests the best and the last checkpoint,
    W&B files hold it all (the full demo's accuracy: test_quickstart_full_demo_reaches_high_accuracy)."""
    proc = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        "--trainer.max_epochs",
        "2",
        "--data.init_args.image_size",
        "16",
        "--trainer.enable_progress_bar",
        "false",
        cwd=tmp_path,
    )
    assert "wandb sync" in proc.stderr  # the user is told how to upload the offline run
    run_dir = tmp_path / "runs" / "quickstart" / "seed42"
    assert (run_dir / "config.yaml").is_file()
    assert any(p.name.startswith("best-epoch") for p in (run_dir / "checkpoints").iterdir())

    run_file = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    run = read_run(run_file)
    logged = {k: v for row in run["history"] for k, v in row.items()}
    # test_after_fit tests the best-validation and the last checkpoint, under distinct keys, in this W&B run
    tested = {f"test/{ckpt}/{m}" for ckpt in ("best", "last") for m in ("acc1", "f1", "kappa")}
    assert {"train/loss", "val/acc1", "val/acc1_best", *tested} <= set(logged)
    # 10 classes: chance is 0.1; two epochs of ResNet-18 on 16 px digits reach well above it
    assert logged["test/last/acc1"] > 0.3
    # the full resolved config, nested, is the W&B run config
    assert run["config"]["model"]["init_args"]["backbone"] == "resnet18"
    assert run["config"]["data"]["class_path"].endswith("DigitsDataModule")
    assert run["config"]["trainer"]["max_epochs"] == 2
    assert (run_dir / "wandb_id").read_text().strip() in run_file.name


@pytest.mark.slow  # CLI launches of 2 gloo processes; real DDP in the default suite: test_ddp_equivalence
def test_ddp_two_cpu_processes_gloo(tmp_path):
    """A real 2-process DDP fit on CPU (gloo) through the CLI, logging to CSV."""
    run_cli(
        "fit",
        "--config",
        QUICKSTART,
        "--name",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "4",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.image_size",
        "16",
        cwd=tmp_path,
    )
    # the project CSVLogger: no version_N; the run folder is <name>/seed<N>/
    metrics = tmp_path / "runs" / "ddp" / "seed42" / "logs" / "metrics.csv"
    rows = list(csv.DictReader(metrics.open()))
    assert any(r.get("val/acc1") for r in rows) and any(r.get("test/best/acc1") for r in rows)
    assert any(r.get("test/last/acc1") for r in rows)
    hparams = yaml_load(metrics.parent / "hparams.yaml")
    assert hparams["config"]["trainer"]["strategy"] == "ddp"


def yaml_load(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_quickstart_full_demo_reaches_high_accuracy(tmp_path):
    """The full `make demo` (8 epochs) as shipped."""
    run_cli("fit", "--config", QUICKSTART, "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    wandb_dir = tmp_path / "runs" / "quickstart" / "seed42" / "wandb"
    rows = read_run(next(wandb_dir.glob("offline-run-*/run-*.wandb")))
    logged = {k: v for row in rows["history"] for k, v in row.items()}
    assert logged["test/best/acc1"] > 0.9 and logged["test/last/acc1"] > 0.9


@pytest.mark.slow  # CLI launches of 2 gloo processes; real DDP in the default suite: test_ddp_equivalence
def test_ddp_evaluation_sees_every_sample_exactly_once(tmp_path):
    """2-process DDP test on an odd-sized split (359 images) gives the single-process metrics exactly.

    Lightning's default DistributedSampler would pad the second shard with a repeated sample; the datamodules
    shard evaluation data without repeats, and torchmetrics reduces across ranks.
    """
    common = [
        "--config",
        QUICKSTART,
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--data.init_args.image_size",
        "16",
        "--data.init_args.split_ratios",
        "[0.7, 0.1, 0.2]",
        "--data.init_args.batch_size",
        "32",
    ]
    run_cli(
        "fit",
        *common,
        "--name",
        "fit",
        "--trainer.max_steps",
        "3",
        "--test_after_fit",
        "false",
        "--trainer.limit_val_batches",
        "1",
        cwd=tmp_path,
    )
    ckpt = str(tmp_path / "runs" / "fit" / "seed42" / "checkpoints" / "last.ckpt")
    results = {}
    for name, devices, strategy in (("single", "1", "auto"), ("ddp", "2", "ddp")):
        run_cli(
            "test",
            *common,
            "--name",
            name,
            "--trainer.devices",
            devices,
            "--trainer.strategy",
            strategy,
            "--ckpt_path",
            ckpt,
            cwd=tmp_path,
        )
        record = tmp_path / "runs" / name / "seed42" / "eval" / "test-last"  # its own record
        metrics = record / "logs" / "metrics.csv"
        row = next(r for r in csv.DictReader(metrics.open()) if r.get("test/acc1"))
        results[name] = {k: float(v) for k, v in row.items() if k.startswith("test/") and v}
        predictions = next((tmp_path / "runs" / name).rglob("predictions.npz"))
        import numpy as np

        assert len(np.load(predictions)["labels"]) == 359
    assert results["single"].keys() == results["ddp"].keys()
    for key, value in results["single"].items():
        assert results["ddp"][key] == pytest.approx(value, abs=1e-5), key


def test_real_cifar10_images_loss_goes_down(tmp_path, shared_data):
    """Real CIFAR-10 JPEGs (../shared/data/cifar10-mini.zip, 2,000 photos) through the CLI and the folder
    module (zip root, seeded stratified 80/10/10 split): the training loss falls and accuracy beats chance."""
    run_cli(
        "fit",
        "--config",
        QUICKSTART,
        "--name",
        "cifar",
        "--trainer.max_epochs",
        "3",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "5",
        "--model.init_args.backbone",
        "resnet10t",
        "--data",
        "datamodules.ImageFolderDataModule",
        "--data.init_args.root",
        str(shared_data / "cifar10-mini.zip"),
        "--data.init_args.split",
        "ratio",
        "--data.init_args.split_ratios",
        "[0.8, 0.1, 0.1]",
        "--data.init_args.image_size",
        "32",
        "--data.init_args.resize_size",
        "32",
        "--data.init_args.train_crop",
        "random",
        "--data.init_args.crop_padding",
        "4",
        "--data.init_args.batch_size",
        "64",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        cwd=tmp_path,
    )
    rows = list(csv.DictReader((tmp_path / "runs" / "cifar" / "seed42" / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 10
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1, f"training loss did not go down: {first:.3f} -> {last:.3f}"
    test_acc = [float(r["test/best/acc1"]) for r in rows if r.get("test/best/acc1")]
    assert test_acc and test_acc[-1] > 0.2  # 10 classes: chance is 0.1
