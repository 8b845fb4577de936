"""Losing nothing: atomic checkpoints, SIGKILL + resume equals an uninterrupted run, NaN stops,
bad checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

import main as cli
from datamodules import DigitsDataModule
from lightning_modules import ClassificationTask
from lightning_modules.callbacks import FiniteLossGuard, NonFiniteLossError
from lightning_modules.checkpoint_io import AtomicCheckpointIO
from lightning_modules.losses.base import TaskLoss
from lightning_modules.task import CheckpointMismatchError
from tests.dataset_fixtures import build_dataset_fixture
from tests.test_cli import run_main

ROOT = cli.ROOT
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")  # the process dies half-way through writing
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


class NaNAtStep(TaskLoss):
    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.bad_step, self.calls = bad_step, 0

    def forward(self, outputs, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(outputs["logits"], target)
        return {"loss": loss * float("nan") if self.calls == self.bad_step else loss}


def test_nan_loss_stops_with_step_and_batch(tmp_path):
    task = ClassificationTask(
        backbone="resnet10t",
        num_classes=10,
        loss=NaNAtStep(3),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
    )
    trainer = Trainer(
        max_steps=10,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[FiniteLossGuard()],
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    with pytest.raises(NonFiniteLossError, match="global step 2 .*batch 2"):
        trainer.fit(task, datamodule=DigitsDataModule(batch_size=8, image_size=16))


def test_checkpoint_of_another_class_count_is_one_message(monkeypatch, capsys, tmp_path):
    runs = tmp_path / "runs"
    fast = [
        "--trainer.logger",
        "false",
        "--trainer.max_steps",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--test_after_fit",
        "false",
        "--data.init_args.image_size",
        "16",
        "--trainer.default_root_dir",
        str(runs),
    ]
    code, _, err = run_main(monkeypatch, capsys, "fit", "--config", QUICKSTART, *fast)
    assert code == 0, err
    ckpt = str(runs / "quickstart" / "seed42" / "checkpoints" / "last.ckpt")
    folder = build_dataset_fixture("datamodules.ImageFolderDataModule", tmp_path / "data")[
        "root"
    ]  # 3 classes
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "test",
        "--config",
        QUICKSTART,
        "--trainer.logger",
        "false",
        "--data",
        "datamodules.ImageFolderDataModule",
        "--data.init_args.root",
        folder,
        "--data.init_args.image_size",
        "16",
        "--ckpt_path",
        ckpt,
    )
    assert code == 2 and "10 classes (this run's data: 3)" in err and "Traceback" not in err


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    dm = DigitsDataModule(batch_size=8, image_size=16)
    trainer = Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        limit_val_batches=1,
        limit_test_batches=1,
    )
    trainer.fit(ClassificationTask(backbone="resnet10t", num_classes=10), datamodule=dm)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(CheckpointMismatchError, match="backbone 'resnet10t'"):
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_test_batches=1).test(
            ClassificationTask(backbone="resnet18", num_classes=10), datamodule=dm, ckpt_path=ckpt
        )


def _fit_cmd(root: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "main.py"),
        "fit",
        "--config",
        QUICKSTART,
        "--name",
        name,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        "false",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "25",
        "--trainer.limit_val_batches",
        "4",
        "--trainer.enable_progress_bar",
        "false",
        "--test_after_fit",
        "false",
        "--model.init_args.backbone",
        "resnet10t",
        "--data.init_args.image_size",
        "16",
        "--data.init_args.batch_size",
        "16",
        *extra,
    ]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow  # three CLI fits (about a minute); exact resume from last.ckpt: tests/test_run_lifecycle.py
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    """Kill -9 during epoch 2, resume with `--ckpt_path last` (epoch-boundary checkpoint): same final
    weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(_fit_cmd(tmp_path, "whole"), env=env, check=True, capture_output=True, timeout=600)

    ckpt_dir = tmp_path / "killed" / "seed42" / "checkpoints"
    proc = subprocess.Popen(
        _fit_cmd(tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while not (ckpt_dir / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # first epoch-end checkpoint written: die in the middle of epoch 2
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < 2

    subprocess.run(
        _fit_cmd(tmp_path, "killed", "--ckpt_path", "last"),
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    whole, resumed = (
        _weights(tmp_path / "whole" / "seed42" / "checkpoints" / "last.ckpt"),
        _weights(ckpt_dir / "last.ckpt"),
    )
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
