"""Attention maps of models that expose ``outer_attention_maps`` (FFT, paper 001 Fig. 7).

``FFT.outer_attention_maps(x, query)`` returns, for every FFT block, the Outer stream's softmax attention
(mean over heads) from one query token to every patch token, on the Outer token grid. ``--query`` picks
the query: ``cls`` (the class token, default) or a row-major patch index on the grid (the red block of
Fig. 7). Each map is upsampled bilinearly to the input size, min-max normalised, and overlaid.

Outputs under ``--out`` (default ``analysis/attention/<name>``): ``<i>_block<l>.png`` at the input
resolution and ``attention_grid.png`` (rows: images; columns: input, then one column per block).

Example::

    python -m tools.attention --config experiments/fft/fft_base_flowers5.yaml \\
        --ckpt_path runs/.../best.ckpt \\
        -n 4 --query 20
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from tools.common import (
    ToolError,
    add_model_args,
    denormalize,
    load_network,
    log_images,
    normalization_of,
    run_main,
)
from tools.common import wandb_run as _wandb_run
from tools.gradcam import load_images


def attention_maps(model: nn.Module, images: Tensor, query: int | None = None) -> Tensor:
    """``(B, L, H, W)`` maps in ``[0, 1]`` at the input resolution from ``model.outer_attention_maps``."""
    if not hasattr(model, "outer_attention_maps"):
        raise ToolError(
            f"{type(model).__name__} has no outer_attention_maps(x, query); attention maps exist for the FFT "
            "models (fft_tiny/base/large). Use python -m tools.gradcam for other models."
        )
    with torch.no_grad():
        maps = model.outer_attention_maps(images, query=query).float()
    b, blocks = maps.shape[:2]
    up = F.interpolate(
        maps.flatten(0, 1)[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    up = up.view(b, blocks, *images.shape[-2:])
    low = up.flatten(2).min(dim=2).values[..., None, None]
    high = up.flatten(2).max(dim=2).values[..., None, None]
    return (up - low) / (high - low).clamp_min(1e-12)


def save_attention(
    images: Tensor,
    maps: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    out_dir: str | Path,
    blocks: Sequence[int],
) -> dict[str, Path]:
    """Write per-image, per-block overlays and a grid figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rgb = denormalize(images.float().cpu(), mean, std).permute(0, 2, 3, 1).numpy().astype(np.float32)
    files: dict[str, Path] = {}
    fig, axes = plt.subplots(
        len(rgb), 1 + len(blocks), figsize=(2.2 * (1 + len(blocks)), 2.2 * len(rgb)), squeeze=False
    )
    for i in range(len(rgb)):
        axes[i, 0].imshow(rgb[i])
        for j, block in enumerate(blocks, start=1):
            overlay = show_cam_on_image(rgb[i], maps[i, block].numpy(), use_rgb=True)
            path = out / f"{i:03d}_block{block}.png"
            Image.fromarray(overlay).save(path)
            files[path.stem] = path
            axes[i, j].imshow(overlay)
            if i == 0:
                axes[i, j].set_title(f"block {block}", fontsize=8)
    for axis in axes.flat:
        axis.set_axis_off()
    fig.tight_layout()
    files["attention_grid"] = out / "attention_grid.png"
    fig.savefig(files["attention_grid"], dpi=100)
    plt.close(fig)
    return files


def save_attention_overlay(
    image: Tensor,
    attention: Tensor,
    path: str | os.PathLike[str],
    query: int | None = None,
    mean: Sequence[float] | None = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] | None = IMAGENET_DEFAULT_STD,
    alpha: float = 0.5,
    title: str | None = None,
) -> None:
    """Save an attention map over its input image as a PNG (the Fig. 7 display).

    Args:
        image: ``(3, H, W)`` normalised image tensor (as fed to the model).
        attention: ``(gh, gw)`` attention on the token grid (one entry of ``FFT.outer_attention_maps``).
        path: output file (``.png``).
        query: row-major index of the query patch on the grid, outlined in red (``None``: class token).
        mean: normalisation mean to undo (``None`` if ``image`` is already in [0, 1]).
        std: normalisation std to undo.
        alpha: opacity of the heat map.
        title: optional figure title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    img = image.detach().float().cpu()
    if mean is not None and std is not None:
        img = img * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    img = img.clamp(0, 1).permute(1, 2, 0).numpy()
    h, w = img.shape[:2]
    att = attention.detach().float().cpu()
    gh, gw = att.shape
    heat = F.interpolate(att[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    try:
        ax.imshow(img)
        ax.imshow(heat.numpy(), cmap="jet", alpha=alpha)
        if query is not None:
            ph, pw = h / gh, w / gw
            r, c = divmod(query, gw)
            ax.add_patch(
                Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, edgecolor="red", linewidth=2)
            )
        ax.set_axis_off()
        if title:
            ax.set_title(title)
        fig.savefig(os.fspath(path), bbox_inches="tight")
    finally:
        plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tools.attention", description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("-n", "--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images (across classes)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the YAML's, else 224")
    parser.add_argument("--query", default="cls", help="'cls' or a row-major patch index on the Outer grid")
    parser.add_argument(
        "--blocks", type=int, nargs="+", default=None, help="FFT blocks to show (default all)"
    )
    parser.add_argument("--out", default=None, help="output folder (default analysis/attention/<name>)")
    parser.add_argument("--wandb-project", default=None, help="also log the PNGs to this W&B project")
    args = parser.parse_args(argv)

    loaded = load_network(args.config, args.model, args.ckpt_path, args.num_classes, args.override)
    size = int(args.image_size or loaded.image_size or 224)
    images, _, _ = load_images(args, loaded, size)
    query = None if args.query == "cls" else int(args.query)
    try:
        maps = attention_maps(loaded.network.eval(), images, query)
    except ValueError as err:  # bad query index, or a model without transformer blocks
        raise ToolError(str(err)) from None
    blocks = args.blocks if args.blocks is not None else list(range(maps.shape[1]))
    if any(not 0 <= b < maps.shape[1] for b in blocks):
        raise ToolError(f"--blocks must be in 0..{maps.shape[1] - 1}")
    mean, std = normalization_of(loaded.datamodule)
    out = args.out or f"analysis/attention/{loaded.name}"
    files = save_attention(images, maps, mean, std, out, blocks)
    print(
        f"attention maps of {len(blocks)} blocks, query {args.query}: wrote {len(files)} PNG files to {out}"
    )
    run = _wandb_run(args.wandb_project, f"attention-{loaded.name}", "attention")
    log_images(run, {f"attention/{k}": v for k, v in files.items()})
    if run is not None:
        run.finish()
    return files


if __name__ == "__main__":
    raise SystemExit(run_main(main))
