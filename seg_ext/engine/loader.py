"""DataLoaders whose shuffling and augmentation derive from one seed.

Training loaders draw every sample's randomness from (seed, epoch, sample index) alone: the epoch's order is a
permutation seeded by (seed, epoch) (:class:`EpochSampler`) and each sample's augmentation pipeline is re-seeded
from (seed, epoch, index) before the sample is made (:class:`SeededSamples`). Nothing depends on which loader
worker made a sample or on what that worker did before, so a run resumed at any epoch or iteration draws what an
uninterrupted run draws, with or without workers.
"""

from __future__ import annotations

import random
import signal
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def seed_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the worker's Python and NumPy generators from torch's per-worker seed,
    and leave SIGINT (Ctrl-C) to the main process. (Augmentation needs no per-worker seed: training loaders seed
    it per sample, :class:`SeededSamples`.)
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    # a terminal's Ctrl-C reaches the whole process group: the main process stops the run, then its workers.
    # (SIGTERM keeps its default: it is how the main process's multiprocessing ends daemonic workers at exit.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends on (seed, epoch, index) only (index -1: the epoch's shuffle)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index) + 1]).generate_state(1)[0])


class EpochSampler(Sampler):
    """The training order: ``(epoch, index)`` pairs of a permutation seeded by (seed, epoch) (in order without
    ``shuffle``), starting ``start`` samples in (a run resumed inside an epoch). ``set_epoch`` before each epoch."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = int(size), int(seed), shuffle
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator()
        generator.manual_seed(sample_seed(self.seed, self.epoch, -1))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        for index in self.order()[self.start:]:
            yield self.epoch, index

    def __len__(self) -> int:
        return max(self.size - self.start, 0)


class SeededSamples(Dataset):
    """A dataset indexed by ``(epoch, index)``: its augmentation pipeline (``transform``, anything with
    ``set_random_seed``) is seeded from (seed, epoch, index) before ``dataset[index]`` is made."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        epoch, index = item
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(sample_seed(self.seed, epoch, index))
        return self.dataset[index]


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
    """A DataLoader whose order and augmentation derive from ``seed``; workers persist.

    ``shuffle`` (training): an :class:`EpochSampler` over :class:`SeededSamples`, so each sample's randomness is a
    function of (seed, epoch, index) (the trainer calls ``loader.sampler.set_epoch``). Otherwise the dataset in
    order, as given.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; expected at least 1")
    if num_workers < 0:
        raise ValueError(f"num_workers is {num_workers}; expected 0 or more")
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if shuffle:
        dataset, sampler = SeededSamples(dataset, seed), EpochSampler(len(dataset), seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
