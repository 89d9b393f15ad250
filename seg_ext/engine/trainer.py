"""The training loop: ``run_step(batch)`` plus hooks, after detectron2's ``train_loop.py``.

The loop is a sequence of units of work (begin an epoch, a step, end the epoch, finish), and before each unit it
asks once whether a stop signal arrived (``engine.signals``). Everything around the steps is a hook
(``engine.hooks``) with its own state; checkpoint files and random states are ``engine.checkpoint``'s. Pass
``hooks=`` to choose others than :func:`~seg_ext.engine.hooks.default_hooks`, or subclass and override
``run_step`` (the counting baseline does: :class:`CountingTrainer`).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from seg_ext import distributed
from seg_ext.engine.checkpoint import CHECKPOINT_VERSION, atomic_save, load_checkpoint, random_state, set_random_state
from seg_ext.engine.hooks import History, Hook, Validation, default_hooks
from seg_ext.engine.loader import close_loader
from seg_ext.engine.precision import Precision
from seg_ext.engine.runtime import compile_model
from seg_ext.engine.signals import StopOnSignal
from seg_ext.errors import Preempted, SegExtError

logger = logging.getLogger(__name__)

LossStep = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
BEGIN_EPOCH, STEP, END_EPOCH, FINISH = "begin epoch", "step", "end epoch", "finish"


@dataclass
class TrainState:
    """How far the loop has come; saved in every checkpoint (the hooks save their own state beside it)."""

    epoch: int = 0  # epochs completed
    iteration: int = 0
    train_seconds: float = 0.0
    position: int = 0  # batches done of the epoch under way (a checkpoint written inside an epoch)
    partial: dict[str, Any] = field(default_factory=dict)  # that epoch's loss sums, batch count and seconds so far
    world_size: int = 1  # processes of the run that wrote the state
    batch_size: int = 0  # their batch size each (0: taken as this run's)


class Trainer:
    """Epochs of ``run_step`` with hooks around them, checkpoints and resume.

    Args:
        model: the network (already on ``precision.device``).
        optimizer, scheduler: the optimiser and a per-iteration ``LambdaLR`` (None for a trainer that does not
            descend a gradient, like :class:`CountingTrainer`).
        train_loader: batches for ``loss_step``.
        loss_step: ``loss_step(model, batch) -> (loss, parts)``; runs under autocast; ``parts`` maps names of
            loss components to floats for the log.
        validate: ``validate(model) -> metrics`` on the validation split (for the default hooks).
        output_dir: where ``last.pt``, ``best.pt`` and ``metrics.jsonl`` go.
        epochs: epochs to train in all (a resumed run continues up to this).
        best_metric: validation key that picks ``best.pt``; higher is better, except for keys naming a loss.
        meta: extra entries for every checkpoint (config, class names, ...).
        hooks: replaces :func:`~seg_ext.engine.hooks.default_hooks` when given.
        checkpoint_every: also write ``last.pt`` every this many iterations, inside epochs (0: only after each).
        compile: ``torch.compile`` mode of the training step (``off``, ``default``, ``reduce-overhead``,
            ``max-autotune-no-cudagraphs``). Only the step is compiled: its shapes are fixed; validation and the
            final evaluation run the model itself eagerly (images at their own sizes would recompile without end),
            and checkpoints hold the model's own keys.

    A loader whose ``sampler`` has ``set_epoch(epoch, start)`` (``engine.make_loader``'s training loaders) makes
    the run resumable inside an epoch: a stop signal and ``checkpoint_every`` save the position, and
    :meth:`resume` continues from that batch. Other loaders resume at epoch boundaries only.

    Under torchrun the model trains in DistributedDataParallel (``trainer.model``; the model itself is
    ``trainer.module``: validated, checkpointed, resumed); every step the processes agree on the loss (its mean
    over them) and, before every unit of work, on whether a signal asks them to stop; process 0 writes the files.
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
        compile: str = "off",
    ) -> None:
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        # several processes: gradients averaged by DistributedDataParallel (a counting trainer has none); the
        # compiled step wraps that (PyTorch compiles DDP's buckets apart)
        self.model = distributed.wrap_model(model, precision.device) if optimizer is not None else model
        self.compile = compile if optimizer is not None else "off"
        self.model = compile_model(self.model, self.compile)
        self.train_loader, self.loss_step = train_loader, loss_step
        self.output_dir = Path(output_dir)
        self.epochs = int(epochs)
        self.precision = precision
        self.scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.needs_scaler)
        self.grad_clip = grad_clip
        self.meta = dict(meta or {})
        self.state = TrainState()
        self.hooks = list(hooks) if hooks is not None else default_hooks(validate, best_metric, eval_every, checkpoint_every)
        self.stop = StopOnSignal()
        # the epoch under way: its number, its record (a line of metrics.jsonl), its loss sums and batch count
        self.epoch, self.record = 0, {}
        self.epoch_sums: dict[str, float] = {}
        self.epoch_count = 0
        self._epoch_start = 0.0

    # -- the loop

    def fit(self) -> dict[str, Any]:
        """Train up to ``epochs``; the hooks validate, log and checkpoint. Returns :meth:`progress`.

        Raises:
            Preempted: a stop signal arrived; ``last.pt`` holds the run (continue with :meth:`resume`).
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self.stop:
                self._call("before_train")
                for unit, batch in self._units():
                    signum = self.stop.agreed()  # the one place where the loop looks for a stop
                    if signum is not None:
                        raise self._preempted(signum)
                    if unit == BEGIN_EPOCH:
                        self._begin_epoch(batch)
                    elif unit == STEP:
                        self._step(batch)
                    elif unit == END_EPOCH:
                        self._end_epoch()
                self._call("after_train")
        finally:
            close_loader(self.train_loader)  # its persistent workers end with the training
        return self.progress()

    def _units(self) -> Iterator[tuple[str, Any]]:
        for epoch in range(self.state.epoch + 1, self.epochs + 1):
            yield BEGIN_EPOCH, epoch
            for batch in self._batches():
                yield STEP, batch
            yield END_EPOCH, None
        yield FINISH, None

    def _batches(self) -> Iterator[Any]:
        """The epoch's batches; they end early when the loader workers died with a stop signal (a scheduler's or
        torchrun's SIGTERM to the whole process group): the next unit's check then stops the run."""
        try:
            batches = iter(self.train_loader)  # (persistent workers start the epoch here: they may be gone already)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                yield batch
        except RuntimeError:
            if self.stop.received is None:
                raise

    def _begin_epoch(self, epoch: int) -> None:
        self.epoch, self.record = epoch, {}
        self._call("before_epoch")
        self.model.train()
        partial = self.state.partial if self.state.position else {}
        self.epoch_sums, self.epoch_count = dict(partial.get("sums", {})), int(partial.get("count", 0))
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # samples done over all processes
            sampler.set_epoch(epoch, start=self.state.position * self._batch_size() * distributed.world_size())
        self._epoch_start = time.perf_counter() - float(partial.get("seconds", 0.0))

    def _step(self, batch: Any) -> None:
        value, parts = self.run_step(batch)
        self.state.iteration += 1
        self.state.position += 1
        self.epoch_count += 1
        if value is not None:
            self.epoch_sums["loss"] = self.epoch_sums.get("loss", 0.0) + value
        for k, v in parts.items():
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + float(v)
        self._call("after_step")

    def end_of_pass(self) -> None:
        """Called once the epoch's batches are done, before the epoch's hooks (a counting trainer sums its counts)."""

    def _end_epoch(self) -> None:
        if self.epoch_count == 0:
            raise SegExtError("the training split gave no batch; expected at least one training image")
        self.end_of_pass()
        seconds = time.perf_counter() - self._epoch_start
        trained = (self.state.epoch, self.state.position, self.state.train_seconds)
        self.state.train_seconds += seconds
        self.record = {"epoch": self.epoch}
        if self.optimizer is not None:
            self.record["lr"] = self.optimizer.param_groups[0]["lr"]
        self.record["train_seconds"] = round(seconds, 3)
        self.record.update({f"train/{k}": v / self.epoch_count for k, v in self.epoch_sums.items()})
        self.state.epoch, self.state.position, self.state.partial = self.epoch, 0, {}
        try:
            self._call("after_epoch")
        except RuntimeError:
            if self.stop.received is None or not self.can_stop_inside_epoch() or distributed.is_distributed():
                raise
            # a group SIGTERM ended the validation loader's workers: the epoch counts as trained, not validated
            self.state.epoch, self.state.position, self.state.train_seconds = trained

    def _preempted(self, signum: int) -> Preempted:
        """Save the position (where the loader can resume inside an epoch) and say where the run stopped."""
        path = self.output_dir / "last.pt"
        if self.can_stop_inside_epoch():
            self.save_position()
        if self.state.position == 0 and self.state.epoch > 0:
            where = f"after epoch {self.state.epoch}"
        elif self.can_stop_inside_epoch():
            where = f"in epoch {self.epoch} after {self.state.position} batch(es)"
        else:
            where = f"in epoch {self.epoch} (this loader resumes at epoch boundaries: the epoch restarts)"
        return Preempted(f"stopped by {signal.Signals(signum).name} {where}; {path} holds the run: continue "
                         f"with --resume --output-dir {self.output_dir}", signum)

    def _call(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, name)(self, *args)

    def find_hook(self, kind: type) -> Any:
        """The first hook of class ``kind`` (or a subclass), or None."""
        return next((h for h in self.hooks if isinstance(h, kind)), None)

    # -- one step

    def run_step(self, batch: Any) -> tuple[float | None, dict[str, float]]:
        """Forward under autocast, the hooks' look at the loss, backward, optimiser and schedule step.

        Returns:
            The loss value and its named parts.
        """
        if self.compile == "reduce-overhead":  # CUDA graphs: this step's outputs replace the last step's
            torch.compiler.cudagraph_mark_step_begin()
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

    # -- progress, checkpoints and resume

    def progress(self) -> dict[str, Any]:
        """Where the run stands: epochs and iterations done, training seconds, the best validation value and its
        epoch, and every epoch's record (what ``metrics.json`` and the report say of the training)."""
        validation, history = self.find_hook(Validation), self.find_hook(History)
        return {
            "epoch": self.state.epoch, "iteration": self.state.iteration, "train_seconds": self.state.train_seconds,
            "best_value": validation.best_value if validation else None,
            "best_epoch": validation.best_epoch if validation else None,
            "history": list(history.records) if history else [],
        }

    def can_stop_inside_epoch(self) -> bool:
        """Whether the loader can start an epoch at a given batch (see the class docstring)."""
        return hasattr(getattr(self.train_loader, "sampler", None), "set_epoch")

    def checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`resume` needs, plus ``meta``: plain data and tensors only. With several processes
        every one calls it (their random states are gathered: ``rng`` is process 0's, ``rng_ranks`` all)."""
        rng = random_state(self._loader_generator())
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
            "hooks": {h.key: h.state_dict() for h in self.hooks if h.state_dict()},
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

    def save_position(self) -> Path:
        """Write ``last.pt`` with the position inside the epoch under way."""
        self.state.partial = {"sums": dict(self.epoch_sums), "count": self.epoch_count,
                              "seconds": time.perf_counter() - self._epoch_start}
        return self.save(self.checkpoint(), "last.pt", keep_previous=True)

    def resume(self, path: str | Path, ckpt: dict[str, Any] | None = None) -> None:
        """Restore model, optimiser, schedule, scaler, progress, the hooks' state and the random state from
        ``path`` (or from ``ckpt``, that file already read)."""
        ckpt = ckpt if ckpt is not None else load_checkpoint(path)
        self.module.load_state_dict(ckpt["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["state"])
        hooks = ckpt.get("hooks", {})
        for hook in self.hooks:
            if hook.key in hooks:
                hook.load_state_dict(hooks[hook.key])
        self._convert_position(path)
        rng = ckpt.get("rng", {})
        world = distributed.world_size()
        if world > 1:  # each process its own random state (when the same number of processes saved them)
            ranks = ckpt.get("rng_ranks") or []
            rng = ranks[distributed.rank()] if len(ranks) == world else {}
        if rng:
            set_random_state(rng, self._loader_generator())
        logger.info("resumed from %s after epoch %d", path, self.state.epoch)

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

    def end_of_pass(self) -> None:
        for buffer in self.module.buffers():
            distributed.all_reduce_(buffer)
