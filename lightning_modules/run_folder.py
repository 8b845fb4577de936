"""The run folder's lifecycle: what ``--ckpt_path`` means, where evaluations are recorded, the run lock.

A run lives in ``<trainer.default_root_dir>/<name>/seed<N>/`` (``<name>``: the row, ``N``: the resolved
``seed_everything``, so the seeds of one row never collide; see :func:`resolve_seed` for ``true``/``null``
and ``unseeded/`` for ``false``)::

    config.yaml            how the model was trained (written by ``fit`` only, never by an evaluation)
    checkpoints/           last.ckpt (end of the latest epoch) and best-epochNNN.ckpt (best validation)
    wandb_id               the W&B run id of the fit (written by an accepted, non-smoke ``fit`` only)
    wandb/ or logs/        the fit's logger files
    run.lock               held while a ``fit`` runs (pid and host inside)
    eval/<sub>-<ckpt>/     one record per evaluation: config.yaml, predictions, analysis/, its logger files

Everything here is plain file-system code (no Lightning), so it is tested on its own.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from lightning_modules.safe_load import UnsafeCheckpointError, safe_load

LOCK_NAME = "run.lock"
EVAL_DIR = "eval"
UNSEEDED = "unseeded"
_SEED_DIR = re.compile(r"seed\d+")


# ------------------------------------------------------------------------------------------- seeds
def resolve_seed(value: Any) -> int | bool:
    """The seed a run will use, fixed before its folder is chosen (``seed_everything`` of the config).

    An int is itself; ``false`` stays ``False`` (no seeding: the run goes to ``<name>/unseeded/``).
    ``true`` and ``null`` resolve as Lightning's own ``seed_everything()`` does (lightning 2.6: not a
    random seed): ``PL_GLOBAL_SEED`` when set (Lightning sets it when it seeds, DDP workers inherit it),
    else 0. The result is written back into the config, so ``config.yaml`` records the seed used.
    """
    if value is False:
        return False
    if value is True or value is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        return int(env) if env and env.strip().lstrip("-").isdigit() else 0
    return int(value)


def seed_folder(seed: Any) -> str:
    """``seed<N>`` (``true``/``null`` resolved by :func:`resolve_seed`), ``unseeded`` for ``false``."""
    return UNSEEDED if seed is False else f"seed{resolve_seed(seed)}"


def is_seed_folder(name: str) -> bool:
    """True for the last level of a run folder (``seed42``, ``unseeded``)."""
    return bool(_SEED_DIR.fullmatch(name)) or name == UNSEEDED


def is_run_folder(path: Path) -> bool:
    """A folder a ``fit`` has written into (checkpoints or a W&B id)."""
    return (path / "checkpoints").is_dir() or (path / "wandb_id").is_file()


class CheckpointNotFoundError(FileNotFoundError):
    """``--ckpt_path`` names a checkpoint that does not exist (or ``last`` / ``best`` with none saved)."""

    user_error = True


class CheckpointReadError(ValueError):
    """``--ckpt_path`` is not a readable checkpoint (truncated, not a checkpoint at all)."""

    user_error = True


class RunLockedError(RuntimeError):
    """Another ``fit`` is writing into this run folder."""

    user_error = True


# ------------------------------------------------------------------------------------------- checkpoints
def _near_runs(run_dir: Path) -> str:
    """Where the runs are: other seeds of this row, or rows with a close name (``<root>/<name>/seed<N>``)."""
    if not is_seed_folder(run_dir.name):  # a folder of the layout before seeds: <root>/<name>/
        root, name = run_dir.parent, run_dir.name
    else:
        root, name = run_dir.parent.parent, run_dir.parent.name
        seeds = sorted(p.name for p in run_dir.parent.glob("*") if (p / "checkpoints").is_dir())
        if seeds:
            listed = ", ".join(seeds[:8])
            return f" Seeds of {run_dir.parent} with checkpoints: {listed} (pick one: --seed_everything N)."
    if not root.is_dir():
        return f" ({root} does not exist)"
    runs = sorted(
        p.name for p in root.iterdir() if (p / "checkpoints").is_dir() or any(p.glob("*/checkpoints"))
    )
    close = difflib.get_close_matches(name, runs, n=3, cutoff=0.5)
    if close:
        return f" Did you mean --name {' or --name '.join(close)}?"
    return f" Runs in {root}: {', '.join(runs[:8])}." if runs else f" {root} holds no run."


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path, subcommand: str) -> str | None:
    """The checkpoint file ``--ckpt_path`` means, or a :class:`CheckpointNotFoundError`.

    ``last``: ``<run>/checkpoints/last.ckpt`` (a SLURM/SIGTERM ``hpc_ckpt_*.ckpt`` is left to Lightning:
    ``hpc`` is returned unchanged); ``best``: the single ``best-*.ckpt`` of the run. Lightning itself would
    warn and train (or test) from scratch with exit code 0 when no checkpoint exists.
    """
    if ckpt_path in (None, "", "hpc"):
        return ckpt_path or None
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_path == "last":
        found = sorted(ckpt_dir.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            what = "resume" if subcommand == "fit" else subcommand
            raise CheckpointNotFoundError(
                f"--ckpt_path last: no checkpoint in {ckpt_dir}, so there is nothing to {what}."
                f"{_near_runs(run_dir)}"
                + (" To start a new run, leave out --ckpt_path." if subcommand == "fit" else "")
            )
        return str(found[-1])
    if ckpt_path == "best":
        found = sorted(ckpt_dir.glob("best*.ckpt"))
        if len(found) != 1:
            detail = "none" if not found else f"{len(found)}: {', '.join(p.name for p in found)}"
            raise CheckpointNotFoundError(
                f"--ckpt_path best: expected one best-*.ckpt in {ckpt_dir}, found {detail}. "
                f"Pass the checkpoint file itself.{_near_runs(run_dir) if not found else ''}"
            )
        return str(found[0])
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            others = sorted(p.name for p in path.parent.glob("*.ckpt"))
            hint = f" Checkpoints in {path.parent}: {', '.join(others)}." if others else ""
        raise CheckpointNotFoundError(f"--ckpt_path {ckpt_path}: no such file.{hint}")
    return str(path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; one clear error for a file that is not a checkpoint."""
    try:
        try:  # memory-mapped: only the hyper-parameters are read here, the tensors stay on disk
            obj = safe_load(path, map_location="cpu", mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # a legacy (non-zip) file cannot be mapped: read it whole
                raise
            obj = safe_load(path, map_location="cpu")
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise CheckpointReadError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {reason[:200]}). It may be "
            "truncated "
            "(a copy or a save that did not finish) or not a checkpoint at all; use another file, e.g. "
            "checkpoints/last.ckpt or best-*.ckpt of the run."
        ) from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise CheckpointReadError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'); for weights of another model use "
            "`model.init_args.pretrained: <path>` instead of --ckpt_path."
        )
    return obj


def run_dir_of_checkpoint(ckpt_path: str | None) -> Path | None:
    """``runs/X/seed42`` for ``runs/X/seed42/checkpoints/<file>.ckpt``, else ``None``."""
    if not ckpt_path or ckpt_path == "hpc":
        return None
    path = Path(ckpt_path).resolve()
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return None


# ------------------------------------------------------------------------------------------- evaluations
def eval_record_dir(run_dir: Path, subcommand: str, ckpt_path: str | None) -> Path:
    """A fresh ``<run>/eval/<subcommand>-<checkpoint stem>[-vN]`` folder name (never an existing one)."""
    stem = Path(ckpt_path).stem if ckpt_path and ckpt_path != "hpc" else "init"
    base = run_dir / EVAL_DIR / f"{subcommand}-{stem}"
    candidate, n = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-v{n}")
        n += 1
    return candidate


# ------------------------------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder for the duration of a ``fit``.

    The lock is ``flock`` on ``<run>/run.lock`` (released by the kernel when the process dies, so a
    killed run leaves no stale lock); the file says who holds it (pid, host, SLURM job, start time).
    Where ``flock`` is not supported (some parallel file systems), the file itself is the lock: created
    exclusively, and taken over when it names a process of this host that is no longer running, or the
    same SLURM job (a requeue).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._handle: Any = None
        self._owns_file = False

    @staticmethod
    def _describe() -> str:
        job = os.environ.get("SLURM_JOB_ID")
        return (
            f"pid={os.getpid()} host={socket.gethostname()}"
            + (f" slurm_job={job}" if job else "")
            + f" started={time.strftime('%Y-%m-%dT%H:%M:%S')} cmd={' '.join(sys.argv)[:300]}\n"
        )

    @staticmethod
    def _parse(text: str) -> dict[str, str]:
        head = text.split(" cmd=")[0]
        return dict(part.split("=", 1) for part in head.split() if "=" in part)

    def _refuse(self, holder: str) -> RunLockedError:
        return RunLockedError(
            f"{self.path.parent} is in use by another fit ({holder.strip() or 'unknown process'}). Wait for "
            "it "
            "to finish, or give this run another --name; nothing was written. If no such process exists any "
            f"more, delete {self.path}."
        )

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            fcntl = None
        if fcntl is not None:
            handle = open(self.path, "a+")  # noqa: SIM115 - held open for the whole fit
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read()
                handle.close()
                raise self._refuse(holder) from None
            except OSError:  # flock unsupported here: fall back to the file itself
                handle.close()
            else:
                handle.seek(0)
                handle.truncate()
                handle.write(self._describe())
                handle.flush()
                self._handle = handle
                return
        self._acquire_by_file()

    def _acquire_by_file(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.path.read_text(errors="replace")
                info = self._parse(holder)
                same_job = info.get("slurm_job") and info.get("slurm_job") == os.environ.get("SLURM_JOB_ID")
                dead = info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", "0")))
                if same_job or dead:
                    print(f"run lock: taking over the stale lock of {holder.strip()}", file=sys.stderr)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._refuse(holder) from None
            with os.fdopen(fd, "w") as f:
                f.write(self._describe())
            self._owns_file = True
            return
        raise self._refuse(self.path.read_text(errors="replace"))

    def release(self) -> None:
        if self._handle is not None:
            import fcntl

            self._handle.seek(0)
            self._handle.truncate()  # an unlocked, empty file: nobody holds the run
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        if self._owns_file:
            self.path.unlink(missing_ok=True)
            self._owns_file = False


def tool_output_dir(ckpt_path: str | None, tool: str, name: str) -> Path:
    """Where an analysis tool writes by default: ``<run>/analysis/<tool>`` for a checkpoint of a run folder
    (``runs/X/checkpoints/*.ckpt``), else ``analysis/<tool>/<name>`` in the working directory."""
    run_dir = run_dir_of_checkpoint(ckpt_path)
    return run_dir / "analysis" / tool if run_dir is not None else Path("analysis") / tool / name
