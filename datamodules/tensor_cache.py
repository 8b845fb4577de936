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
trainer uses, with ``device: cuda`` or ``auto``) and every batch is gathered and augmented there, batched:

* ``random``: zero padding ``crop_padding`` + random ``image_size`` crop, by integer indexing (exactly the
  inner ``RandomCrop``; if ``S != resize_size`` the batch is first resized to ``resize_size``);
* ``random_resized``: torchvision's RandomResizedCrop parameter sampling (``scale``, ratio 3/4-4/3, ten
  tries then the centre fallback) vectorised over the batch, applied with one ``F.grid_sample`` over
  per-sample affine grids (bilinear; no antialiasing, so keep ``S`` near ``image_size``);
* ``center`` / ``resize``: the deterministic crop or resize;
* horizontal / vertical flips with probabilities ``hflip`` / ``vflip``; rotation (``rotation`` degrees,
  nearest, zero fill, like ``v2.RandomRotation``); ``color_jitter`` as brightness, contrast and saturation
  factors (applied in that fixed order, where torchvision draws a random order per image);
* conversion to ``float32`` (or ``bfloat16`` with ``dtype``) and normalisation with the inner ``mean``/``std``.

Evaluation batches apply the inner evaluation geometry (centre crop ``image_size`` of the ``resize_size``
image, or a plain resize) and the same normalisation; with ``storage_size == resize_size`` they equal the
inner datamodule's evaluation pipeline exactly for square images.

Differences from the inner PIL pipeline, by design: a non-square image is stored as its centre square, so
``random_resized`` crops are drawn from that square rather than from the whole picture; resampling happens
on the stored ``uint8`` image (two resizes where torchvision does one when ``S`` differs from the size the
inner pipeline resizes to).

Batches are served without DataLoader workers: a seeded permutation per epoch (same on every rank),
sharded by global rank (``perm[rank::world_size]``, truncated to equal shard sizes for training so every
rank runs the same number of steps; evaluation shards cover every sample exactly once, without the
duplicates a ``DistributedSampler`` pads with). Lightning calls ``set_epoch`` on the loader's ``sampler``
every epoch, so resuming reproduces the order.

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

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from datamodules.base import ClassificationDataModule, DataConfigError, ImageListDataset, TensorImageDataset
from datamodules.image_folder import default_cache_root

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision RandomResizedCrop's default aspect-ratio range


# ---------------------------------------------------------------------------------------------- batch augmentation
class BatchAugment:
    """Batched, device-side version of a :class:`ClassificationDataModule`'s train or eval transform.

    Args:
        dm: the datamodule whose settings (``image_size``, ``resize_size``, ``train_crop``, ``crop_padding``,
            ``scale``, ``hflip``, ``vflip``, ``rotation``, ``color_jitter``, ``mean``, ``std``) are applied.
        storage_size: side ``S`` of the stored square ``uint8`` images.
        train: training augmentation (random) or the deterministic evaluation transform.
        dtype: dtype of the returned batch (and of the float arithmetic).
    """

    def __init__(
        self, dm: ClassificationDataModule, storage_size: int, train: bool, dtype: torch.dtype = torch.float32
    ) -> None:
        self.size = int(dm.image_size)
        self.resize_size = int(dm.resize_size)
        self.mode = dm.train_crop
        self.padding = int(dm.crop_padding or 0)
        self.scale = tuple(float(s) for s in dm.scale)
        self.hflip = float(dm.hflip) if train else 0.0
        self.vflip = float(dm.vflip) if train else 0.0
        self.rotation = float(dm.rotation) if train else 0.0
        self.jitter = float(dm.color_jitter) if train else 0.0
        self.storage = int(storage_size)
        self.train = train
        self.dtype = dtype
        mean = torch.tensor(dm.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(dm.std, dtype=torch.float32).view(1, 3, 1, 1)
        # x_norm = (x / 255 - mean) / std = x * a + b, on uint8 values x
        self._a_cpu, self._b_cpu = 1.0 / (255.0 * std), -mean / std
        self._consts: dict[torch.device, tuple[Tensor, Tensor]] = {}

    # -------------------------------------------------------------- helpers
    def _norm_consts(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._consts:
            self._consts[device] = (self._a_cpu.to(device), self._b_cpu.to(device))
        return self._consts[device]

    def _float(self, x: Tensor) -> Tensor:
        return x.to(self.dtype) if x.dtype == torch.uint8 else x

    def _resize(self, x: Tensor, size: int) -> Tensor:
        """Square resize of a batch (bilinear with antialias, like ``v2.Resize``); float result."""
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        out = F.interpolate(
            x.to(torch.float32), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        return out.round_().clamp_(
            0, 255
        )  # stay on the uint8 grid, like a torchvision resize of a uint8 image

    @staticmethod
    def _center(x: Tensor, size: int) -> Tensor:
        h, w = x.shape[-2:]
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        return x[..., top : top + size, left : left + size]

    def _flip(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        b = x.shape[0]
        if self.hflip > 0:
            flip = torch.rand(b, device=x.device, generator=gen) < self.hflip
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        if self.vflip > 0:
            flip = torch.rand(b, device=x.device, generator=gen) < self.vflip
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-2), x)
        return x

    # -------------------------------------------------------------- geometric ops
    def _random_crop(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        """Zero-pad by ``padding`` and take a random ``size`` crop per sample (integer indexing, exact)."""
        if x.shape[-1] != self.resize_size:
            x = self._resize(x, self.resize_size)
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p))
        b, c, h, w = x.shape
        s = self.size
        if h < s or w < s:  # pad_if_needed=True in the inner RandomCrop
            x = F.pad(x, (0, max(0, s - w), 0, max(0, s - h)))
            b, c, h, w = x.shape
        top = (torch.rand(b, device=x.device, generator=gen) * (h - s + 1)).long().clamp_(max=h - s)
        left = (torch.rand(b, device=x.device, generator=gen) * (w - s + 1)).long().clamp_(max=w - s)
        ar = torch.arange(s, device=x.device)
        rows = (top[:, None] + ar[None, :]).view(b, 1, s, 1).expand(b, c, s, w)
        x = x.gather(2, rows)
        cols = (left[:, None] + ar[None, :]).view(b, 1, 1, s).expand(b, c, s, s)
        return x.gather(3, cols)

    def _rrc_boxes(
        self, b: int, height: int, width: int, device: torch.device, gen: torch.Generator | None
    ) -> Tensor:
        """Vectorised ``RandomResizedCrop.get_params``: ``(B, 4)`` boxes ``(top, left, h, w)`` in pixels."""
        tries = 10
        area = float(height * width)
        u = torch.rand(b, tries, 4, device=device, generator=gen, dtype=torch.float64)
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[..., 0])
        log_r = math.log(_RATIO[0]) + (math.log(_RATIO[1]) - math.log(_RATIO[0])) * u[..., 1]
        ratio = torch.exp(log_r)
        w = torch.round(torch.sqrt(target * ratio))
        h = torch.round(torch.sqrt(target / ratio))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        top = torch.floor(u[..., 2] * (height - h + 1))
        left = torch.floor(u[..., 3] * (width - w + 1))
        first = torch.argmax(ok.to(torch.int8), dim=1)  # first valid try (0 if none)
        pick = lambda t: t.gather(1, first[:, None]).squeeze(1)  # noqa: E731
        boxes = torch.stack([pick(top), pick(left), pick(h), pick(w)], dim=1)
        # fallback (no valid try): the whole image, clamped to the ratio range; centred
        in_ratio = width / height
        if in_ratio < _RATIO[0]:
            fw, fh = width, int(round(width / _RATIO[0]))
        elif in_ratio > _RATIO[1]:
            fh, fw = height, int(round(height * _RATIO[1]))
        else:
            fw, fh = width, height
        fallback = torch.tensor(
            [(height - fh) // 2, (width - fw) // 2, fh, fw], device=device, dtype=torch.float64
        )
        any_ok = ok.any(dim=1, keepdim=True)
        return torch.where(any_ok, boxes, fallback.expand(b, 4))

    def _random_resized_crop(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        """Random resized crops of every sample with one ``grid_sample`` over per-sample affine grids."""
        b, _, height, width = x.shape
        boxes = self._rrc_boxes(b, height, width, x.device, gen).to(torch.float32)
        top, left, h, w = boxes.unbind(1)
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
        # align_corners=False: normalised -1..1 spans pixel edges, so box [left, left + w] maps to
        # centre (2 left + w) / W - 1 and half-extent w / W
        theta[:, 0, 0] = w / width
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [b, 3, self.size, self.size], align_corners=False)
        xf = x.to(torch.float32) if x.dtype == torch.uint8 else x.float()
        out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out

    def _rotate(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        """Rotate every sample by U(-rotation, rotation) degrees about its centre (nearest, zero fill)."""
        b = x.shape[0]
        angle = (torch.rand(b, device=x.device, generator=gen) * 2 - 1) * math.radians(self.rotation)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def _jitter(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        """Brightness, contrast and saturation factors in ``[1 - s, 1 + s]`` per sample, on 0..255 values."""
        b = x.shape[0]
        s = self.jitter
        f = 1 + (torch.rand(b, 3, device=x.device, generator=gen) * 2 - 1) * s
        f = f.clamp_(min=0).view(b, 3, 1, 1, 1).to(x.dtype)
        x = (x * f[:, 0]).clamp_(0, 255)
        gray = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x * f[:, 1] + gray.mean(dim=(2, 3), keepdim=True) * (1 - f[:, 1])).clamp_(0, 255)
        gray = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        return (x * f[:, 2] + gray * (1 - f[:, 2])).clamp_(0, 255)

    # -------------------------------------------------------------- entry point
    def __call__(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Augment (train) or transform (eval) a ``uint8 (B, 3, S, S)`` batch into a normalised float batch."""
        if self.train and self.mode == "random_resized":
            x = self._random_resized_crop(x, gen)
        elif self.train and self.mode == "random":
            x = self._random_crop(x, gen)
        elif self.mode == "resize":
            x = self._resize(x, self.size)
        else:  # eval geometry, and train_crop="center"
            if x.shape[-1] != self.resize_size:
                x = self._resize(self._center(x, min(x.shape[-2:])), self.resize_size)
            x = self._center(x, self.size)
        x = self._flip(x, gen)
        if self.rotation > 0:
            x = self._rotate(x, gen)
        x = x.to(torch.float32) if self.dtype == torch.float32 or not x.is_cuda else x.to(self.dtype)
        if self.jitter > 0:
            x = self._jitter(x, gen)
        a, b = self._norm_consts(x.device)
        x = torch.addcmul(b.to(x.dtype), x, a.to(x.dtype))
        return x.to(self.dtype).contiguous()


# ---------------------------------------------------------------------------------------------- batch serving
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

    def _generator(self, epoch: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed((self.seed * 1_000_003 + epoch) * 4099 + self.rank + 1)
        return gen

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1  # loops that never call set_epoch still get a new order every epoch
        idx = self.indices(epoch)
        gen = self._generator(epoch)
        for start in range(0, len(idx), self.batch_size):
            batch = idx[start : start + self.batch_size]
            yield self.transform(self.images.index_select(0, batch), gen), self.labels.index_select(0, batch)


# ---------------------------------------------------------------------------------------------- the datamodule
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
                f"TensorCacheDataModule wraps a datamodules.ClassificationDataModule, got {type(datamodule).__name__}"
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
        """The cache file of ``split`` (its name carries the dataset, split, size and the samples' fingerprint)."""
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
                f"{self.storage_size}^2 = {nbytes / 1e9:.1f} GB exceeds the limit of {limit / 1e9:.1f} GB; use a "
                "smaller storage_size, raise max_cache_gb, or train from the datamodule itself (DataLoader workers)"
            )

    def _decode(self, ds: Dataset, split: str) -> tuple[Tensor, Tensor]:
        """Decode every image of ``ds`` with the storage transform (the inner datamodule's workers in parallel)."""
        if not hasattr(ds, "transform"):
            raise DataConfigError(
                f"TensorCacheDataModule: the {split} dataset ({type(ds).__name__}) has no `transform` attribute to "
                "replace with the storage transform"
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
