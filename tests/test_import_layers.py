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

BLOCKED = set(sys.argv[2].split(","))

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is a layer above {sys.argv[1]}")
        return None

sys.meta_path.insert(0, Refuse())
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
    if info.name.endswith("__main__"):
        continue
    importlib.import_module(info.name)
print("ok")
"""


@pytest.mark.parametrize("layer", ["backbones", "datamodules", "lightning_modules"])
def test_layer_imports_with_the_layers_above_blocked(layer):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    blocked = ",".join(sorted(FORBIDDEN[layer]))
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT, layer, blocked],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a loaded machine can take minutes to import torch + timm + lightning
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_blocker_refuses_an_upward_import(tmp_path):
    """The runtime check can fail: a module that imports a blocked package is refused."""
    pkg = tmp_path / "lowlayer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("import json\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT, "lowlayer", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "is a layer above lowlayer" in proc.stderr
