"""Evaluators (detectron2-style ``reset`` / ``process`` / ``evaluate``) and the inference loop."""

from seg_ext.evaluation.base import Evaluator, MeanMetric, run_inference
from seg_ext.evaluation.semantic import SemSegEvaluator

__all__ = ["Evaluator", "MeanMetric", "SemSegEvaluator", "run_inference"]
