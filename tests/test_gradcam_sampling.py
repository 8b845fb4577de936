"""tools.gradcam picks seeded random images across classes, not the first ones of a class-sorted loader."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
from PIL import Image

from tools import gradcam


def test_sample_across_classes_is_seeded_and_spread():
    targets = [c for c in range(3) for _ in range(10)]  # class-sorted, as ImageFolder and most datasets
    picked = gradcam.sample_across_classes(targets, 5, seed=0)
    assert picked == gradcam.sample_across_classes(targets, 5, seed=0)
    assert picked != gradcam.sample_across_classes(targets, 5, seed=1)
    assert len(set(picked)) == 5 and {targets[i] for i in picked} == {0, 1, 2}
    assert picked != list(range(5))
    assert sorted(gradcam.sample_across_classes([0, 0, 1], 10, seed=0)) == [0, 1, 2]  # fewer than asked


def test_load_images_takes_images_of_every_class(tmp_path):
    for k, cls in enumerate(("cats", "dogs")):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 60 * k + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    args = argparse.Namespace(image_folder=str(tmp_path), num_images=2, seed=0, split="test")
    images, labels, classes = gradcam.load_images(args, SimpleNamespace(datamodule=None), 16)
    assert images.shape == (2, 3, 16, 16) and sorted(labels.tolist()) == [0, 1]  # the first two are both cats
    assert classes == ["cats", "dogs"]
