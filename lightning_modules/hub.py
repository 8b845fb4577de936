"""``pretrained: true`` without network: one fast, clear error instead of a minute of download retries."""

from __future__ import annotations

import os
import socket

import timm
import torch


class PretrainedUnavailableError(RuntimeError):
    """timm's hub weights were asked for, are not cached, and the hub cannot be reached."""

    user_error = True


def weights_in_cache(name: str) -> bool:
    """Whether timm's default weights of ``name`` are already in the Hugging Face or torch.hub cache."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for file in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, file), str):
                return True
    if cfg.url:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url.split("?")[0]))
        return os.path.isfile(cached)
    return False


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One TCP connection attempt (no retries); ``False`` when offline or ``HF_HUB_OFFLINE`` is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def require_hub_weights(name: str) -> None:
    """Raise :class:`PretrainedUnavailableError` when ``pretrained: true`` for ``name`` cannot succeed."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return  # timm raises its own clear error for a model without pretrained weights
    if weights_in_cache(name) or hub_reachable():
        return
    source = cfg.hf_hub_id or cfg.url
    raise PretrainedUnavailableError(
        f"pretrained: true needs timm's weights for '{name}' ({source}), which are not in the local cache, "
        "and "
        "the hub cannot be reached (no network). Either download them once on a machine with internet "
        f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\", then copy "
        "~/.cache/huggingface), or give a local file: model.init_args.pretrained: /path/to/weights.pth "
        "(loaded with weights_only=True; see backbones/pretrained.py)."
    )
