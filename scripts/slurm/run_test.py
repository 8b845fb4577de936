"""A real single-node SLURM cluster on this machine, running scripts/slurm/train.sbatch (``make test-slurm``).

Installs Debian's ``slurm-wlm`` and ``munge`` when ``slurmctld``/``slurmd`` are missing (root + apt-get;
otherwise it prints what is missing and exits 77, "skipped"). It writes a cgroup-free ``slurm.conf`` for
localhost (2 CPUs, no GPUs) with its own state, spool and log folders in a temporary folder, starts
``munged``, ``slurmctld`` and ``slurmd`` as child processes and stops exactly those at the end, whatever
happens. Then it submits the README's sbatch script (1 node x 2 tasks, CPU, gloo, the embedded digits data):

1. ``whole``: to completion;
2. ``cut``: the same job, whose time limit is cut once training has started (``scontrol update
   TimeLimit``, to the first whole minute at least 65 s past the job's elapsed time) so that SLURM sends the
   script's ``--signal=USR1@60`` mid-training whatever the machine's speed: the ranks save Lightning's
   ``hpc_ckpt_N.ckpt``, requeue the job, the requeued attempt (limit raised again) resumes from it; checked:
   the signal came before the last step, the HPC checkpoint was written, the job ran more than once
   (``SLURM_RESTART_COUNT``), the final weights equal ``whole``'s bit for bit, and every attempt logged into
   one W&B run id (offline);
3. ``cancelled``: ``scancel`` while training: a resumable HPC checkpoint is left and the job state is
   CANCELLED with a non-zero exit code, not COMPLETED.

Exit status: 0 passed, 1 failed, 77 skipped. ``--keep`` keeps the temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
SKIP = 77
DAEMONS = ("munged", "slurmctld", "slurmd")
# Lightning logs this right before training starts (after imports, data set-up and the DDP rendezvous)
TRAINING_MARK = "SLURM auto-requeueing enabled"
# resnet10t on 16x16 digits, 2 ranks x batch 16, 24 epochs of 30 steps: about 80 s of training on 2 idle
# cores, longer than the 65 s within which the signal lands once the limit is cut (see scenario)
EPOCHS, STEPS_PER_EPOCH = 24, 30
FIT_ARGS = [
    "--config", "experiments/quickstart.yaml",
    "--model.init_args.backbone", "resnet10t",
    "--data.init_args.image_size", "16",
    "--data.init_args.batch_size", "16",
    "--trainer.max_epochs", str(EPOCHS),
    "--trainer.limit_train_batches", str(STEPS_PER_EPOCH),
    "--trainer.limit_val_batches", "2",
    "--trainer.log_every_n_steps", "10",
    "--test_after_fit", "false",
]  # fmt: skip


class Failure(AssertionError):
    pass


def log(msg: str) -> None:
    print(f"[test-slurm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Failure(msg)


# ---- install ----------------------------------------------------------------------------------------------
def ensure_installed() -> str | None:
    """None when SLURM and munge are usable, else the reason to skip."""
    needed = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue", "scancel")
    missing = [b for b in needed if shutil.which(b) is None]
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"skipped: {', '.join(missing)} not installed and no apt-get to install slurm-wlm/munge"
    if os.geteuid() != 0:
        return f"skipped: {', '.join(missing)} not installed and not root (apt-get install slurm-wlm munge)"
    log(f"installing slurm-wlm and munge (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    still = [b for b in needed if shutil.which(b) is None]
    return f"skipped: still missing after apt-get: {', '.join(still)}" if still else None


# ---- cluster ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path) -> Path:
    """``slurm.conf`` for this machine; ``cred_expire=45`` (SLURM's default 120 s) also delays a requeued
    job's next start: the requeued attempt waited about 90 s instead of 150 s on this machine."""
    for sub in ("state", "spool", "log", "munge"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    (tmp / "munge").chmod(0o700)
    conf = tmp / "slurm.conf"
    ctld_port, slurmd_port = free_port(), free_port()
    conf.write_text(
        f"""# written by scripts/slurm/run_test.py: single node, localhost, no cgroups, no accounting
ClusterName=paperbench-test
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={os.environ.get("USER") or "root"}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={tmp}/munge/munge.socket,cred_expire=45
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=30
KillWait=30
OverTimeLimit=0
InactiveLimit=0
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


class Cluster:
    """munged, slurmctld and slurmd as child processes of this script; stop() ends exactly those."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.conf = write_config(tmp)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _start(self, name: str, cmd: list[str]) -> None:
        out = open(self.tmp / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.procs.append((name, proc))
        log(f"started {name} (pid {proc.pid})")

    def start(self) -> None:
        key = self.tmp / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        m = self.tmp / "munge"
        self._start(
            "munged",
            ["munged", "--foreground", "--force", f"--socket={m}/munge.socket", f"--key-file={key}",
             f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"],
        )  # fmt: skip
        wait_for(lambda: (m / "munge.socket").exists(), 30, "munged socket")
        self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        wait_for(lambda: self.run(["scontrol", "ping"], check=False).returncode == 0, 60, "slurmctld up")
        self._start("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])

        def idle() -> bool:
            out = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.strip()
            return out in ("idle", "mixed", "allocated")

        wait_for(idle, 90, "node localhost idle")
        log("cluster up: 1 node (localhost), 2 CPUs")

    def stop(self) -> None:
        # jobs first: their slurmstepd/Python processes would outlive slurmd
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self.procs):
            jobs = self.run(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
            if jobs:
                log(f"cancelling leftover jobs {jobs}")
                self.run(["scancel", *jobs], check=False)
                deadline = time.time() + 60
                while self.run(["squeue", "-h", "-o", "%i"], check=False).stdout.split():
                    if time.time() > deadline:
                        break
                    time.sleep(1)
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log(f"stopped {name} (pid {proc.pid}, exit {proc.returncode})")
        self.procs = []
        # what the daemons started and left behind (slurmstepd, job processes): they carry our SLURM_CONF
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self.leftovers()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if left:
                log(f"sent {sig.name} to leftover job processes {left}")
                time.sleep(3)
        check(not self.leftovers(), f"processes of this cluster still running: {self.leftovers()}")

    def leftovers(self) -> list[int]:
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit() or int(proc_dir.name) == os.getpid():
                continue
            try:
                if mark in (proc_dir / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc_dir.name))
            except OSError:
                continue
        return found

    def check_daemons(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.tmp / "log" / f"{name}.stdout").read_text(errors="replace")[-2000:]
                raise Failure(f"{name} exited with {proc.returncode}:\n{tail}")

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:  # a busy slurmctld: callers that poll try again
            result = subprocess.CompletedProcess(cmd, 124, "", "timed out after 120 s")
        if check and result.returncode != 0:
            raise Failure(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    # ---- jobs ---------------------------------------------------------------------------------------------
    def submit(self, runs: Path, name: str, *sbatch_args: str) -> str:
        runs.mkdir(parents=True, exist_ok=True)
        cmd = [
            "sbatch", "--parsable", f"--output={runs}/slurm-{name}-%j.out",
            f"--export=ALL,WANDB_MODE=offline,OMP_NUM_THREADS=1,PYTHONUNBUFFERED=1,PYTHON={sys.executable}",
            *sbatch_args, str(SBATCH), *FIT_ARGS, "--name", name, "--trainer.default_root_dir", str(runs),
        ]  # fmt: skip
        job = self.run(cmd).stdout.strip().split(";")[0]
        log(f"submitted {name}: job {job} ({' '.join(sbatch_args) or 'defaults'})")
        return job

    def job_info(self, job: str) -> dict[str, str]:
        out = self.run(["scontrol", "-o", "show", "job", job], check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job: str, timeout: float, on_poll=None) -> tuple[dict[str, str], list[str]]:
        """Poll until the job is finished (not pending/running/requeued); the states it went through."""
        states: list[str] = []
        deadline = time.time() + timeout
        while True:
            self.check_daemons()
            info = self.job_info(job)
            if "JobState" not in info:  # scontrol timed out: poll again
                check(time.time() < deadline, f"no answer from slurmctld about job {job} ({states})")
                continue
            state = info["JobState"]
            if not states or states[-1] != state:
                states.append(state)
                log(f"job {job}: {state} (restarts: {info.get('Restarts', '?')})")
            if on_poll is not None:
                on_poll(info)
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return info, states
            if time.time() > deadline:
                raise Failure(f"job {job} still {state} after {timeout:.0f} s (states {states})")
            time.sleep(0.5)


def run_seconds(text: str) -> int:
    """Seconds of a SLURM duration (``[days-]hours:minutes:seconds``, ``minutes:seconds``)."""
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise Failure(f"timed out waiting for {what}")
        time.sleep(0.3)


# ---- checks -----------------------------------------------------------------------------------------------
def final_weights(run_dir: Path):
    import torch

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    check(ckpt.is_file(), f"{ckpt} missing")
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def wandb_ids(run_dir: Path) -> tuple[list[str], set[str]]:
    folders = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    ids = {m.group(1) for f in folders for m in [re.search(r"-([a-z0-9]+)$", f)] if m}
    return folders, ids


def job_output(runs: Path, name: str, job: str) -> str:
    path = runs / f"slurm-{name}-{job}.out"
    return path.read_text(errors="replace") if path.exists() else f"(no job output: {path})"


def scenario(cluster: Cluster, runs: Path) -> None:
    import torch

    # 1. uninterrupted; timed: start-up (until TRAINING_MARK) and training
    job = cluster.submit(runs, "whole")
    times: dict[str, float] = {}

    def note_times(info) -> None:
        if info.get("JobState") == "RUNNING":
            times.setdefault("running", time.time())
            if "training" not in times and TRAINING_MARK in job_output(runs, "whole", job):
                times["training"] = time.time()

    info, states = cluster.wait_job(job, 1800, on_poll=note_times)
    times["end"] = time.time()
    out = job_output(runs, "whole", job)
    check(info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0", f"whole: {info}\n{out[-3000:]}")
    whole = final_weights(runs / "whole" / "seed42")
    check(whole["global_step"] == EPOCHS * STEPS_PER_EPOCH, f"whole ran {whole['global_step']} steps")
    startup = times.get("training", times["end"]) - times.get("running", times["end"])
    train = times["end"] - times.get("training", times["end"])
    log(f"whole: start-up {startup:.0f} s, training {train:.0f} s")

    # 2. time limit -> SIGUSR1 mid-run -> HPC checkpoint, requeue, resume. The limit is cut once the first
    # attempt trains (whatever the machine's speed): to the first whole minute >= elapsed + 65 s, so that
    # --signal=USR1@60 fires within 65 s (SLURM's 30 s timer sends it up to 30 s early, possibly at once);
    # the requeued attempt gets 30 min
    seen_hpc: set[str] = set()
    limits: dict[str, int] = {}

    def steer(info) -> None:
        seen_hpc.update(p.name for p in (runs / "cut" / "seed42").glob("hpc_ckpt_*.ckpt"))
        restarts = int(info.get("Restarts", "0") or 0)
        if restarts == 0 and "cut" not in limits and info.get("JobState") == "RUNNING":
            if TRAINING_MARK in job_output(runs, "cut", job):
                elapsed = run_seconds(info.get("RunTime", "0"))
                limits["cut"] = math.ceil((elapsed + 65) / 60)
                cluster.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={limits['cut']}"])
                log(f"cut: training at {elapsed} s elapsed; time limit cut to {limits['cut']} min")
        if restarts >= 1 and "resumed" not in limits:
            cluster.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], check=False)
            limits["resumed"] = 30

    job = cluster.submit(runs, "cut")
    info, states = cluster.wait_job(job, 1800, on_poll=steer)
    out = job_output(runs, "cut", job)
    check(info["JobState"] == "COMPLETED", f"cut ended {info['JobState']} (states {states}):\n{out[-4000:]}")
    restarts = int(info.get("Restarts", "0"))
    attempts = re.findall(r"^attempt (\d+) of job", out, flags=re.M)
    check(restarts >= 1 and len(attempts) == restarts + 1, f"cut was not requeued: {restarts=} {attempts=}")
    check("SIGUSR1 received: stopped after" in out and "requeued SLURM job" in out, out[-4000:])
    check("cut" in limits, "the cut job's start of training was not seen")
    check("Restoring states from the checkpoint path at" in out and "hpc_ckpt_" in out, "no HPC resume")
    check(bool(seen_hpc) or "hpc_ckpt_1.ckpt" in out, "no HPC checkpoint seen")
    stopped_at = [int(n) for n in re.findall(r"SIGUSR1 received: stopped after .*?step (\d+)", out)]
    check(
        bool(stopped_at) and 0 < stopped_at[0] < whole["global_step"],
        f"the signal did not land mid-training: {stopped_at} of {whole['global_step']} steps",
    )
    cut = final_weights(runs / "cut" / "seed42")
    check(cut["global_step"] == whole["global_step"], f"steps {cut['global_step']} != {whole['global_step']}")
    diff = [k for k in whole["state_dict"] if not torch.equal(whole["state_dict"][k], cut["state_dict"][k])]
    check(not diff, f"resumed weights differ from the uninterrupted run's: {diff[:5]}")
    folders, ids = wandb_ids(runs / "cut" / "seed42")
    check(len(folders) == restarts + 1 and len(ids) == 1, f"W&B: {folders} (ids {ids})")
    log(f"cut: requeued {restarts}x, resumed from {sorted(seen_hpc)}, same weights, one W&B run {ids}")

    # 3. scancel while training -> resumable checkpoint, CANCELLED (not COMPLETED), non-zero exit code
    job = cluster.submit(runs, "cancelled")
    cancelled = {"done": False}

    def cancel_when_training(info) -> None:
        if cancelled["done"] or info.get("JobState") != "RUNNING":
            return
        out = job_output(runs, "cancelled", job)
        if (runs / "cancelled" / "seed42" / "checkpoints" / "last.ckpt").exists() or TRAINING_MARK in out:
            time.sleep(3)
            cluster.run(["scancel", job])
            cancelled["done"] = True
            log(f"scancel {job}")

    info, states = cluster.wait_job(job, 900, on_poll=cancel_when_training)
    out = job_output(runs, "cancelled", job)
    check(cancelled["done"], f"the job finished before it could be cancelled: {states}")
    check(info["JobState"] == "CANCELLED" and info.get("ExitCode") != "0:0", f"scancel: {info}")
    hpc = sorted((runs / "cancelled" / "seed42").glob("hpc_ckpt_*.ckpt"))
    check(len(hpc) == 1, f"no HPC checkpoint after scancel:\n{out[-3000:]}")
    state = torch.load(hpc[0], map_location="cpu", weights_only=True)
    check(
        state["global_step"] > 0 and "loops" in state, "the scancel checkpoint is not a training checkpoint"
    )
    check("SIGTERM received: stopped after" in out, out[-3000:])
    log(
        f"cancelled: {info['JobState']} exit {info.get('ExitCode')}, "
        f"{hpc[0].name} at step {state['global_step']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    started = time.time()
    for signum in (signal.SIGTERM, signal.SIGHUP):  # run the clean-up below when stopped from outside
        signal.signal(signum, lambda num, _frame: sys.exit(128 + num))
    reason = ensure_installed()
    if reason:
        print(f"test-slurm {reason}")
        return SKIP
    tmp = Path(tempfile.mkdtemp(prefix="paperbench-slurm-"))
    cluster = Cluster(tmp)
    code = 1
    try:
        cluster.start()
        scenario(cluster, tmp / "runs")
        code = 0
    except Exception as err:  # noqa: BLE001 - Failure or anything else: report, clean up, exit 1
        print(f"test-slurm FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        for name in ("slurmctld.log", "slurmd.log"):
            path = tmp / "log" / name
            if path.exists():
                print(f"--- {path} (tail)\n{path.read_text(errors='replace')[-3000:]}", file=sys.stderr)
    finally:
        cluster.stop()
        if args.keep or code:
            log(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"{'passed' if code == 0 else 'FAILED'} in {time.time() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
