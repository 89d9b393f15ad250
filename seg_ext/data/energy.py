"""Training targets of the watershed method (after the Deep Watershed Transform, Bai & Urtasun, CVPR 2017).

The foreground, and each instance pixel's distance to its own instance's boundary (Euclidean distance transform
per instance, so touching instances stay apart: their shared edge is a valley), quantised into K energy levels.
They are computed after augmentation and resizing, so they always match the masks the network sees.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from seg_ext.data.coco import CocoInstanceDataset
from seg_ext.data.scale import stack_or_list
from seg_ext.data.transforms import normalize_tensor


def quantize(distance: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Energy level of each distance: the index of the last edge at or below it. Shape kept, int64."""
    return np.clip(np.searchsorted(np.asarray(edges, np.float64), distance, side="right") - 1, 0, len(edges) - 1)


def energy_targets(
    masks: np.ndarray,
    edges: Sequence[float],
    level_weights: Sequence[float] = (3, 3, 3, 2),
    area_weighting: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground, energy level and energy-loss weight of every pixel, from instance masks.

    The distance of an instance pixel is its Euclidean distance to the nearest pixel outside its own instance,
    minus 1 (so the instance's boundary pixels have distance 0); a pixel in two overlapping instances takes the
    larger. Level weights: ``level_weights[k]`` for the lowest levels, 1 above; times ``1 / sqrt(area)`` of the
    pixel's instance with ``area_weighting``; 0 off the foreground.

    Shape:
        masks: (N, H, W) binary -> foreground (H, W) int64, level (H, W) int64, weight (H, W) float32
    """
    h, w = masks.shape[1:]
    distance = np.full((h, w), -1.0, np.float32)
    area = np.zeros((h, w), np.float32)
    for mask in masks.astype(bool):
        ys, xs = np.nonzero(mask)
        if not len(ys):
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = np.pad(mask[y0:y1, x0:x1], 1)  # a zero border: the distance to outside the instance
        d = ndimage.distance_transform_edt(crop)[1:-1, 1:-1].astype(np.float32) - 1
        region = distance[y0:y1, x0:x1]
        inside = mask[y0:y1, x0:x1] & (d > region)
        region[inside] = d[inside]
        area[y0:y1, x0:x1][inside] = len(ys)
    foreground = distance >= 0
    level = np.where(foreground, quantize(np.maximum(distance, 0), edges), 0)
    table = np.ones(len(edges), np.float32)
    table[: min(len(level_weights), len(edges))] = np.asarray(level_weights, np.float32)[: len(edges)]
    weight = np.where(foreground, table[level], 0).astype(np.float32)
    if area_weighting:
        weight = np.where(foreground, weight / np.sqrt(np.maximum(area, 1)), 0).astype(np.float32)
    return foreground.astype(np.int64), level.astype(np.int64), weight


def network_input(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """What the dual-head UNet sees of an image: resized (bilinear, antialiased) to ``size`` and normalised.

    Shape:
        image: (3, H, W) float in [0, 1] -> (3, h, w)
    """
    image = F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]
    return normalize_tensor(image)


class WatershedDataset(Dataset):
    """A COCO instance dataset resized to the network's input size, with foreground/energy targets.

    ``__getitem__`` returns ``(image, target)``: ``image`` a normalised float tensor (3, h, w) at ``input_size``;
    ``target`` holds ``foreground`` (h, w) int64, each pixel's class (0 background, k for the dataset's label k:
    with one class, the foreground), ``level`` (h, w) int64, ``energy_weight`` (h, w) float (the per-pixel
    energy-loss weight), ``image_id`` and ``orig_size`` (the size predictions are scored at).
    """

    def __init__(self, base: CocoInstanceDataset, input_size: tuple[int, int] | None, edges: Sequence[float],
                 level_weights: Sequence[float], area_weighting: bool,
                 prepare: Callable[[np.ndarray], torch.Tensor] | None = None) -> None:
        """``input_size``: the size every image is resized to (None: kept, as the training crops at a chosen scale
        come); ``prepare``: instead, each untransformed image made into the network's input by this (evaluation
        at the training scale, exactly as prediction prepares it), the targets at its size."""
        self.base = base
        self.input_size, self.prepare = input_size, prepare
        self.edges, self.level_weights, self.area_weighting = list(edges), list(level_weights), area_weighting
        self.coco, self.category_of = base.coco, dict(base.category_of)
        self.class_names, self.num_classes = base.class_names, base.num_classes
        self.transform = base.transform  # re-seeded per DataLoader worker

    def __len__(self) -> int:
        return len(self.base)

    def image_info(self, index: int) -> dict[str, Any]:
        return self.base.image_info(index)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.base.raw(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.prepare is not None:
            image = self.prepare(self.base.load_image(index))
            masks_array, _, labels_array = self.base.load_instances(index)
            masks, labels = torch.from_numpy(masks_array), torch.from_numpy(labels_array)
        else:
            image, target = self.base[index]
            masks, labels = target["masks"], target["labels"]
            image = network_input(image, self.input_size) if self.input_size is not None else normalize_tensor(image)
        h, w = image.shape[-2:]
        if not len(masks):
            masks = torch.zeros((0, h, w), dtype=torch.uint8)
        elif self.input_size is not None or tuple(masks.shape[-2:]) != (h, w):
            # area-weighted resampling, then the majority: boundaries as faithful as the resolution allows
            masks = (F.interpolate(masks[None].float(), size=(h, w), mode="bilinear", antialias=True)[0] >= 0.5).to(torch.uint8)
        foreground, level, weight = energy_targets(masks.numpy(), self.edges, self.level_weights, self.area_weighting)
        classes = foreground.copy()
        for mask, label in zip(masks.numpy().astype(bool), labels.tolist()):  # later instances on top
            classes[mask] = label
        classes[foreground == 0] = 0
        info = self.base.image_info(index)
        return image, {
            "foreground": torch.from_numpy(classes),
            "level": torch.from_numpy(level),
            "energy_weight": torch.from_numpy(weight),
            "image_id": int(self.base.ids[index]),
            "orig_size": (int(info["height"]), int(info["width"])),
        }


def collate_watershed(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[Any, list[dict[str, Any]]]:
    """Images stacked when they share a size (the network's input size, or the training crop), else a list (at
    the training scale); targets as a list."""
    images, targets = zip(*batch)
    return stack_or_list(images), list(targets)
