"""datamodules.tensor_cache: decode-once cache, batch augmentation on the device, DDP sharding, fit."""

from __future__ import annotations

import itertools
from pathlib import Path

import kornia.augmentation as K
import lightning as L
import pytest
import torch
import yaml
from torchvision.transforms import v2

from datamodules import CIFAR10DataModule, ImageFolderDataModule
from datamodules.base import DataConfigError
from datamodules.tensor_cache import BatchAugment, DeviceBatchLoader, TensorCacheDataModule, kornia_pipeline
from tests.dataset_fixtures import build_dataset_fixture


@pytest.fixture
def cifar_args(tmp_path: Path) -> dict:
    # val_split: test (val = test, one cache file); tests/test_datamodules.py checks the held-out split
    return {**build_dataset_fixture("datamodules.CIFAR10DataModule", tmp_path / "cifar"), "val_split": "test"}


@pytest.fixture
def folder_args(tmp_path: Path) -> dict:
    folder = build_dataset_fixture("datamodules.ImageFolderDataModule", tmp_path / "folder")  # 3 x 8 JPEGs
    return {**folder, "val_split": "test"}


def cached(inner, tmp_path: Path, **kwargs) -> TensorCacheDataModule:
    dm = TensorCacheDataModule(inner, device="cpu", cache_dir=str(tmp_path / "tcache"), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def eval_reference(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


# ---------------------------------------------------------------------------------------------- cache files
def test_cache_is_built_once_and_reused(cifar_args, tmp_path):
    first = cached(CIFAR10DataModule(**cifar_args, batch_size=4, num_workers=0), tmp_path)
    assert first.num_classes == 10
    assert first.decoded == {"train": 20, "val": 6}  # test is the same dataset as val: one file
    assert first.cache_files["val"] == first.cache_files["test"]
    mtimes = {split: path.stat().st_mtime_ns for split, path in first.cache_files.items()}
    assert not list((tmp_path / "tcache").glob(".*tmp*"))  # atomic write left no temporary file

    second = cached(CIFAR10DataModule(**cifar_args, batch_size=4, num_workers=0), tmp_path)
    assert second.decoded_images == 0
    assert {s: p.stat().st_mtime_ns for s, p in second.cache_files.items()} == mtimes
    assert torch.equal(first.tensors["train"][0], second.tensors["train"][0])
    assert torch.equal(first.tensors["train"][1], second.tensors["train"][1])

    other_size = cached(
        CIFAR10DataModule(**cifar_args, batch_size=4, num_workers=0), tmp_path, storage_size=24
    )
    assert other_size.decoded_images == 26
    assert other_size.cache_files["train"] != first.cache_files["train"]
    assert other_size.tensors["train"][0].shape == (20, 3, 24, 24)


def test_cached_tensors_hold_the_decoded_pixels(cifar_args, tmp_path):
    inner = CIFAR10DataModule(**cifar_args, batch_size=4, num_workers=0)
    dm = cached(inner, tmp_path)
    images, labels = dm.tensors["train"]
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    assert torch.equal(images, inner.train_set.images)
    assert torch.equal(labels, inner.train_set.labels)
    assert dm.split_sizes() == inner.split_sizes()  # the inner datamodule's train/val/test split


# ---------------------------------------------------------------------------------------------- batches
def test_eval_batches_equal_the_inner_eval_pipeline_cifar(cifar_args, tmp_path):
    inner = CIFAR10DataModule(**cifar_args, batch_size=4, num_workers=0)
    dm = cached(inner, tmp_path)
    batches = list(dm.val_dataloader())
    assert [len(y) for _, y in batches] == [4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (6, 3, 32, 32)
    torch.testing.assert_close(x, eval_reference(inner.val_set), atol=1e-5, rtol=0)
    assert torch.equal(y, inner.val_set.labels)
    # normalisation: un-normalised values are the uint8 pixels / 255
    mean = torch.tensor(inner.mean).view(1, 3, 1, 1)
    std = torch.tensor(inner.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x * std + mean, inner.val_set.images.float() / 255, atol=1e-5, rtol=0)


def test_eval_batches_equal_the_inner_eval_pipeline_image_folder(folder_args, tmp_path):
    # image_size 32, resize_size round(32 / 0.875) = 37: resize 37 + centre crop 32 from JPEG files
    inner = ImageFolderDataModule(**folder_args, batch_size=5, num_workers=0, image_size=32)
    dm = cached(inner, tmp_path)
    assert dm.storage_size == 37 and dm.tensors["train"][0].shape[-1] == 37
    x = torch.cat([b[0] for b in dm.val_dataloader()])
    torch.testing.assert_close(x, eval_reference(inner.val_set), atol=1e-5, rtol=0)

    # a storage size other than resize_size: resized again on the device, within a few grey levels
    dm32 = cached(
        ImageFolderDataModule(**folder_args, batch_size=5, num_workers=0, image_size=32),
        tmp_path,
        storage_size=32,
    )
    x32 = torch.cat([b[0] for b in dm32.val_dataloader()])
    assert x32.shape == x.shape
    assert (x32 - x).abs().mean() < 0.05


def test_train_batches_shapes_dtypes_and_bfloat16(cifar_args, tmp_path):
    dm = cached(CIFAR10DataModule(**cifar_args, batch_size=8, num_workers=0), tmp_path, dtype="bfloat16")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 2  # 20 // 8, ragged batch dropped
    for x, y in batches:
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.bfloat16
        assert y.dtype == torch.int64 and y.shape == (8,)
        assert torch.isfinite(x.float()).all()


def _augment(inner, **overrides) -> BatchAugment:
    for key, value in overrides.items():
        setattr(inner, key, value)
    return BatchAugment(inner, storage_size=inner.resize_size, train=True)


def test_random_crop_with_padding_and_flip_are_exact(cifar_args):
    inner = CIFAR10DataModule(**cifar_args, batch_size=4, num_workers=0)
    inner.setup("fit")
    images = inner.train_set.images[:6]
    plain = BatchAugment(inner, 32, train=False)(images)

    assert torch.equal(_augment(inner, crop_padding=0, hflip=0.0)(images), plain)
    assert torch.equal(_augment(inner, crop_padding=0, hflip=1.0)(images), plain.flip(-1))
    assert torch.equal(_augment(inner, crop_padding=0, hflip=0.0, vflip=1.0)(images), plain.flip(-2))

    # padding 4: every output is one of the 9 x 9 windows of the zero-padded (normalised) image
    aug = _augment(inner, crop_padding=4, hflip=0.0, vflip=0.0)
    out = aug(images, torch.Generator().manual_seed(0))
    mean = torch.tensor(inner.mean).view(1, 3, 1, 1)
    std = torch.tensor(inner.std).view(1, 3, 1, 1)
    padded_norm = (torch.nn.functional.pad(images, (4, 4, 4, 4)).float() / 255 - mean) / std
    offsets = []
    for i in range(len(images)):
        hits = [
            (dy, dx)
            for dy, dx in itertools.product(range(9), range(9))
            if torch.allclose(out[i], padded_norm[i, :, dy : dy + 32, dx : dx + 32], atol=1e-5, rtol=0)
        ]
        assert hits, f"sample {i} is not a window of its padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1  # offsets are drawn per sample


def test_augmentation_is_random_across_epochs_and_reproducible(cifar_args, tmp_path):
    dm = cached(CIFAR10DataModule(**cifar_args, batch_size=4, num_workers=0), tmp_path)
    loader = dm.train_dataloader()
    loader.set_epoch(0)
    a = [(x.clone(), y.clone()) for x, y in loader]
    loader.set_epoch(0)
    b = list(loader)
    loader.set_epoch(1)
    c = list(loader)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))  # new permutation
    assert loader.epoch == 2  # iterating advances the epoch for loops that never call set_epoch
    # Lightning calls set_epoch on loader.sampler
    loader.sampler.set_epoch(7)
    assert loader.epoch == 7


def test_random_resized_crop_boxes_and_identity(folder_args):
    inner = ImageFolderDataModule(**folder_args, batch_size=4, num_workers=0, image_size=32)
    aug = _augment(inner, hflip=0.0, scale=(0.08, 1.0))
    crop = aug.pipeline[0]  # kornia RandomResizedCrop, from the datamodule's v2.RandomResizedCrop
    assert isinstance(crop, K.RandomResizedCrop)
    torch.manual_seed(0)
    boxes = crop.forward_parameters(torch.Size([4096, 3, 37, 37]))["src"]  # (B, 4, 2) corners (x, y)
    left, top = boxes[:, 0, 0], boxes[:, 0, 1]
    w = boxes[:, 1, 0] - left + 1
    h = boxes[:, 2, 1] - top + 1
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 37).all() and (left + w <= 37).all()
    area = h * w / 37**2
    assert area.min() >= 0.05 and area.max() <= 1.0 and area.std() > 0.1  # scale range, not constant
    ratio = w / h
    assert ratio.min() > 0.6 and ratio.max() < 1.6

    # scale (1, 1) on a square image at the output size: the image itself (flipped with hflip 1)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    aug_full = BatchAugment(
        ImageFolderDataModule(**folder_args, image_size=32, scale=(1.0, 1.0), hflip=1.0), 32, train=True
    )
    out = aug_full(x, torch.Generator().manual_seed(1))
    mean = torch.tensor(inner.mean).view(1, 3, 1, 1)
    std = torch.tensor(inner.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ((x.float() / 255 - mean) / std).flip(-1), atol=1e-4, rtol=0)


def test_kornia_pipeline_follows_the_datamodule_transform(cifar_args):
    """One description of the augmentation: the kornia ops are read off the datamodule's v2 transform."""
    inner = CIFAR10DataModule(**cifar_args, rotation=10, color_jitter=0.2, vflip=0.5)
    names = [type(op).__name__ for op in kornia_pipeline(inner.build_train_transform(), 32)[0]]
    assert names == [
        "RandomCrop",
        "RandomHorizontalFlip",
        "RandomVerticalFlip",
        "RandomRotation",
        "ColorJitter",
        "Normalize",
    ]
    with pytest.raises(DataConfigError, match="GaussianBlur"):
        kornia_pipeline(v2.Compose([v2.ToImage(), v2.GaussianBlur(3)]), 32)


def test_rotation_and_jitter_run_batched(cifar_args):
    inner = CIFAR10DataModule(**cifar_args, batch_size=4, num_workers=0, rotation=15, color_jitter=0.4)
    inner.setup("fit")
    aug = BatchAugment(inner, 32, train=True)
    out = aug(inner.train_set.images[:8], torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and torch.isfinite(out).all()
    plain = BatchAugment(inner, 32, train=False)(inner.train_set.images[:8])
    assert not torch.allclose(out, plain)


# ---------------------------------------------------------------------------------------------- DDP sharding
def test_ddp_shards_cover_the_set_exactly_once(cifar_args, tmp_path):
    dm = cached(CIFAR10DataModule(**cifar_args, batch_size=5, num_workers=0), tmp_path)
    for epoch in (0, 1):
        train = [dm.train_dataloader(rank=r, world_size=2) for r in range(2)]
        shards = [loader.indices(epoch) for loader in train]
        assert [len(s) for s in shards] == [10, 10] and [len(loader) for loader in train] == [2, 2]
        assert sorted(torch.cat(shards).tolist()) == list(range(20))
    # a new permutation each epoch, the same one on both ranks
    assert not torch.equal(train[0].indices(0), train[0].indices(1))
    # labels served are the labels of the indexed images
    train[0].set_epoch(3)
    ys = torch.cat([y for _, y in train[0]])
    assert torch.equal(ys, dm.tensors["train"][1][train[0].indices(3)])

    evals = [dm.val_dataloader(rank=r, world_size=2) for r in range(2)]
    assert sorted(torch.cat([e.indices() for e in evals]).tolist()) == list(range(6))
    # odd sizes: evaluation still covers every sample once; training shards stay equal
    images, labels = dm.tensors["train"]
    odd = [
        DeviceBatchLoader(
            images[:7], labels[:7], 2, dm.eval_augment, shuffle=False, drop_last=False, rank=r, world_size=2
        )
        for r in range(2)
    ]
    assert sorted(torch.cat([o.indices() for o in odd]).tolist()) == list(range(7))
    odd_train = [
        DeviceBatchLoader(
            images[:7], labels[:7], 2, dm.train_augment, shuffle=True, drop_last=False, rank=r, world_size=2
        )
        for r in range(2)
    ]
    assert [len(o.indices()) for o in odd_train] == [3, 3] and len(
        set(torch.cat([o.indices() for o in odd_train]).tolist())
    ) == 6


def test_batches_augmented_in_chunks_are_the_batches_of_one_call_each(cifar_args, tmp_path):
    """Several batches per augmentation call: the same batches in the same order, sizes unchanged."""
    dm = cached(CIFAR10DataModule(**cifar_args, batch_size=3, num_workers=0), tmp_path)
    images, labels = dm.tensors["train"]
    calls = []

    def counting(x, gen=None):
        calls.append(len(x))
        return dm.eval_augment(x, gen)

    def loader(augment_samples, shuffle):
        return DeviceBatchLoader(
            images, labels, 3, counting, shuffle=shuffle, drop_last=False, augment_samples=augment_samples
        )

    for shuffle in (False, True):
        chunked, single = loader(7, shuffle), loader(1, shuffle)
        assert (chunked.chunk_size, single.chunk_size) == (9, 3)  # whole batches: ceil(7 / 3) of them
        calls.clear()
        a = list(chunked)
        assert calls == [9, 9, 2]  # 20 samples: two chunks of 3 batches, then the ragged rest
        calls.clear()
        b = list(single)
        assert calls == [3] * 6 + [2]
        assert [len(y) for _, y in a] == [len(y) for _, y in b] == [3] * 6 + [2]
        for (xa, ya), (xb, yb) in zip(a, b):  # deterministic transform: identical batches
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the memory bound: at most AUGMENT_BYTES of float32 input per call, never less than one batch
    big = torch.zeros(4, 3, 2048, 2048, dtype=torch.uint8)
    assert DeviceBatchLoader(big, labels[:4], 2, counting, shuffle=False, drop_last=False).chunk_size == 2


# ---------------------------------------------------------------------------------------------- Lightning
def test_two_step_lightning_fit_through_the_cache(cifar_args, tmp_path):
    from lightning_modules import ClassificationTask

    # 20 train images, batch 10: one epoch of 2 steps, then validation
    dm = TensorCacheDataModule(
        CIFAR10DataModule(**cifar_args, batch_size=10, num_workers=0),
        device="auto",
        cache_dir=str(tmp_path / "tcache"),
    )
    model = ClassificationTask(
        backbone="resnet18", num_classes=dm.num_classes, optimizer=lambda p: torch.optim.SGD(p, lr=0.01)
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert dm.decoded_images == 26
    assert "val/acc1" in trainer.callback_metrics


def test_yaml_config_wraps_a_datamodule_and_links_num_classes(cifar_args, tmp_path, monkeypatch):
    import main as cli

    monkeypatch.setattr("sys.argv", ["main.py"])

    config = {
        "model": {
            "class_path": "lightning_modules.ClassificationTask",
            "init_args": {"backbone": "resnet18"},
        },
        "data": {
            "class_path": "datamodules.tensor_cache.TensorCacheDataModule",
            "init_args": {
                "device": "cpu",
                "cache_dir": str(tmp_path / "tcache"),
                "datamodule": {
                    "class_path": "datamodules.CIFAR10DataModule",
                    "init_args": {**cifar_args, "batch_size": 4, "num_workers": 0},
                },
            },
        },
    }
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(config))
    parsed = cli.cli_main(
        [
            "--config",
            str(path),
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_progress_bar",
            "false",
        ],
        run=False,
    )
    assert isinstance(parsed.datamodule, TensorCacheDataModule)
    assert isinstance(parsed.datamodule.datamodule, CIFAR10DataModule)
    assert parsed.model.hparams.num_classes == 10


def test_the_tensor_cache_example_experiment_instantiates(cifar_args, tmp_path, monkeypatch):
    import main as cli

    monkeypatch.setattr("sys.argv", ["main.py"])
    config = yaml.safe_load(
        (cli.ROOT / "experiments" / "fast" / "resnet18_cifar10_tensor_cache.yaml").read_text()
    )
    config["data"]["init_args"]["cache_dir"] = str(tmp_path / "tcache")
    config["data"]["init_args"]["datamodule"]["init_args"].update(cifar_args, batch_size=4, num_workers=0)
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(config))
    built = cli.cli_main(
        [
            "--config",
            str(path),
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.accelerator",
            "cpu",
        ],
        run=False,
    )
    dm = built.datamodule
    assert isinstance(dm, TensorCacheDataModule) and dm.num_classes == 10 == built.model.hparams.num_classes
    crop = dm.train_augment.pipeline[0]
    assert isinstance(crop, K.RandomCrop) and tuple(crop.flags["padding"]) == (4, 4, 4, 4)
    assert built.model.hparams.channels_last


DDP_SCRIPT = """
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, {root!r})
from datamodules import CIFAR10DataModule  # noqa: E402
from datamodules.tensor_cache import TensorCacheDataModule  # noqa: E402
from lightning_modules import ClassificationTask  # noqa: E402


class Seen(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # one write() per line: the two ranks share the pipe, and writes below PIPE_BUF are atomic
        labels = " ".join(map(str, batch[1].tolist()))
        line = f"SEEN {{trainer.global_rank}} {{trainer.current_epoch}} {{labels}}\\n"
        sys.stdout.write(line)
        sys.stdout.flush()


if __name__ == "__main__":
    inner = CIFAR10DataModule(root={data!r}, batch_size=5, num_workers=0, val_split="test")
    dm = TensorCacheDataModule(inner, cache_dir={cache!r})
    sgd = lambda p: torch.optim.SGD(p, lr=0.01)  # noqa: E731
    model = ClassificationTask(backbone="resnet18", num_classes=10, optimizer=sgd)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Seen()], default_root_dir={work!r})
    trainer.fit(model, datamodule=dm)
    sys.stdout.write(f"DONE {{trainer.global_rank}} {{trainer.global_step}}\\n")
    sys.stdout.flush()
"""


@pytest.mark.slow
def test_real_two_process_ddp_fit_shards_every_epoch(cifar_args, tmp_path):
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "ddp_fit.py"
    script.write_text(
        DDP_SCRIPT.format(
            root=root, data=cifar_args["root"], cache=str(tmp_path / "tcache"), work=str(tmp_path)
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen: dict[tuple[int, int], list[int]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("SEEN "):
            rank, epoch, *labels = line.split()[1:]
            seen.setdefault((int(rank), int(epoch)), []).extend(int(v) for v in labels)
    assert sorted(line.split()[2] for line in proc.stdout.splitlines() if line.startswith("DONE")) == [
        "4",
        "4",
    ]
    inner = CIFAR10DataModule(**cifar_args, num_workers=0)
    inner.setup("fit")
    expected = sorted(inner.train_set.labels.tolist())
    for epoch in (0, 1):
        assert len(seen[(0, epoch)]) == len(seen[(1, epoch)]) == 10
        assert sorted(seen[(0, epoch)] + seen[(1, epoch)]) == expected  # every sample once per epoch
    assert seen[(0, 0)] != seen[(0, 1)]  # a new permutation each epoch
