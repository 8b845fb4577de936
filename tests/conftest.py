"""Shared test set-up: no network, W&B offline, the shared real-data folder, process state restored per test.

Tests must pass in any order and at any thread count (``OMP_NUM_THREADS=1``/``2``, ``pytest -p randomly``):
``_restore_global_state`` puts back what a test may change process-wide (torch threads, default dtype,
RNG states, deterministic-algorithm and matmul-precision flags) so no test leaks state into the next.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# W&B: the real client, offline; nothing may reach the network during tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` with the real CIFAR-10 JPEGs; tests using it skip cleanly when it is absent."""
    if not (SHARED_DATA / "cifar10-mini.zip").is_file():
        pytest.skip("../shared/data/cifar10-mini.zip not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _cwd_tmp(tmp_path, monkeypatch):
    """Run each test from a temporary folder so stray runs/ or wandb/ folders never land in the repo."""
    monkeypatch.setenv("PAPERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Restore the process-global torch/numpy/random state a test may set (threads, seeds, dtype, flags)."""
    threads = torch.get_num_threads()
    dtype = torch.get_default_dtype()
    rng = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    matmul = torch.get_float32_matmul_precision()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    seed_env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.random.set_rng_state(rng[0])
    np.random.set_state(rng[1])
    random.setstate(rng[2])
    torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
    for key, value in seed_env.items():  # set by lightning.seed_everything
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
