"""Grad-CAM of a shallow and a deep layer of any model, overlaid on input images (MSF-CA Fig. 16).

Uses ``pytorch_grad_cam.GradCAM``. Default target layers (``--layers`` overrides them with module names
such as ``trunk.layer1 trunk.layer4``):

* models with timm ``feature_info`` (ResNets, ACANet, most timm CNNs): the first feature stage with
  stride >= 4 (``layer1``, the "shallow module") and the last one (``layer4``, the "deep module");
* any other model: the modules whose output is a feature map are found with forward hooks on a dummy
  input; at the least nested level holding maps of two strides, the first one at stride >= 4 and the
  last one to run.
  Feature maps ``(B, C, H, W)`` are preferred (a CNN trunk under a transformer, FFT, TokenFusion); a pure
  transformer's token outputs ``(B, N, C)`` are reshaped to a square grid (leading class tokens dropped).

The class explained is the predicted one (``--target pred``) or the true label (``--target true``).
The images are ``--num-images`` seeded random images of the split spread across classes (``--seed``; the
MSF-CA paper shows five random test images), not the first ones of a class-sorted loader: see
:func:`sample_across_classes`.

Outputs under ``--out`` (default ``<run>/analysis/gradcam/`` for a checkpoint of a run folder, else
``analysis/gradcam/<name>``): ``<i>_<layer>.png`` overlays at the input
resolution, and ``gradcam_grid.png`` (rows: images; columns: input, one column per layer). With
``--wandb-project`` the PNGs are also logged to W&B.

Examples::

    python -m tools.gradcam --config experiments/msfca/msfca50_ceramic.yaml \\
        --ckpt_path runs/.../best.ckpt -n 5
    python -m tools.gradcam --model resnet50 --image-folder ../shared/data/some_folder --layers layer1 layer4
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lightning_modules.run_folder import tool_output_dir
from tools.common import (
    ToolError,
    add_model_args,
    datamodule_loader,
    denormalize,
    image_folder_loader,
    iterate_images,
    load_network,
    log_images,
    normalization_of,
    run_main,
    wandb_run,
)


def default_target_layers(model: nn.Module, image_size: int = 64) -> list[str]:
    """Names of a shallow and a deep layer for Grad-CAM (see the module docstring)."""
    names = dict(model.named_modules())
    info = getattr(model, "feature_info", None)
    entries = []
    if info is not None:
        try:
            entries = [(i["module"], i["reduction"]) for i in info]  # timm FeatureInfo iterates dicts
        except (TypeError, KeyError):
            entries = []
    entries = [(name, red) for name, red in entries if name in names]
    if entries:
        shallow = next((name for name, red in entries if red >= 4), entries[0][0])
        return [shallow, entries[-1][0]] if shallow != entries[-1][0] else [shallow]

    outputs: list[tuple[str, int, int, bool]] = []  # (name, depth, stride, is a 4-D feature map)
    hooks = []

    def hook_for(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: object, out: object) -> None:
            if isinstance(out, Tensor) and out.ndim == 4 and out.shape[-1] > 1 and out.shape[1] > 3:
                outputs.append((name, name.count("."), image_size // out.shape[-1], True))
            elif isinstance(out, Tensor) and out.ndim == 3 and _square_tokens(out.shape[1]) > 1:
                outputs.append((name, name.count("."), image_size // _square_tokens(out.shape[1]), False))

        return hook

    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not outputs:
        raise ToolError(f"{type(model).__name__} has no module with a feature-map output; pass --layers")
    if any(is_map for *_, is_map in outputs):  # hybrids (CNN trunk + transformer): explain the CNN maps
        outputs = [o for o in outputs if o[3]]
    # the least nested level that has maps at two different strides (stages), else the least nested one
    levels = sorted({o[1] for o in outputs})
    depth = next((lv for lv in levels if len({o[2] for o in outputs if o[1] == lv}) >= 2), levels[0])
    top = [(n, s) for n, d, s, _ in outputs if d == depth]
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout)
    top = [(n, s) for n, s in top if not isinstance(names[n], pools)] or top  # a stage, not its pooling
    shallow = next((n for n, s in top if s >= 4), top[0][0])
    deep = top[-1][0]
    return [shallow, deep] if shallow != deep else [shallow]


def _square_tokens(n: int) -> int:
    """Side of the largest square token grid in ``n`` tokens once up to 8 leading extra tokens are dropped."""
    for extra in range(0, 9):
        side = math.isqrt(n - extra) if n > extra else 0
        if side > 1 and side * side == n - extra:
            return side
    return 0


def tokens_to_map(tokens: Tensor) -> Tensor:
    """``(B, N, C)`` tokens -> ``(B, C, s, s)``, dropping leading class/extra tokens
    (pytorch-grad-cam hook)."""
    if tokens.ndim != 3:
        return tokens
    side = _square_tokens(tokens.shape[1])
    if not side:
        raise ToolError(f"cannot reshape {tokens.shape[1]} tokens to a square grid for Grad-CAM")
    grid = tokens[:, tokens.shape[1] - side * side :, :]
    return grid.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


def compute_cams(
    model: nn.Module, images: Tensor, layers: Sequence[str], targets: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Grad-CAM maps ``{layer: (B, H, W) in [0, 1]}`` for ``images`` (``targets``: classes,
    None = predicted)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        sample = [n for n in modules if n and n.count(".") <= 1][:20]
        raise ToolError(f"no module named {unknown} in {type(model).__name__}; some names: {sample}")
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets] if targets is not None else None
    cams = {}
    for name in layers:
        with GradCAM(model=model, target_layers=[modules[name]], reshape_transform=tokens_to_map) as cam:
            cams[name] = cam(input_tensor=images, targets=cam_targets)
    return cams


def save_gradcam(
    images: Tensor,
    cams: dict[str, np.ndarray],
    mean: Sequence[float],
    std: Sequence[float],
    out_dir: str | Path,
    titles: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write per-image overlays (input resolution) and a grid figure; return ``{key: path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rgb = denormalize(images.detach().float().cpu(), mean, std).permute(0, 2, 3, 1).numpy()
    files: dict[str, Path] = {}
    overlays: dict[str, list[np.ndarray]] = {}
    for name, maps in cams.items():
        overlays[name] = []
        for i in range(rgb.shape[0]):
            overlay = show_cam_on_image(rgb[i].astype(np.float32), maps[i], use_rgb=True)
            overlays[name].append(overlay)
            path = out / f"{i:03d}_{name.replace('.', '-')}.png"
            Image.fromarray(overlay).save(path)
            files[path.stem] = path
    rows, cols = rgb.shape[0], 1 + len(cams)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(rgb[i])
        axes[i, 0].set_title(titles[i] if titles else "input", fontsize=7)
        for j, name in enumerate(cams, start=1):
            axes[i, j].imshow(overlays[name][i])
            if i == 0:
                axes[i, j].set_title(name, fontsize=7)
    for axis in axes.flat:
        axis.set_axis_off()
    fig.tight_layout()
    files["gradcam_grid"] = out / "gradcam_grid.png"
    fig.savefig(files["gradcam_grid"], dpi=100)
    plt.close(fig)
    return files


def sample_across_classes(targets: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` seeded random sample indices spread across classes (dataset order is class-sorted in most sets).

    Classes are visited in a seeded random order, one random image of each in turn, so ``n`` images come from
    ``min(n, classes)`` different classes. The same targets, ``n`` and ``seed`` give the same indices.
    """
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets)
    pools = [
        list(rng.permutation(np.flatnonzero(targets_arr == c)))
        for c in rng.permutation(np.unique(targets_arr))
    ]
    chosen: list[int] = []
    while len(chosen) < min(n, len(targets_arr)):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop()))
    return chosen


def load_images(args: argparse.Namespace, loaded, image_size: int) -> tuple[Tensor, Tensor, list[str] | None]:
    """``(images, labels, class names)``: ``args.num_images`` seeded random images across classes."""
    from torch.utils.data import DataLoader, Subset

    mean, std = normalization_of(loaded.datamodule)
    if args.image_folder:
        loader, classes = image_folder_loader(args.image_folder, image_size, args.num_images, mean, std)
    else:
        loader, classes = datamodule_loader(loaded.datamodule, args.split)
    dataset = getattr(loader, "dataset", None)
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets):
        picked = sample_across_classes(list(targets), args.num_images, args.seed)
        loader = DataLoader(Subset(dataset, picked), batch_size=len(picked), shuffle=False, num_workers=0)
    batches = list(iterate_images(loader, args.num_images))
    if not batches:
        raise ToolError("no images found in the chosen data source")
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), classes


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tools.gradcam", description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--layers", nargs="+", default=None, help="module names (default: shallow + deep)")
    parser.add_argument("-n", "--num-images", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images (across classes)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the YAML's, else 224")
    parser.add_argument("--target", default="pred", choices=["pred", "true"], help="class to explain")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: <run>/analysis/gradcam for a run's checkpoint, else ./analysis/...)",
    )
    parser.add_argument("--wandb-project", default=None, help="also log the PNGs to this W&B project")
    args = parser.parse_args(argv)

    loaded = load_network(args.config, args.model, args.ckpt_path, args.num_classes, args.override)
    size = int(args.image_size or loaded.image_size or 224)
    images, labels, classes = load_images(args, loaded, size)
    model = loaded.network.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    layers = args.layers or default_target_layers(model, size)
    with torch.no_grad():
        preds = model(images).argmax(dim=1)
    targets = labels.tolist() if args.target == "true" else None
    cams = compute_cams(model, images, layers, targets)

    def label(i: int) -> str:
        names = classes or []
        true = names[labels[i]] if int(labels[i]) < len(names) else int(labels[i])
        pred = names[preds[i]] if int(preds[i]) < len(names) else int(preds[i])
        return f"true {true} / pred {pred}"

    mean, std = normalization_of(loaded.datamodule)
    out = args.out or tool_output_dir(args.ckpt_path, "gradcam", loaded.name)
    files = save_gradcam(images, cams, mean, std, out, [label(i) for i in range(len(images))])
    print(f"Grad-CAM layers: {layers}; wrote {len(files)} PNG files to {out}")
    run = wandb_run(args.wandb_project, f"gradcam-{loaded.name}", "gradcam")
    log_images(run, {f"gradcam/{k}": v for k, v in files.items()})
    if run is not None:
        run.finish()
    return files


if __name__ == "__main__":
    raise SystemExit(run_main(main))
