"""Generic labelled image folders (custom data such as the MSF-CA paper's 24-class ceramic set).

Three ways to split (``split``):

* ``ratio``: one folder per class under ``root``; a seeded, stratified split of all images by
  ``split_ratios`` (``[train, test]`` or ``[train, val, test]``; sizes rounded once on the whole set).
* ``per_class``: the same folders, each class split on its own: ``floor(split_ratios[0] * n_c)`` training
  images of class ``c`` (and ``floor(split_ratios[1] * n_c)`` validation images with three ratios), the
  rest test. This is the reading of the MSF-CA paper's 7:3 split that gives its 477-image test set: with
  ``[0.7, 0.3]`` on 1,548 images (we assume 21 classes of 65 images and 3 of 61: the per-class counts are
  not published) it gives 1,071 train / 477 test, where ``ratio`` gives 1,084 / 464.
* ``folders``: pre-split ``root/train/<class>/``, ``root/val/<class>/`` and optionally ``root/test/<class>/``.
  With ``test/``, ``val/`` is the dataset's validation split; without it, ``val/`` is the test set and the
  validation split is carved from ``train/``. Class indices come from ``train/``.

Validation (``val_split``, see :mod:`datamodules.base`): a three-part ``split_ratios`` or a ``val/`` folder
beside ``test/`` is the validation split; otherwise ``holdout`` carves ``val_fraction`` of the training
images; ``test`` is the papers' protocol (validation = test).

``root`` may also be a ``.zip`` archive (e.g. ``../shared/data/cifar10-mini.zip``): it is extracted once into
``cache_dir`` (default ``$PAPERBENCH_CACHE/<zip name>-<hash>/``, else ``~/.cache/paperbench/...``; the hash
covers the archive's resolved path and its central directory, so different archives never share a folder),
extracting into a temporary folder and then renaming it, so concurrent processes never see half an archive;
it is re-extracted only when the archive's size or modification time changes. Inside the extracted archive,
single wrapping folders are descended automatically (``cifar10/train/<class>/`` is found for ``split: ratio``;
for ``split: folders`` descent stops at the folder that holds ``train/``).

Class names are the sorted folder names; ``num_classes`` is discovered in ``__init__`` when the data is on
disk (an explicit value must match).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from datamodules.base import (
    ClassificationDataModule,
    DataConfigError,
    DatasetLayoutError,
    ImageListDataset,
    SplitParts,
    find_class_folders,
    is_image_file,
    list_images,
    per_class_split,
    stratified_split,
)
from datamodules.file_walk import files_in_several_classes

_IGNORED_DIRS = {"__MACOSX"}


def _subdirs(path: Path) -> list[Path]:
    return sorted(
        p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_DIRS
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; a no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def extract_zip(archive: Path, cache_dir: Path) -> Path:
    """Extract ``archive`` into ``cache_dir`` once and return ``cache_dir``.

    A marker file records the archive's path, size and modification time; a changed archive is
    re-extracted. The archive is extracted into a temporary sibling folder that is then renamed into place,
    under a lock file, so concurrent processes (DDP ranks, parallel jobs) neither see half an archive nor
    replace an extraction another process is reading.
    """
    marker_text = f"{archive.resolve()} {archive.stat().st_size} {archive.stat().st_mtime_ns}\n"
    marker = cache_dir / ".paperbench_source"

    def fresh() -> bool:
        return marker.is_file() and marker.read_text() == marker_text

    if fresh():
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir.parent / f".{cache_dir.name}.lock"):
        if fresh():  # another process extracted it while we waited for the lock
            return cache_dir
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)  # zipfile strips absolute paths and '..' components
            (tmp / ".paperbench_source").write_text(marker_text)
            if cache_dir.exists():  # an extraction of an older archive: move it aside, swap the new one in
                stale = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.stale-", dir=cache_dir.parent))
                os.replace(cache_dir, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, cache_dir)
        except zipfile.BadZipFile as err:
            raise DatasetLayoutError(
                "ImageFolder", archive, detail=f"not a valid zip archive ({err})"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def cache_key(archive: Path) -> str:
    """``<stem>-<hash>``: the hash of the archive's resolved path and content identity.

    The content identity is the archive's central directory (every member's name, CRC-32 and size; read
    without extracting), so two different ``train.zip`` archives never share a cache folder, and a
    replaced archive at the same path gets a new one (a job still reading the old extraction keeps it).
    """
    digest = hashlib.sha256(str(archive.resolve()).encode())
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                digest.update(f"{info.filename}\0{info.CRC}\0{info.file_size}\n".encode())
    except zipfile.BadZipFile as err:
        raise DatasetLayoutError("ImageFolder", archive, detail=f"not a valid zip archive ({err})") from None
    return f"{archive.stem}-{digest.hexdigest()[:16]}"


def default_cache_root() -> Path:
    """``$PAPERBENCH_CACHE`` if set, else ``~/.cache/paperbench``."""
    return Path(os.path.expanduser(os.environ.get("PAPERBENCH_CACHE", "~/.cache/paperbench")))


def descend_wrappers(path: Path, split: str) -> Path:
    """Follow folders that only wrap a single sub-folder (as zip archives usually do)."""
    while True:
        if split == "folders" and (path / "train").is_dir():
            return path
        subdirs = _subdirs(path)
        has_images = any(p.is_file() and is_image_file(p) for p in path.iterdir())
        if len(subdirs) != 1 or has_images:
            return path
        path = subdirs[0]


class ImageFolderDataModule(ClassificationDataModule):
    """Labelled image folders, split by ratio (stratified or per class, seeded) or pre-split into folders.

    Args:
        root: the folder (or a ``.zip`` of it) holding one sub-folder per class (``split: ratio``) or
            ``train/``, ``val/`` and optionally ``test/`` (``split: folders``).
        num_classes: expected number of classes; ``None`` discovers it from the folders (an explicit value
            that does not match the folders is an error).
        split: ``ratio``, ``per_class`` or ``folders`` (see the module docstring).
        split_ratios: ``[train, test]`` or ``[train, val, test]`` fractions (``ratio`` / ``per_class``).
        cache_dir: where a ``.zip`` root is extracted (default ``$PAPERBENCH_CACHE/<zip name>-<hash>/``, and
            ``~/.cache/paperbench/<zip name>-<hash>/`` when that variable is unset; see :func:`cache_key`).
        **kwargs: the remaining :class:`~datamodules.base.ClassificationDataModule` arguments.
    """

    dataset_name = "ImageFolder"
    splits: tuple[str, ...] = ("folders", "ratio", "per_class")
    homepage = "your own data (see docs/datamodules.md); real sample archives: ../shared/data/cifar10-*.zip"

    def __init__(
        self,
        root: str = "data/images",
        num_classes: int | None = None,
        split: Literal["folders", "ratio", "per_class"] = "ratio",
        split_ratios: tuple[float, ...] = (0.7, 0.3),
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if split not in self.splits:
            raise DataConfigError(f"split must be {'|'.join(self.splits)}, got {split!r}")
        self.split = split
        self.split_ratios = tuple(split_ratios) if split_ratios is not None else None
        self.cache_dir = cache_dir
        self.source = self.root
        if self.root.lower().endswith(".zip"):
            archive = Path(self.root)
            if not archive.is_file():
                raise self.layout_error(archive, "zip archive not found")
            default = default_cache_root() / cache_key(archive)
            cache = Path(os.path.expanduser(cache_dir)) if cache_dir else default
            self.root = str(descend_wrappers(extract_zip(archive, cache), split))
        self.num_classes = self._discover_num_classes(num_classes)

    def _discover_num_classes(self, num_classes: int | None) -> int:
        """Count the class folders now (LightningCLI needs ``num_classes`` right after ``__init__``)."""
        if os.path.isdir(self.root):
            self.class_names = find_class_folders(self._class_dir, self.dataset_name, self.expected_layout)
            if num_classes is not None and num_classes != len(self.class_names):
                raise DataConfigError(
                    f"{self.dataset_name}: num_classes={num_classes} but {self._class_dir} holds "
                    f"{len(self.class_names)} class folders ({', '.join(self.class_names[:5])}"
                    f"{', ...' if len(self.class_names) > 5 else ''}); fix num_classes or the folder"
                )
            return len(self.class_names)
        if num_classes is None:
            raise self.layout_error(self.root, "dataset root not found (and num_classes not given)")
        return num_classes

    @property
    def expected_layout(self) -> str:  # type: ignore[override]
        if getattr(self, "split", "ratio") == "folders":
            return (
                "<root>/\n  train/<class_a>/*.jpg, train/<class_b>/*.jpg, ...\n"
                "  val/<class_a>/*.jpg, ...\n"
                "  test/<class_a>/*.jpg, ...   (optional; else val/ is the test set)"
            )
        return "<root>/\n  <class_a>/*.jpg\n  <class_b>/*.jpg\n  ...   (split by split_ratios)"

    @property
    def _class_dir(self) -> Path:
        return Path(self.root) / "train" if self.split == "folders" else Path(self.root)

    def _check_layout(self) -> None:
        self.require(*(["train", "val"] if self.split == "folders" else []))
        classes = find_class_folders(self._class_dir, self.dataset_name, self.expected_layout, self.homepage)
        if len(classes) != self.num_classes:
            raise DataConfigError(
                f"{self.dataset_name}: num_classes={self.num_classes} but {self._class_dir} holds "
                f"{len(classes)} class folders"
            )
        self.class_names = classes

    def _samples(self, directory: Path) -> list[tuple[str, int]]:
        assert self.class_names is not None
        index = {name: i for i, name in enumerate(self.class_names)}
        found = find_class_folders(directory, self.dataset_name, self.expected_layout, self.homepage)
        unknown = [c for c in found if c not in index]
        if unknown:
            raise DatasetLayoutError(
                self.dataset_name,
                directory / unknown[0],
                self.expected_layout,
                detail=f"class folder(s) {unknown[:5]} not present in {self._class_dir}",
            )
        samples = [(path, index[c]) for c in found for path in list_images(directory / c, self.dataset_name)]
        clashes = files_in_several_classes(samples)
        if clashes:  # e.g. a symlink alpha/loop -> .. : every file of beta would be an alpha image as well
            real, paths = next(iter(clashes.items()))
            raise DatasetLayoutError(
                self.dataset_name,
                directory,
                detail=f"{len(clashes)} file(s) appear under more than one class folder (symlinks?), "
                f"e.g. {real} "
                f"as {' and '.join(paths[:3])}; each image must be in exactly one class folder of",
            )
        return samples

    def _split_indices(self, labels: list[int]) -> list[list[int]]:
        """Index lists ``[train, test]`` or ``[train, val, test]`` of the ``ratio`` / ``per_class`` splits."""
        assert self.split_ratios is not None
        splitter = per_class_split if self.split == "per_class" else stratified_split
        return splitter(labels, self.split_ratios, self.split_seed, self.dataset_name)

    def _build_parts(self) -> SplitParts:
        root = Path(self.root)
        if self.split == "folders":
            train = ImageListDataset(self._samples(root / "train"), self.train_transform)
            val = ImageListDataset(self._samples(root / "val"), self.eval_transform)
            if not (root / "test").is_dir():  # val/ is the test set; validation comes from val_split
                return SplitParts(train=train, test=val)
            test = ImageListDataset(self._samples(root / "test"), self.eval_transform)
            return SplitParts(train=train, test=test, val=val, official=(train, val))
        samples = self._samples(root)
        parts = [[samples[i] for i in part] for part in self._split_indices([lbl for _, lbl in samples])]
        return SplitParts(
            train=ImageListDataset(parts[0], self.train_transform),
            test=ImageListDataset(parts[-1], self.eval_transform),
            val=ImageListDataset(parts[1], self.eval_transform) if len(parts) == 3 else None,
        )
