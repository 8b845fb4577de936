"""SIGTERM and the SLURM requeue signal: stop at a batch boundary, save a resumable checkpoint, exit non-zero.

Lightning 2.6 on its own: SIGTERM sets ``trainer.received_sigterm`` and the loops raise ``SIGTERMException``,
a ``SystemExit`` without a code, so the process exits with status 0 and no checkpoint. Under SLURM its
``SIGUSR1`` handler saves ``hpc_ckpt_N.ckpt`` *inside the signal handler*, i.e. at whatever point of the
step the signal lands (possibly half-way through ``optimizer.step``), and under DDP it enters a collective
(the barrier of ``save_checkpoint``) while the other ranks may be inside another one.

:class:`SignalCheckpoint` replaces both handlers, once training starts, by handlers that only record the
signal. At the end of the next training batch (the same step on every rank: the flag is max-reduced
across ranks) every rank saves Lightning's HPC checkpoint ``<run folder>/hpc_ckpt_N.ckpt`` together, rank
0 asks SLURM to requeue the job when the signal was the requeue signal, and the run exits with
``128 + signal`` (143 for SIGTERM, 138 for SIGUSR1) and one message saying what was saved. The CLI resumes
from that checkpoint when the same command runs again (SLURM's requeue does exactly that); a fit that
finishes removes its HPC checkpoints, so a later ``fit`` is not mistaken for a resume.

Under SLURM ``main.py fit`` records SIGUSR1 first thing (:func:`install_early_handlers`), so a requeue signal
that arrives while the job is still importing or building its data is acted on at the first training
batch instead of killing the process (SIGUSR1's default action). SIGTERM before training kills the process
(nothing to save yet); between Lightning's set-up and the first batch, and during
``validate``/``test``/``predict``, it goes through Lightning, which stops the run; the exit status is then
143 as well, not 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

_pending = {"signum": 0}  # the strongest signal received so far (SIGTERM 15 > SIGUSR1 10)
_original: dict[int, object] = {}  # the handlers before install_early_handlers, restored after fit


def _record(signum: int, _frame) -> None:
    # SIGTERM dominates the requeue signal: a cancelled job must not requeue itself
    _pending["signum"] = max(_pending["signum"], int(signum))


def install_early_handlers() -> None:
    """Under SLURM, record SIGUSR1 from process start (its default action kills); SignalCheckpoint acts on it.

    SIGTERM keeps its default action until training starts: a Python handler only runs when the interpreter
    regains control, so a process blocked in C++ (a DDP rendezvous waiting for a rank that died) would
    ignore it; before training there is nothing to save anyway.
    """
    if threading.current_thread() is not threading.main_thread() or not SLURMEnvironment.detect():
        return
    for signum in (signal.SIGUSR1,):
        _original.setdefault(int(signum), signal.getsignal(signum))
        signal.signal(signum, _record)


class SignalCheckpoint(Callback):
    """Save a resumable checkpoint on SIGTERM (and SLURM's requeue signal) and exit with 128 + signal.

    Args:
        check_every_n_steps: how often the ranks agree on whether a signal came (one max-reduction of one
            integer under DDP; single-process runs only read a flag). A signal is acted on at the end of the
            first training batch whose global step is a multiple of this.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._previous: dict[int, object] = {}

    # ---- handlers -------------------------------------------------------------------------------------
    def _requeue_signal(self, trainer: Trainer) -> int | None:
        env = trainer._accelerator_connector.cluster_environment
        if isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None:
            return int(env.requeue_signal)
        return None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        launcher = trainer.strategy.launcher

        def handler(signum: int, frame) -> None:
            first = not _pending["signum"]
            _record(signum, frame)
            if first and launcher is not None:  # ranks Lightning started as child processes get it too
                launcher.kill(signum)

        signums = [int(signal.SIGTERM)]
        requeue = self._requeue_signal(trainer)
        if requeue is not None:
            signums.append(requeue)
        for signum in signums:  # replaces Lightning's handlers (see the module docstring)
            self._previous[signum] = _original.get(signum, signal.getsignal(signum))
            signal.signal(signum, handler)
        for logger in trainer.loggers:
            _guard_logger(logger)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _unguard_loggers(trainer)
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous = {}
        _pending["signum"] = 0  # a signal after the last batch: the fit finished, nothing left to act on

    # ---- acting on a signal ---------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx):
        if trainer.global_step % self.check_every_n_steps:
            return
        signum = _pending["signum"] or (int(signal.SIGTERM) if trainer.received_sigterm else 0)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([signum], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag.item())
        if not signum:
            return
        _pending["signum"] = 0
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank (a collective); rank 0 writes
        name = signal.Signals(signum).name
        where = f"epoch {trainer.current_epoch}, batch {batch_idx} (global step {trainer.global_step})"
        requeued = ""
        if signum == self._requeue_signal(trainer) and trainer.is_global_zero:
            _finish_loggers(trainer)
            requeued = _requeue_slurm_job()
        if trainer.is_global_zero:
            resume = requeued or "run the same command again to resume from it"
            print(f"{name} received: stopped after {where}; saved {path}; {resume}.", file=sys.stderr)
        # every rank waits for rank 0's requeue: under `srun --kill-on-bad-exit` the first rank to exit
        # non-zero takes the others down, rank 0 included
        trainer.strategy.barrier("SignalCheckpoint")
        raise SIGTERMException(128 + signum)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        _unguard_loggers(trainer)  # Lightning calls no teardown hook after an exception
        # Lightning's own SIGTERM stop (before training started, or in validate/test) exits with status 0
        if isinstance(exception, SIGTERMException) and exception.code in (None, 0):
            exception.code = 128 + int(signal.SIGTERM)
            if trainer.is_global_zero:
                print(
                    f"SIGTERM received during {trainer.state.stage or trainer.state.fn}: stopped; no "
                    "checkpoint was written by this interruption.",
                    file=sys.stderr,
                )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the run finished: its pre-emption checkpoints are superseded and would make the next fit resume
        if trainer.is_global_zero:
            for path in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                path.unlink(missing_ok=True)


def _guard_logger(logger) -> None:
    """After a signal, a logger whose connection broke stops logging instead of stopping the save.

    ``scancel`` signals every process of the job step, W&B's service process included, which exits at once:
    the ranks' next ``wandb.log`` (a step or epoch-end metric, validation, before the next batch boundary)
    raises ``ConnectionResetError`` and would end the run without its checkpoint. With a signal recorded,
    such an error is reported once and the logger's further metrics are dropped; without one it is raised.
    """
    original = logger.log_metrics
    broken = {"err": None}

    def log_metrics(*args, **kwargs):
        if broken["err"] is not None:
            return None
        try:
            return original(*args, **kwargs)
        except ConnectionError as err:
            if not _pending["signum"]:
                raise
            broken["err"] = err
            print(
                f"{type(logger).__name__}: its connection broke after the signal ({type(err).__name__}: "
                f"{err}); later metrics are not logged, the checkpoint is still saved",
                file=sys.stderr,
            )
            return None

    logger.log_metrics = log_metrics  # this instance only; _unguard_loggers restores the class's


def _unguard_loggers(trainer: Trainer) -> None:
    for logger in trainer.loggers:
        logger.__dict__.pop("log_metrics", None)  # the class's own method again


def _finish_loggers(trainer: Trainer) -> None:
    """Flush and close W&B before SLURM kills the job for the requeue (its atexit hook may never run)."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "_experiment", None)
        try:
            if experiment is not None and hasattr(experiment, "finish"):
                experiment.finish(exit_code=1)
            else:
                logger.finalize("failed")
        except Exception as err:  # noqa: BLE001 - the signal may have reached W&B's service process too
            print(
                f"{type(logger).__name__}: could not close cleanly ({err}); requeueing anyway",
                file=sys.stderr,
            )


def _requeue_slurm_job() -> str:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = (
        f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array_job
        else os.environ.get("SLURM_JOB_ID", "")
    )
    if not re.fullmatch(r"[0-9_]+", job_id):
        return f"not requeued (no SLURM job id in the environment: {job_id!r}); resubmit the job to resume"
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"requeue of SLURM job {job_id} failed ({err}); resubmit the job to resume"
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip()
        return (
            f"requeue of SLURM job {job_id} failed ({why}; the job needs `#SBATCH --requeue` and the "
            "cluster JobRequeue allowed); resubmit the job to resume"
        )
    return f"requeued SLURM job {job_id}: the requeued job resumes from it"
