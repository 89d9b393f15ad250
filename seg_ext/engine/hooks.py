"""What happens around the training steps, after detectron2's ``hooks.py``: each hook is called at fixed points
of the loop and keeps its own state, which checkpoints save and resumes restore (``state_dict`` /
``load_state_dict``). Hooks read the trainer; they do not change its progress.

The default set (:func:`default_hooks`), in the order they run: :class:`ProgressBar`, :class:`NonFiniteStop`,
:class:`Validation` (the best value and epoch), :class:`History` (``metrics.jsonl``), :class:`Checkpoints`
(``last.pt``, ``best.pt``), :class:`EpochLog`; :class:`TensorBoard` and :class:`Tracking` on request.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from torch import nn

from seg_ext import distributed
from seg_ext.errors import ConfigError, TrainingStopped
from seg_ext.io import write_jsonl

if TYPE_CHECKING:
    from seg_ext.engine.trainer import Trainer

logger = logging.getLogger(__name__)


class Hook:
    """Something done around the steps. Every method receives the trainer; the default does nothing.

    ``after_loss`` runs before the backward pass with the step's loss value; during ``after_epoch`` the
    trainer's ``record`` (the epoch's line of ``metrics.jsonl``) may be read and extended. A hook with state
    returns it from :meth:`state_dict` (plain data: it goes into checkpoints) under its :attr:`key`.
    """

    @property
    def key(self) -> str:
        """Where the hook's state is kept in a checkpoint's ``hooks``."""
        return type(self).__name__

    def before_train(self, trainer: "Trainer") -> None: ...

    def before_epoch(self, trainer: "Trainer") -> None: ...

    def after_loss(self, trainer: "Trainer", value: float) -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def after_epoch(self, trainer: "Trainer") -> None: ...

    def after_train(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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


def lower_is_better(metric: str) -> bool:
    """Whether a validation metric is better lower (one naming a loss) rather than higher."""
    return "loss" in metric


class Validation(Hook):
    """Validate every ``every`` epochs and after the last; keep the best value of ``metric`` and its epoch
    (higher is better, except for metrics naming a loss). :attr:`improved`: this epoch's validation set a new best.

    Args:
        validate: ``validate(model) -> metrics`` on the validation split.
        metric: the key that picks ``best.pt``.
        every: validate every this many epochs (and always after the last).
    """

    def __init__(self, validate: Callable[[nn.Module], dict[str, float]], metric: str, every: int = 1) -> None:
        self.validate, self.metric, self.every = validate, metric, max(int(every), 1)
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.improved = False

    def before_epoch(self, trainer: "Trainer") -> None:
        self.improved = False

    def after_epoch(self, trainer: "Trainer") -> None:
        epoch = trainer.epoch
        if epoch % self.every and epoch != trainer.epochs:
            return
        start = time.perf_counter()
        val = self.validate(trainer.module)  # the same numbers on every process (the evaluators combine them)
        trainer.record["val_seconds"] = round(time.perf_counter() - start, 3)
        trainer.record.update({f"val/{k}": v for k, v in val.items()})
        if self.metric not in val:
            raise ConfigError(
                f"config key 'train.best_metric' is {self.metric!r}, which validation does not report; "
                f"expected one of: {', '.join(k for k in val if not k.startswith('time/'))}"
            )
        value = float(val[self.metric])
        minimize = lower_is_better(self.metric)
        if math.isfinite(value) and (self.best_value is None or (value < self.best_value if minimize else value > self.best_value)):
            self.improved = True
            self.best_value, self.best_epoch = value, epoch

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_epoch = state.get("best_value"), state.get("best_epoch")


class History(Hook):
    """Keep every epoch's record and rewrite ``metrics.jsonl`` (one line per epoch)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def after_epoch(self, trainer: "Trainer") -> None:
        self.records.append(trainer.record)
        if distributed.is_main():
            write_jsonl(self.records, trainer.output_dir / "metrics.jsonl")

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = list(state.get("records", []))


def _improved(trainer: "Trainer") -> bool:
    validation = trainer.find_hook(Validation)
    return validation is not None and validation.improved


class Checkpoints(Hook):
    """``last.pt`` after every epoch (the one before kept as ``last.prev.pt``) and, with ``every``, every that
    many iterations inside epochs (with the position); ``best.pt`` when validation improved; with no epoch to
    train (``train.epochs: 0``), both hold the initial weights. All atomic."""

    def __init__(self, every: int = 0) -> None:
        self.every = max(int(every), 0)

    def after_step(self, trainer: "Trainer") -> None:
        if self.every and trainer.state.iteration % self.every == 0 and trainer.can_stop_inside_epoch():
            trainer.save_position()

    def after_epoch(self, trainer: "Trainer") -> None:
        ckpt = trainer.checkpoint()
        trainer.save(ckpt, "last.pt", keep_previous=True)  # last.prev.pt: the one before
        if _improved(trainer):
            trainer.save(ckpt, "best.pt")

    def after_train(self, trainer: "Trainer") -> None:
        if trainer.state.epoch == 0:  # train.epochs 0: the initial weights, evaluated and kept as the run's model
            ckpt = trainer.checkpoint()
            trainer.save(ckpt, "last.pt")
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
        validation = trainer.find_hook(Validation)
        metric = validation.metric if validation is not None else None
        if metric is not None and f"val/{metric}" in record and metric != "loss":
            parts.append(f"val {metric} {record[f'val/{metric}']:.2f}")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.2e}")
        parts.append(f"{record['train_seconds'] + record.get('val_seconds', 0):.1f}s")
        logger.info("  ".join(parts) + ("  (best)" if _improved(trainer) else ""))


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


class Tracking(Hook):
    """Each epoch's record to an experiment tracker (``seg_ext.tasks.tracking.Tracker``: ``log_epoch(record)``,
    ``logged_through()``), after the epoch's checkpoint is written. A resumed run first sends the epochs of its
    history that the tracker does not have (those finished after its last call, before the run was stopped)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def before_train(self, trainer: "Trainer") -> None:
        history = trainer.find_hook(History)
        if history is None or not history.records:
            return
        seen = self.tracker.logged_through()
        for record in history.records:
            if int(record["epoch"]) > seen:
                self.tracker.log_epoch(record)

    def after_epoch(self, trainer: "Trainer") -> None:
        self.tracker.log_epoch(trainer.record)


def default_hooks(validate: Callable[[nn.Module], dict[str, float]] | None, best_metric: str, eval_every: int = 1,
                  checkpoint_every: int = 0) -> list[Hook]:
    """The usual hooks, in the order they run: progress, non-finite stop, validation (when ``validate`` is
    given), history, checkpoints, log."""
    validation = [Validation(validate, best_metric, eval_every)] if validate is not None else []
    return [ProgressBar(), NonFiniteStop(), *validation, History(), Checkpoints(checkpoint_every), EpochLog()]
