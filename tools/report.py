"""A paper's result tables with our figures next to the published ones (markdown and CSV).

``python -m tools.report --paper acanet --runs runs/`` reads

* the published figures from ``tools/published/<paper>.csv`` (one row per table cell: ``table, row,
  dataset, metric, value, experiment, baseline, note[, flag]``; ``experiment`` names the experiment file
  stem(s) that reproduce the cell, alternatives separated by ``|``, or ``model:<timm name>:<classes>:<size>``
  for complexity-only cells; ``baseline`` is the other run of a Wilcoxon cell; ``flag`` marks a doubt about
  the published figure itself, e.g. a paper typo (``value`` then holds the corrected figure and ``flag`` the
  printed one and why) or a figure repeated from another table; the report marks such cells ``[flag]``);
* every finished run under the ``--runs`` folders: CSV logger folders (``metrics.csv`` with
  ``config.yaml`` / ``hparams.yaml`` nearby), and W&B run folders (``wandb/offline-run-*/run-*.wandb``
  or online ``wandb/run-*/``, read directly, no W&B account needed).

A run belongs to the experiment whose file stem is the name of one of its folders (``main.py`` puts a
run in ``<default_root_dir>/<experiment stem>/``) or its W&B run name; otherwise its saved
``config.yaml`` is compared with every experiment row (``experiments/**/*.yaml`` composed with its
``_base_`` files; the row whose ``model`` and ``data`` values all appear in the run's config, the most
specific one winning). When several runs match
one experiment, the newest one with test metrics is used.

Our values of a cell come from one checkpoint each, never mixed: ``fit --test_after_fit`` tests the
best-validation and the last checkpoint (``test/best/<metric>``, ``test/last/<metric>``), and the report
shows them in separate columns (``ours: best`` and ``ours: last``; a CSV line has ``ours`` with its
``origin`` and ``ours_last``). A run without ``test/best/*`` fills the ``best`` column from one other source
for all of its metrics, marked: ``test/<metric>`` of ``main.py test --ckpt_path`` (``(test)``: the
checkpoint that command was given), else validation figures (``(val)``: ``val/<metric>_best`` when the run
logs ``*_best`` keys, else the last epoch's ``val/<metric>``). A metric that source lacks stays empty
rather than being taken from another checkpoint. Accuracy-like metrics are shown in percent like the papers.
``params_m`` and ``gmacs`` are measured with ``tools.profile`` when ``--complexity`` is given, and
``latency_ms`` only with ``--latency`` (hardware-dependent). Wilcoxon cells (``auc_r_plus`` ...) are
computed from the two runs' ``predictions.pt`` (written by ``TestAnalysis``).

Example::

    python -m tools.report --paper acanet --runs runs/ --csv acanet_report.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.config_compose import compose, experiment_rows
from tools.common import ToolError, run_main

PAPERS = {
    "acanet": "ACANet (Tan, Xu): Tables 2-4, top-1 accuracy (%) on the test split",
    "msfca": "MSF-CA (Zhuang et al.): Tables I-VI, VIII on the 24-class ceramic set",
    "fft": "FFT (Zhu et al.): Tables II-V",
    "csnet": "CS-Net (Chen, Yu, Liang): abstract only, no published figures",
    "tokenfusion": "TokenFusion (Choi et al.): Tables 1-4, ImageNet",
}
PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
PERCENT = {"acc1", "acc2", "acc3", "acc5", "precision", "recall", "f1", "kappa", "auroc", "ap"}
_SKIP_DIRS = {"logs", "wandb", "files", "checkpoints", "analysis", "tmp", "lightning_logs"}


# ------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One finished (or running) training run found on disk."""

    path: Path
    names: list[str]  # candidate experiment names, most specific first
    metrics: dict[str, float]
    config: dict[str, Any] | None = None
    mtime: float = 0.0
    source: str = "csv"
    predictions: Path | None = None
    experiment: str | None = field(default=None)


def read_metrics_csv(path: Path) -> dict[str, float]:
    """Last non-empty value of every column of a Lightning CSVLogger ``metrics.csv``."""
    values: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and value not in (None, ""):
                    try:
                        values[key] = float(value)
                    except ValueError:
                        continue
                    if key == "epoch":  # test rows log the tested checkpoint's epoch: keep the furthest too
                        values["epoch_max"] = max(values.get("epoch_max", 0.0), values[key])
    return values


def read_wandb_file(path: Path) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """Summary metrics, config and run name from a W&B ``run-<id>.wandb`` transaction log.

    The file is a LevelDB-style log (7-byte ``:W&B`` header, 32 KiB blocks of records with a 7-byte
    header ``crc32, length, type``; FULL/FIRST/MIDDLE/LAST fragments) of ``wandb_internal_pb2.Record``
    protobufs; history, summary, config and run records are read.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ToolError(f"'{path}' is not a W&B run file")
    block, pos, pending, records = 32768, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = [chunk]
        elif kind == 3:
            pending.append(chunk)
        elif kind == 4:
            records.append(b"".join([*pending, chunk]))
    metrics: dict[str, float] = {}
    config: dict[str, Any] = {}
    name = None

    def take(items: Iterable[Any], into: dict[str, Any], numbers: bool) -> None:
        for item in items:
            # wandb >= 0.2x sends a plain key as a one-element nested_key; longer paths are media
            # metadata (an image's size under "test/roc_curves" -> "size"), not metrics
            if numbers and len(item.nested_key) > 1:
                continue
            key = item.key or "/".join(item.nested_key)
            try:
                value = json.loads(item.value_json)
            except ValueError:
                continue
            if numbers:
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    into[key] = float(value)
            else:
                into[key] = value

    for raw in records:
        record = pb.Record()
        try:
            record.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - a truncated last record of a crashed run
            continue
        kind = record.WhichOneof("record_type")
        if kind == "history":
            take(record.history.item, metrics, True)
        elif kind == "summary":
            take(record.summary.update, metrics, True)
        elif kind == "config":
            take(record.config.update, config, False)
        elif kind == "run":
            name = record.run.display_name or name
            take(record.run.config.update, config, False)
    config = {
        k: (v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v)
        for k, v in config.items()
    }
    config.pop("_wandb", None)
    return metrics, config, name


def _folder_names(path: Path, root: Path) -> list[str]:
    names = []
    for parent in [path, *path.parents]:
        if parent == root.parent:
            break
        n = parent.name
        if n and n not in _SKIP_DIRS and not n.startswith(("version_", "offline-run-", "run-")):
            names.append(n)
        if parent == root:
            break
    return names


def _nearest(path: Path, root: Path, filename: str) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / filename).is_file():
            return parent / filename
        if parent == root:
            break
    return None


def _load_yaml(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def find_runs(roots: Sequence[str | os.PathLike]) -> list[Run]:
    """Every CSV-logger and W&B run under ``roots``."""
    runs = []
    for root_like in roots:
        root = Path(root_like).resolve()
        if not root.is_dir():
            raise ToolError(f"--runs '{root_like}' is not a directory")
        for metrics_csv in root.rglob("metrics.csv"):
            folder = metrics_csv.parent
            config = _load_yaml(_nearest(folder, root, "config.yaml"))
            preds = _predictions_near(folder, root)
            runs.append(
                Run(
                    folder,
                    _folder_names(folder, root),
                    read_metrics_csv(metrics_csv),
                    config,
                    metrics_csv.stat().st_mtime,
                    "csv",
                    preds,
                )
            )
        for wandb_file in root.rglob("run-*.wandb"):
            folder = wandb_file.parent
            try:
                metrics, config, name = read_wandb_file(wandb_file)
            except ToolError:
                continue
            names = ([name] if name else []) + _folder_names(folder, root)
            saved = _load_yaml(_nearest(folder, root, "config.yaml"))
            runs.append(
                Run(
                    folder,
                    names,
                    metrics,
                    saved or config or None,
                    wandb_file.stat().st_mtime,
                    "wandb",
                    _predictions_near(folder, root),
                )
            )
    return runs


def _predictions_near(folder: Path, root: Path) -> Path | None:
    """The newest ``predictions.pt`` in the run folder (the nearest ancestor that holds a config or preds)."""
    for parent in [folder, *folder.parents]:
        found = sorted(parent.rglob("predictions.pt"), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
        if parent == root or (parent / "config.yaml").is_file():
            break
    return None


# --------------------------------------------------------------------------------- experiment match
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "init_args":
                out.update(_flatten(value, prefix))
            else:
                out.update(_flatten(value, f"{prefix}{key}."))
    else:
        out[prefix.rstrip(".")] = tree
    return out


def _same(a: Any, b: Any, key: str) -> bool:
    if key.endswith("class_path") and isinstance(a, str) and isinstance(b, str):
        return a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def identify_by_config(config: dict[str, Any], experiments_dir: Path) -> str | None:
    """The experiment file whose ``model`` and ``data`` values all appear in ``config`` (most specific)."""
    run = _flatten({k: config.get(k) for k in ("model", "data") if k in config})
    best, best_score = None, 0
    for path in experiment_rows(experiments_dir).values():
        exp = compose(path)  # the row with its `_base_` recipe and dataset files
        leaves = _flatten({k: exp[k] for k in ("model", "data") if k in exp})
        leaves = {k: v for k, v in leaves.items() if not k.endswith(("root", "num_workers"))}
        if not leaves or any(k not in run or not _same(run[k], v, k) for k, v in leaves.items()):
            continue
        if len(leaves) > best_score:
            best, best_score = path.stem, len(leaves)
    return best


def assign_experiments(runs: list[Run], known: set[str], experiments_dir: Path) -> dict[str, Run]:
    """Map experiment name -> newest run (runs with test metrics first)."""
    by_name: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        name = next((n for n in run.names if n in known), None)
        if name is None and run.config:
            name = identify_by_config(run.config, experiments_dir)
        run.experiment = name or (run.names[0] if run.names else None)
        if run.experiment:
            by_name[run.experiment].append(run)
    chosen = {}
    for name, candidates in by_name.items():
        chosen[name] = max(candidates, key=lambda r: (any(k.startswith("test/") for k in r.metrics), r.mtime))
    return chosen


# ------------------------------------------------------------------------------------------- values
def run_source(run: Run) -> str:
    """The one source of a run's ``best`` column: ``best`` (``test/best/*``), ``test`` (``test/*`` of a
    ``main.py test`` run), ``val_best`` (``val/*_best``) or ``val`` (the last epoch's ``val/*``)."""
    keys = list(run.metrics)
    if any(k.startswith("test/best/") for k in keys):
        return "best"
    if any(k.startswith("test/") and not k.startswith("test/last/") for k in keys):
        return "test"
    if any(k.startswith("val/") and k.endswith("_best") for k in keys):
        return "val_best"
    return "val"


_SOURCE_KEY = {
    "best": "test/best/{}",
    "last": "test/last/{}",
    "test": "test/{}",
    "val_best": "val/{}_best",
    "val": "val/{}",
}


def metric_value(run: Run, metric: str, checkpoint: str = "best") -> tuple[float | None, str]:
    """Our value of ``metric`` for a run, and its origin (``best``, ``last``, ``test`` or ``val``).

    ``checkpoint="last"`` reads ``test/last/<metric>`` only; ``"best"`` reads the run's one
    :func:`run_source` (never a different checkpoint per metric).
    """
    source = "last" if checkpoint == "last" else run_source(run)
    value = run.metrics.get(_SOURCE_KEY[source].format(metric))
    if value is None or math.isnan(value):
        return None, ""
    origin = "val" if source.startswith("val") else source
    return (value * 100.0 if metric in PERCENT and value <= 1.0 else value), origin


def run_progress(run: Run) -> str:
    """``"<epochs run>/<max_epochs>"`` for a run that stopped before its ``trainer.max_epochs``,
    else ``""``."""
    max_epochs = ((run.config or {}).get("trainer") or {}).get("max_epochs")
    epoch = run.metrics.get("epoch_max", run.metrics.get("epoch"))
    if not isinstance(max_epochs, int) or max_epochs < 1 or epoch is None or math.isnan(epoch):
        return ""
    done = int(epoch) + 1  # Lightning logs the 0-based epoch of every row
    return f"{done}/{max_epochs}" if done < max_epochs else ""


@dataclass
class Cell:
    """One published figure and ours."""

    table: str
    row: str
    dataset: str
    metric: str
    published: str
    ours: str = ""  # the best-validation checkpoint (or the run's one other source: see ``origin``)
    origin: str = ""
    ours_last: str = ""  # the last checkpoint (``test/last/<metric>``)
    run: str = ""
    experiment: str = ""
    note: str = ""
    unfinished: str = ""  # "epochs run/max_epochs" when the run stopped before max_epochs
    flag: str = ""  # a doubt about the published figure itself (a paper typo, a repeated figure)

    def delta(self) -> str:
        try:
            return f"{float(self.ours) - float(self.published):+.2f}"
        except ValueError:
            return ""


def read_published(paper: str) -> list[dict[str, str]]:
    """Rows of ``tools/published/<paper>.csv``."""
    path = PUBLISHED_DIR / f"{paper}.csv"
    if not path.is_file():
        raise ToolError(f"no published figures for '{paper}' ({path} missing); papers: {sorted(PAPERS)}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build_cells(
    paper: str,
    runs: list[Run],
    experiments_dir: Path = Path("experiments"),
    complexity: bool = False,
    latency: bool = False,
    device: str = "cpu",
) -> list[Cell]:
    """Pair every published figure of ``paper`` with our value (empty when we have no run)."""
    published = read_published(paper)
    known = {alt for row in published for alt in row["experiment"].split("|") if alt}
    known |= set(experiment_rows(experiments_dir))
    chosen = assign_experiments(runs, known, experiments_dir)
    complexity_cache: dict[str, Any] = {}
    wilcoxon_cache: dict[tuple[str, str], dict[str, Any]] = {}
    cells = []
    for row in published:
        cell = Cell(
            row["table"],
            row["row"],
            row["dataset"],
            row["metric"],
            row["value"],
            note=row.get("note") or "",
            flag=row.get("flag") or "",
        )
        alternatives = [a for a in row["experiment"].split("|") if a]
        run = next((chosen[a] for a in alternatives if a in chosen), None)
        cell.experiment = next(
            (a for a in alternatives if a in chosen), alternatives[0] if alternatives else ""
        )
        metric = row["metric"]
        if metric in ("params_m", "gmacs", "latency_ms"):
            if complexity or (latency and metric == "latency_ms"):
                _fill_complexity(
                    cell, alternatives, experiments_dir, metric, latency, device, complexity_cache
                )
        elif metric.startswith(("auc_", "ap_")):
            base_alts = [a for a in row.get("baseline", "").split("|") if a]
            base = next((chosen[a] for a in base_alts if a in chosen), None)
            if run is not None and base is not None and run.predictions and base.predictions:
                key = (str(base.predictions), str(run.predictions))
                if key not in wilcoxon_cache:
                    from tools.wilcoxon import compare_runs

                    wilcoxon_cache[key] = compare_runs(*key)
                result = wilcoxon_cache[key][metric.split("_", 1)[0]]
                field_name = metric.split("_", 1)[1]
                value = getattr(result, field_name)
                cell.ours = ("Yes" if value else "No") if field_name == "significant" else f"{value:.4g}"
                cell.origin, cell.run = "test", f"{base.path} vs {run.path}"
        elif run is not None:
            value, origin = metric_value(run, metric)
            if value is not None:
                cell.ours, cell.origin, cell.run = f"{value:.2f}", origin, str(run.path)
                cell.unfinished = run_progress(run)
            last, _ = metric_value(run, metric, "last")
            if last is not None:
                cell.ours_last, cell.run = f"{last:.2f}", str(run.path)
        cells.append(cell)
    return cells


def _fill_complexity(
    cell: Cell,
    alternatives: list[str],
    experiments_dir: Path,
    metric: str,
    latency: bool,
    device: str,
    cache: dict[str, Any],
) -> None:
    from tools.common import load_network
    from tools.profile import profile_network

    for alt in alternatives:
        if alt not in cache:
            if alt.startswith("model:"):
                _, name, classes, size = ([*alt.split(":"), "", ""])[:4]
                loaded = load_network(model=name, num_classes=int(classes) if classes else None)
                image_size = int(size) if size else None
            elif alt in experiment_rows(experiments_dir):
                loaded = load_network(configs=[str(experiment_rows(experiments_dir)[alt])])
                image_size = None
            else:
                continue
            cache[alt] = profile_network(loaded, image_size, device=device, runs=20 if latency else 0)
        prof = cache[alt]
        value = {"params_m": prof.params_m, "gmacs": prof.gmacs, "latency_ms": prof.latency_ms}[metric]
        if value is not None:
            cell.ours, cell.origin, cell.experiment = f"{value:.3f}", "profile", alt
        return


# ------------------------------------------------------------------------------------------- output
def to_markdown(cells: list[Cell], paper: str) -> str:
    """One markdown table per paper table: rows x (dataset, metric, checkpoint), paper / ours columns.

    Every (dataset, metric) has an ``ours: best`` column (the best-validation checkpoint, or the run's one
    marked other source) and, where any run logged ``test/last/*``, an ``ours: last`` column beside it.
    """
    out = [f"# {PAPERS.get(paper, paper)}", ""]
    tables: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        tables[cell.table].append(cell)
    for table, group in tables.items():
        with_last = {(c.dataset, c.metric) for c in group if c.ours_last}
        columns = [
            (d, m, ckpt)
            for d, m in dict.fromkeys((c.dataset, c.metric) for c in group)
            for ckpt in (("best", "last") if (d, m) in with_last else ("best",))
        ]
        rows = list(dict.fromkeys(c.row for c in group))
        lookup = {(c.row, c.dataset, c.metric): c for c in group}
        header = ["row"] + [
            (f"{d} {m}" if d != "-" else m) + f" (paper / ours: {ckpt})" for d, m, ckpt in columns
        ]
        out += [f"## Table {table}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in rows:
            cells_txt = [row]
            for d, m, ckpt in columns:
                c = lookup.get((row, d, m))
                if c is None:
                    cells_txt.append("")
                    continue
                ours = (c.ours_last if ckpt == "last" else c.ours) or "-"
                if ckpt == "best" and c.ours and c.origin in ("val", "test"):
                    ours += f" ({c.origin})"
                if c.unfinished:
                    ours += f" (unfinished: {c.unfinished} epochs)"
                published = (c.published or "n/a") + (" [flag]" if c.flag else "")
                cells_txt.append(f"{published} / {ours}")
            out.append("| " + " | ".join(cells_txt) + " |")
        notes = sorted({c.note for c in group if c.note})
        notes += sorted({f"[flag] {c.row}, {c.metric} {c.published}: {c.flag}" for c in group if c.flag})
        out += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    found = sum(1 for c in cells if c.ours)
    out.append(
        f"{found} of {len(cells)} published figures have a value of ours ('-': no finished run found)."
    )
    return "\n".join(out)


def write_csv(cells: list[Cell], path: str | os.PathLike) -> None:
    """Long-format CSV: one line per published figure with ours and the difference."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "table",
                "row",
                "dataset",
                "metric",
                "published",
                "ours",
                "delta",
                "origin",
                "ours_last",
                "experiment",
                "run",
                "note",
                "unfinished",
                "flag",
            ]
        )
        for c in cells:
            writer.writerow(
                [
                    c.table,
                    c.row,
                    c.dataset,
                    c.metric,
                    c.published,
                    c.ours,
                    c.delta(),
                    c.origin,
                    c.ours_last,
                    c.experiment,
                    c.run,
                    c.note,
                    c.unfinished,
                    c.flag,
                ]
            )


def main(argv: Sequence[str] | None = None) -> list[Cell]:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", required=True, choices=sorted(PAPERS))
    parser.add_argument("--runs", nargs="+", default=["runs"], help="folders holding finished runs")
    parser.add_argument("--experiments", default="experiments", help="experiment YAML folder")
    parser.add_argument("--complexity", action="store_true", help="measure params/MACs of each experiment")
    parser.add_argument("--latency", action="store_true", help="also measure latency (this machine)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--csv", default=None, help="also write the long-format CSV here")
    args = parser.parse_args(argv)
    experiments = Path(args.experiments)
    if not experiments.is_dir() and not experiments.is_absolute():
        from tools.common import ROOT

        experiments = ROOT / experiments
    runs = find_runs(args.runs)
    cells = build_cells(args.paper, runs, experiments, args.complexity, args.latency, args.device)
    print(to_markdown(cells, args.paper))
    if args.csv:
        write_csv(cells, args.csv)
        print(f"wrote {args.csv}")
    return cells


if __name__ == "__main__":
    raise SystemExit(run_main(main))
