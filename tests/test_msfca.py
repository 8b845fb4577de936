"""Tests of the MSF-CA model (ceramic microscopy paper): layers, blocks, registered variants, paper figures.

Fast by default: layer tests on small tensors, parameter counts on the meta device, the model contract on
reduced-width models, one full-size forward/backward at 64x64. The full MAC table at 224x224 and the full-size
contract of every registered variant are ``slow``.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.coord_attn import CoordAttn
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import backbones  # noqa: F401  (registers the models)
from backbones.layers.chunking_attention import (
    PCA,
    ChannelChunkingAttention,
    SpatialChunkingAttention,
    ceil_sqrt,
    create_chunking_attention,
)
from backbones.layers.cross_scale_attention import CrossScaleCoordAttention
from backbones.msfca import VERSION_STAGES, MSFBottleneck, MSFCAResNet
from backbones.pretrained import load_pretrained
from tests.contract_checks import assert_gradients, assert_output_ignores

VARIANTS = [
    "msfca50",
    "msfca50_baseline",
    "msfca50_msf",
    "msfca50_pa",
    "msfca50_ca",
    "msfca50_pca_serial",
    "msfca50_pca_parallel",
    "msfca50_msf_pa",
    "msfca50_msf_ca",
    "msfca50_msf_pca_serial",
    "msfca50_msf_pca_parallel",
]
TINY = dict(channels=(8, 16, 32, 64), layers=(1, 1, 1, 1))

# (model, kwargs) -> (paper params in M, paper FLOPs (= MACs) in G, tolerance on params in M).
# Tables I, II, IV, VI; 24 classes, 224x224. "36.1" is given with one decimal only.
PAPER_FIGURES = {
    ("msfca50_baseline", ()): (23.557, 4.109, 6e-4),
    ("msfca50_msf", ()): (36.1, 6.535, 0.05),
    ("msfca50_pa", ()): (37.143, 6.06, 6e-4),
    ("msfca50_ca", ()): (49.966, 6.677, 6e-4),
    ("msfca50_pca_serial", ()): (63.551, 8.627, 6e-4),
    ("msfca50_pca_parallel", ()): (63.551, 8.627, 6e-4),
    ("msfca50_msf_pa", ()): (49.685, 8.485, 6e-4),
    ("msfca50_msf_ca", ()): (62.508, 9.102, 6e-4),
    ("msfca50_msf_pca_serial", ()): (76.094, 11.052, 6e-4),
    ("msfca50_msf_pca_parallel", ()): (76.094, 11.052, 6e-4),
    ("msfca50", ()): (76.094, 11.052, 6e-4),
    ("msfca50_pca_serial", (("version", "A"),)): (86.125, 16.066, 6e-4),
    ("msfca50_pca_serial", (("version", "C"),)): (85.521, 13.925, 6e-4),
    ("msfca50_pca_serial", (("version", "D"),)): (62.947, 6.485, 6e-4),
    ("msfca50_msf_pca_serial", (("version", "A"),)): (98.668, 18.492, 6e-4),
    ("msfca50_msf_pca_serial", (("version", "C"),)): (98.063, 16.35, 6e-4),
    ("msfca50_msf_pca_serial", (("version", "D"),)): (75.489, 8.91, 6e-4),
    ("msfca50_msf_pca_parallel", (("version", "A"),)): (98.668, 18.492, 6e-4),
    ("msfca50_msf_pca_parallel", (("version", "C"),)): (98.063, 16.35, 6e-4),
    ("msfca50_msf_pca_parallel", (("version", "D"),)): (75.489, 8.91, 6e-4),
}


def _id(key: tuple[str, tuple]) -> str:
    name, kw = key
    return name + "".join(f"-{v}" for _, v in kw)


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, num_classes=24, **kwargs)


def _macs_224(model: torch.nn.Module) -> float:
    with torch.device("meta"):
        x = torch.empty(1, 3, 224, 224)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2 / 1e9


# ----------------------------------------------------------------------------- cross-scale attention


def test_cross_scale_attention_on_one_map_is_coordinate_attention() -> None:
    """Algorithm 1 with X_x = X_y reduces to Coordinate Attention (h-swish = R(S) * S, Eq. 2-4)."""
    torch.manual_seed(0)
    csa = CrossScaleCoordAttention(24, reduction=32).eval()
    ref = CoordAttn(24, rd_channels=8, bias=True).eval()
    ref.load_state_dict(csa.state_dict())
    with torch.no_grad():
        for bn in (csa.bn1, ref.bn1):
            bn.running_mean.fill_(0.3)
            bn.running_var.fill_(2.0)
    x = torch.randn(2, 24, 6, 5)
    torch.testing.assert_close(csa(x, x), ref(x))


def test_cross_scale_attention_mixes_both_scales() -> None:
    torch.manual_seed(0)
    csa = CrossScaleCoordAttention(16).eval()
    a, b, c = torch.randn(3, 2, 16, 5, 5).unbind(0)
    out = csa(a, b)
    assert out.shape == a.shape
    assert not torch.allclose(out, csa(a, c))  # the Y-profile comes from the second map
    # The output re-weights the first map: a zero first map gives a zero output.
    assert torch.count_nonzero(csa(torch.zeros_like(a), b)) == 0
    with pytest.raises(ValueError, match="same shape"):
        csa(a, torch.randn(2, 16, 4, 5))
    assert csa.conv1.out_channels == 8  # max(8, 16 // 32)
    assert CrossScaleCoordAttention(512).conv1.out_channels == 16  # 512 // 32


# ----------------------------------------------------------------------------- chunking attention


def _pa_reference(pa: SpatialChunkingAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 9-12 with explicit loops over patches (the batched module must agree)."""
    b, c, h, w = x.shape
    kh, kw = ceil_sqrt(h), ceil_sqrt(w)
    ph, pw = kh * kh - h, kw * kw - w
    xp = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")
    q, k, v = pa.query(xp), pa.key(xp), pa.value(xp)
    keys = torch.stack(
        [
            k[:, :, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].mean((2, 3))
            for i in range(kh)
            for j in range(kw)
        ],
        dim=1,
    )  # (B, P, C/r), Eq. 10
    y = torch.zeros_like(v)
    for i in range(kh):
        for j in range(kw):
            rows, cols = slice(i * kh, (i + 1) * kh), slice(j * kw, (j + 1) * kw)
            qp = q[:, :, rows, cols].flatten(2).transpose(1, 2)  # (B, N, C/r)
            vp = v[:, :, rows, cols].flatten(2).transpose(1, 2)  # (B, N, C)
            att = torch.softmax(qp @ keys.transpose(1, 2) / math.sqrt(q.shape[1]), dim=-1)  # Eq. 11
            y[:, :, rows, cols] = (att @ vp).transpose(1, 2).reshape(b, c, kh, kw)
    y = y[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
    m = 0.5 * pa.gamma / (1 + pa.gamma.abs()) + 0.5
    return m * y + (1 - m) * x


def _ca_reference(ca: ChannelChunkingAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 13-16 with explicit loops over channel chunks."""
    b, c, h, w = x.shape
    n = ca.chunks
    t = ca.proj(x).flatten(2)  # (B, SC, HW), shared Q = K = V
    keys = torch.stack([t[:, i * n : (i + 1) * n].mean(1) for i in range(n)], dim=1)  # Eq. 14
    chunks = []
    for i in range(n):
        qi = t[:, i * n : (i + 1) * n]  # (B, n, HW)
        att = torch.softmax(qi @ keys.transpose(1, 2) / math.sqrt(h * w), dim=-1)  # Eq. 15
        chunks.append(att @ qi)
    y = ca.out(torch.cat(chunks, 1).reshape(b, n * n, h, w))  # Eq. 16
    m = 0.5 * ca.gamma / (1 + ca.gamma.abs()) + 0.5
    return m * y + (1 - m) * x


@pytest.mark.parametrize("hw", [(4, 4), (9, 9), (7, 5), (2, 2), (3, 10)])
def test_spatial_chunking_attention_matches_loop_reference(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    pa = SpatialChunkingAttention(64, reduction=32)
    with torch.no_grad():
        pa.gamma.fill_(0.7)
    x = torch.randn(2, 64, *hw)
    out = pa(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _pa_reference(pa, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels", [16, 20, 50])
def test_channel_chunking_attention_matches_loop_reference(channels: int) -> None:
    torch.manual_seed(0)
    ca = ChannelChunkingAttention(channels)
    with torch.no_grad():
        ca.gamma.fill_(-1.5)
    x = torch.randn(2, channels, 5, 6)
    out = ca(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _ca_reference(ca, x), atol=1e-5, rtol=1e-5)


def test_chunking_attention_sizes_and_momentum() -> None:
    assert [ceil_sqrt(c) ** 2 for c in (256, 512, 1024, 2048)] == [256, 529, 1024, 2116]  # SC
    ca = ChannelChunkingAttention(2048)
    assert (ca.proj.out_channels, ca.out.in_channels, ca.chunks) == (2116, 2116, 46)
    assert sum(p.numel() for p in ChannelChunkingAttention(256).parameters()) == 2 * 256 * 256 + 256 + 256 + 1
    sep = ChannelChunkingAttention(20, qkv="separate")
    assert sep(torch.randn(1, 20, 3, 3)).shape == (1, 20, 3, 3)
    pa = SpatialChunkingAttention(256)
    assert (pa.query.out_channels, pa.key.out_channels, pa.value.out_channels) == (8, 8, 256)
    # Eq. 12: momentum 0.5 at init, bounded to (0, 1) for any gamma.
    x = torch.randn(1, 256, 4, 4)
    with torch.no_grad():
        pa.value.weight.zero_()
        pa.value.bias.zero_()  # Y = 0, so Z = (1 - m) X
        torch.testing.assert_close(pa(x), 0.5 * x)
        pa.gamma.fill_(1e6)
        assert pa(x).abs().max() < 1e-5 * x.abs().max()
    with pytest.raises(ValueError, match="unknown chunking attention"):
        create_chunking_attention("pa2", 32)  # type: ignore[arg-type]


def test_pca_serial_and_parallel() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    serial, parallel = PCA(32, "serial"), PCA(32, "parallel")
    parallel.load_state_dict(serial.state_dict())
    torch.testing.assert_close(serial(x), serial.ca(serial.pa(x)))
    torch.testing.assert_close(parallel(x), serial.pa(x) + serial.ca(x))
    with pytest.raises(ValueError, match="serial"):
        PCA(32, "both")  # type: ignore[arg-type]


def test_spatial_chunking_attention_cost_is_sqrt_hw_cubed() -> None:
    """The attention costs K_h K_w (sqrt(HW))^2 (C/r + C) MACs (Sec. III-B-4), not (HW)^2."""
    pa = SpatialChunkingAttention(64, reduction=32)
    x = torch.randn(1, 64, 16, 16)  # already square: 4x4 patches of 4x4
    with FlopCounterMode(display=False) as counter:
        pa(x)
    conv = 2 * 256 * (2 * 64 * 2 + 64 * 64)  # Q, K: 64 -> 2; V: 64 -> 64; at 256 positions
    attention = counter.get_total_flops() - conv
    assert attention == 2 * 16**3 * (2 + 64)


# ----------------------------------------------------------------------------- MSF bottleneck


def test_msf_bottleneck_structure_and_shapes() -> None:
    torch.manual_seed(0)
    down = torch.nn.Sequential(torch.nn.Conv2d(64, 256, 1, stride=2, bias=False), torch.nn.BatchNorm2d(256))
    first = MSFBottleneck(64, 64, stride=2, downsample=down)
    assert first.width == 26 and first.conv1.out_channels == 104
    assert first.conv3.in_channels == 10 * 26  # 3s - 2 maps (Alg. 2, Fig. 3)
    assert len(first.convs) == 3 and len(first.csa) == 3
    assert first(torch.randn(2, 64, 8, 8)).shape == (2, 256, 4, 4)
    inner = MSFBottleneck(256, 64, share_pair_attention=False)
    assert len(inner.csa) == 6 and not inner.is_first
    assert inner(torch.randn(2, 256, 5, 7)).shape == (2, 256, 5, 7)
    with pytest.raises(ValueError, match="scale"):
        MSFBottleneck(64, 64, scale=1)


def _grad_of_y2_wrt_splits(block: MSFBottleneck, x: torch.Tensor) -> torch.Tensor:
    feats: dict[str, torch.Tensor] = {}
    hooks = [
        block.conv1.register_forward_hook(lambda m, i, o: feats.__setitem__("c1", o)),
        block.convs[1].register_forward_hook(lambda m, i, o: feats.__setitem__("y2", o)),
    ]
    block(x)
    for h in hooks:
        h.remove()
    (grad,) = torch.autograd.grad(feats["y2"].sum(), feats["c1"])
    return grad


def test_msf_bottleneck_chains_scales() -> None:
    """Eq. 5: in an inner block y_2 = K(y_1 + x_2) depends on split x_1; in a stage-first block it
    does not."""
    torch.manual_seed(0)
    inner = MSFBottleneck(256, 64).eval()
    w = inner.width
    grad = _grad_of_y2_wrt_splits(inner, torch.randn(1, 256, 6, 6))
    assert grad[:, :w].abs().sum() > 0 and grad[:, 2 * w :].abs().sum() == 0
    down = torch.nn.Sequential(torch.nn.Conv2d(64, 256, 1, bias=False), torch.nn.BatchNorm2d(256))
    first = MSFBottleneck(64, 64, downsample=down).eval()
    grad = _grad_of_y2_wrt_splits(first, torch.randn(1, 64, 6, 6))
    assert grad[:, :w].abs().sum() == 0 and grad[:, w : 2 * w].abs().sum() > 0


# ----------------------------------------------------------------------------- model: figures


@pytest.mark.parametrize("key", list(PAPER_FIGURES), ids=_id)
def test_parameter_count_matches_paper(key: tuple[str, tuple]) -> None:
    name, kw = key
    paper_params, _, tol = PAPER_FIGURES[key]
    model = _meta_model(name, **dict(kw))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - paper_params) <= tol, f"{name} {kw}: {params:.4f} M vs paper {paper_params} M"
    assert abs(params - paper_params) / paper_params < 0.01


def test_baseline_is_resnet50_and_macs_match() -> None:
    ours, ref = _meta_model("msfca50_baseline"), _meta_model("resnet50")
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in ref.state_dict().items()
    ]
    assert abs(_macs_224(ours) - 4.109) / 4.109 < 0.05


def test_macs_of_the_paper_model() -> None:
    paper = PAPER_FIGURES[("msfca50", ())][1]
    assert abs(_macs_224(_meta_model("msfca50")) - paper) / paper < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("key", list(PAPER_FIGURES), ids=_id)
def test_macs_match_paper(key: tuple[str, tuple]) -> None:
    name, kw = key
    paper_macs = PAPER_FIGURES[key][1]
    macs = _macs_224(_meta_model(name, **dict(kw)))
    assert abs(macs - paper_macs) / paper_macs < 0.05, f"{name} {kw}: {macs:.3f} G vs paper {paper_macs} G"


@pytest.mark.parametrize("version", list(VERSION_STAGES))
def test_versions_embed_attention_in_table_vii_stages(version: str) -> None:
    model = timm.create_model("msfca50_pca_serial", version=version, **TINY)
    for stage in range(1, 5):
        has = [blk.chunk_attn is not None for blk in getattr(model, f"layer{stage}")]
        assert all(has) if stage in VERSION_STAGES[version] else not any(has)
    custom = timm.create_model("msfca50_pa", attn_stages=(2,), **TINY)
    assert custom.layer2[0].chunk_attn is not None and custom.layer1[0].chunk_attn is None
    assert all(
        blk.chunk_attn is None
        for stage in range(1, 5)
        for blk in getattr(timm.create_model("msfca50_msf", **TINY), f"layer{stage}")
    )


# ----------------------------------------------------------------------------- model: contract


def _zero_by_construction(model: nn.Module) -> set[str]:
    """PA key biases: one bias vector added to every key token shifts all logits of a query equally, which
    the softmax over keys cancels (docstring of backbones/layers/chunking_attention.py)."""
    return {n for n, _ in model.named_parameters() if n.endswith(".pa.key.bias")}


# default suite: the full model, the baseline and both combined orders (every module: MSF, PA, CA, serial
# and parallel); the single-module variants, whose modules those combine, run under -m slow
DEFAULT_CONTRACT = {"msfca50", "msfca50_baseline", "msfca50_msf_pca_serial", "msfca50_msf_pca_parallel"}


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT_CONTRACT else pytest.param(n, marks=pytest.mark.slow) for n in VARIANTS]
)
def test_contract_reduced_width(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, **TINY)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert_gradients(model, _zero_by_construction(model))
    assert_output_ignores(model, _zero_by_construction(model), x)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3 and model.get_classifier().out_features == 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(x).float()).all()


def test_full_size_model_at_smoke_size() -> None:
    torch.manual_seed(0)
    model = timm.create_model("msfca50", num_classes=24)
    assert isinstance(model, MSFCAResNet) and model.num_features == 2048
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 24) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_contract_full_size(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=24)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 24) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert_gradients(model, _zero_by_construction(model))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 24) and torch.isfinite(out.float()).all()


def test_bad_arguments_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="version"):
        MSFCAResNet(version="E", **TINY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attention"):
        MSFCAResNet(attention="se", **TINY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bottleneck"):
        MSFCAResNet(bottleneck="res2net", **TINY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no hub weights"):
        timm.create_model("msfca50", pretrained=True)


# ----------------------------------------------------------------------------- pretrained trunks


def test_resnet50_state_dict_loads_into_standard_variant(tmp_path) -> None:
    torch.manual_seed(0)
    ref = timm.create_model("resnet50")
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    model = timm.create_model("msfca50_pca_serial", num_classes=24)
    report = load_pretrained(model, path)
    own = model.state_dict()
    expected = [k for k in ref.state_dict() if not k.startswith("fc.")]
    assert sorted(report.loaded) == sorted(expected)
    for key in expected:
        assert torch.equal(own[key], ref.state_dict()[key]), key
    assert {k.split(" ")[0] for k in report.shape_mismatch} == {"fc.weight", "fc.bias"}
    assert report.missing and all(".chunk_attn." in k or k.startswith("fc.") for k in report.missing)


def test_res2net_and_resnet_state_dicts_load_into_msf_variant(tmp_path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("msfca50_msf", num_classes=24)
    ref = timm.create_model("res2net50d")
    path = tmp_path / "res2net50d.pth"
    torch.save(ref.state_dict(), path)
    report = load_pretrained(model, path)
    own = model.state_dict()
    assert report.loaded and not report.unexpected
    for key in report.loaded:
        assert torch.equal(own[key], ref.state_dict()[key]), key
    mismatched = {k.split(" ")[0].rsplit(".", 1)[0] for k in report.shape_mismatch}
    assert {m.split(".")[-1] for m in mismatched} == {"conv3", "fc"}  # conv3 takes 10w, not 4w, channels
    assert all(".csa." in k or ".conv3." in k or k.startswith("fc.") for k in report.missing)

    # A plain ResNet-50 file: the shortcut convs/BNs are renamed into the avg-pool shortcut layout.
    plain = timm.create_model("resnet50").state_dict()
    mapped = model.pretrained_key_map(plain)
    assert torch.equal(mapped["layer2.0.downsample.1.weight"], plain["layer2.0.downsample.0.weight"])
    assert torch.equal(
        mapped["layer2.0.downsample.2.running_var"], plain["layer2.0.downsample.1.running_var"]
    )
