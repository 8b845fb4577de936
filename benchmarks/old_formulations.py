"""The formulations the fast paths replaced, kept as references for the tests and the side-by-side benchmark.

Nothing in the library calls this module. ``use_old_formulations(model)`` switches, on one model instance,
every layer whose fast path replaced a slower formulation back to that formulation (same parameters, same
function), so ``benchmarks/bench_models.py`` can time the old and the new formulation in the same rounds
and ``tests/test_fast_paths.py`` can check that both give the same outputs and gradients:

* FFT fusion (Eq. 9/15, :class:`backbones.layers.fft_block.StreamFusion`): the ``K x K`` convolution
  whose kernel is as large as the token grid (``StreamFusion.forward_conv``) instead of one matmul of
  the unfolded blocks.
* FCSA (:mod:`backbones.layers.fcsa`): the Python loop over the ``window**2`` offsets (custom autograd
  functions, 49 small kernels forward and more backward) instead of one masked attention over tiles.
* MSF-CA's 1x1 convolutions (:class:`backbones.layers.pointwise.PointwiseConv2d`: the attention modules,
  the bottlenecks' ``conv1``/``conv3`` and the average-pool shortcut's conv): plain
  ``nn.Conv2d.forward``, which PyTorch sends to ``aten::_slow_conv2d`` for a 1x1 kernel, stride 1,
  batch < 16 on one CPU thread.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from backbones.layers.fcsa import FCSA, _reflect_pad, coordinate_grid
from backbones.layers.fft_block import StreamFusion
from backbones.layers.pointwise import PointwiseConv2d

__all__ = ["loop_window_attention", "use_old_formulations"]


def _unpad_reflect_grad(grad_pad: Tensor | None, x_pad: Tensor, pad: int) -> Tensor | None:
    """Gradient w.r.t. the unpadded input from the gradient w.r.t. its reflect-padded version.

    The padded tensor's centre view stands in for the input (only its shape is used), so the
    un-padded input need not be saved for backward.
    """
    if grad_pad is None or not pad:
        return grad_pad
    centre = x_pad[:, :, pad:-pad, pad:-pad]
    return torch.ops.aten.reflection_pad2d_backward(grad_pad, centre, [pad, pad, pad, pad])


class _WindowDot(torch.autograd.Function):
    """``out[:, o] = sum_c q[:, c] * k_pad[:, c, window o]`` for every offset ``o`` (k padded here)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, window: int) -> Tensor:  # type: ignore[override]
        bh, _, h, w = q.shape
        k_pad = _reflect_pad(k, window // 2)
        out = q.new_empty(bh, window * window, h, w)
        for o in range(window * window):
            dy, dx = divmod(o, window)
            torch.sum(q * k_pad[:, :, dy : dy + h, dx : dx + w], dim=1, out=out[:, o])
        ctx.save_for_backward(q, k_pad)
        ctx.window = window
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        q, k_pad = ctx.saved_tensors
        window = ctx.window
        _, _, h, w = q.shape
        grad = grad.to(q.dtype)
        grad_q = torch.zeros_like(q) if ctx.needs_input_grad[0] else None
        grad_k = torch.zeros_like(k_pad) if ctx.needs_input_grad[1] else None
        for o in range(window * window):
            dy, dx = divmod(o, window)
            g = grad[:, o : o + 1]
            if grad_q is not None:
                grad_q.addcmul_(g, k_pad[:, :, dy : dy + h, dx : dx + w])
            if grad_k is not None:
                grad_k[:, :, dy : dy + h, dx : dx + w].addcmul_(g, q)
        return grad_q, _unpad_reflect_grad(grad_k, k_pad, window // 2), None


class _WindowAggregate(torch.autograd.Function):
    """``out = sum_o attn[:, o] * v_pad[:, :, window o]`` (attention-weighted values; v padded here)."""

    @staticmethod
    def forward(ctx, attn: Tensor, v: Tensor, window: int) -> Tensor:  # type: ignore[override]
        bh, _, h, w = attn.shape
        v_pad = _reflect_pad(v, window // 2)
        out = v_pad.new_zeros(bh, v_pad.shape[1], h, w)
        for o in range(window * window):
            dy, dx = divmod(o, window)
            out.addcmul_(attn[:, o : o + 1], v_pad[:, :, dy : dy + h, dx : dx + w])
        ctx.save_for_backward(attn, v_pad)
        ctx.window = window
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        attn, v_pad = ctx.saved_tensors
        window = ctx.window
        _, _, h, w = attn.shape
        grad = grad.to(v_pad.dtype)
        grad_attn = torch.empty_like(attn) if ctx.needs_input_grad[0] else None
        grad_v = torch.zeros_like(v_pad) if ctx.needs_input_grad[1] else None
        for o in range(window * window):
            dy, dx = divmod(o, window)
            v_win = v_pad[:, :, dy : dy + h, dx : dx + w]
            if grad_attn is not None:
                torch.sum(grad * v_win, dim=1, out=grad_attn[:, o])
            if grad_v is not None:
                grad_v[:, :, dy : dy + h, dx : dx + w].addcmul_(attn[:, o : o + 1], grad)
        return grad_attn, _unpad_reflect_grad(grad_v, v_pad, window // 2), None


def loop_window_attention(q: Tensor, k: Tensor, v: Tensor, pos_weight: Tensor, window: int) -> Tensor:
    """The former FCSA attention: a Python loop over the ``window**2`` offsets (see ``fcsa.py`` for the math).

    ACmix's logits are ``q_i . (k_j + pe_i - pe_j)``. The term ``q_i . pe_i`` is the same for every key
    ``j`` of query ``i``, so the softmax cancels it: the attention equals ``softmax_j(q_i . (k_j - pe_j))``.
    With ``pe = W_p loc`` (a 1x1 conv of the coordinate grid; ACmix's bias cancels the same way), the keys
    are shifted once by ``-pe`` and no positional tensor per offset is needed. Reflect padding of
    ``k - pe`` gives the reflected coordinates at the border, exactly as ACmix pads ``pe``.

    Args:
        q: scaled queries ``(B*heads, head_dim, H, W)``.
        k: keys, same shape.
        v: values, same shape.
        pos_weight: the positional 1x1 conv's kernel as a ``(head_dim, 2)`` matrix.
        window: odd attention window (already adapted to the map size).

    Returns:
        ``(B*heads, head_dim, H, W)``.
    """
    _, _, h, w = q.shape
    grid = coordinate_grid(h, w, q.device, q.dtype)
    pe = F.conv2d(grid, pos_weight.to(q.dtype)[:, :, None, None])  # (1, head_dim, H, W)
    # Reflect padding happens inside the autograd functions, which keep only the padded copies.
    logits = _WindowDot.apply(q, k - pe, window)
    attn = logits.softmax(dim=1).to(v.dtype)
    return _WindowAggregate.apply(attn, v, window)


def use_old_formulations(model: nn.Module) -> int:
    """Switch every fast-path layer of ``model`` to its former formulation (in place); returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, StreamFusion):
            module.forward = module.forward_conv  # type: ignore[method-assign]
            count += 1
        elif isinstance(module, FCSA):
            module.local_attention = loop_window_attention  # type: ignore[method-assign]
            count += 1
        elif isinstance(module, PointwiseConv2d):
            module.forward = types.MethodType(nn.Conv2d.forward, module)  # type: ignore[method-assign]
            count += 1
    return count
