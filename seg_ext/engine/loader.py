"""DataLoaders whose shuffling and augmentation derive from one seed.

Training loaders draw every sample's randomness from (seed, epoch, sample index) alone: the epoch's order is a
permutation seeded by (seed, epoch) (:class:`EpochSampler`) and each sample's augmentation pipeline is re-seeded
from (seed, epoch, index) before the sample is made (:class:`SeededSamples`). Nothing depends on which loader
worker made a sample or on what that worker did before, so a run resumed at any epoch or iteration draws what an
uninterrupted run draws, with or without workers.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


MAX_AUTO_WORKERS = 8


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or a scheduler's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_workers(setting: Any, processes: int = 1) -> int:
    """Loader processes for ``data.num_workers``: a number as it is; ``auto`` = min(8, the usable CPUs shared by
    the ``processes`` of the run on this machine), at least 1 (2 on a 2-core machine, as the fixed default was;
    8 on a 16-core GPU machine, where 2 starved the GPU: docs/gpu.md)."""
    if setting == "auto":
        return max(1, min(MAX_AUTO_WORKERS, usable_cpus() // max(int(processes), 1)))
    return int(setting)


CUDA_PREFETCH = 4  # batches each worker prepares ahead for a GPU (Ultralytics' choice; PyTorch's default is 2)


def device_feed(device: torch.device, num_workers: int) -> dict[str, Any]:
    """DataLoader options for feeding ``device``: pinned memory and ``CUDA_PREFETCH`` batches ahead per worker on
    CUDA; PyTorch's defaults elsewhere."""
    cuda = device.type == "cuda"
    return {"pin_memory": cuda, "prefetch_factor": CUDA_PREFETCH if cuda and num_workers > 0 else None}


def seed_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the worker's Python and NumPy generators from torch's per-worker seed,
    and leave signals to the main process. (Augmentation needs no per-worker seed: training loaders seed it per
    sample, :class:`SeededSamples`.)

    The worker moves to a process group of its own: a signal to the run's group (a terminal's Ctrl-C, a
    scheduler's SIGTERM, torchrun passing one on) reaches the main process only, which stops the run after the
    current iteration and then ends its workers. A worker whose main process is killed outright dies with it (on
    Linux, the kernel's parent-death signal: PyTorch's own watch of the parent can leave a worker hanging at exit
    on a full result pipe; after a Ray search such a worker lived on for minutes).

    A forked worker inherits the main process's Python signal handlers, and workers forked during training would
    take the trainer's SIGTERM handler (which only notes a stop): SIGTERM is set back to its default, so a
    worker told to end ends (multiprocessing ends daemonic workers so at exit, and so does a person).
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    try:
        os.setpgid(0, 0)
    except OSError:  # not permitted here: Ctrl-C to the group still reaches it, so ignore that at least
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that started it ends (Linux ``PR_SET_PDEATHSIG``;
    nothing elsewhere). Loader workers are started by the thread that iterates the loader, the main thread."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends on (seed, epoch, index) only (index -1: the epoch's shuffle)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index) + 1]).generate_state(1)[0])


class EpochSampler(Sampler):
    """The training order: ``(epoch, index)`` pairs of a permutation seeded by (seed, epoch) (in order without
    ``shuffle``), cut into global batches of ``batch_size x world_size`` samples, of which process ``rank`` takes
    the ``rank``-th block of ``batch_size``; starting ``start`` samples into the epoch (a run resumed inside it).
    ``set_epoch`` before each epoch.

    The last partial global batch is dropped, unless the split is smaller than one global batch: then its
    samples are shared evenly in one batch. So every process has the same number of batches, a global batch holds
    the samples that one process with ``batch_size x world_size`` would take, and each sample's randomness is the
    same whichever process makes it.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = int(size), int(seed), shuffle
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Begin ``epoch`` at sample ``start`` (a multiple of the global batch; another start is rounded down)."""
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator()
        generator.manual_seed(sample_seed(self.seed, self.epoch, -1))
        return torch.randperm(self.size, generator=generator).tolist()

    def _blocks(self) -> tuple[int, int, int]:
        """(global batch size, per-process batch size, number of global batches) of an epoch."""
        glob = self.batch_size * self.world_size
        if self.size >= glob:
            return glob, self.batch_size, self.size // glob
        per = self.size // self.world_size
        return per * self.world_size, per, 1 if per else 0

    def __iter__(self):
        glob, per, batches = self._blocks()
        order = self.order()
        for k in range(min(self.start // max(glob, 1), batches), batches):
            for index in order[k * glob + self.rank * per: k * glob + (self.rank + 1) * per]:
                yield self.epoch, index

    def __len__(self) -> int:
        glob, per, batches = self._blocks()
        return max(batches - self.start // max(glob, 1), 0) * per


class ShardSampler(Sampler):
    """Evaluation order: this process's contiguous share of the split, without padding (each image is evaluated
    by exactly one process)."""

    def __init__(self, indices: range) -> None:
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


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
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    shard: range | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader whose order and augmentation derive from ``seed``; workers persist.

    ``shuffle`` (training): an :class:`EpochSampler` over :class:`SeededSamples`, so each sample's randomness is a
    function of (seed, epoch, index) (the trainer calls ``loader.sampler.set_epoch``); process ``rank`` of
    ``world_size`` takes its block of every global batch; a last partial global batch is dropped. Otherwise the
    dataset in order (only the indices of ``shard``, when given: a process's share for evaluation).

    The loader's own generator (the seeds of worker processes) is seeded from ``seed + rank``, so workers of
    different processes differ. ``pin_memory`` and ``prefetch_factor`` (batches each worker prepares ahead; None:
    PyTorch's 2): :func:`device_feed` gives them for a device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}; expected at least 1")
    if num_workers < 0:
        raise ValueError(f"num_workers is {num_workers}; expected 0 or more")
    generator = torch.Generator()
    generator.manual_seed(seed + rank)
    sampler = None
    if shuffle:
        sampler = EpochSampler(len(dataset), seed, batch_size=batch_size, rank=rank, world_size=world_size)
        dataset = SeededSamples(dataset, seed)
    elif shard is not None:
        sampler = ShardSampler(shard)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor,
    )


def close_loader(loader: DataLoader) -> None:
    """End ``loader``'s persistent worker processes now (they otherwise live until the loader is collected).

    A loader left to the garbage collector inside a reference cycle is finalised after its queues, so each worker
    waits out PyTorch's 5-second join: a run trained in-process (``seg_ext.tasks.driver.train``) then cost a
    later, unrelated step 5 s per worker. PyTorch has no public call for this; the iterator's own shutdown is the
    one its ``__del__`` makes.
    """
    if not isinstance(loader, DataLoader):  # a list of batches (the train_overhead benchmark), or any iterable
        return
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None
