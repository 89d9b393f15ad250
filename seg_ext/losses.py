"""Losses written out by hand: weighted cross entropy and class weights from label frequencies."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seg_ext.config import choice

CLASS_WEIGHT_MODES = ("none", "inverse", "median")


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross entropy with optional class weights, equal to ``torch.nn.functional.cross_entropy``.

    log-softmax over classes, the log-probability of each pixel's target class gathered, weighted by its
    class weight; ``mean`` divides by the summed weights of the non-ignored pixels (NaN when every pixel is
    ignored, as in PyTorch).

    Shape:
        logits: (N, C, ...) raw scores; target: (N, ...) class ids or ``ignore_index``; weight: (C,).
        Returns a scalar, or (N, ...) with ``reduction="none"`` (0 at ignored pixels).
    """
    log_prob = F.log_softmax(logits, dim=1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    picked = log_prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    if weight is None:
        pixel_weight = valid.to(log_prob.dtype)
    else:
        pixel_weight = weight.to(log_prob.dtype)[safe_target] * valid
    losses = -picked * pixel_weight
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.sum() / pixel_weight.sum()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def class_weights(pixel_counts: np.ndarray | torch.Tensor, mode: str) -> torch.Tensor | None:
    """Class weights from per-class pixel counts of the training split.

    * ``none``: no weights (returns None).
    * ``inverse``: ``w_c = total / (C * n_c)``; a class with the average share gets weight 1.
    * ``median``: median-frequency balancing (Eigen & Fergus), ``w_c = median(f) / f_c`` with
      ``f_c = n_c / total``.

    Classes without pixels get weight 0 (no pixel of theirs is ever weighted).

    Shape:
        pixel_counts: (C,) -> (C,) float32
    """
    choice(mode, "loss.class_weights", CLASS_WEIGHT_MODES)
    if mode == "none":
        return None
    counts = torch.as_tensor(np.asarray(pixel_counts), dtype=torch.float64)
    present = counts > 0
    freq = counts / counts.sum().clamp_min(1)
    weights = torch.zeros_like(freq)
    if mode == "inverse":
        weights[present] = 1.0 / (len(counts) * freq[present])
    else:
        weights[present] = freq[present].median() / freq[present]
    return weights.float()
