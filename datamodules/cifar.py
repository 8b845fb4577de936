"""CIFAR-10 and CIFAR-100 in the official "python version" binary format (as torchvision reads it).

Layout (``root`` is the folder holding ``cifar-10-batches-py/``, or that folder itself)::

    cifar-10-batches-py/                 cifar-100-python/
      data_batch_1 ... data_batch_5        train
      test_batch                           test
      batches.meta                         meta

Each batch is a pickled dict with ``data`` (N x 3072 uint8, channel-major 32x32) and ``labels``
(``fine_labels`` for CIFAR-100). Split: the official 50,000 train / 10,000 test. Validation
(``val_split``, see :mod:`datamodules.base`): by default 5,000 training images held out (45,000 / 5,000 /
10,000); ``val_split: test`` is the papers' protocol (the papers have no validation split).
``download: true`` fetches the archive with torchvision (never in tests).

Default augmentation is the standard CIFAR recipe: random crop 32 with 4 pixels of zero padding plus
horizontal flip. With a larger ``image_size`` the images are first resized to it (bilinear), then
random-cropped with the same padding; evaluation resizes without cropping.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, ClassVar

import numpy as np
import torch

from datamodules.base import ClassificationDataModule, SplitParts, TensorImageDataset, TrainCrop

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)


def read_cifar_batch(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR batch into ``(N, 3, 32, 32)`` uint8 images and ``(N,)`` labels."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    return data, labels


class _CIFARDataModule(ClassificationDataModule):
    """Shared loader for the two CIFAR variants (see the module docstring)."""

    folder: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    meta_file: ClassVar[str]
    meta_key: ClassVar[str]
    label_key: ClassVar[str]
    fixed_num_classes: ClassVar[int]
    eval_crop_ratio = 1.0

    def __init__(
        self,
        root: str = "data",
        image_size: int = 32,
        train_crop: TrainCrop = "random",
        crop_padding: int = 4,
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root,
            image_size=image_size,
            train_crop=train_crop,
            crop_padding=crop_padding,
            mean=mean,
            std=std,
            **kwargs,
        )
        self.num_classes = self.fixed_num_classes

    @property
    def data_dir(self) -> str:
        return self.locate(self.folder, self.meta_file)

    def _check_layout(self) -> None:
        if not os.path.isdir(self.root):
            raise self.layout_error(self.root, "dataset root not found (set download: true to fetch it)")
        base = self.data_dir
        for name in (self.meta_file, *self.train_files, *self.test_files):
            if not os.path.isfile(os.path.join(base, name)):
                raise self.layout_error(os.path.join(base, name))

    def _read(self, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_cifar_batch(os.path.join(self.data_dir, f), self.label_key) for f in files]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise self.layout_error(self.data_dir, f"labels outside [0, {self.num_classes}) in")
        return images, labels

    def _build_parts(self) -> SplitParts:
        with open(os.path.join(self.data_dir, self.meta_file), "rb") as f:
            self.class_names = list(pickle.load(f, encoding="latin1")[self.meta_key])
        train = TensorImageDataset(*self._read(self.train_files), transform=self.train_transform)
        test = TensorImageDataset(*self._read(self.test_files), transform=self.eval_transform)
        return SplitParts(train=train, test=test)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 10 classes, 50,000 train / 10,000 test images of 32x32."""

    dataset_name = "CIFAR-10"
    homepage = "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz), or download: true"
    expected_layout = (
        "<root>/cifar-10-batches-py/\n  data_batch_1 ... data_batch_5\n  test_batch\n  batches.meta"
    )
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    meta_key = "label_names"
    label_key = "labels"
    fixed_num_classes = 10
    torchvision_download = "CIFAR10"

    def __init__(
        self,
        root: str = "data",
        mean: tuple[float, float, float] = CIFAR10_MEAN,
        std: tuple[float, float, float] = CIFAR10_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, mean=mean, std=std, **kwargs)
        self.class_names = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (fine labels): 100 classes, 50,000 train / 10,000 test images."""

    dataset_name = "CIFAR-100"
    homepage = "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-100-python.tar.gz), or download: true"
    expected_layout = "<root>/cifar-100-python/\n  train\n  test\n  meta"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    meta_key = "fine_label_names"
    label_key = "fine_labels"
    fixed_num_classes = 100
    torchvision_download = "CIFAR100"

    def __init__(
        self,
        root: str = "data",
        mean: tuple[float, float, float] = CIFAR100_MEAN,
        std: tuple[float, float, float] = CIFAR100_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, mean=mean, std=std, **kwargs)
