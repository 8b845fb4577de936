"""Shared test set-up: no network, W&B offline, small thread counts, the shared real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
