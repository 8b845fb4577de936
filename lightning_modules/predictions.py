"""The per-sample predictions file of a test run: ``predictions.pt`` and ``predictions.npz``.

``predictions.pt`` holds ``{"logits": (N, C) float32, "labels": (N,) int64, "class_names": [...],
"indices": (N,) int64}`` (``indices``: the dataset index of each row; rows are in dataset order);
``predictions.npz`` holds the same arrays without the names. :class:`~lightning_modules.analysis.TestAnalysis`
writes them; ``python -m tools.wilcoxon`` and ``python -m tools.analysis`` read them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["PredictionsFileError", "find_predictions", "load_predictions", "save_predictions"]

FILE_NAMES = ("predictions.pt", "predictions.npz")


class PredictionsFileError(ValueError):
    """A predictions file that is missing or does not hold logits and labels."""

    user_error = True


def save_predictions(
    out_dir: str | os.PathLike,
    logits: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    indices: Tensor | None = None,
) -> dict[str, Path]:
    """Write ``predictions.pt`` and ``predictions.npz`` into ``out_dir``; returns ``{kind: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logits, labels = logits.float().cpu(), labels.long().cpu()
    arrays = {"logits": logits, "labels": labels}
    if indices is not None:
        arrays["indices"] = indices.long().cpu()
    files = {"predictions": out / FILE_NAMES[0], "predictions_npz": out / FILE_NAMES[1]}
    torch.save({**arrays, "class_names": list(class_names)}, files["predictions"])
    np.savez_compressed(files["predictions_npz"], **{k: v.numpy() for k, v in arrays.items()})
    return files


def find_predictions(path: str | os.PathLike) -> Path:
    """``path`` itself, or the predictions file inside the run folder ``path``."""
    path = Path(path)
    if path.is_dir():
        for name in FILE_NAMES:
            if (path / name).is_file():
                return path / name
    if not path.is_file():
        raise PredictionsFileError(
            f"predictions file '{path}' not found (TestAnalysis writes <run dir>/predictions.pt)"
        )
    return path


def load_predictions(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read ``(logits, labels)`` from a ``predictions.pt`` / ``.npz`` file (or a run folder holding one)."""
    file = find_predictions(path)
    if file.suffix == ".npz":
        with np.load(file) as data:
            if "logits" not in data or "labels" not in data:
                raise PredictionsFileError(f"'{file}' must hold arrays 'logits' (N, C) and 'labels' (N,)")
            return torch.from_numpy(data["logits"]), torch.from_numpy(data["labels"])
    obj = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "logits" not in obj or "labels" not in obj:
        raise PredictionsFileError(f"'{file}' must hold a dict with 'logits' (N, C) and 'labels' (N,)")
    return obj["logits"], obj["labels"]


def load_class_names(path: str | os.PathLike) -> list[str] | None:
    """The class names stored in a ``predictions.pt`` (``None`` for ``.npz`` files, which have none)."""
    file = find_predictions(path)
    if file.suffix != ".pt":
        return None
    names = torch.load(file, map_location="cpu", weights_only=True).get("class_names")
    return [str(n) for n in names] if names else None
