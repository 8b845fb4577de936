"""Embedded quickstart dataset: scikit-learn's bundled handwritten digits (no download).

``sklearn.datasets.load_digits``: 1,797 real 8x8 grey-scale scans of handwritten digits (UCI "Optical
Recognition of Handwritten Digits", 10 classes, pixel values 0..16), shipped inside scikit-learn. They are
upsampled (bilinear) to ``image_size`` once at setup, replicated to 3 channels and kept in memory as uint8
tensors, so an epoch costs milliseconds and a small CNN reaches well above chance in seconds on a CPU.

Split: seeded stratified ``split_ratios`` (default 70/15/15 -> 1,257 / 270 / 270; the middle part is the
held-out validation split). With two ratios ``[train, test]`` the validation split is carved from train by
``val_split`` / ``val_fraction`` like every other dataset (see :mod:`datamodules.base`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from datamodules.base import (
    ClassificationDataModule,
    SplitParts,
    TensorImageDataset,
    TrainCrop,
    stratified_split,
)

DIGITS_MEAN: tuple[float, float, float] = (0.305, 0.305, 0.305)
DIGITS_STD: tuple[float, float, float] = (0.33, 0.33, 0.33)  # at 32x32 (0.376 at 8x8)


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's 8x8 handwritten digits, upsampled to ``image_size``, 10 classes, in memory.

    Args:
        root: unused (the data ships with scikit-learn); kept so every datamodule takes ``root``.
        batch_size: batch size per device.
        num_workers: dataloader workers (0 is fastest for this in-memory set).
        image_size: side the 8x8 digits are upsampled to.
        train_crop: training crop (default ``random``: pad ``crop_padding`` and random-crop back).
        crop_padding: zero padding before the random crop.
        hflip: horizontal-flip probability (default 0: digits are not mirror-symmetric).
        mean: normalisation mean (default: the digits' own pixel statistics).
        std: normalisation standard deviation.
        split_ratios: ``[train, val, test]`` fractions (stratified), or ``[train, test]`` (validation then by
            ``val_split``).
        **kwargs: the remaining :class:`~datamodules.base.ClassificationDataModule` arguments.
    """

    dataset_name = "Digits (sklearn.datasets.load_digits)"
    homepage = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"
    eval_crop_ratio = 1.0

    def __init__(
        self,
        root: str = "",
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 32,
        train_crop: TrainCrop = "random",
        crop_padding: int = 3,
        hflip: float = 0.0,
        mean: tuple[float, float, float] = DIGITS_MEAN,
        std: tuple[float, float, float] = DIGITS_STD,
        split_ratios: tuple[float, ...] = (0.7, 0.15, 0.15),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            image_size=image_size,
            train_crop=train_crop,
            crop_padding=crop_padding,
            hflip=hflip,
            mean=mean,
            std=std,
            **kwargs,
        )
        self.split_ratios = tuple(split_ratios)
        self.num_classes = 10
        self.class_names = [str(d) for d in range(10)]

    def _build_parts(self) -> SplitParts:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels = (
            torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        )  # (N, 1, 8, 8) in [0, 1]
        if self.image_size != 8:
            pixels = F.interpolate(
                pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        labels = torch.as_tensor(bunch.target, dtype=torch.long)
        parts = stratified_split(labels.tolist(), self.split_ratios, self.split_seed, self.dataset_name)
        idx = [torch.as_tensor(p, dtype=torch.long) for p in parts]
        train, test = idx[0], idx[-1]
        return SplitParts(
            train=TensorImageDataset(images[train], labels[train], self.train_transform),
            test=TensorImageDataset(images[test], labels[test], self.eval_transform),
            val=TensorImageDataset(images[idx[1]], labels[idx[1]], self.eval_transform)
            if len(idx) == 3
            else None,
        )
