"""Plain ``nn.Module`` backbones for the five papers, registered in timm's model registry.

Importing this package registers every model (``timm.create_model("acanet18")`` etc.). Each paper's
model family lives in one module here; reusable building blocks live in :mod:`backbones.layers`.
No module in this package imports Lightning.
"""

import importlib
import pkgutil

from backbones.pretrained import load_pretrained

# Import every model-family module so that its ``@register_model`` factories run.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in {"layers", "pretrained", "errors"} and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["load_pretrained"]
