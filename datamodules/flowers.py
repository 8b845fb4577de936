"""Flower datasets: Oxford Flowers-102 (ACANet) and the 5-class TensorFlow ``flower_photos`` set (FFT).

**Flowers-102** (Nilsback & Zisserman, 2008), the layout torchvision's ``Flowers102`` reads (``root`` is
``flowers-102/`` or its parent)::

    flowers-102/
      jpg/image_00001.jpg ... image_08189.jpg
      imagelabels.mat     labels: 1 x 8189, class ids 1..102 (image i is jpg/image_{i:05d}.jpg)
      setid.mat           trnid (1,020), valid (1,020), tstid (6,149): 1-based image ids

Split as in ACANet Table 1: train + val (2,040) for training, test (6,149). Validation (``val_split``, see
:mod:`datamodules.base`): by default 204 of the 2,040 held out (1,836 / 204 / 6,149); ``official`` trains on
``trnid`` (1,020) and validates on ``valid`` (1,020); ``test`` is the papers' protocol (validation = test).
``download: true`` fetches it with torchvision into ``root/flowers-102/`` (never in tests).

**Flowers (5 classes)**: ``flower_photos/{daisy,dandelion,roses,sunflowers,tulips}/*.jpg`` (3,670 photos,
daisy 633, dandelion 898, roses 641, sunflowers 699, tulips 799, from the TensorFlow tutorials). It has no
official split; the FFT paper's Table I gives 2,204 train / 734 test and nothing else. ``split: fft`` (the
default) is the one reading we found that yields both figures exactly, a 60 / 20 / 20 split:

* per class, ``floor(0.4 n_c)`` images are held out (integer truncation, as TensorFlow's ``int(split *
  n)``), the rest, ``n_c - floor(0.4 n_c)`` = ``ceil(0.6 n_c)``, train: 380 + 539 + 385 + 420 + 480 = 2,204;
* of the 1,466 held out, ``floor(0.2 N)`` = 734 images (20 % of 3,670, TensorFlow's ``validation_split=0.2``
  count) are the test set, drawn stratified and seeded (``split_seed``);
* the other 732 are the validation split (``val_split: holdout``).

Simpler readings miss: 75 / 25 of all images gives 2,752 / 918; TensorFlow's 80 / 20 gives 2,936 / 734 and
a further 75 / 25 of the 2,936 gives 2,202; per-class 60 / 20 / 20 with one rounding rule gives test 731,
735 or 736. ``split: ratio`` / ``per_class`` with ``split_ratios`` are the generic alternatives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from datamodules.base import ClassificationDataModule, DataConfigError, ImageListDataset, SplitParts
from datamodules.image_folder import ImageFolderDataModule

FLOWERS5_CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def fft_flowers_split(labels: list[int], seed: int, dataset: str = "Flowers-5") -> list[list[int]]:
    """``[train, val, test]`` indices of the FFT paper's Flowers split (see the module docstring).

    Per class ``floor(0.4 n_c)`` held out (the rest trains); ``floor(0.2 N)`` of the held-out pool is the test
    set (stratified, ``train_test_split(random_state=seed)``); the remaining held-out images validate.
    """
    from sklearn.model_selection import train_test_split

    labels_arr = np.asarray(labels)
    train: list[int] = []
    held: list[int] = []
    for label in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == label)
        n_held = 2 * len(members) // 5  # floor(0.4 n_c), in integers
        if n_held < 2:
            raise DataConfigError(
                f"{dataset}: class {int(label)} has {len(members)} image(s): too few for split: fft"
            )
        kept, out = train_test_split(members, test_size=n_held, random_state=seed)
        train += kept.tolist()
        held += out.tolist()
    held_arr = np.asarray(held)
    n_test = len(labels_arr) // 5  # floor(0.2 N)
    try:
        val, test = train_test_split(
            held_arr, test_size=n_test, stratify=labels_arr[held_arr], random_state=seed
        )
    except ValueError as err:
        raise DataConfigError(
            f"{dataset}: cannot draw the {n_test} test images of split: fft: {err}"
        ) from None
    return [sorted(int(i) for i in part) for part in (train, val, test)]


class Flowers102DataModule(ClassificationDataModule):
    """Oxford Flowers-102, 102 classes; train+val (2,040) / test (6,149); official trnid / valid halves."""

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

    def _build_parts(self) -> SplitParts:
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

        return SplitParts(
            train=ImageListDataset(samples(ids["trnid"] + ids["valid"]), self.train_transform),
            test=ImageListDataset(samples(ids["tstid"]), self.eval_transform),
            official=(
                ImageListDataset(samples(ids["trnid"]), self.train_transform),
                ImageListDataset(samples(ids["valid"]), self.eval_transform),
            ),
        )


class Flowers5DataModule(ImageFolderDataModule):
    """TensorFlow ``flower_photos`` (5 classes); default: the FFT paper's 2,204 / 734 split (+ 732 val).

    Args:
        root: ``flower_photos/`` or the folder holding it.
        split: ``fft`` (the FFT paper's Table I split, see the module docstring), ``ratio`` or
            ``per_class`` (generic splits by ``split_ratios``, see :class:`ImageFolderDataModule`).
        split_ratios: ``[train, test]`` or ``[train, val, test]``; only (and required) with ``ratio`` /
            ``per_class``.
        **kwargs: the remaining :class:`~datamodules.base.ClassificationDataModule` arguments
            (``split_seed`` seeds every split).
    """

    dataset_name = "Flowers (5 classes, flower_photos)"
    homepage = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
    splits = ("fft", "ratio", "per_class")

    def __init__(
        self,
        root: str = "data/flower_photos",
        split: Literal["fft", "ratio", "per_class"] = "fft",
        split_ratios: tuple[float, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        if split == "fft" and split_ratios is not None:
            raise DataConfigError(
                "Flowers-5: split: fft is a fixed 2,204 / 732 / 734 split; "
                f"split_ratios={list(split_ratios)} only applies to split: ratio or per_class"
            )
        if split in ("ratio", "per_class") and split_ratios is None:
            raise DataConfigError(f"Flowers-5: split: {split} needs split_ratios, e.g. [0.75, 0.25]")
        nested = Path(os.path.expanduser(root)) / "flower_photos"
        if nested.is_dir():
            root = str(nested)
        super().__init__(
            root=root,
            num_classes=5,
            split=split,  # type: ignore[arg-type]
            split_ratios=split_ratios,  # type: ignore[arg-type]
            **kwargs,
        )
        self.class_names = list(FLOWERS5_CLASSES)

    def _split_indices(self, labels: list[int]) -> list[list[int]]:
        if self.split == "fft":
            return fft_flowers_split(labels, self.split_seed, self.dataset_name)
        return super()._split_indices(labels)

    def _discover_num_classes(self, num_classes: int | None) -> int:
        # The five classes are fixed; the folders are checked at setup, where a wrong layout is a
        # DatasetLayoutError like every other dataset's.
        return 5

    @property
    def expected_layout(self) -> str:  # type: ignore[override]
        return (
            "flower_photos/\n  daisy/*.jpg\n  dandelion/*.jpg\n  roses/*.jpg\n"
            "  sunflowers/*.jpg\n  tulips/*.jpg"
        )

    def _check_layout(self) -> None:
        self.require(*FLOWERS5_CLASSES)
        found = [p.name for p in Path(self.root).iterdir() if p.is_dir() and not p.name.startswith(".")]
        extra = sorted(set(found) - set(FLOWERS5_CLASSES))
        if extra:
            raise self.layout_error(os.path.join(self.root, extra[0]), f"unexpected class folder(s) {extra}:")
        self.class_names = list(FLOWERS5_CLASSES)
