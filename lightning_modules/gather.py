"""Gather per-sample evaluation outputs from every DDP rank back into dataset order.

Each rank records the dataset indices its sampler yields (:func:`sampler_indices`) next to its outputs;
:func:`gather_in_dataset_order` all-gathers outputs and indices, sorts by index and drops the repeats a
padding ``DistributedSampler`` adds. Without indices (a loader whose sampler cannot be listed) it falls
back to the interleaving both of Lightning's samplers use without shuffling: rank ``r`` holds samples
``r, r + W, r + 2W, ...`` (:func:`interleave_shards`; shards may differ in length, as with
``UnrepeatedDistributedSampler``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

__all__ = ["gather_in_dataset_order", "interleave_shards", "order_by_index", "sampler_indices"]


def sampler_indices(loader: Any) -> Tensor | None:
    """The dataset indices ``loader`` visits on this rank, in order; ``None`` when they cannot be listed.

    A non-shuffling sampler (and a seeded ``DistributedSampler`` at a fixed epoch) yields the same indices
    every time it is iterated, so listing it again after the epoch gives the order the batches came in.
    """
    sampler = getattr(loader, "sampler", None)
    if sampler is None or not hasattr(sampler, "__iter__") or not hasattr(sampler, "__len__"):
        return None
    try:
        indices = list(iter(sampler))
    except TypeError:
        return None
    if not all(isinstance(i, int) for i in indices):
        return None
    return torch.tensor(indices, dtype=torch.long)


def interleave_shards(shards: Sequence[Tensor]) -> Tensor:
    """Merge rank shards ``r, r + W, ...`` into one sequence: ``[[0, 2, 4], [1, 3]] -> [0, 1, 2, 3, 4]``.

    Shard ``r`` must hold ``ceil((N - r) / W)`` items (what both Lightning samplers give without shuffle).
    """
    world = len(shards)
    total = sum(len(s) for s in shards)
    expected = [len(range(r, total, world)) for r in range(world)]
    if [len(s) for s in shards] != expected:
        raise ValueError(
            f"shard sizes {[len(s) for s in shards]} are not those of an interleaving sampler over {total} "
            f"samples ({expected})"
        )
    out = shards[0].new_empty((total, *shards[0].shape[1:]))
    for r, shard in enumerate(shards):
        out[r::world] = shard
    return out


def order_by_index(indices: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Sort ``values`` by ``indices`` and keep the first occurrence of each index (padding repeats)."""
    order = torch.argsort(indices, stable=True)
    sorted_idx = indices[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    order = order[keep]
    return (indices[order], *(v[order] for v in values))


def gather_in_dataset_order(
    pl_module: LightningModule,
    logits: Tensor,
    labels: Tensor,
    indices: Tensor | None = None,
    dataset_len: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """All-gather ``(logits, labels, indices)`` of every rank and return them in dataset order.

    Args:
        pl_module: the module whose ``all_gather`` runs the collective.
        logits: ``(n_r, C)`` outputs of this rank.
        labels: ``(n_r,)`` labels of this rank.
        indices: ``(n_r,)`` dataset indices of this rank's samples, or ``None`` (then the ranks are
            interleaved, see the module docstring).
        dataset_len: the dataset's length: without indices, the padding beyond it is dropped.

    Returns:
        ``(logits, labels, indices)`` on the CPU, sorted by dataset index, each index once; ``indices`` is
        ``None`` when none were given.
    """
    world = pl_module.trainer.world_size if pl_module._trainer is not None else 1
    if world == 1:
        if indices is None:
            return logits, labels, None
        indices, logits, labels = order_by_index(indices, logits, labels)
        return logits, labels, indices
    # every rank must take part in the same collectives: agree on whether indices are used
    has_idx = torch.tensor([indices is not None], device=pl_module.device)
    use_idx = bool(pl_module.all_gather(has_idx).all())
    device = pl_module.device
    count = torch.tensor([logits.shape[0]], device=device)
    counts = pl_module.all_gather(count).view(-1).cpu()
    most = int(counts.max())
    pad = most - logits.shape[0]
    logits_p = torch.cat([logits, logits.new_zeros(pad, logits.shape[1])]).to(device)
    labels_p = torch.cat([labels, labels.new_full((pad,), -1)]).to(device)
    all_logits = pl_module.all_gather(logits_p).cpu()  # (world, most, C)
    all_labels = pl_module.all_gather(labels_p).cpu()  # (world, most)
    logit_parts = [all_logits[r, : counts[r]] for r in range(world)]
    label_parts = [all_labels[r, : counts[r]] for r in range(world)]
    if use_idx:
        assert indices is not None
        idx_p = torch.cat([indices.long(), indices.new_full((pad,), -1).long()]).to(device)
        all_idx = pl_module.all_gather(idx_p).cpu()
        idx = torch.cat([all_idx[r, : counts[r]] for r in range(world)])
        idx, logits, labels = order_by_index(idx, torch.cat(logit_parts), torch.cat(label_parts))
        return logits, labels, idx
    try:
        logits, labels = interleave_shards(logit_parts), interleave_shards(label_parts)
    except ValueError as err:  # e.g. limit_test_batches cut the shards: the order is unknown
        warnings.warn(f"{err}; predictions are joined rank by rank, not in dataset order", stacklevel=2)
        return torch.cat(logit_parts), torch.cat(label_parts), None
    if dataset_len is not None and dataset_len <= labels.shape[0]:  # a padding sampler's repeats
        logits, labels = logits[:dataset_len], labels[:dataset_len]
    return logits, labels, None
