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
from skimage import morphology
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
    split_dynamic: float = 0.0,
    score_energy: float = 0.0,
    score_area: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Instances from a foreground probability map and an expected-energy map.

    Args:
        foreground_prob: probability that a pixel belongs to any instance. Shape: (H, W).
        energy: expected energy level per pixel (``expected_energy`` of the energy head's softmax). Shape: (H, W).
        marker_level: markers are foreground pixels with energy at or above this level.
        min_marker_area, min_instance_area: smaller markers and instances (pixels) are dropped.
        split_dynamic: when > 0, a marker holding several energy peaks that each rise at least this many levels
            above the saddle between them is split into one marker per peak (two people joined above the cut);
            0: one marker per connected component.
        score_energy: the peak energy (levels) at which an instance's energy factor reaches 1; 0: twice the cut.
        score_area: the area (pixels at this resolution) at which its size factor, sqrt(area / score_area),
            reaches 1; 0: no size factor.

    Returns:
        ``labels`` (H, W) int32, 0 background and 1..N instances, and ``scores`` (N,): the instance's mean
        foreground probability times min(1, peak energy / score_energy) times the size factor, so a small,
        flat fragment ranks below a whole person.
    """
    foreground = foreground_prob >= foreground_threshold
    marker_mask = foreground & (energy >= marker_level)
    markers, count = ndimage.label(marker_mask)
    if count == 0:
        return np.zeros(foreground.shape, np.int32), np.zeros(0, np.float32)
    if split_dynamic > 0:
        markers, count = _split_markers(markers, count, energy, split_dynamic, min_marker_area)
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
    full_energy = score_energy if score_energy > 0 else 2 * max(marker_level, 1e-6)
    scores = np.asarray(mean_fg) * np.clip(np.asarray(peak) / full_energy, 0, 1)
    if score_area > 0:
        scores = scores * np.sqrt(np.clip(areas[keep] / score_area, 0, 1))
    return labels, scores.astype(np.float32)


def instance_classes(labels: np.ndarray, scores: np.ndarray, class_prob: np.ndarray,
                     foreground_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each instance's class and class-aware score: the class with the most probability over its pixels (labels
    1..K), and the score times the mean probability of that class given the foreground over its pixels.

    Shape:
        labels (h, w) 0..N; scores (N,); class_prob (K, h, w); foreground_prob (h, w) -> (N,) int64, (N,) float32
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64), scores
    index = np.arange(1, n + 1)
    totals = np.stack([ndimage.sum(p, labels, index) for p in class_prob], axis=1)  # (N, K)
    best = totals.argmax(1)
    given = class_prob / np.maximum(foreground_prob, 1e-6)[None]
    share = np.array([ndimage.mean(given[c], labels, i) for c, i in zip(best, index)], np.float32)
    return best.astype(np.int64) + 1, (scores * np.clip(share, 0, 1)).astype(np.float32)


def _split_markers(markers: np.ndarray, count: int, energy: np.ndarray, dynamic: float,
                   min_area: int) -> tuple[np.ndarray, int]:
    """Markers split at their energy peaks: a marker holding two or more h-maxima of height ``dynamic`` (each
    peak's cap, the pixels within ``dynamic`` of it, at least ``min_area`` pixels) becomes one marker per cap;
    the watershed then grows the caps back over the marker. Other markers stay whole."""
    step = 0.05  # h-maxima on integers: the energy in steps of 1/20 of a level
    image = np.where(markers > 0, np.round(energy / step), 0).astype(np.int32)
    h = max(int(round(dynamic / step)), 1)
    # the h-maxima transform: peaks cut h below their top; its regional maxima are the caps
    flattened = morphology.reconstruction(np.maximum(image - h, 0), image, method="dilation")
    caps, n_caps = ndimage.label(morphology.local_maxima(flattened, allow_borders=True) & (markers > 0))
    if n_caps < 2:
        return markers, count
    cap_ids = np.arange(1, n_caps + 1)
    big = np.bincount(caps.ravel(), minlength=n_caps + 1)[1:] >= max(min_area, 1)
    owner = ndimage.maximum(markers, caps, cap_ids).astype(np.int64)  # the marker each cap lies in
    splits = np.bincount(owner[big], minlength=count + 1) >= 2
    if not splits[1:].any():
        return markers, count
    out = np.where(splits[markers], 0, markers)
    for cap in cap_ids[big & splits[owner]]:
        count += 1
        out[caps == cap] = count
    return out, count


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if labels.shape == tuple(size):
        return labels
    t = torch.from_numpy(labels.astype(np.int32))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest-exact")[0, 0].to(torch.int32).numpy()


def full_resolution_labels(labels: np.ndarray, foreground_prob: np.ndarray, size: tuple[int, int],
                           threshold: float = 0.5) -> np.ndarray:
    """An instance label map at ``size`` whose outlines follow the foreground probability upsampled (bilinear)
    to that size, instead of the network-resolution pixels' staircase: a pixel whose upsampled probability
    reaches ``threshold`` takes the label of the nearest instance pixel (nearest-resized labels) within
    about one network pixel; the others are background.

    Shape:
        labels (h, w) int, foreground_prob (h, w) -> (H, W) int32
    """
    resized = _resize_labels(labels, size)
    if not resized.any():
        return resized
    prob = F.interpolate(torch.from_numpy(np.ascontiguousarray(foreground_prob, np.float32))[None, None], size=tuple(size),
                         mode="bilinear", align_corners=False)[0, 0].numpy()
    distance, (iy, ix) = ndimage.distance_transform_edt(resized == 0, return_indices=True)
    reach = 1.0 + max(size[0] / labels.shape[0], size[1] / labels.shape[1])  # one network pixel and a margin
    return np.where((prob >= threshold) & (distance <= reach), resized[iy, ix], 0).astype(np.int32)


def instances_from_labels(labels: np.ndarray, scores: np.ndarray, size: tuple[int, int],
                          foreground_prob: np.ndarray | None = None, mask_threshold: float = 0.5,
                          classes: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Detections (boxes, labels, scores, masks) of an instance label map resized to ``size``: nearest, or with
    ``foreground_prob`` outlines drawn at ``size`` by :func:`full_resolution_labels`. ``classes``: each
    instance's class label (default: 1, one class)."""
    if foreground_prob is None:
        labels = _resize_labels(labels, size)
    else:
        labels = full_resolution_labels(labels, foreground_prob, size, mask_threshold)
    n = len(scores)
    masks = labels[None] == np.arange(1, n + 1).reshape(-1, 1, 1) if n else np.zeros((0, *size), bool)
    keep = masks.reshape(n, -1).any(1) if n else np.zeros(0, bool)
    masks, scores = masks[keep], scores[keep]
    classes = np.ones(len(masks), np.int64) if classes is None else np.asarray(classes, np.int64)[keep]
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(classes),
        "scores": torch.from_numpy(np.asarray(scores, np.float32)),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }
