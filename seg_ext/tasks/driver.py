"""The run driver: train, evaluate a checkpoint, or run a method's oracle, the same steps in the same order for
every method. The run is built by :func:`~seg_ext.tasks.run.build_run` (seeds and device, the method, its data,
the run folder's files, the model, the loss, the evaluation loaders); the method does the rest (its trainer,
evaluation, overlays and report). After detectron2's ``DefaultTrainer`` (``build_model``,
``build_train_loader``, ``build_evaluator``, ``test``), without its global registries.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg_ext import distributed
from seg_ext.config import compile_mode
from seg_ext.engine import TensorBoard, Tracking, load_checkpoint, machine, resume_checkpoint
from seg_ext.engine.checkpoint import checkpoint_progress
from seg_ext.errors import ConfigError
from seg_ext.io import write_json
from seg_ext.methods import method_class
from seg_ext.methods.base import report_split
from seg_ext.methods.checkpoints import check_classes, check_same_network, check_weights, checked, load_weights, open_checkpoint
from seg_ext.tasks.run import EVAL_SPLITS, Run, RunLock, build_run, join_processes, prepare_output_dir
from seg_ext.tasks.tracking import run_finished, run_placed, run_tracking

logger = logging.getLogger(__name__)


def train(cfg: dict[str, Any], output_dir: Path, resume: bool = False, command: str = "",
          init_from: Path | None = None) -> dict[str, Any]:
    """Train the configured method (continuing ``last.pt`` with ``resume``; from the weights of the checkpoint
    ``init_from``, with a new optimiser and schedule), evaluate its best checkpoint on val and test, write
    ``metrics.json`` and the report; with ``train.tracking``, log all of it to MLflow (``tasks.tracking``).

    Returns:
        The content of ``metrics.json``.
    """
    join_processes(cfg)
    with RunLock(Path(output_dir)):  # one run writes into a folder at a time
        output_dir = prepare_output_dir(Path(output_dir), resume)
        with run_tracking(cfg, output_dir, command, resume) as tracker, build_run(cfg, output_dir, command) as run:
            method, model = run.method, run.model
            meta = {"config": cfg, "class_names": run.data.class_names, "task": method.task, **run.data.checkpoint_facts}
            extra = {}
            if init_from is not None and not resume:  # a resume continues its own weights
                ckpt = open_checkpoint(init_from, method.task)
                check_same_network(ckpt, cfg, "this run's config")
                check_classes(ckpt, run.data.class_names)
                load_weights(model, ckpt.content["model"], ckpt.path)
                extra["init_from"] = meta["init_from"] = str(ckpt.path)
            start = time.perf_counter()
            trainer = method.trainer(run, model, run.loss, meta)
            if cfg["train"]["tensorboard"]:
                trainer.hooks.append(TensorBoard(output_dir, lambda m: overlay_picture(run, m, "val")))
            if tracker is not None:
                run_placed(tracker, run.device, run.precision.describe(), distributed.world_size())
                trainer.hooks.append(Tracking(tracker))
            if resume:
                with distributed.main_first():  # process 0 moves a damaged last.pt aside before the others look
                    path, content = resume_checkpoint(output_dir, continuing=distributed.is_main())  # or last.prev.pt
                ckpt = checked(path, content, method.task)
                check_same_network(ckpt, cfg, "the resumed config", resume=True)
                check_classes(ckpt, run.data.class_names)
                check_weights(model, content["model"], path)
                trainer.resume(path, content)
            progress = trainer.fit()
            distributed.barrier()  # process 0 has written the last checkpoints
            best = output_dir / ("best.pt" if (output_dir / "best.pt").is_file() else "last.pt")
            load_weights(model, load_checkpoint(best)["model"], best)
            logger.info("training took %.1fs; evaluating %s (%s)", time.perf_counter() - start, best.name,
                        f"epoch {progress['best_epoch']}" if trainer.epochs else "the initial weights: train.epochs is 0")
            summary = _finish(run, progress, trainer.epochs, **extra)
            run_finished(tracker, output_dir, summary, best)
            return summary


def evaluate(cfg: dict[str, Any], checkpoint: Path, output_dir: Path, command: str = "") -> dict[str, Any]:
    """Evaluate ``checkpoint`` on val and test of the configured data; write metrics.json and the report."""
    join_processes(cfg)
    with RunLock(Path(output_dir)):
        ckpt = open_checkpoint(checkpoint, method_class(cfg["method"]).task)
        check_same_network(ckpt, cfg, "the config")
        with run_tracking(cfg, Path(output_dir), command, kind="evaluate") as tracker, \
                build_run(cfg, Path(output_dir), command) as run:
            check_classes(ckpt, run.data.class_names)
            load_weights(run.model, ckpt.content["model"], ckpt.path)
            progress = checkpoint_progress(ckpt.content)
            run_placed(tracker, run.device, run.precision.describe(), distributed.world_size())
            summary = _finish(run, progress, progress["epoch"], checkpoint=str(checkpoint))
            run_finished(tracker, Path(output_dir), summary, ckpt.path)  # (a model folder's model is not exported again)
            return summary


def oracle(cfg: dict[str, Any], output_dir: Path, command: str = "") -> dict[str, Any]:
    """Post-process outputs made from the ground truth (``Method.oracle_outputs``) and score them with the
    method's evaluators on val and test: what the method reaches with a perfect network."""
    method = method_class(cfg["method"])
    if not method.supports_oracle:
        from seg_ext.methods import METHODS

        having = [name for name, cls in METHODS.items() if cls.supports_oracle]
        raise ConfigError(f"--oracle is for methods with an oracle ({', '.join(having) or 'none'}); method "
                          f"{method.name} has none")
    join_processes(cfg)
    if distributed.is_distributed():
        raise ConfigError("the oracle trains nothing and runs in one process; start it without torchrun")
    with RunLock(Path(output_dir)):
        run = build_run(cfg, Path(output_dir), command, model=False)
        method = run.method
        summary: dict[str, Any] = {"method": f"{method.name} oracle", **method.oracle_facts()}
        for split in EVAL_SPLITS:
            dataset = run.datasets.get(split)
            if dataset is None:
                continue
            evaluators = method.evaluators(dataset)
            for i in range(len(dataset)):
                _, target = dataset[i]
                output = method.oracle_outputs(target)
                for ev in evaluators:
                    ev.process([output], [target])
            metrics: dict[str, float] = {}
            for ev in evaluators:
                metrics.update(ev.evaluate())
            for ev in evaluators:
                ev.save(run.output_dir, split, metrics)
            summary[split] = metrics
            logger.info("oracle %s: %s", split, "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k in _headline(method)))
        summary["splits"] = run.data.split_sizes
        write_json(summary, run.output_dir / "metrics.json")
        method.write_oracle_report(run.output_dir, summary, run.data.description, command)
        return summary


def _headline(method: Any) -> list[str]:
    from seg_ext.evaluation import evaluator_classes

    return [k for cls in evaluator_classes(method.task) for k in cls.summary]


def overlay_picture(run: Run, model: nn.Module, split: str):
    """The method's overlays of ``split`` as an HxWx3 uint8 image (None when there is nothing to draw)."""
    run.method.draw_overlays(run, model, split)
    path = run.output_dir / f"overlays_{split}.png"
    if not path.is_file():
        return None
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _finish(run: Run, progress: dict[str, Any], epochs: Any, **extra: Any) -> dict[str, Any]:
    """Evaluate on val and test (every process its share), draw overlays, write metrics.json and the report
    (process 0); return the summary."""
    method, model = run.method, run.model
    summary: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        if split not in run.loaders:
            logger.warning("the %s split is empty or missing; not evaluated", split)
            continue
        summary[split] = method.evaluate(run, model, split, final=True)
    summary.update(extra)
    summary.update(method.facts())
    summary.update(run_facts(run, model, progress, epochs))
    if distributed.is_main():
        shown = report_split(run)
        method.draw_overlays(run, model, shown)
        method.draw_worst(run, model, shown, summary.get(shown, {}))
        write_json(summary, run.output_dir / "metrics.json")
        method.write_report(run, summary, progress.get("history", []))
    return summary


def run_facts(run: Run, model: nn.Module, progress: dict[str, Any], epochs: Any) -> dict[str, Any]:
    """What metrics.json says about the run besides the metrics: training progress (``Trainer.progress`` or a
    checkpoint's), the model and where it ran."""
    return {
        "best_epoch": progress.get("best_epoch", progress.get("epoch")),
        "epochs": epochs,
        "best_metric": run.cfg["train"]["best_metric"],
        "train_seconds": round(float(progress.get("train_seconds") or 0.0), 1),
        "model": run.cfg["model"]["name"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(run.precision.device),
        "machine": machine(host=False),  # the CPU model and cores, and the GPU (not the host's name: files travel)
        "threads": torch.get_num_threads(),  # torch's CPU threads (train.threads, OMP_NUM_THREADS or all cores)
        "precision": run.precision.describe(),
        "compile": compile_mode(run.cfg["train"]["compile"]),
        "deterministic": bool(run.cfg["train"]["deterministic"]),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if run.device.type == "cuda" else False,
        "num_workers": run.num_workers,
        "world_size": distributed.world_size(),
        "global_batch": run.global_batch,
        "splits": run.data.split_sizes,
    }
