"""Evaluators (detectron2-style ``reset`` / ``process`` / ``evaluate``), their registry and the inference loop.

:data:`EVALUATORS` is the one table of metrics: every run of a task is scored by all evaluators registered for
it (``Evaluator.task``), each built from what the method knows of the split (``Evaluator.from_context``). A new
metric is an evaluator module and one line here (or :func:`register_evaluator`); its report section, its
headline keys and its comparison columns come with its class.
"""

from typing import Any

from seg_ext.evaluation.base import Evaluator, MeanMetric, run_inference
from seg_ext.evaluation.coco import COCOEvaluator
from seg_ext.evaluation.semantic import SemanticLoss, SemSegEvaluator

EVALUATORS: dict[str, type[Evaluator]] = {
    "semseg": SemSegEvaluator,
    "coco": COCOEvaluator,
}


def register_evaluator(name: str, cls: type[Evaluator]) -> type[Evaluator]:
    """Add an evaluator to the table (a plugin's way in)."""
    if not cls.task:
        raise ValueError(f"{cls.__name__} must set task")
    EVALUATORS[name] = cls
    return cls


def evaluator_classes(task: str) -> list[type[Evaluator]]:
    """The registered evaluators of ``task``, in the table's order."""
    from seg_ext.plugins import load_plugins

    load_plugins()
    return [cls for cls in EVALUATORS.values() if cls.task == task]


def build_evaluators(task: str, **context: Any) -> list[Evaluator]:
    """Every registered evaluator of ``task``, built from ``context``."""
    return [cls.from_context(**context) for cls in evaluator_classes(task)]


def comparison_keys(metrics: dict[str, Any]) -> list[str]:
    """The keys of a split's metrics that a comparison of runs shows (every registered evaluator's)."""
    from seg_ext.plugins import load_plugins

    load_plugins()
    keys: list[str] = []
    for cls in EVALUATORS.values():
        keys.extend(k for k in cls.comparison_keys(metrics) if k not in keys)
    return keys


__all__ = ["COCOEvaluator", "EVALUATORS", "Evaluator", "MeanMetric", "SemSegEvaluator", "SemanticLoss", "build_evaluators",
           "comparison_keys", "evaluator_classes", "register_evaluator", "run_inference"]
