"""One run driver over a small Task protocol: train, or evaluate a checkpoint, for any task.

A task says how to build its datasets and model, what a training step's loss is, how to evaluate a split and
what its report shows (:class:`Task`); the driver runs the same steps in the same order for every task
(:func:`train`, :func:`evaluate`): the run folder, seeds and device, datasets, model and precision, evaluation
loaders, the trainer and its hooks, the best checkpoint evaluated on val and test, ``metrics.json`` and
``report.md``. After detectron2's ``DefaultTrainer`` (``build_model``, ``build_train_loader``,
``build_evaluator``, ``test``), without its global registries.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from seg_ext import distributed
from seg_ext.config import save_config
from seg_ext.engine import TensorBoard, Trainer, load_checkpoint, resume_checkpoint
from seg_ext.errors import SegExtError
from seg_ext.io import write_json
from seg_ext.tasks.run import Run, RunLock, join_processes, prepare_output_dir

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test")


class Task:
    """What differs between tasks. One task object serves one run; :func:`train` and :func:`evaluate` call:

    ``build_datasets(run)`` (fills ``run.datasets``), ``save_files(run)``, ``build_model(run)``, ``prepare(run)``
    (after the model is placed: class weights, ...), ``build_trainer(run, model, meta)``, ``loss_step(model,
    batch)``, ``evaluate(run, model, split, final)``, ``draw_overlays(run, model, split)``,
    ``write_report(run, summary, history)``; and ``check_checkpoint(ckpt, path)`` before evaluating one.
    """

    name = ""  # the checkpoint's "task"
    collate: Callable | None = None  # the loaders' collate_fn (None: PyTorch's default)

    def build_datasets(self, run: Run) -> None:
        raise NotImplementedError

    def split_sizes(self, run: Run) -> dict[str, int]:
        """Images per split, for metrics.json."""
        return {s: len(d) for s, d in run.datasets.items() if d is not None}

    def class_names(self, run: Run) -> list[str]:
        return run.datasets["train"].class_names

    def save_files(self, run: Run) -> None:
        """Files of the run folder besides config.yaml (splits, ...)."""

    def build_model(self, run: Run) -> nn.Module:
        raise NotImplementedError

    def prepare(self, run: Run) -> None:
        """What the loss and evaluation need once datasets and the placed model exist."""

    def loss_step(self, model: nn.Module, batch: Any):
        raise NotImplementedError

    def build_trainer(self, run: Run, model: nn.Module, meta: dict[str, Any]) -> Trainer:
        """A gradient-descent trainer with the default hooks, validating on val."""
        train_loader = run.loader(run.datasets["train"], train=True, collate_fn=self.collate)
        optimizer = run.optimizer(model)
        scheduler = run.scheduler(optimizer, len(train_loader))
        t = run.cfg["train"]
        return Trainer(
            model, optimizer, scheduler, train_loader, self.loss_step, lambda m: self.evaluate(run, m, "val"),
            run.output_dir, epochs=t["epochs"], best_metric=t["best_metric"], precision=run.precision,
            grad_clip=t["grad_clip"], eval_every=t["eval_every"], meta=meta, checkpoint_every=t["checkpoint_every"],
        )

    def evaluate(self, run: Run, model: nn.Module, split: str, final: bool = False) -> dict[str, float]:
        """The metrics of ``split``; ``final``: also write the split's files (plots, results) and log them."""
        raise NotImplementedError

    def draw_overlays(self, run: Run, model: nn.Module, split: str) -> None:
        """Predictions drawn over a few images of ``split`` (``overlays_<split>.png``)."""

    def overlay_picture(self, run: Run, model: nn.Module, split: str):
        """:meth:`draw_overlays` of ``split`` as an HxWx3 uint8 image (None when there is nothing to draw)."""
        self.draw_overlays(run, model, split)
        path = run.output_dir / f"overlays_{split}.png"
        if not path.is_file():
            return None
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    def checkpoint_facts(self, run: Run) -> dict[str, Any]:
        """What checkpoints hold besides the config, class names and task (what prediction needs)."""
        return {}

    def facts(self, run: Run) -> dict[str, Any]:
        """Task-specific entries of metrics.json."""
        return {}

    def check_checkpoint(self, ckpt: dict[str, Any], path: Path, run: Run) -> None:
        """Refuse a checkpoint of another task (a checkpoint without a task name is taken as semantic)."""
        task = ckpt.get("task", "semantic")
        if task != self.name:
            raise SegExtError(f"checkpoint {path} is from a {task} run; expected a {self.name} one")

    def write_report(self, run: Run, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
        raise NotImplementedError


def _start(task: Task, cfg: dict[str, Any], output_dir: Path, command: str) -> Run:
    run = Run.start(cfg, output_dir, command)
    with distributed.main_first():  # process 0 generates or converts data files before the others read them
        task.build_datasets(run)
    return run


def _model_and_loaders(task: Task, run: Run) -> nn.Module:
    if distributed.is_main():
        save_config(run.cfg, run.output_dir / "config.yaml")
        task.save_files(run)
    model = run.place(task.build_model(run))
    logger.info("model %s: %s parameters, device %s", run.cfg["model"]["name"],
                f"{sum(p.numel() for p in model.parameters()):,}", run.device)
    run.loaders = {s: run.loader(run.datasets[s], collate_fn=task.collate)
                   for s in EVAL_SPLITS if run.datasets.get(s) is not None and len(run.datasets[s])}
    task.prepare(run)
    return model


def train(task: Task, cfg: dict[str, Any], output_dir: Path, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train the configured model (continuing ``last.pt`` with ``resume``), evaluate its best checkpoint on val
    and test, write ``metrics.json`` and the report.

    Returns:
        The content of ``metrics.json``.
    """
    join_processes(cfg)
    with RunLock(Path(output_dir)):  # one run writes into a folder at a time
        return _train(task, cfg, prepare_output_dir(Path(output_dir), resume), resume, command)


def _train(task: Task, cfg: dict[str, Any], output_dir: Path, resume: bool, command: str) -> dict[str, Any]:
    run = _start(task, cfg, output_dir, command)
    model = _model_and_loaders(task, run)
    meta = {"config": cfg, "class_names": task.class_names(run), "task": task.name, **task.checkpoint_facts(run)}
    start = time.perf_counter()
    trainer = task.build_trainer(run, model, meta)
    if cfg["train"]["tensorboard"]:
        trainer.hooks.append(TensorBoard(output_dir, lambda m: task.overlay_picture(run, m, "val")))
    if resume:
        with distributed.main_first():  # process 0 moves a damaged last.pt aside before the others look
            trainer.resume(*resume_checkpoint(output_dir, continuing=distributed.is_main()))  # or last.prev.pt
    state = vars(trainer.fit())
    distributed.barrier()  # process 0 has written the last checkpoints
    best = output_dir / ("best.pt" if (output_dir / "best.pt").is_file() else "last.pt")
    model.load_state_dict(load_checkpoint(best)["model"])
    logger.info("training took %.1fs; evaluating %s (epoch %s)", time.perf_counter() - start, best.name, state["best_epoch"])
    return _finish(task, run, model, state, trainer.epochs)


def evaluate(task: Task, cfg: dict[str, Any], checkpoint: Path, output_dir: Path, command: str = "") -> dict[str, Any]:
    """Evaluate ``checkpoint`` on val and test of the configured data; write metrics.json and the report."""
    join_processes(cfg)
    with RunLock(Path(output_dir)):
        return _evaluate(task, cfg, checkpoint, Path(output_dir), command)


def _evaluate(task: Task, cfg: dict[str, Any], checkpoint: Path, output_dir: Path, command: str) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint)
    run = _start(task, cfg, output_dir, command)
    task.check_checkpoint(ckpt, Path(checkpoint), run)
    model = _model_and_loaders(task, run)
    model.load_state_dict(ckpt["model"])
    state = ckpt.get("state", {})
    return _finish(task, run, model, state, state.get("epoch"), checkpoint=str(checkpoint))


def _finish(task: Task, run: Run, model: nn.Module, state: dict[str, Any], epochs: Any, **extra: Any) -> dict[str, Any]:
    """Evaluate on val and test (every process its share), draw overlays, write metrics.json and the report
    (process 0); return the summary."""
    summary: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        if split not in run.loaders:
            logger.warning("the %s split is empty or missing; not evaluated", split)
            continue
        summary[split] = task.evaluate(run, model, split, final=True)
    summary.update(extra)
    summary.update(task.facts(run))
    summary.update(run_facts(run, model, task.split_sizes(run), state, epochs))
    if distributed.is_main():
        task.draw_overlays(run, model, "test" if "test" in summary else "val")
        write_json(summary, run.output_dir / "metrics.json")
        task.write_report(run, summary, state.get("history", []))
    return summary


def run_facts(run: Run, model: nn.Module, splits: dict[str, int], state: dict[str, Any], epochs: Any) -> dict[str, Any]:
    """What metrics.json says about the run besides the metrics: training progress (from the engine's
    ``TrainState`` or a checkpoint's ``state``), the model and where it ran."""
    return {
        "best_epoch": state.get("best_epoch", state.get("epoch")),
        "epochs": epochs,
        "best_metric": run.cfg["train"]["best_metric"],
        "train_seconds": round(float(state.get("train_seconds", 0.0)), 1),
        "model": run.cfg["model"]["name"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(run.precision.device),
        "precision": run.precision.describe(),
        "world_size": distributed.world_size(),
        "global_batch": run.global_batch,
        "splits": splits,
    }
