"""Tests of the analysis suite: per-class metrics, Wilcoxon, complexity, Grad-CAM, t-SNE, attention maps,
the TestAnalysis callback (single process and 2-process DDP) and the paper table report.

Every figure is checked against a hand-computed value, scipy, or a known model.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from PIL import Image
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import analysis
from lightning_modules.analysis import write_analysis
from lightning_modules.gather import interleave_shards, order_by_index
from lightning_modules.metrics import per_class_auc_ap
from tools import analysis as analysis_tool
from tools import gradcam, profile, report, tsne, wilcoxon
from tools.common import ToolError, load_network, run_main

# ------------------------------------------------------------------------------------ fixed inputs
# Two classes; class-0 probabilities 0.9, 0.8, 0.6, 0.3 for labels 0, 1, 0, 1.
# Class 0: positives score 0.9, 0.6; negatives 0.8, 0.3 -> pairs won 3 of 4 -> AUC 0.75.
#   ranked 0.9(P) 0.8(N) 0.6(P) 0.3(N): AP = 1/2 * 1 + 1/2 * 2/3 = 0.8333.
# Class 1: scores 0.1, 0.2, 0.4, 0.7; positives 0.2, 0.7; negatives 0.1, 0.4 -> 3 of 4 -> AUC 0.75.
#   ranked 0.7(P) 0.4(N) 0.2(P) 0.1(N): AP = 0.8333.
PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 0, 1])


def test_per_class_auc_ap_hand_computed():
    auc, ap = per_class_auc_ap(PROBS.log(), LABELS)  # log-probabilities: softmax gives PROBS back
    np.testing.assert_allclose(auc, [0.75, 0.75], atol=1e-12)
    np.testing.assert_allclose(ap, [5 / 6, 5 / 6], atol=1e-12)


def test_per_class_auc_ap_absent_class_is_nan():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    auc, ap = per_class_auc_ap(probs, torch.tensor([0, 1, 1, 0]), logits=False)
    # class 0: positives 0.7, 0.1 vs negatives 0.2, 0.6 -> 2 of 4 pairs; AP = 1/2 * 1 + 1/2 * 2/4
    np.testing.assert_allclose(auc[:2], [0.5, 0.5])
    np.testing.assert_allclose(ap[:2], [0.75, 0.5 * 0.5 + 0.5 * 2 / 3])
    assert math.isnan(auc[2]) and math.isnan(ap[2])


def test_write_analysis_files_and_confusion(tmp_path):
    logits = PROBS.log().float()
    files = write_analysis(logits, LABELS, tmp_path, class_names=["cat", "dog"])
    # predictions argmax: 0, 0, 0, 1 -> true 0: [2, 0]; true 1: [1, 1]
    with open(files["confusion_csv"]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", "cat", "dog"]
    assert rows[1:] == [["cat", "2", "0"], ["dog", "1", "1"]]
    with open(files["per_class_csv"]) as f:
        per_class = list(csv.DictReader(f))
    assert float(per_class[0]["auc"]) == pytest.approx(0.75)
    assert float(per_class[1]["ap"]) == pytest.approx(5 / 6)
    assert float(per_class[1]["accuracy"]) == pytest.approx(0.5)
    saved = torch.load(files["predictions"], weights_only=True)
    assert torch.equal(saved["labels"], LABELS) and torch.allclose(saved["logits"], logits)
    for key in ("confusion_png", "per_class_png", "roc_png", "pr_png"):
        assert Image.open(files[key]).size[0] > 100


# ------------------------------------------------------------------------------------------ Wilcoxon
def test_signed_rank_hand_computed():
    # d = 0.1, -0.05, 0 (dropped), 0.3 -> ranks of |d|: 2, 1, 3 -> R+ = 5, R- = 1
    result = wilcoxon.signed_rank([0.9, 0.8, 0.7, 0.6], [0.8, 0.85, 0.7, 0.3])
    assert (result.n, result.r_plus, result.r_minus, result.statistic) == (3, 5.0, 1.0, 1.0)


def test_signed_rank_matches_scipy():
    rng = np.random.default_rng(0)
    a = np.round(rng.uniform(0.8, 1.0, 24), 3)
    b = np.round(a + rng.normal(0.01, 0.02, 24), 3)
    b[:5] = a[:5]  # zero differences, as for classes both runs separate perfectly
    b[5], b[6] = a[5] + 0.01, a[6] + 0.01  # tied |d|
    for method in ("approx", "auto"):
        ours = wilcoxon.signed_rank(a, b, method=method)
        kwargs = {"correction": False} if method == "approx" else {}
        ref = stats.wilcoxon(a, b, zero_method="wilcox", method=method, **kwargs)
        assert ours.statistic == pytest.approx(float(ref.statistic))
        assert ours.p_value == pytest.approx(float(ref.pvalue), rel=1e-12)
        assert ours.statistic == min(ours.r_plus, ours.r_minus)
        assert ours.r_plus + ours.r_minus == ours.n * (ours.n + 1) / 2
        assert ours.significant == (ref.pvalue < 0.05)


def test_signed_rank_reproduces_msfca_table3_p_value():
    # MSF-CA Table III, Baseline vs +PA (AUC): n = 14 non-zero differences, R+ = 38.5, R- = 66.5, p = 0.3792.
    # Ranks 1 and 2 tied (1.5 each); the baseline wins ranks {1.5, 3, 4, 5, 6, 8, 11}.
    positive = {3, 4, 5, 6, 8, 11}
    d = [0.001, -0.001] + [(r if r in positive else -r) * 0.01 for r in range(3, 15)]
    b = np.full(len(d), 0.5)
    result = wilcoxon.signed_rank(b + np.array(d), b)
    assert (result.r_plus, result.r_minus) == (38.5, 66.5)
    assert result.p_value == pytest.approx(0.3792, abs=5e-4)
    assert not result.significant


def test_wilcoxon_cli_on_prediction_files(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 6
    good = torch.randn(60, 6, generator=gen) + 3 * nn.functional.one_hot(labels, 6)
    bad = torch.randn(60, 6, generator=gen) + 0.5 * nn.functional.one_hot(labels, 6)
    write_analysis(bad, labels, tmp_path / "a", plots=False)
    write_analysis(good, labels, tmp_path / "b", plots=False)
    result = wilcoxon.main(
        [str(tmp_path / "a"), str(tmp_path / "b" / "predictions.npz"), "--names", "A", "B"]
    )
    auc_a, _ = per_class_auc_ap(bad, labels)
    auc_b, _ = per_class_auc_ap(good, labels)
    ref = stats.wilcoxon(auc_a, auc_b, method="approx", correction=False)
    assert result["auc"].p_value == pytest.approx(float(ref.pvalue))
    assert "| B |" in capsys.readouterr().out
    write_analysis(good[:30], labels[:30], tmp_path / "c", plots=False)
    with pytest.raises(ToolError, match="same test samples"):
        wilcoxon.compare_runs(str(tmp_path / "a"), str(tmp_path / "c"))
    order = torch.randperm(60, generator=gen)  # same test set, another order: per-class values unchanged
    write_analysis(good[order], labels[order], tmp_path / "d", plots=False)
    with pytest.warns(UserWarning, match="different orders"):
        shuffled = wilcoxon.compare_runs(str(tmp_path / "a"), str(tmp_path / "d"))
    np.testing.assert_allclose(shuffled["auc_b"], auc_b)


# ----------------------------------------------------------------------------------------- profile
def test_profile_resnet50_params_and_macs():
    loaded = load_network(model="resnet50")
    row = profile.profile_network(loaded, image_size=224, runs=0)
    assert row.params_m == pytest.approx(25.557, abs=1e-3)  # timm/torchvision ResNet-50: 25.6 M
    assert row.gmacs == pytest.approx(4.1, abs=0.05)  # "4.1 GFLOPs" = MACs
    assert row.latency_ms is None


def test_profile_latency_and_table(tmp_path):
    rows = profile.main(
        [
            "--model",
            "resnet18",
            "--num-classes",
            "10",
            "--image-size",
            "32",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--csv",
            str(tmp_path / "c.csv"),
        ]
    )
    assert rows[0].params_m == pytest.approx((11_689_512 - 513_000 + 5_130) / 1e6, abs=1e-6)  # fc 512x10
    assert rows[0].latency_ms > 0
    assert rows[0].gmacs == pytest.approx(1.8186 * (32 / 224) ** 2, rel=0.02)
    with open(tmp_path / "c.csv") as f:
        assert next(csv.DictReader(f))["name"] == "resnet18"


def test_profile_from_experiment_yaml_matches_timm(tmp_path):
    pytest.importorskip("lightning_modules.task")
    cfg = {
        "model": {
            "class_path": "lightning_modules.ClassificationTask",
            "init_args": {"backbone": "resnet18"},
        },
        "data": {"class_path": "datamodules.digits.DigitsDataModule", "init_args": {"image_size": 32}},
    }
    path = tmp_path / "tiny_digits.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_network(configs=[str(path)])
    assert loaded.name == "tiny_digits" and loaded.image_size == 32
    row = profile.profile_network(loaded, runs=0)
    import timm

    ref = timm.create_model("resnet18", num_classes=10)  # DigitsDataModule: 10 classes, linked by the CLI
    assert row.params_m == pytest.approx(sum(p.numel() for p in ref.parameters()) / 1e6)
    assert row.gmacs == pytest.approx(profile.count_macs(ref, torch.randn(1, 3, 32, 32)) / 1e9)
    assert not (tmp_path / "runs").exists()  # building a model from YAML must not create run folders


def test_checkpoint_loads_into_yaml_task_and_timm_model(tmp_path):
    pytest.importorskip("lightning_modules.task")
    cfg = {
        "model": {
            "class_path": "lightning_modules.ClassificationTask",
            "init_args": {"backbone": "resnet18"},
        },
        "data": {"class_path": "datamodules.digits.DigitsDataModule", "init_args": {"image_size": 32}},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    task = load_network(configs=[str(tmp_path / "exp.yaml")]).task
    with torch.no_grad():
        task.backbone.fc.weight.fill_(0.25)  # differs from any fresh initialisation
    torch.save({"state_dict": task.state_dict(), "epoch": 3}, tmp_path / "last.ckpt")  # Lightning's layout
    from_yaml = load_network(configs=[str(tmp_path / "exp.yaml")], ckpt_path=str(tmp_path / "last.ckpt"))
    from_timm = load_network(model="resnet18", num_classes=10, ckpt_path=str(tmp_path / "last.ckpt"))
    for loaded in (from_yaml, from_timm):
        assert torch.equal(loaded.network.fc.weight, torch.full((10, 512), 0.25))
        assert torch.equal(loaded.network.conv1.weight, task.backbone.conv1.weight)
    with pytest.raises(ToolError, match="no tensor"):
        load_network(model="vit_tiny_patch16_224", num_classes=10, ckpt_path=str(tmp_path / "last.ckpt"))


def test_unknown_model_is_one_clear_error(capsys):
    assert run_main(profile.main, ["--model", "no_such_model_xyz", "--runs", "0"]) == 2
    assert "unknown model 'no_such_model_xyz'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- visual analysis
@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Six real-looking RGB images in ImageFolder layout (two classes), 40x40 pixels."""
    root = tmp_path / "images"
    gen = np.random.default_rng(0)
    for k, cls in enumerate(("cats", "dogs")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            pixels = (gen.uniform(0, 1, (40, 40, 3)) * 255 * (0.5 + 0.5 * k)).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def test_gradcam_default_layers_and_png_sizes(tmp_path, image_folder):
    import timm

    assert gradcam.default_target_layers(timm.create_model("resnet18", num_classes=2)) == ["layer1", "layer4"]
    files = gradcam.main(
        [
            "--model",
            "resnet18",
            "--num-classes",
            "2",
            "--image-folder",
            str(image_folder),
            "-n",
            "3",
            "--image-size",
            "64",
            "--out",
            str(tmp_path / "cam"),
        ]
    )
    overlays = [p for k, p in files.items() if k != "gradcam_grid"]
    assert len(overlays) == 6  # 3 images x (shallow, deep)
    assert all(Image.open(p).size == (64, 64) for p in overlays)
    assert Image.open(files["gradcam_grid"]).size[0] > 64


def test_gradcam_token_model_layers():
    import timm

    model = timm.create_model("test_vit", num_classes=2)
    layers = gradcam.default_target_layers(model, 160)
    assert layers[0].startswith("blocks.") and layers[-1].startswith("blocks.") and layers[0] != layers[-1]
    maps = gradcam.compute_cams(model.eval(), torch.randn(1, 3, 160, 160), layers[-1:])
    assert maps[layers[-1]].shape == (1, 160, 160)


def test_tsne_png_size_and_embedding(tmp_path, image_folder):
    files = tsne.main(
        [
            "--model",
            "resnet18",
            "--num-classes",
            "2",
            "--image-folder",
            str(image_folder),
            "--image-size",
            "32",
            "--size",
            "240",
            "--out",
            str(tmp_path / "tsne"),
        ]
    )
    assert Image.open(files["tsne"]).size == (240, 240)
    data = np.load(files["tsne_npz"])
    assert data["embedding"].shape == (6, 2) and data["features"].shape == (6, 512)
    assert sorted(data["labels"].tolist()) == [0, 0, 0, 1, 1, 1]


def test_attention_maps_need_the_fft_hook(tmp_path, image_folder):
    from tools import attention

    with pytest.raises(ToolError, match="outer_attention_maps"):
        attention.attention_maps(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 8, 8))
    import timm

    if "fft_tiny" not in timm.list_models("fft_tiny"):
        pytest.skip("backbones/fft.py not present")
    files = attention.main(
        [
            "--model",
            "fft_tiny",
            "--num-classes",
            "2",
            "--image-folder",
            str(image_folder),
            "-n",
            "1",
            "--image-size",
            "64",
            "--blocks",
            "0",
            "2",
            "--out",
            str(tmp_path / "att"),
        ]
    )
    assert Image.open(files["000_block0"]).size == (64, 64) and "000_block2" in files


# ------------------------------------------------------------------------------ TestAnalysis callback
class TinyClassifier(LightningModule):
    """Logits = a fixed linear map of the 4 input features; test_step returns them like ClassificationTask."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.arange(12, dtype=torch.float32).view(3, 4) / 10)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x)

    def test_step(self, batch, batch_idx):
        return self(batch[0])


def _dataset(n: int) -> TensorDataset:
    x = torch.arange(n * 4, dtype=torch.float32).view(n, 4) / (n * 4)
    return TensorDataset(x, torch.arange(n) % 3)


def test_test_analysis_callback_with_wandb_offline(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="analysis-test", save_dir=str(tmp_path), offline=True, name="tiny")
    callback = analysis.TestAnalysis(output_dir=str(tmp_path / "run"))
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = TinyClassifier()
    data = _dataset(10)
    trainer.test(model, DataLoader(data, batch_size=4), verbose=False)
    saved = torch.load(tmp_path / "run" / "predictions.pt", weights_only=True)
    assert torch.equal(saved["labels"], data.tensors[1])
    assert torch.allclose(saved["logits"], model(data.tensors[0]).detach())
    assert (tmp_path / "run" / "analysis" / "roc_curves.png").is_file()
    logger.log_metrics({"test/acc1": 0.625})
    logger.experiment.finish()
    import wandb

    wandb.teardown()  # shut the W&B service down so the offline run file is complete on disk
    wandb_file = next(tmp_path.rglob("run-*.wandb"))
    _, _, name = report.read_wandb_file(wandb_file)
    assert name == "tiny"
    (run,) = [r for r in report.find_runs([tmp_path]) if r.source == "wandb"]  # what tools.report reads
    assert run.names[0] == "tiny" and run.metrics["test/acc1"] == 0.625
    assert run.predictions is None or run.predictions.name == "predictions.pt"
    logged = wandb_file.read_bytes()
    for key in (
        "test/per_class_table",
        "test/confusion_matrix_table",
        "test/confusion_matrix",
        "test/roc_curves",
    ):
        assert key.encode() in logged


def test_interleave_shards_restores_uneven_sampler_shards():
    # UnrepeatedDistributedSampler, 5 samples, 2 ranks: rank 0 gets 0, 2, 4 and rank 1 gets 1, 3
    merged = interleave_shards([torch.tensor([0, 2, 4]), torch.tensor([1, 3])])
    assert merged.tolist() == [0, 1, 2, 3, 4]
    rows = interleave_shards([torch.tensor([[0.0, 0], [2, 2]]), torch.tensor([[1.0, 1], [3, 3]])])
    assert rows[:, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="interleaving sampler"):
        interleave_shards([torch.tensor([1, 3]), torch.tensor([0, 2, 4])])


def test_order_by_index_sorts_and_drops_padding_repeats():
    # DistributedSampler (padding), 5 samples, 2 ranks: rank 1 gets 1, 3 and a repeat of sample 0
    indices = torch.tensor([0, 2, 4, 1, 3, 0])
    values = torch.tensor([10, 12, 14, 11, 13, 99])
    idx, ordered = order_by_index(indices, values)
    assert idx.tolist() == [0, 1, 2, 3, 4] and ordered.tolist() == [10, 11, 12, 13, 14]


class _UnevenShards(LightningDataModule):
    """5 test samples; under DDP the project's evaluation sampler (no padding): shards [0, 2, 4], [1, 3]."""

    def __init__(self, data: TensorDataset) -> None:
        super().__init__()
        self.data = data

    def test_dataloader(self) -> DataLoader:
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        sampler = UnrepeatedDistributedSampler(self.data, shuffle=False)
        assert len(sampler) == (3 if sampler.rank == 0 else 2)  # uneven shards, as in the issue
        return DataLoader(self.data, batch_size=2, sampler=sampler)


@pytest.mark.slow  # two spawned processes; the reorder logic itself is tested above in the default suite
def test_test_analysis_ddp_gathers_uneven_shards_in_dataset_order(tmp_path):
    """Two CPU processes (gloo): per-sample logits, labels and dataset ids come back in dataset order."""
    callback = analysis.TestAnalysis(output_dir=str(tmp_path / "ddp"), plots=False, log_to_wandb=False)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = TinyClassifier()
    data = _dataset(5)
    trainer.test(model, datamodule=_UnevenShards(data), verbose=False)
    saved = torch.load(tmp_path / "ddp" / "predictions.pt", weights_only=True)
    assert saved["indices"].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(saved["labels"], data.tensors[1])
    assert torch.allclose(saved["logits"], model(data.tensors[0]).detach(), atol=1e-6)


@pytest.mark.slow
def test_test_analysis_ddp_gathers_in_dataset_order(tmp_path):
    """Two CPU processes (gloo); 7 samples: Lightning's padding sampler repeats one, the repeat is dropped."""
    callback = analysis.TestAnalysis(output_dir=str(tmp_path / "ddp"), plots=False)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = TinyClassifier()
    data = _dataset(7)
    trainer.test(model, DataLoader(data, batch_size=2), verbose=False)
    saved = torch.load(tmp_path / "ddp" / "predictions.pt", weights_only=True)
    assert saved["indices"].tolist() == list(range(7))
    assert torch.equal(saved["labels"], data.tensors[1])
    assert torch.allclose(saved["logits"], model(data.tensors[0]).detach(), atol=1e-6)


def test_analysis_tool_rewrites_files_from_predictions(tmp_path, capsys):
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    write_analysis(logits, LABELS, tmp_path / "run", class_names=["cat", "dog"], plots=False)
    files = analysis_tool.main([str(tmp_path / "run"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "analysis" / "confusion_matrix.png").is_file()
    assert "cat" in files["per_class_csv"].read_text()
    assert run_main(analysis_tool.main, [str(tmp_path / "missing")]) == 2
    assert "predictions file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- reports
def _finished_run(folder: Path, config: dict, metrics: list[dict], logits=None, labels=None) -> None:
    """A run folder as main.py + CSVLogger + TestAnalysis leave it."""
    (folder / "logs" / "version_0").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    keys = sorted({k for row in metrics for k in row})
    with open(folder / "logs" / "version_0" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(metrics)
    if logits is not None:
        write_analysis(logits, labels, folder, plots=False)


def _config(backbone: str, loss: str | None = None) -> dict:
    init = {"backbone": backbone, "num_classes": 200, "metrics": ["acc1"]}
    if loss:
        init["loss"] = {"class_path": f"lightning_modules.losses.{loss}", "init_args": {}}
    return {
        "model": {"class_path": "lightning_modules.task.ClassificationTask", "init_args": init},
        "data": {
            "class_path": "datamodules.cub.CUB200DataModule",
            "init_args": {"root": "/data/cub", "batch_size": 8},
        },
    }


def test_report_on_two_finished_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    epochs = [
        {"epoch": 0, "step": 10, "val/acc1": 0.41, "val/acc1_best": 0.41},
        {"epoch": 1, "step": 20, "val/acc1": 0.40, "val/acc1_best": 0.41},
    ]
    # run 1: folder named after its experiment (main.py's layout), with a test result
    _finished_run(
        runs / "acanet18_cub_ce",
        _config("acanet18"),
        [*epochs, {"epoch": 1, "step": 20, "test/acc1": 0.5123}],
    )
    # run 2: started with --name, so it is found by comparing its config with the experiment files
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "resnet18_cub_mcloss.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "class_path": "lightning_modules.ClassificationTask",
                    "init_args": {
                        "backbone": "resnet18",
                        "loss": {"class_path": "lightning_modules.losses.MCLoss", "init_args": {}},
                    },
                },
                "data": {
                    "class_path": "datamodules.CUB200DataModule",
                    "init_args": {"root": "data/CUB_200_2011"},
                },
            }
        )
    )
    (experiments / "resnet18_cub_ce.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "class_path": "lightning_modules.ClassificationTask",
                    "init_args": {"backbone": "resnet18"},
                },
                "data": {"class_path": "datamodules.CUB200DataModule"},
            }
        )
    )
    _finished_run(runs / "my_mc_try", _config("resnet18", "MCLoss"), epochs)

    cells = report.main(
        [
            "--paper",
            "acanet",
            "--runs",
            str(runs),
            "--experiments",
            str(experiments),
            "--csv",
            str(tmp_path / "acanet.csv"),
        ]
    )
    out = capsys.readouterr().out
    by_key = {(c.table, c.row, c.dataset): c for c in cells}
    ace = by_key[("2", "ACANet + CE Loss", "cub")]
    assert (ace.ours, ace.origin, ace.published) == ("51.23", "test", "52.73")
    mc = by_key[("2", "ResNet 18 + MC Loss", "cub")]
    assert (mc.ours, mc.origin, mc.experiment) == ("41.00", "val", "resnet18_cub_mcloss")
    assert by_key[("2", "ResNet 18 + CE Loss", "cub")].ours == ""  # the MC-Loss run must not match CE
    assert by_key[("3", "ACANet + CE Loss", "cub")].ours == "51.23"
    assert "| ACANet + CE Loss | 52.73 / 51.23 (test) |" in out and "41.00 (val)" in out
    with open(tmp_path / "acanet.csv") as f:
        rows = {(r["table"], r["row"], r["dataset"]): r for r in csv.DictReader(f)}
    assert rows[("2", "ACANet + CE Loss", "cub")]["delta"] == "-1.50"


def test_report_wilcoxon_cells_from_predictions(tmp_path):
    runs = tmp_path / "runs"
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(96) % 24
    base_logits = torch.randn(96, 24, generator=gen) + 1.0 * nn.functional.one_hot(labels, 24)
    pa_logits = torch.randn(96, 24, generator=gen) + 2.0 * nn.functional.one_hot(labels, 24)
    metrics = [{"epoch": 0, "test/acc1": 0.9, "test/acc2": 0.95}]
    _finished_run(runs / "msfca50_baseline_ceramic", _config("resnet50"), metrics, base_logits, labels)
    _finished_run(runs / "msfca50_pa_ceramic", _config("resnet50"), metrics, pa_logits, labels)
    experiments = tmp_path / "experiments"  # no experiment files: runs match by their folder names
    experiments.mkdir()
    cells = report.build_cells("msfca", report.find_runs([runs]), experiments)
    cell = {(c.table, c.row, c.metric): c for c in cells}
    expected = wilcoxon.compare_runs(str(runs / "msfca50_baseline_ceramic"), str(runs / "msfca50_pa_ceramic"))
    assert cell[("III", "Baseline vs. +PA", "auc_r_plus")].ours == f"{expected['auc'].r_plus:.4g}"
    assert cell[("III", "Baseline vs. +PA", "ap_p_value")].ours == f"{expected['ap'].p_value:.4g}"
    assert cell[("II", "+PA", "acc2")].ours == "95.00"
    assert cell[("III", "Baseline vs. +CA", "auc_r_plus")].ours == ""


def test_report_complexity_cell_from_model_spec(tmp_path):
    # TokenFusion Table 2 reference row: ResNet-50, 25.6 M parameters (1000 classes, 224x224)
    cell = report.Cell("2", "ResNet-50", "imagenet", "params_m", "25.6")
    report._fill_complexity(cell, ["model:resnet50:1000:224"], tmp_path, "params_m", False, "cpu", {})
    assert (cell.ours, cell.origin) == ("25.557", "profile")


@pytest.mark.parametrize("paper", sorted(report.PAPERS))
def test_published_files_are_complete(paper):
    rows = report.read_published(paper)
    assert rows and all(r["table"] and r["row"] and r["metric"] and r["experiment"] for r in rows)
    if paper != "csnet":
        assert all(r["value"] for r in rows)
    # every reproduced cell names an existing experiment file (catches renamed experiments)
    from tools.common import EXPERIMENTS_DIR

    if not EXPERIMENTS_DIR.is_dir():
        pytest.skip("no experiments/ folder")
    from lightning_modules.config_compose import experiment_rows

    existing = set(experiment_rows(EXPERIMENTS_DIR))
    for r in rows:
        baselines = [b for b in r["baseline"].split(";") if b]  # ";": several compared rows (claims)
        if r["experiment"].startswith("model:") or "not reproduced" in r["note"]:
            continue
        assert any(n in existing for n in r["experiment"].split("|")), (r["table"], r["row"], r["experiment"])
        assert all(b in existing for b in baselines), (r["table"], r["row"], baselines)
