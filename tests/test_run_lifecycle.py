"""A run loses nothing and never reports success it did not have (issue 19; issue 13 item 2's CLI part).

Each test names the numbered item it covers. CLI tests run ``main()`` in-process (exit code, stderr) on the
bundled digits with a tiny model and one or two batches per epoch.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import stat
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from datamodules import ImageFolderDataModule
from datamodules.base import DatasetLayoutError
from datamodules.file_walk import walk_files
from lightning_modules import ClassificationTask, cli
from lightning_modules.checkpoint_io import AtomicCheckpointIO
from lightning_modules.run_folder import RunLock, RunLockedError, eval_record_dir
from tests.dataset_fixtures import build_dataset_fixture
from tests.test_cli import run_main

QUICKSTART = str(cli.ROOT / "experiments" / "quickstart.yaml")
TINY = [
    "--config",
    QUICKSTART,
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.limit_train_batches",
    "1",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "1",
    "--trainer.limit_predict_batches",
    "1",
    "--model.init_args.backbone",
    "resnet10t",
    "--data.init_args.image_size",
    "16",
    "--data.init_args.batch_size",
    "8",
]


def _args(root: Path, *extra: str, logger: str = "false") -> list[str]:
    return [*TINY, "--trainer.default_root_dir", str(root), "--trainer.logger", logger, *extra]


def _fit(monkeypatch, capsys, root: Path, *extra: str, logger: str = "false") -> tuple[int, str, str]:
    return run_main(
        monkeypatch, capsys, "fit", *_args(root, "--test_after_fit", "false", *extra, logger=logger)
    )


def _epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


# ---------------------------------------------------------------------------------------------- item 1
def test_last_ckpt_is_the_latest_epoch_when_validation_stops_improving(monkeypatch, capsys, tmp_path):
    """val/acc1 falls every epoch: best stays epoch 0, last.ckpt must still be the latest epoch; resume
    continues from there (and the CSV metrics file), and test_after_fit logs test/last/* and test/best/*."""

    def declining(self):  # a validation metric that only gets worse
        self.val_metrics.reset()
        self.val_loss.reset()
        self.log("val/acc1", torch.tensor(1.0 / (self.current_epoch + 1)))

    monkeypatch.setattr(ClassificationTask, "on_validation_epoch_end", declining)
    csv_logger = "lightning.pytorch.loggers.CSVLogger"
    code, out, err = _fit(
        monkeypatch,
        capsys,
        tmp_path,
        "--trainer.max_epochs",
        "3",
        "--test_after_fit",
        "true",
        logger=csv_logger,
    )
    assert code == 0, err
    ckpts = tmp_path / "quickstart" / "seed42" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    assert _epoch(ckpts / "last.ckpt") == 2  # Lightning's save_last alone leaves epoch 0 here
    metrics = tmp_path / "quickstart" / "seed42" / "logs" / "metrics.csv"
    rows = list(csv.DictReader(metrics.open()))
    # issue 13 item 2: both checkpoints tested after fit, under distinct keys, in the fit's logger
    assert any(r.get("test/last/acc1") for r in rows) and any(r.get("test/best/acc1") for r in rows)
    assert (tmp_path / "quickstart" / "seed42" / "eval" / "test-last" / "predictions.pt").is_file()
    assert (tmp_path / "quickstart" / "seed42" / "eval" / "test-best" / "predictions.pt").is_file()

    code, _, err = _fit(
        monkeypatch, capsys, tmp_path, "--trainer.max_epochs", "4", "--ckpt_path", "last", logger=csv_logger
    )
    assert code == 0, err
    resumed = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 3 and resumed["global_step"] == 4  # epochs 1-2 were not trained again
    rows_after = list(csv.DictReader(metrics.open()))
    assert len(rows_after) > len(rows) and rows_after[: len(rows)] == [
        {k: r.get(k, "") for k in rows_after[0]} for r in rows
    ]  # the same metrics file, continued


# ---------------------------------------------------------------------------------------------- item 2
def _image_folder(tmp_path: Path) -> Path:
    return Path(build_dataset_fixture("datamodules.ImageFolderDataModule", tmp_path / "data")["root"])


def test_symlink_loop_is_not_followed_twice_and_two_classes_are_refused(tmp_path):
    root = _image_folder(tmp_path)
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    n_files = len(walk_files(first)[0])
    (first / "self").symlink_to(".", target_is_directory=True)  # a loop inside one class
    files, dangling = walk_files(first)
    assert len(files) == n_files and not dangling  # each file once, the loop entered never
    (first / "self").unlink()
    (first / "loop").symlink_to("..", target_is_directory=True)  # alpha/loop -> .. : all classes in alpha
    dm = ImageFolderDataModule(root=str(root), image_size=8, batch_size=4)
    with pytest.raises(DatasetLayoutError, match="more than one class folder"):
        dm.setup("fit")


def test_dangling_symlink_is_found_at_setup(tmp_path):
    root = _image_folder(tmp_path)
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (first / "ghost.jpg").symlink_to(tmp_path / "moved-away.jpg")
    dm = ImageFolderDataModule(root=str(root), image_size=8, batch_size=4)
    with pytest.raises(DatasetLayoutError, match="dangling symlink"):
        dm.setup("fit")


# ---------------------------------------------------------------------------------------------- item 3
def _zip(path: Path, classes: tuple[str, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for cls in classes:
            for i in range(2):
                buffer = io.BytesIO()
                Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(buffer, "PNG")
                zf.writestr(f"{cls}/{i}.png", buffer.getvalue())
    return path


def test_zip_cache_is_keyed_by_archive_not_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERBENCH_CACHE", str(tmp_path / "cache"))
    a = ImageFolderDataModule(root=str(_zip(tmp_path / "a" / "train.zip", ("cat", "dog"))), image_size=8)
    b = ImageFolderDataModule(root=str(_zip(tmp_path / "b" / "train.zip", ("x", "y", "z"))), image_size=8)
    assert a.root != b.root
    assert a.class_names == ["cat", "dog"] and b.class_names == ["x", "y", "z"]
    assert sorted(p for p in os.listdir(a.root) if not p.startswith(".")) == ["cat", "dog"]  # still its own


# ---------------------------------------------------------------------------------------------- items 4-6
@pytest.fixture
def fitted(monkeypatch, capsys, tmp_path):
    code, _, err = _fit(monkeypatch, capsys, tmp_path, "--trainer.max_steps", "1")
    assert code == 0, err
    return tmp_path


def test_ckpt_path_does_not_silently_replace_model_arguments(fitted, monkeypatch, capsys):
    ckpt = str(fitted / "quickstart" / "seed42" / "checkpoints" / "last.ckpt")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "test",
        *_args(fitted, "--ckpt_path", ckpt, "--model.init_args.backbone", "resnet18"),
    )
    assert code == 2 and "backbone='resnet10t'" in err and "resnet18" in err and "Traceback" not in err
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "test",
        *_args(fitted, "--ckpt_path", ckpt, "--model.init_args.metrics", "[acc1, f1]"),
    )
    assert code == 0, err
    assert "test/f1" in out and "test/kappa" not in out  # the command line's metrics, not the checkpoint's


def test_missing_checkpoints_are_errors(monkeypatch, capsys, tmp_path, fitted):
    code, _, err = _fit(monkeypatch, capsys, fitted, "--name", "quickstrat", "--ckpt_path", "last")
    assert code == 2 and "no checkpoint" in err and "--name quickstart" in err  # not a fresh run, rc 0
    assert not (fitted / "quickstrat").exists()
    code, _, err = run_main(monkeypatch, capsys, "test", *_args(tmp_path / "empty", "--ckpt_path", "last"))
    assert code == 2 and "no checkpoint" in err  # not a test of random weights
    code, _, err = run_main(
        monkeypatch, capsys, "test", *_args(fitted, "--ckpt_path", str(fitted / "x.ckpt"))
    )
    assert code == 2 and "no such file" in err
    bad = fitted / "truncated.ckpt"
    bad.write_bytes((fitted / "quickstart" / "seed42" / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    code, _, err = run_main(monkeypatch, capsys, "test", *_args(fitted, "--ckpt_path", str(bad)))
    assert code == 2 and "not a readable checkpoint" in err and "weights_only=False" not in err


def test_evaluations_never_overwrite_the_fit_record(fitted, monkeypatch, capsys):
    run = fitted / "quickstart" / "seed42"
    fit_config = (run / "config.yaml").read_bytes()
    for _ in range(2):
        code, _, err = run_main(
            monkeypatch,
            capsys,
            "test",
            "--config",
            str(run / "config.yaml"),
            "--trainer.limit_test_batches",
            "1",
            "--ckpt_path",
            "last",
        )
        assert code == 0, err
    assert (run / "config.yaml").read_bytes() == fit_config  # still says how the model was trained
    records = sorted(p.name for p in (run / "eval").iterdir())
    assert records == ["test-last", "test-last-v1"]  # one record per evaluation
    for name in records:
        saved = yaml.safe_load((run / "eval" / name / "config.yaml").read_text())
        assert saved["ckpt_path"].endswith("last.ckpt")
        assert (run / "eval" / name / "predictions.pt").is_file()
    assert not (run / "quickstart").exists() and not (run / "config").exists()  # no runs/X/X nesting


def test_eval_record_names():
    assert (
        eval_record_dir(Path("/nonexistent/r"), "test", "/x/best-epoch003.ckpt").name == "test-best-epoch003"
    )
    assert eval_record_dir(Path("/nonexistent/r"), "predict", None).name == "predict-init"


# ---------------------------------------------------------------------------------------------- item 7
def test_refused_and_smoke_fits_keep_the_wandb_id(fitted, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = fitted / "quickstart" / "seed42"
    (run / "wandb_id").write_text("keepme")
    wandb = "lightning.pytorch.loggers.WandbLogger"
    code, _, _ = _fit(monkeypatch, capsys, fitted, "--trainer.max_steps", "1", logger=wandb)
    assert code == 2  # refused: the run exists
    code, _, err = _fit(monkeypatch, capsys, fitted, "--trainer.fast_dev_run", "true", logger=wandb)
    assert code == 0, err
    assert (run / "wandb_id").read_text() == "keepme"
    assert not (run / "wandb").exists()


def test_evaluations_are_their_own_wandb_runs(tmp_path):
    from jsonargparse import Namespace

    def cfg():
        logger = Namespace(
            class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(offline=True)
        )
        return Namespace(trainer=Namespace(logger=logger, default_root_dir=str(tmp_path / "r")))

    fit = cfg()
    new_id = cli.configure_loggers(fit, tmp_path / "r", "r", resuming=False, subcommand="fit")
    assert fit.trainer.logger.init_args.id == new_id and not (tmp_path / "r" / "wandb_id").exists()
    ev = cfg()
    record = tmp_path / "r" / "eval" / "test-last"
    assert cli.configure_loggers(ev, record, "r", resuming=True, subcommand="test") is None
    assert (
        ev.trainer.logger.init_args.save_dir == str(record) and ev.trainer.logger.init_args.get("id") is None
    )
    assert ev.trainer.logger.dict_kwargs == {"group": "r", "job_type": "test"}


# ---------------------------------------------------------------------------------------------- item 8
def test_second_fit_into_a_locked_run_folder_is_refused(monkeypatch, capsys, tmp_path):
    lock = RunLock(tmp_path / "quickstart" / "seed42")
    lock.acquire()
    try:
        with pytest.raises(RunLockedError):
            RunLock(tmp_path / "quickstart" / "seed42").acquire()
        code, _, err = _fit(monkeypatch, capsys, tmp_path, "--trainer.max_steps", "1")
        assert code == 2 and "in use by another fit" in err and f"pid={os.getpid()}" in err
        assert not (tmp_path / "quickstart" / "seed42" / "checkpoints").exists()
    finally:
        lock.release()
    # free again (released; a dead holder's flock is gone too)
    RunLock(tmp_path / "quickstart" / "seed42").acquire()


def test_stale_lock_file_is_taken_over(tmp_path):
    (tmp_path / "run.lock").write_text(f"pid=999999999 host={socket.gethostname()} started=x cmd=y\n")
    lock = RunLock(tmp_path)
    lock._acquire_by_file()  # the file-only fallback (file systems without flock)
    assert f"pid={os.getpid()}" in (tmp_path / "run.lock").read_text()
    lock.release()
    (tmp_path / "run.lock").write_text("pid=1 host=another-node started=x cmd=y\n")
    with pytest.raises(RunLockedError, match="another-node"):
        RunLock(tmp_path)._acquire_by_file()


# ---------------------------------------------------------------------------------------------- item 9
def test_checkpoints_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        AtomicCheckpointIO().save_checkpoint({"x": torch.tensor(1)}, tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == 0o640  # group-readable, as umask 027 says


# ---------------------------------------------------------------------------------------------- predict
def test_predict_writes_a_csv_for_a_folder_of_images(fitted, monkeypatch, capsys, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, sub in enumerate(["", "sub"]):
        Image.new("RGB", (20, 20), (i * 90, 10, 10)).save(folder / sub / f"{i}.png")
    ckpt = str(fitted / "quickstart" / "seed42" / "checkpoints" / "last.ckpt")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "predict",
        *_args(fitted, "--ckpt_path", ckpt, "--predict_dir", str(folder), "--predict_top_k", "3"),
    )
    assert code == 0, err
    out_file = fitted / "quickstart" / "seed42" / "eval" / "predict-last" / "predictions.csv"
    assert f"predictions: {out_file}" in err
    rows = list(csv.DictReader(out_file.open()))
    assert sorted(Path(r["path"]).name for r in rows) == ["0.png", "1.png"]
    assert set(rows[0]) == {
        "index",
        "path",
        "label",
        "pred_1",
        "prob_1",
        "pred_2",
        "prob_2",
        "pred_3",
        "prob_3",
    }
    assert all(0 <= float(r["prob_1"]) <= 1 and float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)

    code, _, err = run_main(monkeypatch, capsys, "predict", *_args(fitted, "--ckpt_path", ckpt))  # test split
    assert code == 0, err
    rows = list(csv.DictReader((out_file.parent.with_name("predict-last-v1") / "predictions.csv").open()))
    assert len(rows) == 8 and all(r["label"] in [str(c) for c in range(10)] for r in rows)  # 1 batch of 8


# ---------------------------------------------------------------------------------------------- messages
def test_mistyped_yaml_key_is_one_message_with_close_keys_and_file(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    lable_smoothing: 0.1\n")
    code, _, err = run_main(monkeypatch, capsys, "fit", *_args(tmp_path, "--config", str(bad)))
    assert code == 2 and "usage:" not in err and "Traceback" not in err
    assert "lable_smoothing" in err and "model.init_args.label_smoothing" in err and str(bad) in err


def test_wrong_value_type_is_one_message(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(
        monkeypatch, capsys, "fit", *_args(tmp_path, "--data.init_args.batch_size", "many")
    )
    assert code == 2 and "usage:" not in err and "batch_size" in err and "many" in err


def test_label_smoothing_out_of_range_is_one_message():
    with pytest.raises(ValueError, match=r"label_smoothing is a fraction in \[0, 1\), got 1.0"):
        ClassificationTask(backbone="resnet10t", num_classes=3, label_smoothing=1.0)


def test_input_too_small_for_the_model_is_one_message():
    class DM:
        image_size = 32

    model = ClassificationTask(backbone="vit_tiny_patch16_224", num_classes=3)
    with pytest.raises(cli.InputSizeError, match="cannot take 32x32 inputs"):
        cli.check_input_size(model, DM())
    DM.image_size = 224
    cli.check_input_size(model, DM())  # the right size passes


def test_pretrained_without_network_fails_fast_with_the_local_alternative(monkeypatch):
    from lightning_modules import hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(hub, "weights_in_cache", lambda name: False)
    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(
        hub.PretrainedUnavailableError, match="model.init_args.pretrained: /path/to/weights.pth"
    ):
        ClassificationTask(backbone="resnet10t", num_classes=3, pretrained=True)


def test_malformed_cub_label_file_is_one_message(tmp_path):
    from datamodules import CUB200DataModule

    kwargs = build_dataset_fixture("datamodules.CUB200DataModule", tmp_path)
    dm = CUB200DataModule(**kwargs, image_size=8)
    labels = Path(dm.data_dir) / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace(" ", "\t", 1))
    with pytest.raises(DatasetLayoutError, match="line 1 is not"):
        dm.setup("fit")


# ---------------------------------------------------------------------------------------------- report
def test_report_marks_unfinished_runs(tmp_path):
    from tools.report import Run, read_metrics_csv, run_progress

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,val/acc1,test/acc1\n0,1,0.5,\n2,3,0.6,\n1,4,,0.7\n")  # last row: a test
    run = Run(tmp_path, ["x"], read_metrics_csv(metrics), {"trainer": {"max_epochs": 10}})
    assert run_progress(run) == "3/10"
    run.config = {"trainer": {"max_epochs": 3}}
    assert run_progress(run) == ""  # finished


def test_print_config_shows_the_run_folder_and_logger_paths(monkeypatch, capsys, tmp_path):
    args = _args(tmp_path, "--print_config", logger="lightning.pytorch.loggers.CSVLogger")
    code, out, err = run_main(monkeypatch, capsys, "fit", *args)
    assert code == 0, err
    assert f"# run folder: {tmp_path / 'quickstart' / 'seed42'}" in out
    assert f"# logger CSVLogger: {tmp_path / 'quickstart' / 'seed42' / 'logs' / 'metrics.csv'}" in out
    assert "backbone: resnet10t" in out and not (tmp_path / "quickstart").exists()  # printed, nothing run


def test_nan_validation_is_one_message_not_silently_dropped(tmp_path):
    from lightning.pytorch import Trainer

    from datamodules import DigitsDataModule
    from lightning_modules.losses.base import TaskLoss
    from lightning_modules.task import NonFiniteValidationError

    class NaNInEval(TaskLoss):  # what a model whose feature maps vanish gives at validation
        def forward(self, outputs, target):
            loss = torch.nn.functional.cross_entropy(outputs["logits"], target)
            return {"loss": loss if self.training else loss * float("nan")}

    task = ClassificationTask(backbone="resnet10t", num_classes=10, loss=NaNInEval())
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=tmp_path,
    )
    with pytest.raises(NonFiniteValidationError, match="validation loss is nan at epoch 0"):
        trainer.fit(task, datamodule=DigitsDataModule(batch_size=8, image_size=16))


def test_model_summary_counts_real_flops(monkeypatch, tmp_path):
    from lightning.pytorch.utilities.model_summary import ModelSummary

    monkeypatch.setattr("sys.argv", ["main.py"])
    built = cli.cli_main(["fit", *_args(tmp_path, "--trainer.max_steps", "1", "--test_after_fit", "false")])
    assert tuple(built.model.example_input_array.shape) == (1, 3, 16, 16)  # the datamodule's input size
    assert ModelSummary(built.model).total_flops > 0  # Lightning printed "Total FLOPs: 0" before
