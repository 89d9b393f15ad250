"""The training loop: ``run_step(batch)`` plus hooks, after detectron2's ``train_loop.py`` and ``hooks.py``.

The trainer owns the model, optimiser, schedule, gradient scaler and progress (:class:`TrainState`); it runs
epochs of steps. Everything around the steps is a :class:`Hook`: the progress bar, the stop on a non-finite
loss, validation and the best checkpoint, the history (``metrics.jsonl``), the checkpoints and the epoch log
line. :func:`default_hooks` gives the usual set; pass ``hooks=`` to choose others, or subclass and override
``run_step`` (the counting baseline does: :class:`CountingTrainer`).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from seg_ext import distributed
from seg_ext.engine.checkpoint import CHECKPOINT_VERSION, atomic_save, load_checkpoint
from seg_ext.engine.precision import Precision
from seg_ext.errors import ConfigError, Preempted, SegExtError, TrainingStopped
from seg_ext.io import write_jsonl

logger = logging.getLogger(__name__)

LossStep = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainState:
    """What the loop has done so far; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    iteration: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    position: int = 0  # batches done of the epoch under way (a checkpoint written inside an epoch)
    partial: dict[str, Any] = field(default_factory=dict)  # that epoch's loss sums, batch count and seconds so far
    world_size: int = 1  # processes of the run that wrote the state
    batch_size: int = 0  # their batch size each (0: a checkpoint from before it was saved; taken as this run's)


class Hook:
    """Something done around the steps. Every method receives the trainer; the default does nothing.

    ``after_loss`` runs before the backward pass with the step's loss value; during ``after_epoch`` the
    trainer's ``record`` (the epoch's line of ``metrics.jsonl``) may be read and extended.
    """

    def before_train(self, trainer: "Trainer") -> None: ...

    def before_epoch(self, trainer: "Trainer") -> None: ...

    def after_loss(self, trainer: "Trainer", value: float) -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def after_epoch(self, trainer: "Trainer") -> None: ...

    def after_train(self, trainer: "Trainer") -> None: ...


class ProgressBar(Hook):
    """A tqdm bar per epoch with the running mean loss and the learning rate (off when not on a terminal)."""

    def before_epoch(self, trainer: "Trainer") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=len(trainer.train_loader), desc=f"epoch {trainer.epoch}/{trainer.epochs}", leave=False,
                        disable=None if distributed.is_main() else True, dynamic_ncols=True)

    def after_step(self, trainer: "Trainer") -> None:
        postfix = {}
        if trainer.epoch_count and "loss" in trainer.epoch_sums:
            postfix["loss"] = f"{trainer.epoch_sums['loss'] / trainer.epoch_count:.4f}"
        if trainer.optimizer is not None:
            postfix["lr"] = f"{trainer.optimizer.param_groups[0]['lr']:.2e}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def after_epoch(self, trainer: "Trainer") -> None:
        self.bar.close()


class NonFiniteStop(Hook):
    """Stop before a non-finite loss reaches the weights, naming the last good checkpoint."""

    def after_loss(self, trainer: "Trainer", value: float) -> None:
        if math.isfinite(value):
            return
        last = trainer.output_dir / "last.pt"
        kept = f"the last good checkpoint is {last} (epoch {trainer.state.epoch})" if last.is_file() else "no checkpoint was written yet"
        raise TrainingStopped(
            f"training stopped: the loss became {value} at epoch {trainer.epoch}, iteration {trainer.state.iteration}; "
            f"{kept}; try a lower train.lr or set train.grad_clip"
        )


class Validation(Hook):
    """Validate every ``trainer.eval_every`` epochs and after the last; note whether ``trainer.best_metric``
    improved (higher is better, except for metrics naming a loss)."""

    def __init__(self, validate: Callable[[nn.Module], dict[str, float]]) -> None:
        self.validate = validate

    def after_epoch(self, trainer: "Trainer") -> None:
        epoch = trainer.epoch
        if epoch % trainer.eval_every and epoch != trainer.epochs:
            return
        start = time.perf_counter()
        val = self.validate(trainer.module)  # the same numbers on every process (the evaluators combine them)
        trainer.record["val_seconds"] = round(time.perf_counter() - start, 3)
        trainer.record.update({f"val/{k}": v for k, v in val.items()})
        if trainer.best_metric not in val:
            raise ConfigError(
                f"config key 'train.best_metric' is {trainer.best_metric!r}, which validation does not report; "
                f"expected one of: {', '.join(k for k in val if not k.startswith('time/'))}"
            )
        value = float(val[trainer.best_metric])
        best = trainer.state.best_value
        minimize = "loss" in trainer.best_metric
        if math.isfinite(value) and (best is None or (value < best if minimize else value > best)):
            trainer.improved = True
            trainer.state.best_value, trainer.state.best_epoch = value, epoch


class History(Hook):
    """Keep the epoch's record in the state and rewrite ``metrics.jsonl`` (one line per epoch)."""

    def after_epoch(self, trainer: "Trainer") -> None:
        trainer.state.history.append(trainer.record)
        if distributed.is_main():
            write_jsonl(trainer.state.history, trainer.output_dir / "metrics.jsonl")


_END, _LOST = object(), object()  # the loader's end; a batch lost with the loader workers


class StopOnSignal:
    """While training: SIGTERM (what SLURM and Kubernetes send before a kill) or SIGINT asks the trainer to stop
    after the current iteration; a second SIGINT stops at once. Only in the main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        self.received = signum
        if signum == signal.SIGTERM and hasattr(signal, "SIGCHLD"):
            # a scheduler's SIGTERM to the whole process group ends the loader workers too; torch's SIGCHLD
            # handler would turn that into an error in the middle of this last step
            signal.signal(signal.SIGCHLD, lambda *args: None)  # not SIG_DFL: CPython warns of a pending one
        logger.warning("%s received: stopping after this iteration (press Ctrl-C again to stop at once)",
                       signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class Checkpoints(Hook):
    """``last.pt`` after every epoch (the one before kept as ``last.prev.pt``), ``best.pt`` when validation
    improved; all written atomically."""

    def after_step(self, trainer: "Trainer") -> None:
        every = trainer.checkpoint_every
        if every and trainer.state.iteration % every == 0 and trainer.can_stop_inside_epoch():
            trainer.save_position()

    def after_epoch(self, trainer: "Trainer") -> None:
        ckpt = trainer.checkpoint()
        trainer.save(ckpt, "last.pt", keep_previous=True)  # last.prev.pt: the one before
        if trainer.improved:
            trainer.save(ckpt, "best.pt")


class EpochLog(Hook):
    """One log line per epoch: losses, the best metric, learning rate, time, and whether it was the best."""

    def after_epoch(self, trainer: "Trainer") -> None:
        record = trainer.record
        parts = [f"epoch {record['epoch']}/{trainer.epochs}"]
        if "train/loss" in record:
            parts.append(f"train loss {record['train/loss']:.4f}")
        if "val/loss" in record:
            parts.append(f"val loss {record['val/loss']:.4f}")
        key = f"val/{trainer.best_metric}"
        if key in record and trainer.best_metric != "loss":
            parts.append(f"val {trainer.best_metric} {record[key]:.2f}")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.2e}")
        parts.append(f"{record['train_seconds'] + record.get('val_seconds', 0):.1f}s")
        logger.info("  ".join(parts) + ("  (best)" if trainer.improved else ""))


class TensorBoard(Hook):
    """TensorBoard event files in ``log_dir`` (process 0 only): each step's loss and learning rate (by
    iteration), each epoch's record (train losses, validation metrics, times; by epoch) and, after each
    validation, ``picture(model)`` (an HxWx3 uint8 image: the validation overlays) as an image. Needs the
    ``tensorboard`` package."""

    def __init__(self, log_dir: str | Path, picture: Callable[[nn.Module], np.ndarray] | None = None) -> None:
        self.log_dir, self.picture, self.writer, self.loss = Path(log_dir), picture, None, None

    def before_train(self, trainer: "Trainer") -> None:
        if distributed.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir))

    def after_loss(self, trainer: "Trainer", value: float) -> None:
        self.loss = value

    def after_step(self, trainer: "Trainer") -> None:
        if self.writer is None:
            return
        step = trainer.state.iteration
        if self.loss is not None:
            self.writer.add_scalar("train/loss_step", self.loss, step)
        if trainer.optimizer is not None:
            self.writer.add_scalar("train/lr_step", trainer.optimizer.param_groups[0]["lr"], step)

    def after_epoch(self, trainer: "Trainer") -> None:
        if self.writer is None:
            return
        for key, value in trainer.record.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, trainer.epoch)
        if self.picture is not None and any(k.startswith("val/") for k in trainer.record):
            picture = self.picture(trainer.module)
            if picture is not None:
                self.writer.add_image("val/overlays", picture, trainer.epoch, dataformats="HWC")
        self.writer.flush()

    def after_train(self, trainer: "Trainer") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def default_hooks(validate: Callable[[nn.Module], dict[str, float]]) -> list[Hook]:
    """The usual hooks, in the order they run: progress, non-finite stop, validation, history, checkpoints, log."""
    return [ProgressBar(), NonFiniteStop(), Validation(validate), History(), Checkpoints(), EpochLog()]


class Trainer:
    """Epochs of ``run_step`` with hooks around them, checkpoints and resume.

    Args:
        model: the network (already on ``precision.device``).
        optimizer, scheduler: the optimiser and a per-iteration ``LambdaLR`` (None for a trainer that does not
            descend a gradient, like :class:`CountingTrainer`).
        train_loader: batches for ``loss_step``.
        loss_step: ``loss_step(model, batch) -> (loss, parts)``; runs under autocast; ``parts`` maps names of
            loss components to floats for the log.
        validate: ``validate(model) -> metrics`` on the validation split (``loss`` among them if it has one);
            used by the default hooks.
        output_dir: where ``last.pt``, ``best.pt`` and ``metrics.jsonl`` go.
        epochs: epochs to train in all (a resumed run continues up to this).
        best_metric: validation key that picks ``best.pt``; higher is better, except for keys naming a loss.
        meta: extra entries for every checkpoint (config, class names, ...).
        hooks: replaces :func:`default_hooks` when given.
        checkpoint_every: also write ``last.pt`` every this many iterations, inside epochs (0: only after each).

    A loader whose ``sampler`` has ``set_epoch(epoch, start)`` (``engine.make_loader``'s training loaders) makes
    the run resumable inside an epoch: SIGTERM/SIGINT and ``checkpoint_every`` save the position, and
    :meth:`resume` continues from that batch. Other loaders resume at epoch boundaries only.

    Under torchrun (``seg_ext.distributed``) the model trains in DistributedDataParallel (``trainer.model``; the
    model itself is ``trainer.module``: validated, checkpointed, resumed); every step the processes agree on the
    loss (its mean over them, which the non-finite stop and the log see) and on whether a signal asks them to
    stop, so they stop at the same iteration; process 0 writes the files.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        train_loader: Iterable,
        loss_step: LossStep,
        validate: Callable[[nn.Module], dict[str, float]] | None,
        output_dir: str | Path,
        epochs: int,
        best_metric: str,
        precision: Precision,
        grad_clip: float | None = None,
        eval_every: int = 1,
        meta: dict[str, Any] | None = None,
        hooks: Sequence[Hook] | None = None,
        checkpoint_every: int = 0,
    ) -> None:
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        # several processes: gradients averaged by DistributedDataParallel (a counting trainer has none)
        self.model = distributed.wrap_model(model, precision.device) if optimizer is not None else model
        self.train_loader = train_loader
        self.loss_step = loss_step
        self.output_dir = Path(output_dir)
        self.epochs, self.best_metric = int(epochs), best_metric
        self.precision = precision
        self.scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.needs_scaler)
        self.grad_clip = grad_clip
        self.eval_every = max(int(eval_every), 1)
        self.meta = dict(meta or {})
        self.state = TrainState()
        if hooks is None:
            hooks = default_hooks(validate) if validate is not None else [ProgressBar(), NonFiniteStop(), History(), Checkpoints(), EpochLog()]
        self.hooks = list(hooks)
        # the epoch under way: its number, its record (a line of metrics.jsonl), whether validation improved
        self.epoch, self.record, self.improved = 0, {}, False
        self.epoch_sums: dict[str, float] = {}
        self.epoch_count = 0
        self.checkpoint_every = max(int(checkpoint_every), 0)
        self.stop = StopOnSignal()
        self._epoch_start = 0.0
        self._agreed_signal: int | None = None  # the stop request all processes have seen (several processes)

    # -- checkpoints

    def checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`resume` needs, plus ``meta``. With several processes every one calls it (their
        random states are gathered: ``rng`` is process 0's, ``rng_ranks`` all of them in rank order)."""
        gen = self._loader_generator()
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "loader": None if gen is None else gen.get_state(),
        }
        ranks = distributed.gather(rng)
        self.state.world_size = distributed.world_size()
        self.state.batch_size = self._batch_size()
        return {
            "version": CHECKPOINT_VERSION,
            "model": self.module.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": vars(self.state).copy(),
            "rng": rng,
            **({"rng_ranks": ranks} if ranks is not None and len(ranks) > 1 else {}),
            **self.meta,
        }

    def save(self, ckpt: dict[str, Any], name: str, keep_previous: bool = False) -> Path:
        """Write ``ckpt`` as ``output_dir/name`` atomically (process 0 only)."""
        path = self.output_dir / name
        if distributed.is_main():
            atomic_save(ckpt, path, keep_previous=keep_previous)
        return path

    def _batch_size(self) -> int:
        """This process's batch size (1 for a loader without one)."""
        return int(getattr(self.train_loader, "batch_size", None) or 1)

    def _convert_position(self, path: str | Path) -> None:
        """A state written by another number of processes or batch size: continue the epoch under way at the same
        sample, counted in this run's batches (rounded down to one: a few samples are then trained again)."""
        world, batch = distributed.world_size(), self._batch_size()
        saved_world, saved_batch = self.state.world_size, self.state.batch_size or batch
        if (world, batch) != (saved_world, saved_batch):
            same = saved_world * saved_batch == world * batch
            logger.warning("%s was written by %d process(es) of batch %d and continues in %d of batch %d: %s", path,
                           saved_world, saved_batch, world, batch, "the same global batch" if same else
                           f"global batches of {world * batch} instead of {saved_world * saved_batch}")
        done = self.state.position * saved_batch * saved_world  # samples of the epoch under way
        self.state.position = done // (batch * world)

    def _loader_generator(self) -> torch.Generator | None:
        return getattr(self.train_loader, "generator", None)

    def resume(self, path: str | Path, ckpt: dict[str, Any] | None = None) -> None:
        """Restore model, optimiser, schedule, scaler, progress and random state from ``path`` (or from ``ckpt``,
        that file already read)."""
        ckpt = ckpt if ckpt is not None else load_checkpoint(path)
        self.module.load_state_dict(ckpt["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["state"])
        self._convert_position(path)
        rng = ckpt.get("rng", {})
        world = distributed.world_size()
        if world > 1:  # each process its own random state (when the same number of processes saved them)
            ranks = ckpt.get("rng_ranks") or []
            rng = ranks[distributed.rank()] if len(ranks) == world else {}
        if rng:
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            gen = self._loader_generator()
            if rng.get("loader") is not None and gen is not None:
                gen.set_state(rng["loader"])
        logger.info("resumed from %s after epoch %d", path, self.state.epoch)

    # -- one step, one epoch

    def _call(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, name)(self, *args)

    def run_step(self, batch: Any) -> tuple[float | None, dict[str, float]]:
        """Forward under autocast, the hooks' look at the loss, backward, optimiser and schedule step.

        Returns:
            The loss value and its named parts.
        """
        with self.precision.autocast():
            loss, parts = self.loss_step(self.model, batch)
        value, parts = self._agree(float(loss.detach()), parts)
        self._call("after_loss", value)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), float(self.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value, parts

    def _agree(self, value: float, parts: dict[str, float]) -> tuple[float, dict[str, float]]:
        """With several processes: the step's loss and parts as their means over the processes (so a non-finite
        loss anywhere stops every process); as they are in one process."""
        if not distributed.is_distributed():
            return value, parts
        world = distributed.world_size()
        names = list(parts)
        summed = distributed.all_reduce([value, *(float(parts[k]) for k in names)])
        return summed[0] / world, {k: v / world for k, v in zip(names, summed[1:])}

    def _signal_flags(self) -> list[float]:
        return [float(self.stop.received == s) for s in StopOnSignal.SIGNALS]

    @staticmethod
    def _agreed(flags: list[float]) -> int | None:
        """The signal that stops the run from the flags summed over the processes (SIGINT first), or None."""
        received = [s for s, n in zip(StopOnSignal.SIGNALS, flags) if n > 0]
        return (signal.SIGINT if signal.SIGINT in received else received[0]) if received else None

    def _signal_everywhere(self) -> int | None:
        """The stop signal any process has received, agreed by all; in one process, this process's."""
        if not distributed.is_distributed():
            return self.stop.received
        return self._agreed(distributed.all_reduce(self._signal_flags()))

    def can_stop_inside_epoch(self) -> bool:
        """Whether the loader can start an epoch at a given batch (see the class docstring)."""
        return hasattr(getattr(self.train_loader, "sampler", None), "set_epoch")

    def save_position(self) -> Path:
        """Write ``last.pt`` with the position inside the epoch under way."""
        self.state.partial = {"sums": dict(self.epoch_sums), "count": self.epoch_count,
                              "seconds": time.perf_counter() - self._epoch_start}
        return self.save(self.checkpoint(), "last.pt", keep_previous=True)

    def train_one_epoch(self) -> dict[str, float]:
        """One pass over the loader (from the saved position of a resumed epoch); returns the mean loss and parts.

        Raises:
            Preempted: SIGTERM or SIGINT arrived; ``last.pt`` holds the position after the finished iteration.
        """
        self.model.train()
        partial = self.state.partial if self.state.position else {}
        self.epoch_sums, self.epoch_count = dict(partial.get("sums", {})), int(partial.get("count", 0))
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            # samples done over all processes
            sampler.set_epoch(self.epoch, start=self.state.position * self._batch_size() * distributed.world_size())
        batches = None
        while True:
            try:
                if batches is None:  # (persistent workers start the epoch here: they may be gone already)
                    batches = iter(self.train_loader)
                batch = next(batches)
            except StopIteration:
                batch = _END
            except RuntimeError:
                if self.stop.received is None:
                    raise
                batch = _LOST  # the loader workers went with the signal (a scheduler's or torchrun's group SIGTERM)
            # before each step, all processes agree whether to stop: they stop at the same iteration
            self._agreed_signal = self._signal_everywhere()
            if self._agreed_signal is not None:
                self._preempt()
            if batch is _END:
                break
            value, parts = self.run_step(batch)
            self.state.iteration += 1
            self.state.position += 1
            self.epoch_count += 1
            if value is not None:
                self.epoch_sums["loss"] = self.epoch_sums.get("loss", 0.0) + value
            for k, v in parts.items():
                self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + float(v)
            self._call("after_step")
        if self.epoch_count == 0:
            raise SegExtError("the training split gave no batch; expected at least one training image")
        return {k: v / self.epoch_count for k, v in self.epoch_sums.items()}

    def _preempt(self, where: str | None = None) -> None:
        """Raise :class:`Preempted`, naming where the run stopped (by default: inside the epoch, saving the position
        when the loader can resume there)."""
        path = self.output_dir / "last.pt"
        signum = self._agreed_signal or self.stop.received
        if where is None and self.can_stop_inside_epoch():
            self.save_position()
            where = f"in epoch {self.epoch} after {self.state.position} batch(es)"
        elif where is None:
            where = f"in epoch {self.epoch} (this loader resumes at epoch boundaries: the epoch restarts)"
        raise Preempted(f"stopped by {signal.Signals(signum).name} {where}; {path} holds the run: continue "
                        f"with --resume --output-dir {self.output_dir}", signum)

    # -- the loop

    def fit(self) -> TrainState:
        """Train up to ``epochs``; the hooks validate, log and checkpoint after every epoch."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with self.stop:
            return self._fit()

    def _fit(self) -> TrainState:
        self._call("before_train")
        for epoch in range(self.state.epoch + 1, self.epochs + 1):
            self.epoch, self.improved = epoch, False
            self._call("before_epoch")
            carried = float(self.state.partial.get("seconds", 0.0)) if self.state.position else 0.0
            start = self._epoch_start = time.perf_counter() - carried
            train_metrics = self.train_one_epoch()
            seconds = time.perf_counter() - start
            self.state.train_seconds += seconds
            self.record = {"epoch": epoch}
            if self.optimizer is not None:
                self.record["lr"] = self.optimizer.param_groups[0]["lr"]
            self.record["train_seconds"] = round(seconds, 3)
            self.record.update({f"train/{k}": v for k, v in train_metrics.items()})
            trained = (self.state.epoch, self.state.position, self.state.train_seconds - seconds)
            self.state.epoch, self.state.position, self.state.partial = epoch, 0, {}
            try:
                self._call("after_epoch")
            except RuntimeError:
                if self.stop.received is None or not self.can_stop_inside_epoch() or distributed.is_distributed():
                    raise
                # a group SIGTERM ended the validation loader's workers: keep the epoch as trained, not validated
                self.state.epoch, self.state.position, self.state.train_seconds = trained
                self._preempt()
            self._agreed_signal = self._signal_everywhere()
            if self._agreed_signal is not None:  # arrived during validation: this epoch is complete and saved
                self._preempt(f"after epoch {epoch}")
        self._call("after_train")
        return self.state


class CountingTrainer(Trainer):
    """A trainer whose step counts instead of descending a gradient (the per-pixel frequency baseline).

    ``count_step(model, batch)`` adds the batch to the model's counts; one pass over the loader is one epoch,
    followed by the same validation, checkpoints and history as any run. With several processes each counts its
    share of the loader, and the model's buffers (the counts) are summed over them after the pass.
    """

    def __init__(self, model: nn.Module, train_loader: Iterable, count_step: Callable[[nn.Module, Any], None],
                 validate: Callable[[nn.Module], dict[str, float]], output_dir: str | Path, best_metric: str,
                 precision: Precision, meta: dict[str, Any] | None = None, epochs: int = 1) -> None:
        super().__init__(model, None, None, train_loader, count_step, validate, output_dir, epochs, best_metric,
                         precision, meta=meta)

    @torch.no_grad()
    def run_step(self, batch: Any) -> tuple[float | None, dict[str, float]]:
        self.loss_step(self.model, batch)
        return None, {}

    def train_one_epoch(self) -> dict[str, float]:
        metrics = super().train_one_epoch()
        for buffer in self.module.buffers():
            distributed.all_reduce_(buffer)
        return metrics
