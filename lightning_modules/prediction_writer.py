"""``predict`` output: one CSV row per image with its top-k classes (names) and probabilities."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class CSVPredictionWriter(BasePredictionWriter):
    """Write ``predictions.csv``: ``index, path, label, pred_1, prob_1, ..., pred_k, prob_k``.

    ``path`` is the image file where the dataset knows it (image folders), else ``<split>[<index>]``;
    ``label`` is the true class name where the dataset has labels (the test split), else empty. Under DDP
    every rank writes ``predictions.rank<r>.csv`` for its shard (``index`` is the dataset index).

    Args:
        output_dir: folder of the CSV.
        top_k: number of classes per row (at most the number of classes).
        class_names: names of the classes (default ``0..C-1``).
        paths: file path of every dataset index.
        labels: true class of every dataset index (or ``None``).
        split_name: used in ``path`` when ``paths`` is not known.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        top_k: int = 5,
        class_names: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        labels: Sequence[int] | None = None,
        split_name: str = "test",
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.top_k = top_k
        self.class_names = list(class_names) if class_names is not None else None
        self.paths = paths
        self.labels = labels
        self.split_name = split_name
        self.file: Path | None = None
        self._handle: Any = None
        self._writer: Any = None

    def _name(self, c: int) -> str:
        return self.class_names[c] if self.class_names and c < len(self.class_names) else str(c)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.csv"
        self.file = self.output_dir / name
        self._handle = open(self.file, "w", newline="")  # noqa: SIM115 - closed in on_predict_end
        self._writer = None

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        probs = prediction["probs"] if isinstance(prediction, dict) else prediction.float().softmax(-1)
        k = min(self.top_k, probs.shape[-1])
        if self._writer is None:
            self._writer = csv.writer(self._handle)
            cols = ["index", "path", "label"]
            for i in range(1, k + 1):
                cols += [f"pred_{i}", f"prob_{i}"]
            self._writer.writerow(cols)
        top_p, top_c = torch.topk(probs.detach().float().cpu(), k, dim=-1)
        if batch_indices is None:
            start = batch_idx * probs.shape[0]
            batch_indices = range(start, start + probs.shape[0])
        for row, index in enumerate(batch_indices):
            index = int(index)
            path = self.paths[index] if self.paths is not None else f"{self.split_name}[{index}]"
            label = self._name(int(self.labels[index])) if self.labels is not None else ""
            cells: list[Any] = [index, path, label]
            for c, p in zip(top_c[row].tolist(), top_p[row].tolist()):
                cells += [self._name(c), f"{p:.6f}"]
            self._writer.writerow(cells)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
