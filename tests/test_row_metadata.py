"""Issue 18 items 1-2: every row file knows its place in its paper, loggers receive it, seeds get folders.

The ``row:`` blocks are checked against ``tools/published/<paper>.csv`` with rules written out here (not
imported from the generator, so a bug there cannot hide): an experiment's CSV lines are those whose
``experiment`` column names its stem; ``tables`` = their table ids in CSV order, ``label``/``dataset`` =
those of the first line, ``published`` = every numeric value by metric (first line wins).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from lightning_modules import cli
from lightning_modules.config_compose import compose, config_chain, experiment_rows, read_yaml
from lightning_modules.row_info import RowInfo, wandb_metadata
from lightning_modules.run_folder import resolve_seed, seed_folder
from tests.test_cli import run_main

EXPERIMENTS = cli.ROOT / "experiments"
PUBLISHED = cli.ROOT / "tools" / "published"
PAPERS = sorted(p.stem for p in PUBLISHED.glob("*.csv"))
ROWS = experiment_rows(EXPERIMENTS)
PAPER_ROWS = sorted(p for p in ROWS.values() if p.parent.name in PAPERS)
FIELDS = {f.name for f in dataclasses.fields(RowInfo)}


def _csv(paper: str) -> list[dict[str, str]]:
    with open(PUBLISHED / f"{paper}.csv", newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _lines_of(paper: str, stem: str) -> list[dict[str, str]]:
    return [r for r in _csv(paper) if stem in (r.get("experiment") or "").split("|")]


def test_every_paper_has_row_files():
    assert PAPERS == ["acanet", "csnet", "fft", "msfca", "tokenfusion"]
    for paper in PAPERS:
        assert [p for p in PAPER_ROWS if p.parent.name == paper], paper


@pytest.mark.parametrize("path", PAPER_ROWS, ids=lambda p: p.stem)
def test_row_block_agrees_with_the_published_csv(path):
    own = read_yaml(path).get("row")
    assert isinstance(own, dict), f"{path}: no row: block of its own"
    assert set(own) <= FIELDS and {"paper", "tables", "label", "dataset", "published"} <= set(own), own
    row = RowInfo(**own)  # the dataclass the CLI parses it into
    assert row.paper == path.parent.name and (PUBLISHED / f"{row.paper}.csv").is_file()
    assert row.label and row.dataset and all(isinstance(t, str) for t in row.tables)
    lines = _lines_of(row.paper, path.stem)
    expected: dict[str, float] = {}
    for line in lines:
        value = _number(line.get("value"))
        if value is not None:
            expected.setdefault(line["metric"], value)
    assert {k: float(v) for k, v in row.published.items()} == expected  # never a figure the CSV lacks
    if lines:
        assert row.tables == list(dict.fromkeys(r["table"] for r in lines))
        assert (row.label, row.dataset) == (lines[0]["row"], lines[0]["dataset"])


@pytest.mark.parametrize("paper", PAPERS)
def test_every_csv_experiment_has_a_row_file_with_its_figures(paper):
    for line in _csv(paper):
        for stem in (line.get("experiment") or "").split("|"):
            if not stem or stem.startswith("model:"):  # complexity-only cells of a bare model
                continue
            if stem not in ROWS:
                assert "no experiment file" in line.get("note", ""), f"{paper}.csv names {stem}: no file"
                continue
            published = read_yaml(ROWS[stem])["row"]["published"]
            value = _number(line.get("value"))
            if value is not None and line["metric"] in published:
                first = next(
                    _number(r["value"]) for r in _lines_of(paper, stem) if r["metric"] == line["metric"]
                )
                assert float(published[line["metric"]]) == first, (stem, line["metric"])
            elif value is not None:
                raise AssertionError(f"{ROWS[stem]}: published lacks {line['metric']} = {line['value']}")


def test_files_outside_the_paper_folders_declare_no_row_or_inherit_one():
    for path in ROWS.values():
        if path.parent.name in PAPERS:
            continue
        own = read_yaml(path).get("row")
        row = compose(path).get("row")
        assert own is None, f"{path}: only a paper's row files declare a row (aliases inherit it)"
        if row is not None:  # an alias (acanet_cub = acanet/acanet18_cub_mcloss): the block of its base
            declaring = [p for p in config_chain(path) if read_yaml(p).get("row") is not None]
            assert declaring and declaring[-1].parent.name == row["paper"], path
    assert compose(ROWS["acanet_cub"])["row"] == read_yaml(ROWS["acanet18_cub_mcloss"])["row"]
    assert compose(ROWS["quickstart"]).get("row") is None  # not a paper row: no block


def test_generated_blocks_are_up_to_date():
    from scripts import row_blocks

    assert row_blocks.main(["--check"]) == 0, "run `python -m scripts.row_blocks` after editing a CSV"


# ------------------------------------------------------------------------------------------- the CLI
def test_print_config_shows_the_row_and_a_mistyped_key_is_an_error(monkeypatch, capsys, tmp_path):
    row = str(EXPERIMENTS / "acanet" / "resnet18_cub_ce.yaml")
    code, out, err = run_main(monkeypatch, capsys, "fit", "--config", row, "--print_config")
    assert code == 0, err
    printed = yaml.safe_load(out.split("\n", 2)[2])  # after the two '# run folder' / '# checkpoints' lines
    assert printed["row"]["paper"] == "acanet" and printed["row"]["published"] == {"acc1": 52.5}
    assert printed["row"]["tables"] == ["2", "3"]
    assert f"# run folder: {Path('runs') / 'resnet18_cub_ce' / 'seed42'}" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("row:\n  paper: acanet\n  tabels: ['2']\n")
    code, _, err = run_main(
        monkeypatch, capsys, "fit", "--config", row, "--config", str(bad), "--print_config"
    )
    assert code == 2 and "unknown key 'row.tabels'" in err and "row.tables" in err and "Traceback" not in err


def _wandb_cfg(tmp_path, dict_kwargs=None, row=True):
    logger = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(offline=True))
    if dict_kwargs is not None:
        logger.dict_kwargs = dict_kwargs
    block = Namespace(
        paper="acanet",
        tables=["2", "3"],
        label="x",
        dataset="cub",
        variant="no_accb",
        published={"acc1": 52.5},
    )
    model = Namespace(
        class_path="lightning_modules.ClassificationTask",
        init_args=Namespace(loss=Namespace(class_path="lightning_modules.losses.MCLoss")),
    )
    return Namespace(
        trainer=Namespace(logger=logger, default_root_dir=str(tmp_path / "r" / "seed7")),
        row=block if row else None,
        model=model,
    )


def test_wandb_gets_group_tags_job_type_and_paper_figures(tmp_path):
    fit = _wandb_cfg(tmp_path)
    cli.configure_loggers(fit, tmp_path / "r" / "seed7", "r", resuming=False, subcommand="fit")
    extra, args = fit.trainer.logger.dict_kwargs, fit.trainer.logger.init_args
    assert extra["group"] == "acanet/table2" and extra["job_type"] == "fit" and args.name == "r-seed7"
    assert extra["tags"] == ["acanet", "cub", "table2", "table3", "MCLoss", "no_accb"]
    assert extra["config"]["paper"] == {"acc1": 52.5} and extra["config"]["row"]["label"] == "x"
    ev = _wandb_cfg(tmp_path)
    record = tmp_path / "r" / "seed7" / "eval" / "test-last"
    cli.configure_loggers(ev, record, "r", resuming=True, subcommand="test")
    assert ev.trainer.logger.dict_kwargs["group"] == "acanet/table2"  # evaluations join their row's group
    assert ev.trainer.logger.dict_kwargs["job_type"] == "test"
    assert ev.trainer.logger.init_args.name == "r-seed7/test-last"


def test_the_users_dict_kwargs_win(tmp_path):
    mine = {"group": "mine", "tags": ["t"], "entity": "team", "job_type": "sweep", "config": {"paper": 1}}
    fit = _wandb_cfg(tmp_path, dict(mine))
    cli.configure_loggers(fit, tmp_path / "r" / "seed7", "r", resuming=False, subcommand="fit")
    extra = fit.trainer.logger.dict_kwargs
    assert {k: extra[k] for k in mine if k != "config"} == {k: v for k, v in mine.items() if k != "config"}
    assert extra["config"]["paper"] == 1 and extra["config"]["row"]["paper"] == "acanet"  # merged, theirs win
    plain = _wandb_cfg(tmp_path, row=False)  # no row: nothing invented
    cli.configure_loggers(plain, tmp_path / "r" / "seed7", "r", resuming=False, subcommand="fit")
    assert plain.trainer.logger.dict_kwargs == {"job_type": "fit"}
    assert wandb_metadata(None) == {}


# ------------------------------------------------------------------------------------------- seeds
def test_seed_resolution(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert resolve_seed(3) == 3 and resolve_seed(False) is False
    assert resolve_seed(True) == resolve_seed(None) == 0  # Lightning 2.6's seed_everything(None): 0
    monkeypatch.setenv("PL_GLOBAL_SEED", "17")  # set by Lightning in the launcher, inherited by DDP workers
    assert resolve_seed(True) == resolve_seed(None) == 17 and resolve_seed(5) == 5
    assert (seed_folder(17), seed_folder(False), seed_folder(True)) == ("seed17", "unseeded", "seed17")


def _loc(tmp_path, **kw):
    cfg = Namespace(trainer=Namespace(default_root_dir=str(tmp_path / "runs")), name=None, **kw)
    return cli.run_location(cfg)


def test_run_folders_are_per_seed_and_a_saved_config_means_its_run(tmp_path):
    row = EXPERIMENTS / "acanet" / "resnet18_cub_ce.yaml"
    runs = tmp_path / "runs"
    assert _loc(tmp_path, seed_everything=0, config=[row])[2] == runs / "resnet18_cub_ce" / "seed0"
    assert _loc(tmp_path, seed_everything=False, config=[row])[2] == runs / "resnet18_cub_ce" / "unseeded"
    run = runs / "resnet18_cub_ce" / "seed5"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    # a saved config.yaml holds name, root and seed; without a name (older files) its folder tells
    assert _loc(tmp_path, seed_everything=5, config=[run / "config.yaml"])[1:] == ("resnet18_cub_ce", run)
    legacy = runs / "old_run"  # the layout before seeds: its config.yaml still means that folder
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.yaml").write_text("{}")
    assert _loc(tmp_path, seed_everything=42, config=[legacy / "config.yaml"])[2] == legacy


def test_seed_true_is_resolved_before_the_folder_and_recorded(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PL_GLOBAL_SEED", "4242")
    args = ["--seed_everything", "true", "--trainer.fast_dev_run", "true", "--trainer.logger", "false"]
    c = cli.cli_main(
        [
            "--config",
            str(EXPERIMENTS / "quickstart.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path),
            *args,
        ],
        run=False,
    )
    assert c.config.seed_everything == 4242 and c.run_dir == tmp_path / "quickstart" / "seed4242"


@pytest.mark.slow  # the W&B service start and a fit: ~25 s on 2 busy cores
def test_offline_fit_of_a_row_carries_it_in_wandb_and_csv_files(monkeypatch, capsys, tmp_path):
    """A real fit (W&B offline + CSV): group, tags, job_type, name and paper.acc1 in the run file; the row in
    the CSV run's hparams.yaml."""
    from tests.test_run_lifecycle import TINY
    from tests.wandb_records import iter_records, read_run

    extra = tmp_path / "row.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "row": {"paper": "acanet", "tables": ["2"], "label": "tiny", "dataset": "digits"},
                "trainer": {
                    "logger": [
                        {
                            "class_path": "lightning.pytorch.loggers.WandbLogger",
                            "init_args": {"offline": True},
                        },
                        {"class_path": "lightning.pytorch.loggers.CSVLogger"},
                    ]
                },
            }
        )
    )
    args = [*TINY, "--config", str(extra), "--trainer.default_root_dir", str(tmp_path / "runs")]
    args += ["--row.published", "{acc1: 52.5}", "--seed_everything", "3", "--trainer.max_steps", "1"]
    code, _, err = run_main(monkeypatch, capsys, "fit", *args, "--test_after_fit", "false")
    assert code == 0, err
    import wandb

    wandb.finish()  # Lightning leaves the in-process run open: close it so its file is complete
    run_dir = tmp_path / "runs" / "row" / "seed3"  # the last --config file names the run
    run_file = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    run = next(r.run for r in iter_records(run_file) if r.WhichOneof("record_type") == "run")
    assert (run.run_group, run.job_type, run.display_name) == ("acanet/table2", "fit", "row-seed3")
    assert list(run.tags) == ["acanet", "digits", "table2", "CrossEntropyLoss"]
    config = read_run(run_file)["config"]
    assert config["paper"] == {"acc1": 52.5} and config["row"]["label"] == "tiny"
    assert config["seed_everything"] == 3
    hparams = yaml.safe_load((run_dir / "logs" / "hparams.yaml").read_text())
    assert hparams["config"]["row"]["published"] == {"acc1": 52.5}


# ------------------------------------------------------------------------------------------- sweeps
SWEEPS = sorted((EXPERIMENTS / "_sweeps").glob("*.yaml"))


def _agent_command(sweep: dict, values: dict) -> list[str]:
    """The command line a W&B agent runs for one grid point: wandb's own macro code, then the agent's
    expansion of ``${...}`` (wandb/wandb_agent.py ``_command_run``)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(sweep["command"]))
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])
    out: list[str] = []
    for part in map(str, command):
        out += macros.get(part[2:-1]) or [] if part.startswith("${") and part.endswith("}") else [part]
    return out


def test_sweep_files_name_only_existing_rows_of_their_table():
    assert SWEEPS, "no sweep files: run `python -m scripts.row_blocks`"
    names = {p.stem for p in SWEEPS}
    assert {"acanet_table2", "acanet_table3", "msfca_tableIII", "tokenfusion_table1"} <= names
    for path in SWEEPS:
        sweep = yaml.safe_load(path.read_text())
        paper, table = path.stem.split("_table")
        assert sweep["method"] == "grid" and sweep["program"] == "main.py"
        assert sweep["metric"] == {"name": "val/acc1", "goal": "maximize"}
        assert sweep["parameters"]["seed_everything"]["values"] == [0, 1, 2]
        assert "${args}" in sweep["command"] and "fit" in sweep["command"]
        rows = sweep["parameters"]["config"]["values"]
        assert rows and len(set(rows)) == len(rows)
        for row in rows:
            file = cli.ROOT / row
            assert file.is_file() and file.parent.name == paper, (path.name, row)
            named = {
                s for r in _csv(paper) if r["table"] == table for s in (r.get("baseline") or "").split("|")
            }
            assert table in read_yaml(file)["row"]["tables"] or file.stem in named, (path.name, row)


def test_sweep_files_pass_wandbs_sweep_engine():
    """wandb's sweep engine (``sweeps``, the ``wandb[sweeps]`` extra; not installed by default: its
    metadata pins numpy<2) validates the config against W&B's schema and enumerates the grid offline."""
    sweeps = pytest.importorskip("sweeps")
    from sweeps.config import SweepConfig

    for path in SWEEPS:
        config = SweepConfig(yaml.safe_load(path.read_text()))
        runs: list = []
        while (point := sweeps.next_run(config, runs)) is not None:
            point.state = sweeps.RunState.finished
            runs.append(point)
        assert len(runs) == 3 * len(config["parameters"]["config"]["values"]), path.name
    from jsonschema import ValidationError  # installed with sweeps

    with pytest.raises(ValidationError):  # the check can fail
        SweepConfig({"method": "grdi", "parameters": {"x": {"values": [1]}}})


def test_a_sweep_command_line_parses_through_the_real_cli(monkeypatch, capsys):
    sweep = yaml.safe_load((EXPERIMENTS / "_sweeps" / "acanet_table2.yaml").read_text())
    row = sweep["parameters"]["config"]["values"][0]
    command = _agent_command(sweep, {"config": row, "seed_everything": 1})
    assert command[:4] == ["/usr/bin/env", "python", "main.py", "fit"]
    assert command[4:] == [f"--config={row}", "--seed_everything=1"]
    monkeypatch.chdir(cli.ROOT)  # the agent runs from the repository root (the paths are relative to it)
    code, out, err = run_main(monkeypatch, capsys, *command[3:], "--print_config")
    assert code == 0, err
    assert f"# run folder: {Path('runs') / Path(row).stem / 'seed1'}" in out and "seed_everything: 1" in out


def test_under_a_sweep_agent_the_fit_takes_the_agents_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")
    fit = _wandb_cfg(tmp_path)
    new_id = cli.configure_loggers(fit, tmp_path / "r" / "seed7", "r", resuming=False, subcommand="fit")
    assert fit.trainer.logger.init_args.id == new_id == "agentrun1"
    monkeypatch.delenv("WANDB_SWEEP_ID")  # a WANDB_RUN_ID alone (no agent) is not taken
    fit = _wandb_cfg(tmp_path)
    assert (
        cli.configure_loggers(fit, tmp_path / "r" / "seed7", "r", resuming=False, subcommand="fit")
        != "agentrun1"
    )


# ------------------------------------------------------------------------------------------- tools.seeds
def test_seeds_loop_dry_run_and_bad_input(capsys, tmp_path):
    from tools import seeds

    row = str(EXPERIMENTS / "acanet" / "resnet18_cub_ce.yaml")
    assert seeds.main([row, "--seeds", "0", "1", "2", "--dry_run", "--", "--trainer.max_epochs", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for seed, line in zip((0, 1, 2), lines):
        assert line.endswith(f"fit --config {row} --seed_everything {seed} --trainer.max_epochs 5"), line
    assert seeds.main([str(tmp_path / "nope.yaml"), "--seeds", "0", "--dry_run"]) == 2
    assert "no such experiment file" in capsys.readouterr().err
    assert seeds.main([row, "--seeds", "1", "1", "--dry_run"]) == 2


@pytest.mark.slow  # two main.py processes (imports + a 1-step fit each): ~15 s on 2 busy cores
def test_seeds_loop_runs_each_seed_and_stops_at_the_first_failure(tmp_path, capfd):
    import os

    from tools import seeds

    fast = ["--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.logger", "false"]
    fast += ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--test_after_fit", "false"]
    fast += ["--model.init_args.backbone", "resnet10t", "--data.init_args.image_size", "16"]
    fast += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    quick = str(EXPERIMENTS / "quickstart.yaml")
    assert seeds.main([quick, "--seeds", "5", "--", *fast]) == 0
    assert (tmp_path / "runs" / "quickstart" / "seed5" / "checkpoints" / "last.ckpt").is_file()
    # seed 5 again is refused by main.py (exit 2): the loop stops there, seed 6 never starts
    assert seeds.main([quick, "--seeds", "5", "6", "--", *fast]) == 2
    err = capfd.readouterr().err
    assert "run 1 of 2 failed with exit code 2" in err and "1 not started" in err
    assert not (tmp_path / "runs" / "quickstart" / "seed6").exists()
