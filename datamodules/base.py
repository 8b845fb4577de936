"""Shared base of every datamodule: arguments, transforms, image loading, errors and split helpers.

Every dataset module subclasses :class:`ClassificationDataModule` and implements two things:

* ``_check_layout()``: raise :class:`DatasetLayoutError` when the on-disk layout is not the official one;
* ``_build_parts()``: return the dataset's :class:`SplitParts`: its training images (the training set of
  the papers' protocol), its test images and, where the dataset has them, a validation part its own split
  already holds out and the dataset's shipped (train, val) split.

**Validation split** (one design for every datamodule, resolved here by :meth:`_build_datasets`):
``val_split`` chooses where the validation images come from:

* ``holdout`` (default): a seeded, stratified ``val_fraction`` (default 0.1) of the training images
  (``sklearn.model_selection.train_test_split(stratify=..., random_state=split_seed)``), disjoint from
  train and test; the model trains on the rest. Where the dataset's split already holds out a validation
  part (a three-part ``split_ratios``, the Flowers-5 FFT split, ``train/ val/ test/`` folders) that part is
  the validation split and ``val_fraction`` is not used.
* ``official``: the dataset's shipped validation split (FGVC-Aircraft ``train``/``val``, Flowers-102
  ``trnid``/``valid``, ``train/``/``val/`` folders); refused for datasets that ship none.
* ``test``: the papers' own protocol, validation = test (checkpoint selection then sees the test set);
  the model trains on all training images.

``num_classes`` (and ``class_names`` where it is known without reading the disk) is set in ``__init__``:
LightningCLI links ``data.num_classes`` into the model right after the datamodule is instantiated, so a
fixed-class dataset must not need its files at that point.

Image files are decoded with PIL and always converted to 3-channel 8-bit RGB (:func:`load_rgb` handles
grayscale, palette, CMYK, RGBA/LA (composited on white) and 16-bit/float images). A file that cannot be
decoded either raises :class:`BadImageError` naming it (``on_bad_image="error"``, the default) or is dropped
after a scan at ``setup`` time with a single warning giving the count (``on_bad_image="skip"``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.transforms import v2

from datamodules.file_walk import walk_files

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
)

TrainCrop = Literal["random_resized", "random", "center", "resize"]
OnBadImage = Literal["error", "skip"]
ValSplit = Literal["holdout", "official", "test"]
VAL_SPLITS: tuple[str, ...] = ("holdout", "official", "test")
#: default ``val_fraction``: the share of the training images held out for validation
DEFAULT_VAL_FRACTION = 0.1


class DataConfigError(ValueError):
    """A datamodule argument is invalid or does not match the data (wrong ``num_classes``, bad ratios...)."""

    user_error: ClassVar[bool] = True  # main.py prints the message alone, without a traceback


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is missing or is not laid out the way the datamodule expects.

    The message names the dataset, the missing path, the expected layout (a short tree) and where to get
    the data, so that the error alone tells the user what to fix.
    """

    user_error: ClassVar[bool] = True  # main.py prints the message alone, without a traceback

    def __init__(
        self, dataset: str, missing: str | os.PathLike[str], layout: str = "", url: str = "", detail: str = ""
    ) -> None:
        lines = [f"{dataset}: {detail or 'expected path not found'}: {missing}"]
        if layout:
            lines += ["Expected layout:", *("    " + line for line in layout.strip("\n").splitlines())]
        if url:
            lines.append(f"Get the data from: {url}")
        self.dataset = dataset
        self.missing = str(missing)
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # OSError would otherwise format as "[Errno None] ..." for some args
        return self.args[0]


class BadImageError(RuntimeError):
    """An image file exists but cannot be decoded (corrupt, truncated or not an image)."""

    user_error: ClassVar[bool] = True

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        # With one argument the first is the whole message: DataLoader workers re-raise an exception as
        # ``type(exc)(message)``, and this keeps the type (and ``user_error``) across processes.
        super().__init__(
            str(path)
            if reason is None
            else f"cannot decode image {path}: {reason}. Fix or delete the file, or set "
            "`data.init_args.on_bad_image: skip` to drop undecodable files (they are counted at setup)."
        )
        self.path = str(path)


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file into an 8-bit, 3-channel RGB PIL image.

    Handles every PIL mode a real dataset contains: ``L``/``1``/``P`` (expanded), ``CMYK``/``YCbCr``
    (converted), ``RGBA``/``LA``/``PA`` and palette images with transparency (alpha-composited on white,
    rather than PIL's default of dropping alpha, which turns transparent pixels black), ``I;16``/``I``
    (16-bit or 32-bit integers, rescaled by their bit depth rather than clipped at 255) and ``F``
    (min-max scaled).

    Raises:
        BadImageError: the file cannot be decoded (truncated JPEG, not an image, ...).
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise BadImageError(path, f"{type(err).__name__}: {err}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an already-loaded PIL image of any mode to 8-bit RGB (see :func:`load_rgb`)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            # 16-bit PNGs decode as I;16 (recent Pillow) or I (older Pillow); both hold 0..65535.
            peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            arr = arr * (255.0 / peak)
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return img.convert("RGB")


class ImageListDataset(Dataset):
    """Dataset over a list of ``(path, label)`` pairs: decoded to RGB, then ``transform`` applied.

    Args:
        samples: ``(file path, class index)`` pairs.
        transform: callable applied to the RGB PIL image.
    """

    def __init__(
        self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], Any] | None = None
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        """Class index of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class TensorImageDataset(Dataset):
    """In-memory dataset of uint8 images ``(N, 3, H, W)`` and integer labels ``(N,)``."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[Any], Any] | None = None
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        """Class index of every sample, in order."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def stratified_split(
    labels: Sequence[int], ratios: Sequence[float], seed: int, dataset: str = "dataset"
) -> list[list[int]]:
    """Seeded, stratified split of sample indices into ``len(ratios)`` parts (2 or 3).

    Uses ``sklearn.model_selection.train_test_split(stratify=..., random_state=seed)``: first the last part
    (test) is split off, then (with three ratios) the middle part (val) from the remainder. The same
    labels, ratios and seed always give the same split.

    Args:
        labels: class index of every sample.
        ratios: fractions summing to 1, e.g. ``(0.7, 0.3)`` or ``(0.7, 0.15, 0.15)``.
        seed: random seed.
        dataset: name used in error messages.

    Returns:
        One sorted list of indices per ratio.
    """
    from sklearn.model_selection import train_test_split

    if (
        len(ratios) not in (2, 3)
        or any(r <= 0 for r in ratios)
        or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6)
    ):
        raise DataConfigError(
            f"{dataset}: split_ratios must be 2 or 3 positive fractions summing to 1, got {list(ratios)}"
        )
    indices = np.arange(len(labels))
    labels_arr = np.asarray(labels)
    # Absolute sizes (rounded once, on the whole set) so that e.g. 0.7/0.15/0.15 of 200 is exactly 140/30/30
    # (fractions of the remainder would be rounded up by sklearn after floating-point error).
    n_last = max(1, round(ratios[-1] * len(labels)))
    try:
        rest, last = train_test_split(indices, test_size=n_last, stratify=labels_arr, random_state=seed)
        parts = [rest, last]
        if len(ratios) == 3:
            n_val = max(1, round(ratios[1] * len(labels)))
            train, val = train_test_split(rest, test_size=n_val, stratify=labels_arr[rest], random_state=seed)
            parts = [train, val, last]
    except ValueError as err:
        counts = np.bincount(labels_arr)
        raise DataConfigError(
            f"{dataset}: cannot make a stratified split {list(ratios)} of {len(labels)} images in "
            f"{int((counts > 0).sum())} classes "
            f"(smallest class has {int(counts[counts > 0].min())} images): {err}"
        ) from None
    return [sorted(int(i) for i in part) for part in parts]


def holdout_split(
    labels: Sequence[int], fraction: float, seed: int, dataset: str = "dataset"
) -> tuple[list[int], list[int]]:
    """Seeded, stratified ``(train, val)`` indices: ``round(fraction * n)`` (at least 1) samples for val.

    ``sklearn.model_selection.train_test_split(stratify=labels, random_state=seed)``. Where stratification is
    impossible (a class with a single image, or fewer validation images than classes: tiny datasets), the
    split is the same seeded split without stratification, with one warning saying so.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_val = max(1, round(fraction * n))
    if n - n_val < 1:
        raise DataConfigError(
            f"{dataset}: cannot hold out val_fraction={fraction} of {n} training image(s) for validation and "
            "keep any for training; use val_split: test (the papers' protocol) or more data"
        )
    indices = np.arange(n)
    try:
        train, val = train_test_split(
            indices, test_size=n_val, stratify=np.asarray(labels), random_state=seed
        )
    except ValueError as err:
        warnings.warn(
            f"{dataset}: validation split of {n_val} of {n} training images is not stratified "
            f"({str(err).split('. ')[0]})",
            stacklevel=2,
        )
        train, val = train_test_split(indices, test_size=n_val, random_state=seed)
    return sorted(int(i) for i in train), sorted(int(i) for i in val)


def per_class_split(
    labels: Sequence[int], ratios: Sequence[float], seed: int, dataset: str = "dataset"
) -> list[list[int]]:
    """Seeded split of every class on its own: ``floor(ratio * n_c)`` images of class ``c`` per leading part.

    With ``(0.7, 0.3)`` each class gives ``floor(0.7 n_c)`` training images and the rest to test (the
    MSF-CA reading: 1,071 / 477 of 1,548 images); with ``(train, val, test)`` also ``floor(val * n_c)``
    validation images. Each class is shuffled with ``train_test_split(random_state=seed)``.

    Returns:
        One sorted list of indices per ratio.
    """
    from sklearn.model_selection import train_test_split

    if (
        len(ratios) not in (2, 3)
        or any(r <= 0 for r in ratios)
        or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6)
    ):
        raise DataConfigError(
            f"{dataset}: split_ratios must be 2 or 3 positive fractions summing to 1, got {list(ratios)}"
        )
    labels_arr = np.asarray(labels)
    parts: list[list[int]] = [[] for _ in ratios]
    for label in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == label)
        sizes = [math.floor(r * len(members) + 1e-9) for r in ratios[:-1]]
        if min(sizes) < 1 or sum(sizes) >= len(members):
            raise DataConfigError(
                f"{dataset}: class {int(label)} has {len(members)} image(s): too few for a per-class split "
                f"{list(ratios)} (every part needs at least one image of every class)"
            )
        rest = members
        for k, size in enumerate(sizes):
            taken, rest = train_test_split(rest, train_size=size, random_state=seed)
            parts[k] += taken.tolist()
        parts[-1] += rest.tolist()
    return [sorted(int(i) for i in part) for part in parts]


def subset_dataset(ds: Dataset, indices: Sequence[int], transform: Callable[[Any], Any] | None) -> Dataset:
    """Samples ``indices`` of an :class:`ImageListDataset` / :class:`TensorImageDataset`, new transform."""
    if isinstance(ds, ImageListDataset):
        return ImageListDataset([ds.samples[i] for i in indices], transform)
    if isinstance(ds, TensorImageDataset):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return TensorImageDataset(ds.images[idx], ds.labels[idx], transform)
    raise TypeError(
        f"cannot take a subset of a {type(ds).__name__} (ImageListDataset/TensorImageDataset only)"
    )


@dataclass
class SplitParts:
    """What a dataset module builds; :meth:`ClassificationDataModule._build_datasets` picks train/val/test.

    Attributes:
        train: the training images of the dataset's standard protocol (train transform).
        test: the test images (eval transform).
        val: a validation part the dataset's own split already holds out, disjoint from ``train`` and
            ``test`` (eval transform); ``val_split: holdout`` uses it instead of carving ``val_fraction``.
        official: the dataset's shipped ``(train, val)`` split of its training images (``val_split:
            official``); ``None`` when it ships none.
    """

    train: Dataset
    test: Dataset
    val: Dataset | None = None
    official: tuple[Dataset, Dataset] | None = None


def find_class_folders(directory: Path, dataset: str, layout: str = "", url: str = "") -> list[str]:
    """Sorted names of the class sub-folders of ``directory`` (hidden folders ignored).

    Raises:
        DatasetLayoutError: ``directory`` is missing or holds no sub-folders.
    """
    if not directory.is_dir():
        raise DatasetLayoutError(dataset, directory, layout, url)
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetLayoutError(dataset, directory, layout, url, detail="no class sub-folders in")
    return classes


def list_images(directory: Path, dataset: str, recursive: bool = True) -> list[str]:
    """Sorted image files under ``directory``.

    Raises:
        DatasetLayoutError: the folder holds no image file (an empty class folder).
    """
    # os.scandir reads the file type from the directory entry: no stat() per file, which matters on
    # ImageNet-sized folders and network file systems. Symlinked folders are followed (as torchvision does),
    # each folder once (a link loop is not recursed into); a dangling link to an image is an error now.
    if recursive:
        found, dangling = walk_files(directory)
        dangling = [p for p in dangling if is_image_file(p)]
        if dangling:
            raise DatasetLayoutError(
                dataset,
                Path(dangling[0]),
                detail=f"{len(dangling)} dangling symlink(s) (target missing; fix or delete them), the first",
            )
    else:
        with os.scandir(directory) as entries:
            found = [entry.path for entry in entries if entry.is_file()]
    files = sorted(f for f in found if is_image_file(f) and not os.path.basename(f).startswith("."))
    if not files:
        raise DatasetLayoutError(
            dataset,
            directory,
            detail=f"class folder holds no image file (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})",
        )
    return files


class ClassificationDataModule(L.LightningDataModule):
    """Base datamodule for image classification: shared arguments, transforms and dataloaders.

    Args:
        root: dataset root directory (see each subclass for the expected layout).
        batch_size: batch size PER DEVICE (global batch = batch_size x devices x num_nodes).
        num_workers: dataloader worker processes.
        image_size: side of the square network input.
        resize_size: shorter side the image is resized to before the centre crop at evaluation (and before
            the random crop when ``train_crop="random"`` / ``"center"``); ``None`` means
            ``round(image_size / 0.875)`` (the ImageNet 256 -> 224 convention), or ``image_size`` for the
            low-resolution datasets (CIFAR, Tiny ImageNet, Digits) whose images already have the input size.
        train_crop: training crop: ``random_resized`` (RandomResizedCrop with ``scale``), ``random``
            (resize to ``resize_size`` then RandomCrop with ``crop_padding``), ``center`` (resize then
            CenterCrop, no random crop), ``resize`` (resize the whole image to ``image_size`` squared, then,
            when ``crop_padding`` > 0, RandomCrop back to ``image_size`` from the zero-padded image; the
            evaluation pipeline then also resizes the whole image, without cropping).
        crop_padding: zero padding of each border before RandomCrop (CIFAR: 4), for ``random`` and ``resize``.
        scale: area range of RandomResizedCrop.
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rotation: maximum rotation in degrees (0 = off).
        color_jitter: brightness/contrast/saturation jitter strength (0 = off).
        timm_train_transform: if set, the training pipeline is timm's ``timm.data.create_transform(
            is_training=True)`` with these keyword arguments (e.g. DeiT's ``auto_augment:
            rand-m9-mstd0.5-inc1``, ``interpolation: bicubic``, ``re_prob: 0.25``, ``re_mode: pixel``),
            and ``image_size``, ``scale``, ``hflip``, ``vflip``, ``mean``, ``std`` from this datamodule; it
            needs ``train_crop: random_resized`` and no ``rotation``/``color_jitter`` of ours (timm's own
            ``color_jitter`` key is one of its arguments). Evaluation is unchanged.
        mean: per-channel normalisation mean (on 0..1 pixels).
        std: per-channel normalisation standard deviation.
        pin_memory: pin host memory (only used when CUDA is available).
        persistent_workers: keep workers alive between epochs (only used when ``num_workers > 0``).
        download: download the data if missing (only datasets torchvision can download; never in tests).
        on_bad_image: ``error`` raises :class:`BadImageError` naming an undecodable file when it is loaded;
            ``skip`` decodes every file once at setup, drops the bad ones and warns once with their count.
        val_split: where the validation images come from: ``holdout`` (a seeded, stratified
            ``val_fraction`` of the training images), ``official`` (the dataset's shipped validation split)
            or ``test`` (the papers' protocol: validation = test). See the module docstring.
        val_fraction: share of the training images held out for validation with ``val_split: holdout``.
        split_seed: seed of every random split (the validation holdout and the ratio splits).
    """

    dataset_name: ClassVar[str] = "dataset"
    homepage: ClassVar[str] = ""
    expected_layout: ClassVar[str] = ""
    #: image_size / resize_size when ``resize_size`` is None.
    eval_crop_ratio: ClassVar[float] = 0.875
    #: name of the ``torchvision.datasets`` class that downloads this dataset into ``root`` in our layout
    #: (``None``: ``download: true`` is refused with a pointer to ``homepage``).
    torchvision_download: ClassVar[str | None] = None

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 32,
        num_workers: int = 4,
        image_size: int = 224,
        resize_size: int | None = None,
        train_crop: TrainCrop = "random_resized",
        crop_padding: int = 0,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        vflip: float = 0.0,
        rotation: float = 0.0,
        color_jitter: float = 0.0,
        timm_train_transform: dict[str, Any] | None = None,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        download: bool = False,
        on_bad_image: OnBadImage = "error",
        val_split: ValSplit = "holdout",
        val_fraction: float = DEFAULT_VAL_FRACTION,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        # Every constructor argument of the whole subclass chain, stored in checkpoints
        # (``datamodule_hyper_parameters``) next to the config LightningCLI saves. ``num_classes`` is left
        # out: Lightning refuses to log when the model's and the datamodule's hparams share a key with
        # different values (ImageFolder's ``None`` vs the model's discovered count).
        self.save_hyperparameters(ignore=["num_classes"])
        if batch_size < 1:
            raise DataConfigError(f"batch_size must be >= 1, got {batch_size}")
        if image_size < 1:
            raise DataConfigError(f"image_size must be >= 1, got {image_size}")
        if train_crop not in ("random_resized", "random", "center", "resize"):
            raise DataConfigError(
                f"train_crop must be random_resized|random|center|resize, got {train_crop!r}"
            )
        if not 0 < scale[0] <= scale[1] <= 1:
            raise DataConfigError(f"scale must satisfy 0 < min <= max <= 1, got {list(scale)}")
        for name, p in (("hflip", hflip), ("vflip", vflip)):
            if not 0 <= p <= 1:
                raise DataConfigError(f"{name} is a probability in [0, 1], got {p}")
        if on_bad_image not in ("error", "skip"):
            raise DataConfigError(f"on_bad_image must be error|skip, got {on_bad_image!r}")
        if val_split not in VAL_SPLITS:
            raise DataConfigError(f"val_split must be {'|'.join(VAL_SPLITS)}, got {val_split!r}")
        if not 0 < val_fraction < 1:
            raise DataConfigError(f"val_fraction is a fraction in (0, 1), got {val_fraction}")
        if download and self.torchvision_download is None:
            raise DataConfigError(
                f"{self.dataset_name}: download: true is not supported "
                "(torchvision cannot fetch this dataset); "
                f"get it from {self.homepage} and set root"
            )
        self.root = os.path.expanduser(str(root))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.resize_size = (
            resize_size
            if resize_size is not None
            else max(image_size, round(image_size / self.eval_crop_ratio))
        )
        self.train_crop = train_crop
        self.crop_padding = crop_padding
        self.scale = tuple(scale)
        self.hflip = hflip
        self.vflip = vflip
        self.rotation = rotation
        self.color_jitter = color_jitter
        self.timm_train_transform = dict(timm_train_transform) if timm_train_transform else None
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.download = download
        self.on_bad_image = on_bad_image
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.num_classes: int = 0
        self.class_names: list[str] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_transform = self.build_train_transform()
        self.eval_transform = self.build_eval_transform()

    # ------------------------------------------------------------------ transforms
    def _finish(self) -> list[Any]:
        return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(self.mean), std=list(self.std))]

    def _timm_transform(self) -> Any:
        """timm's training pipeline (``timm_train_transform``), after a conversion of any input to PIL."""
        from timm.data import create_transform

        kwargs = self.timm_train_transform or {}
        ours = {"input_size", "is_training", "mean", "std", "scale", "hflip", "vflip"} & set(kwargs)
        if ours:
            raise DataConfigError(
                f"timm_train_transform: {sorted(ours)} come from the datamodule's own arguments "
                "(image_size, scale, hflip, vflip, mean, std); set them there"
            )
        if self.train_crop != "random_resized" or self.rotation or self.color_jitter:
            raise DataConfigError(
                "timm_train_transform replaces the training pipeline (timm's RandomResizedCrop and its "
                "augmentations): use train_crop: random_resized and rotation: 0, color_jitter: 0 (timm's "
                f"color_jitter is a key of timm_train_transform); got train_crop {self.train_crop!r}, "
                f"rotation {self.rotation}, color_jitter {self.color_jitter}"
            )
        try:
            timm_ops = create_transform(
                self.image_size,
                is_training=True,
                scale=self.scale,
                hflip=self.hflip,
                vflip=self.vflip,
                mean=self.mean,
                std=self.std,
                **kwargs,
            )
        except TypeError as err:
            raise DataConfigError(
                f"timm_train_transform: {err} (keys: timm.data.create_transform's)"
            ) from None
        return v2.Compose([v2.ToPILImage(), timm_ops])  # timm's transforms read PIL images

    def build_train_transform(self) -> v2.Compose:
        """The training pipeline built from the augmentation arguments (input: PIL, ndarray HWC or
        CHW tensor)."""
        if self.timm_train_transform:
            return self._timm_transform()
        size = self.image_size
        ops: list[Any] = [v2.ToImage()]
        if self.train_crop == "random_resized":
            ops.append(v2.RandomResizedCrop(size, scale=self.scale, antialias=True))
        elif self.train_crop == "random":
            ops += [
                v2.Resize(self.resize_size, antialias=True),
                v2.RandomCrop(size, padding=self.crop_padding or None, pad_if_needed=True),
            ]
        elif self.train_crop == "center":
            ops += [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(size)]
        else:
            ops.append(v2.Resize((size, size), antialias=True))
            if self.crop_padding > 0:
                ops.append(v2.RandomCrop(size, padding=self.crop_padding))
        if self.hflip > 0:
            ops.append(v2.RandomHorizontalFlip(self.hflip))
        if self.vflip > 0:
            ops.append(v2.RandomVerticalFlip(self.vflip))
        if self.rotation > 0:
            ops.append(v2.RandomRotation(self.rotation))
        if self.color_jitter > 0:
            ops.append(v2.ColorJitter(self.color_jitter, self.color_jitter, self.color_jitter))
        return v2.Compose(ops + self._finish())

    def build_eval_transform(self) -> v2.Compose:
        """Evaluation pipeline: resize the shorter side to ``resize_size``, centre-crop ``image_size``."""
        size = self.image_size
        ops: list[Any] = [v2.ToImage()]
        if self.train_crop == "resize":
            ops.append(v2.Resize((size, size), antialias=True))
        else:
            ops += [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(size)]
        return v2.Compose(ops + self._finish())

    # ------------------------------------------------------------------ hooks for subclasses
    def _check_layout(self) -> None:
        """Raise :class:`DatasetLayoutError` if the files are not where they should be."""

    def _build_parts(self) -> SplitParts:
        """Return the dataset's :class:`SplitParts` (``self.train_transform`` / ``self.eval_transform``)."""
        raise NotImplementedError

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """The ``(train, val, test)`` datasets: :meth:`_build_parts` resolved by ``val_split``."""
        parts = self._build_parts()
        name = self.dataset_name
        if self.val_split == "test":
            self._refuse_val_fraction("val_split: test (validation = test)")
            return parts.train, parts.test, parts.test
        if self.val_split == "official":
            if parts.official is None:
                raise DataConfigError(
                    f"{name}: val_split: official, but this dataset (in this configuration) ships no "
                    "validation split; use val_split: holdout (val_fraction of the training images) or "
                    "val_split: test (the papers' protocol)"
                )
            self._refuse_val_fraction("val_split: official")
            return parts.official[0], parts.official[1], parts.test
        if parts.val is not None:
            self._refuse_val_fraction("a split that already holds out a validation part")
            return parts.train, parts.val, parts.test
        labels = parts.train.targets  # type: ignore[attr-defined]
        train_idx, val_idx = holdout_split(labels, self.val_fraction, self.split_seed, name)
        return (
            subset_dataset(parts.train, train_idx, self.train_transform),
            subset_dataset(parts.train, val_idx, self.eval_transform),
            parts.test,
        )

    def _refuse_val_fraction(self, why: str) -> None:
        if not math.isclose(self.val_fraction, DEFAULT_VAL_FRACTION):
            raise DataConfigError(
                f"{self.dataset_name}: val_fraction={self.val_fraction} has no effect with {why}; remove it "
                "(it only sizes the validation split that val_split: holdout carves from the training images)"
            )

    def layout_error(self, missing: str | os.PathLike[str], detail: str = "") -> DatasetLayoutError:
        """A :class:`DatasetLayoutError` for this dataset (name, expected layout, homepage filled in)."""
        return DatasetLayoutError(self.dataset_name, missing, self.expected_layout, self.homepage, detail)

    def locate(self, subdir: str, marker: str) -> str:
        """The dataset folder: ``root`` if it holds ``marker``, else ``root/subdir`` if that does,
        else ``root``.

        Lets ``root`` name either the dataset folder itself (``data/CUB_200_2011``) or its parent
        (``data``, the torchvision convention).
        """
        if os.path.exists(os.path.join(self.root, marker)):
            return self.root
        nested = os.path.join(self.root, subdir)
        # A nested folder with the dataset's name is the dataset folder even when the marker is missing,
        # so a layout error then names the right missing path.
        if os.path.exists(os.path.join(nested, marker)) or os.path.isdir(nested):
            return nested
        return self.root

    def require(self, *relative: str) -> None:
        """Raise a layout error naming the first of ``root/relative`` paths that does not exist."""
        if not os.path.isdir(self.root):
            raise self.layout_error(self.root, "dataset root not found")
        for rel in relative:
            path = os.path.join(self.root, rel)
            if not os.path.exists(path):
                raise self.layout_error(path)

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """With ``download: true``, fetch the dataset with torchvision when its layout is not complete.

        Lightning calls this on one process per node before :meth:`setup`.
        """
        if not self.download or self.torchvision_download is None:
            return
        try:
            self._check_layout()
            return
        except DatasetLayoutError:
            pass
        from torchvision import datasets

        os.makedirs(self.root, exist_ok=True)
        getattr(datasets, self.torchvision_download)(self.root, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Check the layout and build the datasets (once; later calls are no-ops)."""
        if self.train_set is not None:
            return
        self._check_layout()
        train, val, test = self._build_datasets()
        if self.on_bad_image == "skip":
            train, val, test = self._drop_bad_images([train, val, test])
        self.train_set, self.val_set, self.test_set = train, val, test

    def _drop_bad_images(self, datasets: list[Dataset]) -> list[Dataset]:
        """Decode every file of the file-based datasets once; drop undecodable ones; warn once with the
        count."""
        paths = sorted({p for ds in datasets if isinstance(ds, ImageListDataset) for p, _ in ds.samples})
        if not paths:
            return datasets

        def bad(path: str) -> bool:
            try:
                load_rgb(path)
            except BadImageError:
                return True
            return False

        with ThreadPoolExecutor(max_workers=max(1, self.num_workers)) as pool:
            flags = list(pool.map(bad, paths))
        bad_paths = {p for p, flag in zip(paths, flags) if flag}
        if not bad_paths:
            return datasets
        examples = ", ".join(sorted(bad_paths)[:3])
        warnings.warn(
            f"{self.dataset_name}: skipped {len(bad_paths)} undecodable image file(s) of {len(paths)} "
            f"(on_bad_image=skip), e.g. {examples}",
            stacklevel=2,
        )
        out: list[Dataset] = []
        replaced: dict[int, Dataset] = {}
        for ds in datasets:
            if isinstance(ds, ImageListDataset):
                if id(ds) not in replaced:  # val and test may be the same object
                    replaced[id(ds)] = ImageListDataset(
                        [s for s in ds.samples if s[0] not in bad_paths], ds.transform
                    )
                ds = replaced[id(ds)]
            out.append(ds)
        return out

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before requesting a dataloader")
        workers = self.num_workers
        # training: torchdata's StatefulDataLoader (a DataLoader that Lightning checkpoints and
        # fast-forwards),
        # so a run stopped mid-epoch (SIGTERM, SLURM requeue) resumes at the batch it stopped at
        loader_cls = StatefulDataLoader if train else DataLoader
        return loader_cls(
            dataset,
            batch_size=self.batch_size,
            sampler=self._train_sampler(dataset) if train else _eval_sampler(dataset),
            # the loader's own generator: building and fast-forwarding it draws nothing from the global RNG
            generator=torch.Generator().manual_seed(torch.initial_seed()) if train else None,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            # Dropping the ragged last batch only matters for training (a batch of 1 breaks BatchNorm) and
            # only when there is at least one full batch to keep.
            drop_last=train and len(dataset) > self.batch_size,  # type: ignore[arg-type]
        )

    def _train_sampler(self, dataset: Dataset) -> Sampler:
        """A permutation that depends only on the run's seed and the epoch (sharded under DDP).

        Stateless, so a run resumed mid-epoch (SIGTERM, SLURM requeue) replays the interrupted epoch's order
        and the StatefulDataLoader skips the batches already trained on. The epoch is set here, not only by
        Lightning's ``set_epoch`` at the epoch start, because the resumed loader is iterated before that.
        """
        from torch.utils.data import DistributedSampler

        world, rank = 1, 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=torch.initial_seed() % 2**62
        )
        # the epoch Lightning passes to set_epoch (after a restore, trainer.current_epoch still lags behind)
        sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed if self.trainer else 0)
        return sampler

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (Lightning adds a DistributedSampler under DDP)."""
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, never shuffled."""
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, never shuffled."""
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches over the test split, never shuffled."""
        return self._loader(self.test_set, train=False)

    def split_sizes(self) -> dict[str, int]:
        """Number of samples in each split (after :meth:`setup`)."""
        return {
            name: len(ds)
            for name, ds in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set))  # type: ignore[arg-type]
            if ds is not None
        }


def _eval_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, shard evaluation data so that every sample is seen exactly once.

    Lightning would otherwise wrap val/test loaders in a ``DistributedSampler``, which pads the last shard by
    repeating samples, so metrics would count a few samples twice. Lightning leaves a loader that already
    has a ``DistributedSampler`` alone; shards may then differ by one batch, which is safe without gradients.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if torch.distributed.get_world_size() < 2:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)
