"""A paper's result tables with our figures over seeds next to the published ones, and the paper's
claimed gains tested against our seeds (markdown, long CSV, W&B Table).

``python -m tools.report --paper acanet --runs runs/`` reads

* the published figures from ``tools/published/<paper>.csv`` (one row per table cell: ``table, row,
  dataset, metric, value, experiment, baseline, note[, flag]``; ``experiment`` names the experiment file
  stem(s) that reproduce the cell, alternatives separated by ``|``, or ``model:<timm name>:<classes>:<size>``
  for complexity-only cells; ``flag`` marks a doubt about the published figure itself, e.g. a paper typo
  (``value`` then holds the corrected figure and ``flag`` the printed one and why) or a figure repeated from
  another table; the report marks such cells ``[flag]``). ``baseline`` is, on a Wilcoxon cell
  (``auc_*``/``ap_*``), the other run; on any other cell, the rows of the same table this row is claimed
  better than (``;`` between several), each a gain the paper's text claims and its own figures show;
* every finished run under the ``--runs`` folders (default ``runs``): CSV logger folders (``metrics.csv``
  with ``config.yaml`` / ``hparams.yaml`` nearby), and W&B run folders (``wandb/offline-run-*/run-*.wandb``
  or online ``wandb/run-*/``, read directly, no W&B account needed);
* with ``--wandb ENTITY/PROJECT``, the finished runs of that W&B project through ``wandb.Api()`` (config,
  including ``seed_everything`` and ``row``, and summary metrics; fits and their ``main.py test`` runs
  are told apart by the W&B name ``<row>-seed<N>[/<record>]``). It needs an account and the network:
  with ``WANDB_MODE=offline``, without an API key or without a connection, one line says so and W&B is
  skipped (exit code 2 only when W&B was the only source).

A run belongs to the experiment whose file stem is the name of one of its folders (``main.py`` puts a
run in ``<default_root_dir>/<experiment stem>/seed<N>/``) or its W&B run name (``<stem>-seed<N>``);
otherwise its saved ``config.yaml`` is compared with every experiment row (``experiments/**/*.yaml``
composed with its ``_base_`` files; the row whose ``model`` and ``data`` values all appear in the run's
config, the most specific one winning).

**Seeds.** A run's seed is ``seed_everything`` of its fit's ``config.yaml`` (Lightning writes the resolved
seed there). The records of one training run (its CSV and W&B loggers, its ``eval/<sub>-<ckpt>/``
records of ``main.py test``) are one seed; of them the one with the best source below is used (the
newest on a tie). Two training runs of one experiment with the same seed (e.g. ``runs/`` and a copy
under ``/other/runs``) are refused with one message naming both folders: move or delete one, nothing
is picked silently. A cell's ``ours`` is the mean over the row's seeds; with several seeds the table
shows ``mean ± std (n) [95 % CI]`` (sample std, ddof 1; Student-t interval of the mean,
``scipy.stats.ttest_1samp(...).confidence_interval``); a table where every row has one seed keeps the
plain values. The CSV has ``n, mean, std, ci_low, ci_high, seeds`` (and ``*_last``).

Our values of a cell come from one checkpoint each, never mixed: ``fit --test_after_fit`` tests the
best-validation and the last checkpoint (``test/best/<metric>``, ``test/last/<metric>``), and the report
shows them in separate columns (``ours: best`` and ``ours: last``; a CSV line has ``ours`` with its
``origin`` and ``ours_last``). A run without ``test/best/*`` fills the ``best`` column from one other source
for all of its metrics, marked: ``test/<metric>`` of ``main.py test --ckpt_path`` (``(test)``: the
checkpoint that command was given), else validation figures (``(val)``: ``val/<metric>_best`` when the run
logs ``*_best`` keys, else the last epoch's ``val/<metric>``). A metric that source lacks stays empty
rather than being taken from another checkpoint; over seeds, the cell uses the best source any seed has
and names the seeds left out for lacking it. Accuracy-like metrics are shown in percent like the papers.
``params_m`` and ``gmacs`` are measured with ``tools.profile`` when ``--complexity`` is given, and
``latency_ms`` only with ``--latency`` (hardware-dependent). Wilcoxon cells (``auc_r_plus`` ...) are
computed from the two runs' ``predictions.pt`` (written by ``TestAnalysis``), of one seed both rows have
(named in the cell's run when there are several).

**Claimed gains.** For each ``baseline`` of a non-Wilcoxon cell the report gives our gap (row - compared
row, ``best`` column), its 95 % interval and a verdict: a paired t-test by seed
(``scipy.stats.ttest_rel``) when both rows have the same seeds, else Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``); ``supported`` (interval above 0), ``contradicted`` (below
0), ``not resolved (interval contains 0)``, ``n < 2`` (a row with fewer than two seeds), ``not
comparable`` (one row's values from another source). The claims in ``tools/published`` come from the
papers' texts (each claimed cell's ``note`` says where): ACANet Tables 2-3, ACANet vs ResNet-18 per loss
(not Focal on Cars: the paper calls it poor there) and Table 4, the complete structure vs each ablation;
MSF-CA Tables I, II, IV, each module vs its baseline (not +PA: "the same accuracy"; not Table IV Top-2
ties/drops), Table VI the versions the text calls best, Table VIII ours vs every model; FFT Tables III-IV,
ours vs every model and ResNet18_vit vs ViT and ResNet18_linear, Table V ours vs each ablation;
TokenFusion Table 1, layer-by-layer channel-wise vs every other row and late vs early fusion (top-1).
Not claims here: CS-Net (abstract only, no figures), TokenFusion Table 2 (its ResNet-50 row has no
experiment file) and Table 4 (its claim compares with Table 2, another table).

**Output.** Markdown on stdout (each table, then its claimed gains with runs of both rows); ``--csv``
writes the long format: one line per published figure, or per (figure, compared row) for a claimed
cell, with ``vs_row, paper_gap, gap, gap_ci_low, gap_ci_high, n_vs, p, test, verdict``. ``--wandb_log
[PROJECT]`` logs the same lines as the W&B Table ``report/<paper>`` and the gains as
``report/<paper>_gains``: into the active W&B run when the report runs inside one (``wandb.run``), else
into a new run of PROJECT (default ``paperbench``; ``job_type`` report; offline without an account).

Example::

    python -m tools.report --paper acanet --runs runs/ --csv acanet_report.csv
    python -m tools.report --paper msfca --wandb my-team/paperbench --wandb_log
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import re
import struct
import sys
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
_SEED_DIR = re.compile(r"seed\d+|unseeded")  # main.py's <row>/seed<N>/ level (lightning_modules.run_folder)
_EVAL_DIR = "eval"  # <run>/eval/<sub>-<ckpt>/: the records of `main.py test/validate` of that run
COMPLEXITY = ("params_m", "gmacs", "latency_ms")


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
    seed: int | None = None  # ``seed_everything`` of the fit's config (None: not recorded / ``false``)
    folder: str = ""  # the training run this record belongs to (fit and its ``eval/*`` records share it)


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
        if (
            n
            and n not in _SKIP_DIRS
            and not n.startswith(("version_", "offline-run-", "run-"))
            and not _SEED_DIR.fullmatch(n)
        ):
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


def _config_seed(config: dict[str, Any] | None) -> int | None:
    """``seed_everything`` of a saved config (a W&B config nests the CLI's under ``config``)."""
    if not config:
        return None
    seed = config.get("seed_everything")
    if seed is None and isinstance(config.get("config"), dict):
        seed = config["config"].get("seed_everything")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _training_folder(folder: Path, root: Path) -> Path:
    """The fit's run folder of a logger folder: above ``eval/`` for an evaluation record, else the nearest
    folder with a ``config.yaml`` (the run folder ``main.py`` writes), else the logger folder itself."""
    rel = folder.relative_to(root).parts if folder.is_relative_to(root) else ()
    if _EVAL_DIR in rel:
        return root.joinpath(*rel[: rel.index(_EVAL_DIR)])
    found = _nearest(folder, root, "config.yaml")
    return found.parent if found is not None else folder


def _finish_run(run: Run, root: Path) -> Run:
    train = _training_folder(run.path, root)
    run.folder = str(train)
    fit_config = _load_yaml(train / "config.yaml") if (train / "config.yaml").is_file() else None
    run.seed = _config_seed(fit_config) if fit_config is not None else _config_seed(run.config)
    return run


def find_runs(roots: Sequence[str | os.PathLike]) -> list[Run]:
    """Every CSV-logger and W&B run under ``roots``, with its seed and training folder."""
    runs = []
    for root_like in roots:
        root = Path(root_like).resolve()
        if not root.is_dir():
            raise ToolError(f"--runs '{root_like}' is not a directory")
        for metrics_csv in root.rglob("metrics.csv"):
            folder = metrics_csv.parent
            config = _load_yaml(_nearest(folder, root, "config.yaml"))
            preds = _predictions_near(folder, root)
            run = Run(
                folder,
                _folder_names(folder, root),
                read_metrics_csv(metrics_csv),
                config,
                metrics_csv.stat().st_mtime,
                "csv",
                preds,
            )
            runs.append(_finish_run(run, root))
        for wandb_file in root.rglob("run-*.wandb"):
            folder = wandb_file.parent
            try:
                metrics, config, name = read_wandb_file(wandb_file)
            except ToolError:
                continue
            names = _name_candidates(name) + _folder_names(folder, root)
            saved = _load_yaml(_nearest(folder, root, "config.yaml"))
            run = Run(
                folder,
                names,
                metrics,
                saved or _plain_config(config) or None,
                wandb_file.stat().st_mtime,
                "wandb",
                _predictions_near(folder, root),
            )
            runs.append(_finish_run(run, root))
    return runs


def _predictions_near(folder: Path, root: Path) -> Path | None:
    """The ``predictions.pt`` of the run folder (the nearest ancestor that holds a config or preds): the
    best checkpoint's (``eval/test-best/``, as the ``best`` column) when ``test_after_fit`` wrote both,
    else the newest."""
    for parent in [folder, *folder.parents]:
        found = sorted(
            parent.rglob("predictions.pt"), key=lambda p: (p.parent.name == "test-best", p.stat().st_mtime)
        )
        if found:
            return found[-1]
        if parent == root or (parent / "config.yaml").is_file():
            break
    return None


def _name_candidates(name: str | None) -> list[str]:
    """A W&B run name and the row name inside it: ``row-seed42`` (a fit), ``row-seed42/test-best`` (an
    evaluation) -> ``[name, "row-seed42", "row"]``."""
    if not name:
        return []
    first = name.split("/")[0]
    row = re.sub(r"-(seed\d+|unseeded)$", "", first)
    return list(dict.fromkeys([name, first, row]))


# ------------------------------------------------------------------------------------ runs from W&B
def _plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """A W&B run config as a saved ``config.yaml``: the CLI config (logged under ``config``) with the
    run's other keys (``row``, ``paper``) beside it; ``{"value": x}`` wrappers unwrapped."""
    config = {
        k: (v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v)
        for k, v in config.items()
        if not k.startswith("_")
    }
    inner = config.get("config")
    if isinstance(inner, dict) and ("model" in inner or "trainer" in inner):
        return {**{k: v for k, v in config.items() if k != "config"}, **inner}
    return config


def run_from_api(api_run: Any) -> Run:
    """One :class:`Run` from a ``wandb.apis.public.Run`` (its name, config and summary metrics).

    Fits and their ``main.py test`` runs share the training key ``wandb:<entity>/<project>/<row-seedN>``
    (the W&B name before ``/``), as a fit folder and its ``eval/`` records do on disk.
    """
    config = _plain_config(dict(api_run.config or {}))
    metrics = {
        k: float(v)
        for k, v in dict(api_run.summary_metrics or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    entity_project = "/".join(api_run.path[:2])
    row = config.get("row") if isinstance(config.get("row"), dict) else {}
    names = _name_candidates(api_run.name) + [
        v for v in (row.get("experiment"), row.get("name")) if isinstance(v, str)
    ]
    try:
        from datetime import datetime

        mtime = datetime.fromisoformat(str(api_run.created_at).replace("Z", "+00:00")).timestamp()
    except ValueError:
        mtime = 0.0
    run = Run(Path(f"wandb:{'/'.join(api_run.path)}"), names, metrics, config or None, mtime, "wandb-api")
    run.seed = _config_seed(config)
    run.folder = f"wandb:{entity_project}/{(api_run.name or api_run.id).split('/')[0]}"
    return run


def read_wandb_runs(path: str) -> list[Run] | None:
    """The finished runs of the W&B project ``ENTITY/PROJECT`` through ``wandb.Api()``; ``None`` (and
    one line on stderr saying why) when W&B cannot be read: offline mode, no account, no network."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun", "disabled"):
        print(f"W&B: WANDB_MODE={mode}: --wandb {path} needs the W&B server; skipped", file=sys.stderr)
        return None
    if path.count("/") != 1 or not all(path.split("/")):
        raise ToolError(f"--wandb '{path}': expected ENTITY/PROJECT (e.g. my-team/paperbench)")
    try:
        import wandb

        api = wandb.Api(timeout=30)
        # lazy=False (wandb >= 0.21): config and summary come with the listing, not one request per run
        eager = {"lazy": False} if "lazy" in inspect.signature(api.runs).parameters else {}
        found = [r for r in api.runs(path, filters={"state": "finished"}, **eager) if r.state == "finished"]
    except Exception as err:  # noqa: BLE001 - no key (UsageError), no network, unknown project
        reason = " ".join(str(err).split()) or type(err).__name__
        print(f"W&B: cannot read {path} ({reason}); skipped", file=sys.stderr)
        return None
    return [run_from_api(r) for r in found]


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


def _seed_key(seed: int | None) -> tuple[bool, int]:
    return (seed is None, seed or 0)


def group_runs(
    runs: list[Run], known: set[str], experiments_dir: Path, needed: set[str] | None = None
) -> dict[str, dict[int | None, Run]]:
    """Map experiment name -> {seed: run}, seeds sorted.

    The records of one training run (its CSV and W&B loggers, its ``eval/*`` records) are one seed: of
    them the one with the most preferred :func:`run_source` is used (the fit's ``test/best/*`` of
    ``--test_after_fit``, else a ``main.py test`` record, else validation figures), the newest on a tie.
    Two training runs of one experiment with the same seed (or both without a recorded seed) are refused
    (a :class:`ToolError` naming both folders) for the experiments in ``needed`` (all when ``None``);
    nothing is picked silently.
    """
    per_training: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        name = next((n for n in run.names if n in known), None)
        if name is None and run.config:
            name = identify_by_config(run.config, experiments_dir)
        run.experiment = name or (run.names[0] if run.names else None)
        if run.experiment:
            per_training[(run.experiment, run.folder or str(run.path))].append(run)
    groups: dict[str, dict[int | None, Run]] = defaultdict(dict)
    clashes = []
    for (name, _), candidates in per_training.items():
        run = max(candidates, key=lambda r: (-_SOURCE_RANK[run_source(r)], r.mtime))
        other = groups[name].get(run.seed)
        if other is not None:
            if needed is None or name in needed:
                clashes.append((name, run.seed, other, run))
            run = max(other, run, key=lambda r: r.mtime)
        groups[name][run.seed] = run
    if clashes:
        name, seed, a, b = clashes[0]
        more = f" ({len(clashes) - 1} more such pairs)" if len(clashes) > 1 else ""
        seed_txt = f"seed {seed}" if seed is not None else "no recorded seed"
        raise ToolError(
            f"two runs of '{name}' with {seed_txt}: {a.folder or a.path} and {b.folder or b.path}{more}; "
            "move or delete one (the report does not pick one of the same seed)"
        )
    return {
        name: dict(sorted(by_seed.items(), key=lambda kv: _seed_key(kv[0])))
        for name, by_seed in groups.items()
    }


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


_SOURCE_RANK = {"best": 0, "test": 1, "val_best": 2, "val": 3}
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
class Stats:
    """Our values of one cell over seeds: ``values`` per seed, mean, sample std (ddof 1) and the 95 %
    Student-t interval of the mean (``None`` for n = 1)."""

    values: dict[int | None, float]
    mean: float
    std: float | None = None
    ci: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return len(self.values)


def summarize(values: dict[int | None, float]) -> Stats:
    """Mean, sample std and 95 % t interval (``scipy.stats.ttest_1samp(...).confidence_interval``)."""
    import numpy as np
    from scipy import stats

    data = np.array(list(values.values()), dtype=float)
    out = Stats(dict(values), float(data.mean()))
    if len(data) > 1:
        out.std = float(data.std(ddof=1))
        if out.std == 0.0:  # every seed the same value: the interval is that value
            out.ci = (out.mean, out.mean)
        else:
            ci = stats.ttest_1samp(data, 0.0).confidence_interval(0.95)
            out.ci = (float(ci.low), float(ci.high))
    return out


_ORIGIN_RANK = {"best": 0, "test": 1, "val": 2}


def _seed_stats(
    by_seed: dict[int | None, Run], metric: str, checkpoint: str
) -> tuple[Stats | None, str, list]:
    """Our values of ``metric`` over seeds from one source: the preferred ``best`` > ``test`` > ``val``
    that any seed has; seeds without a value of that source are returned as left out."""
    per = {seed: metric_value(run, metric, checkpoint) for seed, run in by_seed.items()}
    per = {seed: vo for seed, vo in per.items() if vo[0] is not None}
    if not per:
        return None, "", []
    origin = min((o for _, o in per.values()), key=lambda o: _ORIGIN_RANK.get(o, 9))
    values = {seed: v for seed, (v, o) in per.items() if o == origin}
    return summarize(values), origin, [seed for seed in by_seed if seed not in values]


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
    experiments: str = ""  # the CSV's ``experiment`` (alternatives separated by ``|``)
    baseline: str = ""  # the CSV's ``baseline``: the rows this row is claimed better than (``;``)
    best: Stats | None = None  # over seeds, the ``ours`` column
    last: Stats | None = None  # over seeds, the ``ours_last`` column
    left_out: list[int | None] = field(default_factory=list)  # seeds without a value of ``origin``

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
    """Pair every published figure of ``paper`` with our values over seeds (empty when we have no run)."""
    published = read_published(paper)
    needed = {alt for row in published for alt in row["experiment"].split("|") if alt}
    needed |= {
        alt for row in published for b in row.get("baseline", "").split(";") for alt in b.split("|") if alt
    }
    known = needed | set(experiment_rows(experiments_dir))
    groups = group_runs(runs, known, experiments_dir, needed)
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
            experiments=row["experiment"],
            baseline=row.get("baseline") or "",
        )
        alternatives = [a for a in row["experiment"].split("|") if a]
        by_seed = next((groups[a] for a in alternatives if a in groups), None)
        cell.experiment = next(
            (a for a in alternatives if a in groups), alternatives[0] if alternatives else ""
        )
        metric = row["metric"]
        if metric in COMPLEXITY:
            if complexity or (latency and metric == "latency_ms"):
                _fill_complexity(
                    cell, alternatives, experiments_dir, metric, latency, device, complexity_cache
                )
        elif metric.startswith(("auc_", "ap_")):
            base_alts = [a for a in row.get("baseline", "").split("|") if a]
            base_seeds = next((groups[a] for a in base_alts if a in groups), None)
            pair = _wilcoxon_pair(by_seed, base_seeds)
            if pair is not None:
                run, base, seed_txt = pair
                key = (str(base.predictions), str(run.predictions))
                if key not in wilcoxon_cache:
                    from tools.wilcoxon import compare_runs

                    wilcoxon_cache[key] = compare_runs(*key)
                result = wilcoxon_cache[key][metric.split("_", 1)[0]]
                field_name = metric.split("_", 1)[1]
                value = getattr(result, field_name)
                cell.ours = ("Yes" if value else "No") if field_name == "significant" else f"{value:.4g}"
                cell.origin, cell.run = "test", f"{base.path} vs {run.path}{seed_txt}"
        elif by_seed:
            cell.best, cell.origin, cell.left_out = _seed_stats(by_seed, metric, "best")
            cell.last, _, _ = _seed_stats(by_seed, metric, "last")
            used = [by_seed[s] for s in (cell.best or cell.last).values] if (cell.best or cell.last) else []
            if cell.best is not None:
                cell.ours = f"{cell.best.mean:.2f}"
                progress = [(r.seed, run_progress(r)) for r in used if run_progress(r)]
                if len(used) == 1:
                    cell.unfinished = progress[0][1] if progress else ""
                else:
                    cell.unfinished = ", ".join(f"seed {seed}: {p}" for seed, p in progress)
            if cell.last is not None:
                cell.ours_last = f"{cell.last.mean:.2f}"
            cell.run = "; ".join(str(r.path) for r in used)
        cells.append(cell)
    return cells


def _wilcoxon_pair(
    by_seed: dict[int | None, Run] | None, base_seeds: dict[int | None, Run] | None
) -> tuple[Run, Run, str] | None:
    """The two runs a Wilcoxon cell compares: of one seed both rows have (the first such with
    predictions), else the first run with predictions of each; the seed is named when there are several."""
    if not by_seed or not base_seeds:
        return None
    for seed in by_seed:
        if seed in base_seeds and by_seed[seed].predictions and base_seeds[seed].predictions:
            several = len(by_seed) > 1 or len(base_seeds) > 1
            return by_seed[seed], base_seeds[seed], (f" (seed {seed})" if several else "")
    run = next((r for r in by_seed.values() if r.predictions), None)
    base = next((r for r in base_seeds.values() if r.predictions), None)
    if run is None or base is None:
        return None
    several = len(by_seed) > 1 or len(base_seeds) > 1
    return run, base, (f" (seeds {run.seed} vs {base.seed})" if several else "")


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


# ------------------------------------------------------------------------------------------- gains
@dataclass
class Gain:
    """A gain the paper claims (``row`` better than ``vs_row`` in one table) and what our seeds say.

    ``gap`` = our mean of the row - our mean of the compared row (``best`` column values), with the 95 %
    interval and p of a paired t-test by seed (``scipy.stats.ttest_rel``) when both rows have the same
    seeds, else of Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``).
    """

    table: str
    row: str
    vs_row: str
    dataset: str
    metric: str
    experiment: str
    vs_experiment: str
    paper_gap: float | None
    n: int = 0
    n_vs: int = 0
    gap: float | None = None
    ci: tuple[float, float] | None = None
    p: float | None = None
    test: str = ""
    verdict: str = "n < 2"


def _compare(a: Stats, b: Stats) -> tuple[tuple[float, float], float | None, str]:
    """(95 % interval of the gap, p, test name) of rows ``a`` - ``b`` over seeds (n >= 2 each)."""
    import numpy as np
    from scipy import stats

    if set(a.values) == set(b.values) and None not in a.values:
        seeds = list(a.values)
        x = np.array([a.values[s] for s in seeds])
        y = np.array([b.values[s] for s in seeds])
        result, test = stats.ttest_rel(x, y), "paired t"
    else:
        x, y = np.array(list(a.values.values())), np.array(list(b.values.values()))
        result, test = stats.ttest_ind(x, y, equal_var=False), "Welch t"
    ci = result.confidence_interval(0.95)
    low, high, p = float(ci.low), float(ci.high), float(result.pvalue)
    if math.isnan(low) or math.isnan(high):  # no spread at all in either row: the gap is exact
        gap = a.mean - b.mean
        return (gap, gap), None, test
    return (low, high), (None if math.isnan(p) else p), test


def build_gains(cells: list[Cell]) -> list[Gain]:
    """Every claimed gain of ``cells`` (their ``baseline`` column) with our gap and a verdict:
    ``supported`` (the 95 % interval of the gap is above 0), ``contradicted`` (below 0), ``not resolved
    (interval contains 0)``, ``n < 2`` (fewer than two seeds of a row), or ``not comparable`` when the
    two rows' values come from different sources (e.g. best checkpoint vs validation)."""
    by_key: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
    for c in cells:
        by_key[(c.table, c.dataset, c.metric)].append(c)
    gains = []
    for cell in cells:
        if not cell.baseline or not _per_seed(cell.metric):
            continue
        for entry in (e for e in cell.baseline.split(";") if e):
            alts = set(entry.split("|"))
            base = next(
                (
                    c
                    for c in by_key[(cell.table, cell.dataset, cell.metric)]
                    if alts & set(c.experiments.split("|"))
                ),
                None,
            )
            if base is None:
                raise ToolError(
                    f"table {cell.table}, row '{cell.row}': baseline '{entry}' is no row of that table "
                    f"with {cell.dataset} {cell.metric} in tools/published"
                )
            try:
                paper_gap = float(cell.published) - float(base.published)
            except ValueError:
                paper_gap = None
            gain = Gain(
                cell.table,
                cell.row,
                base.row,
                cell.dataset,
                cell.metric,
                cell.experiment,
                base.experiment,
                paper_gap,
            )
            a, b = cell.best, base.best
            gain.n, gain.n_vs = (a.n if a else 0), (b.n if b else 0)
            if a is not None and b is not None:
                gain.gap = a.mean - b.mean
                if cell.origin != base.origin:
                    gain.verdict = f"not comparable ({cell.origin} vs {base.origin} values)"
                elif a.n >= 2 and b.n >= 2:
                    gain.ci, gain.p, gain.test = _compare(a, b)
                    if gain.ci[0] > 0:
                        gain.verdict = "supported"
                    elif gain.ci[1] < 0:
                        gain.verdict = "contradicted"
                    else:
                        gain.verdict = "not resolved (interval contains 0)"
            gains.append(gain)
    return gains


# ------------------------------------------------------------------------------------------- output
def _ours_text(stats: Stats | None, fallback: str, several: bool) -> str:
    """``90.12 ± 0.40 (3) [89.12, 91.12]`` over seeds; the plain value when the table has one seed each."""
    if stats is None:
        return fallback or "-"
    if not several:
        return fallback
    if stats.n == 1:
        return f"{stats.mean:.2f} (1)"
    low, high = stats.ci
    return f"{stats.mean:.2f} ± {stats.std:.2f} ({stats.n}) [{low:.2f}, {high:.2f}]"


def _per_seed(metric: str) -> bool:
    """A metric with one value per seed (not a measured complexity or a two-run Wilcoxon figure)."""
    return metric not in COMPLEXITY and not metric.startswith(("auc_", "ap_"))


def _gap_text(gain: Gain) -> str:
    if gain.gap is None:
        return "-"
    if gain.ci is None:
        return f"{gain.gap:+.2f}"
    return f"{gain.gap:+.2f} [{gain.ci[0]:+.2f}, {gain.ci[1]:+.2f}]"


def to_markdown(cells: list[Cell], paper: str, gains: list[Gain] | None = None) -> str:
    """One markdown table per paper table: rows x (dataset, metric, checkpoint), paper / ours columns,
    then the table's claimed gains.

    Every (dataset, metric) has an ``ours: best`` column (the best-validation checkpoint, or the run's one
    marked other source) and, where any run logged ``test/last/*``, an ``ours: last`` column beside it.
    A table where some row has several seeds shows ``mean ± std (n) [95 % CI]`` in every ours cell; with one
    seed per row the cells are the plain values.
    """
    gains = build_gains(cells) if gains is None else gains
    out = [f"# {PAPERS.get(paper, paper)}", ""]
    tables: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        tables[cell.table].append(cell)
    for table, group in tables.items():
        several = any(s is not None and s.n > 1 for c in group for s in (c.best, c.last))
        stat_txt = ", mean ± std (n) [95 % CI]" if several else ""
        with_last = {(c.dataset, c.metric) for c in group if c.ours_last}
        columns = [
            (d, m, ckpt)
            for d, m in dict.fromkeys((c.dataset, c.metric) for c in group)
            for ckpt in (("best", "last") if (d, m) in with_last else ("best",))
        ]
        rows = list(dict.fromkeys(c.row for c in group))
        lookup = {(c.row, c.dataset, c.metric): c for c in group}
        header = ["row"] + [
            (f"{d} {m}" if d != "-" else m) + f" (paper / ours: {ckpt}{stat_txt if _per_seed(m) else ''})"
            for d, m, ckpt in columns
        ]
        out += [f"## Table {table}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in rows:
            cells_txt = [row]
            for d, m, ckpt in columns:
                c = lookup.get((row, d, m))
                if c is None:
                    cells_txt.append("")
                    continue
                if ckpt == "last":
                    ours = _ours_text(c.last, c.ours_last, several)
                else:
                    ours = _ours_text(c.best, c.ours, several)
                if ckpt == "best" and c.ours and c.origin in ("val", "test"):
                    ours += f" ({c.origin})"
                if c.unfinished:
                    ours += f" (unfinished: {c.unfinished} epochs)"
                published = (c.published or "n/a") + (" [flag]" if c.flag else "")
                cells_txt.append(f"{published} / {ours}")
            out.append("| " + " | ".join(cells_txt) + " |")
        notes = sorted({c.note for c in group if c.note})
        notes += sorted({f"[flag] {c.row}, {c.metric} {c.published}: {c.flag}" for c in group if c.flag})
        notes += [
            f"{c.row}, {c.dataset} {c.metric}: seed(s) {', '.join(map(str, c.left_out))} left out "
            f"(no {c.origin} value; the other seeds have one)"
            for c in group
            if c.left_out
        ]
        out += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
        out += _gains_markdown(table, [g for g in gains if g.table == table])
    found = sum(1 for c in cells if c.ours)
    out.append(
        f"{found} of {len(cells)} published figures have a value of ours ('-': no finished run found)."
    )
    return "\n".join(out)


def _gains_markdown(table: str, gains: list[Gain]) -> list[str]:
    if not gains:
        return []
    shown = [g for g in gains if g.n and g.n_vs]
    out = []
    if shown:
        out += [
            f"### Table {table}: claimed gains (row - compared row, ours over seeds, 95 % CI)",
            "",
            "| row | claimed better than | metric | paper gap | our gap [95 % CI] | n | test | verdict |",
            "|" + " --- |" * 8,
        ]
        for g in shown:
            metric = f"{g.dataset} {g.metric}" if g.dataset != "-" else g.metric
            paper_gap = f"{g.paper_gap:+.2f}" if g.paper_gap is not None else "n/a"
            test = g.test + (f", p = {g.p:.3g}" if g.p is not None else "") if g.test else "-"
            out.append(
                f"| {g.row} | {g.vs_row} | {metric} | {paper_gap} | {_gap_text(g)} | {g.n} / {g.n_vs} "
                f"| {test} | {g.verdict} |"
            )
        out.append("")
    missing = len(gains) - len(shown)
    if missing:
        out += [f"- Table {table}: {missing} claimed gain(s) lack runs of one row or both (not listed).", ""]
    return out


CSV_COLUMNS = [
    "table", "row", "dataset", "metric", "published", "ours", "delta", "origin", "ours_last", "experiment",
    "run", "note", "unfinished", "flag", "n", "mean", "std", "ci_low", "ci_high", "seeds", "left_out",
    "n_last", "mean_last", "std_last", "ci_low_last", "ci_high_last", "vs_row", "vs_experiment",
    "paper_gap", "gap", "gap_ci_low", "gap_ci_high", "n_vs", "p", "test", "verdict",
]  # fmt: skip


def long_rows(cells: list[Cell], gains: list[Gain] | None = None) -> list[dict[str, Any]]:
    """The long format: one line per published figure, or one per (figure, compared row) where the paper
    claims the row better than others (the ``vs_*``/``gap*``/``p``/``verdict`` columns); numbers as
    floats, ``None`` where empty."""
    gains = build_gains(cells) if gains is None else gains
    by_cell: dict[tuple[str, str, str, str], list[Gain]] = defaultdict(list)
    for g in gains:
        by_cell[(g.table, g.row, g.dataset, g.metric)].append(g)

    def stats_cols(st: Stats | None, suffix: str) -> dict[str, Any]:
        return {
            f"n{suffix}": st.n if st else None,
            f"mean{suffix}": st.mean if st else None,
            f"std{suffix}": st.std if st else None,
            f"ci_low{suffix}": st.ci[0] if st and st.ci else None,
            f"ci_high{suffix}": st.ci[1] if st and st.ci else None,
        }

    rows = []
    for c in cells:
        base = {
            "table": c.table, "row": c.row, "dataset": c.dataset, "metric": c.metric,
            "published": c.published, "ours": c.ours, "delta": c.delta(), "origin": c.origin,
            "ours_last": c.ours_last, "experiment": c.experiment, "run": c.run, "note": c.note,
            "unfinished": c.unfinished, "flag": c.flag, **stats_cols(c.best, ""),
            "seeds": " ".join(str(s) for s in c.best.values) if c.best else "",
            "left_out": " ".join(str(s) for s in c.left_out), **stats_cols(c.last, "_last"),
        }  # fmt: skip
        for g in by_cell.get((c.table, c.row, c.dataset, c.metric)) or [None]:
            line = {k: None for k in CSV_COLUMNS} | base
            if g is not None:
                line |= {
                    "vs_row": g.vs_row, "vs_experiment": g.vs_experiment, "paper_gap": g.paper_gap,
                    "gap": g.gap, "gap_ci_low": g.ci[0] if g.ci else None,
                    "gap_ci_high": g.ci[1] if g.ci else None, "n_vs": g.n_vs, "p": g.p, "test": g.test,
                    "verdict": g.verdict,
                }  # fmt: skip
            rows.append(line)
    return rows


def write_csv(cells: list[Cell], path: str | os.PathLike, gains: list[Gain] | None = None) -> None:
    """Long-format CSV (:func:`long_rows`): ours over seeds, the difference, and the claimed gains."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for line in long_rows(cells, gains):
            writer.writerow(
                ["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in line.values()]
            )


def log_wandb_table(cells: list[Cell], paper: str, project: str, gains: list[Gain] | None = None) -> str:
    """Log the long-format rows as a W&B Table ``report/<paper>`` (and the gains as
    ``report/<paper>_gains``): into the active W&B run when there is one (``wandb.run``), else into a new
    run of ``project`` (``job_type`` report, name ``report-<paper>``; offline without an account, like
    the training runs). Returns where it went."""
    import wandb

    gains = build_gains(cells) if gains is None else gains
    rows = long_rows(cells, gains)
    table = wandb.Table(columns=CSV_COLUMNS, data=[list(r.values()) for r in rows])
    gain_cols = ["table", "row", "vs_row", "dataset", "metric", "paper_gap", "gap", "gap_ci_low",
                 "gap_ci_high", "n", "n_vs", "p", "test", "verdict"]  # fmt: skip
    gain_table = wandb.Table(
        columns=gain_cols,
        data=[
            [g.table, g.row, g.vs_row, g.dataset, g.metric, g.paper_gap, g.gap, g.ci[0] if g.ci else None,
             g.ci[1] if g.ci else None, g.n, g.n_vs, g.p, g.test, g.verdict]
            for g in gains
        ],
    )  # fmt: skip
    own = wandb.run is None
    if own:
        from lightning_modules.cli import wandb_has_credentials

        # WANDB_MODE wins; without it, online only with an account (as the training runs)
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials() else "offline")
        run = wandb.init(
            project=project, job_type="report", name=f"report-{paper}", mode=mode, config={"paper": paper}
        )
    else:
        run = wandb.run
    run.log({f"report/{paper}": table, f"report/{paper}_gains": gain_table})
    where = f"W&B run {run.name} ({run.id})"
    if own:
        run.finish()
    return where


def main(argv: Sequence[str] | None = None) -> list[Cell]:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", required=True, choices=sorted(PAPERS))
    parser.add_argument(
        "--runs",
        nargs="+",
        default=None,
        help="folders holding finished runs (default: runs, unless --wandb)",
    )
    parser.add_argument(
        "--wandb",
        nargs="+",
        default=[],
        metavar="ENTITY/PROJECT",
        help="also read the finished runs of these W&B projects (wandb.Api(); needs an account and network)",
    )
    parser.add_argument(
        "--wandb_log",
        nargs="?",
        const="paperbench",
        default=None,
        metavar="PROJECT",
        help="log the report as W&B Tables: into the active W&B run, else a new run of PROJECT "
        "(default paperbench)",
    )
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
    roots = args.runs if args.runs is not None else ([] if args.wandb else ["runs"])
    runs = find_runs(roots)
    read_any = bool(roots)
    for project in args.wandb:
        found = read_wandb_runs(project)
        if found is not None:
            runs += found
            read_any = True
    if not read_any:
        raise ToolError(
            "W&B was the only source of runs and could not be read (see above); nothing to report"
        )
    cells = build_cells(args.paper, runs, experiments, args.complexity, args.latency, args.device)
    gains = build_gains(cells)
    print(to_markdown(cells, args.paper, gains))
    if args.csv:
        write_csv(cells, args.csv, gains)
        print(f"wrote {args.csv}")
    if args.wandb_log is not None:
        print(f"logged the report to {log_wandb_table(cells, args.paper, args.wandb_log, gains)}")
    return cells


if __name__ == "__main__":
    raise SystemExit(run_main(main))
