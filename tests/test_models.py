"""The model contract, checked for every model this project registers in timm (the timm tests' way).

For each registered model: output shape, finite outputs, a gradient for every parameter, the timm head
interface (``forward_features``/``forward_head``/``num_features``/``reset_classifier``) and bf16 autocast.
The default suite checks the smallest model of each family (nothing is built at collection time); every
registered model runs under ``-m slow``. tests/test_registry_contract.py checks the construction contract of
every model on the meta device.
"""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from timm.models._registry import _model_entrypoints

import backbones  # noqa: F401  (registers the models)
from backbones.errors import ModelConfigError

OURS = sorted(n for n, fn in _model_entrypoints.items() if fn.__module__.startswith("backbones."))
FAMILY = {n: _model_entrypoints[n].__module__ for n in OURS}
FAMILIES = sorted(set(FAMILY.values()))
NUM_CLASSES = 7


@functools.cache
def smallest(family: str) -> str:
    """The family's model with the fewest parameters, counted on the meta device (built when first asked)."""

    def count(name: str) -> int:
        model = timm.create_model(name, num_classes=NUM_CLASSES, device="meta")
        return sum(p.numel() for p in model.parameters())

    return min((n for n in OURS if FAMILY[n] == family), key=count)


def test_every_paper_family_registers_its_own_models():
    """Each paper module registers models (each name builds its module's own class: checked for every model
    in tests/test_registry_contract.py, which builds them all on the meta device)."""
    for fam in ("acanet", "msfca", "fft", "csnet", "tokenfusion"):
        assert f"backbones.{fam}" in FAMILIES, f"backbones/{fam}.py registers no model"
    assert HEAVY_FAMILIES <= set(FAMILIES)  # the slow-only list names real families


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
    model.set_grad_checkpointing(True)  # checkpointed blocks still give every parameter a gradient
    model.zero_grad(set_to_none=True)
    model(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), name
    model.set_grad_checkpointing(False)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out.float()).all()
    try:  # features_only: the maps at the reductions feature_info states, or a one-line reason why not
        fmodel = timm.create_model(name, features_only=True).eval()
    except ModelConfigError as err:
        assert "features_only is not supported" in str(err) and "\n" not in str(err)
        return
    with torch.no_grad():
        maps = fmodel(x)
    assert [m.shape[1] for m in maps] == fmodel.feature_info.channels()
    assert [64 // m.shape[-1] for m in maps] == fmodel.feature_info.reduction()


# families whose smallest registered model is ViT-B/ResNet-50-x4 sized (81-132 M parameters): a full-width
# contract is a minute of CPU each, so it runs under -m slow; their reduced-width contract (same classes, a
# few M parameters) is in the default suite (tests/test_baselines.py, tests/test_tokenfusion.py)
HEAVY_FAMILIES = {
    "backbones.baselines.conformer",
    "backbones.baselines.hornet",
    "backbones.baselines.vig",
    "backbones.tokenfusion",
}


@pytest.mark.parametrize(
    "family",
    [pytest.param(f, marks=pytest.mark.slow) if f in HEAVY_FAMILIES else f for f in FAMILIES],
)
def test_model_contract(family: str):
    """Default suite: the smallest model of each family (the others run under ``-m slow``)."""
    check_contract(smallest(family))


@pytest.mark.slow
@pytest.mark.parametrize("name", OURS)
def test_model_contract_every_model(name: str):
    check_contract(name)
