"""Train experiment rows over several seeds, one ``main.py fit`` after another (no W&B account needed).

    python -m tools.seeds experiments/acanet/resnet18_cub_ce.yaml --seeds 0 1 2
    python -m tools.seeds experiments/acanet/resnet18_cub_*.yaml --seeds 0 1 2 -- --trainer.max_epochs 5
    python -m tools.seeds experiments/acanet/resnet18_cub_ce.yaml --seeds 0 1 2 --dry_run   # print only

Each run is ``python main.py fit --config <row> --seed_everything <seed> [args after --]`` and lands in
``<default_root_dir>/<row>/seed<seed>/``; rows x seeds run in order, row by row. The loop stops at the
first run that fails and exits with its exit code (a seed already trained is refused by ``main.py``, so
rerun the remaining seeds only, or resume one with ``-- --ckpt_path last``). The same grid on a cluster
with W&B agents: ``experiments/_sweeps/<paper>_table<N>.yaml`` (README, "Seeds and W&B").
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "main.py"


def commands(rows: Sequence[str], seeds: Sequence[int], extra: Sequence[str]) -> list[list[str]]:
    """One ``main.py fit`` command line per row and seed."""
    return [
        [sys.executable, str(MAIN), "fit", "--config", row, "--seed_everything", str(seed), *extra]
        for row in rows
        for seed in seeds
    ]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="python -m tools.seeds",
        description="Run `main.py fit` for each row and seed, in order; stop at the first failure.",
        epilog="Arguments after `--` are passed to every main.py fit.",
    )
    parser.add_argument("rows", nargs="+", help="experiment row files (experiments/<paper>/<row>.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, required=True, help="seeds, e.g. 0 1 2")
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="print the commands, run none")
    args = parser.parse_args(own)
    missing = [r for r in args.rows if not Path(r).is_file()]
    if missing:
        print(f"error: no such experiment file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        print(f"error: --seeds must be distinct non-negative integers, got {args.seeds}", file=sys.stderr)
        return 2
    todo = commands(args.rows, args.seeds, extra)
    for i, cmd in enumerate(todo, 1):
        line = shlex.join(cmd)
        if args.dry_run:
            print(line)
            continue
        print(f"[{i}/{len(todo)}] {line}", file=sys.stderr, flush=True)
        code = subprocess.run(cmd).returncode
        if code != 0:
            print(
                f"error: run {i} of {len(todo)} failed with exit code {code}: {line}; stopped "
                f"({i - 1} finished, {len(todo) - i} not started).",
                file=sys.stderr,
            )
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
