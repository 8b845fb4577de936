"""Imports run one way: backbones <- lightning_modules <- (main.py, tools, benchmarks).

Datamodules never import backbones; backbones never import Lightning; tools and benchmarks never import
main.py. Two checks: every ``import`` statement of a layer, including those inside functions (static), and
importing every module of a layer in a fresh interpreter whose import system refuses the layers above.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: layer -> top-level packages it must not import
FORBIDDEN = {
    "backbones": {
        "lightning",
        "pytorch_lightning",
        "lightning_modules",
        "datamodules",
        "tools",
        "benchmarks",
    },
    "datamodules": {"backbones", "lightning_modules", "tools", "benchmarks"},
    "lightning_modules": {"tools", "benchmarks"},
    "tools": {"benchmarks"},
    "benchmarks": {"tools"},
}
for _banned in FORBIDDEN.values():
    _banned.add("main")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_statement_reaches_up(layer):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[layer]
    ]
    assert not bad, "\n".join(bad)


_BLOCKED_IMPORT = """
import importlib, pkgutil, sys

# argv: one "layer=blocked1,blocked2" phase per layer, lowest layer first. torch/timm/lightning are imported
# once; the project's own modules are dropped from sys.modules between phases, so every layer is imported
# afresh and an upward import inside it goes through the finder below.
PROJECT = {"backbones", "datamodules", "lightning_modules", "tools", "benchmarks", "main"}
blocked, layer = set(), None

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is a layer above {layer}")
        return None

sys.meta_path.insert(0, Refuse())
for phase in sys.argv[1:]:
    layer, _, names = phase.partition("=")
    for mod in [m for m in sys.modules if m.split(".")[0] in PROJECT]:
        del sys.modules[mod]
    blocked = set(names.split(","))
    package = importlib.import_module(layer)
    for info in pkgutil.walk_packages(package.__path__, layer + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    print("ok", layer)
"""


def _run_blocked(phases: list[str], cwd: Path, pythonpath: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT, *phases],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(pythonpath)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


RUNTIME_LAYERS = ["backbones", "datamodules", "lightning_modules"]


def test_layers_import_with_the_layers_above_blocked():
    """Every module of each layer imports in one fresh interpreter while the layers above it are refused."""
    phases = [f"{layer}={','.join(sorted(FORBIDDEN[layer]))}" for layer in RUNTIME_LAYERS]
    # a loaded machine can take minutes to import torch + timm + lightning
    proc = _run_blocked(phases, ROOT, ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [w for layer in RUNTIME_LAYERS for w in ("ok", layer)], proc.stdout


def test_blocker_refuses_an_upward_import(tmp_path):
    """The runtime check can fail: a module importing a blocked package is refused, also in a later phase
    whose lower layer was already imported (the project's modules are dropped from the cache between)."""
    low = tmp_path / "backbones"
    low.mkdir()
    (low / "__init__.py").write_text("")
    (low / "bad.py").write_text("import json\n")
    proc = _run_blocked(["backbones=json"], tmp_path, tmp_path, timeout=120)
    assert proc.returncode != 0 and "json is a layer above backbones" in proc.stderr
    (low / "bad.py").write_text("")
    (tmp_path / "datamodules").mkdir()
    (tmp_path / "datamodules" / "__init__.py").write_text("import backbones.bad\n")
    proc = _run_blocked(["backbones=json", "datamodules=backbones"], tmp_path, tmp_path, timeout=120)
    assert proc.stdout.split() == ["ok", "backbones"], proc.stdout
    assert proc.returncode != 0 and "backbones is a layer above datamodules" in proc.stderr
