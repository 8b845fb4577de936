"""Loading local ImageNet-style checkpoints into the paper models' ResNet trunks (backbones/pretrained.py).

No download anywhere: each test saves a *randomly initialised* timm or torchvision model's state dict to
``tmp_path`` with ``torch.save`` and loads it back with :func:`backbones.pretrained.load_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

import backbones  # noqa: F401  (registers the models)
from backbones.pretrained import LoadReport, PretrainedLoadError, load_pretrained


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _random_state_dict(name: str, seed: int) -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised timm model, with non-trivial BN statistics and gates."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=1000)
    state = model.state_dict()
    for (
        key,
        value,
    ) in state.items():  # BN running stats / zero-init gammas would otherwise be 0 or 1 everywhere
        if value.is_floating_point() and ("running" in key or "bn" in key):
            value.copy_(torch.rand_like(value) + 0.1)
    return state


class _Checkpoints:
    """ImageNet-style (1000-class) state dicts of the trunks, each built and saved once, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.paths:
            if name.startswith("tv_"):
                torch.manual_seed(3)
                state = getattr(torchvision.models, name[3:])(weights=None).state_dict()
            else:
                state = _random_state_dict(name, seed=len(self.paths))
            self.paths[name] = _save(state, self.root / f"{name}.pth")
        return self.paths[name]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> _Checkpoints:
    return _Checkpoints(tmp_path_factory.mktemp("pretrained"))


def _assert_trunk_equal(
    model: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str, report: LoadReport
) -> None:
    own = model.state_dict()
    trunk_keys = [k for k in state if not k.startswith("fc.")]
    assert trunk_keys
    for key in trunk_keys:
        assert torch.equal(own[prefix + key], state[key]), key
    assert sorted(prefix + k for k in trunk_keys) == report.loaded
    # the 1000-class classifier is never loaded: absent from the trunk (unexpected) or a shape mismatch
    skipped = report.unexpected + [s.split(" ")[0] for s in report.shape_mismatch]
    assert any(k.endswith("fc.weight") for k in skipped) and any(k.endswith("fc.bias") for k in skipped)
    assert not any(k.startswith(prefix) for k in report.missing), "a trunk tensor was left at init"


@pytest.mark.parametrize(
    "model_name,ckpt",
    [
        ("csnet101", "resnet101"),
        ("csnet101", "tv_resnet101"),
        ("csnet50", "resnet50"),
        ("csnet101_baseline", "resnet101"),
    ],
)
def test_resnet_state_dict_loads_into_csnet_trunk(
    model_name: str, ckpt: str, checkpoints: _Checkpoints
) -> None:
    model = timm.create_model(model_name, num_classes=200)
    report = load_pretrained(model, checkpoints[ckpt])
    state = torch.load(checkpoints[ckpt], weights_only=True)
    _assert_trunk_equal(model, state, "trunk.", report)
    # everything that is not trunk (CS module, 200-class head) is reported as missing, i.e. left at init
    assert {k.split(".")[0] for k in report.missing} <= {"cs", "head"}
    assert "head.fc.weight" in report.missing


def test_wrong_depth_is_reported_as_missing_trunk_blocks(checkpoints: _Checkpoints) -> None:
    """ResNet-50 weights into CS-Net-101: same stage widths, so everything but layer3.6-22 loads
    and the report names exactly those blocks as missing (the loader does not refuse a partial trunk;
    the log says so)."""
    model = timm.create_model("csnet101", num_classes=10)
    report = load_pretrained(model, checkpoints["resnet50"])
    missing_trunk = {k.split(".")[2] for k in report.missing if k.startswith("trunk.")}
    assert {k.split(".")[1] for k in report.missing if k.startswith("trunk.")} == {"layer3"}
    assert missing_trunk == {str(i) for i in range(6, 23)}
    assert "trunk.layer3.6.conv1.weight" in report.summary(limit=1000)


def test_csnet_base_with_resnet_weights_is_resnet(checkpoints: _Checkpoints) -> None:
    """The baseline ablation loaded with ResNet weights computes exactly the ResNet's features."""
    model = timm.create_model("csnet50_baseline", num_classes=10).eval()
    load_pretrained(model, checkpoints["resnet50"])
    resnet = timm.create_model("resnet50").eval()
    resnet.load_state_dict(torch.load(checkpoints["resnet50"], weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), resnet.forward_features(x))


def test_factory_accepts_a_local_path(checkpoints: _Checkpoints) -> None:
    """``timm.create_model("csnet50", pretrained=<path>)`` loads the file into the trunk."""
    model = timm.create_model("csnet50", pretrained=str(checkpoints["resnet50"]), num_classes=3)
    state = torch.load(checkpoints["resnet50"], weights_only=True)
    assert torch.equal(model.trunk.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])


def test_lightning_style_checkpoint(checkpoints: _Checkpoints, tmp_path: Path) -> None:
    """{"state_dict": {"backbone.<key>": ...}} as Lightning saves a ClassificationTask around a ResNet."""
    state = torch.load(checkpoints["resnet50"], weights_only=True)
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "state_dict": {f"backbone.{k}": v for k, v in state.items()},
        "optimizer_states": [],
        "hyper_parameters": {"backbone": "resnet50"},
    }
    model = timm.create_model("csnet50", num_classes=200)
    report = load_pretrained(model, _save(ckpt, tmp_path / "last.ckpt"))
    _assert_trunk_equal(model, state, "trunk.", report)


def test_checkpoint_of_a_trained_csnet_round_trips(tmp_path: Path) -> None:
    """A CS-Net fine-tuned by this project (task keys ``backbone.trunk.*``, ``backbone.cs.*``) reloads
    fully."""
    torch.manual_seed(0)
    trained = timm.create_model("csnet50", num_classes=200, gamma_init=0.5)
    ckpt = {"state_dict": {f"backbone.{k}": v for k, v in trained.state_dict().items()}}
    model = timm.create_model("csnet50", num_classes=200)
    report = load_pretrained(model, _save(ckpt, tmp_path / "csnet.ckpt"))
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    assert torch.equal(model.cs.channel.gamma, trained.cs.channel.gamma)
    # the same checkpoint into a 10-class model: only the head is skipped, for its shape
    report = load_pretrained(timm.create_model("csnet50", num_classes=10), tmp_path / "csnet.ckpt")
    assert sorted(s.split(" ")[0] for s in report.shape_mismatch) == ["head.fc.bias", "head.fc.weight"]


# ----------------------------------------------------------------------------- clear errors


@pytest.fixture(scope="module")
def csnet50_model() -> torch.nn.Module:
    return timm.create_model("csnet50", num_classes=10)


def test_missing_file(csnet50_model: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(PretrainedLoadError, match="does not exist"):
        load_pretrained(csnet50_model, tmp_path / "resnet50_imagenet.pth")


@pytest.mark.parametrize("payload", ["plain", "module"])
def test_non_tensor_pickle(payload: str, csnet50_model: torch.nn.Module, tmp_path: Path) -> None:
    obj = (
        {"epoch": 1, "arch": "resnet50", "notes": ["not", "weights"]}
        if payload == "plain"
        else torch.nn.Linear(2, 2)
    )  # a pickled module: refused by weights_only=True
    path = _save(obj, tmp_path / f"{payload}.pth")
    with pytest.raises(PretrainedLoadError, match="no state dict of tensors|weights_only"):
        load_pretrained(csnet50_model, path)


def test_checkpoint_of_an_unrelated_model(csnet50_model: torch.nn.Module, tmp_path: Path) -> None:
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=1000, img_size=32, depth=2)
    path = _save(vit.state_dict(), tmp_path / "vit.pth")
    before = {k: v.clone() for k, v in csnet50_model.state_dict().items()}
    with pytest.raises(PretrainedLoadError, match="no tensor of .* matches CSNet"):
        load_pretrained(csnet50_model, path)
    assert all(torch.equal(before[k], v) for k, v in csnet50_model.state_dict().items())


# ----------------------------------------------------------------------------- the other paper models

# (registered model, trunk checkpoint): each paper model keeps the named ResNet's unchanged parts.
# MSF-CA's multi-scale (Res2Net-like) blocks take Res2Net-50d weights; its attention-only variants ResNet-50.
OTHER_PAPER_MODELS = [
    ("msfca50", "res2net50d"),
    ("msfca50_pca_parallel", "resnet50"),
    ("fft_tiny", "resnet18"),
    ("tokenfusion_layer", "resnet101"),
    ("acanet18", "resnet18"),
]


@pytest.mark.parametrize("model_name,ckpt", OTHER_PAPER_MODELS)
def test_resnet_weights_load_into_other_paper_trunks(
    model_name: str, ckpt: str, checkpoints: _Checkpoints
) -> None:
    if not timm.is_model(model_name):
        pytest.skip(f"{model_name} is not registered (yet)")
    model = timm.create_model(model_name, num_classes=10)
    report = load_pretrained(model, checkpoints[ckpt])
    state = torch.load(checkpoints[ckpt], weights_only=True)
    prefix = getattr(model, "pretrained_trunk_prefix", "")
    if prefix and not hasattr(model, "pretrained_key_map"):
        # an unchanged ResNet trunk under one prefix: every tensor but the classifier loads
        _assert_trunk_equal(model, state, prefix, report)
        return
    # a modified ResNet (custom key map): every loaded tensor is the mapped checkpoint tensor, and the stem
    # and first block's first conv (unchanged in every paper) are loaded, whatever their new names
    mapped = model.pretrained_key_map(state) if hasattr(model, "pretrained_key_map") else state
    own = model.state_dict()
    assert report.loaded
    for key in report.loaded:
        assert torch.equal(own[key], mapped[key]), key
    for source in (next(iter(state)), "layer1.0.conv1.weight"):
        assert any(torch.equal(own[k], state[source]) for k in report.loaded), f"{source} not loaded"


def test_pretrained_true_asks_timm_for_hub_trunk_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pretrained=True`` (internet only) builds the trunk with timm's hub weights; nothing is
    downloaded here."""
    import backbones.csnet as csnet

    calls: list[tuple[str, object]] = []
    real = timm.create_model

    def fake_create_model(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        calls.append((name, pretrained))
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(csnet.timm, "create_model", fake_create_model)
    csnet.csnet50(pretrained=True, num_classes=3)
    csnet.csnet50_baseline(pretrained=False, num_classes=3)
    assert calls == [("resnet50", True), ("resnet50", False)]
