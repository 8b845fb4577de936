"""The comparison models written here because timm does not ship them: CvT-13, Conformer-B, HorNet-B, ViG-B.

Sizes are checked against the tables that compare them (built on the meta device: no memory, no init);
the model contract and gradients at the smoke size (64 px) on real tensors.
"""

from __future__ import annotations

import pytest
import timm
import torch

import backbones  # noqa: F401  (registers the models)
from backbones.baselines.vig import knn_graph
from lightning_modules.complexity import count_macs

# name, num_classes, table parameter count (M), table MACs (G) at 224, relative tolerance of the MACs;
# the parameter count must round to the table's figure (half a unit of its last digit)
SIZES = [
    ("cvt_13", 1000, 20.0, 4.5, 0.03),  # CvT paper Table 2: 20.0 M, 4.5 G
    ("conformer_base_patch16", 24, 81.226, 23.401, 0.01),  # MSF-CA Table VIII
    ("hornet_base_7x7", 24, 86.256, 15.583, 0.01),  # MSF-CA Table VIII
    ("vig_b_224", 24, 85.841, 17.681, 0.01),  # MSF-CA Table VIII
]


def _params_m(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize(("name", "num_classes", "params", "macs", "tol"), SIZES)
def test_size_matches_the_table(name, num_classes, params, macs, tol):
    model = timm.create_model(name, num_classes=num_classes, device="meta").eval()
    decimals = len(str(params).split(".")[1])
    assert _params_m(model) == pytest.approx(params, abs=0.5 * 10**-decimals)
    assert count_macs(model, 224) / 1e9 == pytest.approx(macs, rel=tol)


# reduced widths/depths of the same architectures for the default suite; the full sizes run in the slow suite
SMALL = {
    "cvt_13": {"dims": (16, 32, 48), "depths": (1, 1, 2), "heads": (1, 2, 3)},
    "conformer_base_patch16": {"channel_ratio": 1, "embed_dim": 36, "num_heads": 3},
    "hornet_base_7x7": {"base_dim": 16, "depths": (1, 1, 2, 1)},
    "vig_b_224": {"dim": 32, "depth": 5},
}


def _contract(name: str, **kwargs) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, drop_rate=0.1, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats), model(x))
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    model.train()
    model(x).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.pretrained_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    model.reset_classifier(3)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize("name", list(SMALL))
def test_contract_and_gradients(name):
    _contract(name, **SMALL[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_contract_and_gradients_full_size(name):
    _contract(name)


@pytest.mark.parametrize("name", [s[0] for s in SIZES])
def test_timm_kwargs(name):
    model = timm.create_model(
        name, device="meta", dtype=torch.bfloat16, num_classes=7, drop_rate=0.1,
        pretrained_cfg_overlay={"input_size": (3, 64, 64)},
    )  # fmt: skip
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.num_classes == 7
    assert model.pretrained_cfg["input_size"] == (3, 64, 64)
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize(
    ("name", "names"),
    [
        ("cvt_13", {"stages.2.cls_token"}),
        ("conformer_base_patch16", {"cls_token"}),
        ("hornet_base_7x7", set()),
        ("vig_b_224", {"pos_embed"}),
    ],
)
def test_no_weight_decay_names_the_tokens_and_embeddings(name, names):
    """timm's optimiser factory reads ``no_weight_decay()``: class tokens, position embeddings."""
    model = timm.create_model(name, device="meta")
    assert model.no_weight_decay() == names
    assert names <= dict(model.named_parameters()).keys()


@pytest.mark.parametrize(("name", "levels"), [("cvt_13", 3), ("hornet_base_7x7", 4)])
def test_features_only(name, levels):
    model = timm.create_model(name, features_only=True, device="meta")
    outs = model(torch.empty(1, 3, 64, 64, device="meta"))
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert [64 // o.shape[-1] for o in outs] == model.feature_info.reduction()
    assert len(outs) == levels


def test_knn_graph_is_batched_and_exact():
    """The batched dilated k-NN equals a per-image, per-node brute force (a graph with a known answer)."""
    torch.manual_seed(0)
    x = torch.randn(3, 20, 8)
    idx = knn_graph(x, k=4, dilation=2)
    assert idx.shape == (3, 20, 4)
    xn = torch.nn.functional.normalize(x, dim=-1)
    for b in range(3):
        dist = torch.cdist(xn[b], xn[b])
        for n in range(20):
            order = dist[n].argsort()[:8]
            assert set(idx[b, n].tolist()) == set(order[::2].tolist())
    assert (idx[:, :, 0] == torch.arange(20)).all()  # every node is its own nearest neighbour


def test_vig_runs_with_fewer_nodes_than_k_times_dilation():
    """At 32 px there are 4 nodes: the dilated neighbourhoods are capped at the node count.

    ViG-B's 16 blocks (k 9 -> 18, dilation 1 -> 4, so up to 72 neighbours asked of 4 nodes) at a narrow width.
    """
    model = timm.create_model("vig_b_224", num_classes=3, dim=32).eval()
    last = model.blocks[-1][0].graph_conv
    assert len(model.blocks) == 16 and (last.k, last.dilation) == (18, 4)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


def test_published_sizes_are_shown_beside_ours():
    """tools.profile reads the tables' params/MACs of the new rows from tools/published/."""
    from tools.profile import published_complexity

    assert published_complexity("hornet_base_7x7_ceramic") == (86.256, 15.583)
    assert published_complexity("conformer_base_patch16_ceramic") == (81.226, 23.401)
    assert published_complexity("vig_b_224_ceramic") == (85.841, 17.681)
    assert published_complexity("cvt_13_cifar10") == (None, None)  # the FFT paper gives no CvT size
