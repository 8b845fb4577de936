"""Parameters and multiply-accumulates (MACs) of a model: the papers' "Params" and "FLOPs" columns.

MACs are ``torch.utils.flop_counter.FlopCounterMode``'s FLOPs / 2 over one forward in eval mode without
gradients. FlopCounterMode counts convolutions, matmuls and attention (2 FLOPs per multiply-add), not
element-wise ops, norms or pooling: the thop/ptflops convention the papers report (ResNet-50 at 224 px:
4.09 G). ``scaled_dot_product_attention`` runs on its math backend while counting: FlopCounterMode has no
formula for the fused CPU kernel and would count such attention as zero. Models on the ``meta`` device
are counted without memory or initialisation time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_params", "macs_by_module"]


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _inputs(model: nn.Module | Callable[..., Any], inputs: Tensor | int | tuple[int, int]) -> Tensor:
    if isinstance(inputs, Tensor):
        return inputs
    h, w = (inputs, inputs) if isinstance(inputs, int) else inputs
    params = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    device = params.device if params is not None else torch.device("cpu")
    return torch.zeros(1, 3, h, w, device=device)


def _counted(
    model: nn.Module | Callable[..., Any], inputs: Tensor | int | tuple[int, int]
) -> FlopCounterMode:
    x = _inputs(model, inputs)
    counter = FlopCounterMode(display=False)
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()  # inference graph (batch-norm statistics, no dropout), as the papers count it
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
    finally:
        if isinstance(model, nn.Module) and was_training is not None:
            model.train(was_training)
    return counter


def count_macs(model: nn.Module | Callable[..., Any], inputs: Tensor | int | tuple[int, int]) -> int:
    """MACs of ``model(inputs)``.

    Args:
        model: a module, or any callable of one tensor (e.g. ``lambda x: net.trunk(x)``).
        inputs: the input batch, or an image size (``224`` or ``(H, W)``: one 3-channel image on the
            model's device).
    """
    return int(_counted(model, inputs).get_total_flops()) // 2


def macs_by_module(model: nn.Module, inputs: Tensor | int | tuple[int, int]) -> dict[str, int]:
    """MACs per module path (``"<RootClass>.layer1"``, with its submodules); ``"Global"``: the total."""
    counts = _counted(model, inputs).get_flop_counts()
    return {name: int(sum(ops.values())) // 2 for name, ops in counts.items()}
