"""Tests of the ACANet paper's backbones: ACCB fusion, FCSA vs the ACmix unfold reference, patchify
downsampling, the registered models' timm contract, and the baselines registered for Tables 2-3."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import backbones  # noqa: F401 - registers the models
from backbones import load_pretrained
from backbones.acanet import ACANet
from backbones.layers.accb import ACCB
from backbones.layers.fcsa import FCSA, effective_window, fcsa_unfold_reference
from backbones.layers.patchify import PatchifyConv2d

MODELS = ["acanet18", "acanet18_no_accb", "acanet18_no_fcsa_accb", "resnet18_mc", "googlenet", "vgg16_mc"]


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def _calibrate_bn(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Random BN affine parameters, then running statistics measured on ``x`` (realistic magnitudes,
    unlike arbitrary random statistics that blow activations up to 1e5 through 8 summed-branch blocks)."""
    _randomise_bn(model, seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for chunk in x.split(2):
            model(chunk)
    model.eval()


def _perturb(module: nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


# ----- model contract -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_model_contract(name: str) -> None:
    torch.manual_seed(0)
    num_classes = 7
    model = timm.create_model(name, num_classes=num_classes)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
    pooled = model.forward_head(feats, pre_logits=True)
    # timm's VGG: the pre-logits vector is the 4096-d MLP output (head_hidden_size), not num_features.
    assert pooled.shape == (2, getattr(model, "head_hidden_size", model.num_features))
    logits = model(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    assert isinstance(model.get_classifier(), nn.Linear)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, getattr(model, "head_hidden_size", model.num_features))


@pytest.mark.parametrize("name", ["acanet18", "acanet18_no_accb"])
def test_bf16_autocast(name: str) -> None:
    model = timm.create_model(name, num_classes=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_acanet_paper_size_and_meta_device() -> None:
    model = timm.create_model("acanet18", num_classes=200).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 512, 7, 7)
    with torch.device("meta"):
        meta = timm.create_model("acanet18", num_classes=200)
    assert next(meta.parameters()).is_meta


def test_parameter_counts() -> None:
    """The paper gives no parameter table; the plain ablation must be ResNet-18 exactly, FCSA must be
    lighter than the 3x3 conv it replaces (3 C^2 projections vs 9 C^2), ACCB adds 6 C_in C_out + 4 C."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    resnet = count(timm.create_model("resnet18", num_classes=200))
    plain = count(timm.create_model("acanet18_no_fcsa_accb", num_classes=200))
    no_accb = count(timm.create_model("acanet18_no_accb", num_classes=200))
    full = count(timm.create_model("acanet18", num_classes=200))
    assert plain == resnet == 11_279_112
    assert no_accb < plain
    accb_extra = sum(6 * cin * cout + 4 * cout for cin, cout in _block_conv1_shapes())
    assert full - no_accb == accb_extra
    assert full == 10_952_248


def _block_conv1_shapes() -> list[tuple[int, int]]:
    chans = [64, 64, 64, 128, 128, 256, 256, 512]
    outs = [64, 64, 128, 128, 256, 256, 512, 512]
    return list(zip(chans, outs))


# ----- ACCB ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
def test_accb_fuse_equal(stride: int) -> None:
    torch.manual_seed(0)
    block = ACCB(8, 12, 3, stride=stride)
    _randomise_bn(block)
    block.eval()
    x = torch.randn(2, 8, 11, 10)
    before = block(x)
    block.switch_to_deploy()
    assert isinstance(block.fused_conv, nn.Conv2d) and block.fused_conv.bias is not None
    assert [n for n, _ in block.named_children()] == ["fused_conv"]
    torch.testing.assert_close(block(x), before, rtol=0, atol=1e-5)


def test_acanet_fusion_equal_outputs() -> None:
    torch.manual_seed(0)
    model = ACANet(num_classes=10)
    _calibrate_bn(model, torch.randn(6, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.switch_to_deploy()
        after = model(x)
    assert 0.1 < before.abs().max() < 1e3
    assert not any(hasattr(m, "square_conv") for m in model.modules())
    assert (before - after).abs().max().item() <= 1e-5


def test_acanet_fusion_equal_outputs_arbitrary_bn_stats_fp64() -> None:
    """Uniformly random running statistics (activations reach ~1e5 through the summed branches, so the
    comparison runs in float64 where 1e-5 is still far above rounding)."""
    torch.manual_seed(1)
    model = ACANet(num_classes=10)
    _randomise_bn(model, seed=1)
    model = model.double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        after = model.switch_to_deploy()(x)
    assert (before - after).abs().max().item() <= 1e-5


def _structure(model: nn.Module) -> list[tuple]:
    rows = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            rows.append(("conv", tuple(m.weight.shape), m.stride, m.padding, m.groups, m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            rows.append(("bn", m.num_features))
        elif isinstance(m, nn.Linear):
            rows.append(("linear", tuple(m.weight.shape)))
        elif isinstance(m, nn.MaxPool2d):
            rows.append(("maxpool", m.kernel_size, m.stride, m.padding))
    return rows


def test_fused_acanet_without_fcsa_is_plain_resnet18() -> None:
    """ACCB-ResNet-18 after fusion == timm resnet18 with each block's conv1+bn1 folded into a biased conv:
    same modules in the same order, same parameter count, and the same function under the same weights."""
    torch.manual_seed(0)
    model = ACANet(num_classes=200, use_accb=True, use_fcsa=False, downsample="conv")
    _randomise_bn(model)
    model.eval().switch_to_deploy()

    resnet = timm.create_model("resnet18", num_classes=200).eval()
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in stage:
            block.conv1 = fuse_conv_bn_eval(block.conv1, block.bn1)
            block.bn1 = nn.Identity()
    assert _structure(model) == _structure(resnet)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == count(resnet)

    state = {k.replace(".conv1.fused_conv.", ".conv1."): v for k, v in model.state_dict().items()}
    resnet.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(resnet(x), model(x), rtol=0, atol=1e-5)


def test_no_fcsa_accb_is_timm_resnet18() -> None:
    resnet = timm.create_model("resnet18", num_classes=10).eval()
    _randomise_bn(resnet)
    model = timm.create_model("acanet18_no_fcsa_accb", num_classes=10).eval()
    model.load_state_dict(resnet.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), resnet(x), rtol=0, atol=1e-5)


def test_pretrained_resnet_weights_map_into_accb(tmp_path) -> None:
    resnet = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = timm.create_model("acanet18", num_classes=200)
    report = load_pretrained(model, path)
    torch.testing.assert_close(model.layer2[1].conv1.square_conv.weight, resnet.layer2[1].conv1.weight)
    torch.testing.assert_close(model.layer3[0].conv1.square_bn.running_var, resnet.layer3[0].bn1.running_var)
    assert any(k.startswith("fc.weight") for k in report.shape_mismatch)
    # 1x1/2 shortcut -> 2x2/2 patchify kernel with the weights at the top-left tap: the same function
    resnet.eval()
    model.eval()
    x = torch.randn(1, 64, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(model.layer2[0].downsample(x), resnet.layer2[0].downsample(x))


# ----- FCSA ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("channels", "height", "width"), [(16, 9, 11), (32, 8, 8), (8, 2, 3), (8, 1, 1)])
def test_fcsa_equals_unfold_reference(channels: int, height: int, width: int) -> None:
    torch.manual_seed(0)
    module = FCSA(channels, channels, heads=4, window=7)
    _perturb(module, 0.2)
    x = torch.randn(2, channels, height, width, requires_grad=True)
    out = module(x)
    grad_out = torch.randn_like(out)
    params = list(module.parameters())
    grads = torch.autograd.grad(out, [x, *params], grad_out)
    x_ref = x.detach().clone().requires_grad_()
    ref = fcsa_unfold_reference(module, x_ref)
    grads_ref = torch.autograd.grad(ref, [x_ref, *params], grad_out)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_fcsa_in_out_channels_and_window() -> None:
    assert effective_window(7, 56, 56) == 7
    assert effective_window(7, 2, 9) == 3
    assert effective_window(7, 1, 9) == 1
    module = FCSA(12, 16, heads=4)
    x = torch.randn(1, 12, 6, 6)
    torch.testing.assert_close(module(x), fcsa_unfold_reference(module, x), rtol=0, atol=1e-5)


def test_fcsa_low_precision() -> None:
    torch.manual_seed(0)
    module = FCSA(16, 16)
    x = torch.randn(2, 16, 12, 12)
    ref = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    half = copy.deepcopy(module).half()
    out_half = half(x.half())
    assert out_half.dtype == torch.float16 and torch.isfinite(out_half).all()


def test_fcsa_shift_init_survives_global_init() -> None:
    model = timm.create_model("acanet18", num_classes=10)
    fcsas = [m for m in model.modules() if isinstance(m, FCSA)]
    assert len(fcsas) == 8
    for m in fcsas:
        w = m.dep_conv.weight  # (out, 9, 3, 3): input i one-hot at divmod(i, 3)
        expected = torch.zeros_like(w)
        for i in range(9):
            expected[:, i, i // 3, i % 3] = 1.0
        torch.testing.assert_close(w, expected, rtol=0, atol=0)
        assert m.rate1.item() == 0.5 and m.rate2.item() == 0.5
        assert torch.count_nonzero(m.dep_conv.bias) == 0


def test_fcsa_conv_path_is_shift_sum_at_init() -> None:
    """At init the conv path is Eq. (7)-(8): shift each fc output map by its kernel offset and sum."""
    torch.manual_seed(0)
    module = FCSA(8, 8, heads=4)
    f = torch.randn(1, 9 * module.head_dim, 5, 5)
    out = module.dep_conv(f)
    padded = nn.functional.pad(f, (1, 1, 1, 1))
    expected = torch.zeros(1, 8, 5, 5)
    for o in range(8):
        g = o // (8 // module.head_dim)  # group of output channel o
        for i in range(9):
            dy, dx = divmod(i, 3)
            expected[0, o] += padded[0, 9 * g + i, dy : dy + 5, dx : dx + 5]
    torch.testing.assert_close(out, expected)


# ----- patchify and the MC-Loss last stage ----------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 9])
def test_patchify_conv(size: int) -> None:
    conv = PatchifyConv2d(4, 6)
    x = torch.randn(1, 4, size, size)
    out = conv(x)
    assert out.shape[-2:] == ((size + 1) // 2, (size + 1) // 2)
    manual = nn.functional.conv2d(nn.functional.pad(x, (0, size % 2, 0, size % 2)), conv.weight, stride=2)
    torch.testing.assert_close(out, manual)
    model = ACANet(num_classes=3)
    assert isinstance(model.maxpool[0], PatchifyConv2d)
    assert isinstance(model.layer2[0].downsample[0], PatchifyConv2d)


@pytest.mark.parametrize("name", ["acanet18", "acanet18_no_accb"])
def test_mc_last_stage(name: str) -> None:
    # 3 x 102 = 306 planes (Flowers-102) are not divisible by 4 heads: the last stage's FCSA uses 3.
    model = timm.create_model(name, num_classes=102, mc_channels_per_class=3, last_stride=1)
    feats = model.forward_features(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 306, 4, 4)
    assert model.num_features == 306 and model(torch.randn(2, 3, 64, 64)).shape == (2, 102)
    assert model.layer4[0].conv2.heads == 3


def test_unknown_option_message() -> None:
    with pytest.raises(ValueError, match="downsample"):
        ACANet(downsample="maxpool")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model("acanet18", pretrained=True)


def test_grad_checkpointing_and_channels_last_match() -> None:
    torch.manual_seed(0)
    model = timm.create_model("acanet18", num_classes=4)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model = model.to(memory_format=torch.channels_last)
    model(x.contiguous(memory_format=torch.channels_last)).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet18_mc", {}), ("vgg16_mc", {}), ("acanet18", {"mc_channels_per_class": 3, "last_stride": 1})],
)
def test_mc_rows_use_the_reference_head(name: str, kwargs: dict) -> None:
    """MC-Loss rows: max-pooled 3*C-channel map -> BN - FC 512 - BN - ELU -> FC (the MC-Loss reference)."""
    from backbones.acanet import MCHiddenLayer

    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    hidden = next(m for m in model.modules() if isinstance(m, MCHiddenLayer))
    assert isinstance(hidden.pool, torch.nn.AdaptiveMaxPool2d) and isinstance(hidden.act, torch.nn.ELU)
    assert hidden.fc_hidden.out_features == 512 == model.head_hidden_size
    assert model.get_classifier().in_features == 512
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == 30
        if name == "vgg16_mc":  # the reference's 2x2/2 max-pool of the 14 x 14 map: a 7 x 7 grid
            assert hidden.pool.output_size == 7 and hidden.bn_in.num_features == 30 * 49
        else:  # global max pooling
            assert torch.equal(hidden.pool(feats).flatten(1), feats.amax(dim=(2, 3)))
    plain = timm.create_model("acanet18", num_classes=10).eval()
    assert not any(isinstance(m, MCHiddenLayer) for m in plain.modules())


def _table_rows(pattern: str):
    from tests.experiment_snapshot import EXPERIMENTS, make_parser

    parser = make_parser()
    from lightning_modules.config_compose import expand_config_args

    for path in sorted((EXPERIMENTS / "acanet").glob(pattern)):
        yield path, parser.parse_args(expand_config_args(["--config", str(path)]))


def _row_backbone(cfg) -> torch.nn.Module:
    args = cfg.model.init_args
    return timm.create_model(args.backbone, num_classes=10, **(args.backbone_kwargs or {}))


def test_resnet18_family_rows_share_one_initialisation() -> None:
    """Tables 2-4: ResNet-18, ResNet-18-MC and ACANet rows all start with BN gamma 1 (no zero-init-last)."""
    checked, seen = 0, set()
    for path, cfg in _table_rows("*_cub_*.yaml"):
        args = cfg.model.init_args
        if not args.backbone.startswith(("resnet18", "acanet18")):
            continue
        checked += 1
        key = (args.backbone, repr(sorted((args.backbone_kwargs or {}).items())))
        if key in seen:  # the same backbone and kwargs build the same initialisation: built once
            continue
        seen.add(key)
        model = _row_backbone(cfg)
        last_bns = [m.bn2 for m in model.modules() if hasattr(m, "bn2") and hasattr(m, "conv2")]
        assert last_bns, path
        assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in last_bns), path.name
    assert checked >= 10 and len(seen) >= 4  # resnet18, resnet18_mc and the ACANet variants


def test_minus_fcsa_accb_rows_differ_from_resnet18() -> None:
    """Table 4 "Minus (FCSA+ACCB)" keeps the 2x2/2 patchify downsampling: it is not Table 2's ResNet-18."""
    for path, cfg in _table_rows("acanet18_no_fcsa_accb_cub_*.yaml"):
        model = _row_backbone(cfg)
        assert model.maxpool[0].kernel_size == (2, 2) == model.maxpool[0].stride, path.name
        assert model.layer2[0].downsample[0].kernel_size == (2, 2), path.name
    plain = timm.create_model("acanet18_no_fcsa_accb", num_classes=10)
    assert isinstance(plain.maxpool, torch.nn.MaxPool2d)
    assert plain.layer2[0].downsample[0].kernel_size == (1, 1)


def test_rows_resize_the_whole_image_to_224() -> None:
    """The paper's input: the whole image resized to 224x224 (no crop at evaluation); training adds a random
    crop of the 4-px padded 224x224 image and a flip."""
    from PIL import Image
    from torchvision.transforms import v2

    path, cfg = next(_table_rows("acanet18_cub_ce.yaml"))
    data = cfg.data.init_args
    module_name, cls_name = cfg.data.class_path.rsplit(".", 1)
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    dm = cls(**{k: v for k, v in data.items() if k != "num_classes"})
    img = Image.new("RGB", (400, 200), (10, 20, 30))
    img.paste((200, 100, 50), (0, 0, 100, 200))  # a band at the left edge: kept only without a crop
    expected = v2.Compose([v2.ToImage(), v2.Resize((224, 224), antialias=True), *dm._finish()])(img)
    assert torch.equal(dm.build_eval_transform()(img), expected)
    ops = [type(t).__name__ for t in dm.build_train_transform().transforms]
    assert ops[:4] == ["ToImage", "Resize", "RandomCrop", "RandomHorizontalFlip"]
    crop = dm.build_train_transform().transforms[2]
    assert crop.padding == [4, 4, 4, 4] and dm.build_train_transform()(img).shape == (3, 224, 224)


def test_vgg16_bn_mc_is_vgg16_mc_with_a_batchnorm_after_every_conv() -> None:
    """The BN variant of the VGG-16 MC rows (ours): the same convs and MC head, plus 13 BatchNorm2d."""
    plain = timm.create_model("vgg16_mc", num_classes=4, device="meta")
    bn = timm.create_model("vgg16_bn_mc", num_classes=4, device="meta")
    convs = [tuple(m.weight.shape) for m in plain.features if isinstance(m, torch.nn.Conv2d)]
    assert convs == [tuple(m.weight.shape) for m in bn.features if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1][0] == 3 * 4  # xi x classes
    layers = list(bn.features)
    follows = [type(layers[i + 1]) for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert follows == [torch.nn.BatchNorm2d] * 13
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.features)
    assert bn.pretrained_cfg["architecture"] == "vgg16_bn_mc"


def test_vgg16_mc_global_pool_round_trip() -> None:
    """reset_classifier(0, "") returns the map before the last max-pool; "avg" puts the MC head back."""
    model = timm.create_model("vgg16_mc", num_classes=4).eval()
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        model.reset_classifier(0, "")
        assert model(x).shape == (1, 12, 4, 4) and model.head_hidden_size == 12
        model.reset_classifier(4, "avg")
        assert model.eval()(x).shape == (1, 4) and model.head_hidden_size == 512  # a new head: train mode
