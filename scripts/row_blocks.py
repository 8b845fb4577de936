"""Write (or check) the ``row:`` blocks and the W&B sweep files from ``tools/published/<paper>.csv``.

``python -m scripts.row_blocks`` rewrites the blocks in place (after the header comment of each
``experiments/<paper>/*.yaml`` row; an existing block is replaced, nothing else in the file changes) and
writes one sweep file per paper table, ``experiments/_sweeps/<paper>_table<N>.yaml`` (a W&B grid over the
table's row files x seeds 0 1 2); ``--check`` only lists the files that differ and exits 1 if any does.
Run it after editing a CSV.

The rules (also checked by tests/test_row_metadata.py): an experiment's CSV lines are those whose
``experiment`` column names its file stem (alternatives separated by ``|``); ``tables`` are their ``table``
ids in CSV order, ``label`` and ``dataset`` those of the first line, ``published`` every numeric ``value``
by ``metric`` (the first line wins when two tables round one figure differently). Rows the CSV does not
list take their block from :data:`UNLISTED` (from the files' header comments), with ``published: {}``.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
PUBLISHED = ROOT / "tools" / "published"

#: rows with no CSV line: their place from the file's header comment (no figure is ever made up here)
UNLISTED: dict[str, dict[str, Any]] = {
    "csnet50_cub": {
        "tables": [],
        "label": "CS-Net (ResNet-50), our option",
        "dataset": "cub",
        "comment": "not in the paper (abstract only; it uses ResNet-101): no table, no figure",
    },
    "fft_base_cifar10_literal": {
        "tables": ["III", "IV", "V"],
        "label": "Ours",
        "dataset": "cifar10",
        "variant": "literal",
        "comment": "the paper's figures are those of fft_base_cifar10 (same row, batch-64 twin); the CSV "
        "lists them there",
    },
    "fft_large_cifar10": {
        "tables": ["II"],
        "label": "FFT-Large",
        "dataset": "cifar10",
        "comment": "Table II gives only its size (fft.csv: model:fft_large), no accuracy",
    },
    "fft_tiny_cifar10": {
        "tables": ["II"],
        "label": "FFT-Tiny",
        "dataset": "cifar10",
        "comment": "Table II gives only its size (fft.csv: model:fft_tiny), no accuracy",
    },
}
#: the stem prefix of each paper's own model (its ablation rows get a ``variant``)
OWN_MODEL = {
    "acanet": "acanet18",
    "csnet": "csnet101",
    "fft": "fft_base",
    "msfca": "msfca50",
    "tokenfusion": "tokenfusion",
}
ACANET_LOSSES = ("ce", "focal", "mcloss", "center", "asoftmax", "coco", "lgm", "lmcl")


def papers() -> list[str]:
    return sorted(p.stem for p in PUBLISHED.glob("*.csv"))


def row_files(paper: str) -> list[Path]:
    return sorted(p for p in (EXPERIMENTS / paper).glob("*.yaml") if not p.name.startswith("_"))


def csv_lines(paper: str) -> list[dict[str, str]]:
    with open(PUBLISHED / f"{paper}.csv", newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def block_from_csv(lines: list[dict[str, str]], experiment: str) -> dict[str, Any] | None:
    """``tables``, ``label``, ``dataset``, ``published`` of ``experiment`` by the rules above."""
    mine = [r for r in lines if experiment in (r.get("experiment") or "").split("|")]
    if not mine:
        return None
    published: dict[str, str] = {}  # the CSV's text of each figure (52.50 stays 52.50 in the YAML)
    for r in mine:
        if _number(r.get("value")) is not None:
            published.setdefault(r["metric"], r["value"].strip())
    return {
        "tables": list(dict.fromkeys(r["table"] for r in mine)),
        "label": mine[0]["row"],
        "dataset": mine[0]["dataset"],
        "published": published,
    }


def variant_of(paper: str, path: Path, dataset: str) -> str | None:
    """The ablation tag of a paper's own model: the stem without the model prefix, the dataset and (ACANet)
    the loss (``msfca50_msf_pca_serial_A_ceramic`` -> ``msf_pca_serial_A``); ``None`` for other models."""
    prefix = OWN_MODEL.get(paper)
    if not prefix or not path.stem.startswith(prefix):
        return None
    tokens = [t for t in path.stem[len(prefix) :].split("_") if t and t != dataset]
    if paper == "acanet" and tokens and tokens[-1] in ACANET_LOSSES:
        tokens = tokens[:-1]
    return "_".join(tokens) or None


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(paper: str, block: dict[str, Any]) -> str:
    tables = ", ".join(_quote(t) for t in block["tables"])
    figures = ", ".join(f"{k}: {v}" for k, v in block["published"].items())
    lines = [
        "row:                      # this file's place in the paper (lightning_modules/row_info.py)",
        f"  paper: {paper}",
        *(f"  # {line}" for line in textwrap.wrap(block.get("comment") or "", 104)),
        f"  tables: [{tables}]",
        f"  label: {_quote(block['label'])}",
        f"  dataset: {block['dataset']}",
    ]
    if block.get("variant"):
        lines.append(f"  variant: {block['variant']}")
    if len(figures) + 15 <= 110:
        lines.append(f"  published: {{{figures}}}")
    else:  # one figure a line where the flow form would pass 110 columns
        lines += ["  published:", *(f"    {k}: {v}" for k, v in block["published"].items())]
    return "\n".join(lines) + "\n"


def expected_block(paper: str, path: Path, lines: list[dict[str, str]]) -> str:
    block = block_from_csv(lines, path.stem)
    if block is None:
        if path.stem not in UNLISTED:
            raise SystemExit(f"{path}: no line in tools/published/{paper}.csv and no entry in UNLISTED")
        block = {**UNLISTED[path.stem], "published": {}}
    else:
        block["variant"] = variant_of(paper, path, block["dataset"])
    return render(paper, block)


_BLOCK = re.compile(r"^row:.*\n(?:[ \t]+.*\n|[ \t]*\n)*", re.MULTILINE)


def with_block(text: str, block: str) -> str:
    """``text`` with its ``row:`` block replaced by ``block`` (inserted after the header comment if none)."""
    if _BLOCK.search(text):
        return _BLOCK.sub(lambda _: block, text, count=1)
    lines = text.splitlines(keepends=True)
    head = 0
    while head < len(lines) and lines[head].startswith("#"):
        head += 1
    return "".join(lines[:head]) + block + "".join(lines[head:])


SWEEPS = EXPERIMENTS / "_sweeps"
SEEDS = (0, 1, 2)


def table_rows(paper: str, lines: list[dict[str, str]]) -> dict[str, list[Path]]:
    """Row files of each table: those its CSV lines name (``experiment`` or ``baseline``, so a compared
    pair is swept together) and the unlisted rows that place themselves in it."""
    files = {p.stem: p for p in row_files(paper)}
    tables: dict[str, list[Path]] = {}
    for r in lines:
        names = [*(r.get("experiment") or "").split("|"), *(r.get("baseline") or "").split("|")]
        found = tables.setdefault(r["table"], [])
        found += [files[n] for n in names if n in files and files[n] not in found]
    for stem, info in UNLISTED.items():
        for table in info["tables"]:
            if stem in files and files[stem] not in tables.setdefault(table, []):
                tables[table].append(files[stem])
    return {t: rows for t, rows in tables.items() if rows}


def render_sweep(paper: str, table: str, rows: list[Path]) -> str:
    rel = [p.relative_to(ROOT).as_posix() for p in rows]
    seeds, here = " ".join(map(str, SEEDS)), (SWEEPS / f"{paper}_table{table}.yaml").relative_to(ROOT)
    lines = [
        f"# W&B sweep: {paper} Table {table}, every row x seeds {seeds} (grid, one fit each).",
        "# Generated by `python -m scripts.row_blocks` from tools/published; do not edit by hand.",
        f"# From the repository root: wandb sweep {here}",
        "#   then on each machine: wandb agent <entity>/<project>/<sweep id>",
        "# Each fit runs `main.py fit --config=<row> --seed_everything=<seed>` into runs/<row>/seed<seed>/.",
        f"name: {paper}-table{table}",
        "program: main.py",
        "method: grid",
        "metric: {name: val/acc1, goal: maximize}",
        "parameters:",
        "  config:",
        "    values:",
        *(f"      - {r}" for r in rel),
        "  seed_everything:",
        f"    values: [{', '.join(map(str, SEEDS))}]",
        "command:  # ${args}: --config=<row> --seed_everything=<seed> (jsonargparse needs the hyphens)",
        *(f"  - {part}" for part in ("${env}", "${interpreter}", "${program}", "fit", "${args}")),
    ]
    return "\n".join(lines) + "\n"


def sweep_files() -> dict[Path, str]:
    out = {}
    for paper in papers():
        for table, rows in table_rows(paper, csv_lines(paper)).items():
            out[SWEEPS / f"{paper}_table{table}.yaml"] = render_sweep(paper, table, rows)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list the files whose block differs")
    args = parser.parse_args(argv)
    stale = []
    for paper in papers():
        lines = csv_lines(paper)
        for path in row_files(paper):
            text = path.read_text()
            new = with_block(text, expected_block(paper, path, lines))
            if new != text:
                stale.append(path)
                if not args.check:
                    path.write_text(new)
    for path, text in sweep_files().items():
        if not path.is_file() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(exist_ok=True)
                path.write_text(text)
    known = set(sweep_files())
    stale += [p for p in sorted(SWEEPS.glob("*.yaml")) if p not in known]  # a table that no longer exists
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
