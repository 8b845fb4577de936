"""One LightningDataModule per dataset, plus the shared base (transforms, image loading, errors, splits)."""

from datamodules.base import (
    BadImageError,
    ClassificationDataModule,
    DatasetLayoutError,
    load_rgb,
    stratified_split,
)
from datamodules.digits import DigitsDataModule
from datamodules.image_folder import ImageFolderDataModule

__all__ = [
    "BadImageError",
    "ClassificationDataModule",
    "DatasetLayoutError",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "load_rgb",
    "stratified_split",
]
