"""A CSV logger whose resumed run continues the same ``metrics.csv`` (Lightning's deletes it)."""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _ContinuingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` (keeping its columns) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(set(header))


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` for the run folder: ``<save_dir>/<name>/metrics.csv`` without ``version_N`` folders.

    The CLI uses it in place of ``lightning.pytorch.loggers.CSVLogger`` (same arguments). With
    ``resume=True`` (``fit --ckpt_path ...``) the rows of the interrupted run are kept and new rows are
    appended; a fresh run starts a new file.

    Args:
        resume: continue an existing ``metrics.csv``.
        **kwargs: :class:`~lightning.pytorch.loggers.CSVLogger` arguments.
    """

    def __init__(self, *args: Any, resume: bool = False, **kwargs: Any) -> None:
        if kwargs.get("version") is None:
            kwargs["version"] = ""
        super().__init__(*args, **kwargs)
        self.resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        writer_cls = _ContinuingWriter if self.resume else ExperimentWriter
        self._experiment = writer_cls(log_dir=os.path.normpath(self.log_dir))
        return self._experiment
