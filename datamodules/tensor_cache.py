"""Device-resident tensor cache for small datasets: decode once, augment on the device per batch.

:class:`TensorCacheDataModule` wraps any of the project's datamodules (composition: the inner datamodule
still finds the files, splits them and defines the augmentation settings). At ``prepare_data``/``setup``
every image of every split is decoded ONCE and resized with an evaluation-style deterministic transform
to a square storage size, into a ``uint8`` tensor ``(N, 3, S, S)``:

* ``train_crop`` ``random_resized`` / ``random`` / ``center``: resize the shorter side to ``S``, centre-crop
  ``S x S`` (the inner eval transform's geometry at ``S``);
* ``train_crop: resize``: resize the whole image to ``S x S`` (as the inner pipelines do).

``S`` (``storage_size``) defaults to the inner datamodule's ``resize_size`` (CIFAR: 32; 224-px recipes:
256). The tensors are written to ``cache_dir`` (atomically: a temporary file renamed into place) under a
name keyed by the dataset, split, root, storage size and a fingerprint of the split's samples (paths,
sizes and modification times of image files; the pixels and labels of in-memory datasets), so a later run
loads them in a second instead of decoding again. They are then kept on the target device (the GPU the
trainer uses, with ``device: cuda`` or ``auto``) and every batch is gathered and augmented there
(:func:`kornia_pipeline`): the inner datamodule's own torchvision transform (``build_train_transform()`` /
``build_eval_transform()``) is translated step by step, each random step into the ``kornia.augmentation``
op that draws it per sample (``RandomResizedCrop``, ``RandomCrop`` with padding, flips,
``RandomRotation``, ``ColorJitter``), each deterministic step (``Resize``, ``CenterCrop``, ``Normalize``)
kept as the datamodule's own torchvision op applied to the batch. The augmentation is described once, by
the datamodule; a step without a batched equivalent is refused.

With ``storage_size == resize_size`` evaluation batches equal the inner evaluation pipeline for square
images. Differences from the inner PIL pipeline, by design: a non-square image is stored as its centre
square, so random crops are drawn from that square rather than from the whole picture; resampling
happens on the stored image (two resizes where torchvision does one when ``S`` differs from the size the
inner pipeline resizes to); kornia's bilinear ``RandomResizedCrop`` does not antialias.

Batches are served without DataLoader workers: a seeded permutation per epoch (same on every rank),
sharded by global rank (``perm[rank::world_size]``, truncated to equal shard sizes for training so every
rank runs the same number of steps; evaluation shards cover every sample exactly once, without the
duplicates a ``DistributedSampler`` pads with). Lightning calls ``set_epoch`` on the loader's ``sampler``
every epoch, so resuming reproduces the order. Consecutive batches of the permutation, about
``AUGMENT_SAMPLES`` images (at most ``AUGMENT_BYTES`` of float32 input), are gathered and augmented in one
call and then served batch by batch: every sample still draws its own parameters, and kornia's fixed cost
per call is paid once per chunk instead of once per batch.

YAML::

    data:
      class_path: datamodules.tensor_cache.TensorCacheDataModule
      init_args:
        device: cuda
        cache_dir: /scratch/paperbench-cache     # default: $PAPERBENCH_CACHE/tensor_cache
        datamodule:
          class_path: datamodules.CIFAR10DataModule
          init_args: {root: data, batch_size: 512, num_workers: 8}   # num_workers: decode workers, once
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import kornia.augmentation as K
import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from datamodules.base import ClassificationDataModule, DataConfigError, ImageListDataset, TensorImageDataset
from datamodules.image_folder import default_cache_root

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# DeviceBatchLoader augments about this many samples per call (whole batches; part of kornia's cost is fixed
# per call), with at most this much float32 input
AUGMENT_SAMPLES = 256
AUGMENT_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------- batch augmentation
def _square(size: Any) -> int:
    """The side of a square ``size`` (an int, ``[s]`` or ``(s, s)``); refuses other shapes."""
    sizes = [int(size)] if isinstance(size, int) else [int(s) for s in size]
    if len(set(sizes)) != 1:
        raise DataConfigError(f"TensorCacheDataModule needs square sizes, got {size}")
    return sizes[0]


def kornia_pipeline(transform: v2.Compose, storage_size: int) -> tuple[nn.Sequential, float]:
    """Translate a datamodule's torchvision ``v2.Compose`` into a batch pipeline.

    The datamodule's transform is the one description of its augmentation. Each random step becomes the
    kornia op that draws the same per-sample randomness on a batch of square images of side
    ``storage_size``: ``RandomResizedCrop``, ``RandomCrop`` (padding, ``pad_if_needed``), horizontal/vertical
    flips, ``RandomRotation``, ``ColorJitter``. Each deterministic step (``Resize``, ``CenterCrop``,
    ``Normalize``) is the datamodule's own torchvision op, which works on a batch as it does on one image
    (and is much cheaper than kornia's ``Normalize`` on CPU). ``ToImage``/``ToDtype`` become the uint8 ->
    [0, 1] conversion applied first. A resize to the size the images already have is skipped. Any other
    step is refused (it would be silently dropped otherwise).

    Returns:
        ``(pipeline, scale)``: the ops in order, and the factor applied to uint8 pixels first.
    """
    ops: list[nn.Module] = []
    side = int(storage_size)
    scale = 1.0
    for t in transform.transforms:
        if isinstance(t, v2.ToImage):
            continue
        if isinstance(t, v2.ToDtype):
            scale = 1.0 / 255.0 if t.scale else 1.0
        elif isinstance(t, v2.RandomResizedCrop):
            s = _square(t.size)
            ops.append(
                K.RandomResizedCrop((s, s), scale=tuple(t.scale), ratio=tuple(t.ratio), align_corners=False)
            )
            side = s
        elif isinstance(t, v2.Resize):
            s = _square(t.size)  # stored images are square: a shorter-side resize is a square one
            if s != side:
                ops.append(t)
            side = s
        elif isinstance(t, v2.RandomCrop):
            s = _square(t.size)
            padding = tuple(t.padding) if t.padding else None
            ops.append(K.RandomCrop((s, s), padding=padding, pad_if_needed=t.pad_if_needed, fill=0))
            side = s
        elif isinstance(t, v2.CenterCrop):
            side = _square(t.size)
            ops.append(t)
        elif isinstance(t, v2.RandomHorizontalFlip):
            ops.append(K.RandomHorizontalFlip(p=t.p))
        elif isinstance(t, v2.RandomVerticalFlip):
            ops.append(K.RandomVerticalFlip(p=t.p))
        elif isinstance(t, v2.RandomRotation):
            ops.append(K.RandomRotation(list(t.degrees), resample="nearest", p=1.0))
        elif isinstance(t, v2.ColorJitter):
            args = {k: getattr(t, k) or 0.0 for k in ("brightness", "contrast", "saturation", "hue")}
            ops.append(K.ColorJitter(**args, p=1.0))
        elif isinstance(t, v2.Normalize):
            ops.append(t)
        else:
            raise DataConfigError(
                f"TensorCacheDataModule: no batched equivalent of the datamodule's {type(t).__name__} step; "
                "train from the datamodule itself (DataLoader workers) or extend kornia_pipeline"
            )
    # a plain Sequential: kornia's AugmentationSequential would also chain the ops' transformation matrices
    # (for boxes and keypoints), which image-only batches do not need
    return nn.Sequential(*ops), scale


class BatchAugment:
    """The datamodule's train or eval transform applied to a batch on its device (random steps per sample).

    Args:
        dm: the datamodule; its ``build_train_transform()`` / ``build_eval_transform()`` are translated by
            :func:`kornia_pipeline`.
        storage_size: side ``S`` of the stored square ``uint8`` images.
        train: training augmentation (random) or the deterministic evaluation transform.
        dtype: dtype of the returned batch.
    """

    def __init__(
        self, dm: ClassificationDataModule, storage_size: int, train: bool, dtype: torch.dtype = torch.float32
    ) -> None:
        transform = dm.build_train_transform() if train else dm.build_eval_transform()
        self.pipeline, self.scale = kornia_pipeline(transform, storage_size)
        self.train = train
        self.dtype = dtype

    def __call__(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Augment (train) or transform (eval) a ``uint8 (B, 3, S, S)`` batch into a normalised float batch.

        kornia draws its parameters from torch's CPU generator; with ``gen`` the draw is seeded from it, so
        a loader's epoch reproduces its augmentation (the global generator is left as it was).
        """
        xf = x.float().mul_(self.scale) if x.dtype == torch.uint8 else x.float()
        if gen is None or not self.train:
            out = self.pipeline(xf)
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(seed)
                out = self.pipeline(xf)
        return out.to(self.dtype).contiguous()


# -------------------------------------------------------------------------------------------- batch serving
class _EpochSetter:
    """What Lightning's ``_set_sampler_epoch`` finds as ``loader.sampler``: forwards ``set_epoch``."""

    def __init__(self, loader: DeviceBatchLoader) -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class DeviceBatchLoader:
    """Iterable of ``(x, y)`` batches gathered from device-resident ``uint8`` images and augmented there.

    Works as a Lightning dataloader (an iterable with ``__len__``) and under DDP: the per-epoch permutation
    is the same on every rank (seeded by ``seed`` and the epoch) and each rank takes ``perm[rank::world]``.

    Args:
        images: ``uint8 (N, 3, S, S)`` images on the target device.
        labels: ``int64 (N,)`` labels on the same device.
        batch_size: per-device batch size.
        transform: the :class:`BatchAugment` (or any callable ``(uint8 batch, generator) -> batch``).
        shuffle: a new permutation every epoch (training); else the natural order.
        drop_last: drop the ragged last batch of this rank's shard.
        seed: base seed of the permutations and the augmentation.
        rank: global rank of this process.
        world_size: number of processes.
        equal_shards: truncate every rank's shard to ``N // world_size`` samples (training, so all ranks take
            the same number of optimiser steps); ``False`` covers every sample exactly once (evaluation).
        augment_samples: about how many samples ``transform`` gets per call (whole batches, see
            :attr:`chunk_size`); 1 calls it once per batch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        transform: Callable[[Tensor, torch.Generator | None], Tensor],
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        equal_shards: bool | None = None,
        augment_samples: int = AUGMENT_SAMPLES,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size = int(batch_size)
        self.transform = transform
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.equal_shards = shuffle if equal_shards is None else equal_shards
        self.augment_samples = int(augment_samples)
        self.epoch = 0
        # what Lightning inspects on a dataloader: set_epoch is called on `sampler` every epoch
        self.sampler = _EpochSetter(self)
        self.batch_sampler = None

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation (and augmentation stream) of ``epoch``."""
        self.epoch = int(epoch)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def _shard_size(self) -> int:
        n = len(self.labels)
        if self.equal_shards:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self, epoch: int | None = None) -> Tensor:
        """This rank's sample indices (on the device) for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.equal_shards:
            order = order[: (n // self.world_size) * self.world_size]
        shard = order[self.rank :: self.world_size]
        if self.drop_last:
            shard = shard[: (len(shard) // self.batch_size) * self.batch_size]
        return shard.to(self.device)

    @property
    def chunk_size(self) -> int:
        """Samples augmented per call: whole batches, about ``augment_samples`` in all and at most
        :data:`AUGMENT_BYTES` of float32 input, at least one batch."""
        per_sample = 4 * self.images[0].numel() if len(self.images) else 1
        by_count = math.ceil(self.augment_samples / self.batch_size)
        by_bytes = AUGMENT_BYTES // (per_sample * self.batch_size)
        return self.batch_size * max(1, min(by_count, by_bytes))

    def _generator(self, epoch: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed((self.seed * 1_000_003 + epoch) * 4099 + self.rank + 1)
        return gen

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1  # loops that never call set_epoch still get a new order every epoch
        idx = self.indices(epoch)
        gen = self._generator(epoch)
        step = self.chunk_size
        for chunk_start in range(0, len(idx), step):
            chunk = idx[chunk_start : chunk_start + step]
            # one augmentation call for several batches: every sample still draws its own parameters, and
            # kornia's fixed cost per call (parameter draws, checks, dispatch) is shared by the batches
            x = self.transform(self.images.index_select(0, chunk), gen)
            y = self.labels.index_select(0, chunk)
            for start in range(0, len(chunk), self.batch_size):
                yield x[start : start + self.batch_size], y[start : start + self.batch_size]


# ------------------------------------------------------------------------------------------- the datamodule
class TensorCacheDataModule(L.LightningDataModule):
    """Wrap a datamodule: decode its images once into a ``uint8`` tensor cache, augment on the device.

    See the module docstring for the storage format, the augmentation and the differences from the inner
    PIL pipeline.

    Args:
        datamodule: the wrapped datamodule (any :class:`~datamodules.base.ClassificationDataModule`); its
            ``batch_size`` and augmentation settings are used; its ``num_workers`` decode the cache once.
        device: where the cached images live and are augmented: ``auto`` (the trainer's device, or CUDA when
            available outside a trainer), ``cuda`` (the trainer's GPU, ``cuda:<LOCAL_RANK>`` outside one) or
            ``cpu`` (host memory; batches are still augmented in batches, without worker processes).
        cache_dir: folder of the cache files (default ``$PAPERBENCH_CACHE/tensor_cache``, else
            ``~/.cache/paperbench/tensor_cache``).
        storage_size: side of the stored square images; default the inner ``resize_size``.
        dtype: dtype of the batches (``bfloat16`` halves their memory; the model's autocast casts anyway).
        seed: seed of the epoch permutations and of the augmentation.
        max_cache_gb: refuse to build a cache larger than this (default: half the device's memory).
    """

    def __init__(
        self,
        datamodule: ClassificationDataModule,
        device: Literal["auto", "cuda", "cpu"] = "auto",
        cache_dir: str | None = None,
        storage_size: int | None = None,
        dtype: Literal["float32", "bfloat16"] = "float32",
        seed: int = 0,
        max_cache_gb: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(datamodule, ClassificationDataModule):
            raise DataConfigError(
                "TensorCacheDataModule wraps a datamodules.ClassificationDataModule, "
                f"got {type(datamodule).__name__}"
            )
        if device not in ("auto", "cuda", "cpu"):
            raise DataConfigError(f"device must be auto|cuda|cpu, got {device!r}")
        if dtype not in ("float32", "bfloat16"):
            raise DataConfigError(f"dtype must be float32|bfloat16, got {dtype!r}")
        self.datamodule = datamodule
        self.num_classes: int = (
            datamodule.num_classes
        )  # LightningCLI links data.num_classes right after __init__
        self.class_names = datamodule.class_names
        self.batch_size = datamodule.batch_size
        self.requested_device = device
        self.cache_dir = (
            Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_root() / "tensor_cache"
        )
        self.storage_size = int(storage_size) if storage_size else int(datamodule.resize_size)
        if self.storage_size < 1:
            raise DataConfigError(f"storage_size must be >= 1, got {storage_size}")
        self.dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.seed = seed
        self.max_cache_gb = max_cache_gb
        #: images decoded (not loaded from the cache) by this instance, per split
        self.decoded: dict[str, int] = {}
        self.cache_files: dict[str, Path] = {}
        self.tensors: dict[str, tuple[Tensor, Tensor]] = {}
        self.device: torch.device | None = None
        self.train_augment = BatchAugment(datamodule, self.storage_size, train=True, dtype=self.dtype)
        self.eval_augment = BatchAugment(datamodule, self.storage_size, train=False, dtype=self.dtype)

    @property
    def decoded_images(self) -> int:
        """Total number of images this instance decoded (0 when every split came from the cache)."""
        return sum(self.decoded.values())

    # -------------------------------------------------------------- cache files
    def _split_datasets(self) -> dict[str, Dataset]:
        dm = self.datamodule
        sets = {"train": dm.train_set, "val": dm.val_set, "test": dm.test_set}
        return {name: ds for name, ds in sets.items() if ds is not None}

    def _fingerprint(self, ds: Dataset) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(
            f"v{CACHE_FORMAT_VERSION}|{type(self.datamodule).__qualname__}|{self.datamodule.root}|"
            f"{self.storage_size}|{self._storage_mode}|{type(ds).__qualname__}|{len(ds)}".encode()
        )  # type: ignore[arg-type]
        if isinstance(ds, ImageListDataset):
            for path, label in ds.samples:
                st = os.stat(path)
                h.update(f"{path}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        elif isinstance(ds, TensorImageDataset):
            h.update(ds.images.contiguous().numpy().data)
            h.update(ds.labels.contiguous().numpy().data)
        else:
            targets = getattr(ds, "targets", None)
            h.update(repr(list(targets) if targets is not None else None).encode())
        return h.hexdigest()

    @property
    def _storage_mode(self) -> str:
        return "squash" if self.datamodule.train_crop == "resize" else "centre"

    def _storage_transform(self) -> v2.Compose:
        s = self.storage_size
        if self._storage_mode == "squash":
            return v2.Compose([v2.ToImage(), v2.Resize((s, s), antialias=True)])
        return v2.Compose([v2.ToImage(), v2.Resize(s, antialias=True), v2.CenterCrop(s)])

    def cache_path(self, split: str, ds: Dataset) -> Path:
        """The cache file of ``split`` (named by dataset, split, size and the samples' fingerprint)."""
        name = type(self.datamodule).__name__.removesuffix("DataModule")
        return (
            self.cache_dir
            / f"{name}-{split}-{self.storage_size}px-{self._storage_mode}-{self._fingerprint(ds)}.pt"
        )

    def _check_budget(self, n: int, split: str) -> None:
        nbytes = n * 3 * self.storage_size**2
        if self.max_cache_gb is not None:
            limit = self.max_cache_gb * 1e9
        elif self._target_device().type == "cuda":
            limit = 0.5 * torch.cuda.get_device_properties(self._target_device()).total_memory
        else:
            limit = 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if nbytes > limit:
            raise DataConfigError(
                f"tensor cache of {type(self.datamodule).__name__} {split}: {n} images x 3 x "
                f"{self.storage_size}^2 = {nbytes / 1e9:.1f} GB exceeds the limit of {limit / 1e9:.1f} GB; "
                "use a smaller storage_size, raise max_cache_gb, or train from the datamodule itself "
                "(DataLoader workers)"
            )

    def _decode(self, ds: Dataset, split: str) -> tuple[Tensor, Tensor]:
        """Decode every image of ``ds`` with the storage transform (the inner datamodule's workers)."""
        if not hasattr(ds, "transform"):
            raise DataConfigError(
                f"TensorCacheDataModule: the {split} dataset ({type(ds).__name__}) has no `transform` "
                "attribute to replace with the storage transform"
            )
        raw = copy.copy(ds)
        raw.transform = self._storage_transform()  # type: ignore[attr-defined]
        n = len(ds)  # type: ignore[arg-type]
        self._check_budget(n, split)
        images = torch.empty((n, 3, self.storage_size, self.storage_size), dtype=torch.uint8)
        labels = torch.empty(n, dtype=torch.int64)
        workers = min(self.datamodule.num_workers, os.cpu_count() or 1)
        loader = DataLoader(raw, batch_size=256, shuffle=False, num_workers=workers)
        pos = 0
        for x, y in loader:
            images[pos : pos + len(y)] = x.as_subclass(Tensor)
            labels[pos : pos + len(y)] = torch.as_tensor(y)
            pos += len(y)
        self.decoded[split] = self.decoded.get(split, 0) + n
        log.info(
            "tensor cache: decoded %d %s images of %s at %dpx",
            n,
            split,
            type(self.datamodule).__name__,
            self.storage_size,
        )
        return images, labels

    def _build_or_find(self, split: str, ds: Dataset) -> Path:
        path = self.cache_path(split, ds)
        if not path.is_file():
            images, labels = self._decode(ds, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                torch.save(
                    {
                        "images": images,
                        "labels": labels,
                        "version": CACHE_FORMAT_VERSION,
                        "storage_size": self.storage_size,
                        "split": split,
                        "dataset": type(self.datamodule).__name__,
                        "root": str(self.datamodule.root),
                    },
                    tmp,
                )
                os.replace(
                    tmp, path
                )  # atomic: readers never see half a file; concurrent writers are identical
            finally:
                tmp.unlink(missing_ok=True)
        self.cache_files[split] = path
        return path

    def _ensure_caches(self, stage: str | None) -> None:
        self.datamodule.setup(stage)
        self.class_names = self.datamodule.class_names
        done: dict[int, Path] = {}
        for split, ds in self._split_datasets().items():
            # val and test are often the same dataset: one file
            done[id(ds)] = done.get(id(ds)) or self._build_or_find(split, ds)
            self.cache_files[split] = done[id(ds)]

    # -------------------------------------------------------------- device and ranks
    def _target_device(self) -> torch.device:
        if self.device is not None:
            return self.device
        trainer_device = self.trainer.strategy.root_device if self.trainer is not None else None
        if self.requested_device == "cpu":
            return torch.device("cpu")
        if self.requested_device == "cuda":
            if trainer_device is not None and trainer_device.type == "cuda":
                return trainer_device
            if not torch.cuda.is_available():
                raise DataConfigError(
                    "TensorCacheDataModule: device: cuda but CUDA is not available; use device: auto or cpu"
                )
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if trainer_device is not None:
            return trainer_device
        return (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            if torch.cuda.is_available()
            else torch.device("cpu")
        )

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    # -------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Build the cache files (one process per node; decoding happens here at most once)."""
        self.datamodule.prepare_data()
        self._ensure_caches(None)

    def setup(self, stage: str | None = None) -> None:
        """Load the cache files (building any that is missing) onto the target device."""
        self._ensure_caches(stage)
        self.device = self._target_device()
        loaded: dict[Path, tuple[Tensor, Tensor]] = {}
        for split, path in self.cache_files.items():
            if split in self.tensors:
                continue
            if path not in loaded:
                blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                loaded[path] = (blob["images"].to(self.device), blob["labels"].to(self.device))
            self.tensors[split] = loaded[path]

    def teardown(self, stage: str | None = None) -> None:
        """Release the device memory at the end of ``fit``/``test``."""
        if stage in ("fit", "test", "validate", "predict", None):
            self.tensors.clear()
            self.device = None

    def _loader(
        self, split: str, train: bool, rank: int | None = None, world_size: int | None = None
    ) -> DeviceBatchLoader:
        if split not in self.tensors:
            raise RuntimeError(f"TensorCacheDataModule: no {split} split loaded; call setup() first")
        images, labels = self.tensors[split]
        r, w = self._rank_world()
        r = r if rank is None else rank
        w = w if world_size is None else world_size
        shard = (len(labels) // w) if train else len(range(r, len(labels), w))
        return DeviceBatchLoader(
            images,
            labels,
            self.batch_size,
            self.train_augment if train else self.eval_augment,
            shuffle=train,
            drop_last=train and shard > self.batch_size,
            seed=self.seed,
            rank=r,
            world_size=w,
        )

    def train_dataloader(self, rank: int | None = None, world_size: int | None = None) -> DeviceBatchLoader:
        """Shuffled, augmented training batches (this rank's shard)."""
        return self._loader("train", True, rank, world_size)

    def val_dataloader(self, rank: int | None = None, world_size: int | None = None) -> DeviceBatchLoader:
        """Validation batches in order (each sample on exactly one rank)."""
        return self._loader("val", False, rank, world_size)

    def test_dataloader(self, rank: int | None = None, world_size: int | None = None) -> DeviceBatchLoader:
        """Test batches in order (each sample on exactly one rank)."""
        return self._loader("test", False, rank, world_size)

    def predict_dataloader(self) -> DeviceBatchLoader:
        """Prediction batches over the test split."""
        return self._loader("test", False)

    def split_sizes(self) -> dict[str, int]:
        """Number of samples in each loaded split."""
        return {split: len(labels) for split, (_, labels) in self.tensors.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}
