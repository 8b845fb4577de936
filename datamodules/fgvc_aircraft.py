"""FGVC-Aircraft 2013b (Maji et al.) in the official ``fgvc-aircraft-2013b`` layout.

Layout (``root`` is ``fgvc-aircraft-2013b/`` or its parent)::

    fgvc-aircraft-2013b/data/
      variants.txt                     100 variant names, one a line (families.txt: 70, manufacturers.txt: 30)
      images_variant_trainval.txt      "<image id> <variant name>"   (6,667 lines)
      images_variant_test.txt          "<image id> <variant name>"   (3,333 lines)
      images/<image id>.jpg

Split: the standard fine-grained protocol, trainval (6,667) for training and test (3,333). Validation
(``val_split``): by default 667 trainval images held out (6,000 / 667 / 3,333); ``official`` uses the
shipped ``train`` (3,334) / ``val`` (3,333) halves of trainval; ``test`` is the papers' protocol.
Class index = line number in ``variants.txt`` (as torchvision). The images keep their 20-pixel copyright
banner at the bottom (torchvision does the same); ``annotation_level`` selects variant (100), family (70)
or manufacturer (30) labels. ``download: true`` fetches the archive with torchvision into
``root/fgvc-aircraft-2013b/`` (never in tests).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from datamodules.base import ClassificationDataModule, DataConfigError, ImageListDataset, SplitParts

_LEVELS = {
    "variant": ("variants.txt", 100),
    "family": ("families.txt", 70),
    "manufacturer": ("manufacturers.txt", 30),
}


class FGVCAircraftDataModule(ClassificationDataModule):
    """FGVC-Aircraft, 100 variants (default), trainval / test split (official train / val halves).

    Args:
        root: ``fgvc-aircraft-2013b/`` or the folder holding it.
        annotation_level: ``variant`` (100 classes), ``family`` (70) or ``manufacturer`` (30).
        **kwargs: the remaining :class:`~datamodules.base.ClassificationDataModule` arguments.
    """

    dataset_name = "FGVC-Aircraft"
    homepage = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)"
    expected_layout = (
        "fgvc-aircraft-2013b/data/\n  variants.txt\n  images_variant_trainval.txt\n"
        "  images_variant_test.txt\n  images/<image id>.jpg"
    )
    torchvision_download = "FGVCAircraft"

    def __init__(
        self,
        root: str = "data/fgvc-aircraft-2013b",
        annotation_level: Literal["variant", "family", "manufacturer"] = "variant",
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if annotation_level not in _LEVELS:
            raise DataConfigError(
                f"annotation_level must be variant|family|manufacturer, got {annotation_level!r}"
            )
        self.annotation_level = annotation_level
        self.num_classes = _LEVELS[annotation_level][1]

    @property
    def data_dir(self) -> str:
        return os.path.join(self.locate("fgvc-aircraft-2013b", "data"), "data")

    def _split_file(self, split: str) -> str:
        return os.path.join(self.data_dir, f"images_{self.annotation_level}_{split}.txt")

    def _check_layout(self) -> None:
        if not os.path.isdir(self.root):
            raise self.layout_error(self.root, "dataset root not found")
        for path in (
            os.path.join(self.data_dir, _LEVELS[self.annotation_level][0]),
            self._split_file("trainval"),
            self._split_file("test"),
            os.path.join(self.data_dir, "images"),
        ):
            if not os.path.exists(path):
                raise self.layout_error(path)

    def _read_split(self, split: str, index: dict[str, int]) -> list[tuple[str, int]]:
        samples = []
        path = self._split_file(split)
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                image_id, _, name = line.strip().partition(" ")
                if name not in index:
                    raise self.layout_error(
                        path, f"line {line_no}: class {name!r} not in {_LEVELS[self.annotation_level][0]}, in"
                    )
                samples.append((os.path.join(self.data_dir, "images", f"{image_id}.jpg"), index[name]))
        missing = next((p for p, _ in samples if not os.path.isfile(p)), None)
        if missing:
            raise self.layout_error(missing, f"image listed in {os.path.basename(path)} not found")
        return samples

    def _build_parts(self) -> SplitParts:
        with open(os.path.join(self.data_dir, _LEVELS[self.annotation_level][0])) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) > self.num_classes:
            raise self.layout_error(
                os.path.join(self.data_dir, _LEVELS[self.annotation_level][0]),
                f"{len(names)} classes (expected {self.num_classes}) in",
            )
        self.class_names = names
        index = {name: i for i, name in enumerate(names)}
        parts = SplitParts(
            train=ImageListDataset(self._read_split("trainval", index), self.train_transform),
            test=ImageListDataset(self._read_split("test", index), self.eval_transform),
        )
        if self.val_split == "official":
            for split in ("train", "val"):
                if not os.path.isfile(self._split_file(split)):
                    raise self.layout_error(self._split_file(split), "val_split: official needs")
            parts.official = (
                ImageListDataset(self._read_split("train", index), self.train_transform),
                ImageListDataset(self._read_split("val", index), self.eval_transform),
            )
        return parts
