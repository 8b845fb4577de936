"""timm's model contract for every model this project registers, for every timm caller.

Iterates timm's registry (every ``@register_model`` function defined under ``backbones``), so a new model
is covered without editing this file. Cheap by construction: the per-model checks build on the meta device
(no memory, no compute); the forward/backward checks (gradients, checkpointing, features_only maps) run on
the smallest model of each family at 64 x 64 in test_models.py, and ``torch.compile`` runs in the slow
suite.
"""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from timm.models._registry import _model_entrypoints
from torch import nn

import backbones  # noqa: F401  (registers the models)
from backbones.errors import ModelConfigError

OURS = sorted(n for n, fn in _model_entrypoints.items() if fn.__module__.startswith("backbones."))
FAMILY = {n: _model_entrypoints[n].__module__ for n in OURS}
FAMILIES = sorted(set(FAMILY.values()))
OVERLAY = dict(mean=(0.5, 0.25, 0.125), crop_pct=0.5)


def _meta(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, device="meta", **kwargs)


@functools.cache
def smallest(family: str) -> str:
    """The model of ``family`` with the fewest parameters (counted on the meta device)."""
    names = [n for n in OURS if FAMILY[n] == family]
    return min(names, key=lambda n: sum(p.numel() for p in _meta(n, num_classes=7).parameters()))


def test_registry_lists_every_paper_family() -> None:
    modules = {f.rsplit(".", 1)[-1] for f in FAMILIES}
    assert {"acanet", "msfca", "fft", "csnet", "tokenfusion"} <= modules
    assert len(OURS) >= 40


@pytest.mark.parametrize("name", OURS)
def test_create_model_takes_every_timm_kwarg(name: str) -> None:
    """device/dtype/num_classes/drop_rate/pretrained_cfg_overlay, the pretrained cfg and the head API."""
    model = _meta(name, dtype=torch.bfloat16, num_classes=7, drop_rate=0.1, pretrained_cfg_overlay=OVERLAY)
    params = list(model.parameters())
    assert params and all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in params)
    assert all(b.device.type == "meta" for b in model.buffers())
    assert model.num_classes == 7 and _out_features(model) == {7}

    assert type(model).__module__.startswith("backbones."), type(model)  # our class, not a timm model
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    assert cfg["mean"] == OVERLAY["mean"] and cfg["crop_pct"] == OVERLAY["crop_pct"]
    assert len(cfg["input_size"]) == 3 and len(cfg["std"]) == 3 and cfg["url"] == ""
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, nn.Conv2d) and first.in_channels == cfg["input_size"][0], cfg["first_conv"]
    heads = _heads(model)
    assert heads and all(isinstance(h, nn.Linear) for h in heads), cfg["classifier"]
    assert {id(m) for m in _linears(model.get_classifier())} == {id(h) for h in heads}

    assert isinstance(model.num_features, int) and isinstance(model.head_hidden_size, int)
    if len(heads) == 1:  # one classifier reads the pre-logits vector
        assert heads[0].in_features == model.head_hidden_size
    model.set_grad_checkpointing(True)
    model.set_grad_checkpointing(False)
    model.reset_classifier(3)
    assert model.num_classes == 3 and _out_features(model) == {3}
    model.reset_classifier(0)
    assert model.num_classes == 0 and not _linears(model.get_classifier())


#: models whose forward_features returns tokens (B, N, C) (or, Conformer, a CNN map and tokens fused in the
#: head), i.e. the models timm's own tests check with their "non-standard" cfg test: the pooled width is
#: checked, not a spatial pool_size
TOKEN_FAMILIES = {
    "backbones.fft",
    "backbones.tokenfusion",
    "backbones.baselines.cvt",
    "backbones.baselines.conformer",
}


def _one_per_cfg() -> list[str]:
    """One model per (family, pretrained cfg): the variants of a family that share a cfg share its shapes
    (the MC models, whose last stage depends on the class count, have their own cfg)."""
    chosen: dict[tuple, str] = {}
    for name in OURS:
        cfg = timm.get_pretrained_cfg(name).to_dict()
        key = (FAMILY[name], str({k: v for k, v in cfg.items() if k not in ("architecture", "tag")}))
        chosen.setdefault(key, name)
    return sorted(chosen.values())


@pytest.mark.parametrize("name", _one_per_cfg())
def test_default_cfg_matches_the_model_at_its_input_size(name: str) -> None:
    """What timm's test_model_default_cfgs checks, on the meta device (shapes only, no compute): the
    unpooled output at cfg input_size has cfg pool_size and num_features; pre-logits and a classifier-less
    forward have head_hidden_size; global_pool='' gives the unpooled map (or is refused in one line)."""
    model = _meta(name).eval()
    cfg = model.pretrained_cfg
    x = torch.zeros(1, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    token = FAMILY[name] in TOKEN_FAMILIES or feats.ndim == 3
    if not token:
        assert feats.ndim == 4 and feats.shape[1] == model.num_features
        assert tuple(feats.shape[2:]) == tuple(cfg["pool_size"]), (
            f"pool_size {cfg['pool_size']} vs {feats.shape}"
        )
    elif feats.ndim == 3:
        assert feats.shape[-1] == model.num_features
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)
    if token:
        return
    try:
        model.reset_classifier(0, "")
    except ModelConfigError as err:
        assert "\n" not in str(err)
        return
    assert tuple(model(x).shape) == (1, model.num_features, *cfg["pool_size"])
    if "_mc" in name:  # MC-Loss models: the last stage is xi x num_classes wide, so num_classes >= 1
        return
    bare = _meta(name, num_classes=0, global_pool="")
    assert tuple(bare(x).shape) == (1, bare.num_features, *cfg["pool_size"])


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _heads(model: nn.Module) -> list[nn.Module]:
    """The classifier module(s) the pretrained cfg names (one name, or a tuple for two-head models)."""
    names = model.pretrained_cfg["classifier"]
    return [model.get_submodule(n) for n in ([names] if isinstance(names, str) else names)]


def _out_features(model: nn.Module) -> set[int]:
    return {m.out_features for m in _linears(model.get_classifier())}


@pytest.mark.parametrize("name", OURS)
def test_pretrained_true_is_refused_and_cfg_dict_accepted(name: str) -> None:
    if "csnet" not in FAMILY[name]:  # CS-Net's pretrained=True means the trunk's timm hub weights
        with pytest.raises(ModelConfigError):
            _meta(name, pretrained=True, num_classes=7)
    cfg = dict(timm.get_pretrained_cfg(name).to_dict(), std=(1.0, 1.0, 1.0))
    assert _meta(name, num_classes=7, pretrained_cfg=cfg).pretrained_cfg["std"] == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("name", OURS)
def test_features_only_builds_or_says_why_not(name: str) -> None:
    try:
        model = _meta(name, features_only=True)
    except ModelConfigError as err:
        assert "features_only is not supported" in str(err) and "\n" not in str(err)
        return
    info = model.feature_info
    assert len(info.channels()) >= 3 and info.reduction() == sorted(info.reduction())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_torch_compile_smoke(family: str) -> None:
    """The smallest model of each family compiles (inductor on CPU) and matches eager in eval mode."""
    model = timm.create_model(smallest(family), num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
