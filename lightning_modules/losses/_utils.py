"""Small helpers shared by the losses: output checks, fp32 regions under autocast, DDP sums."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

# Device types for which ``torch.autocast`` can be switched off explicitly.
_AUTOCAST_DEVICES = frozenset({"cpu", "cuda", "xpu", "mps", "hpu"})


@contextlib.contextmanager
def autocast_off(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` so margin / angle maths runs in the dtype of its inputs (fp32).

    Under bf16 autocast a ``matmul`` of fp32 tensors is silently done in bf16 (8-bit mantissa); a cosine
    of 0.999 then rounds to 1.0 and ``acos`` / ``cos(m theta)`` lose all meaning.
    """
    if device.type in _AUTOCAST_DEVICES:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


class LossConfigError(ValueError):
    """A loss argument out of range, or a loss that does not fit the model (user error: one line, exit 2)."""

    user_error = True


def get_output(loss: nn.Module, outputs: dict[str, Tensor], key: str) -> Tensor:
    """Return ``outputs[key]`` or raise one clear error naming the loss and the missing backbone output."""
    if key not in outputs:
        raise KeyError(
            f"{type(loss).__name__} needs the backbone output {key!r}, but the task passed only "
            f"{sorted(outputs)}. ClassificationTask provides 'logits', 'features' and 'embeddings'."
        )
    return outputs[key]


def check_target(target: Tensor, num_classes: int, loss: nn.Module) -> Tensor:
    """Check that ``target`` holds class indices (B,) and return it as int64."""
    if target.ndim != 1 or target.dtype.is_floating_point:
        raise ValueError(
            f"{type(loss).__name__} expects class-index targets of shape (B,), got dtype {target.dtype} "
            f"shape {tuple(target.shape)} (soft / mixed targets are not supported by this loss)."
        )
    return target.long()


def require_bound(loss: nn.Module, tensor: Tensor | None) -> Tensor:
    """Raise a clear error when a loss that owns parameters is used before ``bind()``."""
    if tensor is None:
        raise RuntimeError(
            f"{type(loss).__name__} owns parameters that depend on the backbone width and the number of "
            "classes; call loss.bind(num_features, num_classes) first (ClassificationTask does this)."
        )
    return tensor


def check_width(loss: nn.Module, x: Tensor, weight: Tensor) -> None:
    """Check that embeddings ``x`` (B, D) match the bound parameter ``weight`` (K, D)."""
    if x.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise LossConfigError(
            f"{type(loss).__name__} was bound to num_features={weight.shape[1]} but got embeddings of shape "
            f"{tuple(x.shape)}. bind() must receive the width of the 'embeddings' output "
            "(forward_head(features, pre_logits=True)): for timm models with a pre-logits MLP, such as VGG's "
            "4096-wide one, that is `head_hidden_size`, not `num_features`."
        )


def all_reduce_sum_(*tensors: Tensor) -> None:
    """Sum tensors in place across DDP ranks (no-op without an initialised process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def check_bind_args(loss: nn.Module, num_features: int, num_classes: int) -> None:
    """Reject unknown / invalid sizes before creating parameters from them."""
    if num_features <= 0 or num_classes <= 0:
        raise LossConfigError(
            f"{type(loss).__name__}.bind() got num_features={num_features}, num_classes={num_classes}; both "
            "must be positive (the backbone must expose `num_features`, the pooled embedding width)."
        )
