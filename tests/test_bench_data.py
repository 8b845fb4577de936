"""benchmarks.bench_data runs end to end on the real CIFAR-10 JPEGs (a smoke run, no figures asserted).

A GPU session is short: the benchmark's shared code path (the tensor cache against the hand-written
augmentation, kornia once per batch and in chunks, the training rows) is run here on the CPU first.
"""

from __future__ import annotations

import pytest

from benchmarks.bench_data import main
from datamodules.tensor_cache import AUGMENT_SAMPLES


@pytest.mark.slow
def test_bench_data_quick_run_reports_every_row(shared_data):
    body = main(["--quick", "--no-write", "--reps", "1", "--steps", "2"])
    assert body is not None
    for row in (
        "PIL DataLoader, 1 worker(s)",
        f"tensor cache on cpu (kornia, {AUGMENT_SAMPLES} images per call)",
        "tensor cache on cpu, kornia once per batch",
        "tensor cache on cpu, hand-written augmentation (before kornia)",
        "tensor cache, hand-written augmentation (before kornia)",
    ):
        assert f"| {row} |" in body
    assert "kornia augmentation vs the hand-written one it replaced: **" in body
    assert "kornia augmentation vs the hand-written one, training: **" in body
