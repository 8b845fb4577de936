"""ClassificationTask: backbone creation, loss interface, parameter groups, schedulers, metrics, EMA."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from sklearn.metrics import cohen_kappa_score, f1_score, precision_score, recall_score
from torch import nn

from datamodules.digits import DigitsDataModule
from lightning_modules import ClassificationTask
from lightning_modules.losses.base import TaskLoss
from lightning_modules.metrics import build_metrics
from lightning_modules.schedulers import SchedulerConfigError, WarmupCosineLR
from lightning_modules.task import TaskConfigError, UnknownModelError, create_backbone


def sgd(lr: float = 0.1):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9)


def tiny_task(**kwargs) -> ClassificationTask:
    kwargs.setdefault("optimizer", sgd())
    return ClassificationTask(backbone="resnet10t", num_classes=10, **kwargs)


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(UnknownModelError, match="resnet18") as err:
        create_backbone("resnet81", num_classes=3)
    assert "timm.list_models" in str(err.value)


def test_param_groups_get_their_own_learning_rate():
    task = tiny_task(param_groups=[{"pattern": r"^backbone\.fc\.", "lr_mult": 10.0, "weight_decay": 0.0}])
    opt = task.configure_optimizers()
    by_lr = {round(g["lr"], 6): g for g in opt.param_groups}
    assert set(by_lr) == {0.1, 1.0}
    fc_params = {id(p) for p in task.backbone.fc.parameters()}
    assert {id(p) for p in by_lr[1.0]["params"]} == fc_params
    assert by_lr[1.0]["weight_decay"] == 0.0
    n_total = sum(len(g["params"]) for g in opt.param_groups)
    assert n_total == len(list(task.parameters()))


def test_param_group_pattern_that_matches_nothing_is_an_error():
    task = tiny_task(param_groups=[{"pattern": "no_such_layer", "lr_mult": 10.0}])
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        task.configure_optimizers()


def test_no_weight_decay_for_1d_parameters():
    task = tiny_task(
        no_weight_decay_1d=True, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-4)
    )
    opt = task.configure_optimizers()
    for group in opt.param_groups:
        dims = {p.ndim for p in group["params"]}
        assert (dims <= {1}) == (group["weight_decay"] == 0.0)


def test_warmup_cosine_schedule_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = WarmupCosineLR(opt, warmup_epochs=30, max_epochs=400, warmup_start_factor=0.1)
    lrs = []
    for _ in range(401):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4)  # the MSF-CA recipe: warm-up from 1e-4 ...
    assert lrs[15] == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lrs[30] == pytest.approx(1e-3)  # ... to 1e-3 at epoch 30, then cosine
    assert lrs[215] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 185 / 370)))
    assert lrs[400] == pytest.approx(0.0, abs=1e-12)


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="available"):
        build_metrics(["acc1", "top1"], 10, prefix="val/")


def test_metric_values_on_fixed_input():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    target = torch.tensor([0, 2, 1, 1])
    values = build_metrics(["acc1", "acc2", "kappa"], 3, prefix="x/")(logits, target)
    assert values["x/acc1"] == pytest.approx(0.25)  # only sample 0 is right
    assert values["x/acc2"] == pytest.approx(0.75)  # samples 0, 1 (2 is second) and 2 (1 is second)
    # kappa: observed agreement 0.25; expected from marginals pred (2,1,1)/4 vs true (1,2,1)/4
    pe = (2 * 1 + 1 * 2 + 1 * 1) / 16
    assert values["x/kappa"] == pytest.approx((0.25 - pe) / (1 - pe), abs=1e-6)


def test_every_metric_keeps_its_own_state_in_the_collection():
    # batch 1 is right at top-1, so top-k and macro states start equal (torchmetrics' compute groups would
    # merge them and report top-3 counts as F1); batch 2 has errors
    logits1 = torch.eye(4)[[0, 1, 2, 3, 0, 1]] * 5
    target1 = torch.tensor([0, 1, 2, 3, 0, 1])
    logits2 = torch.tensor([[5.0, 4, 0, 0], [0, 5, 4, 0], [0, 4, 3, 5], [4, 0, 0, 5]])
    target2 = torch.tensor([1, 1, 2, 3])
    names = ["acc1", "acc2", "acc3", "precision", "recall", "f1", "kappa"]
    m = build_metrics(names, 4, prefix="t/")
    m.update(logits1, target1)
    m.update(logits2, target2)
    got = m.compute()
    y = torch.cat([target1, target2]).numpy()
    pred = torch.cat([logits1, logits2]).argmax(1).numpy()
    assert got["t/acc1"] == pytest.approx((pred == y).mean(), abs=1e-6)
    assert got["t/f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert got["t/precision"] == pytest.approx(precision_score(y, pred, average="macro"), abs=1e-6)
    assert got["t/recall"] == pytest.approx(recall_score(y, pred, average="macro"), abs=1e-6)
    assert got["t/kappa"] == pytest.approx(cohen_kappa_score(y, pred), abs=1e-6)
    assert got["t/acc2"] == pytest.approx(9 / 10, abs=1e-6)  # batch 2: sample 2 has its class third
    assert got["t/acc3"] == pytest.approx(1.0, abs=1e-6)


class RecordingLoss(TaskLoss):
    """Needs the feature map and the embeddings; predicts with its own head to test ``predict``."""

    requires = frozenset({"logits", "features", "embeddings"})

    def bind(self, num_features: int, num_classes: int) -> None:
        self.head = nn.Linear(num_features, num_classes)
        self.seen: dict[str, tuple[int, ...]] = {}

    def forward(self, outputs, target):
        self.seen = {k: tuple(v.shape) for k, v in outputs.items()}
        ce = nn.functional.cross_entropy(self.predict(outputs), target)
        return {"loss": ce + 0.0 * outputs["features"].mean(), "ce": ce}

    def predict(self, outputs):
        return self.head(outputs["embeddings"])


def test_task_loss_receives_features_and_embeddings_and_owns_the_prediction():
    loss = RecordingLoss()
    task = tiny_task(loss=loss)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    out = task.training_step((x, y), 0)
    assert loss.seen["features"][:2] == (2, task.backbone.num_features)
    assert loss.seen["embeddings"] == (2, task.backbone.num_features)
    assert loss.seen["logits"] == (2, 10)
    assert torch.allclose(
        task(x), loss.head(task.backbone.forward_head(task.backbone.forward_features(x), pre_logits=True))
    )
    out.backward()
    assert loss.head.weight.grad is not None  # the loss's own parameters are trained with the model


def _fit(task, tmp_path, steps=3, **trainer_kwargs):
    dm = DigitsDataModule(batch_size=16, image_size=16, num_workers=0)
    trainer = Trainer(
        max_steps=steps,
        limit_val_batches=2,
        limit_test_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    trainer.fit(task, datamodule=dm)
    return trainer, dm


def test_fit_logs_namespaced_metrics(tmp_path):
    task = tiny_task(metrics=["acc1", "acc5", "f1", "auroc", "ap"])
    trainer, dm = _fit(task, tmp_path, val_check_interval=3)
    logged = set(trainer.callback_metrics)
    assert {
        "train/loss",
        "val/acc1",
        "val/acc1_best",
        "val/acc5",
        "val/f1",
        "val/auroc",
        "val/ap",
        "val/loss",
    } <= logged
    trainer.test(task, datamodule=dm, verbose=False)
    assert {"test/acc1", "test/f1", "test/loss"} <= set(trainer.callback_metrics)


class _WeightProbe(Callback):
    """Records the raw weights after every optimizer step and the weights validation runs with."""

    def __init__(self) -> None:
        self.raw: list[dict[str, torch.Tensor]] = []
        self.val: dict[str, torch.Tensor] | None = None
        self.after_val: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _weights(module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.raw.append(self._weights(pl_module))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.val is not None and self.after_val is None:
            self.after_val = self._weights(pl_module)  # back on the raw weights after validation

    def on_validation_batch_start(self, trainer, pl_module, *args) -> None:
        if not trainer.sanity_checking and self.val is None:
            self.val = self._weights(pl_module)


def test_ema_weights_differ_from_raw_and_are_what_validation_uses(tmp_path):
    decay = 0.5
    task = tiny_task(ema_decay=decay, optimizer=sgd(0.5))
    probe = _WeightProbe()
    trainer, _ = _fit(
        task, tmp_path, steps=4, val_check_interval=3, num_sanity_val_steps=0, callbacks=[probe]
    )
    assert sum(isinstance(cb, EMAWeightAveraging) for cb in trainer.callbacks) == 1
    assert probe.val is not None and probe.after_val is not None and len(probe.raw) == 4
    # EMA of the raw weights after steps 1..3 (the first update copies, then ema = d * ema + (1 - d) * w)
    ema = dict(probe.raw[0])
    for raw in probe.raw[1:3]:
        ema = {n: decay * ema[n] + (1 - decay) * raw[n] for n in ema}
    raw3 = probe.raw[2]
    moved = [n for n in raw3 if not torch.allclose(ema[n], raw3[n], rtol=1e-3, atol=1e-6)]
    assert moved, "EMA weights equal the raw weights: the test could not tell them apart"
    for name in moved:  # validation ran with the EMA weights, not the raw ones
        torch.testing.assert_close(probe.val[name], ema[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(probe.val[name], raw3[name], rtol=1e-3, atol=1e-6)
    for name, value in raw3.items():  # and training went on from the raw weights
        torch.testing.assert_close(probe.after_val[name], value, rtol=0, atol=0)


def test_lr_is_scaled_from_the_reference_global_batch(tmp_path):
    task = tiny_task(lr_reference_batch_size=64, optimizer=sgd(0.4))
    trainer, _ = _fit(task, tmp_path, steps=1, accumulate_grad_batches=2)
    # global batch 16 x 1 device x 2 accumulation = 32 -> half of the reference 64
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.2)
    # the lr before scaling, where WarmupReduceLROnPlateau starts its warm-up
    assert trainer.optimizers[0].param_groups[0]["reference_lr"] == pytest.approx(0.4)


def test_warmup_plateau_rises_from_the_reference_lr_then_follows_the_plateau_rule():
    """FFT's scaled recipe: lr 1e-3 at batch 4 -> 0.016 at batch 64, reached linearly over the warm-up."""
    from lightning_modules.schedulers import WarmupReduceLROnPlateau

    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.016)
    opt.param_groups[0]["reference_lr"] = 0.001  # what ClassificationTask records before scaling
    sched = WarmupReduceLROnPlateau(opt, warmup_epochs=3, patience=0, factor=0.1)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(3):  # a worsening loss during warm-up is not counted
        sched.step(1.0 + len(lrs))
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.001, 0.001 + 0.005, 0.001 + 0.010, 0.016])
    restored = WarmupReduceLROnPlateau(torch.optim.SGD([w], lr=0.016), warmup_epochs=3, patience=0)
    restored.load_state_dict(sched.state_dict())
    for s, o in ((sched, opt), (restored, restored.optimizer)):
        s.step(1.0)  # first plateau step: best so far
        s.step(2.0)  # worse, patience 0: x0.1
        assert o.param_groups[0]["lr"] == pytest.approx(0.0016)
    with pytest.raises(SchedulerConfigError):
        WarmupReduceLROnPlateau(opt, warmup_epochs=-1)


def test_mixup_trains_on_timm_soft_targets(tmp_path):
    """DeiT's Mixup/CutMix (timm.data.Mixup + SoftTargetCrossEntropy): the loss sees mixed soft targets."""
    from timm.data import Mixup

    task = tiny_task(mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, label_smoothing=0.1)
    assert isinstance(task.mixup_fn, Mixup) and task.mixup_fn.label_smoothing == 0.1
    seen = []
    task.soft_target_loss.register_forward_hook(lambda m, args, out: seen.append(args[1].detach()))
    trainer, _ = _fit(task, tmp_path, steps=2)
    assert len(seen) == 2 and seen[0].shape == (16, 10)
    assert torch.allclose(seen[0].sum(-1), torch.ones(16))  # a distribution per image ...
    assert (seen[0].max(-1).values < 1.0).all()  # ... never one-hot (smoothing + a mix of two labels)
    assert "train/loss_epoch" in trainer.callback_metrics and "train/acc1" not in trainer.callback_metrics
    with pytest.raises(TaskConfigError, match="SoftTargetCrossEntropy"):
        tiny_task(mixup={"mixup_alpha": 0.8}, loss=torch.nn.MSELoss())
    with pytest.raises(TaskConfigError, match="mixup"):
        tiny_task(mixup={"mixup_alpah": 0.8})


def test_grad_checkpointing_flag_switches_the_backbone_and_is_checked():
    task = tiny_task(grad_checkpointing=True)
    assert task.backbone.grad_checkpointing is True and tiny_task().backbone.grad_checkpointing is False
    x = torch.randn(2, 3, 32, 32)
    task(x).sum().backward()  # every parameter still gets a gradient through the recomputed blocks
    assert all(p.grad is not None for p in task.backbone.parameters() if p.requires_grad)


def test_pretrained_required_refuses_a_random_trunk_unless_none_is_chosen():
    """A recipe whose paper fine-tunes (pretrained_required) refuses null/false; "none" is random init."""
    from lightning_modules.task import ClassificationTask, TaskConfigError

    for missing in (None, False):
        with pytest.raises(TaskConfigError, match="pretrained.*none"):
            ClassificationTask("resnet18", num_classes=3, pretrained=missing, pretrained_required=True)
    task = ClassificationTask(
        "resnet18", num_classes=3, pretrained="none", pretrained_required=True, backbone_kwargs={}
    )
    assert task.hparams.pretrained == "none"  # kept, so load_from_checkpoint passes the check again
    assert getattr(TaskConfigError, "user_error", False)
    ClassificationTask("resnet18", num_classes=3)  # not required: null is random init as before
