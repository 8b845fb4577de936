"""main.py: one clear message for bad input, run folders, refusing to overwrite a run, resume naming."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import main as cli

QUICKSTART = str(cli.ROOT / "experiments" / "quickstart.yaml")
FAST = [
    "--trainer.logger",
    "false",
    "--trainer.max_steps",
    "1",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--test_after_fit",
    "false",
    "--data.init_args.image_size",
    "16",
]


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["main.py", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_model_is_one_message_with_close_matches(monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, "fit", "--config", QUICKSTART, *FAST, "--model.init_args.backbone", "resnet81"
    )
    assert code == 2
    assert "unknown backbone 'resnet81'" in err and "resnet18" in err
    assert "Traceback" not in err


def test_a_command_line_run_does_not_warn_about_its_own_arguments(monkeypatch, capsys):
    """main.py hands LightningCLI the command line with `_base_` files expanded; Lightning's warning about
    passing both ``args`` and ``sys.argv`` would open every run's output."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_main(
            monkeypatch,
            capsys,
            "fit",
            "--config",
            QUICKSTART,
            *FAST,
            "--model.init_args.backbone",
            "resnet81",
        )
    assert code == 2 and "unknown backbone" in err  # parsing ran
    assert not [w for w in caught if "args parameter is intended" in str(w.message)]


def test_unknown_yaml_key_is_rejected_with_its_name(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"init_args": {"lerning_rate": 0.1}}}))
    code, _, err = run_main(monkeypatch, capsys, "fit", "--config", QUICKSTART, "--config", str(bad), *FAST)
    assert code == 2
    assert "lerning_rate" in err
    assert "Traceback" not in err


def test_wrong_value_type_is_rejected(monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, "fit", "--config", QUICKSTART, *FAST, "--data.init_args.batch_size", "many"
    )
    assert code == 2
    assert "batch_size" in err and "Traceback" not in err


def test_unknown_metric_is_one_message(monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, "fit", "--config", QUICKSTART, *FAST, "--model.init_args.metrics", "[acc1, top1]"
    )
    assert code == 2 and "top1" in err and "available" in err


def test_run_folder_and_refusal_to_overwrite(monkeypatch, capsys, tmp_path):
    runs = tmp_path / "runs"
    args = ["fit", "--config", QUICKSTART, *FAST, "--trainer.default_root_dir", str(runs)]
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    run_dir = runs / "quickstart" / "seed42"  # <row>/seed<N>/ (base.yaml: seed_everything 42)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["backbone"] == "resnet18"
    assert saved["data"]["class_path"].endswith("DigitsDataModule")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["num_classes"] == 10  # linked from data.num_classes

    before = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "--ckpt_path last" in err
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before  # nothing overwritten

    code, _, err = run_main(
        monkeypatch,
        capsys,
        *args[:-2],
        "--trainer.default_root_dir",
        str(runs),
        "--trainer.max_steps",
        "2",
        "--ckpt_path",
        "last",
    )
    assert code == 0, err


class Cfg(dict):
    """A stand-in for a jsonargparse Namespace: ``cfg.get(key, default)`` only."""

    def get(self, k, d=None):
        return super().get(k, d)


def test_experiment_name_is_the_config_stem():
    cfg = Cfg(config=[cli.BASE_CONFIG, Path("experiments/acanet/acanet18_cub_ce.yaml")])
    assert cli.experiment_name(cfg) == "acanet18_cub_ce"
    assert cli.experiment_name(Cfg(config=[cli.BASE_CONFIG])) == "default"


def test_wandb_run_id_is_kept_for_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    first = cli.wandb_run_id(tmp_path, resuming=False)
    assert (tmp_path / "wandb_id").read_text() == first
    assert cli.wandb_run_id(tmp_path, resuming=True) == first  # `--ckpt_path last` continues the same W&B run
    assert cli.wandb_run_id(tmp_path, resuming=False) != first  # a fresh run gets a new id


def test_slurm_requeue_is_not_refused(tmp_path):
    """A requeued SLURM job reruns the same command: with an HPC checkpoint present it must go on."""
    run_dir = tmp_path / "exp"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(cli.RunExistsError):
        cli.refuse_to_overwrite(Cfg(), run_dir)
    (run_dir / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    cli.refuse_to_overwrite(Cfg(), run_dir)  # no error: Lightning resumes from the HPC checkpoint
