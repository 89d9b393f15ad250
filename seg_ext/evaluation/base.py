"""The evaluator interface and the inference loop that feeds evaluators.

Evaluators follow detectron2's shape, without its global catalogs: ``reset()``, ``process(outputs, targets)``
once per batch, ``evaluate()`` returning a flat dict of numbers. Ground truth comes from the batch.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


class Evaluator:
    """Base class: accumulate over batches with ``process``, summarise with ``evaluate``."""

    def reset(self) -> None:
        """Forget everything processed so far."""
        raise NotImplementedError

    def process(self, outputs: Any, targets: Any) -> None:
        """Accumulate one batch of model outputs and their ground truth."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """The metrics of everything processed since the last ``reset``."""
        raise NotImplementedError


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


def run_inference(
    model: nn.Module,
    loader: Iterable,
    evaluators: Evaluator | Sequence[Evaluator],
    forward: Callable[[nn.Module, Any], tuple[Any, Any]],
    desc: str = "eval",
) -> dict[str, float]:
    """Run ``model`` over ``loader`` in eval mode without gradients, feeding every evaluator.

    Args:
        forward: ``forward(model, batch) -> (outputs, targets)``; it moves the batch to the device.

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
                outputs, targets = forward(model, batch)
                for ev in evaluators:
                    ev.process(outputs, targets)
                images += _batch_len(targets)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    results: dict[str, float] = {}
    for ev in evaluators:
        metrics = ev.evaluate()
        clash = sorted(set(metrics) & set(results))
        if clash:
            raise ValueError(f"evaluators report the same metric keys {clash}; each key must come from one evaluator")
        results.update(metrics)
    results["time/s_per_image"] = elapsed / max(images, 1)
    logger.debug("%s: %d images in %.1fs", desc, images, elapsed)
    return results


def _batch_len(targets: Any) -> int:
    if isinstance(targets, torch.Tensor):
        return int(targets.shape[0])
    try:
        return len(targets)
    except TypeError:
        return 1


def _progress(iterable: Iterable, desc: str) -> Iterable:
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=None, dynamic_ncols=True)
