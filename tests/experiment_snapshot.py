"""Snapshot of every experiment row's configuration: what the files state and what the CLI resolves.

``tests/snapshots/experiments_resolved.json`` holds, for each row (``experiments/**/<row>.yaml`` except
``base.yaml`` and the ``_*.yaml`` recipe/dataset files), keyed by its path under ``experiments/`` without
``.yaml``:

* ``stated``: the row's ``_base_`` chain + the row, merged as plain YAML dicts
  (:func:`lightning_modules.config_compose.compose`): what the experiment files state;
* ``resolved``: the configuration the project's CLI parser resolves for ``--config <row>`` (base.yaml and
  the defaults of every class included), as ``--print_config`` prints it, minus the volatile ``config`` key
  and base.yaml's run infrastructure (``trainer.callbacks/plugins/logger``: other work edits base.yaml, and
  tests/test_experiments.py checks separately that every row keeps base.yaml's callbacks).

tests/test_experiments.py compares today's files with it: ``stated`` exactly (every row, pure YAML, fast),
``resolved`` restricted to the keys the snapshot holds (one row per recipe/dataset chain in the default
suite, every row in ``make test-slow`` and in this script)
(so a new argument with a default, e.g. a datamodule's new option, does not
break it, while a changed value or a vanished key does). Updating the snapshot is a deliberate act, for a
change of a recipe made on purpose; review the diff of the JSON file before committing it::

    .venv/bin/python -m tests.experiment_snapshot --update      # rewrite the snapshot from today's files
    .venv/bin/python -m tests.experiment_snapshot --update 'fft/*'   # only the rows you changed (globs)
    .venv/bin/python -m tests.experiment_snapshot               # print the differences, exit 1 if any
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.config_compose import compose, expand_config_args, experiment_rows

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
BASE = EXPERIMENTS / "base.yaml"
SNAPSHOT = ROOT / "tests" / "snapshots" / "experiments_resolved.json"
VOLATILE = ("config",)
BASE_INFRASTRUCTURE = ("callbacks", "plugins", "logger")  # trainer keys only base.yaml states


def row_files() -> list[Path]:
    """Every runnable experiment file (not base.yaml, not the ``_*.yaml`` files rows build on)."""
    return sorted(experiment_rows(EXPERIMENTS).values())


def row_key(path: Path) -> str:
    return path.relative_to(EXPERIMENTS).with_suffix("").as_posix()


def _cli_class() -> type:
    try:
        from lightning_modules.cli import PaperCLI
    except ImportError:  # the CLI still lives in main.py
        from main import PaperCLI
    return PaperCLI


def make_parser() -> Any:
    """The project CLI's parser (base.yaml as default config), built once; nothing is instantiated."""

    class _ParseOnly(_cli_class()):  # type: ignore[misc, valid-type]
        def _set_seed(self) -> None:
            pass

        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def after_instantiate_classes(self) -> None:
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = _ParseOnly(
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            parser_kwargs={"default_config_files": [str(BASE)]},
            args=["--config", str(EXPERIMENTS / "quickstart.yaml")],  # any row: the CLI parses once
            run=False,
        )
    return cli.parser


def resolve(parser: Any, path: Path, strip_base_infrastructure: bool = True) -> dict[str, Any]:
    """What the parser resolves for ``--config path``, as a plain dict (the ``--print_config`` dump)."""
    cfg = parser.parse_args(expand_config_args(["--config", str(path)]))
    dumped = yaml.safe_load(parser.dump(cfg, skip_unset=False))
    for key in VOLATILE:
        dumped.pop(key, None)
    stated_trainer = compose(path).get("trainer") or {}
    for key in BASE_INFRASTRUCTURE if strip_base_infrastructure else ():
        if key not in stated_trainer:
            dumped.get("trainer", {}).pop(key, None)
    return dumped


def current(patterns: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Today's ``{row: {stated, resolved}}`` for every row file (or those matching a glob of ``patterns``)."""
    parser = make_parser()
    rows = [p for p in row_files() if _selected(row_key(p), patterns)]
    return {row_key(p): {"stated": compose(p), "resolved": resolve(parser, p)} for p in rows}


def _selected(key: str, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(key, pat) for pat in patterns)


def load() -> dict[str, dict[str, Any]]:
    return json.loads(SNAPSHOT.read_text())


def write(data: dict[str, dict[str, Any]]) -> None:
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def diff(old: Any, new: Any, prefix: str = "", restricted: bool = False) -> Iterator[str]:
    """Readable differences ``key: old -> new``; ``restricted``: keys only in ``new`` are not reported."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in new:
                yield f"{where}: {json.dumps(old[key])} -> (missing)"
            elif key not in old:
                if not restricted:
                    yield f"{where}: (missing) -> {json.dumps(new[key])}"
            else:
                yield from diff(old[key], new[key], where, restricted)
    elif old != new:
        yield f"{prefix}: {json.dumps(old)} -> {json.dumps(new)}"


def differences(snapshot: dict, now: dict) -> list[str]:
    """Every difference between the snapshot and today's files, one readable line each."""
    lines = [f"{row}: row in the snapshot but no file" for row in sorted(set(snapshot) - set(now))]
    lines += [f"{row}: new row file not in the snapshot" for row in sorted(set(now) - set(snapshot))]
    for row in sorted(set(snapshot) & set(now)):
        old, new = snapshot[row], now[row]
        lines += [f"{row} [stated] {d}" for d in diff(old["stated"], new["stated"])]
        lines += [f"{row} [resolved] {d}" for d in diff(old["resolved"], new["resolved"], restricted=True)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--update", action="store_true", help="rewrite the snapshot from today's files")
    parser.add_argument(
        "rows",
        nargs="*",
        help="only these rows (globs of the keys, e.g. 'fft/*' 'acanet/resnet18_cub_*'); others are kept",
    )
    args = parser.parse_args(argv)
    now = current(args.rows)
    old = {k: v for k, v in load().items() if _selected(k, args.rows)}
    if args.update:
        kept = {k: v for k, v in load().items() if not _selected(k, args.rows)}
        write({**kept, **now})
        print(f"wrote {len(now)} rows ({len(kept)} kept as they were) to {SNAPSHOT.relative_to(ROOT)}")
        return 0
    lines = differences(old, now)
    print("\n".join(lines) if lines else f"{len(now)} rows match the snapshot")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
