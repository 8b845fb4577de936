"""Every experiment row: composed as before (snapshot), named and headed by its paper row, built, fitted.

Rows live in one folder per paper (``experiments/<paper>/<row>.yaml``) and name the paper's recipe and
dataset files in ``_base_`` (lightning_modules/config_compose.py). Default suite: every row's composed
YAML equals the snapshot (tests/snapshots/experiments_resolved.json, see tests/experiment_snapshot.py), the
CLI parser's resolution of one row per recipe/dataset chain equals it too (``make test-slow``: every row),
every row is parsed and instantiated (the model on the meta device), and one or two training steps run at
64x64 for one row per model family and one per datamodule. ``make test-slow`` runs the short fit for every
row.
"""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import main as cli
from lightning_modules.config_compose import compose, config_chain, experiment_rows, read_yaml
from tests import experiment_snapshot as snapshot
from tests.dataset_fixtures import build_dataset_fixture

EXPERIMENTS_DIR = cli.ROOT / "experiments"
ROWS = experiment_rows(EXPERIMENTS_DIR)
# experiments/fast/ rows wrap their datamodule (tensor cache): tests/test_tensor_cache.py fits them
EXPERIMENTS = sorted(p for p in ROWS.values() if p.parent.name != "fast")
PAPERS = {  # folder -> how its rows' headers name the paper
    "acanet": "ACANet",
    "fft": "FFT paper",
    "msfca": "MSF-CA",
    "csnet": "CS-Net",
    "tokenfusion": "TokenFusion",
}
# `pretrained: none`: random init chosen explicitly, so the rows whose recipe sets pretrained_required
# (TokenFusion, CS-Net: no silent random trunk) build here without weights
SMOKE = [
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--model.init_args.pretrained",
    "none",
]


def _composed(path: Path) -> dict:
    return compose(path)


def _data_class(path: Path) -> str:
    return _composed(path).get("data", {}).get("class_path", "")


# The default suite fits one cheap row per paper recipe (and the non-paper rows): the recipe's optimiser,
# scheduler, loss and task settings run end to end through the CLI. Every datamodule is fitted on its
# fixture in tests/test_datamodules.py, every model family's forward/backward runs in
# tests/test_registry_contract.py, and every row is instantiated and smoke-fitted under `make test-slow`.
DEFAULT_SMOKE = {
    "acanet": "acanet_cub.yaml",  # README's example: ACANet-18 + MC-Loss (reference head), CUB
    "acanet/margin": "resnet18_cars_asoftmax.yaml",  # a margin loss that owns the classifier
    "csnet": "csnet50_cub.yaml",
    "fft": "fft_tiny_cifar10.yaml",
    "msfca": "msfca50_ceramic.yaml",
    "tokenfusion": "tokenfusion_late_imagenet_token.yaml",
    "quickstart": "quickstart.yaml",
}
DEFAULT_SMOKE_FILES = set(DEFAULT_SMOKE.values())


def test_default_smoke_fits_cover_every_paper_recipe():
    chosen = {ROWS[name.removesuffix(".yaml")] for name in DEFAULT_SMOKE_FILES}  # KeyError: a renamed row
    for folder in PAPERS:
        assert any(EXPERIMENTS_DIR / folder / "_recipe.yaml" in config_chain(p) for p in chosen), folder


def _header(path: Path) -> str:
    """The row file's own leading comment block."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_there_is_a_folder_per_paper_with_one_recipe():
    assert {"quickstart", "acanet_cub"} <= set(ROWS)
    for folder in PAPERS:
        assert (EXPERIMENTS_DIR / folder / "_recipe.yaml").is_file(), folder
        rows = [p for p in ROWS.values() if p.parent.name == folder]
        assert rows, folder
        for path in rows:  # every row of the folder builds on the folder's one recipe
            assert EXPERIMENTS_DIR / folder / "_recipe.yaml" in config_chain(path), path


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.parent.name in PAPERS], ids=lambda p: p.stem)
def test_row_states_only_what_makes_the_row(path: Path):
    """Paper rows leave optimiser, schedule, batch size and trainer settings to a recipe file."""
    own = read_yaml(path)
    init = (own.get("model") or {}).get("init_args") or {}
    stated = [k for k in ("optimizer", "lr_scheduler", "lr_reference_batch_size") if k in init]
    stated += ["trainer"] if "trainer" in own else []
    stated += (
        ["data.init_args.batch_size"]
        if "batch_size" in ((own.get("data") or {}).get("init_args") or {})
        else []
    )
    assert not stated, (
        f"{path.name} states recipe keys {stated}: put them in a recipe file of experiments/"
        f"{path.parent.name}/ (e.g. _recipe.yaml, or a named variant _recipe_<name>.yaml) "
        "and list it in _base_"
    )


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.parent.name in PAPERS], ids=lambda p: p.stem)
def test_row_is_named_after_its_model_and_dataset(path: Path):
    backbone = compose(path)["model"]["init_args"]["backbone"]
    datasets = [p.stem[1:] for p in config_chain(path) if p.stem.startswith("_") and p.stem != "_recipe"]
    stem = path.stem
    # the MC-Loss rows of ACANet's Table 2 use the `_mc` trunk variant; the loss suffix names it
    model = backbone[: -len("_mc")] if backbone.endswith("_mc") and stem.endswith("_mcloss") else backbone
    assert stem.startswith(model + "_"), f"{path.name}: row names start with the model name ({backbone})"
    dataset = stem[len(model) + 1 :].split("_")[0]
    assert not datasets or dataset in datasets, f"{path.name}: dataset {dataset} but builds on {datasets}"


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.parent.name in PAPERS], ids=lambda p: p.stem)
def test_row_header_names_its_paper_table_and_row(path: Path):
    header = _header(path)
    assert PAPERS[path.parent.name] in header, f"{path.name}: header must name the paper"
    assert re.search(r"\bTables?\b|\babstract\b", header), f"{path.name}: header must name the table"
    assert re.search(r"\brows?\b", header, re.IGNORECASE), f"{path.name}: header must name the row"


# ------------------------------------------------------------------------------------------ snapshot
SNAPSHOT = snapshot.load()
FIX = (
    "if on purpose: .venv/bin/python -m tests.experiment_snapshot --update [ROW GLOB ...], "
    "review the JSON diff"
)


def _report(lines: list[str]) -> str:
    return "\n".join([f"{len(lines)} difference(s) from the snapshot ({FIX}):", *lines[:60]])


def test_every_row_states_what_the_snapshot_holds():
    """The composed YAML of every row (recipe + dataset + row) equals the snapshot; no row lost or added."""
    now = {snapshot.row_key(p): {"stated": compose(p)} for p in ROWS.values()}
    lines = [f"{row}: in the snapshot but no such row file" for row in sorted(set(SNAPSHOT) - set(now))]
    lines += [f"{row}: new row file not in the snapshot" for row in sorted(set(now) - set(SNAPSHOT))]
    for row in sorted(set(SNAPSHOT) & set(now)):
        lines += [f"{row} [stated] {d}" for d in snapshot.diff(SNAPSHOT[row]["stated"], now[row]["stated"])]
    assert not lines, _report(lines)


def _one_row_per_chain() -> list[Path]:
    """One row per distinct list of base files (each recipe x dataset combination), plus the other rows."""
    chosen: dict[tuple, Path] = {}
    for path in ROWS.values():
        chosen.setdefault(tuple(config_chain(path)[:-1]) or (path,), path)
    return sorted(chosen.values())


@pytest.fixture(scope="module")
def parser():
    return snapshot.make_parser()


def _check_resolved(parser, paths: list[Path]) -> None:
    base_callbacks = [cb["class_path"] for cb in read_yaml(snapshot.BASE)["trainer"]["callbacks"]]
    lines = []
    for path in paths:
        full = snapshot.resolve(parser, path, strip_base_infrastructure=False)
        got = [cb["class_path"] for cb in full["trainer"].get("callbacks") or []]
        if got != base_callbacks:  # lists replace under jsonargparse: no file may drop base.yaml's callbacks
            lines.append(f"{snapshot.row_key(path)}: trainer.callbacks {got} != base.yaml's {base_callbacks}")
        now = snapshot.resolve(parser, path)
        old = SNAPSHOT.get(snapshot.row_key(path), {}).get("resolved")
        if old is None:
            lines.append(f"{snapshot.row_key(path)}: not in the snapshot")
            continue
        lines += [
            f"{snapshot.row_key(path)} [resolved] {d}" for d in snapshot.diff(old, now, restricted=True)
        ]
    assert not lines, _report(lines)


def test_resolved_config_matches_snapshot_one_row_per_recipe(parser):
    """What the CLI parser resolves (jsonargparse's own merging of the _base_ files) equals the snapshot."""
    _check_resolved(parser, _one_row_per_chain())


@pytest.mark.slow
def test_resolved_config_matches_snapshot_every_row(parser):
    _check_resolved(parser, sorted(ROWS.values()))


# ------------------------------------------------------------------------------------------ building
def check_instantiates(path: Path) -> None:
    with torch.device("meta"):
        built = cli.cli_main(args=["--config", str(path), *SMOKE], run=False)
    assert built.datamodule.num_classes >= 2
    head = built.model.backbone.get_classifier()
    out_features = getattr(head, "out_features", getattr(head, "out_channels", None))
    if out_features is not None and not _composed(path).get("model", {}).get("init_args", {}).get("loss"):
        assert out_features == built.datamodule.num_classes  # data.num_classes is linked into the model
    dumped = yaml.safe_load(built.parser.dump(built.config, skip_none=False))  # what --print_config prints
    assert dumped["model"]["class_path"] == "lightning_modules.ClassificationTask"


# one row per recipe x dataset chain in the default suite (plus the smoke rows), every row under -m slow
INSTANTIATE_DEFAULT = sorted(
    {p for p in _one_row_per_chain() if p in EXPERIMENTS}
    | {p for p in EXPERIMENTS if p.name in DEFAULT_SMOKE_FILES}
)


@pytest.mark.parametrize("path", INSTANTIATE_DEFAULT, ids=lambda p: p.stem)
def test_experiment_parses_and_instantiates(path: Path):
    check_instantiates(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [p for p in EXPERIMENTS if p not in INSTANTIATE_DEFAULT], ids=lambda p: p.stem
)
def test_experiment_parses_and_instantiates_every_row(path: Path):
    check_instantiates(path)


def test_print_config_flag_works(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(cli.ROOT / "main.py"),
            "fit",
            "--config",
            str(cli.ROOT / "experiments" / "acanet_cub.yaml"),
            "--print_config",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = yaml.safe_load(proc.stdout)
    # the fully composed row: acanet_cub -> acanet/acanet18_cub_mcloss -> acanet/_cub + acanet/_recipe
    assert printed["model"]["init_args"]["backbone"].startswith("acanet18")
    assert printed["model"]["init_args"]["loss"]["class_path"].endswith("MCLoss")
    assert printed["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.1
    assert printed["data"]["class_path"].endswith("CUB200DataModule")
    assert printed["trainer"]["max_epochs"] == 600
    assert printed["trainer"]["callbacks"]  # base.yaml defaults are merged in
    assert "_base_" not in printed


def test_missing_base_stops_the_cli_with_one_message(tmp_path: Path):
    row = tmp_path / "row.yaml"
    row.write_text("_base_: [_gone.yaml]\nmodel: {init_args: {backbone: resnet18}}\n")
    with pytest.raises(Exception) as err:
        cli.cli_main(args=["fit", "--config", str(row)], run=True)
    found = cli.find_user_error(err.value)
    assert found is not None and "_gone.yaml" in str(found) and "row.yaml" in str(found)


def test_deit_recipe_is_a_named_alternative_for_tokenfusion_rows():
    """`--config <row> --config _recipe_deit.yaml`: timm's RandAugment/erasing pipeline and Mixup task."""
    from timm.data.auto_augment import RandAugment

    deit = EXPERIMENTS_DIR / "tokenfusion" / "_recipe_deit.yaml"
    row = ROWS["tokenfusion_late_imagenet_token"]
    with torch.device("meta"):
        built = cli.cli_main(args=["--config", str(row), "--config", str(deit), *SMOKE], run=False)
    assert built.model.mixup_fn is not None and built.model.mixup_fn.cutmix_alpha == 1.0
    steps = built.datamodule.train_transform.transforms[1].transforms
    assert any(isinstance(t, RandAugment) for t in steps)
    with torch.device("meta"):
        paper = cli.cli_main(args=["--config", str(row), *SMOKE], run=False)
    assert paper.model.mixup_fn is None and paper.datamodule.rotation == 15  # the table row: the paper's


def test_tools_build_composed_rows():
    """The analysis tools read a row through the same composition (tools.common -> the project's CLI)."""
    from tools.common import instantiate_from_config

    with torch.device("meta"):
        model, datamodule = instantiate_from_config([ROWS["resnet18_cub_ce"]])
    assert type(datamodule).__name__ == "CUB200DataModule"  # from acanet/_cub.yaml
    assert model.hparams.lr_reference_batch_size == 32  # from acanet/_recipe.yaml


def smoke_fit(path: Path, tmp_path: Path) -> None:
    overrides = build_dataset_fixture(_data_class(path), tmp_path / "data")
    args = [
        "fit",
        "--config",
        str(path),
        *SMOKE,
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.fast_dev_run",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--trainer.num_nodes",
        "1",
        "--trainer.precision",
        "32-true",
        "--trainer.sync_batchnorm",
        "false",
        "--test_after_fit",
        "false",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.image_size",
        "64",
        "--data.init_args.resize_size",
        "64",
    ]
    backbone_kwargs = _composed(path).get("model", {}).get("init_args", {}).get("backbone_kwargs") or {}
    if "img_size" in backbone_kwargs:  # fixed-size ViT-style baselines: build them for the smoke size
        args += ["--model.init_args.backbone_kwargs", json.dumps({**backbone_kwargs, "img_size": 64})]
    for key, value in overrides.items():
        args += [f"--data.init_args.{key}", "null" if value is None else str(value)]
    built = cli.cli_main(args=args)
    finished = built.trainer.state.finished
    loss = built.trainer.callback_metrics.get("train/loss")
    # model <-> trainer reference cycles keep the weights, gradients and optimiser state (several GB for
    # FFT-Large) alive until a full collection: free them before the next file's fit
    del built
    gc.collect()
    assert finished, f"{path.name} did not finish"
    assert loss is not None and torch.isfinite(loss), f"{path.name}: train/loss {loss}"


@pytest.mark.parametrize(
    "path", [p for p in EXPERIMENTS if p.name in DEFAULT_SMOKE_FILES], ids=lambda p: p.stem
)
def test_smoke_fit_one_per_recipe(path: Path, tmp_path: Path):
    smoke_fit(path, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [p for p in EXPERIMENTS if p.name not in DEFAULT_SMOKE_FILES], ids=lambda p: p.stem
)
def test_smoke_fit_every_experiment(path: Path, tmp_path: Path):
    smoke_fit(path, tmp_path)
