"""Input-pipeline throughput of the datamodules, per CPU core (images/s of decode + augmentation).

Run ``python -m benchmarks.bench_datamodules`` (CPU, under a minute; ``--out`` appends the markdown to
``benchmarks/results/datamodules.md``). Prints one markdown table, every row measured in this process with
``num_workers=0`` (so the figure is per core; a DataLoader with N workers scales about linearly until the
cores or the disk run out):

1. in-memory CIFAR-10 pipeline (uint8 tensor -> RandomCrop 32 pad 4 + flip -> normalise), train and eval;
2. Digits (the quickstart) train pipeline;
3. file-based pipeline at 224 px on a 500x375 JPEG (the typical CUB/Cars photo size; pixels: a real
   CIFAR-10 photo upscaled when ``../shared/data`` exists): PIL decode + RGB, then RandomResizedCrop 224 +
   flip + normalise (train) or resize 256 + centre crop 224 (eval);
4. a full epoch of ``ImageFolderDataModule`` over ``../shared/data/cifar10-mini.zip`` (2,000 real JPEGs at
   32 px, decode included), when present.

Reference point (REFERENCES.md): PIL/torchvision JPEG decode runs at about 300-400 img/s per core, so a
224-px ImageNet-style pipeline needs many workers to feed a GPU; the in-memory CIFAR pipeline does not.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from datamodules import CIFAR10DataModule, ClassificationDataModule, DigitsDataModule, ImageFolderDataModule
from datamodules.base import load_rgb

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rate(fn: Callable[[], object], n: int, repeats: int = 3) -> float:
    """Median images/s of calling ``fn`` ``n`` times, over ``repeats`` runs (after one warm-up call)."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def sample_jpeg(directory: Path) -> Path:
    """A 500x375 JPEG (quality 90) built from a real CIFAR-10 photo when available."""
    path = directory / "sample_500x375.jpg"
    archive = SHARED_DATA / "cifar10-mini.zip"
    if archive.is_file():
        import io
        import zipfile

        with zipfile.ZipFile(archive) as zf:
            name = next(n for n in zf.namelist() if n.endswith(".jpg"))
            image = Image.open(io.BytesIO(zf.read(name))).convert("RGB")
    else:
        image = Image.effect_mandelbrot((64, 48), (-2, -1.2, 1, 1.2), 100).convert("RGB")
    image.resize((500, 375), Image.BICUBIC).save(path, quality=90)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="calls per timed run")
    parser.add_argument("--out", type=Path, default=None, help="append the markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[tuple[str, float]] = []

    cifar = CIFAR10DataModule(root="unused")
    x32 = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    rows.append(
        (
            "CIFAR-10 train (RandomCrop 32 pad 4, flip, normalise), in memory",
            rate(lambda: cifar.train_transform(x32), args.n * 4),
        )
    )
    rows.append(("CIFAR-10 eval, in memory", rate(lambda: cifar.eval_transform(x32), args.n * 4)))
    digits = DigitsDataModule()
    rows.append(
        (
            "Digits train (RandomCrop 32 pad 3, normalise), in memory",
            rate(lambda: digits.train_transform(x32), args.n * 4),
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        jpeg = sample_jpeg(Path(tmp))
        fine = ClassificationDataModule(image_size=224)
        rows.append(("JPEG 500x375 decode + RGB only", rate(lambda: load_rgb(jpeg), args.n)))
        rows.append(
            (
                "JPEG 500x375 decode + RandomResizedCrop 224 + flip + normalise",
                rate(lambda: fine.train_transform(load_rgb(jpeg)), args.n),
            )
        )
        rows.append(
            (
                "JPEG 500x375 decode + resize 256 + centre crop 224 + normalise",
                rate(lambda: fine.eval_transform(load_rgb(jpeg)), args.n),
            )
        )

        archive = SHARED_DATA / "cifar10-mini.zip"
        if archive.is_file():
            dm = ImageFolderDataModule(
                root=str(archive),
                cache_dir=os.path.join(tmp, "cache"),
                image_size=32,
                resize_size=32,
                train_crop="random",
                crop_padding=4,
                split_ratios=(0.9, 0.1),
                batch_size=64,
                num_workers=0,
            )
            dm.setup()
            loader = dm.train_dataloader()
            start = time.perf_counter()
            seen = sum(len(batch[1]) for batch in loader)
            rows.append(
                (
                    f"ImageFolder epoch over cifar10-mini.zip ({seen} real JPEGs, 32 px, batch 64)",
                    seen / (time.perf_counter() - start),
                )
            )

    header = (
        f"\n### Input pipeline, images/s per core ({datetime.date.today()}, "
        f"{platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {os.cpu_count()} logical CPUs, "
        f"load average {os.getloadavg()[0]:.1f})\n\n"
    )
    table = "| pipeline | img/s per core |\n| --- | ---: |\n" + "".join(
        f"| {name} | {value:,.0f} |\n" for name, value in rows
    )
    print(header + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(header + table)


if __name__ == "__main__":
    main()
