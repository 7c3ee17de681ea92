"""Inference over a data set: :func:`predict` runs a function over every batch, in order, without gradients
and in eval mode, sharded over the ranks under torchrun (each sample exactly once). Re-exported as
``engine.predict``, the name the stages call (tests replace it there).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import get_dist_info, select_device, unwrap

__all__ = ["predict"]


class _ShardSampler(Sampler):
    """Indices ``rank, rank + W, rank + 2W, ...`` - every sample exactly once over all ranks."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    fn: Callable[[nn.Module, Any, torch.device], Any],
    batch_size: int = 16,
    device: str | torch.device | None = None,
    collate_fn: Callable | None = None,
    progress: bool = True,
    num_workers: int = 0,
    desc: str = "predict",
    shard: bool = True,
) -> list:
    """Run ``fn(model, batch, device)`` over a data set in order, without gradients, in eval mode.

    Parameters
    ----------
    model : nn.Module
        Put in eval mode for the call (its previous mode is restored afterwards).
    dataset : Dataset
    fn : callable ``(model, batch, device) -> Any``
        Moves the batch (:func:`to_device`) and returns whatever is wanted (predictions, metrics
        updates, ...).
    batch_size : int, default 16
    device : str or torch.device, optional
        ``None``: the device the model's parameters are on.  Otherwise :func:`select_device` and the
        model is moved there.
    collate_fn : callable, optional
    progress : bool, default True
        tqdm bar (main rank only).
    num_workers : int, default 0
    shard : bool, default True
        Under torchrun, split the data across ranks (every rank must call). ``False``: the calling
        rank processes the whole data set (evaluation done on rank 0 only).

    Returns
    -------
    list
        One ``fn`` result per batch.  Single process: in data-set order.  Under torchrun each rank
        processes only its share - samples ``rank, rank + W, ...`` (no padding duplicates, unlike
        ``DistributedSampler``) - and returns only its own results; reduce metrics across ranks
        (e.g. :meth:`ConfusionMatrix.reduce_from_all_processes`) or gather them yourself.
    """
    model = unwrap(model)
    if device is None:
        device = _model_device(model)
    else:
        device = select_device(device)
        model.to(device)
    info = get_dist_info()
    sampler = _ShardSampler(len(dataset), info.rank, info.world_size) if info.enabled and shard else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        drop_last=False,
        # an own generator: a DataLoader otherwise draws its base seed from the global RNG, so that an
        # evaluation between epochs would change the training run's augmentation and dropout draws
        generator=torch.Generator().manual_seed(0),
    )
    was_training = model.training
    model.eval()
    results = []
    try:
        iterator = loader
        if progress and info.is_main:
            from tqdm.auto import tqdm

            iterator = tqdm(loader, desc=desc, leave=False)
        for batch in iterator:
            results.append(fn(model, batch, device))
    finally:
        model.train(was_training)
    return results
