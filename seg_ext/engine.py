"""The training engine: device and seeding, loaders, optimiser and schedule, the epoch loop with validation,
atomic checkpoints (``last.pt``, ``best.pt``), resume, and a clear stop when the loss is not finite.

The loop knows nothing about the task: it is given ``loss_step(model, batch) -> (loss, parts)`` for training and
``validate(model) -> metrics`` for validation, so semantic and instance training share it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seg_ext.config import choice
from seg_ext.data.transforms import seed_worker
from seg_ext.errors import ConfigError, SegExtError, TrainingStopped

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


# ---- set-up -------------------------------------------------------------------------------------------


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'train.device' is {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.device' is {name!r} but CUDA is not available here; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_run(train_cfg: dict[str, Any]) -> torch.device:
    """Apply ``train.threads`` and ``train.seed``; check the precision keys; return the device ``train.device``
    names (the precision is resolved with the model, :func:`resolve_precision`)."""
    threads = int(train_cfg["threads"])
    if threads > 0:
        torch.set_num_threads(threads)
    seed_everything(int(train_cfg["seed"]))
    device = select_device(train_cfg["device"])
    resolve_precision(train_cfg, device)
    return device


AMP_MODES = ("auto", "off", "fp16", "bf16")
CHANNELS_LAST_MODES = ("auto", "true", "false")


@dataclass(frozen=True)
class Precision:
    """How the model computes: autocast dtype (None: fp32) and memory format.

    Resolved from ``train.amp`` and ``train.channels_last`` by :func:`resolve_precision`; the defaults (``auto``)
    come from ``benchmarks/run.py`` (``cpu_throughput``, ``cuda_throughput``).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self):
        """The autocast context for forward passes (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    @property
    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model`` in the memory format; convolutions then pass it on to their outputs and gradients."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        dtype = {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}[self.amp_dtype]
        return dtype + (", channels_last" if self.channels_last else "")


def _word(value: Any) -> str:
    """A config value as a word: YAML and --opts read true/false as bools."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private names)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def bf16_safe(model: nn.Module | None) -> bool:
    """False when ``model`` holds a module marked ``bf16_safe = False`` (measured unsafe by the benchmarks)."""
    return model is None or all(getattr(m, "bf16_safe", True) for m in model.modules())


def resolve_precision(train_cfg: dict[str, Any], device: torch.device, model: nn.Module | None = None) -> Precision:
    """The :class:`Precision` that ``train.amp`` and ``train.channels_last`` ask for on ``device`` for ``model``.

    ``amp``: ``auto`` (or true) is fp16 autocast with a gradient scaler on CUDA, bf16 autocast on a CPU that
    computes bf16 natively (unless ``model`` is marked unsafe in bf16, see :func:`bf16_safe`), and fp32 on other
    CPUs; ``off`` (or false) is fp32; ``fp16`` and ``bf16`` force that dtype. ``channels_last``: ``auto`` is on
    for the CPU and off on CUDA; ``true``/``false`` force it. The CPU choices are the fastest numerically safe
    ones ``benchmarks/run.py --only cpu_throughput`` measured (and full training runs confirmed, see
    benchmarks/README.md); on CUDA, fp16 autocast is the established default and channels_last stays off until
    ``cuda_throughput`` has measured it.
    """
    amp = {"true": "auto", "false": "off"}.get(_word(train_cfg["amp"]), _word(train_cfg["amp"]))
    amp = choice(amp, "train.amp", AMP_MODES)
    if amp == "auto":
        if device.type == "cuda":
            amp = "fp16"
        else:
            amp = "bf16" if native_bf16_cpu() and bf16_safe(model) else "off"
    dtype = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    layout = choice(_word(train_cfg["channels_last"]), "train.channels_last", CHANNELS_LAST_MODES)
    channels_last = device.type == "cpu" if layout == "auto" else layout == "true"
    return Precision(device, dtype, channels_last)


def place_model(model: nn.Module, train_cfg: dict[str, Any], device: torch.device) -> tuple[nn.Module, Precision]:
    """Move ``model`` to ``device`` in the memory format ``train_cfg`` asks for; return it with its
    :class:`Precision` (resolved once per run and handed to training and evaluation)."""
    model = model.to(device)
    precision = resolve_precision(train_cfg, device, model)
    return precision.prepare(model), precision


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
    """A DataLoader whose shuffling and per-worker augmentation seeds derive from ``seed``."""
    if batch_size < 1:
        raise ConfigError(f"config key 'data.batch_size' is {batch_size}; expected at least 1")
    if num_workers < 0:
        raise ConfigError(f"config key 'data.num_workers' is {num_workers}; expected 0 or more")
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


def build_optimizer(params: Iterable[torch.nn.Parameter], train_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW (default), Adam or SGD with momentum, from the ``train`` config block."""
    name = choice(train_cfg["optimizer"], "train.optimizer", ("adamw", "adam", "sgd"))
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; check model.freeze_encoder and the model name")
    lr, wd = float(train_cfg["lr"]), float(train_cfg["weight_decay"])
    if lr <= 0:
        raise ConfigError(f"config key 'train.lr' is {lr}; expected a positive learning rate")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(train_cfg["momentum"]), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def lr_factor_fn(train_cfg: dict[str, Any], iters_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor for each iteration: a linear warmup times a cosine, step or constant decay."""
    kind = choice(train_cfg["scheduler"], "train.scheduler", ("cosine", "step", "none"))
    epochs = max(int(train_cfg["epochs"]), 1)
    total = max(epochs * iters_per_epoch, 1)
    step_size, gamma = int(train_cfg["step_size"]), float(train_cfg["gamma"])
    if kind == "step" and step_size < 1:
        raise ConfigError(f"config key 'train.step_size' is {step_size}; expected at least 1 epoch")
    warmup, warmup_factor = int(train_cfg["warmup_iters"]), float(train_cfg["warmup_factor"])
    if warmup < 0:  # the first epoch, as torchvision's detection references do
        warmup = min(1000, max(iters_per_epoch - 1, 1))

    def factor(it: int) -> float:
        if kind == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        elif kind == "step":
            decay = gamma ** ((it // max(iters_per_epoch, 1)) // step_size)
        else:
            decay = 1.0
        if it < warmup:
            decay *= warmup_factor + (1 - warmup_factor) * it / warmup
        return decay

    return factor


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically (temporary file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the engine.

    Raises:
        SegExtError: the file is missing or not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise SegExtError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SegExtError(f"cannot read checkpoint {path} ({exc.__class__.__name__}); expected a .pt written by seg_ext") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "version" not in ckpt:
        raise SegExtError(f"checkpoint {path} is not a seg_ext checkpoint; expected a last.pt or best.pt of a run")
    return ckpt


def to_jsonable(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- the loop -----------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What the loop has done so far; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    iteration: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


class Trainer:
    """Epoch loop with validation, checkpoints and resume.

    Args:
        model: the network (already on ``device``).
        optimizer, scheduler: the optimiser and a per-iteration ``LambdaLR``.
        train_loader: batches for ``loss_step``.
        loss_step: ``loss_step(model, batch) -> (loss, parts)``; runs under autocast; ``parts`` maps names of
            loss components to floats for the log.
        validate: ``validate(model) -> metrics`` on the validation split (``loss`` among them if it has one).
        output_dir: where ``last.pt``, ``best.pt`` and ``metrics.jsonl`` go.
        epochs: epochs to train in all (a resumed run continues up to this).
        best_metric: validation key that picks ``best.pt``; higher is better, except for keys naming a loss.
        meta: extra entries for every checkpoint (config, class names, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: DataLoader,
        loss_step: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]],
        validate: Callable[[nn.Module], dict[str, float]],
        output_dir: str | Path,
        epochs: int,
        best_metric: str,
        precision: Precision,
        grad_clip: float | None = None,
        eval_every: int = 1,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader = train_loader
        self.loss_step, self.validate = loss_step, validate
        self.output_dir = Path(output_dir)
        self.epochs, self.best_metric = int(epochs), best_metric
        self.minimize = "loss" in best_metric
        self.precision = precision
        self.scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.needs_scaler)
        self.grad_clip = grad_clip
        self.eval_every = max(int(eval_every), 1)
        self.meta = dict(meta or {})
        self.state = TrainState()

    # -- checkpoints

    def checkpoint(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": vars(self.state).copy(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "loader": None if (gen := self._loader_generator()) is None else gen.get_state(),
            },
            **self.meta,
        }

    def _loader_generator(self) -> torch.Generator | None:
        return getattr(self.train_loader, "generator", None)

    def resume(self, path: str | Path) -> None:
        """Restore model, optimiser, schedule, scaler, progress and random state from ``path``."""
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["state"])
        rng = ckpt.get("rng", {})
        if rng:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            gen = self._loader_generator()
            if rng.get("loader") is not None and gen is not None:
                gen.set_state(rng["loader"])
        logger.info("resumed from %s after epoch %d", path, self.state.epoch)

    def _write_history(self) -> None:
        lines = "".join(json.dumps(to_jsonable(h)) + "\n" for h in self.state.history)
        atomic_write_text(lines, self.output_dir / "metrics.jsonl")

    # -- one epoch

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.epochs}", leave=False, disable=None, dynamic_ncols=True)
        for batch in bar:
            with self.precision.autocast():
                loss, parts = self.loss_step(self.model, batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                last = self.output_dir / "last.pt"
                kept = f"the last good checkpoint is {last} (epoch {self.state.epoch})" if last.is_file() else "no checkpoint was written yet"
                raise TrainingStopped(
                    f"training stopped: the loss became {value} at epoch {epoch}, iteration {self.state.iteration}; "
                    f"{kept}; try a lower train.lr or set train.grad_clip"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.grad_clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.state.iteration += 1
            count += 1
            sums["loss"] = sums.get("loss", 0.0) + value
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        if count == 0:
            raise SegExtError("the training split gave no batch; expected at least one training image")
        return {k: v / count for k, v in sums.items()}

    # -- the loop

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        best = self.state.best_value
        return best is None or (value < best if self.minimize else value > best)

    def fit(self) -> TrainState:
        """Train up to ``epochs``, validating, logging and checkpointing after every epoch."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for epoch in range(self.state.epoch + 1, self.epochs + 1):
            start = time.perf_counter()
            train_metrics = self.train_one_epoch(epoch)
            train_seconds = time.perf_counter() - start
            self.state.train_seconds += train_seconds
            record: dict[str, Any] = {
                "epoch": epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_seconds": round(train_seconds, 3),
                **{f"train/{k}": v for k, v in train_metrics.items()},
            }
            improved = False
            if epoch % self.eval_every == 0 or epoch == self.epochs:
                start = time.perf_counter()
                val = self.validate(self.model)
                record["val_seconds"] = round(time.perf_counter() - start, 3)
                record.update({f"val/{k}": v for k, v in val.items()})
                if self.best_metric not in val:
                    raise ConfigError(
                        f"config key 'train.best_metric' is {self.best_metric!r}, which validation does not report; "
                        f"expected one of: {', '.join(k for k in val if not k.startswith('time/'))}"
                    )
                improved = self._improved(float(val[self.best_metric]))
                if improved:
                    self.state.best_value, self.state.best_epoch = float(val[self.best_metric]), epoch
            self.state.epoch = epoch
            self.state.history.append(record)
            ckpt = self.checkpoint()
            atomic_save(ckpt, self.output_dir / "last.pt")
            if improved:
                atomic_save(ckpt, self.output_dir / "best.pt")
            self._write_history()
            logger.info(_epoch_line(record, self.epochs, self.best_metric, improved))
        return self.state


def _epoch_line(record: dict[str, Any], epochs: int, best_metric: str, improved: bool) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"train loss {record['train/loss']:.4f}"]
    if "val/loss" in record:
        parts.append(f"val loss {record['val/loss']:.4f}")
    key = f"val/{best_metric}"
    if key in record and best_metric != "loss":
        parts.append(f"val {best_metric} {record[key]:.2f}")
    parts.append(f"lr {record['lr']:.2e}")
    parts.append(f"{record['train_seconds'] + record.get('val_seconds', 0):.1f}s")
    return "  ".join(parts) + ("  (best)" if improved else "")
