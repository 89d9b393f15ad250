"""The evaluator interface and the inference loop that feeds evaluators.

Evaluators follow detectron2's shape, without its global catalogs: ``reset()``, ``process(outputs, targets)``
once per batch, ``evaluate()`` returning a flat dict of numbers. Ground truth comes from the batch.

With several processes (torchrun) each evaluates its share of the split; ``combine()`` then brings every
process's state to process 0 (sums of counts are exact; detections are gathered), :func:`run_inference` computes
the metrics there once and hands the same numbers to every process.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
from torch import nn

from seg_ext import distributed

logger = logging.getLogger(__name__)


class Evaluator:
    """Base class: accumulate over batches with ``process``, summarise with ``evaluate``.

    What a registered evaluator (``seg_ext.evaluation.EVALUATORS``) also declares, so that adding a metric is its
    module and one registry line: the :attr:`task` whose runs it scores; :attr:`summary`, its headline keys (the
    log and the tools' closing lines); :meth:`comparison_keys` (the columns ``tools/compare.py`` shows);
    :meth:`report` (its sections of ``report.md``); :meth:`save` (its files after a final evaluation). It is built
    by :meth:`from_context` from what the method knows of a split (``num_classes``, ``ignore_index``,
    ``class_names``; ``coco_gt``, ``category_of``, ``mask_threshold``, ``backend``), each evaluator taking the
    arguments of its constructor.

    Semantic evaluators take a batch's logits in :meth:`process` and, in the final evaluation at each image's
    size, one image's class probabilities in ``process_probs(probs, target)``; instance evaluators take lists of
    per-image detections and targets.
    """

    task: ClassVar[str] = ""
    summary: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_context(cls, **context: Any) -> "Evaluator":
        """An evaluator built from the context arguments its constructor names."""
        params = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in context.items() if k in params})

    @classmethod
    def comparison_keys(cls, metrics: dict[str, Any]) -> list[str]:
        """The keys of ``metrics`` (a split's) that a comparison of runs shows for this evaluator."""
        return []

    @classmethod
    def report(cls, report: Any, summary: dict[str, Any]) -> None:
        """Add this evaluator's sections to a run's report (``summary``: metrics.json's content)."""

    def save(self, output_dir: Path, split: str, metrics: dict[str, float]) -> None:
        """Write this evaluator's files of a final evaluation of ``split`` (process 0, after ``evaluate``)."""

    def reset(self) -> None:
        """Forget everything processed so far."""
        raise NotImplementedError

    def process(self, outputs: Any, targets: Any) -> None:
        """Accumulate one batch of model outputs and their ground truth."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """The metrics of everything processed since the last ``reset``."""
        raise NotImplementedError

    def combine(self) -> None:
        """With several processes: bring every process's state to process 0, which then evaluates the whole
        split. Called by every process (collectives)."""
        raise NotImplementedError(f"{type(self).__name__} cannot combine the states of several processes")


class MeanMetric(Evaluator):
    """Mean of a per-batch value (a loss, say) weighted by batch size.

    Args:
        name: key of the result.
        fn: ``fn(outputs, targets) -> (value, batch_size)``.
    """

    def __init__(self, name: str, fn: Callable[[Any, Any], tuple[float, int]]) -> None:
        self.name, self.fn = name, fn
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def process(self, outputs: Any, targets: Any) -> None:
        value, n = self.fn(outputs, targets)
        self.total += float(value) * n
        self.count += n

    def evaluate(self) -> dict[str, float]:
        return {self.name: self.total / max(self.count, 1)}

    def combine(self) -> None:
        self.total, count = distributed.all_reduce([self.total, float(self.count)])
        self.count = int(count)


def run_inference(
    model: nn.Module,
    loader: Iterable,
    evaluators: Evaluator | Sequence[Evaluator],
    forward: Callable[[nn.Module, Any], tuple[Any, Any]],
    desc: str = "eval",
    device: torch.device | None = None,
) -> dict[str, float]:
    """Run ``model`` over ``loader`` in eval mode without gradients, feeding every evaluator.

    Args:
        forward: ``forward(model, batch) -> (outputs, targets)``; it moves the batch to the device.
        device: the one device every evaluator gets its tensors on (the method says which: the run's for semantic
            evaluators, the CPU for instance ones): each tensor in ``outputs`` and ``targets`` (inside dicts, lists
            and tuples too) is moved there before ``process``, so an evaluator
            never meets CUDA predictions beside CPU ground truth (docs/extending.md). None: as ``forward`` gives.

    With several processes, ``loader`` holds this process's share; the evaluators' states are combined on
    process 0, which computes the results, and every process returns process 0's.

    Returns:
        The evaluators' merged results, plus ``time/s_per_image`` (inference and evaluation time per image).

    Raises:
        ValueError: two evaluators report the same key (one would silently overwrite the other).
    """
    if isinstance(evaluators, Evaluator):
        evaluators = [evaluators]
    for ev in evaluators:
        ev.reset()
    was_training = model.training
    model.eval()
    start, images = time.perf_counter(), 0
    try:
        with torch.no_grad():
            for batch in _progress(loader, desc):
                outputs, targets = to_device(forward(model, batch), device)
                for ev in evaluators:
                    ev.process(outputs, targets)
                images += _batch_len(targets)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    if distributed.is_distributed():
        for ev in evaluators:
            ev.combine()
    results: dict[str, float] = {}
    if distributed.is_main():
        for ev in evaluators:
            metrics = ev.evaluate()
            clash = sorted(set(metrics) & set(results))
            if clash:
                raise ValueError(f"evaluators report the same metric keys {clash}; each key must come from one evaluator")
            results.update(metrics)
        results["time/s_per_image"] = elapsed / max(images, 1)
    logger.debug("%s: %d images in %.1fs", desc, images, elapsed)
    return distributed.broadcast(results)


def to_device(value: Any, device: torch.device | None) -> Any:
    """``value`` with every tensor in it (inside dicts, lists and tuples) on ``device`` (None: unchanged): the
    evaluation loop's boundary, and how a training step moves its targets."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        # (non-blocking only towards a GPU: a non-blocking copy to the host may be read before it has arrived)
        return value.to(device, non_blocking=device.type == "cuda")
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def _batch_len(targets: Any) -> int:
    if isinstance(targets, dict) and targets:  # a dict of per-image lists
        return _batch_len(next(iter(targets.values())))
    if isinstance(targets, torch.Tensor):
        return int(targets.shape[0])
    try:
        return len(targets)
    except TypeError:
        return 1


def _progress(iterable: Iterable, desc: str) -> Iterable:
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=None if distributed.is_main() else True, dynamic_ncols=True)
