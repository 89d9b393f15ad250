"""The run object and the one path that builds it from a config (:func:`build_run`): seeds and device, the
method, its data, the run folder's files, the placed model, its loss and the evaluation loaders, in that order.
The driver (training, evaluation, the oracle), ``tools/tune_postprocess.py`` and the contract tests all build
their run here. The run is also where config blocks become the plain arguments of the engine (``loader``,
``optimizer``, ``scheduler``, ``place``).

Config values are checked once, when the config is loaded (``seg_ext.methods.check_config``); the functions
here only read them and pass them on.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seg_ext import distributed
from seg_ext.config import save_config
from seg_ext.engine import (
    previous_path,
    Precision, build_optimizer, close_loader, device_feed, lr_factor_fn, make_loader, place_model, resolve_workers,
    seed_everything, select_device, set_cudnn_benchmark, set_deterministic, set_threads,
)
from seg_ext.errors import ConfigError, SegExtError
from seg_ext.io import write_json
from seg_ext.methods import Method, RunData, build_method

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One training or evaluation run: its config, folder and device, and what :func:`build_run` builds for it.

    Attributes:
        cfg: the validated config.
        output_dir: the run folder.
        command: how the run was started (for the report).
        device: where it computes; precision: how (set by :meth:`place`).
        method: the method of ``cfg``; data: its datasets and what the run keeps of them.
        model: the placed network (None for a run without one: the oracle); loss: the method's loss step.
        loaders: evaluation loaders of the splits that have images, built once.
        made: every loader :meth:`loader` made (their workers are ended by :meth:`close`).
    """

    cfg: dict[str, Any]
    output_dir: Path
    command: str
    device: torch.device
    precision: Precision | None = None
    method: Method | None = None
    data: RunData | None = None
    model: nn.Module | None = None
    loss: Any = None
    loaders: dict[str, DataLoader] = field(default_factory=dict)
    made: list[DataLoader] = field(default_factory=list, repr=False)

    @property
    def datasets(self) -> dict[str, Any]:
        return self.data.datasets if self.data is not None else {}

    @classmethod
    def start(cls, cfg: dict[str, Any], output_dir: Path, command: str = "") -> "Run":
        """Apply ``train.threads`` and ``train.seed``, pick ``train.device`` and, under torchrun, join the
        process group (this process's GPU: ``cuda:LOCAL_RANK``)."""
        train = cfg["train"]
        set_threads(train["threads"])
        set_deterministic(train["deterministic"])  # (before CUDA starts: cuBLAS reads its workspace setting then)
        seed_everything(train["seed"])  # the same on every process: the model starts from the same weights
        device = select_device(train["device"])
        distributed.init(device, train["dist_timeout"])
        return cls(cfg, Path(output_dir), command, distributed.device_for(device))

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device in the precision ``train.amp`` / ``train.channels_last`` ask for; with
        several processes, batch norm synchronised as ``train.sync_bn`` says, and each process's random streams
        (Mask R-CNN's sampling of proposals, ...) seeded apart."""
        train = self.cfg["train"]
        model, self.precision = place_model(model, self.device, train["amp"], train["channels_last"])
        # cuDNN's autotuner where every training batch has the same shape (a method says whether it does)
        fixed = self.method is None or self.method.fixed_train_size
        set_cudnn_benchmark(self.device.type == "cuda" and not train["deterministic"] and fixed)
        if self.sync_bn(model):
            model = distributed.convert_sync_batch_norm(model)
            logger.info("batch norm synchronised over the %d processes (train.sync_bn)", distributed.world_size())
        if distributed.is_distributed():
            seed_everything(train["seed"] + distributed.rank())
        return model

    def sync_bn(self, model: nn.Module) -> bool:
        """Whether ``train.sync_bn`` turns the model's batch norm into SyncBatchNorm: ``auto`` for several CUDA
        processes and a model with batch norm; ``true`` needs CUDA (PyTorch's SyncBatchNorm computes only there);
        never in one process."""
        setting = str(self.cfg["train"]["sync_bn"]).lower()
        if setting == "false" or not distributed.is_distributed() or not distributed.has_batch_norm(model):
            return False
        if self.device.type != "cuda":
            if setting == "true":
                raise ConfigError(f"config key 'train.sync_bn' is true but the run computes on {self.device}; "
                                  "PyTorch's SyncBatchNorm needs CUDA devices (set it to auto or false)")
            return False
        return True

    @property
    def global_batch(self) -> int:
        """Training images per optimiser step over all processes (``data.batch_size`` is per process)."""
        return self.cfg["data"]["batch_size"] * distributed.world_size()

    def loader(self, dataset: Dataset, train: bool = False, collate_fn: Callable | None = None) -> DataLoader:
        """A loader of ``data.batch_size`` and ``data.num_workers``: for training shuffled, without a last partial
        batch, this process's block of every global batch; for evaluation in order, this process's share."""
        rank, world = distributed.rank(), distributed.world_size()
        if train and world > 1 and len(dataset) < world:
            raise SegExtError(f"the training split has {len(dataset)} image(s), fewer than the {world} processes; "
                              "expected at least one image per process")
        workers = self.num_workers
        loader = make_loader(
            dataset, batch_size=self.cfg["data"]["batch_size"], shuffle=train, num_workers=workers,
            seed=self.cfg["train"]["seed"], collate_fn=collate_fn, rank=rank, world_size=world,
            shard=None if train or world == 1 else distributed.shard(len(dataset)), **device_feed(self.device, workers),
        )
        self.made.append(loader)
        return loader

    @property
    def num_workers(self) -> int:
        """``data.num_workers`` resolved (``auto``: see ``engine.resolve_workers``)."""
        return resolve_workers(self.cfg["data"]["num_workers"], distributed.local_world_size())

    def close(self) -> None:
        """End the worker processes of every loader the run made (``with build_run(...) as run:`` does it when
        the run ends)."""
        for loader in self.made:
            close_loader(loader)
        self.made.clear()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def learning_rate(self) -> float:
        """``train.lr``, times the number of processes with ``train.lr_scaling: linear``."""
        t = self.cfg["train"]
        return t["lr"] * (distributed.world_size() if t["lr_scaling"] == "linear" else 1)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        t = self.cfg["train"]
        return build_optimizer(model.parameters(), t["optimizer"], self.learning_rate(), t["weight_decay"], t["momentum"])

    def scheduler(self, optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
        t = self.cfg["train"]
        factor = lr_factor_fn(t["scheduler"], t["epochs"], iters_per_epoch, t["step_size"], t["gamma"], t["warmup_iters"],
                              t["warmup_factor"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


EVAL_SPLITS = ("val", "test")


def build_run(cfg: dict[str, Any], output_dir: Path, command: str = "", model: bool = True, files: bool = True) -> Run:
    """The run of ``cfg``: threads, seeds and device (joining a torchrun process group), the method, its data
    (process 0 first: it may generate or convert files), the run folder's ``config.yaml`` and data files
    (``files``; process 0), the model placed in the run's precision, the loss and the evaluation loaders
    (``model`` False: none of the three, for a run that needs no network)."""
    run = Run.start(cfg, output_dir, command)
    run.method = build_method(cfg, run.device)
    with distributed.main_first():  # process 0 generates or converts data files before the others read them
        run.data = run.method.datasets(run.output_dir)
    if files and distributed.is_main():
        run.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.output_dir / "config.yaml")
        for name, content in run.data.files.items():
            write_json(content, run.output_dir / name)
    if not model:
        return run
    run.model = run.place(run.method.build_model(run.data.num_classes))
    run.method.dense_plan(run.model)  # eval.mode whole/slide checked against the network before training
    logger.info("model %s: %s parameters, device %s", cfg["model"]["name"],
                f"{sum(p.numel() for p in run.model.parameters()):,}", run.device)
    run.loaders = {s: run.loader(run.datasets[s], collate_fn=run.method.collate)
                   for s in EVAL_SPLITS if run.datasets.get(s) is not None and len(run.datasets[s])}
    run.loss = run.method.loss(run.data)
    return run


def join_processes(cfg: dict[str, Any]) -> None:
    """Under torchrun, join the process group now (before the run folder is locked and checked); nothing
    otherwise. :meth:`Run.start` does it too."""
    distributed.init(select_device(cfg["train"]["device"]), cfg["train"]["dist_timeout"])


def prepare_output_dir(output_dir: Path, resume: bool) -> Path:
    """Check the run folder: a new run must not overwrite an earlier one; a resumed run must have one."""
    last = output_dir / "last.pt"
    if resume and not last.is_file() and not previous_path(last).is_file():
        raise SegExtError(f"cannot resume: {last} does not exist; expected the folder of an earlier run")
    if not resume and last.is_file():
        raise SegExtError(
            f"output folder {output_dir} already holds a run ({last}); pass --resume to continue it or choose "
            "another --output-dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


class RunLock:
    """``<output_dir>/.lock`` held for a run's lifetime: a second run into the same folder refuses, naming the
    first's pid. The lock is an OS record lock (``lockf``), so it dies with its process; a lock file left by a
    killed run is taken over with a warning."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir, self.path = Path(output_dir), Path(output_dir) / ".lock"
        self.handle = None

    def __enter__(self) -> "RunLock":
        if not distributed.is_main():  # process 0 holds it for the whole distributed run
            return self
        self.output_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            # a POSIX record lock, which (unlike flock) forked loader workers do not inherit: it is released the
            # moment this process dies, even while its workers linger
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise SegExtError(f"output folder {self.output_dir} is in use by another run (pid {owner}); wait for it to "
                              "finish or choose another --output-dir") from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous and previous != str(os.getpid()):
            logger.warning("output folder %s was locked by pid %s, which is no longer running; taking the lock over",
                           self.output_dir, previous)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.lockf(self.handle, fcntl.LOCK_UN)
        self.handle.close()

