"""Datamodules on tiny fixtures in the official layouts: shapes, labels, splits, errors, bad images,
zip roots."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DistributedSampler, SequentialSampler

try:  # tests/ is a package (tests/__init__.py) or a plain folder on sys.path
    from tests.dataset_fixtures import (
        CUB_CLASSES,
        FIXTURE_BUILDERS,
        IMAGENET_WNIDS,
        build_dataset_fixture,
        build_image_folder_presplit,
        write_jpeg,
    )
except ImportError:
    from dataset_fixtures import (  # type: ignore[no-redef]
        CUB_CLASSES,
        FIXTURE_BUILDERS,
        IMAGENET_WNIDS,
        build_dataset_fixture,
        build_image_folder_presplit,
        write_jpeg,
    )

import datamodules
from datamodules import (
    BadImageError,
    CIFAR10DataModule,
    ClassificationDataModule,
    CUB200DataModule,
    DataConfigError,
    DatasetLayoutError,
    DigitsDataModule,
    Flowers5DataModule,
    Flowers102DataModule,
    ImageFolderDataModule,
    load_rgb,
    stratified_split,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAST = {"batch_size": 2, "num_workers": 0, "image_size": 32}

EXPECTED_NUM_CLASSES = {
    "datamodules.DigitsDataModule": 10,
    "datamodules.ImageFolderDataModule": 3,
    "datamodules.CIFAR10DataModule": 10,
    "datamodules.CIFAR100DataModule": 100,
    "datamodules.TinyImageNetDataModule": 200,
    "datamodules.CUB200DataModule": 200,
    "datamodules.StanfordCarsDataModule": 196,
    "datamodules.FGVCAircraftDataModule": 100,
    "datamodules.Flowers102DataModule": 102,
    "datamodules.Flowers5DataModule": 5,
    "datamodules.ImageNetDataModule": 1000,
}
FILE_BASED = [cp for cp in FIXTURE_BUILDERS if cp != "datamodules.DigitsDataModule"]


def make(class_path: str, root: Path, **overrides) -> ClassificationDataModule:
    kwargs = {**build_dataset_fixture(class_path, root), **FAST, **overrides}
    return getattr(datamodules, class_path.rsplit(".", 1)[-1])(**kwargs)


class TinyClassifier(L.LightningModule):
    """A few-thousand-parameter CNN: enough to run a real fit step on every datamodule."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(16 * 16, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc1", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc1", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------ every datamodule
def test_every_datamodule_has_a_fixture():
    classes = {
        name
        for name in datamodules.__all__
        if isinstance(getattr(datamodules, name), type)
        and issubclass(getattr(datamodules, name), ClassificationDataModule)
        and name != "ClassificationDataModule"
    }
    assert {cp.rsplit(".", 1)[-1] for cp in FIXTURE_BUILDERS} == classes
    assert set(EXPECTED_NUM_CLASSES) == set(FIXTURE_BUILDERS)


@pytest.mark.parametrize("class_path", list(FIXTURE_BUILDERS))
def test_num_classes_known_without_data(class_path, tmp_path):
    """LightningCLI links data.num_classes right after __init__: fixed-class datasets need no files."""
    if class_path == "datamodules.ImageFolderDataModule":
        dm = ImageFolderDataModule(root=str(tmp_path / "absent"), num_classes=24)
        assert dm.num_classes == 24
        return
    dm = getattr(datamodules, class_path.rsplit(".", 1)[-1])(root=str(tmp_path / "absent"))
    assert dm.num_classes == EXPECTED_NUM_CLASSES[class_path]


@pytest.mark.parametrize("class_path", list(FIXTURE_BUILDERS))
def test_batches_on_fixture(class_path, tmp_path):
    dm = make(class_path, tmp_path)
    assert dm.num_classes == EXPECTED_NUM_CLASSES[class_path]
    dm.setup("fit")
    sizes = dm.split_sizes()
    assert sizes["train"] > 0 and sizes["val"] > 0 and sizes["test"] > 0
    for loader, shuffled in (
        (dm.train_dataloader(), True),
        (dm.val_dataloader(), False),
        (dm.test_dataloader(), False),
        (dm.predict_dataloader(), False),
    ):
        # training: a seeded per-epoch permutation (resumable mid-epoch), a DistributedSampler of 1 replica
        assert isinstance(loader.sampler, DistributedSampler if shuffled else SequentialSampler)
        assert getattr(loader.sampler, "shuffle", False) == shuffled
        x, y = next(iter(loader))
        assert x.shape == (min(2, len(loader.dataset)), 3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < dm.num_classes
        assert torch.isfinite(x).all()
    every_label = [label for ds in (dm.train_set, dm.test_set) for label in ds.targets]
    assert 0 <= min(every_label) and max(every_label) < dm.num_classes
    assert not dm.val_dataloader().drop_last and not dm.test_dataloader().drop_last


@pytest.mark.parametrize("class_path", list(FIXTURE_BUILDERS))
def test_fit_fast_dev_run(class_path, tmp_path):
    dm = make(class_path, tmp_path)
    trainer = quiet_trainer(fast_dev_run=1)
    trainer.fit(TinyClassifier(dm.num_classes), datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_hparams_saved_and_compatible_with_a_logger(tmp_path):
    """Constructor args land in the checkpoint hparams; none clashes with the model's num_classes."""
    from lightning.pytorch.loggers import CSVLogger

    class Model(TinyClassifier):
        def __init__(self, num_classes: int) -> None:
            super().__init__(num_classes)
            self.save_hyperparameters()

    dm = make("datamodules.ImageFolderDataModule", tmp_path, num_classes=None, split_seed=7)
    assert dm.hparams["split_seed"] == 7 and dm.hparams["batch_size"] == 2 and "num_classes" not in dm.hparams
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path / "logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Model(dm.num_classes), datamodule=dm)
    assert trainer.global_step == 1


def test_fit_timm_resnet18_on_cifar10_fixture(tmp_path):
    timm = pytest.importorskip("timm")

    class TimmClassifier(TinyClassifier):
        def __init__(self, num_classes: int) -> None:
            L.LightningModule.__init__(self)
            self.net = timm.create_model("resnet18", num_classes=num_classes, pretrained=False)

    dm = make("datamodules.CIFAR10DataModule", tmp_path)
    trainer = quiet_trainer(fast_dev_run=2)
    trainer.fit(TimmClassifier(dm.num_classes), datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


# ------------------------------------------------------------------------------------------ official splits
def test_cub_split_follows_train_test_split_txt(tmp_path):
    dm = make("datamodules.CUB200DataModule", tmp_path, val_split="test")
    dm.setup()
    base = Path(dm.data_dir)
    paths = dict(line.split() for line in (base / "images.txt").read_text().splitlines())
    is_train = dict(line.split() for line in (base / "train_test_split.txt").read_text().splitlines())
    labels = dict(line.split() for line in (base / "image_class_labels.txt").read_text().splitlines())
    expected_train = {
        (str(base / "images" / paths[i]), int(labels[i]) - 1) for i in paths if is_train[i] == "1"
    }
    expected_test = {
        (str(base / "images" / paths[i]), int(labels[i]) - 1) for i in paths if is_train[i] == "0"
    }
    assert set(dm.train_set.samples) == expected_train
    assert set(dm.test_set.samples) == expected_test
    assert dm.val_set is dm.test_set  # the papers' protocol, by name: validation = test
    held = make("datamodules.CUB200DataModule", tmp_path, split_seed=3)  # default: held out of train
    held.setup()
    assert set(held.train_set.samples) | set(held.val_set.samples) == expected_train
    assert dm.class_names[:3] == [c.split(".", 1)[1] for c in CUB_CLASSES]
    assert dm.num_classes == 200


def test_flowers102_trains_on_train_plus_val(tmp_path):
    from scipy.io import loadmat

    dm = make("datamodules.Flowers102DataModule", tmp_path, val_split="test")
    dm.setup()
    base = Path(dm.data_dir)
    setid = loadmat(base / "setid.mat", squeeze_me=True)
    labels = loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]
    trainval = sorted(np.concatenate([setid["trnid"], setid["valid"]]).tolist())
    train_ids = sorted(int(Path(p).stem.split("_")[1]) for p, _ in dm.train_set.samples)
    test_ids = sorted(int(Path(p).stem.split("_")[1]) for p, _ in dm.test_set.samples)
    assert train_ids == trainval
    assert test_ids == sorted(setid["tstid"].tolist())
    assert all(label == labels[int(Path(p).stem.split("_")[1]) - 1] - 1 for p, label in dm.train_set.samples)
    official = make("datamodules.Flowers102DataModule", tmp_path, val_split="official")
    official.setup()  # the shipped halves: train on trnid, validate on valid
    assert sorted(int(Path(p).stem.split("_")[1]) for p, _ in official.train_set.samples) == sorted(
        setid["trnid"].tolist()
    )
    assert sorted(int(Path(p).stem.split("_")[1]) for p, _ in official.val_set.samples) == sorted(
        setid["valid"].tolist()
    )


def test_stanford_cars_and_aircraft_match_torchvision(tmp_path):
    """The fixtures are readable by torchvision's own loaders, and we read the same samples."""
    from torchvision import datasets as tvd

    cars = make("datamodules.StanfordCarsDataModule", tmp_path / "cars", val_split="test")
    cars.setup()
    for split, ours in (("train", cars.train_set), ("test", cars.test_set)):
        theirs = tvd.StanfordCars(str(tmp_path / "cars"), split=split)
        assert [(str(Path(p)), lbl) for p, lbl in theirs._samples] == ours.samples
    assert cars.class_names[:3] == tvd.StanfordCars(str(tmp_path / "cars")).classes[:3]

    aircraft = make("datamodules.FGVCAircraftDataModule", tmp_path / "air", val_split="test")
    aircraft.setup()
    theirs = tvd.FGVCAircraft(str(tmp_path / "air"), split="trainval")
    assert list(zip(theirs._image_files, theirs._labels)) == aircraft.train_set.samples
    theirs = tvd.FGVCAircraft(str(tmp_path / "air"), split="test")
    assert list(zip(theirs._image_files, theirs._labels)) == aircraft.test_set.samples
    official = make("datamodules.FGVCAircraftDataModule", tmp_path / "air", val_split="official")
    official.setup()
    for split, ours in (("train", official.train_set), ("val", official.val_set)):
        theirs = tvd.FGVCAircraft(str(tmp_path / "air"), split=split)
        assert list(zip(theirs._image_files, theirs._labels)) == ours.samples


def test_cifar_pickles_decode_to_the_stored_pixels(tmp_path):
    dm = make("datamodules.CIFAR10DataModule", tmp_path, val_split="test")
    dm.setup()
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    assert torch.equal(dm.train_set.images[0], torch.from_numpy(batch["data"][0].reshape(3, 32, 32)))
    assert dm.train_set.labels[: len(batch["labels"])].tolist() == batch["labels"]
    assert dm.split_sizes() == {"train": 20, "val": 6, "test": 6}
    assert dm.class_names[0] == "airplane"
    held = make("datamodules.CIFAR10DataModule", tmp_path)  # default: 10 % of train held out
    held.setup()
    assert held.split_sizes() == {"train": 18, "val": 2, "test": 6}


def test_tiny_imagenet_uses_val_as_test_and_sorted_wnids(tmp_path):
    dm = make("datamodules.TinyImageNetDataModule", tmp_path, val_split="test")
    dm.setup()
    base = Path(dm.data_dir)
    wnids = sorted((base / "wnids.txt").read_text().split())
    annotations = [
        line.split("\t")[:2] for line in (base / "val" / "val_annotations.txt").read_text().splitlines()
    ]
    assert dm.test_set.samples == [(str(base / "val" / "images" / f), wnids.index(w)) for f, w in annotations]
    assert dm.val_set is dm.test_set
    assert dm.class_names[0].startswith("goldfish")


def test_timm_train_transform_is_timms_pipeline_with_our_size_and_normalisation():
    """DeiT's augmentation comes from timm.data.create_transform, fed the datamodule's own settings."""
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    deit = {"auto_augment": "rand-m9-mstd0.5-inc1", "interpolation": "bicubic", "re_prob": 0.25}
    dm = CIFAR10DataModule(
        root="unused", image_size=24, train_crop="random_resized", timm_train_transform=deit
    )
    steps = list(dm.train_transform.transforms[1].transforms)
    assert any(isinstance(t, RandAugment) for t in steps)
    erasing = next(t for t in steps if isinstance(t, RandomErasing))
    assert erasing.probability == 0.25
    normalize = next(t for t in steps if type(t).__name__ == "Normalize")
    assert normalize.mean.tolist() == pytest.approx(list(dm.mean))
    image = Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8))
    for given in (image, np.asarray(image), torch.zeros(3, 40, 48, dtype=torch.uint8)):
        assert dm.train_transform(given).shape == (3, 24, 24)
    assert dm.eval_transform(image).shape == (3, 24, 24)  # evaluation is unchanged
    for bad, match in (
        ({"train_crop": "random"}, "train_crop"),
        ({"train_crop": "random_resized", "rotation": 15}, "rotation"),
        ({"train_crop": "random_resized", "timm_train_transform": {"mean": [0, 0, 0]}}, "mean"),
        ({"train_crop": "random_resized", "timm_train_transform": {"auto_augmnt": "x"}}, "create_transform"),
    ):
        with pytest.raises(DataConfigError, match=match):
            CIFAR10DataModule(root="unused", **{"timm_train_transform": deit, **bad})


def test_tiny_imagenet_refuses_a_tree_without_200_wnids(tmp_path):
    """A partial copy (3 of the 200 classes) is refused, naming wnids.txt, not trained as a 3-way task."""
    dm = make("datamodules.TinyImageNetDataModule", tmp_path, val_split="test")
    wnids = Path(dm.data_dir) / "wnids.txt"
    wnids.write_text("".join(wnids.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(DatasetLayoutError, match=r"3 distinct wnids \(expected 200\)") as err:
        dm.setup()
    assert "wnids.txt" in str(err.value)


def test_imagenet_labels_are_standard_class_indices(tmp_path):
    dm = make("datamodules.ImageNetDataModule", tmp_path)
    dm.setup()
    # The first three ILSVRC-2012 wnids are classes 0, 1, 2 (tench, goldfish, great white shark).
    assert {lbl for _, lbl in dm.train_set.samples} == {0, 1, 2}
    assert dm.class_names[1].startswith("goldfish")
    assert all(IMAGENET_WNIDS[lbl] in p for p, lbl in dm.val_set.samples)


def test_digits_split_and_determinism():
    a, b = DigitsDataModule(), DigitsDataModule()
    a.setup(), b.setup()
    assert a.split_sizes() == {"train": 1257, "val": 270, "test": 270}
    assert torch.equal(a.test_set.labels, b.test_set.labels) and torch.equal(
        a.test_set.images, b.test_set.images
    )
    assert torch.bincount(a.train_set.labels, minlength=10).min() >= 120  # stratified: ~126 a class
    c = DigitsDataModule(split_seed=1)
    c.setup()
    assert not torch.equal(a.test_set.images, c.test_set.images)
    assert a.train_set.images.shape[1:] == (3, 32, 32) and a.train_set.images.dtype == torch.uint8


def test_digits_small_cnn_learns_quickly():
    """The quickstart claim: a small CNN is well above chance (10%) after a couple of CPU epochs."""
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64)
    trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(TinyClassifier(10), datamodule=dm)
    assert trainer.callback_metrics["val/acc1"] > 0.5


# ------------------------------------------------------------------------------------------ transforms
@pytest.mark.parametrize("train_crop", ["random_resized", "random", "center", "resize"])
def test_train_crops_give_the_input_size(train_crop, tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    dm = ClassificationDataModule(
        image_size=24, train_crop=train_crop, crop_padding=2, vflip=0.5, rotation=10, color_jitter=0.2
    )
    assert dm.resize_size == round(24 / 0.875)
    for transform in (dm.train_transform, dm.eval_transform):
        out = transform(image)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert torch.equal(dm.eval_transform(image), dm.eval_transform(image))


def test_cifar_defaults_and_larger_image_size():
    dm = CIFAR10DataModule(root="unused")
    assert (dm.image_size, dm.resize_size, dm.train_crop, dm.crop_padding, dm.hflip) == (
        32,
        32,
        "random",
        4,
        0.5,
    )
    big = CIFAR10DataModule(root="unused", image_size=64)
    x = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    assert big.train_transform(x).shape == (3, 64, 64) and big.eval_transform(x).shape == (3, 64, 64)


def test_invalid_choices_are_rejected():
    with pytest.raises(DataConfigError, match="train_crop"):
        ClassificationDataModule(train_crop="bogus")  # type: ignore[arg-type]
    with pytest.raises(DataConfigError, match="scale"):
        ClassificationDataModule(scale=(0.9, 0.2))
    with pytest.raises(DataConfigError, match="hflip"):
        ClassificationDataModule(hflip=1.5)
    with pytest.raises(ValueError, match="on_bad_image"):
        ClassificationDataModule(on_bad_image="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize("class_path", list(FIXTURE_BUILDERS))
def test_cli_parser_sees_typed_shared_arguments(class_path):
    """LightningCLI (jsonargparse) resolves **kwargs to the base signature and validates the Literals."""
    from jsonargparse import ArgumentParser

    cls = getattr(datamodules, class_path.rsplit(".", 1)[-1])
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    cfg = parser.parse_args(
        [
            "--data.train_crop",
            "resize",
            "--data.scale",
            "[0.5, 1.0]",
            "--data.vflip",
            "0.5",
            "--data.on_bad_image",
            "skip",
            "--data.mean",
            "[0.5, 0.5, 0.5]",
        ]
    )
    assert cfg.data.train_crop == "resize" and tuple(cfg.data.scale) == (0.5, 1.0)
    with pytest.raises(Exception, match="train_crop"):
        parser.parse_args(["--data.train_crop", "bogus"])


# ------------------------------------------------------------------------------------------ layout errors
@pytest.mark.parametrize("class_path", FILE_BASED)
def test_missing_root_is_one_clear_error(class_path, tmp_path):
    cls = getattr(datamodules, class_path.rsplit(".", 1)[-1])
    missing = tmp_path / "nowhere"
    kwargs = {"num_classes": 3} if cls is ImageFolderDataModule else {}
    dm = cls(root=str(missing), **kwargs, **FAST)
    with pytest.raises(DatasetLayoutError) as info:
        dm.setup()
    message = str(info.value)
    assert dm.dataset_name in message and str(missing) in message
    assert "Expected layout:" in message and "Get the data from:" in message
    assert (
        isinstance(info.value, FileNotFoundError) and info.value.user_error
    )  # main.py: message, no traceback
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_image_folder_missing_root_without_num_classes_fails_at_init(tmp_path):
    with pytest.raises(DatasetLayoutError, match="nowhere"):
        ImageFolderDataModule(root=str(tmp_path / "nowhere"))


WRONG_LAYOUT = {  # class path -> (file the fixture's layout needs, relative to the returned root)
    "datamodules.CIFAR10DataModule": "cifar-10-batches-py/data_batch_3",
    "datamodules.CIFAR100DataModule": "cifar-100-python/meta",
    "datamodules.TinyImageNetDataModule": "val/val_annotations.txt",
    "datamodules.CUB200DataModule": "train_test_split.txt",
    "datamodules.StanfordCarsDataModule": "stanford_cars/devkit/cars_train_annos.mat",
    "datamodules.FGVCAircraftDataModule": "data/images_variant_trainval.txt",
    "datamodules.Flowers102DataModule": "flowers-102/setid.mat",
    "datamodules.Flowers5DataModule": "flower_photos/roses",
    "datamodules.ImageNetDataModule": "val",
}


@pytest.mark.parametrize("class_path", list(WRONG_LAYOUT))
def test_wrong_layout_names_the_missing_path(class_path, tmp_path):
    kwargs = build_dataset_fixture(class_path, tmp_path)
    victim = Path(kwargs["root"]) / WRONG_LAYOUT[class_path]
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    dm = getattr(datamodules, class_path.rsplit(".", 1)[-1])(**{**kwargs, **FAST})
    with pytest.raises(DatasetLayoutError) as info:
        dm.setup()
    assert str(victim) in str(info.value) and "Expected layout:" in str(info.value)


def test_missing_listed_image_is_named(tmp_path):
    kwargs = build_dataset_fixture("datamodules.CUB200DataModule", tmp_path)
    first = (Path(kwargs["root"]) / "images.txt").read_text().split("\n")[0].split()[1]
    (Path(kwargs["root"]) / "images" / first).unlink()
    with pytest.raises(DatasetLayoutError, match="not found"):
        CUB200DataModule(**kwargs, **FAST).setup()


@pytest.mark.parametrize(
    "class_path", ["datamodules.ImageFolderDataModule", "datamodules.Flowers5DataModule"]
)
def test_empty_class_folder_is_named(class_path, tmp_path):
    kwargs = build_dataset_fixture(class_path, tmp_path)
    folder = Path(kwargs["root"])
    folder = folder / "flower_photos" if class_path.endswith("Flowers5DataModule") else folder
    empty = sorted(p for p in folder.iterdir() if p.is_dir())[1]
    for f in empty.iterdir():
        f.unlink()
    dm = getattr(datamodules, class_path.rsplit(".", 1)[-1])(**{**kwargs, **FAST})
    with pytest.raises(DatasetLayoutError, match="no image file") as info:
        dm.setup()
    assert str(empty) in str(info.value)


# ------------------------------------------------------------------------------------------ image folder
def test_image_folder_num_classes_must_match(tmp_path):
    kwargs = build_dataset_fixture("datamodules.ImageFolderDataModule", tmp_path)
    assert ImageFolderDataModule(**{**kwargs, "num_classes": 3}).num_classes == 3
    with pytest.raises(ValueError, match="num_classes=24 but .* holds 3 class folders"):
        ImageFolderDataModule(**{**kwargs, "num_classes": 24})


def test_image_folder_presplit_folders(tmp_path):
    kwargs = build_image_folder_presplit(tmp_path)
    dm = ImageFolderDataModule(**kwargs, **FAST)
    dm.setup()
    assert dm.num_classes == 3 and dm.class_names == ["alpha", "beta", "gamma"]
    assert dm.split_sizes() == {"train": 12, "val": 6, "test": 6}
    assert dm.val_set is not dm.test_set
    official = ImageFolderDataModule(**kwargs, **FAST, val_split="official")
    official.setup()  # with test/, val/ is the validation split either way
    assert dm.val_set.samples == official.val_set.samples and all("/val/" in p for p, _ in dm.val_set.samples)
    shutil.rmtree(Path(kwargs["root"]) / "test")
    dm = ImageFolderDataModule(**kwargs, **FAST)
    dm.setup()  # without test/, val/ is the test set and the validation split is held out of train/
    assert dm.split_sizes() == {"train": 11, "val": 1, "test": 6}
    assert all("/train/" in p for p, _ in dm.val_set.samples)
    with pytest.raises(DataConfigError, match="ships no"):
        ImageFolderDataModule(**kwargs, **FAST, val_split="official").setup()
    (Path(kwargs["root"]) / "val" / "zeta").mkdir()
    write_jpeg(Path(kwargs["root"]) / "val" / "zeta" / "x.jpg", 0, 0)
    with pytest.raises(DatasetLayoutError, match="zeta"):
        ImageFolderDataModule(**kwargs, **FAST).setup()


def test_image_folder_ratio_split_is_stratified_and_seeded(tmp_path):
    kwargs = build_dataset_fixture("datamodules.ImageFolderDataModule", tmp_path)
    runs = []
    for seed in (0, 0, 1):
        dm = ImageFolderDataModule(
            **{**kwargs, "split_ratios": (0.5, 0.25, 0.25), "split_seed": seed}, **FAST
        )
        dm.setup()
        runs.append([sorted(p for p, _ in ds.samples) for ds in (dm.train_set, dm.val_set, dm.test_set)])
        assert np.bincount(dm.train_set.targets).tolist() == [4, 4, 4]
        assert np.bincount(dm.test_set.targets).tolist() == [2, 2, 2]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    train, val, test = map(set, runs[0])
    assert not (train & val or train & test or val & test) and len(train | val | test) == 24


def test_stratified_split_properties():
    labels = [i % 4 for i in range(200)]
    a = stratified_split(labels, (0.7, 0.15, 0.15), seed=3)
    assert a == stratified_split(labels, (0.7, 0.15, 0.15), seed=3)
    assert a != stratified_split(labels, (0.7, 0.15, 0.15), seed=4)
    assert [len(p) for p in a] == [140, 30, 30]
    assert sorted(sum(a, [])) == list(range(200))
    for part in a:
        counts = np.bincount([labels[i] for i in part])
        assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="sum"):
        stratified_split(labels, (0.7, 0.2), seed=0)
    with pytest.raises(ValueError, match="stratified split"):
        stratified_split([0, 1, 2], (0.5, 0.5), seed=0)


def test_flowers5_split_and_fixed_classes(tmp_path):
    kwargs = build_dataset_fixture("datamodules.Flowers5DataModule", tmp_path)
    dm = Flowers5DataModule(**kwargs, **FAST)
    dm.setup()
    assert dm.class_names == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    # split: fft on 5 x 10 images: 6 a class train, 4 held out; 10 of the 20 held out are the test set
    assert dm.split_sizes() == {"train": 30, "val": 10, "test": 10}
    ratio = Flowers5DataModule(**kwargs, **FAST, split="ratio", split_ratios=(0.8, 0.2), val_split="test")
    ratio.setup()
    assert ratio.split_sizes() == {"train": 40, "val": 10, "test": 10} and ratio.val_set is ratio.test_set
    with pytest.raises(DataConfigError, match="split_ratios"):
        Flowers5DataModule(**kwargs, split_ratios=(0.75, 0.25))  # split: fft is fixed
    with pytest.raises(DataConfigError, match="needs split_ratios"):
        Flowers5DataModule(**kwargs, split="ratio")


# ------------------------------------------------------------------------------------------ image decoding
def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_load_rgb_converts_every_mode(tmp_path):
    gray = _save(tmp_path / "gray.jpg", Image.new("L", (8, 8), 77))
    cmyk = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)))
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: composited on white, not black
    rgba = _save(tmp_path / "rgba.png", rgba)
    deep = np.full((8, 8), 32896, dtype=np.uint16)
    deep[0, 0] = 65535
    deep16 = _save(tmp_path / "deep16.png", Image.fromarray(deep))
    palette = _save(tmp_path / "palette.gif", Image.new("P", (8, 8), 3))
    la = _save(tmp_path / "la.png", Image.new("LA", (8, 8), (10, 0)))
    for path in (gray, cmyk, rgba, deep16, palette, la):
        image = load_rgb(path)
        assert image.mode == "RGB" and image.size == (8, 8), path
    assert load_rgb(gray).getpixel((3, 3)) == (77, 77, 77)
    red = load_rgb(cmyk).getpixel((3, 3))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert load_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(rgba).getpixel((3, 3)) == (255, 0, 0)
    assert Image.open(deep16).mode.startswith("I")
    assert load_rgb(deep16).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(deep16).getpixel((3, 3)) == (128, 128, 128)  # rescaled, not clipped to 255
    assert load_rgb(la).getpixel((0, 0)) == (255, 255, 255)


def test_image_folder_batches_from_mixed_modes(tmp_path):
    root = tmp_path / "mixed"
    for name, image, ext in (
        ("a", Image.new("L", (20, 12), 50), "jpg"),
        ("a", Image.new("CMYK", (12, 20), (10, 20, 30, 0)), "jpg"),
        ("b", Image.new("RGBA", (16, 16), (1, 2, 3, 100)), "png"),
        ("b", Image.fromarray(np.full((9, 9), 40000, np.uint16)), "png"),
    ):
        (root / name).mkdir(parents=True, exist_ok=True)
        image.save(root / name / f"{len(list((root / name).iterdir()))}.{ext}")
    dm = ImageFolderDataModule(
        root=str(root), split_ratios=(0.5, 0.5), batch_size=4, num_workers=0, image_size=16, val_split="test"
    )
    dm.setup()
    x = torch.cat([b[0] for loader in (dm.train_dataloader(), dm.test_dataloader()) for b in loader])
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()


def _truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    return path


def test_corrupt_image_error_names_the_file(tmp_path):
    kwargs = build_dataset_fixture("datamodules.ImageFolderDataModule", tmp_path)
    bad = _truncated_jpeg(Path(kwargs["root"]) / "alpha" / "zz_truncated.jpg")
    (Path(kwargs["root"]) / "beta" / "zz_not_an_image.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(BadImageError) as info:
        load_rgb(bad)
    assert str(bad) in str(info.value) and "on_bad_image" in str(info.value)
    dm = ImageFolderDataModule(**kwargs, **{**FAST, "batch_size": 64})
    dm.setup()
    with pytest.raises(BadImageError, match="zz_"):
        for loader in (dm.train_dataloader(), dm.test_dataloader()):
            list(loader)
    # In a DataLoader worker the error crosses the process boundary as type(exc)(message): still a
    # BadImageError (which main.py prints without a traceback), still naming the file.
    from torch._utils import ExceptionWrapper

    try:
        load_rgb(bad)
    except BadImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadImageError, match="zz_truncated") as info:
        wrapped.reraise()
    assert info.value.user_error


def test_corrupt_images_skipped_with_one_warning(tmp_path):
    kwargs = build_dataset_fixture("datamodules.ImageFolderDataModule", tmp_path)
    _truncated_jpeg(Path(kwargs["root"]) / "alpha" / "zz_truncated.jpg")
    (Path(kwargs["root"]) / "beta" / "zz_not_an_image.jpg").write_bytes(b"this is not a jpeg")
    dm = ImageFolderDataModule(**kwargs, **{**FAST, "on_bad_image": "skip", "split_ratios": (0.5, 0.5)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    messages = [str(w.message) for w in caught if "undecodable" in str(w.message)]
    assert len(messages) == 1 and "skipped 2 undecodable" in messages[0]
    kept = [p for ds in (dm.train_set, dm.val_set, dm.test_set) for p, _ in ds.samples]
    assert len(kept) == 24 and not any("zz_" in p for p in kept)
    assert sum(len(b[1]) for b in dm.test_dataloader()) == len(dm.test_set)


def test_cub_skips_bad_images_too(tmp_path):
    kwargs = build_dataset_fixture("datamodules.CUB200DataModule", tmp_path)
    first = (Path(kwargs["root"]) / "images.txt").read_text().split("\n")[0].split()[1]
    _truncated_jpeg(Path(kwargs["root"]) / "images" / first)
    dm = CUB200DataModule(**kwargs, **FAST, on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipped 1 undecodable"):
        dm.setup()
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 11


# ------------------------------------------------------------------------------------------ zip roots
def test_image_folder_from_zip_extracts_once(tmp_path):
    archive = SHARED_DATA / "cifar10-mini.zip"
    if not archive.is_file():
        pytest.skip(f"{archive} not present")
    cache = tmp_path / "cache" / "mini"
    dm = ImageFolderDataModule(
        root=str(archive), cache_dir=str(cache), split_ratios=(0.7, 0.15, 0.15), **FAST
    )
    assert dm.num_classes == 10 and dm.class_names[0] == "airplane"
    assert Path(dm.root) == cache / "cifar10" / "train"
    dm.setup()
    assert dm.split_sizes() == {"train": 1400, "val": 300, "test": 300}
    assert np.bincount(dm.test_set.targets).tolist() == [30] * 10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32)
    marker = cache / ".paperbench_source"
    stamp = marker.stat().st_mtime_ns
    again = ImageFolderDataModule(
        root=str(archive), cache_dir=str(cache), split_ratios=(0.7, 0.15, 0.15), **FAST
    )
    again.setup()
    assert marker.stat().st_mtime_ns == stamp  # reused, not re-extracted
    assert [p for p, _ in again.test_set.samples] == [p for p, _ in dm.test_set.samples]
    assert not [p for p in cache.parent.iterdir() if ".tmp-" in p.name]  # no leftover temporary folder


def test_zip_root_default_cache_and_stale_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERBENCH_CACHE", str(tmp_path / "pbcache"))
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for cls in ("cat", "dog"):
            for i in range(4):
                buffer = io.BytesIO()
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(buffer, "JPEG")
                zf.writestr(f"pets/{cls}/{i}.jpg", buffer.getvalue())
    dm = ImageFolderDataModule(root=str(archive), split_ratios=(0.5, 0.5), **FAST)
    cache = Path(dm.root).parent
    assert cache.parent == tmp_path / "pbcache" and cache.name.startswith("tiny-") and dm.num_classes == 2
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("pets/bird/0.jpg", (Path(dm.root) / "cat" / "0.jpg").read_bytes())
    os.utime(archive, ns=(1, 1))
    changed = ImageFolderDataModule(root=str(archive), split_ratios=(0.5, 0.5), **FAST)
    assert changed.num_classes == 3  # the changed archive was re-extracted


def test_missing_or_broken_zip(tmp_path):
    with pytest.raises(DatasetLayoutError, match="zip archive not found"):
        ImageFolderDataModule(root=str(tmp_path / "absent.zip"))
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetLayoutError, match="not a valid zip"):
        ImageFolderDataModule(root=str(tmp_path / "broken.zip"), cache_dir=str(tmp_path / "c"))


def test_flowers102_missing_variable_is_clear(tmp_path):
    from scipy.io import savemat

    kwargs = build_dataset_fixture("datamodules.Flowers102DataModule", tmp_path)
    savemat(Path(kwargs["root"]) / "flowers-102" / "setid.mat", {"trnid": np.array([[1]])})
    with pytest.raises(DatasetLayoutError, match="missing variable"):
        Flowers102DataModule(**kwargs, **FAST).setup()


# ------------------------------------------------------------------------------------------ download
def test_download_only_where_torchvision_can(tmp_path, monkeypatch):
    """download: true calls torchvision only when the layout is incomplete (stubbed: no network in tests)."""
    from torchvision import datasets as tvd

    with pytest.raises(ValueError, match="download: true is not supported"):
        CUB200DataModule(root=str(tmp_path), download=True)
    calls = []
    monkeypatch.setattr(tvd, "CIFAR10", lambda root, download: calls.append((root, download)))
    kwargs = build_dataset_fixture("datamodules.CIFAR10DataModule", tmp_path / "complete")
    CIFAR10DataModule(**kwargs, download=True).prepare_data()
    assert calls == []  # already on disk: nothing fetched
    CIFAR10DataModule(root=str(tmp_path / "empty"), download=True).prepare_data()
    assert calls == [(str(tmp_path / "empty"), True)] and (tmp_path / "empty").is_dir()


def _extract_in_child(args: tuple[str, str]) -> list[str]:
    from datamodules.image_folder import extract_zip

    out = extract_zip(Path(args[0]), Path(args[1]))
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))


def test_concurrent_zip_extraction_is_safe(tmp_path):
    """Several processes (DDP ranks) extracting the same archive at once all see one complete copy."""
    import multiprocessing

    archive = tmp_path / "shared.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(60):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (i, 0, 0)).save(buffer, "JPEG")
            zf.writestr(f"data/c{i % 3}/{i}.jpg", buffer.getvalue())
    cache = tmp_path / "cache" / "shared"
    # spawn, not fork: a fork of this process (torch's thread pools, earlier tests' threads) can inherit a
    # held lock and hang in the child
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # two ranks race for the same archive
        results = pool.map(_extract_in_child, [(str(archive), str(cache))] * 2)
    assert all(r == results[0] for r in results) and len(results[0]) == 60
    assert sorted(p.name for p in cache.parent.iterdir()) == [".shared.lock", "shared"]


@pytest.mark.slow
def test_real_cifar10_jpegs_from_zip_are_learnable(tmp_path):
    """End to end on real photos: the mini archive through ImageFolderDataModule trains above chance (10%)."""
    archive = SHARED_DATA / "cifar10-mini.zip"
    if not archive.is_file():
        pytest.skip(f"{archive} not present")
    torch.manual_seed(0)
    dm = ImageFolderDataModule(
        root=str(archive),
        cache_dir=str(tmp_path / "cache"),
        split_ratios=(0.8, 0.2),
        image_size=32,
        resize_size=32,
        train_crop="random",
        crop_padding=4,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        batch_size=32,
        num_workers=0,
    )
    trainer = quiet_trainer(max_epochs=6, num_sanity_val_steps=0)
    trainer.fit(TinyClassifier(dm.num_classes), datamodule=dm)
    assert trainer.callback_metrics["val/acc1"] > 0.25


# ------------------------------------------------------------------------------------------ validation splits
OFFICIAL_VAL = {  # datamodules whose fixture ships a validation split (val_split: official)
    "datamodules.FGVCAircraftDataModule",
    "datamodules.Flowers102DataModule",
}


def _keys(ds) -> set:
    """Identity of every sample: file paths, or the pixel bytes of in-memory images."""
    if hasattr(ds, "samples"):
        return {p for p, _ in ds.samples}
    return {ds.images[i].numpy().tobytes() for i in range(len(ds))}


@pytest.mark.parametrize("class_path", list(FIXTURE_BUILDERS))
def test_validation_split_is_held_out_by_default_and_test_only_by_name(class_path, tmp_path):
    """Default: validation is carved from the training images, disjoint from train and test (issue 13)."""
    dm = make(class_path, tmp_path)
    assert dm.val_split == "holdout"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny fixtures: the holdout cannot be stratified
        dm.setup()
    train, val, test = _keys(dm.train_set), _keys(dm.val_set), _keys(dm.test_set)
    assert val and dm.val_set is not dm.test_set
    assert not val & test and not val & train and not train & test
    paper = make(
        class_path,
        tmp_path / "again" if class_path.endswith("DigitsDataModule") else tmp_path,
        val_split="test",
    )
    paper.setup()
    assert paper.val_set is paper.test_set  # the papers' protocol, by name
    assert _keys(paper.train_set) >= train  # trains on every training image (holdout: minus the val part)
    official = make(class_path, tmp_path, val_split="official")
    if class_path in OFFICIAL_VAL:
        official.setup()
        o_train, o_val = _keys(official.train_set), _keys(official.val_set)
        assert o_val and not o_val & o_train and not o_val & _keys(official.test_set)
        assert o_train | o_val == _keys(paper.train_set)  # the shipped halves of the training images
    else:
        with pytest.raises(DataConfigError, match="ships no"):
            official.setup()


def test_holdout_is_seeded_stratified_and_sized_by_val_fraction():
    a, b = DigitsDataModule(split_ratios=(0.8, 0.2)), DigitsDataModule(split_ratios=(0.8, 0.2))
    c = DigitsDataModule(split_ratios=(0.8, 0.2), val_fraction=0.25)
    d = DigitsDataModule(split_ratios=(0.8, 0.2), split_seed=5)
    for dm in (a, b, c, d):
        dm.setup()
    n_train = 1797 - round(0.2 * 1797)  # 1,438 training images, 144 held out by default
    assert a.split_sizes() == {"train": n_train - 144, "val": 144, "test": 359}
    assert torch.equal(a.val_set.images, b.val_set.images)  # seeded
    assert not torch.equal(a.val_set.images, d.val_set.images)
    assert c.split_sizes()["val"] == round(0.25 * n_train)
    assert torch.equal(a.test_set.images, c.test_set.images)  # val_fraction leaves test alone
    counts = torch.bincount(a.val_set.labels, minlength=10)
    assert counts.max() - counts.min() <= 1  # stratified: 14-15 a class


def test_val_fraction_refused_where_it_does_nothing(tmp_path):
    with pytest.raises(DataConfigError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.5)
    with pytest.raises(DataConfigError, match="val_split"):
        DigitsDataModule(val_split="train")  # type: ignore[arg-type]
    with pytest.raises(DataConfigError, match="val_fraction=0.2 has no effect"):
        DigitsDataModule(val_fraction=0.2).setup()  # three ratios: the middle part is the validation split
    with pytest.raises(DataConfigError, match="val_fraction=0.2 has no effect"):
        DigitsDataModule(split_ratios=(0.8, 0.2), val_fraction=0.2, val_split="test").setup()


def _empty_class_tree(root: Path, counts: dict[str, int]) -> Path:
    """Class folders of empty ``.jpg`` files: the split is decided by listing files, never by decoding."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i:05d}.jpg").touch()
    return root


FLOWER_PHOTOS_COUNTS = {"daisy": 633, "dandelion": 898, "roses": 641, "sunflowers": 699, "tulips": 799}


def test_flowers5_fft_split_is_exactly_table_one(tmp_path):
    """FFT Table I: 2,204 train / 734 test on the 3,670 flower_photos images (+ 732 validation)."""
    _empty_class_tree(tmp_path / "flower_photos", FLOWER_PHOTOS_COUNTS)
    dm = Flowers5DataModule(root=str(tmp_path), **FAST)
    dm.setup()
    assert dm.split_sizes() == {"train": 2204, "val": 732, "test": 734}
    train, val, test = _keys(dm.train_set), _keys(dm.val_set), _keys(dm.test_set)
    assert not (train & val or train & test or val & test) and len(train | val | test) == 3670
    assert np.bincount(dm.train_set.targets).tolist() == [380, 539, 385, 420, 480]  # ceil(0.6 n_c)
    assert np.bincount(dm.test_set.targets).sum() == 734 and np.bincount(dm.test_set.targets).min() >= 126
    paper = Flowers5DataModule(root=str(tmp_path), **FAST, val_split="test")
    paper.setup()
    assert paper.split_sizes() == {"train": 2204, "val": 734, "test": 734}
    assert _keys(paper.train_set) == train and _keys(paper.test_set) == test
    other = Flowers5DataModule(root=str(tmp_path), **FAST, split_seed=1)
    other.setup()
    assert other.split_sizes() == dm.split_sizes() and _keys(other.test_set) != test


# the MSF-CA ceramic set: 1,548 images in 24 classes, per-class counts not published; we assume
# 21 classes of 65 images and 3 of 61 (floor(0.7 * 65) = 45, floor(0.7 * 61) = 42: 1,071 train / 477 test)
CERAMIC_COUNTS = {f"cup{i:02d}": 65 if i < 21 else 61 for i in range(24)}


def test_msfca_per_class_split_gives_477_test_images(tmp_path):
    root = _empty_class_tree(tmp_path / "ceramic", CERAMIC_COUNTS)
    assert sum(CERAMIC_COUNTS.values()) == 1548
    dm = ImageFolderDataModule(root=str(root), split="per_class", split_ratios=(0.7, 0.3), **FAST)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1071 and len(dm.test_set) == 477
    assert dm.split_sizes() == {"train": 964, "val": 107, "test": 477}  # default: 10 % of train validates
    assert np.bincount(dm.test_set.targets).tolist() == [20] * 21 + [19] * 3
    paper = ImageFolderDataModule(
        root=str(root), split="per_class", split_ratios=(0.7, 0.3), val_split="test", **FAST
    )
    paper.setup()
    assert paper.split_sizes() == {"train": 1071, "val": 477, "test": 477}
    assert _keys(paper.test_set) == _keys(dm.test_set)
    ratio = ImageFolderDataModule(
        root=str(root), split="ratio", split_ratios=(0.7, 0.3), val_split="test", **FAST
    )
    ratio.setup()
    assert len(ratio.test_set) == 464  # the global stratified split does not give the paper's 477


def test_tensor_cache_honours_the_validation_split(tmp_path):
    from datamodules.tensor_cache import TensorCacheDataModule

    inner = make("datamodules.CIFAR10DataModule", tmp_path / "data")
    dm = TensorCacheDataModule(inner, device="cpu", cache_dir=str(tmp_path / "tcache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.prepare_data()
        dm.setup("fit")
    assert dm.split_sizes() == {"train": 18, "val": 2, "test": 6}
    assert torch.equal(dm.tensors["val"][1], inner.val_set.labels)
    assert dm.cache_files["val"] != dm.cache_files["test"]
    paper = TensorCacheDataModule(
        make("datamodules.CIFAR10DataModule", tmp_path / "data", val_split="test"),
        device="cpu",
        cache_dir=str(tmp_path / "tcache"),
    )
    paper.prepare_data()
    paper.setup("fit")
    assert paper.split_sizes() == {"train": 20, "val": 6, "test": 6}
    assert paper.cache_files["val"] == paper.cache_files["test"]
