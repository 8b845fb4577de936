"""Flower datasets: Oxford Flowers-102 (ACANet) and the 5-class TensorFlow ``flower_photos`` set (FFT).

**Flowers-102** (Nilsback & Zisserman, 2008), the layout torchvision's ``Flowers102`` reads (``root`` is
``flowers-102/`` or its parent)::

    flowers-102/
      jpg/image_00001.jpg ... image_08189.jpg
      imagelabels.mat     labels: 1 x 8189, class ids 1..102 (image i is jpg/image_{i:05d}.jpg)
      setid.mat           trnid (1,020), valid (1,020), tstid (6,149): 1-based image ids

Split as in ACANet Table 1: train + val (2,040) for training, test (6,149); the test set also serves as
validation. ``download: true`` fetches it with torchvision into ``root/flowers-102/`` (never in tests).

**Flowers (5 classes)**: ``flower_photos/{daisy,dandelion,roses,sunflowers,tulips}/*.jpg`` (3,670 photos,
from the TensorFlow tutorials). It has no official split; the FFT paper's Table I uses 2,204 train / 734 test
(75 / 25 of 2,938 images). We use a seeded stratified ``split_ratios`` split, default ``[0.75, 0.25]`` (val
doubles as test), over all images found.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import ClassificationDataModule, ImageListDataset
from datamodules.image_folder import ImageFolderDataModule

FLOWERS5_CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


class Flowers102DataModule(ClassificationDataModule):
    """Oxford Flowers-102, 102 classes; train+val (2,040) / test (6,149) (test doubles as val)."""

    dataset_name = "Oxford Flowers-102"
    homepage = (
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat, setid.mat)"
    )
    expected_layout = "flowers-102/\n  jpg/image_00001.jpg ...\n  imagelabels.mat\n  setid.mat"
    torchvision_download = "Flowers102"

    def __init__(self, root: str = "data/flowers-102", **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.num_classes = 102

    @property
    def data_dir(self) -> str:
        return self.locate("flowers-102", "setid.mat")

    def _check_layout(self) -> None:
        if not os.path.isdir(self.root):
            raise self.layout_error(self.root, "dataset root not found")
        for rel in ("imagelabels.mat", "setid.mat", "jpg"):
            if not os.path.exists(os.path.join(self.data_dir, rel)):
                raise self.layout_error(os.path.join(self.data_dir, rel))

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        from scipy.io import loadmat

        base = self.data_dir
        try:
            labels = np.atleast_1d(loadmat(os.path.join(base, "imagelabels.mat"), squeeze_me=True)["labels"])
            set_ids = loadmat(os.path.join(base, "setid.mat"), squeeze_me=True)
            ids = {
                key: np.atleast_1d(set_ids[key]).astype(int).tolist() for key in ("trnid", "valid", "tstid")
            }
        except KeyError as err:
            raise self.layout_error(
                base, f"missing variable {err} in imagelabels.mat/setid.mat under"
            ) from None

        def samples(image_ids: list[int]) -> list[tuple[str, int]]:
            out = []
            for i in image_ids:
                if not 1 <= i <= len(labels):
                    raise self.layout_error(os.path.join(base, "setid.mat"), f"image id {i} has no label in")
                label = int(labels[i - 1]) - 1
                if not 0 <= label < self.num_classes:
                    raise self.layout_error(
                        os.path.join(base, "imagelabels.mat"), f"class {label + 1} outside 1..102 in"
                    )
                out.append((os.path.join(base, "jpg", f"image_{i:05d}.jpg"), label))
            missing = next((p for p, _ in out if not os.path.isfile(p)), None)
            if missing:
                raise self.layout_error(missing, "image listed in setid.mat not found")
            return out

        test_set = ImageListDataset(samples(ids["tstid"]), self.eval_transform)
        train = samples(ids["trnid"] + ids["valid"])
        return ImageListDataset(train, self.train_transform), test_set, test_set


class Flowers5DataModule(ImageFolderDataModule):
    """TensorFlow ``flower_photos`` (5 classes), seeded stratified split.

    Args:
        root: ``flower_photos/`` or the folder holding it.
        split_ratios: ``[train, test]`` (val doubles as test) or ``[train, val, test]``.
        split_seed: seed of the split.
        **kwargs: the remaining :class:`~datamodules.base.ClassificationDataModule` arguments.
    """

    dataset_name = "Flowers (5 classes, flower_photos)"
    homepage = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"

    def __init__(
        self,
        root: str = "data/flower_photos",
        split_ratios: tuple[float, ...] = (0.75, 0.25),
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        nested = Path(os.path.expanduser(root)) / "flower_photos"
        if nested.is_dir():
            root = str(nested)
        super().__init__(
            root=root,
            num_classes=5,
            split="ratio",
            split_ratios=split_ratios,
            split_seed=split_seed,
            **kwargs,
        )
        self.class_names = list(FLOWERS5_CLASSES)

    def _discover_num_classes(self, num_classes: int | None) -> int:
        # The five classes are fixed; the folders are checked at setup, where a wrong layout is a
        # DatasetLayoutError like every other dataset's.
        return 5

    @property
    def expected_layout(self) -> str:  # type: ignore[override]
        return "flower_photos/\n  daisy/*.jpg\n  dandelion/*.jpg\n  roses/*.jpg\n  sunflowers/*.jpg\n  tulips/*.jpg"

    def _check_layout(self) -> None:
        self.require(*FLOWERS5_CLASSES)
        found = [p.name for p in Path(self.root).iterdir() if p.is_dir() and not p.name.startswith(".")]
        extra = sorted(set(found) - set(FLOWERS5_CLASSES))
        if extra:
            raise self.layout_error(os.path.join(self.root, extra[0]), f"unexpected class folder(s) {extra}:")
        self.class_names = list(FLOWERS5_CLASSES)
