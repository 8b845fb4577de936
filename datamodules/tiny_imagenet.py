"""Tiny ImageNet (Stanford CS231n): 200 classes, 64x64 images, in the official ``tiny-imagenet-200`` layout.

Layout (``root`` is ``tiny-imagenet-200/`` or its parent)::

    tiny-imagenet-200/
      wnids.txt                      200 WordNet ids, one a line
      words.txt                      "<wnid>\\t<names>" for all of WordNet (names of the 200 looked up here)
      train/<wnid>/images/*.JPEG     500 a class (train/<wnid>/<wnid>_boxes.txt is ignored)
      val/images/*.JPEG              10,000
      val/val_annotations.txt        "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
      test/images/*.JPEG             unlabelled: not used

Split: train (100,000) / val (10,000). The official test split has no public labels, so - as in the FFT
paper's Table I (100,000 / 10,000) - the labelled val split is the test set. Validation (``val_split``): by
default 10,000 training images held out (90,000 / 10,000 / 10,000); ``val_split: test`` is the papers'
protocol (validation = the labelled val folder = test).
Class index = position of the wnid in the sorted wnid list (the order ``ImageFolder`` gives ``train/``).
"""

from __future__ import annotations

import os
from typing import Any

from datamodules.base import ClassificationDataModule, ImageListDataset, SplitParts, TrainCrop, is_image_file


class TinyImageNetDataModule(ClassificationDataModule):
    """Tiny ImageNet, 200 classes; the labelled val folder is the test set.

    Args:
        root: ``tiny-imagenet-200/`` or the folder holding it.
        image_size: network input side (the images are 64x64).
        train_crop: training crop (default ``random`` with ``crop_padding``).
        crop_padding: zero padding before the random crop.
        **kwargs: the remaining :class:`~datamodules.base.ClassificationDataModule` arguments.
    """

    dataset_name = "Tiny-ImageNet"
    homepage = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    expected_layout = (
        "tiny-imagenet-200/\n  wnids.txt\n  words.txt\n  train/<wnid>/images/*.JPEG\n"
        "  val/images/*.JPEG\n  val/val_annotations.txt"
    )
    eval_crop_ratio = 1.0

    def __init__(
        self,
        root: str = "data/tiny-imagenet-200",
        image_size: int = 64,
        train_crop: TrainCrop = "random",
        crop_padding: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root, image_size=image_size, train_crop=train_crop, crop_padding=crop_padding, **kwargs
        )
        self.num_classes = 200

    @property
    def data_dir(self) -> str:
        return self.locate("tiny-imagenet-200", "wnids.txt")

    def _check_layout(self) -> None:
        if not os.path.isdir(self.root):
            raise self.layout_error(self.root, "dataset root not found")
        base = self.data_dir
        for rel in (
            "wnids.txt",
            "train",
            os.path.join("val", "images"),
            os.path.join("val", "val_annotations.txt"),
        ):
            if not os.path.exists(os.path.join(base, rel)):
                raise self.layout_error(os.path.join(base, rel))

    def _build_parts(self) -> SplitParts:
        base = self.data_dir
        with open(os.path.join(base, "wnids.txt")) as f:
            wnids = sorted({line.strip() for line in f if line.strip()})
        if len(wnids) != self.num_classes:  # a partial copy would train a different, smaller task
            raise self.layout_error(
                os.path.join(base, "wnids.txt"),
                f"{len(wnids)} distinct wnids (expected {self.num_classes}) in",
            )
        index = {w: i for i, w in enumerate(wnids)}
        words: dict[str, str] = {}
        words_path = os.path.join(base, "words.txt")
        if os.path.isfile(words_path):
            with open(words_path) as f:
                for line in f:
                    wnid, _, names = line.rstrip("\n").partition("\t")
                    if wnid in index:
                        words[wnid] = names
        self.class_names = [words.get(w, w) for w in wnids]

        train: list[tuple[str, int]] = []
        for wnid in wnids:
            folder = os.path.join(base, "train", wnid, "images")
            if not os.path.isdir(folder):
                raise self.layout_error(folder)
            files = sorted(f for f in os.listdir(folder) if is_image_file(f))
            if not files:
                raise self.layout_error(folder, "class folder holds no image file")
            train += [(os.path.join(folder, f), index[wnid]) for f in files]

        val: list[tuple[str, int]] = []
        with open(os.path.join(base, "val", "val_annotations.txt")) as f:
            for line_no, line in enumerate(f, 1):
                fields = line.split("\t")
                if len(fields) < 2 or not line.strip():
                    continue
                if fields[1] not in index:
                    raise self.layout_error(
                        os.path.join(base, "val", "val_annotations.txt"),
                        f"line {line_no}: wnid {fields[1]} not in wnids.txt",
                    )
                val.append((os.path.join(base, "val", "images", fields[0]), index[fields[1]]))
        missing = next((p for p, _ in val if not os.path.isfile(p)), None)
        if missing:
            raise self.layout_error(missing, "image listed in val_annotations.txt not found")
        return SplitParts(
            train=ImageListDataset(train, self.train_transform),
            test=ImageListDataset(val, self.eval_transform),
        )
