"""One LightningDataModule per dataset, plus the shared base (transforms, image loading, errors, splits)."""

from datamodules.base import (
    BadImageError,
    ClassificationDataModule,
    DataConfigError,
    DatasetLayoutError,
    load_rgb,
    stratified_split,
)
from datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from datamodules.cub import CUB200DataModule
from datamodules.digits import DigitsDataModule
from datamodules.fgvc_aircraft import FGVCAircraftDataModule
from datamodules.flowers import Flowers5DataModule, Flowers102DataModule
from datamodules.image_folder import ImageFolderDataModule
from datamodules.imagenet import ImageNetDataModule
from datamodules.stanford_cars import StanfordCarsDataModule
from datamodules.tiny_imagenet import TinyImageNetDataModule

__all__ = [
    "BadImageError",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CUB200DataModule",
    "ClassificationDataModule",
    "DataConfigError",
    "DatasetLayoutError",
    "DigitsDataModule",
    "FGVCAircraftDataModule",
    "Flowers5DataModule",
    "Flowers102DataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "StanfordCarsDataModule",
    "TinyImageNetDataModule",
    "load_rgb",
    "stratified_split",
]
