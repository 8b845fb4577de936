"""Tests of the FFT paper's models: RAM, the FFT block, the registered variants and the Fig. 7 maps."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import backbones  # noqa: F401 - registers the models
from backbones.errors import ModelConfigError
from backbones.fft import FFT
from backbones.layers.fft_block import MultiHeadSelfAttention, StreamFusion
from backbones.layers.residual_attention import ResidualAttention
from backbones.pretrained import load_pretrained
from tools.attention import save_attention_overlay

# Small encoder sizes so that Base-configured variants build fast; the switches under test stay as registered.
SMALL = dict(embed_dim=32, mlp_dim=64, num_heads=2, head_dim=16)
ALL_VARIANTS = [
    "fft_tiny",
    "fft_base",
    "fft_large",
    "fft_base_no_ram",
    "fft_base_no_pos",
    "resnet18_vit",
    "resnet18_linear",
]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _small(name: str, **kwargs) -> FFT:
    extra = {} if name == "resnet18_linear" else SMALL
    return timm.create_model(name, num_classes=5, **{**extra, **kwargs})


# ---------------------------------------------------------------------------------------------- RAM
def test_ram_matches_eq_1_2() -> None:
    ram = ResidualAttention(32).eval()
    x = torch.randn(2, 32, 6, 6)
    ch = ram.channel
    avg = ch.fc2(F.relu(ch.fc1(x.mean((2, 3), keepdim=True))))
    mx = ch.fc2(F.relu(ch.fc1(x.amax((2, 3), keepdim=True))))
    f1 = torch.sigmoid(avg + mx) * x  # Eq. 1
    sa = torch.sigmoid(ram.spatial.conv(torch.cat([f1.mean(1, keepdim=True), f1.amax(1, keepdim=True)], 1)))
    expected = sa * f1 + x  # Eq. 2
    torch.testing.assert_close(ram(x), expected)
    assert ch.fc1.bias is not None and ch.fc1.out_channels == 2  # CBAM's MLP: bias, C/16
    plain = ResidualAttention(32, residual=False).eval()
    plain.load_state_dict(ram.state_dict())
    torch.testing.assert_close(plain(x) + x, ram(x))


# ------------------------------------------------------------------------------------- FFT block parts
@pytest.mark.parametrize(
    ("src", "dst", "kernel"),
    [((8, 8), (8, 8), 8), ((4, 4), (2, 2), 8), ((6, 6), (3, 3), 3), ((2, 2), (1, 1), 8)],
)
def test_fusion_conv_equals_unfold_vec_linear(src, dst, kernel) -> None:
    fusion = StreamFusion(12, 20, kernel_size=kernel)
    torch.nn.init.normal_(fusion.proj.bias)
    x = torch.randn(2, src[0] * src[1], 12)
    out = fusion(x, src, dst)
    assert out.shape == (2, dst[0] * dst[1], 20)
    torch.testing.assert_close(out, fusion.forward_unfold(x, src, dst), rtol=1e-4, atol=1e-5)


def test_fusion_is_local() -> None:
    """A coarse token depends on the finer tokens in its K x K block only (Eq. 9 'flattens locally')."""
    fusion = StreamFusion(4, 4, kernel_size=3, norm=False)
    x = torch.randn(1, 64, 4, requires_grad=True)
    out = fusion(x, (8, 8), (8, 8))
    out[0, 0].sum().backward()  # token (0, 0) sees finer tokens (0..1, 0..1) with padding 1
    touched = x.grad[0].abs().sum(-1).view(8, 8) > 0
    assert touched[:2, :2].all() and touched.sum() == 4


def test_circular_fusion_adds_no_position_of_its_own() -> None:
    """fusion_padding="circular": rolling the finer grid by one stride rolls the fused tokens by one token
    (no border marks where a block sits); the paper's zero border breaks this. Same map in every path."""
    x = torch.randn(2, 64, 6)
    rolled = x.view(2, 8, 8, 6).roll((2, 2), dims=(1, 2)).reshape(2, 64, 6)  # stride 8 -> 4 is 2
    outs = {}
    for padding in ("zeros", "circular"):
        torch.manual_seed(0)
        fusion = StreamFusion(6, 5, kernel_size=8, padding=padding)
        out, out_rolled = fusion(x, (8, 8), (4, 4)), fusion(rolled, (8, 8), (4, 4))
        torch.testing.assert_close(out, fusion.forward_unfold(x, (8, 8), (4, 4)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out, fusion.forward_conv(x, (8, 8), (4, 4)), rtol=1e-4, atol=1e-5)
        outs[padding] = out, out_rolled.view(2, 4, 4, 5).roll((-1, -1), dims=(1, 2)).reshape(2, 16, 5)
    torch.testing.assert_close(*outs["circular"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(*outs["zeros"], rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="circular"):
        StreamFusion(6, 5, padding="reflect")
    with pytest.raises(ModelConfigError, match="fusion_padding"):
        timm.create_model("fft_tiny", fusion_padding="reflect")


def test_attention_weights_path_matches_sdpa() -> None:
    attn = MultiHeadSelfAttention(24, num_heads=3, head_dim=8).eval()
    x = torch.randn(2, 7, 24)
    weights = attn.attention_weights(x)
    assert weights.shape == (2, 3, 7, 7)
    v = attn.qkv(x).reshape(2, 7, 3, 3, 8)[:, :, 2].transpose(1, 2)  # (B, heads, N, head_dim)
    slow = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(attn(x), slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 7))


# ------------------------------------------------------------------------------------ model contract
# FFT-Large differs from FFT-Base only by depth and heads (12 blocks): its contract runs under -m slow
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "fft_large" else n for n in ALL_VARIANTS]
)
def test_contract_shapes_grads_head(name: str) -> None:
    model = _small(name)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    feats = model.forward_features(x)
    if name == "resnet18_linear":
        assert feats.shape == (2, 512, 2, 2) and model.num_features == 512
    else:  # 64x64 -> maps 8, 4, 2 -> one 2x2 token grid per stream (+ class token on the Outer one)
        assert feats.shape == (2, 5, 32) and model.num_features == 32
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_switches_of_the_ablation_variants() -> None:
    full, no_ram, no_pos = (_small(n) for n in ("fft_base", "fft_base_no_ram", "fft_base_no_pos"))
    assert all(isinstance(m, ResidualAttention) for m in full.ram) and len(full.ram) == 3
    assert not any(isinstance(m, ResidualAttention) for m in no_ram.modules())
    assert [tuple(p.shape) for p in full.pos_embeds] == [(1, 64, 32), (1, 64, 32), (1, 65, 32)]  # Eq. 19-21
    assert len(no_pos.pos_embeds) == 0
    assert len(full.blocks) == 6 and len(full.blocks[0].fusions) == 2
    vit = _small("resnet18_vit")
    assert vit.num_streams == 1 and len(vit.blocks[0].fusions) == 0 and len(vit.pos_embeds[0][0]) == 65
    assert not any(isinstance(m, ResidualAttention) for m in vit.modules())


def test_fine_streams_reach_the_output() -> None:
    """Changing only the Inner map's RAM output changes the logits: the fusion carries it to the Outer
    stream."""
    model = _small("fft_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    base = model(x)
    with torch.no_grad():
        model.ram[0].spatial.conv.bn.bias.add_(3.0)  # only the Inner (layer2) map's gate changes
    assert not torch.allclose(base, model(x))


def test_class_token_zero_init_and_tokens_at_paper_size() -> None:
    model = _small("fft_tiny")
    assert torch.count_nonzero(model.cls_token) == 0  # Eq. 14
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 256, 256))
    assert feats.shape == (1, 65, 32)  # 8x8 Outer grid + class token at 256x256


@pytest.mark.parametrize("size", [32, 96])
def test_other_input_sizes_resample_positions(size: int) -> None:
    model = _small("fft_tiny", img_size=256).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    cifar = _small("fft_tiny", img_size=32, patch_sizes=(1, 1, 1))
    assert [tuple(p.shape[1:]) for p in cifar.pos_embeds] == [(16, 32), (4, 32), (2, 32)]


def test_bf16_autocast() -> None:
    model = _small("fft_tiny").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out.float()).all()


# Table II (Params) at 256x256. The head is counted with 1000 classes (the table names no dataset).
@pytest.mark.parametrize(
    ("name", "paper_millions"), [("fft_tiny", 43), ("fft_base", 266), ("fft_large", 566)]
)
def test_parameter_count_vs_table_ii(name: str, paper_millions: float) -> None:
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=1000, img_size=256)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - paper_millions) / paper_millions < 0.10, f"{name}: {count:.1f} M vs {paper_millions} M"


def test_hybrid_parameter_counts() -> None:
    with torch.device("meta"):
        linear = timm.create_model("resnet18_linear", num_classes=1000)
        vit = timm.create_model("resnet18_vit", num_classes=10)
    assert sum(p.numel() for p in linear.parameters()) == 11_689_512  # exactly torchvision's resnet18
    n_vit = sum(p.numel() for p in vit.parameters())
    assert 30e6 < n_vit < 32e6  # 11.2 M trunk + 6 x 3.15 M layers + embedding


def test_pretrained_trunk_loads_timm_resnet18(tmp_path: Path) -> None:
    reference = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = _small("fft_tiny")
    report = load_pretrained(model, path)
    own = model.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("fc."):
            continue
        torch.testing.assert_close(own["trunk." + key], value, rtol=0, atol=0)
    assert len(report.loaded) == len(reference.state_dict()) - 2
    assert sorted(report.unexpected) == ["trunk.fc.bias", "trunk.fc.weight"]  # the 1000-class fc is dropped


def test_pretrained_true_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no hub weights"):
        timm.create_model("fft_tiny", pretrained=True)


# ------------------------------------------------------------------------------------- Fig. 7 maps
def test_outer_attention_maps_and_png(tmp_path: Path) -> None:
    model = _small("fft_tiny", img_size=128).eval()
    x = torch.randn(2, 3, 128, 128)  # Outer grid 4x4
    cls_maps = model.outer_attention_maps(x)
    query_maps = model.outer_attention_maps(x, query=5)
    assert cls_maps.shape == query_maps.shape == (2, 3, 4, 4)
    assert (cls_maps >= 0).all() and (cls_maps.flatten(2).sum(-1) <= 1 + 1e-5).all()
    assert not torch.allclose(cls_maps, query_maps)
    with pytest.raises(ValueError, match="outside"):
        model.outer_attention_maps(x, query=16)
    path = tmp_path / "attn.png"
    save_attention_overlay(x[0], query_maps[0, -1], path, query=5, title="layer 3")
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 100


# ------------------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_fft_tiny_learns_real_cifar10(tmp_path: Path) -> None:
    """Short training of FFT-Tiny on 2,000 real CIFAR-10 photos; the training loss must go down."""
    zip_path = SHARED_DATA / "cifar10-mini.zip"
    if not zip_path.is_file():
        pytest.skip(f"real CIFAR-10 subset not found at {zip_path}")
    assert zipfile.is_zipfile(zip_path)
    datamodules = pytest.importorskip("datamodules")
    if not hasattr(datamodules, "ImageFolderDataModule"):
        pytest.skip("datamodules.ImageFolderDataModule not available")
    import lightning as L

    from lightning_modules import ClassificationTask

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    L.seed_everything(0)
    data = datamodules.ImageFolderDataModule(
        root=str(zip_path),
        num_classes=10,
        split="ratio",
        split_ratios=(0.8, 0.1, 0.1),
        split_seed=0,
        cache_dir=str(tmp_path / "cifar10-mini"),
        batch_size=32,
        num_workers=0,
        image_size=32,
        resize_size=32,
        train_crop="random",
        crop_padding=4,
        hflip=0.5,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )
    # the paper's SGD recipe (lr 1e-3 at batch 4, momentum 0.9) scaled linearly to batch 32; native 32x32
    # input with 1x1 patches (4x4, 2x2, 1x1 token grids) to keep the run to a few CPU minutes
    task = ClassificationTask(
        backbone="fft_tiny",
        num_classes=10,
        backbone_kwargs={"img_size": 32, "patch_sizes": (1, 1, 1), "drop_rate": 0.1},
        optimizer=lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9),
        lr_reference_batch_size=4,
        metrics=["acc1", "acc5"],
    )
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Record()],
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=data)
    result = trainer.test(task, datamodule=data, verbose=False)[0]
    print(
        f"\nFFT-Tiny cifar10-mini: first-10 loss {sum(losses[:10]) / 10:.3f}, last-10 loss "
        f"{sum(losses[-10:]) / 10:.3f}, test acc1 {result['test/acc1']:.4f}, acc5 {result['test/acc5']:.4f}"
    )
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1
    assert result["test/acc1"] > 0.15  # chance is 0.10
