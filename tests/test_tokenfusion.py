"""Tests of the TokenFusion family (backbones/tokenfusion.py, backbones/layers/token_fusion_blocks.py).

Full-size models (about 130-140 M parameters) are counted on the meta device; behaviour is checked on
narrow configurations (same code paths, small widths) so the default suite stays fast on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

import backbones  # noqa: F401  (registers the models)
from backbones.layers.token_fusion_blocks import (
    BridgeBlock,
    FeatureMapTokens,
    LateFusion,
    MixingFusion,
    PoolingHead,
)
from backbones.pretrained import load_pretrained
from backbones.tokenfusion import _VARIANTS, TokenFusion
from tests.contract_checks import assert_gradients, assert_output_ignores

VARIANTS = sorted(_VARIANTS)
HEADS = ("token", "channel", "mixing")
# Same structure, narrow widths: ResNet with one bottleneck per stage, D = 32.
TINY = dict(embed_dim=32, num_heads=2, resnet_layers=(1, 1, 1, 1), resnet_channels=(8, 8, 16, 16))


def _meta_params(name: str, **kwargs) -> int:
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def test_all_variants_registered() -> None:
    names = set(timm.list_models("tokenfusion_*"))
    assert {"tokenfusion_late", "tokenfusion_early", "tokenfusion_layer"} <= names
    assert set(VARIANTS) <= names


def test_layer_channel_params_match_paper() -> None:
    """Paper (Table 2/3): layer-by-layer + channel-wise head = 140 M parameters; ours 138.0 M (-1.4 %)."""
    n = _meta_params("tokenfusion_layer", head="channel")
    assert abs(n - 140e6) / 140e6 < 0.10, n
    assert 137e6 < n < 139e6, n  # pins the documented figure (docs/tokenfusion.md)


@pytest.mark.parametrize("name", ["tokenfusion_late", "tokenfusion_early", "tokenfusion_layer"])
def test_basic_models_similar_size_and_twelve_blocks(name: str) -> None:
    """'All three models were configured to have a similar size ... 12 transformer blocks.'"""
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(isinstance(m, Block) for m in model.modules()) == 12
    n = sum(p.numel() for p in model.parameters())
    assert 125e6 < n < 145e6, n
    trunk = sum(p.numel() for p in model.trunk.parameters())
    assert abs(trunk - 42.5e6) < 0.1e6  # ResNet-101 without fc


def _zero_by_construction(model: TokenFusion, head: str) -> set[str]:
    """Biases with a gradient that is zero by construction (see PoolingHead's docstring).

    With the token-wise head, the MLP output bias of a stream's last transformer block adds one
    per-channel constant to every final token; it shifts every token's channel mean by the same amount,
    which the head's LayerNorm over tokens removes. Nearest copying and concatenation/addition keep such a
    shift the same for every token; an UpConv (a transposed conv) does not. Those biases are kept: they are
    timm ViT ``Block`` parameters, and the other heads use them.
    """
    if head != "token":
        return set()

    def last(attr: str) -> set[str]:
        blocks = getattr(model, attr)
        return {f"{attr}.{len(blocks) - 1}.mlp.fc2.bias"} if len(blocks) else set()

    if model.method == "early":
        return last("blocks")
    if model.method == "layer":
        return last("final_blocks")
    fine, coarse = (
        ("vit_blocks", "cnn_blocks") if model.late_coarse == "cnn" else ("cnn_blocks", "vit_blocks")
    )
    return last(fine) | (last(coarse) if model.late_fusion.up is None else set())


# Default suite: every variant with the token-wise head (the one with zero-by-construction biases) and with
# one of the other two heads in rotation; the remaining (variant, head) pairs run under -m slow.
_PAIRS = [
    pytest.param(
        name,
        head,
        marks=() if head in ("token", ("channel", "mixing")[i % 2]) else pytest.mark.slow,
        id=f"{head}-{name}",
    )
    for i, name in enumerate(VARIANTS)
    for head in HEADS
]


@pytest.mark.parametrize(("name", "head"), _PAIRS)
def test_contract_tiny(name: str, head: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, head=head, num_classes=7, **TINY)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.ndim == 3 and feats.shape[0] == 2
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    logits = model.forward_head(feats)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    # timm zero-initialises each bottleneck's last BN (zero_init_last), so inside the ResNet the
    # residual-branch convs start with zero gradients; every new TokenFusion part must get a signal,
    # except the biases whose gradient is zero by construction.
    zero_by_construction = _zero_by_construction(model, head)
    assert_gradients(model, zero_by_construction, skip_prefix="trunk.")
    assert_output_ignores(model, zero_by_construction, x)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("method", ["late", "early", "layer"])
def test_runs_at_224_and_other_sizes(method: str) -> None:
    model = TokenFusion(method=method, head="mixing", num_classes=4, **TINY).eval()
    with torch.no_grad():
        for size in (224, 96, (64, 128)):
            x = torch.randn(1, 3, *((size, size) if isinstance(size, int) else size))
            assert model(x).shape == (1, 4)
    tokens = model.forward_features(torch.randn(1, 3, 224, 224))
    expected = {"late": 14 * 14, "early": 14 * 14, "layer": 14 * 14}[method]
    assert tokens.shape[1] == expected


def test_bad_input_size_is_a_clear_error() -> None:
    model = TokenFusion(method="layer", **TINY)
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 3, 80, 80))


@pytest.mark.parametrize("method", ["late", "early", "layer"])
def test_bf16_autocast(method: str) -> None:
    model = TokenFusion(method=method, head="mixing", num_classes=5, **TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().sum().backward()


def test_full_layer_model_at_64_bf16() -> None:
    """The real 138 M model (ResNet-101 + ViT-B widths) runs at the smoke size in bf16 autocast."""
    torch.manual_seed(0)
    model = timm.create_model("tokenfusion_layer", num_classes=10).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.forward_features(torch.randn(1, 3, 64, 64))
        out = model.forward_head(feats)
    assert feats.shape == (1, 16, 768)  # 64 / 16 = 4 x 4 patch tokens
    assert out.shape == (1, 10) and torch.isfinite(out.float()).all()


def test_stage_maps_and_alignment() -> None:
    """ResNet stages at 64 are 32/16/8/4/2; each is coupled to the 4 x 4 patch grid."""
    model = TokenFusion(method="layer", **TINY)
    maps = model.stage_maps(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]
    assert [m.shape[1] for m in maps] == list(model.stage_channels)
    for fmap, coupler in zip(maps, model.stage_tokens):
        assert coupler(fmap, (4, 4)).shape == (1, 16, 32)
    with torch.device("meta"):
        full = TokenFusion(method="layer", embed_dim=32, num_heads=2)
    assert full.stage_channels == (64, 256, 512, 1024, 2048)


def test_feature_map_tokens_pool_and_copy() -> None:
    coupler = FeatureMapTokens(4, 4)
    nn_proj = coupler.proj
    fine = torch.randn(1, 4, 8, 8)
    expected = F.avg_pool2d(nn_proj(fine), 2).flatten(2).transpose(1, 2)
    assert torch.allclose(coupler(fine, (4, 4)), coupler.act(coupler.norm(expected)), atol=1e-6)
    coarse = torch.randn(1, 4, 2, 2)
    out = coupler(coarse, (4, 4)).reshape(1, 4, 4, 4)
    assert torch.equal(out[:, 0, 0], out[:, 1, 1])  # a 2 x 2 block is one copied CNN token


@pytest.mark.parametrize("upsample", ["upconv", "copy"])
@pytest.mark.parametrize("merge", ["concat", "add"])
def test_late_fusion_block(upsample: str, merge: str) -> None:
    block = LateFusion(8, scale=2, upsample=upsample, merge=merge)
    fine, coarse = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)
    out = block(fine, coarse)
    assert out.shape == (2, 16, 16 if merge == "concat" else 8)
    assert block.out_dim == out.shape[-1]
    if upsample == "copy" and merge == "concat":
        up = out[..., 8:].reshape(2, 4, 4, 8)
        assert torch.equal(up[:, 0, 0], up[:, 1, 1]) and torch.equal(up[:, 0, 0], coarse[:, :, 0, 0])
    assert (sum(p.numel() for p in block.parameters()) > 0) == (upsample == "upconv")


def test_late_fusion_upsamples_the_coarser_stream() -> None:
    assert TokenFusion(method="late", **TINY).late_coarse == "cnn"  # layer4 /32 vs patches /16
    model = TokenFusion(method="late", late_stage=2, **TINY)  # layer2 /8: the ViT tokens get UpConv
    assert model.late_coarse == "vit"
    assert isinstance(model.trunk.layer3, torch.nn.Identity) and isinstance(
        model.trunk.layer4, torch.nn.Identity
    )
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 64, 64)  # 8 x 8 grid, 2D channels


def test_bridge_copy_equals_copy_then_conv() -> None:
    bridge = BridgeBlock(16, scale=4, upsample="copy")
    fmap = torch.randn(2, 16, 3, 5)
    reference = bridge.proj(F.interpolate(fmap, scale_factor=4, mode="nearest"))
    assert torch.allclose(bridge(fmap), reference, atol=1e-5)
    upconv = BridgeBlock(16, scale=4, upsample="upconv")
    assert upconv(fmap).shape == (2, 3, 12, 20)


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("tokenfusion_early", 18),
        ("tokenfusion_early_copy_multi", 18),
        ("tokenfusion_early_upconv_single", 6),
        ("tokenfusion_early_copy_single", 6),
    ],
)
def test_early_unified_map_channels(name: str, channels: int) -> None:
    model = timm.create_model(name, **TINY)
    assert model.unified_channels == channels
    assert model.patch_tokens.patch_embed.proj.in_channels == channels


def test_class_token_kept_out_of_mixing() -> None:
    fusion = MixingFusion(8, num_prefix_tokens=1)
    tokens, cnn = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    out = fusion(tokens, cnn)
    assert torch.equal(out[:, 0], tokens[:, 0])
    assert not torch.allclose(out[:, 1:], tokens[:, 1:])
    model = timm.create_model("tokenfusion_layer_cls", **TINY)
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 17, 32)
    with pytest.raises(ValueError, match="class_token"):
        TokenFusion(method="late", class_token=True)


def test_pooling_heads() -> None:
    tokens = torch.randn(2, 16, 8)
    channel = PoolingHead("channel", 8, (4, 4), num_classes=0)
    assert torch.allclose(channel(tokens), F.layer_norm(tokens.mean(1), (8,)), atol=1e-5)
    token = PoolingHead("token", 8, (4, 4), num_classes=0)
    assert torch.allclose(token(tokens), F.layer_norm(tokens.mean(2), (16,)), atol=1e-5)
    mixing = PoolingHead("mixing", 8, (4, 4), num_classes=3)
    assert mixing.num_features == 24 and mixing(tokens).shape == (2, 3)
    # a model built for 224 (14 x 14 tokens) resamples the per-token vector of a 64 input
    big = PoolingHead("token", 8, (14, 14), num_classes=0)
    assert big(tokens).shape == (2, 196)
    with pytest.raises(ValueError, match="head"):
        PoolingHead("cls", 8, (4, 4))  # type: ignore[arg-type]


def test_reset_classifier_switches_head() -> None:
    model = TokenFusion(method="layer", head="channel", num_classes=5, **TINY)
    model.reset_classifier(6, global_pool="mixing")
    assert model.num_features == 32 + 14 * 14 and model(torch.randn(1, 3, 64, 64)).shape == (1, 6)


def test_pretrained_flag_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="local file"):
        timm.create_model("tokenfusion_layer", pretrained=True, **TINY)


def test_plain_resnet101_state_dict_loads_into_trunk(tmp_path) -> None:
    """A timm resnet101 state dict (same key names as torchvision) initialises the trunk exactly."""
    torch.manual_seed(0)
    state = timm.create_model("resnet101", pretrained=False).state_dict()
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)
    model = TokenFusion(method="layer", embed_dim=32, num_heads=2)
    report = load_pretrained(model, path)
    trunk = model.trunk.state_dict()
    assert len(trunk) == len(state) - 2  # everything but fc.weight / fc.bias
    for key, value in trunk.items():
        assert torch.equal(value, state[key]), key
    assert sorted(report.unexpected) == ["trunk.fc.bias", "trunk.fc.weight"]  # the 1000-class classifier
    assert not any(k.startswith("trunk.") for k in report.missing)
    assert not report.shape_mismatch


def test_truncated_late_trunk_has_no_unused_stages() -> None:
    """A late model reading layer3 drops layer4 (unused parameters would break DDP and waste memory)."""
    with torch.device("meta"):
        model = TokenFusion(method="late", late_stage=3, embed_dim=32, num_heads=2)
    keys = model.trunk.state_dict().keys()
    assert any(k.startswith("layer3.") for k in keys) and not any(k.startswith("layer4.") for k in keys)


@pytest.mark.parametrize("method", ["late", "early", "layer"])
def test_grad_checkpointing_matches(method: str) -> None:
    torch.manual_seed(0)
    model = TokenFusion(method=method, num_classes=3, **TINY)
    x = torch.randn(2, 3, 64, 64)
    model.eval()  # BN running statistics are not updated twice; the graph is the same
    ref = model(x)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model.training = True  # checkpointing is active in training mode only; keep BN in eval
    for m in model.modules():
        if isinstance(m, Block):
            m.train()
    out = model(x)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], atol=1e-5), n


def test_experiment_files_cover_tables_1_and_4() -> None:
    """One YAML per row: Table 1 (3 methods x 3 heads) + Table 4 (6 x 2 + 3); each one's model builds."""
    from pathlib import Path

    from lightning_modules.config_compose import compose, experiment_rows

    rows_dir = Path(__file__).resolve().parents[1] / "experiments"
    files = sorted(p for p in experiment_rows(rows_dir).values() if p.parent.name == "tokenfusion")
    assert len(files) == 9 + 15, [f.name for f in files]
    rows = set()
    for path in files:
        cfg = compose(path)  # the row with experiments/tokenfusion/_recipe.yaml
        init = cfg["model"]["init_args"]
        kwargs = init["backbone_kwargs"]
        assert path.stem == f"{init['backbone']}_imagenet_{kwargs['head']}"
        assert cfg["data"]["class_path"] == "datamodules.ImageNetDataModule"
        data = cfg["data"]["init_args"]
        assert (data["image_size"], data["resize_size"], data["train_crop"]) == (224, 256, "center")
        assert (data["hflip"], data["vflip"], data["rotation"]) == (0.5, 0.5, 15)
        assert (cfg["trainer"]["devices"], cfg["trainer"]["strategy"]) == (2, "ddp")
        # narrow widths keep this fast (on CPU: meta-device init is slower for small models)
        model = timm.create_model(init["backbone"], num_classes=1000, **{**kwargs, **TINY})
        assert model.global_pool == kwargs["head"]
        rows.add((init["backbone"], kwargs["head"]))
    assert len(rows) == 24
