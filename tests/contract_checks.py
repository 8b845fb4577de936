"""Gradient checks shared by the model contract tests, independent of float rounding.

Some parameters have a gradient that is zero *by construction* (e.g. a key bias before a softmax over keys,
a per-channel constant before a LayerNorm over tokens): in floats their computed gradient is rounding noise,
exactly zero on one CPU / thread count and 1e-9 on another. A contract test therefore names them, checks
that the output does not depend on them at all, and requires a non-zero gradient of every other parameter.
"""

from __future__ import annotations

import torch
from torch import nn


def assert_gradients(
    model: nn.Module, zero_by_construction: set[str], skip_prefix: str | None = None
) -> None:
    """After ``backward()``: every parameter has a gradient; all but the named ones a non-zero one.

    ``zero_by_construction`` must name existing parameters, each with a gradient that is zero up to
    rounding relative to the largest gradient of the model. ``skip_prefix`` exempts parameters (e.g. a
    zero-initialised pretrained trunk) from the non-zero requirement, not from having a gradient.
    """
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert zero_by_construction <= set(grads), sorted(zero_by_construction - set(grads))
    missing = [n for n, g in grads.items() if g is None and n not in zero_by_construction]
    assert not missing, missing
    scale = max(g.abs().max().item() for g in grads.values() if g is not None)
    assert scale > 0
    zero = [
        n
        for n, g in grads.items()
        if n not in zero_by_construction and not g.any() and not (skip_prefix and n.startswith(skip_prefix))
    ]
    assert not zero, f"zero gradient: {zero}"
    for n in zero_by_construction:
        g = grads[n]
        assert g is None or g.abs().max().item() <= 1e-4 * scale, f"{n}: gradient {g.abs().max()} vs {scale}"


@torch.no_grad()
def assert_output_ignores(model: nn.Module, names: set[str], x: torch.Tensor) -> None:
    """Eval-mode output unchanged when the named parameters are shifted by large random values."""
    params = dict(model.named_parameters())
    was_training = model.training
    model.eval()
    ref = model(x)
    saved = {n: params[n].clone() for n in names}
    gen = torch.Generator().manual_seed(0)
    for n in names:
        params[n].add_(1.0 + torch.randn(params[n].shape, generator=gen, dtype=params[n].dtype))
    out = model(x)
    for n in names:
        params[n].copy_(saved[n])
    model.train(was_training)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
