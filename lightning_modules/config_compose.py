"""Experiment files that name their bases: the ``_base_`` key, expanded before LightningCLI parses.

A row file states only what makes its row and names the files it builds on::

    # experiments/acanet/acanet18_cub_ce.yaml
    _base_: [_recipe.yaml, _cub.yaml]     # paths relative to this file; later files override earlier ones
    model:
      init_args:
        backbone: acanet18

``--config experiments/acanet/acanet18_cub_ce.yaml`` is expanded into ``--config <each base, recursively,
bases first> --config <the row>``, so jsonargparse's own composition of several ``--config`` files does
the merging (dicts merge key by key, lists replace, a new ``class_path`` replaces the old class), and
``--print_config`` shows the fully merged result. The CLI accepts and ignores the ``_base_`` key itself
(it is never printed or saved). The run name stays the row's stem (the last ``--config``).

Everything here is a pure function of the files; :func:`compose` gives the merged plain dict the files
state (what tools and tests compare), :func:`expand_config_args` the argument list for the parser.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

BASE_KEY = "_base_"


class ConfigComposeError(ValueError):
    """A broken ``_base_`` chain: missing file, cycle, or a file that is not a YAML mapping."""

    user_error = True


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML mapping stored in ``path`` (an empty file is ``{}``); a fresh copy on every call."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise ConfigComposeError(f"cannot read experiment file '{path}': {err}") from err
    # rows share their recipe files: parse each file once per content version (path, mtime, size)
    return copy.deepcopy(_read_yaml(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=1024)
def _read_yaml(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigComposeError(f"cannot read experiment file '{path}': {err}") from err
    except yaml.YAMLError as err:
        raise ConfigComposeError(f"experiment file '{path}' is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigComposeError(f"experiment file '{path}' must hold a mapping, not {type(data).__name__}")
    return data


def bases_of(path: str | os.PathLike) -> list[Path]:
    """The files named by ``path``'s ``_base_`` key, resolved relative to ``path``'s folder."""
    path = Path(path)
    value = read_yaml(path).get(BASE_KEY)
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigComposeError(f"'{BASE_KEY}' in '{path}' must be a file name or a list of file names")
    bases = []
    for name in names:
        base = (path.parent / name).resolve()
        if not base.is_file():
            raise ConfigComposeError(f"'{path}' names base file '{name}' ({base}), which does not exist")
        bases.append(base)
    return bases


def config_chain(path: str | os.PathLike) -> list[Path]:
    """Every file that makes ``path``, in load order: its bases (recursively, bases first), then itself.

    A file reached twice (two bases sharing one) is loaded once, at its first place; a cycle is refused.
    """
    chain: list[Path] = []

    def visit(file: Path, stack: tuple[Path, ...]) -> None:
        if file in stack:
            cycle = " -> ".join(str(p) for p in (*stack[stack.index(file) :], file))
            raise ConfigComposeError(f"'{BASE_KEY}' files form a cycle: {cycle}")
        for base in bases_of(file):
            visit(base, (*stack, file))
        if file not in chain:
            chain.append(file)

    path = Path(path)
    if not path.is_file():
        raise ConfigComposeError(f"experiment file '{path}' does not exist")
    visit(path.resolve(), ())
    # the row itself keeps the spelling it was given with (the run name is taken from it)
    chain[-1] = path
    return chain


def expand_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with every ``--config FILE`` (or ``--config=FILE``) preceded by FILE's bases.

    Values that are not existing files (a YAML string, a typo) are passed on unchanged for jsonargparse to
    judge.
    """
    out: list[str] = []
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        files = config_chain(value) if os.path.isfile(value) else [value]
        for file in files:
            out += ["--config", os.fspath(file)]
    return out


def _is_class(value: Any) -> bool:
    """A ``{class_path, init_args}`` node (a class to instantiate), as opposed to a plain dict value."""
    return isinstance(value, dict) and bool({"class_path", "init_args"} & value.keys())


def _merge_class(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    if "class_path" in new and new["class_path"] != old.get("class_path"):
        return dict(new)  # another class: its init_args belong to it alone
    out = dict(old)
    for key, value in new.items():
        if key in ("init_args", "dict_kwargs") and isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, _top=False)
        else:
            out[key] = value
    return out


def merge(into: dict[str, Any], update: dict[str, Any], _top: bool = True) -> dict[str, Any]:
    """A new dict: ``update`` merged into ``into`` as jsonargparse merges several ``--config`` files.

    Sections (``trainer``, ``model``, ...) and classes (``class_path``/``init_args`` nodes) merge key by
    key, a class node with another ``class_path`` replaces the old one whole; lists, scalars and plain dict
    values (``backbone_kwargs``) replace.
    """
    out = dict(into)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and (_is_class(value) or _is_class(old)):
            out[key] = _merge_class(old, value)
        elif isinstance(old, dict) and isinstance(value, dict) and _top:
            out[key] = merge(old, value, _top=False)
        else:
            out[key] = value
    return out


def compose(*paths: str | os.PathLike) -> dict[str, Any]:
    """The plain dict the files state: each path's chain merged in order, ``_base_`` keys dropped."""
    out: dict[str, Any] = {}
    for path in paths:
        for file in config_chain(path):
            data = dict(read_yaml(file))
            data.pop(BASE_KEY, None)
            out = merge(out, data)
    return out


def experiment_rows(experiments_dir: str | os.PathLike) -> dict[str, Path]:
    """Every runnable experiment file under ``experiments_dir`` by its stem (the run name).

    Rows are ``**/*.yaml`` except ``base.yaml``, the ``_*.yaml`` files rows build on (recipes, datasets) and
    anything under a ``_*/`` folder (``_sweeps/``: W&B sweep files, not configs).
    """
    root = Path(experiments_dir)
    rows: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if any(part.startswith("_") for part in rel.parts) or rel.as_posix() == "base.yaml":
            continue
        if path.stem in rows:
            raise ConfigComposeError(
                f"two experiment files share the run name '{path.stem}': {rows[path.stem]}, {path}"
            )
        rows[path.stem] = path
    return rows
