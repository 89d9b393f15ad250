"""Losses written out by hand: weighted cross entropy and class weights from label frequencies."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seg_ext.config import CLASS_WEIGHT_MODES, choice


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


def watershed_loss(
    foreground_logits: torch.Tensor,
    energy_logits: torch.Tensor,
    foreground: torch.Tensor,
    level: torch.Tensor,
    energy_weight: torch.Tensor,
    foreground_loss_weight: float = 1.0,
    energy_loss_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the dual-head watershed UNet.

    * foreground: plain cross entropy over all pixels (background / instance);
    * energy: cross entropy over the K energy levels, on foreground pixels only, each pixel weighted by
      ``energy_weight`` (low levels weighted up, small instances weighted up; 0 off the foreground), normalised by
      the summed weights. A batch without foreground contributes 0.

    Shape:
        foreground_logits: (N, 2, H, W); energy_logits: (N, K, H, W); foreground, level: (N, H, W) int64;
        energy_weight: (N, H, W) float.
    """
    fg_loss = weighted_cross_entropy(foreground_logits, foreground)
    per_pixel = weighted_cross_entropy(energy_logits, level, reduction="none")
    energy_loss = (per_pixel * energy_weight).sum() / energy_weight.sum().clamp_min(1e-6)
    total = foreground_loss_weight * fg_loss + energy_loss_weight * energy_loss
    return total, {"loss_foreground": float(fg_loss.detach()), "loss_energy": float(energy_loss.detach())}
