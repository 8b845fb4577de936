"""Stanford Cars (Krause et al., 2013) in the layout torchvision's ``StanfordCars`` reads.

Layout (``root`` is ``stanford_cars/`` or its parent)::

    stanford_cars/
      devkit/cars_meta.mat              class_names: 1 x 196 cell of strings
      devkit/cars_train_annos.mat       annotations: 1 x 8144 struct (bbox_x1, bbox_y1, bbox_x2, bbox_y2,
                                        class (1..196), fname)
      cars_test_annos_withlabels.mat    annotations: 1 x 8041 struct, same fields (also accepted in devkit/)
      cars_train/*.jpg
      cars_test/*.jpg

Split: the official 8,144 train / 8,041 test (ACANet Table 1). Validation (``val_split``): by default 814
training images held out (7,330 / 814 / 8,041); ``val_split: test`` is the papers' protocol.
Bounding boxes are not used (whole image, as in the papers).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from datamodules.base import ClassificationDataModule, ImageListDataset, SplitParts


class StanfordCarsDataModule(ClassificationDataModule):
    """Stanford Cars, 196 classes, official 8,144 / 8,041 train / test split."""

    dataset_name = "Stanford Cars"
    homepage = (
        "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (mirrors: the Kaggle 'stanford-cars' "
        "dataset; test labels: cars_test_annos_withlabels.mat)"
    )
    expected_layout = (
        "stanford_cars/\n  devkit/cars_meta.mat\n  devkit/cars_train_annos.mat\n"
        "  cars_test_annos_withlabels.mat   (or devkit/cars_test_annos_withlabels.mat)\n"
        "  cars_train/*.jpg\n  cars_test/*.jpg"
    )

    def __init__(self, root: str = "data/stanford_cars", **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.num_classes = 196

    @property
    def data_dir(self) -> str:
        return self.locate("stanford_cars", "devkit")

    @property
    def test_annotations(self) -> str:
        base = self.data_dir
        top = os.path.join(base, "cars_test_annos_withlabels.mat")
        in_devkit = os.path.join(base, "devkit", "cars_test_annos_withlabels.mat")
        return in_devkit if not os.path.isfile(top) and os.path.isfile(in_devkit) else top

    def _check_layout(self) -> None:
        if not os.path.isdir(self.root):
            raise self.layout_error(self.root, "dataset root not found")
        base = self.data_dir
        for path in (
            os.path.join(base, "devkit", "cars_meta.mat"),
            os.path.join(base, "devkit", "cars_train_annos.mat"),
            self.test_annotations,
            os.path.join(base, "cars_train"),
            os.path.join(base, "cars_test"),
        ):
            if not os.path.exists(path):
                raise self.layout_error(path)

    def _read_annotations(self, mat_path: str, image_dir: str) -> list[tuple[str, int]]:
        from scipy.io import loadmat

        try:
            annotations = np.atleast_1d(loadmat(mat_path, squeeze_me=True)["annotations"])
            samples = [(os.path.join(image_dir, str(a["fname"])), int(a["class"]) - 1) for a in annotations]
        except (KeyError, ValueError, TypeError) as err:
            raise self.layout_error(
                mat_path, f"no 'annotations' struct with fields class, fname ({err}) in"
            ) from None
        bad = next((lbl for _, lbl in samples if not 0 <= lbl < self.num_classes), None)
        if bad is not None:
            raise self.layout_error(mat_path, f"class {bad + 1} outside 1..196 in")
        missing = next((p for p, _ in samples if not os.path.isfile(p)), None)
        if missing:
            raise self.layout_error(missing, f"image listed in {os.path.basename(mat_path)} not found")
        return samples

    def _build_parts(self) -> SplitParts:
        from scipy.io import loadmat

        base = self.data_dir
        names = np.atleast_1d(
            loadmat(os.path.join(base, "devkit", "cars_meta.mat"), squeeze_me=True)["class_names"]
        )
        self.class_names = [str(n) for n in names.tolist()]
        train = self._read_annotations(
            os.path.join(base, "devkit", "cars_train_annos.mat"), os.path.join(base, "cars_train")
        )
        test = self._read_annotations(self.test_annotations, os.path.join(base, "cars_test"))
        return SplitParts(
            train=ImageListDataset(train, self.train_transform),
            test=ImageListDataset(test, self.eval_transform),
        )
