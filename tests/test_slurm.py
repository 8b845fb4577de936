"""The SLURM path for real: a local single-node cluster runs the README's sbatch script (scripts/slurm/)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"


def test_readme_slurm_script_is_the_tested_file():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(#!/bin/bash\n#SBATCH.*?)```", readme, flags=re.S)
    assert blocks == [SBATCH.read_text()], "README's sbatch block differs from scripts/slurm/train.sbatch"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # about 5 minutes on 2 idle cores; the script's own waits allow a loaded machine
def test_local_slurm_cluster_requeue_resume_and_scancel():
    """Same script as `make test-slurm`: exit 0 passed, 77 skipped (no slurm and no apt/root), else failed."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "slurm" / "run_test.py")],
        capture_output=True,
        text=True,
        timeout=3500,
    )
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
