"""CUB-200-2011 (Caltech-UCSD Birds) in the official ``CUB_200_2011`` layout.

Layout (``root`` is ``CUB_200_2011/`` or its parent)::

    CUB_200_2011/
      images.txt               "<image_id> <relative path>"
      image_class_labels.txt   "<image_id> <class_id (1..200)>"
      train_test_split.txt     "<image_id> <is_training_image (1/0)>"
      classes.txt              "<class_id> <class name>"
      images/<class>/<name>.jpg

Split: the official one, 5,994 train / 5,794 test (ACANet Table 1). Validation (``val_split``): by default
599 training images held out (5,395 / 599 / 5,794); ``val_split: test`` is the papers' protocol (no
validation split). Bounding boxes and parts are not used.
"""

from __future__ import annotations

import os
from typing import Any

from datamodules.base import ClassificationDataModule, DatasetLayoutError, ImageListDataset, SplitParts


def read_id_table(path: str) -> dict[int, str]:
    """Read a CUB-style ``"<id> <value>"`` file into ``{id: value}``."""
    table: dict[int, str] = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                key, _, value = line.strip().partition(" ")
                if not key.isdigit() or not value.strip():
                    bad = line.strip()[:60]
                    raise DatasetLayoutError(
                        "CUB-200-2011", path, detail=f"line {number} is not '<id> <value>' ({bad!r}) in"
                    )
                table[int(key)] = value.strip()
    return table


class CUB200DataModule(ClassificationDataModule):
    """CUB-200-2011, 200 bird species, official 5,994 / 5,794 train / test split."""

    dataset_name = "CUB-200-2011"
    homepage = "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)"
    expected_layout = (
        "CUB_200_2011/\n  images.txt\n  image_class_labels.txt\n  train_test_split.txt\n  classes.txt\n"
        "  images/<class>/<name>.jpg"
    )
    files = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")

    def __init__(self, root: str = "data/CUB_200_2011", **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.num_classes = 200

    @property
    def data_dir(self) -> str:
        return self.locate("CUB_200_2011", "images.txt")

    def _check_layout(self) -> None:
        if not os.path.isdir(self.root):
            raise self.layout_error(self.root, "dataset root not found")
        for rel in self.files:
            if not os.path.exists(os.path.join(self.data_dir, rel)):
                raise self.layout_error(os.path.join(self.data_dir, rel))

    def _build_parts(self) -> SplitParts:
        base = self.data_dir
        paths = read_id_table(os.path.join(base, "images.txt"))
        labels = read_id_table(os.path.join(base, "image_class_labels.txt"))
        is_train = read_id_table(os.path.join(base, "train_test_split.txt"))
        classes = read_id_table(os.path.join(base, "classes.txt"))
        self.class_names = [classes.get(i, str(i)).split(".", 1)[-1] for i in range(1, self.num_classes + 1)]
        train: list[tuple[str, int]] = []
        test: list[tuple[str, int]] = []
        for image_id, rel in sorted(paths.items()):
            if image_id not in labels or image_id not in is_train:
                raise self.layout_error(
                    os.path.join(base, "image_class_labels.txt"),
                    f"image id {image_id} has no label or split entry in",
                )
            if not labels[image_id].isdigit():
                raise self.layout_error(
                    os.path.join(base, "image_class_labels.txt"),
                    f"image id {image_id} has class id {labels[image_id][:40]!r}, not a number, in",
                )
            label = int(labels[image_id]) - 1
            if not 0 <= label < self.num_classes:
                raise self.layout_error(
                    os.path.join(base, "image_class_labels.txt"), f"class id {label + 1} outside 1..200 in"
                )
            sample = (os.path.join(base, "images", rel), label)
            (train if is_train[image_id].strip() == "1" else test).append(sample)
        missing = next((p for p, _ in train + test if not os.path.isfile(p)), None)
        if missing:
            raise self.layout_error(missing, "image listed in images.txt not found")
        return SplitParts(
            train=ImageListDataset(train, self.train_transform),
            test=ImageListDataset(test, self.eval_transform),
        )
