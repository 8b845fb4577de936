"""Config mistakes in losses, schedulers and param_groups stop the CLI like model mistakes: one line, exit 2.

Each case goes through ``main.py`` (``cli.main``): the error type carries ``user_error = True``, so the CLI
prints ``error: <message>`` alone (no traceback) and exits with status 2.
"""

from __future__ import annotations

import json
import sys

import pytest

import main as cli
from lightning_modules.losses._utils import LossConfigError
from lightning_modules.schedulers import SchedulerConfigError
from lightning_modules.task import TaskConfigError

QUICKSTART = str(cli.ROOT / "experiments" / "quickstart.yaml")
FAST = [
    "--trainer.logger", "false", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
    "--data.init_args.image_size", "16",
    "--model.init_args.backbone", "resnet10t",
]  # fmt: skip

CASES = {
    "loss": (
        ["--model.init_args.loss", json.dumps({"class_path": "lightning_modules.losses.FocalLoss",
                                               "init_args": {"gamma": -1.0}})],
        LossConfigError, "gamma must be >= 0",
    ),
    "scheduler": (
        ["--model.init_args.lr_scheduler.init_args.warmup_epochs", "9"],
        SchedulerConfigError, "warmup_epochs (9) < max_epochs (8)",
    ),
    "param_groups_pattern": (
        ["--model.init_args.param_groups", json.dumps([{"pattern": "no_such_layer", "lr_mult": 2.0}])],
        TaskConfigError, "matches no trainable parameter",
    ),
    "param_groups_regex": (
        ["--model.init_args.param_groups", json.dumps([{"pattern": "fc[", "lr_mult": 2.0}])],
        TaskConfigError, "not a valid regex",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_config_error_is_one_line_and_exit_2(case: str, monkeypatch, capsys) -> None:
    args, error_type, text = CASES[case]
    assert getattr(error_type, "user_error", False) and issubclass(error_type, ValueError)
    monkeypatch.delenv("PAPERBENCH_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["main.py", "fit", "--config", QUICKSTART, *FAST, *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert info.value.code == 2, err[-2000:]
    assert len(errors) == 1 and text in errors[0], err[-2000:]
    assert "Traceback" not in err + out
