"""t-SNE of penultimate features, coloured by class (MSF-CA Fig. 17).

Features are ``forward_head(forward_features(x), pre_logits=True)`` (the pooled vector the classifier
sees, timm convention) for the first ``--num-samples`` images of the chosen split; the 2-D embedding is
``sklearn.manifold.TSNE(init="pca", random_state=--seed)`` with perplexity ``min(--perplexity, (n-1)/3)``.

Outputs under ``--out`` (default ``<run>/analysis/tsne/`` for a checkpoint of a run folder, else
``analysis/tsne/<name>``): ``tsne.png`` (``--size`` x ``--size`` pixels)
and ``tsne.npz`` (``embedding`` (n, 2), ``features`` (n, D), ``labels`` (n,)).

Example::

    python -m tools.tsne --config experiments/msfca/msfca50_ceramic.yaml --ckpt_path runs/.../best.ckpt \\
        --num-samples 500
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lightning_modules.run_folder import tool_output_dir
from tools.common import (
    ToolError,
    add_model_args,
    datamodule_loader,
    image_folder_loader,
    iterate_images,
    load_network,
    log_images,
    normalization_of,
    run_main,
    wandb_run,
)


@torch.no_grad()
def penultimate_features(model: nn.Module, loader, limit: int) -> tuple[Tensor, Tensor]:
    """``(features (n, D), labels (n,))`` of the first ``limit`` images of ``loader``."""
    if not hasattr(model, "forward_head") or not hasattr(model, "forward_features"):
        raise ToolError(f"{type(model).__name__} has no forward_features/forward_head (timm contract)")
    feats, labels = [], []
    for images, y in iterate_images(loader, limit):
        pooled = model.forward_head(model.forward_features(images), pre_logits=True)
        feats.append(pooled.flatten(1).float())
        labels.append(y)
    if not feats:
        raise ToolError("no images found in the chosen data source")
    return torch.cat(feats), torch.cat(labels)


def embed(features: Tensor | np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``features`` (perplexity capped at ``(n - 1) / 3`` so small sets work)."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    if x.shape[0] < 4:
        raise ToolError(f"t-SNE needs at least 4 samples, got {x.shape[0]}")
    perplexity = float(min(perplexity, (x.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_embedding(
    embedding: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    size: int = 800,
    title: str = "",
) -> Path:
    """Scatter plot of a 2-D embedding coloured by class, ``size`` x ``size`` pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab20" if len(classes) <= 20 else "nipy_spectral")
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    axis = fig.add_axes((0.02, 0.02, 0.96, 0.92))
    for k, c in enumerate(classes):
        keep = labels == c
        colour = cmap(k % 20) if len(classes) <= 20 else cmap(k / max(len(classes) - 1, 1))
        name = class_names[int(c)] if class_names and int(c) < len(class_names) else str(int(c))
        axis.scatter(embedding[keep, 0], embedding[keep, 1], s=6, color=colour, label=name)
    if len(classes) <= 30:
        axis.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title or f"t-SNE of penultimate features ({len(labels)} images)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tools.tsne", description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32, help="for --image-folder")
    parser.add_argument("--image-size", type=int, default=None, help="default: the YAML's, else 224")
    parser.add_argument("--perplexity", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=800, help="PNG side in pixels")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: <run>/analysis/tsne for a run's checkpoint, else ./analysis/...)",
    )
    parser.add_argument("--wandb-project", default=None, help="also log the PNG to this W&B project")
    args = parser.parse_args(argv)

    loaded = load_network(args.config, args.model, args.ckpt_path, args.num_classes, args.override)
    size = int(args.image_size or loaded.image_size or 224)
    mean, std = normalization_of(loaded.datamodule)
    if args.image_folder:
        loader, classes = image_folder_loader(args.image_folder, size, args.batch_size, mean, std)
    else:
        loader, classes = datamodule_loader(loaded.datamodule, args.split)
    features, labels = penultimate_features(loaded.network.eval(), loader, args.num_samples)
    embedding = embed(features.numpy(), args.perplexity, args.seed)
    out = Path(args.out or tool_output_dir(args.ckpt_path, "tsne", loaded.name))
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "tsne": plot_embedding(embedding, labels.numpy(), out / "tsne.png", classes, args.size, loaded.name)
    }
    files["tsne_npz"] = out / "tsne.npz"
    np.savez_compressed(
        files["tsne_npz"], embedding=embedding, features=features.numpy(), labels=labels.numpy()
    )
    print(f"t-SNE of {len(labels)} images ({features.shape[1]}-d features): wrote {out}/tsne.png")
    run = wandb_run(args.wandb_project, f"tsne-{loaded.name}", "tsne")
    log_images(run, {"tsne": files["tsne"]})
    if run is not None:
        run.finish()
    return files


if __name__ == "__main__":
    raise SystemExit(run_main(main))
