"""The one training task of the framework: image classification around any timm-registered backbone."""

from __future__ import annotations

import difflib
import logging
import re
from typing import Any, Literal

import timm
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric

import backbones  # noqa: F401 - registers the papers' models with timm
from backbones.pretrained import load_pretrained
from lightning_modules.hub import require_hub_weights
from lightning_modules.losses.base import TaskLoss, compute_loss
from lightning_modules.metrics import build_metrics

log = logging.getLogger(__name__)


class UnknownModelError(ValueError):
    """The backbone name is not in timm's registry (this project's models included)."""

    user_error = True


def create_backbone(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with a clear error listing close names when ``name`` is unknown."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown backbone '{name}'.{hint} Any name from timm.list_models() works, plus this project's "
            "models (python -c \"import backbones, timm; print(timm.list_models(module='acanet'))\")."
        )
    if kwargs.get("pretrained") is True:
        require_hub_weights(name)  # fail fast offline instead of timm's download retries
    return timm.create_model(name, num_classes=num_classes, **kwargs)


class TaskConfigError(ValueError):
    """An argument of the task is out of range."""

    user_error = True


class NonFiniteValidationError(FloatingPointError):
    """Validation produced a NaN/inf loss (stopped instead of being silently ranked last)."""

    user_error = True


class CheckpointMismatchError(ValueError):
    """A checkpoint was made for another model or another number of classes."""

    user_error = True


class ClassificationTask(LightningModule):
    """Supervised image classification: backbone + loss + optimiser/scheduler + torchmetrics.

    Args:
        backbone: a timm model name; every model of this project is registered too (``acanet18``,
            ``msfca50``, ``fft_base``, ``csnet101``, ``tokenfusion_layer``, ...).
        num_classes: number of classes; linked from ``data.num_classes`` by the CLI.
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (ablation switches, drop rates).
        pretrained: ``None``/``False`` for random init, ``True`` for timm's hub weights (needs internet), or
            the path of a local checkpoint loaded with ``weights_only=True`` (ResNet trunks of the paper
            models are mapped; see :mod:`backbones.pretrained`). The string ``"none"``: random init on
            purpose (what ``pretrained_required`` asks for to train from scratch).
        pretrained_required: the row's paper fine-tunes pre-trained weights (TokenFusion, CS-Net recipes):
            refuse to start from a random trunk unless ``pretrained`` is a file, ``True`` or ``"none"``.
        loss: a plain loss on logits (``torch.nn.CrossEntropyLoss``) or a
            :class:`~lightning_modules.losses.base.TaskLoss` that also receives the backbone's feature map and
            embeddings. Default: cross-entropy with ``label_smoothing``.
        label_smoothing: label smoothing of the default cross-entropy.
        optimizer: optimiser callable (``class_path: torch.optim.SGD`` + ``init_args`` in YAML).
        lr_scheduler: scheduler callable, or ``None`` for a constant learning rate.
        lr_scheduler_interval: step the scheduler every ``epoch`` or every optimiser ``step``.
        lr_scheduler_monitor: metric watched by ``ReduceLROnPlateau``.
        param_groups: parameter groups with their own hyper-parameters, e.g.
            ``[{pattern: "backbone\\.head\\.", lr_mult: 10.0}]``: the first group whose regex matches a
            parameter name (``backbone.*`` / ``loss.*``) takes it; ``lr_mult`` scales the optimiser's learning
            rate; other keys (``weight_decay``, ``momentum``) are set on the group as given.
        no_weight_decay_1d: put biases and norm weights (1-D parameters) in groups with ``weight_decay=0``.
        lr_reference_batch_size: if set, the learning rate in ``optimizer`` is the one for this *global*
            batch size and is scaled linearly to the actual global batch
            (``batch_size x devices x num_nodes x accumulate_grad_batches``). ``None``: use it as written.
        ema_decay: if set, keep an exponential moving average of the weights (Lightning's
            ``EMAWeightAveraging``), used for validation, test and the saved checkpoints.
        mixup: if set, keyword arguments of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``prob``,
            ``switch_prob``, ``mode``, ``label_smoothing``; ``num_classes`` is the task's): every training
            batch is mixed by timm and the loss is timm's ``SoftTargetCrossEntropy`` on the mixed targets
            (DeiT's recipe). ``label_smoothing`` defaults to the task's. Needs the plain cross-entropy
            (no ``loss``); an odd batch drops its last image (timm mixes a batch with its flip); no
            ``train/acc1`` is logged (mixed images have no single label). Validation/test are unchanged.
        metrics: metric names logged at validation and test (see :mod:`lightning_modules.metrics`).
        channels_last: run the backbone and inputs in NHWC memory format (faster convs with AMP on GPUs).
        grad_checkpointing: call the backbone's timm ``set_grad_checkpointing(True)``: its blocks are
            recomputed in the backward pass (less activation memory, about one more forward of compute).
        compile: wrap the backbone in ``torch.compile`` when fitting.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 1000,
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: bool | str | None = None,
        pretrained_required: bool = False,
        loss: nn.Module | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_monitor: str = "val/loss",
        param_groups: list[dict[str, Any]] | None = None,
        no_weight_decay_1d: bool = False,
        lr_reference_batch_size: int | None = None,
        ema_decay: float | None = None,
        mixup: dict[str, Any] | None = None,
        metrics: list[str] | None = None,
        channels_last: bool = False,
        grad_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise TaskConfigError(f"label_smoothing is a fraction in [0, 1), got {label_smoothing}")
        if pretrained_required and pretrained in (None, False):
            raise TaskConfigError(
                "this recipe fine-tunes pre-trained weights (pretrained_required): set "
                "model.init_args.pretrained to a local state dict file, true (timm hub, needs internet), or "
                "none to train from a random trunk on purpose (also for test/predict with --ckpt_path, whose "
                "weights replace the initialisation)"
            )
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])
        self.backbone = create_backbone(
            backbone, num_classes, pretrained=pretrained is True, **(backbone_kwargs or {})
        )
        if isinstance(pretrained, str) and pretrained.lower() != "none":  # "none": random init, chosen
            report = load_pretrained(self.backbone, pretrained)
            log.warning(report.summary())
        self.loss = loss if loss is not None else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        if isinstance(self.loss, TaskLoss):
            # the embedding width: timm's head_hidden_size where a pre-logits MLP widens it (VGG),
            # else num_features
            width = getattr(self.backbone, "head_hidden_size", None) or getattr(
                self.backbone, "num_features", 0
            )
            self.loss.bind(int(width), num_classes)
        self._needs = self.loss.requires if isinstance(self.loss, TaskLoss) else frozenset({"logits"})
        if "logits" not in self._needs:
            # margin losses (A-Softmax, CosFace, COCO, L-GM) own the classifier: the backbone's head is
            # unused, and parameters without gradients would break DDP
            self.backbone.get_classifier().requires_grad_(False)
        self.mixup_fn = self._build_mixup(mixup, num_classes, label_smoothing)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if grad_checkpointing:
            if not hasattr(self.backbone, "set_grad_checkpointing"):
                raise TaskConfigError(f"{backbone} has no set_grad_checkpointing (timm models have it)")
            self.backbone.set_grad_checkpointing(True)

        names = list(metrics) if metrics is not None else ["acc1", "acc5"]
        if "acc1" not in names:
            names.insert(0, "acc1")  # val/acc1 drives checkpointing and val/acc1_best
        self.train_acc = build_metrics(["acc1"], num_classes, prefix="train/")
        self.train_loss = MeanMetric()
        self.val_metrics = build_metrics(names, num_classes, prefix="val/")
        self.test_metrics = build_metrics(names, num_classes, prefix="test/")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc1_best = MaxMetric()

    def _build_mixup(self, mixup: dict[str, Any] | None, num_classes: int, smoothing: float) -> Any:
        if not mixup:
            return None
        if not isinstance(self.loss, nn.CrossEntropyLoss):  # margin/MC losses (TaskLoss) included
            raise TaskConfigError(
                f"mixup trains with timm's SoftTargetCrossEntropy: it replaces the cross-entropy, not "
                f"{type(self.loss).__name__}; remove model.init_args.loss or mixup"
            )
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        kwargs = {"label_smoothing": smoothing, **mixup, "num_classes": num_classes}
        try:
            fn = Mixup(**kwargs)
        except TypeError as err:
            raise TaskConfigError(f"mixup: {err} (keys: timm.data.Mixup's arguments)") from None
        self.soft_target_loss = SoftTargetCrossEntropy()
        return fn

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Class scores for a batch of images (what metrics and ``predict`` use)."""
        return self.predict_logits(self.forward_outputs(x))

    def forward_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Run the backbone and return the outputs the loss asks for (always ``logits``)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._needs <= {"logits"}:
            return {"logits": self.backbone(x)}
        features = self.backbone.forward_features(x)
        out = {"features": features, "logits": self.backbone.forward_head(features)}
        if "embeddings" in self._needs:
            emb = self.backbone.forward_head(features, pre_logits=True)
            out["embeddings"] = emb.flatten(2).mean(-1) if emb.ndim > 2 else emb
        return out

    def predict_logits(self, outputs: dict[str, Tensor]) -> Tensor:
        return self.loss.predict(outputs) if isinstance(self.loss, TaskLoss) else outputs["logits"]

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.mixup_fn is not None:
            return self._mixup_step(x, y)
        outputs = self.forward_outputs(x)
        losses = compute_loss(self.loss, outputs, y)
        loss = losses["loss"]
        self.train_loss(loss.detach())
        self.train_acc(self.predict_logits(outputs).detach(), y)
        self.log(
            "train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=y.shape[0]
        )
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train/loss_{name}", value.detach(), on_step=True, batch_size=y.shape[0])
        return loss

    def _mixup_step(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[0] % 2:  # timm mixes each image with its mirror in the batch
            x, y = x[:-1], y[:-1]
        if x.shape[0] == 0:
            raise TaskConfigError("mixup needs training batches of at least 2 images")
        x, soft = self.mixup_fn(x, y)
        loss = self.soft_target_loss(self.forward_outputs(x)["logits"], soft)
        self.train_loss(loss.detach())
        self.log(
            "train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=y.shape[0]
        )
        return loss

    def on_train_epoch_end(self) -> None:
        # values are already reduced across ranks by torchmetrics; sync_dist only keeps Lightning from warning
        self.log("train/loss_epoch", self.train_loss.compute(), sync_dist=True)
        if self.mixup_fn is None:  # mixed images have no single label to be right about
            self.log_dict(self.train_acc.compute(), sync_dist=True)
        self.train_loss.reset()
        self.train_acc.reset()

    def _eval_step(self, batch: tuple[Tensor, Tensor], metrics, mean_loss: MeanMetric) -> Tensor:
        x, y = batch
        outputs = self.forward_outputs(x)
        loss = compute_loss(self.loss, outputs, y)["loss"]
        logits = self.predict_logits(outputs)
        mean_loss.update(loss.detach(), weight=y.shape[0])
        metrics.update(logits.detach().float(), y)
        return logits

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, self.val_metrics, self.val_loss)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, self.test_metrics, self.test_loss)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self(x).float().softmax(dim=-1)
        return {"probs": probs, "preds": probs.argmax(dim=-1)}

    def on_train_start(self) -> None:
        # the sanity check must not leak into the best-so-far value
        self.val_acc1_best.reset()

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        values["val/loss"] = self.val_loss.compute()
        self.val_metrics.reset()
        self.val_loss.reset()
        if not bool(torch.isfinite(values["val/loss"])):
            # ModelCheckpoint would count a NaN as -inf and carry on: the run would look fine
            # and learn nothing
            raise NonFiniteValidationError(
                f"validation loss is {values['val/loss'].item()} at epoch {self.current_epoch}: "
                "the model gives "
                "non-finite outputs on the validation images. Usual causes: an input size too small for the "
                "model (its feature maps shrink to nothing; raise data.init_args.image_size), "
                "a diverged model "
                "(lower the learning rate), or broken images."
            )
        if not self.trainer.sanity_checking:
            self.val_acc1_best.update(values["val/acc1"])
            values["val/acc1_best"] = self.val_acc1_best.compute()
        acc1 = values.pop("val/acc1")
        self.log("val/acc1", acc1, prog_bar=True, sync_dist=True)
        self.log_dict(values, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        values["test/loss"] = self.test_loss.compute()
        self.test_metrics.reset()
        self.test_loss.reset()
        prefix = getattr(self, "test_key_prefix", "test")  # test/last, test/best after fit (the CLI)
        if prefix != "test":
            values = {prefix + key[len("test") :]: value for key, value in values.items()}
        self.log_dict(values, sync_dist=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, with one clear message, a checkpoint of another backbone or another class count."""
        saved = checkpoint.get("hyper_parameters", {})
        mine = self.hparams
        problems = []
        if saved.get("backbone", mine.backbone) != mine.backbone:
            problems.append(f"backbone '{saved['backbone']}' (this run: '{mine.backbone}')")
        if saved.get("num_classes", mine.num_classes) != mine.num_classes:
            problems.append(f"{saved['num_classes']} classes (this run's data: {mine.num_classes})")
        if problems:
            raise CheckpointMismatchError(
                f"the checkpoint was trained with {' and '.join(problems)}. "
                "Use a checkpoint of this experiment, "
                "or to fine-tune on new classes pass it as `model.init_args.pretrained: <path>` "
                "(the classifier "
                "is then skipped) instead of `--ckpt_path`."
            )

    # ------------------------------------------------------------------ optimisation
    def setup(self, stage: str) -> None:
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.backbone = torch.compile(self.backbone)
            self._compiled = True

    def configure_callbacks(self) -> list[Callback]:
        if self.hparams.ema_decay is None:
            return []
        return [EMAWeightAveraging(decay=self.hparams.ema_decay)]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Split trainable parameters into the configured groups (first matching pattern wins)."""
        specs = [dict(g) for g in (self.hparams.param_groups or [])]
        for spec in specs:
            if "pattern" not in spec:
                raise TaskConfigError(
                    f"param_groups entry {spec} needs a 'pattern' (a regex on parameter names)"
                )
            try:
                spec["_re"] = re.compile(spec["pattern"])
            except re.error as err:
                raise TaskConfigError(
                    f"param_groups pattern {spec['pattern']!r} is not a valid regex: {err}"
                ) from None
        buckets: dict[tuple[int, bool], list[Tensor]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            idx = next((i for i, s in enumerate(specs) if s["_re"].search(name)), -1)
            no_wd = self.hparams.no_weight_decay_1d and param.ndim <= 1
            buckets.setdefault((idx, no_wd), []).append(param)
        for i, spec in enumerate(specs):
            if not any(key[0] == i for key in buckets):
                raise TaskConfigError(
                    f"param_groups pattern {spec['pattern']!r} matches no trainable parameter; "
                    "names look like "
                    f"{[n for n, _ in self.named_parameters()][:4]}"
                )
        groups = []
        for (idx, no_wd), params in sorted(buckets.items(), key=lambda kv: kv[0]):
            group: dict[str, Any] = {"params": params}
            if idx >= 0:
                group.update({k: v for k, v in specs[idx].items() if k not in {"pattern", "_re"}})
            if no_wd:
                group["weight_decay"] = 0.0
            groups.append(group)
        return groups

    def _lr_scale(self) -> float:
        ref = self.hparams.lr_reference_batch_size
        if ref is None or self._trainer is None:
            return 1.0
        dm = getattr(self.trainer, "datamodule", None)
        per_device = getattr(dm, "batch_size", None)
        if per_device is None:
            return 1.0
        trainer = self.trainer
        global_batch = per_device * trainer.world_size * trainer.accumulate_grad_batches
        scale = global_batch / ref
        log.warning(f"lr scaled x{scale:.4g}: global batch {global_batch} vs reference {ref}")
        return scale

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        optimizer = self.optimizer_factory(groups)
        scale = self._lr_scale()
        for group in optimizer.param_groups:
            group["reference_lr"] = group["lr"] * group.get("lr_mult", 1.0)  # before the linear scaling rule
            group["lr"] = group["reference_lr"] * scale
            group["initial_lr"] = group["lr"]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams.lr_scheduler_interval,
                "monitor": self.hparams.lr_scheduler_monitor,
            },
        }
