"""The model contract, checked for every model this project registers in timm (the timm tests' way).

For each registered model: output shape, finite outputs, a gradient for every parameter, the timm head
interface (``forward_features``/``forward_head``/``num_features``/``reset_classifier``) and bf16 autocast.
Models above ``BIG`` parameters (FFT-Base/Large, TokenFusion, MSF-CA version A...) run under ``-m slow``;
their parameter counts are checked cheaply on the meta device by each paper's own test file.
"""

from __future__ import annotations

import pkgutil

import pytest
import timm
import torch

import backbones

FAMILIES = [
    m.name
    for m in pkgutil.iter_modules(backbones.__path__)
    if m.name not in {"layers", "pretrained", "errors"}
]
MODELS = sorted({name for fam in FAMILIES for name in timm.list_models(module=fam)})
BIG = 40e6
NUM_CLASSES = 7


def _params_on_meta(name: str) -> int:
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=NUM_CLASSES)
    return sum(p.numel() for p in model.parameters())


PARAMS = {name: _params_on_meta(name) for name in MODELS}
# every model up to BIG, plus the smallest model of each family so that every family runs by default
DEFAULT = {m for m in MODELS if PARAMS[m] <= BIG} | {
    min(timm.list_models(module=fam), key=PARAMS.__getitem__)
    for fam in FAMILIES
    if timm.list_models(module=fam)
}


def test_every_paper_family_registers_models():
    assert {"acanet", "msfca", "fft", "csnet", "tokenfusion"} <= set(FAMILIES)
    for fam in ("acanet", "msfca", "fft", "csnet", "tokenfusion"):
        assert timm.list_models(module=fam), f"backbones/{fam}.py registers no model"


def check_contract(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    logits = model.forward_head(features)
    assert logits.shape == (2, NUM_CLASSES)
    assert pooled.shape[0] == 2 and pooled.shape[-1] == (
        getattr(model, "head_hidden_size", None) or model.num_features
    )
    assert torch.isfinite(logits).all()
    (logits.square().mean() + features.float().mean() * 0).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"

    model.eval()  # forward == forward_head(forward_features(x)): deterministic in eval mode (no dropout)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), model.forward_head(model.forward_features(x)), atol=1e-4, rtol=1e-4
        )
    model.train()

    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (2, 3)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", sorted(DEFAULT))
def test_model_contract(name: str):
    check_contract(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in MODELS if m not in DEFAULT])
def test_model_contract_big(name: str):
    check_contract(name)
