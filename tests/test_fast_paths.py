"""The fast formulations (issue 20) against the ones they replaced: same outputs, same gradients.

* FFT fusion (Eq. 9/15): one matmul of the unfolded blocks vs the ``K x K`` conv and the literal
  ``nn.Unfold`` + ``Linear`` (:class:`backbones.layers.fft_block.StreamFusion`).
* FCSA: one masked attention over query tiles vs the 49-offset loop and ACmix's unfold code.
* MSF-CA's 1x1 convs (:class:`backbones.layers.pointwise.PointwiseConv2d`: attention, bottleneck
  ``conv1``/``conv3`` and the average-pool shortcut) vs ``F.conv2d`` / ``nn.Conv2d`` / timm's bottleneck.
* Whole models: ``benchmarks.old_formulations.use_old_formulations`` switches a copy back; same logits.

Small inputs; float64 where an equality must not depend on rounding.
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import backbones  # noqa: F401 - registers the models
from backbones.layers.fcsa import FCSA, fcsa_unfold_reference, window_mask
from backbones.layers.fft_block import StreamFusion
from backbones.layers.pointwise import PointwiseConv2d, as_pointwise
from backbones.msfca import ChunkBottleneck, MSFBottleneck
from benchmarks.old_formulations import loop_window_attention, use_old_formulations


def _grads(out: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
    """Gradients of a fixed, non-uniform weighting of ``out`` (so every output element matters)."""
    weight = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * weight).sum(), inputs)


def _saved_bytes(fn, params: set[int]) -> int:
    """Bytes of the distinct non-parameter storages autograd saves while ``fn()`` builds its graph."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


# ------------------------------------------------------------------------------------------- FFT fusion
@pytest.mark.parametrize(
    ("src", "dst", "kernel"),
    [((8, 8), (8, 8), 8), ((2, 2), (2, 2), 8), ((4, 4), (2, 2), 8), ((5, 7), (3, 2), 4), ((9, 9), (2, 2), 3)],
)
def test_fusion_matmul_equals_conv_and_unfold(src, dst, kernel) -> None:
    torch.manual_seed(0)
    fusion = StreamFusion(6, 10, kernel_size=kernel).double()
    nn.init.normal_(fusion.proj.bias)
    nn.init.normal_(fusion.norm.weight)
    x = torch.randn(2, src[0] * src[1], 6, dtype=torch.float64, requires_grad=True)
    inputs = [x, *fusion.parameters()]
    out = fusion(x, src, dst)
    assert out.shape == (2, dst[0] * dst[1], 10)
    grads = _grads(out, inputs)
    for reference in (fusion.forward_conv, fusion.forward_unfold):
        ref = reference(x, src, dst)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        for g, g_ref in zip(grads, _grads(ref, inputs)):
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_fusion_saves_the_grid_not_the_unfold() -> None:
    """Activation memory as with the conv (the padded grid), not the K*K-fold unfolded blocks."""
    fusion = StreamFusion(16, 16, kernel_size=8, norm=False)
    x = torch.randn(2, 64, 16, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in fusion.parameters()}
    new = _saved_bytes(lambda: fusion(x, (8, 8), (8, 8)), params)
    unfold = _saved_bytes(lambda: fusion.forward_unfold(x, (8, 8), (8, 8)), params)
    padded_grid = 2 * 16 * 15 * 15 * 4  # (B, c, 8 + 7, 8 + 7) fp32
    assert new <= 2 * padded_grid and unfold > 8 * new


def test_fusion_autocast_matches_conv_under_autocast() -> None:
    torch.manual_seed(0)
    fusion = StreamFusion(8, 8, kernel_size=8)
    x = torch.randn(2, 16, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(x, (4, 4), (4, 4))
        ref = fusion.forward_conv(x, (4, 4), (4, 4))
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.05, atol=0.02)
    out.float().sum().backward()
    assert fusion.proj.weight.grad is not None and fusion.proj.weight.grad.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ FCSA
def _perturbed_fcsa(channels: int, dtype: torch.dtype = torch.float64) -> FCSA:
    torch.manual_seed(0)
    module = FCSA(channels, channels, heads=4).to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module


@pytest.mark.parametrize(("height", "width"), [(9, 11), (16, 16), (15, 29), (4, 4), (2, 3), (1, 1)])
def test_fcsa_tiles_equal_loop_and_unfold_reference(height: int, width: int) -> None:
    module = _perturbed_fcsa(16)
    x = torch.randn(2, 16, height, width, dtype=torch.float64, requires_grad=True)
    out = module(x)
    grads = _grads(out, [x, *module.parameters()])
    loop = copy.deepcopy(module)
    assert use_old_formulations(loop) == 1
    references = [(loop(x), loop), (fcsa_unfold_reference(module, x), module)]
    for ref, owner in references:
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        for g, g_ref in zip(grads, _grads(ref, [x, *owner.parameters()])):
            torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_fcsa_float32_within_1e5_of_the_unfold_reference() -> None:
    module = _perturbed_fcsa(32, torch.float32)
    x = torch.randn(2, 32, 20, 20)
    torch.testing.assert_close(module(x), fcsa_unfold_reference(module, x), rtol=0, atol=1e-5)


def test_window_mask_is_each_querys_neighbourhood() -> None:
    mask = window_mask(3, 4, 3, torch.device("cpu")).view(3, 4, 5, 6)
    assert mask.sum() == 3 * 4 * 9  # every query sees exactly window**2 keys
    assert mask[1, 2, 1:4, 2:5].all() and mask[1, 2].sum() == 9


def test_fcsa_keeps_its_memory_advantage_over_acmix() -> None:
    """Saved activations: ACmix's unfold keeps ~49x the map; the tiles keep a few copies (bench: 7x+)."""
    module = FCSA(32, 32, heads=4)
    x = torch.randn(1, 32, 28, 28, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    new = _saved_bytes(lambda: module(x), params)
    ref = _saved_bytes(lambda: fcsa_unfold_reference(module, x), params)
    assert ref > 5 * new


def test_loop_reference_is_the_attention_of_the_fcsa() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 6, 7, dtype=torch.float64) for _ in range(3))
    pos = torch.randn(4, 2, dtype=torch.float64)
    module = FCSA(16, 16)
    torch.testing.assert_close(
        module.local_attention(q, k, v, pos, 5),
        loop_window_attention(q, k, v, pos, 5),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.slow
def test_fcsa_compiles() -> None:
    module = _perturbed_fcsa(16, torch.float32)
    x = torch.randn(2, 16, 10, 12, requires_grad=True)
    compiled = torch.compile(module)
    out = compiled(x)
    torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------- MSF-CA 1x1
@pytest.mark.parametrize(
    ("shape", "out_channels"), [((2, 64, 2, 2), 80), ((2, 8, 6, 5), 4), ((1, 48, 3, 1), 48)]
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_equals_conv2d(shape, out_channels: int, channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = PointwiseConv2d(shape[1], out_channels).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    inputs = [x, conv.weight, conv.bias]
    out = conv(xin)
    ref = F.conv2d(xin, conv.weight, conv.bias)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(_grads(out, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)
    assert set(conv.state_dict()) == set(nn.Conv2d(shape[1], out_channels, 1).state_dict())


def test_pointwise_conv_leaves_the_slow_kernel() -> None:
    """The weight-bound 1x1 conv that PyTorch sends to _slow_conv2d (batch 2, one thread) runs as a matmul."""
    from torch.profiler import profile

    conv = PointwiseConv2d(256, 272)
    x = torch.randn(2, 256, 2, 2, requires_grad=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile() as prof:
            conv(x).sum().backward()
    finally:
        torch.set_num_threads(threads)
    assert not any("slow_conv2d" in e.key for e in prof.key_averages())


def test_as_pointwise_shares_the_parameters_and_draws_no_random_numbers() -> None:
    conv = nn.Conv2d(6, 5, 1, bias=True)
    state = torch.random.get_rng_state()
    fast = as_pointwise(conv)
    assert torch.equal(torch.random.get_rng_state(), state)  # a seeded model initialises as before
    assert isinstance(fast, PointwiseConv2d) and fast.weight is conv.weight and fast.bias is conv.bias
    assert fast.weight.device.type == "cpu" and set(fast.state_dict()) == set(conv.state_dict())
    x = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(fast(x), conv(x), rtol=1e-5, atol=1e-6)
    for other in (nn.Conv2d(6, 5, 1, stride=2), nn.Conv2d(6, 6, 1, groups=2), nn.Conv2d(6, 5, 3)):
        assert as_pointwise(other) is other  # only plain 1x1 convs change


@pytest.mark.parametrize("avg_down", [False, True])
def test_chunk_bottleneck_equals_timm_bottleneck(avg_down: bool) -> None:
    """Same state_dict (keys, shapes) as timm's Bottleneck; loading it gives the same output (float32)."""
    from timm.models.resnet import Bottleneck, downsample_avg

    torch.manual_seed(0)
    make_down = (lambda: downsample_avg(32, 64, 1)) if avg_down else (lambda: None)
    ref = Bottleneck(32 if avg_down else 64, 16, downsample=make_down()).eval()
    torch.manual_seed(0)
    ours = ChunkBottleneck(32 if avg_down else 64, 16, downsample=make_down()).eval()
    assert isinstance(ours.conv1, PointwiseConv2d) and isinstance(ours.conv3, PointwiseConv2d)
    if avg_down:
        assert isinstance(ours.downsample[1], PointwiseConv2d)
    ref_state = ref.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref_state.items()}
    with torch.no_grad():  # BN statistics off their defaults, so every term of the block matters
        for value in ref_state.values():
            if value.is_floating_point():
                value.add_(0.1 * torch.randn_like(value)).abs_()
    ours.load_state_dict(ref_state)
    x = torch.randn(2, ref.conv1.in_channels, 5, 6)  # weight-bound 1x1s (matmul) at this size
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_msf_bottleneck_convs_are_pointwise() -> None:
    from timm.models.resnet import downsample_avg

    block = MSFBottleneck(32, 16, stride=2, downsample=downsample_avg(32, 64, 1, stride=2))
    assert isinstance(block.conv1, PointwiseConv2d) and isinstance(block.conv3, PointwiseConv2d)
    assert isinstance(block.downsample[1], PointwiseConv2d)
    assert block.conv1.weight.shape == (24, 32, 1, 1) and block.conv3.weight.shape == (64, 60, 1, 1)


@pytest.mark.parametrize("name", ["msfca50", "msfca50_pa"])
def test_msfca_weight_bound_convs_leave_the_slow_kernel(name: str) -> None:
    """A training step (batch 2, one thread) sends no weight-bound conv to _slow_conv2d.

    The 1x1 convs whose input outweighs their weight may still take it: the matmul is no faster there
    (backbones.layers.pointwise). Before the bottleneck convs were converted, conv3 of stage 4 was there.
    """
    from torch.profiler import profile

    model = timm.create_model(name, num_classes=5, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))
    x = torch.randn(2, 3, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile(record_shapes=True) as prof:
            model(x).sum().backward()
    finally:
        torch.set_num_threads(threads)
    slow = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::_slow_conv2d_forward"]
    for event in slow:
        inp, weight = event.input_shapes[0], event.input_shapes[1]
        assert math.prod(weight) < math.prod(inp), (name, inp, weight)


# ---------------------------------------------------------------------------------------- whole models
@pytest.mark.parametrize(
    ("name", "kwargs", "size", "switched"),
    [
        ("fft_tiny", dict(embed_dim=32, mlp_dim=64, num_heads=2, head_dim=16, depth=1), 64, 2),
        ("acanet18", {}, 32, 8),
        ("msfca50", dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64)), 32, None),
    ],
)
def test_old_and_new_formulations_give_the_same_logits(name: str, kwargs: dict, size: int, switched) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs).double().eval()
    old = copy.deepcopy(model)
    count = use_old_formulations(old)
    assert count == switched if switched is not None else count > 0
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), old(x), rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------------------------------- FFT's layer
def test_fft_transformer_layer_is_eq_5_6_on_timm_block() -> None:
    """timm's Block with 64-wide heads computes Eq. 5-6 exactly as the former hand-written layer did."""
    from backbones.layers.fft_block import TransformerLayer

    torch.manual_seed(0)
    layer = TransformerLayer(24, num_heads=3, head_dim=8, mlp_dim=40).double().eval()
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    a = layer.attn
    q, k, v = a.qkv(layer.norm1(x)).reshape(2, 5, 3, 3, 8).permute(2, 0, 3, 1, 4)
    msa = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 24)
    y = x + a.proj(msa)  # Eq. 5
    expected = y + layer.mlp.fc2(F.gelu(layer.mlp.fc1(layer.norm2(y))))  # Eq. 6
    out, weights = layer(x, return_attn=True)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert weights is not None and weights.shape == (2, 3, 5, 5)
    assert layer.mlp.fc1.out_features == 40 and a.qkv.bias is None and a.proj.bias is not None
