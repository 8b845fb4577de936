"""CS-Net (backbones/csnet.py) and its cross-layer attention layers
(backbones/layers/cross_layer_attention.py).

Layer tests use small channel counts and compare the batched SDPA code with a literal transcription of the
docstring's equations; model tests check the timm contract of every registered CS-Net variant at 64x64.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import backbones  # noqa: F401  (registers the models)
from backbones.csnet import CSNet
from backbones.layers.cross_layer_attention import (
    CrossLayerChannelAttention,
    CrossLayerFusion,
    CrossLayerSelfAttention,
    CrossLayerSpatialAttention,
)
from lightning_modules.config_compose import compose, config_chain, experiment_rows

CSNET_MODELS = sorted(timm.list_models("csnet*"))
EXPECTED_MODELS = [
    "csnet101",
    "csnet101_baseline",
    "csnet101_both",
    "csnet101_channel",
    "csnet101_channel_fusion",
    "csnet101_fusion",
    "csnet101_low",
    "csnet101_spatial",
    "csnet101_spatial_fusion",
    "csnet50",
    "csnet50_baseline",
]


def _maps(
    b: int = 2, cl: int = 16, ch: int = 24, hl: int = 8, wl: int = 6
) -> tuple[torch.Tensor, torch.Tensor]:
    """A low map and a high map at half its resolution, post-ReLU like ResNet stage outputs."""
    torch.manual_seed(0)
    return torch.randn(b, cl, hl, wl).relu(), torch.randn(b, ch, hl // 2, wl // 2).relu()


def _randomise_gates(module: torch.nn.Module) -> None:
    """Make the zero-initialised gates (attention gammas, zero-init BN weights) non-zero."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma") or (p.ndim == 1 and name.endswith("weight")):
                p.copy_(torch.rand_like(p) + 0.5)


# ----------------------------------------------------------------------------- layers vs. the equations


@pytest.mark.parametrize("value", ["low", "high"])
def test_channel_attention_matches_equations_1_2(value: str) -> None:
    low, high = _maps()
    att = CrossLayerChannelAttention(16, 24, value=value, gamma_init=0.7).eval()
    b, c, hl, wl = low.shape
    n_h = high.shape[-2] * high.shape[-1]
    q = F.avg_pool2d(low, 2).flatten(2)  # P(L): 2x2 average onto the high grid
    k = att.key(high).flatten(2)
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(n_h), dim=-1)  # (B, C_l, C_l), Eq. (1)
    if value == "low":
        z = (a @ low.flatten(2)).view(b, c, hl, wl)  # Eq. (2)
    else:
        z = F.interpolate((a @ k).view(b, c, *high.shape[-2:]), scale_factor=2, mode="nearest")
    torch.testing.assert_close(att(low, high), low + 0.7 * z, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value,heads", [("low", 1), ("low", 2), ("high", 2)])
def test_spatial_attention_matches_equations_3_4(value: str, heads: int) -> None:
    low, high = _maps()
    att = CrossLayerSpatialAttention(16, 24, reduction=4, heads=heads, value=value, gamma_init=0.3).eval()
    b, c, hl, wl = low.shape
    q = att.query(low).flatten(2).transpose(1, 2)  # (B, N_l, d)
    k = att.key(high).flatten(2).transpose(1, 2)  # (B, N_h, d)
    v = (
        att.proj_value(F.avg_pool2d(low, 2) if value == "low" else high).flatten(2).transpose(1, 2)
    )  # (B, N_h, C)
    d, dh, ch = q.shape[-1], q.shape[-1] // heads, c // heads
    outs = []
    for h in range(heads):  # the literal multi-head definition; the module does this in one SDPA call
        a = torch.softmax(
            q[..., h * dh : (h + 1) * dh] @ k[..., h * dh : (h + 1) * dh].transpose(1, 2) / math.sqrt(dh), -1
        )
        outs.append(a @ v[..., h * ch : (h + 1) * ch])  # (B, N_l, C/h)
    z = torch.cat(outs, dim=-1).transpose(1, 2).reshape(b, c, hl, wl)
    assert d == 4
    torch.testing.assert_close(att(low, high), low + 0.3 * z, rtol=1e-5, atol=1e-5)


def test_attention_is_cross_layer() -> None:
    """The refined low map depends on the high map (and is the identity at the default zero gate)."""
    low, high = _maps()
    for att in (
        CrossLayerChannelAttention(16, 24, gamma_init=1.0),
        CrossLayerSpatialAttention(16, 24, 4, gamma_init=1.0),
    ):
        att.eval()
        assert not torch.allclose(att(low, high), att(low, high * 2 + 1))
    for att in (CrossLayerChannelAttention(16, 24), CrossLayerSpatialAttention(16, 24, 4)):
        torch.testing.assert_close(att(low, high), low)


@pytest.mark.parametrize("combine", ["sum", "serial", "concat"])
def test_combine_modes(combine: str) -> None:
    low, high = _maps()
    cs = CrossLayerSelfAttention(16, 24, combine=combine, fusion="concat", reduction=4, gamma_init=0.5).eval()
    refined = cs.refine(low, high)
    lc, ls = cs.channel(low, high), cs.spatial(low, high)
    if combine == "sum":
        torch.testing.assert_close(refined, lc + ls - low, rtol=1e-5, atol=1e-5)
    elif combine == "serial":
        torch.testing.assert_close(refined, cs.spatial(lc, high), rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(refined, cs.merge(torch.cat([lc, ls], 1)), rtol=1e-5, atol=1e-5)


def test_concat_fusion_pools_to_multilayer_descriptor() -> None:
    low, high = _maps()
    fused = CrossLayerFusion(16, 24, "concat")(low, high)
    assert fused.shape == (2, 40, 4, 3)
    torch.testing.assert_close(fused.mean((2, 3)), torch.cat([low.mean((2, 3)), high.mean((2, 3))], 1))


@pytest.mark.parametrize("mode,hidden", [("conv", 8), ("conv", None), ("sum", None)])
def test_learned_fusion_starts_as_identity_on_high_layer(mode: str, hidden: int | None) -> None:
    """Zero-initialised last BN: a pretrained trunk's stage-4 features pass unchanged at step 0."""
    low, high = _maps()
    fusion = CrossLayerFusion(16, 24, mode, hidden).train()
    torch.testing.assert_close(fusion(low, high), high)
    _randomise_gates(fusion)
    assert not torch.allclose(fusion(low, high), high)


def test_invalid_configurations_are_rejected() -> None:
    with pytest.raises(ValueError, match="fusion='none'"):
        CrossLayerSelfAttention(16, 24, fusion="none")
    with pytest.raises(ValueError, match="combine"):
        CrossLayerSelfAttention(16, 24, combine="product")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heads"):
        CrossLayerSpatialAttention(16, 24, reduction=4, heads=3)
    with pytest.raises(ValueError, match="low_stage"):
        CSNet(trunk="resnet18", low_stage=4)


@pytest.mark.parametrize("combine", ["sum", "serial", "concat"])
@pytest.mark.parametrize("fusion", ["conv", "sum"])
def test_cs_module_gradients_reach_every_parameter(combine: str, fusion: str) -> None:
    low, high = _maps()
    cs = CrossLayerSelfAttention(16, 24, combine=combine, fusion=fusion, fusion_dim=8, reduction=4, heads=2)
    _randomise_gates(cs)
    cs(low, high).square().mean().backward()
    for name, p in cs.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cs_module_at_448_feature_sizes_and_bf16() -> None:
    """Stage-3/4 grids of a 448 input (28x28, 14x14) and of a 64 input (4x4, 2x2), fp32 and bf16 autocast."""
    cs = CrossLayerSelfAttention(64, 128, fusion_dim=16, gamma_init=0.5)
    for hl in (28, 4):
        low, high = torch.randn(1, 64, hl, hl).relu(), torch.randn(1, 128, hl // 2, hl // 2).relu()
        assert cs(low, high).shape == (1, 128, hl // 2, hl // 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cs(low, high)
        assert out.shape == (1, 128, hl // 2, hl // 2) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- registered models


def test_registry_has_every_variant() -> None:
    assert CSNET_MODELS == EXPECTED_MODELS


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_model_contract(name: str) -> None:
    """timm contract at 64x64: shapes, no NaN, gradients, pre-logits, head reset, bf16 autocast."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2)
    logits = model.forward_head(feats)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    logits.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, model.num_features) and torch.isfinite(out.float()).all()


def _cs_param_count(
    cl: int, ch: int, channel: bool, spatial: bool, fusion: str, hidden: int = 512, r: int = 8
) -> int:
    """Parameters of the CS module, counted from Eqs. (1)-(6) by hand."""
    d = cl // r
    n = 0
    if channel:  # W_k (C_h -> C_l, no bias) + BN, gamma
        n += ch * cl + 2 * cl + 1
    if spatial:  # W_q, W_k (with bias) to d, W_v C_l -> C_l (with bias), gamma
        n += (cl + 1) * d + (ch + 1) * d + (cl + 1) * cl + 1
    if fusion == "conv":  # W_1 (C_l + C_h -> hidden) + BN, W_2 (hidden -> C_h) + BN
        n += (cl + ch) * hidden + 2 * hidden + hidden * ch + 2 * ch
    return n


@pytest.mark.parametrize(
    "channel,spatial,fusion",
    [(True, True, "conv"), (True, False, "concat"), (False, True, "concat"), (False, False, "sum")],
)
def test_cs_module_parameter_count(channel: bool, spatial: bool, fusion: str) -> None:
    cs = CrossLayerSelfAttention(1024, 2048, channel_attn=channel, spatial_attn=spatial, fusion=fusion)
    expected = _cs_param_count(1024, 2048, channel, spatial, fusion)
    if fusion == "sum":  # W (C_l -> C_h) + BN
        expected += 1024 * 2048 + 2 * 2048
    assert sum(p.numel() for p in cs.parameters()) == expected


@pytest.mark.parametrize("name,trunk", [("csnet101", "resnet101"), ("csnet50", "resnet50")])
def test_parameter_count(name: str, trunk: str) -> None:
    """The abstract gives no parameter count: check trunk + hand-counted CS module + classifier."""
    model = timm.create_model(name, num_classes=200)
    resnet = timm.create_model(trunk, num_classes=0)
    expected = sum(p.numel() for p in resnet.parameters()) + _cs_param_count(1024, 2048, True, True, "conv")
    expected += (model.num_features + 1) * 200
    assert sum(p.numel() for p in model.parameters()) == expected
    assert (
        sum(p.numel() for p in resnet.parameters())
        == {"resnet101": 42_500_160, "resnet50": 23_508_032}[trunk]
    )


def test_full_model_reproduces_resnet_features_at_init() -> None:
    """Zero gates + zero-init fusion: before training CS-Net's feature map equals the trunk's stage 4."""
    torch.manual_seed(0)
    model = timm.create_model("csnet50", num_classes=5).eval()
    resnet = timm.create_model("resnet50", num_classes=0, global_pool="").eval()
    resnet.load_state_dict(model.trunk.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), resnet.forward_features(x))


def test_low_stage_option_and_small_trunk_at_448() -> None:
    """Other low stages (ratio 4 and 8 to stage 4) and a 448x448 input, on a ResNet-18 trunk (cheap)."""
    for stage, channels in ((1, 64), (2, 128)):
        model = CSNet(trunk="resnet18", num_classes=4, low_stage=stage, fusion="concat", heads=2)
        assert model.num_features == channels + 512
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    model = CSNet(trunk="resnet18", num_classes=4, gamma_init=0.1).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 448, 448)).shape == (1, 512, 14, 14)


def test_grad_checkpointing_and_pooling_options() -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "csnet101", trunk="resnet18", num_classes=3, gamma_init=0.5
    ).train()  # trunk override
    assert model.num_features == 512 and model.trunk.feature_info[-1]["num_chs"] == 512
    x = torch.randn(2, 3, 64, 64)
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.reset_classifier(5, global_pool="catavgmax")
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.head_hidden_size == 2 * model.num_features and model(x).shape == (2, 5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["csnet101", "csnet101_both"])
def test_csnet101_at_448_fp32_and_bf16(name: str) -> None:
    model = timm.create_model(name, num_classes=200)
    x = torch.randn(1, 3, 448, 448)
    out = model(x)
    out.sum().backward()
    assert out.shape == (1, 200) and torch.isfinite(out).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.forward_features(x).shape == (1, model.num_features, 14, 14)


def test_zero_gates_open_during_training() -> None:
    """Step 1 moves only the fusion's zero-init BN; then the attention gates; from step 3 the attention
    weights (as the layer docstring says). Plain SGD without weight decay, so only gradients move weights."""
    torch.manual_seed(0)
    model = CSNet(trunk="resnet18", num_classes=3, fusion_dim=16).train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    watched = {
        "fusion_bn0": model.cs.fusion.transform[2][1].weight,
        "gamma_c": model.cs.channel.gamma,
        "gamma_s": model.cs.spatial.gamma,
        "channel_key": model.cs.channel.key[0].weight,
        "spatial_query": model.cs.spatial.query.weight,
    }
    moved_at: dict[str, int] = {}
    for step in (1, 2, 3):
        before = {k: p.detach().clone() for k, p in watched.items()}
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        moved_at.update(
            {k: step for k, p in watched.items() if k not in moved_at and not torch.equal(p, before[k])}
        )
    assert moved_at == {"fusion_bn0": 1, "gamma_c": 2, "gamma_s": 2, "channel_key": 3, "spatial_query": 3}


def test_channels_last_input_matches() -> None:
    torch.manual_seed(0)
    model = CSNet(trunk="resnet18", num_classes=3, gamma_init=0.5, heads=2).eval()
    _randomise_gates(model.cs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_full_model_overfits_a_tiny_batch() -> None:
    """The whole path (trunk, both attentions, fusion, head) trains: loss on 4 images falls well below
    chance."""
    torch.manual_seed(0)
    model = timm.create_model("csnet101", trunk="resnet18", num_classes=4, fusion_dim=32).train()
    x, y = torch.randn(4, 3, 64, 64), torch.arange(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * math.log(4), losses
    assert model.cs.channel.gamma.abs().item() > 0 and model.cs.spatial.gamma.abs().item() > 0


EXPERIMENTS = sorted(
    p
    for p in experiment_rows(Path(__file__).resolve().parents[1] / "experiments").values()
    if p.parent.name == "csnet"
)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_files(path: Path) -> None:
    """Each YAML names a registered variant, its 10x group is exactly the new layers, schedule = epochs."""
    text = "\n".join(p.read_text() for p in config_chain(path))  # the row with its recipe and dataset files
    cfg = compose(path)
    args = cfg["model"]["init_args"]
    assert "ours" in text.lower() and args["pretrained"] is None and "pretrained" in text
    with torch.device("meta"):
        model = timm.create_model(args["backbone"], num_classes=200, **args.get("backbone_kwargs", {}))
    (group,) = args["param_groups"]
    fast = {n for n, _ in model.named_parameters() if re.match(group["pattern"], f"backbone.{n}")}
    assert fast == {n for n, _ in model.named_parameters() if not n.startswith("trunk.")}
    assert group["lr_mult"] == 10.0 and args["optimizer"]["init_args"]["lr"] == 1e-3
    assert args["lr_scheduler"]["init_args"]["T_max"] == cfg["trainer"]["max_epochs"]
    data = cfg["data"]["init_args"]
    assert (data["image_size"], data["resize_size"], data["train_crop"]) == (448, 512, "random")
    dataset = path.stem.split("_")[-1]
    assert (
        cfg["data"]["class_path"]
        == {
            "cub": "datamodules.CUB200DataModule",
            "cars": "datamodules.StanfordCarsDataModule",
            "aircraft": "datamodules.FGVCAircraftDataModule",
        }[dataset]
    )
    assert path.stem == f"{args['backbone']}_{dataset}"  # <model>_<dataset>


def test_every_ablation_row_has_a_file_per_dataset() -> None:
    names = {p.stem for p in EXPERIMENTS}
    for dataset in ("cub", "cars", "aircraft"):
        for row in ("", "_baseline", "_low", "_channel", "_spatial", "_both"):
            assert f"csnet101{row}_{dataset}" in names


@pytest.mark.parametrize(
    "name,channel,spatial",
    [
        ("csnet101_fusion", False, False),
        ("csnet101_channel_fusion", True, False),
        ("csnet101_spatial_fusion", False, True),
    ],
)
def test_fusion_control_variants(name: str, channel: bool, spatial: bool) -> None:
    """The fusion controls: the full model's learned conv fusion with the named attentions only."""
    model = timm.create_model(name, num_classes=5, trunk="resnet18", fusion_dim=8)
    full = timm.create_model("csnet101", num_classes=5, trunk="resnet18", fusion_dim=8)
    assert (model.cs.channel is not None, model.cs.spatial is not None) == (channel, spatial)
    assert model.cs.fusion.mode == full.cs.fusion.mode == "conv"
    assert [p.shape for p in model.cs.fusion.parameters()] == [p.shape for p in full.cs.fusion.parameters()]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
