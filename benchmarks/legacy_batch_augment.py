"""The hand-written batched augmentation the tensor cache used before it moved to kornia.

Kept only so that ``bench_data`` can time it side by side with the kornia pipeline in the same run
(``datamodules.tensor_cache.BatchAugment``); nothing else imports it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.base import ClassificationDataModule

_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision RandomResizedCrop's default aspect-ratio range


class LegacyBatchAugment:
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
        """Augment (train) or transform (eval) a ``uint8 (B, 3, S, S)`` batch into a normalised batch."""
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
