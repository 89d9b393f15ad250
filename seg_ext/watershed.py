"""The detection-free method: a dual-head UNet (foreground + energy levels) and a watershed, after the Deep
Watershed Transform (Bai & Urtasun, CVPR 2017).

* Targets: the foreground, and each instance pixel's distance to its own instance's boundary (Euclidean distance
  transform per instance, so touching instances stay apart: their shared edge is a valley), quantised into K
  energy levels by ``watershed.levels`` (DWT's bins by default). They are computed in the dataset after
  augmentation and resizing, so they always match the masks the network sees.
* Loss: ``seg_ext.losses.watershed_loss`` (foreground cross entropy; energy cross entropy on the foreground with
  the lowest levels and small instances weighted up).
* Post-processing: ``seg_ext.postprocess.watershed_instances`` at the network's resolution; the instance labels
  are then resized (nearest) to each image's own size and scored by the same COCO evaluator as Mask R-CNN.
* ``run_oracle``: the post-processing on targets made from the ground truth: the ceiling of the method.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from seg_ext.config import pair
from seg_ext.data.coco import CocoInstanceDataset, coco_dataset
from seg_ext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg_ext.errors import ConfigError
from seg_ext.losses import watershed_loss
from seg_ext.models import build_from_block
from seg_ext.models.dual_unet import DualHeadUNet
from seg_ext.postprocess import expected_energy, watershed_instances

logger = logging.getLogger(__name__)


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


class WatershedDataset(Dataset):
    """A COCO instance dataset resized to the network's input size, with foreground/energy targets.

    ``__getitem__`` returns ``(image, target)``: ``image`` a normalised float tensor (3, h, w) at ``input_size``;
    ``target`` holds ``foreground``, ``level`` (h, w) int64, ``weight`` (h, w) float, ``image_id`` and
    ``orig_size`` (the size predictions are scored at). Class-agnostic: every category is "foreground".
    """

    def __init__(self, base: CocoInstanceDataset, input_size: tuple[int, int], edges: Sequence[float],
                 level_weights: Sequence[float], area_weighting: bool) -> None:
        self.base = base
        self.input_size = input_size
        self.edges, self.level_weights, self.area_weighting = list(edges), list(level_weights), area_weighting
        self.coco, self.category_of = base.coco, {1: base.cat_ids[0]}
        self.class_names, self.num_classes = base.class_names, base.num_classes
        self.transform = base.transform  # re-seeded per DataLoader worker

    def __len__(self) -> int:
        return len(self.base)

    def image_info(self, index: int) -> dict[str, Any]:
        return self.base.image_info(index)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.base.raw(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.base[index]
        h, w = self.input_size
        image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        image = (image - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        masks = target["masks"]
        if len(masks):
            # area-weighted resampling, then the majority: boundaries as faithful as the resolution allows
            masks = (F.interpolate(masks[None].float(), size=(h, w), mode="bilinear", antialias=True)[0] >= 0.5).to(torch.uint8)
        else:
            masks = torch.zeros((0, h, w), dtype=torch.uint8)
        foreground, level, weight = energy_targets(masks.numpy(), self.edges, self.level_weights, self.area_weighting)
        info = self.base.image_info(index)
        return image, {
            "foreground": torch.from_numpy(foreground),
            "level": torch.from_numpy(level),
            "weight": torch.from_numpy(weight),
            "image_id": target["image_id"],
            "orig_size": (int(info["height"]), int(info["width"])),
        }


def collate_watershed(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


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


class WatershedMethod:
    """The dual-head UNet trained on foreground/energy targets; instances come from the watershed."""

    name = "watershed"
    registry = {"dual_unet": DualHeadUNet}
    collate = staticmethod(collate_watershed)

    def __init__(self, cfg: dict[str, Any], device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        ws = cfg["watershed"]
        h, w = pair(ws["input_size"], "watershed.input_size")
        if h < 16 or w < 16 or h % 16 or w % 16:
            raise ConfigError(f"config key 'watershed.input_size' is {ws['input_size']}; expected [H, W], multiples of 16")
        self.input_size = (int(h), int(w))
        self.edges = [float(v) for v in ws["levels"]]
        if len(self.edges) < 3 or any(b <= a for a, b in zip(self.edges, self.edges[1:])) or self.edges[0] != 0:
            raise ConfigError(f"config key 'watershed.levels' is {ws['levels']}; expected increasing bin edges starting at 0")
        self.post = {
            "marker_level": float(ws["marker_level"]),
            "foreground_threshold": float(ws["foreground_threshold"]),
            "min_marker_area": int(ws["min_marker_area"]),
            "min_instance_area": int(ws["min_instance_area"]),
        }

    def dataset(self, json_path: Path, image_root: Path, train: bool) -> WatershedDataset:
        ws = self.cfg["watershed"]
        base = coco_dataset(self.cfg, json_path, image_root, train)
        return WatershedDataset(base, self.input_size, self.edges, ws["level_weights"], bool(ws["area_weighting"]))

    def build_model(self, num_classes: int) -> nn.Module:
        return build_from_block(self.registry, self.cfg["model"], {"num_levels": len(self.edges), "image_size": self.input_size})

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        out = model(images.to(self.device, non_blocking=True))
        stack = lambda key: torch.stack([t[key] for t in targets]).to(self.device, non_blocking=True)  # noqa: E731
        ws = self.cfg["watershed"]
        return watershed_loss(out["foreground"].float(), out["energy"].float(), stack("foreground"), stack("level"),
                              stack("weight"), float(ws["foreground_weight"]), float(ws["energy_weight"]))

    def maps(self, model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Foreground probability and expected energy at the input size. Shapes: (N, h, w) each."""
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        out = model(images.to(self.device, non_blocking=True))
        fg = torch.softmax(out["foreground"].float(), 1)[:, 1].cpu().numpy()
        prob = torch.softmax(out["energy"].float(), 1).cpu().numpy()
        return fg, np.stack([expected_energy(p) for p in prob])

    def predict(self, model: nn.Module, images: Any, sizes: Sequence[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        fg, energy = self.maps(model, images)
        results = []
        for f, e, size in zip(fg, energy, sizes):
            labels, scores = watershed_instances(f, e, **self.post)
            results.append(instances_from_labels(labels, scores, size))
        return results

    def extra_panel(self, model: nn.Module, image: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        """The expected energy where the foreground is predicted (the energy head is not trained elsewhere)."""
        fg, energy = self.maps(model, image[None])
        shown = torch.from_numpy(np.where(fg >= self.post["foreground_threshold"], energy, 0.0))
        resized = F.interpolate(shown[None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return resized.numpy(), "predicted energy on the foreground"


def run_oracle(cfg: dict[str, Any], output_dir: Path, command: str = "") -> dict[str, Any]:
    """Post-process targets made from the ground truth (one-hot foreground and energy) and score them with the
    COCO evaluator on val and test: the AP the watershed method reaches with a perfect network."""
    from seg_ext.config import save_config
    from seg_ext.evaluation.coco import COCOEvaluator
    from seg_ext.report import write_json
    from seg_ext.engine import setup_run
    from seg_ext.tasks.instance import _datasets, _oracle_report

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = setup_run(cfg["train"])
    method = WatershedMethod(cfg, device)
    datasets, what = _datasets(method, cfg, output_dir)
    save_config(cfg, output_dir / "config.yaml")
    summary: dict[str, Any] = {"method": "watershed oracle", "input_size": list(method.input_size), "post": method.post}
    for split in ("val", "test"):
        dataset = datasets[split]
        if dataset is None:
            continue
        evaluator = COCOEvaluator(dataset.coco, dataset.category_of, backend=cfg["eval"]["backend"])
        for i in range(len(dataset)):
            _, target = dataset[i]
            labels, scores = watershed_instances(target["foreground"].numpy().astype(np.float32),
                                                 target["level"].numpy().astype(np.float32), **method.post)
            evaluator.process([instances_from_labels(labels, scores, target["orig_size"])], [target])
        summary[split] = evaluator.evaluate()
        evaluator.save_results(output_dir / f"results_{split}_segm.json", "segm")
        logger.info("oracle %s: segm AP %.2f (AP50 %.2f, AP75 %.2f), bbox AP %.2f", split, summary[split]["segm/AP"],
                    summary[split]["segm/AP50"], summary[split]["segm/AP75"], summary[split]["bbox/AP"])
    summary["splits"] = {s: len(d) for s, d in datasets.items() if d is not None}
    write_json(summary, output_dir / "metrics.json")
    _oracle_report(output_dir, cfg, summary, what, command)
    return summary
