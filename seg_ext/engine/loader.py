"""DataLoaders whose shuffling and per-worker augmentation seeds derive from one seed."""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def seed_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's albumentations pipeline its own seed.

    albumentations 2.x keeps its random generators in the pipeline object, which every worker inherits
    identically; without this, all workers would draw the same crops. torch's per-worker seed is derived from
    the loader's generator, so a seeded run draws the same crops every time. A dataset's pipeline is found as its
    ``transform`` attribute (anything with ``set_random_seed``).
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling and per-worker augmentation seeds derive from ``seed``; workers persist."""
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; expected at least 1")
    if num_workers < 0:
        raise ValueError(f"num_workers is {num_workers}; expected 0 or more")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
