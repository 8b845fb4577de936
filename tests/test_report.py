"""tools.report: one checkpoint per column (best-validation vs last), never mixed within a row (issue 13)."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from tools import report

PUBLISHED = """table,row,dataset,metric,value,experiment,baseline,note
T,Model A,ds,acc1,91.00,exp_a,,
T,Model A,ds,f1,80.00,exp_a,,
T,Model B,ds,acc1,92.00,exp_b,,
T,Model B,ds,f1,81.00,exp_b,,
"""


def _run(folder: Path, rows: list[dict]) -> None:
    """A run folder as main.py + CSVLogger leave it (metrics.csv, config.yaml)."""
    (folder / "logs" / "version_0").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 2}}))
    keys = sorted({k for row in rows for k in row})
    with open(folder / "logs" / "version_0" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_report_shows_best_and_last_checkpoints_in_distinct_columns(tmp_path, monkeypatch, capsys):
    published = tmp_path / "published"
    published.mkdir()
    (published / "toy.csv").write_text(PUBLISHED)
    monkeypatch.setattr(report, "PUBLISHED_DIR", published)
    monkeypatch.setitem(report.PAPERS, "toy", "Toy paper")
    runs = tmp_path / "runs"
    epochs = [{"epoch": e, "val/acc1": 0.5, "val/acc1_best": 0.6, "val/f1_best": 0.55} for e in (0, 1)]
    # run A: --test_after_fit tested both checkpoints
    _run(
        runs / "exp_a",
        [
            *epochs,
            {"epoch": 1, "test/best/acc1": 0.9, "test/best/f1": 0.8},
            {"epoch": 1, "test/last/acc1": 0.85, "test/last/f1": 0.7},
        ],
    )
    # run B: its best checkpoint's f1 is missing; a validation f1 exists but must not fill that row
    _run(runs / "exp_b", [*epochs, {"epoch": 1, "test/best/acc1": 0.93, "test/last/acc1": 0.94}])
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    out_csv = tmp_path / "toy.csv"
    cells = report.main(
        ["--paper", "toy", "--runs", str(runs), "--experiments", str(experiments), "--csv", str(out_csv)]
    )
    by_key = {(c.row, c.metric): c for c in cells}
    a_acc, a_f1 = by_key[("Model A", "acc1")], by_key[("Model A", "f1")]
    assert (a_acc.ours, a_acc.ours_last, a_acc.origin) == ("90.00", "85.00", "best")
    assert (a_f1.ours, a_f1.ours_last, a_f1.origin) == ("80.00", "70.00", "best")
    b_acc, b_f1 = by_key[("Model B", "acc1")], by_key[("Model B", "f1")]
    assert (b_acc.ours, b_acc.ours_last) == ("93.00", "94.00")
    assert (b_f1.ours, b_f1.ours_last) == ("", "")  # not the val/f1_best of another checkpoint
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| row"))
    assert header == (
        "| row | ds acc1 (paper / ours: best) | ds acc1 (paper / ours: last) "
        "| ds f1 (paper / ours: best) | ds f1 (paper / ours: last) |"
    )
    assert "| Model A | 91.00 / 90.00 | 91.00 / 85.00 | 80.00 / 80.00 | 80.00 / 70.00 |" in out
    assert "| Model B | 92.00 / 93.00 | 92.00 / 94.00 | 81.00 / - | 81.00 / - |" in out
    with open(out_csv) as f:
        rows = {(r["row"], r["metric"]): r for r in csv.DictReader(f)}
    assert (rows[("Model A", "acc1")]["ours"], rows[("Model A", "acc1")]["ours_last"]) == ("90.00", "85.00")
    assert rows[("Model A", "acc1")]["origin"] == "best"


def test_a_run_without_test_metrics_uses_one_validation_source(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "exp_a", [{"epoch": 0, "val/acc1": 0.5, "val/f1": 0.4}, {"epoch": 1, "val/acc1": 0.6}])
    (run,) = report.find_runs([runs])
    assert report.run_source(run) == "val"
    assert report.metric_value(run, "acc1") == (60.0, "val")  # the last epoch, for every metric
    assert report.metric_value(run, "acc1", "last") == (None, "")


def test_published_figures_flag_paper_errors_instead_of_copying_them():
    msfca = {(r["table"], r["row"], r["metric"]): r for r in report.read_published("msfca")}
    typo = msfca[("VI", "+PCA-Serial, version B", "acc1")]
    assert typo["value"] == "96.44" and "98.44" in typo["flag"]  # Table II's figure; the misprint named
    assert msfca[("II", "+PCA-Serial", "acc1")]["value"] == "96.44"
    assert msfca[("I", "Baseline vs. +Cross Scale", "auc_p_value")]["value"] == "0.0041"
    assert msfca[("I", "Baseline vs. +Cross Scale", "ap_p_value")]["value"] == "0.0027"
    assert not any(r.get("flag") for k, r in msfca.items() if k[:2] != ("VI", "+PCA-Serial, version B"))
    tokenfusion = {(r["table"], r["row"], r["metric"]): r for r in report.read_published("tokenfusion")}
    repeated = tokenfusion[("4", "Layer by layer, Use Class token, Mixing", "acc1")]
    original = tokenfusion[("1", "Layer by layer, Mixing", "acc1")]
    assert repeated["value"] == original["value"] and "Table 1" in repeated["flag"]
    cells = report.build_cells("msfca", [], Path("experiments"))
    out = report.to_markdown(cells, "msfca")
    assert "96.44 [flag] / -" in out and "[flag] +PCA-Serial, version B, acc1 96.44: paper typo" in out
