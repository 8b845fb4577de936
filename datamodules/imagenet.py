"""ImageNet-1k (ILSVRC-2012) in the usual class-folder layout (TokenFusion).

Layout (``root`` holds ``train/`` and ``val/``)::

    <root>/
      train/n01440764/*.JPEG ...   1,000 wnid folders, 1,281,167 images
      val/n01440764/*.JPEG ...     1,000 wnid folders, 50,000 images

The official val archive is flat; sort it into wnid folders first (e.g. the widely used ``valprep.sh``
from the PyTorch ImageNet example, or torchvision's ``ImageNet`` devkit parser). Split: train / val, and
val is the test set (the test set's labels are not public). Validation (``val_split``): by default 10 % of
train held out (1,153,050 / 128,117 / 50,000); ``val_split: test`` is the papers' protocol (validation =
val = test). ImageNet ships no other validation split.

Class index = position of the wnid in the standard sorted list of the 1,000 ILSVRC-2012 wnids (timm's
``imagenet_synsets.txt``, identical to ``sorted(os.listdir(train))`` on the full set), so labels match
pretrained ImageNet heads even when only a subset of the folders is present.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from datamodules.base import (
    ClassificationDataModule,
    ImageListDataset,
    SplitParts,
    find_class_folders,
    list_images,
)


def _timm_info_file(name: str) -> Path:
    """Path of a file in timm's ``data/_info`` package data, found without importing timm (slow)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("timm is required for the ImageNet class list")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / name


def imagenet_synsets() -> list[str]:
    """The 1,000 ILSVRC-2012 wnids in the standard (sorted) class-index order, from timm's package data."""
    text = _timm_info_file("imagenet_synsets.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_lemmas() -> dict[str, str]:
    """``{wnid: "tench, Tinca tinca"}`` names from timm's package data (empty if unavailable)."""
    try:
        text = _timm_info_file("imagenet_synset_to_lemma.txt").read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        return {}
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


class ImageNetDataModule(ClassificationDataModule):
    """ImageNet-1k, 1,000 classes, train / val (val is the test set)."""

    dataset_name = "ImageNet-1k"
    homepage = "https://image-net.org/download-images (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar)"
    expected_layout = (
        "<root>/\n  train/<wnid>/*.JPEG   (1,000 wnid folders)\n"
        "  val/<wnid>/*.JPEG     (the flat val archive sorted into wnid folders, e.g. with valprep.sh)"
    )

    def __init__(self, root: str = "data/imagenet", **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.synsets = imagenet_synsets()
        self.num_classes = len(self.synsets)
        lemmas = imagenet_lemmas()
        self.class_names = [lemmas.get(w, w) for w in self.synsets]

    def _check_layout(self) -> None:
        self.require("train", "val")

    def _samples(self, directory: Path) -> list[tuple[str, int]]:
        index = {w: i for i, w in enumerate(self.synsets)}
        folders = find_class_folders(directory, self.dataset_name, self.expected_layout, self.homepage)
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise self.layout_error(
                directory / unknown[0], f"{len(unknown)} folder(s) that are not ILSVRC-2012 wnids, e.g."
            )
        samples = []
        for wnid in folders:
            samples += [
                (path, index[wnid])
                for path in list_images(directory / wnid, self.dataset_name, recursive=False)
            ]
        return samples

    def _build_parts(self) -> SplitParts:
        root = Path(self.root)
        return SplitParts(
            train=ImageListDataset(self._samples(root / "train"), self.train_transform),
            test=ImageListDataset(self._samples(root / "val"), self.eval_transform),
        )
