"""tools.report over seeds (issue 18): mean ± std and a 95 % interval per row, claimed gains with a
verdict from a paired or Welch t-test, the long CSV, a W&B Table, and runs read from W&B."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml
from scipy import stats

from tools import report
from tools.common import run_main

PUBLISHED = """table,row,dataset,metric,value,experiment,baseline,note
T,Base,ds,acc1,90.00,exp_base,,
T,Better,ds,acc1,92.00,exp_better,exp_base,claim: better than Base
T,Close,ds,acc1,91.00,exp_close,exp_base,claim: better than Base
T,Other seeds,ds,acc1,93.00,exp_other,exp_base,claim: better than Base
T,Worse,ds,acc1,91.50,exp_worse,exp_base,claim: better than Base
"""
#: test/best/acc1 per seed (fractions, as the task logs them)
SEEDS = {
    "exp_base": {1: 0.900, 2: 0.905, 3: 0.895},  # 90.00 ± 0.50
    "exp_better": {1: 0.930, 2: 0.934, 3: 0.926},  # paired gaps +3.0, +2.9, +3.1: supported
    "exp_close": {1: 0.902, 2: 0.899, 3: 0.903},  # paired gaps +0.2, -0.6, +0.8: not resolved
    "exp_other": {4: 0.950, 5: 0.952, 6: 0.948},  # other seeds than Base: Welch's test
    "exp_worse": {1: 0.850, 2: 0.856, 3: 0.853},  # below Base on every seed: contradicted
}


def _fit_run(folder: Path, seed: int, acc1: float) -> None:
    """A run folder as main.py leaves it (<row>/seed<N>/: config.yaml with the resolved seed, and the
    CSV logger's logs/metrics.csv with the test_after_fit figures)."""
    (folder / "logs").mkdir(parents=True)
    config = {"seed_everything": seed, "trainer": {"max_epochs": 2}, "row": {"paper": "toy", "label": "x"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        {"epoch": 0, "val/acc1": acc1 - 0.01},
        {"epoch": 1, "val/acc1": acc1},
        {"epoch": 1, "test/best/acc1": acc1, "test/last/acc1": acc1 - 0.002},
    ]
    with open(folder / "logs" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "val/acc1", "test/best/acc1", "test/last/acc1"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    published = tmp_path / "published"
    published.mkdir()
    (published / "toy.csv").write_text(PUBLISHED)
    monkeypatch.setattr(report, "PUBLISHED_DIR", published)
    monkeypatch.setitem(report.PAPERS, "toy", "Toy paper")
    (tmp_path / "experiments").mkdir()
    return tmp_path


def _args(root: Path, *extra: str) -> list[str]:
    return ["--paper", "toy", "--experiments", str(root / "experiments"), *extra]


def _write_seeds(runs: Path, which=SEEDS) -> None:
    for name, by_seed in which.items():
        for seed, acc1 in by_seed.items():
            _fit_run(runs / name / f"seed{seed}", seed, acc1)


def test_three_seeds_give_mean_std_interval_and_verdicts(toy, capsys):
    runs = toy / "runs"
    _write_seeds(runs)
    # an evaluation record of a seed (main.py test --ckpt_path ...) is the same training run, not a
    # second seed (its own config.yaml holds the test command's default seed)
    record = runs / "exp_base" / "seed1" / "eval" / "test-best"
    (record / "logs").mkdir(parents=True)
    (record / "config.yaml").write_text(yaml.safe_dump({"seed_everything": 42}))
    (record / "logs" / "metrics.csv").write_text("epoch,test/acc1\n1,0.9\n")
    out_csv = toy / "report.csv"
    cells = report.main(_args(toy, "--runs", str(runs), "--csv", str(out_csv)))
    out = capsys.readouterr().out

    base = next(c for c in cells if c.row == "Base")
    assert base.best.n == 3 and sorted(base.best.values) == [1, 2, 3]
    expected = stats.t.interval(0.95, 2, loc=90.0, scale=0.5 / 3**0.5)
    assert base.best.ci == pytest.approx(expected)
    header = next(line for line in out.splitlines() if line.startswith("| row"))
    assert header == (
        "| row | ds acc1 (paper / ours: best, mean ± std (n) [95 % CI]) "
        "| ds acc1 (paper / ours: last, mean ± std (n) [95 % CI]) |"
    )
    assert "| Base | 90.00 / 90.00 ± 0.50 (3) [88.76, 91.24] |" in out
    assert "| Better | 92.00 / 93.00 ± 0.40 (3) [92.01, 93.99] |" in out

    lines = {line.split(" | ")[0][2:]: line for line in out.splitlines() if "| Base | ds acc1 |" in line}
    assert "| +2.00 | +3.00 [+2.75, +3.25] | 3 / 3 | paired t, p = " in lines["Better"]
    assert lines["Better"].endswith("| supported |")
    assert "paired t" in lines["Close"] and lines["Close"].endswith("| not resolved (interval contains 0) |")
    assert "Welch t" in lines["Other seeds"] and lines["Other seeds"].endswith("| supported |")
    assert lines["Worse"].endswith("| contradicted |")

    gains = {g.row: g for g in report.build_gains(cells)}
    paired = stats.ttest_rel([93.0, 93.4, 92.6], [90.0, 90.5, 89.5])
    assert gains["Better"].p == pytest.approx(paired.pvalue, rel=1e-6)
    welch = stats.ttest_ind([95.0, 95.2, 94.8], [90.0, 90.5, 89.5], equal_var=False)
    assert gains["Other seeds"].p == pytest.approx(welch.pvalue, rel=1e-6)

    with open(out_csv) as f:
        rows = {(r["row"], r["vs_row"]): r for r in csv.DictReader(f)}
    better = rows[("Better", "Base")]
    assert (better["n"], better["n_vs"], better["test"], better["verdict"]) == (
        "3",
        "3",
        "paired t",
        "supported",
    )
    assert float(better["mean"]) == pytest.approx(93.0) and float(better["std"]) == pytest.approx(0.4)
    assert float(better["gap_ci_low"]) > 0 and float(better["p"]) < 0.05
    assert rows[("Base", "")]["seeds"] == "1 2 3" and rows[("Base", "")]["vs_experiment"] == ""
    assert float(rows[("Base", "")]["ci_low"]) == pytest.approx(expected[0])


def test_one_seed_per_row_keeps_the_plain_table(toy, capsys):
    runs = toy / "runs"
    _write_seeds(runs, {"exp_base": {1: 0.9}, "exp_better": {1: 0.93}})
    report.main(_args(toy, "--runs", str(runs)))
    out = capsys.readouterr().out
    assert "| row | ds acc1 (paper / ours: best) | ds acc1 (paper / ours: last) |" in out
    assert "| Base | 90.00 / 90.00 | 90.00 / 89.80 |" in out
    assert "| Better | 92.00 / 93.00 | 92.00 / 92.80 |" in out
    assert "| Better | Base | ds acc1 | +2.00 | +3.00 | 1 / 1 | - | n < 2 |" in out
    assert "- Table T: 3 claimed gain(s) lack runs of one row or both (not listed)." in out


def test_the_same_seed_twice_is_refused_naming_both_folders(toy, capsys):
    _write_seeds(toy / "a", {"exp_base": {1: 0.9}})
    _write_seeds(toy / "b", {"exp_base": {1: 0.91}})
    code = run_main(report.main, _args(toy, "--runs", str(toy / "a"), str(toy / "b")))
    err = capsys.readouterr().err
    assert code == 2
    assert "two runs of 'exp_base' with seed 1" in err
    assert str(toy / "a" / "exp_base" / "seed1") in err and str(toy / "b" / "exp_base" / "seed1") in err


class FakeApiRun:
    """Stand-in for ``wandb.apis.public.Run`` at the network boundary only (the public API needs a W&B
    server): the attributes tools.report reads, shaped as wandb 0.2x/0.3x returns them."""

    def __init__(self, name: str, seed: int, acc1: float, state: str = "finished") -> None:
        self.name, self.id, self.state = name, f"{name.split('-')[0]}{seed}", state
        self.path = ["team", "proj", self.id]
        self.created_at = "2026-01-02T03:04:05Z"
        # WandbLogger gets the CLI config under "config" (LoggerSaveConfigCallback); row/paper beside it
        self.config = {
            "config": {"seed_everything": seed, "trainer": {"max_epochs": 2}},
            "row": {"paper": "toy", "label": "Base"},
            "paper": {"acc1": 90.0},
        }
        self.summary_metrics = {"test/best/acc1": acc1, "_runtime": 12, "test/roc_curves": {"_type": "image"}}


def test_a_wandb_api_run_maps_to_a_run_of_its_row_and_seed():
    fake = FakeApiRun("exp_base-seed7", 7, 0.9)
    run = report.run_from_api(fake)
    assert run.seed == 7 and run.source == "wandb-api"
    assert "exp_base" in run.names and run.metrics["test/best/acc1"] == 0.9
    assert "test/roc_curves" not in run.metrics  # media, not a metric
    assert run.config["row"]["label"] == "Base" and run.config["trainer"]["max_epochs"] == 2
    assert run.folder == "wandb:team/proj/exp_base-seed7" and str(run.path) == f"wandb:team/proj/{fake.id}"
    assert report.metric_value(run, "acc1") == (90.0, "best")


def test_report_reads_finished_runs_from_the_wandb_api(toy, monkeypatch, capsys):
    import wandb

    asked = {}

    class FakeApi:  # the network boundary: wandb.Api() talks to the W&B server
        def __init__(self, timeout=None):
            pass

        def runs(
            self, path=None, filters=None, order="+created_at", per_page=50, include_sweeps=False, lazy=True
        ):
            asked.update(path=path, filters=filters, lazy=lazy)
            return [
                *(FakeApiRun(f"exp_base-seed{s}", s, v) for s, v in SEEDS["exp_base"].items()),
                *(FakeApiRun(f"exp_better-seed{s}", s, v) for s, v in SEEDS["exp_better"].items()),
                FakeApiRun("exp_better-seed9", 9, 0.1, state="running"),  # not finished: not read
            ]

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "Api", FakeApi)
    report.main(_args(toy, "--wandb", "team/proj"))
    out = capsys.readouterr().out
    assert asked == {"path": "team/proj", "filters": {"state": "finished"}, "lazy": False}
    assert "| Better | 92.00 / 93.00 ± 0.40 (3) [92.01, 93.99] |" in out
    assert "| Better | Base | ds acc1 | +2.00 | +3.00 [+2.75, +3.25] | 3 / 3 | paired t" in out


def test_wandb_offline_is_one_line_and_fails_only_when_it_was_the_only_source(toy, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert run_main(report.main, _args(toy, "--wandb", "team/proj")) == 2
    err = capsys.readouterr().err
    assert "W&B: WANDB_MODE=offline: --wandb team/proj needs the W&B server; skipped" in err
    assert "error: W&B was the only source of runs and could not be read" in err
    runs = toy / "runs"
    _write_seeds(runs, {"exp_base": {1: 0.9}})
    assert run_main(report.main, _args(toy, "--runs", str(runs), "--wandb", "team/proj")) == 0
    captured = capsys.readouterr()
    assert captured.err.count("W&B:") == 1 and "| Base | 90.00 / 90.00 |" in captured.out


def test_wandb_without_an_account_is_one_line(toy, tmp_path, monkeypatch, capsys):
    # the real client with no key anywhere: wandb.Api() refuses before any network access
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    import wandb

    try:
        assert run_main(report.main, _args(toy, "--wandb", "team/proj")) == 2
    finally:
        wandb.teardown()  # wandb.Api() set up wandb's process-wide settings from this test's HOME
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("W&B:")]
    assert len(lines) == 1 and lines[0].startswith("W&B: cannot read team/proj (") and "API key" in lines[0]


def test_report_is_logged_as_a_wandb_table_offline(toy, tmp_path, monkeypatch, capsys):
    import wandb

    from tests.wandb_records import iter_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = toy / "runs"
    _write_seeds(runs, {k: SEEDS[k] for k in ("exp_base", "exp_better")})
    report.main(_args(toy, "--runs", str(runs), "--wandb_log", "paperbench-test"))
    wandb.teardown()  # shut the W&B service down so the offline run file is complete on disk
    assert "logged the report to W&B run report-toy" in capsys.readouterr().out
    (run_file,) = tmp_path.rglob("offline-run-*/run-*.wandb")
    logged: dict[str, dict] = {}  # a logged Table is a history entry {"_type": "table-file", "path": ...}
    for record in iter_records(run_file):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                if len(item.nested_key) == 2:  # wandb >= 0.2x: ["report/toy", "path"]
                    logged.setdefault(item.nested_key[0], {})[item.nested_key[1]] = json.loads(
                        item.value_json
                    )
    assert logged["report/toy"]["_type"] == "table-file"
    assert logged["report/toy_gains"]["_type"] == "table-file"
    table = json.loads((run_file.parent / "files" / logged["report/toy"]["path"]).read_text())
    assert table["columns"] == report.CSV_COLUMNS
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    better = next(r for r in rows if r["row"] == "Better")
    assert (better["vs_row"], better["n"], better["verdict"]) == ("Base", 3, "supported")
    assert better["mean"] == pytest.approx(93.0)
    gains = json.loads((run_file.parent / "files" / logged["report/toy_gains"]["path"]).read_text())
    assert [dict(zip(gains["columns"], r))["verdict"] for r in gains["data"]].count("supported") == 1


@pytest.mark.parametrize("paper", ["acanet", "msfca", "fft", "tokenfusion", "csnet"])
def test_every_claimed_gain_names_a_row_of_its_table_the_paper_shows_it_beating(paper):
    rows = report.read_published(paper)
    by_key = {}
    for r in rows:
        for alt in r["experiment"].split("|"):
            by_key[(r["table"], r["dataset"], r["metric"], alt)] = r
    claims = 0
    for r in rows:
        if not r["baseline"] or r["metric"].startswith(("auc_", "ap_")):  # Wilcoxon cells: the other run
            continue
        assert r["metric"] not in report.COMPLEXITY, r
        assert r["note"], f"{paper} {r['table']} {r['row']}: say where the paper claims the gain"
        for entry in r["baseline"].split(";"):
            base = next(
                (by_key.get((r["table"], r["dataset"], r["metric"], a)) for a in entry.split("|")), None
            )
            assert base is not None, (
                f"{paper} table {r['table']} {r['row']}: '{entry}' is no row of that table"
            )
            assert base["row"] != r["row"]
            assert float(r["value"]) > float(base["value"]), (paper, r["table"], r["row"], base["row"])
            claims += 1
    if paper != "csnet":  # CS-Net: abstract only, no figures, no claims
        assert claims > 0
    cells = report.build_cells(paper, [], Path("experiments"))
    gains = report.build_gains(cells)
    assert len(gains) == claims and all(g.verdict == "n < 2" for g in gains)


def test_wandb_log_inside_an_active_run_logs_into_that_run(toy, tmp_path, monkeypatch, capsys):
    import wandb

    from tests.wandb_records import iter_records

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = toy / "runs"
    _write_seeds(runs, {"exp_base": {1: 0.9}})
    outer = wandb.init(project="analysis", name="my-analysis", mode="offline")
    try:
        report.main(_args(toy, "--runs", str(runs), "--wandb_log"))
        assert wandb.run is outer  # the report neither finished it nor started another
    finally:
        outer.finish()
        wandb.teardown()
    assert "logged the report to W&B run my-analysis" in capsys.readouterr().out
    (run_file,) = tmp_path.rglob("offline-run-*/run-*.wandb")  # one run only: the active one
    keys = {
        item.nested_key[0]
        for record in iter_records(run_file)
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
        if item.nested_key
    }
    assert {"report/toy", "report/toy_gains"} <= keys


def test_wilcoxon_predictions_are_the_best_checkpoints_of_a_seed(tmp_path):
    # test_after_fit writes eval/test-best/ then eval/test-last/ (newer): the best column's is used
    folder = tmp_path / "runs" / "exp_base" / "seed1"
    _fit_run(folder, 1, 0.9)
    for age, record in ((100, "test-best"), (0, "test-last")):
        (folder / "eval" / record).mkdir(parents=True)
        (folder / "eval" / record / "predictions.pt").write_bytes(b"")
        when = (folder / "config.yaml").stat().st_mtime - age
        os.utime(folder / "eval" / record / "predictions.pt", (when, when))
    (run,) = report.find_runs([tmp_path / "runs"])
    assert run.predictions == folder / "eval" / "test-best" / "predictions.pt"
