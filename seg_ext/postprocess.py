"""Watershed post-processing: foreground probability + energy levels -> instances.

After the Deep Watershed Transform (Bai & Urtasun, 2017): the energy of a pixel is the quantised distance to the
boundary of its own instance, so two touching instances meet in a valley of low energy. Markers are the
connected components of the foreground whose expected energy is at or above ``marker_level``; a watershed over
the negative expected energy, limited to the predicted foreground, grows each marker back out to its instance's
boundary (the "dilate to undo the cut" step of DWT, driven by the energy instead of a fixed radius).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.segmentation import watershed


def expected_energy(energy_prob: np.ndarray) -> np.ndarray:
    """Expected energy level per pixel, sum_k k * p_k. Shape: (K, H, W) -> (H, W)."""
    levels = np.arange(energy_prob.shape[0], dtype=np.float32).reshape(-1, 1, 1)
    return (energy_prob * levels).sum(0)


def watershed_instances(
    foreground_prob: np.ndarray,
    energy: np.ndarray,
    marker_level: float = 2.0,
    foreground_threshold: float = 0.5,
    min_marker_area: int = 10,
    min_instance_area: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Instances from a foreground probability map and an expected-energy map.

    Args:
        foreground_prob: probability that a pixel belongs to any instance. Shape: (H, W).
        energy: expected energy level per pixel (``expected_energy`` of the energy head's softmax). Shape: (H, W).
        marker_level: markers are foreground pixels with energy at or above this level.
        min_marker_area, min_instance_area: smaller markers and instances (pixels) are dropped.

    Returns:
        ``labels`` (H, W) int32, 0 background and 1..N instances, and ``scores`` (N,): the instance's mean
        foreground probability times how far its marker's peak energy rises above the cut (1 at twice the cut).
    """
    foreground = foreground_prob >= foreground_threshold
    marker_mask = foreground & (energy >= marker_level)
    markers, count = ndimage.label(marker_mask)
    if count == 0:
        return np.zeros(foreground.shape, np.int32), np.zeros(0, np.float32)
    if min_marker_area > 1:
        small = np.bincount(markers.ravel(), minlength=count + 1) < min_marker_area
        small[0] = False
        if small.any():
            markers[small[markers]] = 0
    labels = watershed(-energy, markers, mask=foreground)
    # relabel 1..N, dropping small instances
    ids, inverse, areas = np.unique(labels, return_inverse=True, return_counts=True)
    keep = (ids > 0) & (areas >= min_instance_area)
    new_id = np.zeros(len(ids), np.int32)
    new_id[keep] = np.arange(1, keep.sum() + 1)
    labels = new_id[inverse].reshape(labels.shape)
    n = int(keep.sum())
    if n == 0:
        return labels, np.zeros(0, np.float32)
    index = np.arange(1, n + 1)
    mean_fg = ndimage.mean(foreground_prob, labels, index)
    peak = ndimage.maximum(energy, labels, index)
    scores = np.asarray(mean_fg) * np.clip(np.asarray(peak) / (2 * max(marker_level, 1e-6)), 0, 1)
    return labels, scores.astype(np.float32)


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if labels.shape == tuple(size):
        return labels
    t = torch.from_numpy(labels.astype(np.int32))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest-exact")[0, 0].to(torch.int32).numpy()


def instances_from_labels(labels: np.ndarray, scores: np.ndarray, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Detections (boxes, labels, scores, masks) of an instance label map resized to ``size``."""
    labels = _resize_labels(labels, size)
    n = len(scores)
    masks = labels[None] == np.arange(1, n + 1).reshape(-1, 1, 1) if n else np.zeros((0, *size), bool)
    keep = masks.reshape(n, -1).any(1) if n else np.zeros(0, bool)
    masks, scores = masks[keep], scores[keep]
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.ones(len(masks), dtype=torch.int64),
        "scores": torch.from_numpy(np.asarray(scores, np.float32)),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }
