"""SIGTERM mid-epoch: a resumable checkpoint, exit status 143 (not 0), a resume equal to the whole run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from datamodules import DigitsDataModule
from lightning_modules import ClassificationTask, signals
from lightning_modules.callbacks import RNGStateCallback
from lightning_modules.signals import SignalCheckpoint
from tests.test_reliability import _fit_cmd, _weights

ROOT = Path(__file__).resolve().parents[1]


class _SigtermAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class _SigtermBeforeLogging(_SigtermAtStep):
    """The signal after SignalCheckpoint's batch-end check and before the step's metrics reach the logger."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _fit(
    root: Path,
    *callbacks: Callback,
    ckpt_path: str | None = None,
    epochs: int = 2,
    batches: int = 4,
    logger=False,
    **trainer_kwargs,
):
    seed_everything(0)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        **trainer_kwargs,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        limit_train_batches=batches,
        limit_val_batches=0,
        callbacks=[RNGStateCallback(), SignalCheckpoint(), *callbacks],
    )
    task = ClassificationTask(backbone="resnet10t", num_classes=10)
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=8, image_size=16), ckpt_path=ckpt_path)
    return task


class _ServiceLogger(CSVLogger):
    """A logger whose service process dies with the signal, as W&B's does under ``scancel``."""

    def log_metrics(self, metrics, step=None):
        if signals._pending["signum"]:
            raise ConnectionResetError("Connection lost")
        super().log_metrics(metrics, step)


def test_a_logger_broken_by_the_signal_does_not_stop_the_save(tmp_path, capsys):
    logger = _ServiceLogger(tmp_path / "logs")
    with pytest.raises(SystemExit) as stop:
        _fit(tmp_path, _SigtermBeforeLogging(2), epochs=1, batches=4, logger=logger, log_every_n_steps=1)
    assert stop.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "_ServiceLogger: its connection broke after the signal (ConnectionResetError" in err
    assert (tmp_path / "hpc_ckpt_1.ckpt").is_file() and "SIGTERM received: stopped after" in err
    assert "log_metrics" not in vars(logger)  # teardown gave the instance its class's method back


def test_a_broken_logger_connection_without_a_signal_is_raised(tmp_path):
    class Broken(CSVLogger):
        def log_metrics(self, metrics, step=None):
            raise ConnectionResetError("Connection lost")

    logger = Broken(tmp_path)
    signals._guard_logger(logger)
    assert not signals._pending["signum"]
    with pytest.raises(ConnectionResetError):
        logger.log_metrics({"x": 1.0})


def test_sigterm_mid_epoch_saves_checkpoint_and_exits_143(tmp_path, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        _fit(tmp_path, _SigtermAtStep(1), epochs=1, batches=3)
    assert stop.value.code == 128 + signal.SIGTERM  # Lightning alone: SystemExit(None), i.e. status 0
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored
    ckpt = tmp_path / "hpc_ckpt_1.ckpt"
    assert (
        f"SIGTERM received: stopped after epoch 0, batch 1 (global step 2); saved {ckpt}"
        in capsys.readouterr().err
    )
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and state["loops"]["fit_loop"]["state_dict"]["combined_loader"]


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, capsys):
    whole = _fit(tmp_path / "whole")
    with pytest.raises(SystemExit) as stop:
        _fit(tmp_path / "cut", _SigtermAtStep(5))  # epoch 1, batch 1
    assert stop.value.code == 128 + signal.SIGTERM
    ckpt = tmp_path / "cut" / "hpc_ckpt_1.ckpt"
    assert f"stopped after epoch 1, batch 1 (global step 6); saved {ckpt}" in capsys.readouterr().err

    resumed = _fit(tmp_path / "cut", ckpt_path=str(ckpt))  # mid-epoch: the loader skips the done batches
    assert not ckpt.exists()  # a finished fit removes its pre-emption checkpoints
    w, r = whole.state_dict(), resumed.state_dict()
    assert w.keys() == r.keys()
    for key in w:
        assert torch.equal(w[key], r[key]), key


def test_check_every_n_steps_is_validated():
    with pytest.raises(ValueError, match="check_every_n_steps"):
        SignalCheckpoint(check_every_n_steps=0)


@pytest.mark.slow
def test_sigterm_to_cli_fit_then_same_command_resumes(tmp_path):
    """The real CLI in a subprocess: SIGTERM in epoch 2 -> rc 143 + HPC checkpoint; rerun -> same weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(_fit_cmd(tmp_path, "whole"), env=env, check=True, capture_output=True, timeout=900)

    run_dir = tmp_path / "cut" / "seed42"  # <name>/seed<N>/
    proc = subprocess.Popen(
        _fit_cmd(tmp_path, "cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 900
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # first epoch-end checkpoint written: we are in epoch 2
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    hpc = list(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert len(hpc) == 1 and f"saved {hpc[0]}; run the same command again to resume from it" in err

    again = subprocess.run(_fit_cmd(tmp_path, "cut"), env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from the pre-emption checkpoint" in again.stderr
    whole, resumed = (
        _weights(tmp_path / "whole" / "seed42" / "checkpoints" / "last.ckpt"),
        _weights(run_dir / "checkpoints" / "last.ckpt"),
    )
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
