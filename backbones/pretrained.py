"""Loading local pretrained checkpoints into any backbone of this project.

Fine-grained recipes start from ImageNet weights, and the machines this project is tested on have no
internet, so every backbone accepts a *local* file (a timm or torchvision ``state_dict``, a Lightning
checkpoint of this project, or a dict wrapping one under ``state_dict`` / ``model`` /
``state_dict_ema``). Files are read with ``torch.load(..., weights_only=True)``: no pickled code runs.

Key mapping contract for paper models whose ResNet trunk sits under a sub-module:

* ``pretrained_trunk_prefix: str`` (class attribute): every key of a plain ResNet state dict
  (``conv1.weight``, ``layer3.4.bn2.running_mean``, ...) is loaded as ``prefix + key``;
* or a method ``pretrained_key_map(state_dict) -> state_dict`` for anything more involved.

Keys whose shape does not match (typically the 1000-class ``fc``) are skipped and reported, and so are
missing and unexpected keys; a file that matches no key at all is an error, since that always means the
wrong file or the wrong model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict_ema", "state_dict", "model_ema", "model", "module")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.")


class PretrainedLoadError(RuntimeError):
    """A pretrained file could not be used for the requested model."""

    user_error = True  # main.py prints the message alone, without a traceback


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: keys loaded, skipped for shape, missing and unexpected."""

    path: str
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self, limit: int = 8) -> str:
        def fmt(keys: list[str]) -> str:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more if keys else "none"

        return (
            f"pretrained '{self.path}': loaded {len(self.loaded)} tensors; "
            f"skipped for shape: {fmt(self.shape_mismatch)}; "
            f"missing (left at init): {fmt(self.missing)}; unexpected (ignored): {fmt(self.unexpected)}"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely and return a flat ``{name: tensor}`` dict without wrapper prefixes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PretrainedLoadError(
            f"pretrained checkpoint '{path}' does not exist. Pass the path of a local .pth/.pt/.ckpt file "
            "(e.g. a timm or torchvision ResNet state_dict saved with torch.save(model.state_dict(), path))."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - one clear message for every unreadable file
        raise PretrainedLoadError(
            f"could not read pretrained checkpoint '{path}' with torch.load(weights_only=True): {err}. "
            "Save plain tensors (model.state_dict()), not a pickled model object."
        ) from None
    for _ in range(3):  # unwrap {"state_dict": {...}} style containers, possibly nested
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        raise PretrainedLoadError(
            f"'{path}' holds no state dict of tensors (top-level type {type(obj).__name__}). "
            "Expected model.state_dict() or a checkpoint with a 'state_dict' entry."
        )
    return obj


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a local checkpoint into ``model`` (mapping ResNet keys into paper trunks) and report.

    Args:
        model: any backbone; see the module docstring for the key-mapping hooks.
        path: local file with a state dict (timm, torchvision, or a checkpoint of this project).

    Returns:
        A :class:`LoadReport`; its summary is also logged.

    Raises:
        PretrainedLoadError: the file is missing/unreadable, or none of its keys fit the model.
    """
    own = model.state_dict()
    state = _strip_wrappers(read_state_dict(path), own)
    if hasattr(model, "pretrained_key_map"):
        state = model.pretrained_key_map(state)
    elif getattr(model, "pretrained_trunk_prefix", ""):
        prefix = model.pretrained_trunk_prefix
        state = {(k if k in own else prefix + k): v for k, v in state.items()}

    report = LoadReport(path=os.fspath(path))
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.shape_mismatch.append(f"{key} {tuple(value.shape)}->{tuple(own[key].shape)}")
        else:
            usable[key] = value
    if not usable:
        raise PretrainedLoadError(
            f"no tensor of '{path}' matches {type(model).__name__}: file keys look like "
            f"{list(state)[:3]}, model keys like {list(own)[:3]}. Is this checkpoint for another "
            "architecture? For a paper model, pass weights of its trunk (e.g. a resnet101 state_dict)."
        )
    head = _classifier_keys(model)
    wrong_shape = [k for k in report.shape_mismatch if k.split(" ")[0] not in head]
    if wrong_shape and len(wrong_shape) > 0.25 * (len(wrong_shape) + len(usable)):
        raise PretrainedLoadError(
            f"'{path}' does not fit {type(model).__name__}: {len(wrong_shape)} tensors outside the "
            f"classifier have other shapes ({', '.join(wrong_shape[:3])}, ...). These are weights of "
            "another architecture or depth (e.g. resnet18 weights for a resnet50 trunk); use the trunk's "
            "own weights."
        )
    if wrong_shape:  # a few modified layers (e.g. MSF-CA's wider conv3) keep their initialisation
        log.warning(f"pretrained '{path}': {len(wrong_shape)} tensors skipped for shape: {wrong_shape[:4]}")
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    prefix = getattr(model, "pretrained_trunk_prefix", "")
    trunk_missing = [k for k in report.missing if prefix and k.startswith(prefix) and k not in head]
    if trunk_missing:
        log.warning(
            f"pretrained '{path}': {len(trunk_missing)} trunk tensors of {type(model).__name__} are NOT in "
            f"the file and stay randomly initialised (e.g. {trunk_missing[:3]}): is this a shallower "
            "network's checkpoint?"
        )
    log.info(report.summary())
    return report


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (skipped on shape mismatch: another class count)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        return {k for k in model.state_dict() if k.split(".")[0] in {"fc", "head", "classifier"}}
    ids = {id(t) for t in head.state_dict(keep_vars=True).values()}
    return {k for k, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_wrappers(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.`` from DDP, ``backbone.`` from this project's Lightning checkpoints,
    ``_orig_mod.`` from torch.compile, ``model.``) as long as that makes more keys match the model."""
    best = state
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if best and all(k.startswith(prefix) for k in best):
                stripped = {k[len(prefix) :]: v for k, v in best.items()}
                if sum(k in own for k in stripped) >= sum(k in own for k in best):
                    best, changed = stripped, True
            elif any(k.startswith(prefix) for k in best) and prefix in ("backbone.",):
                # a Lightning checkpoint also holds loss./metric entries: keep only the backbone's
                stripped = {k[len(prefix) :]: v for k, v in best.items() if k.startswith(prefix)}
                if sum(k in own for k in stripped) > sum(k in own for k in best):
                    best, changed = stripped, True
    return best
