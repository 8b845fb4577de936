"""DDP correctness: 2 CPU processes (gloo) with per-device batch B train exactly like 1 process with batch 2B.

The model has no BatchNorm (a small ViT: LayerNorm only), since per-device BN statistics legitimately differ.
Data are not shuffled (an explicit ``DistributedSampler(shuffle=False)``), so rank r gets the samples r, r+2,
... and the union of the two per-device batches is the single-process batch; DDP averages gradients, which
equals the gradient of the 2B-batch mean.
"""

from __future__ import annotations

import functools

import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_modules import ClassificationTask


class FixedData(LightningDataModule):
    num_classes = 4

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 3, 16, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
        data = TensorDataset(x, y)
        # Lightning shuffles training data under DDP; an explicit unshuffled DistributedSampler is left alone
        sampler = DistributedSampler(data, shuffle=False) if torch.distributed.is_initialized() else None
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, sampler=sampler)


def _train(devices: int, batch_size: int) -> dict[str, torch.Tensor]:
    seed_everything(0)
    task = ClassificationTask(
        backbone="vit_tiny_patch16_224",
        num_classes=4,
        backbone_kwargs={"img_size": 16, "patch_size": 4},
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_steps=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=FixedData(batch_size))
    return {k: v.detach().clone() for k, v in task.backbone.state_dict().items()}


def test_ddp_two_processes_batch_b_equals_one_process_batch_2b():
    single = _train(devices=1, batch_size=16)
    ddp = _train(devices=2, batch_size=8)  # weights come back to this process from rank 0
    start = _init_weights()
    moved = [k for k in single if not torch.equal(single[k], start[k])]
    assert moved, "training did not change the weights"
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=2e-5, rtol=1e-4, msg=key)


def _init_weights() -> dict[str, torch.Tensor]:
    seed_everything(0)
    task = ClassificationTask(
        backbone="vit_tiny_patch16_224", num_classes=4, backbone_kwargs={"img_size": 16, "patch_size": 4}
    )
    return task.backbone.state_dict()
