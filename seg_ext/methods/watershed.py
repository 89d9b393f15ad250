"""The detection-free method: a dual-head UNet (foreground + energy levels) and a watershed, after the Deep
Watershed Transform (Bai & Urtasun, CVPR 2017).

* Targets: ``seg_ext.data.energy`` (foreground, quantised distance to each instance's own boundary).
* Loss: ``seg_ext.losses.watershed_loss`` (foreground cross entropy; energy cross entropy on the foreground with
  the lowest levels and small instances weighted up).
* Post-processing: ``seg_ext.postprocess.watershed_instances`` at the network's resolution; the instance labels
  are then brought to each image's own size (``instances_from_labels``: resized, or with ``full_resolution`` their
  outlines drawn from the upsampled foreground probability) and scored by the same COCO evaluator as Mask R-CNN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg_ext.config import pixels
from seg_ext.data.coco import CocoInstanceDataset, image_tensor
from seg_ext.data.energy import WatershedDataset, collate_watershed, network_input
from seg_ext.dense import scaled_input, validate_resize
from seg_ext.errors import ConfigError
from seg_ext.losses import watershed_loss
from seg_ext.methods.instance import InstanceMethod
from seg_ext.models.dual_unet import DualHeadUNet
from seg_ext.postprocess import expected_energy, instance_classes, instances_from_labels, watershed_instances

WATERSHED_BLOCK: dict[str, Any] = {
    "input_size": [256, 256],  # (H, W) the UNet sees; outputs are resized back to each image's own size
    "levels": [0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30, 37, 45, 54],  # lower bin edges in pixels
    "level_weights": [3, 3, 3, 2],  # the lowest levels weighted up; the rest 1
    "area_weighting": True,  # weight energy pixels by 1/sqrt(instance area)
    "foreground_loss_weight": 1.0,  # scalar weights of the two losses in the total
    "energy_loss_weight": 1.0,
    "marker_level": 1.0,  # markers: foreground with expected energy at or above this level (DWT cuts at 1-2)
    # Every length and area of this block (levels, the areas, score_area) is in pixels of the maps the watershed
    # runs on: input_size with data.resize: squash, the image at data.scale with scale; not the photo's own pixels.
    # At another data.scale they cover other sizes on the photo: scale areas by the square of the change.
    "min_marker_area": 10,
    "min_instance_area": 50,
    "foreground_threshold": 0.5,
    "split_dynamic": 0.0,  # > 0: split a marker at energy peaks rising this many levels above their saddle
    "score_energy": 0.0,  # score: peak energy (levels) at which the energy factor reaches 1; 0: 2 x marker_level
    "score_area": 0.0,  # score: area (map pixels, above) at which sqrt(area / score_area) reaches 1; 0: off
    "full_resolution": False,  # masks at each image's size from the upsampled foreground (eval.mask_threshold)
}


@dataclass(frozen=True)
class PostProcessing:
    """Settings of ``watershed_instances``, and of the masks at each image's size (``full_resolution``: outlines
    from the upsampled foreground probability at ``mask_threshold``; otherwise the labels resized, nearest)."""

    marker_level: float = 1.0
    foreground_threshold: float = 0.5
    min_marker_area: int = 10
    min_instance_area: int = 50
    split_dynamic: float = 0.0
    score_energy: float = 0.0
    score_area: float = 0.0
    full_resolution: bool = False
    mask_threshold: float = 0.5

    @classmethod
    def watershed_keys(cls) -> list[str]:
        """The settings read from the config's ``watershed`` block (``mask_threshold`` is ``eval.mask_threshold``)."""
        return [f.name for f in fields(cls) if f.name != "mask_threshold"]

    def watershed_arguments(self) -> dict[str, Any]:
        """The arguments of ``watershed_instances``."""
        out = self.as_dict()
        del out["full_resolution"], out["mask_threshold"]
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Outputs(nn.Module):
    """The dual-head UNet with its dict of outputs as a tuple (ONNX outputs are positional)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out["foreground"], out["energy"]


class WatershedMethod(InstanceMethod):
    """The dual-head UNet trained on foreground/energy targets; instances come from the watershed.

    Its settings are the config's ``watershed`` block: ``input_size`` (the (H, W) the network sees; outputs
    are resized back to each image's own size), ``levels`` (lower bin edges of the energy levels, pixels),
    ``level_weights`` and ``area_weighting`` (how the energy loss weights its pixels), the two losses' scalar
    weights, and the post-processing (:class:`PostProcessing`, with ``eval.mask_threshold``).
    """

    name = "watershed"
    title = "dual-head UNet + watershed"
    models = {"dual_unet": DualHeadUNet}
    supports_oracle = True
    onnx_outputs = ("foreground", "energy")
    network_keys = ("watershed.levels", "watershed.input_size")
    context_keys = {"image_size": "watershed.input_size"}
    default_model = {"name": "dual_unet", "base_width": 16, "depth": 4}
    default_changes = {
        "train": {"optimizer": "adamw", "lr": 3.0e-3, "weight_decay": 1.0e-4, "scheduler": "cosine", "warmup_iters": 0,
                  "epochs": 30},
        "data": {"batch_size": 4},
    }
    config_blocks = {"watershed": WATERSHED_BLOCK}
    renamed_keys = {("watershed", "foreground_weight"): "foreground_loss_weight",
                    ("watershed", "energy_weight"): "energy_loss_weight"}

    def __init__(self, cfg: dict[str, Any], device: torch.device = torch.device("cpu")) -> None:
        super().__init__(cfg, device)
        ws = cfg["watershed"]
        self._input_size = (int(ws["input_size"][0]), int(ws["input_size"][1]))
        self.edges = [float(v) for v in ws["levels"]]
        self.level_weights, self.area_weighting = list(ws["level_weights"]), bool(ws["area_weighting"])
        self.foreground_loss_weight = float(ws["foreground_loss_weight"])
        self.energy_loss_weight = float(ws["energy_loss_weight"])
        self.post = PostProcessing(**{key: ws[key] for key in PostProcessing.watershed_keys()},
                                   mask_threshold=cfg["eval"]["mask_threshold"])

    @classmethod
    def validate(cls, cfg: dict[str, Any]) -> None:
        super().validate(cfg)
        ws = cfg["watershed"]
        size = pixels(ws["input_size"], "watershed.input_size", minimum=16, multiple=16)
        validate_resize(cfg, size)
        if cfg["data"].get("crop_size") is not None:
            pixels(cfg["data"]["crop_size"], "data.crop_size", minimum=16, multiple=16)
        edges = ws["levels"]
        if len(edges) < 3 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] != 0:
            raise ConfigError(f"config key 'watershed.levels' is {edges}; expected increasing bin edges starting at 0")

    @property
    def network_size(self) -> tuple[int, int]:
        return self._input_size

    @classmethod
    def postprocess_keys(cls) -> tuple[str, ...]:
        return (*(f"watershed.{key}" for key in PostProcessing.watershed_keys()), "eval.mask_threshold")

    def collate(self, batch: list[Any]) -> Any:
        return collate_watershed(batch)

    def dataset(self, base: CocoInstanceDataset, train: bool) -> WatershedDataset:
        """Squash: every image at ``watershed.input_size``. Scale: training crops as they come; evaluation
        images prepared as prediction prepares them (at the training scale)."""
        if self.scale is None:
            return WatershedDataset(base, self.network_size, self.edges, self.level_weights, self.area_weighting)
        return WatershedDataset(base, None, self.edges, self.level_weights, self.area_weighting,
                                prepare=None if train else self.prepare)

    def model_arguments(self, num_classes: int) -> dict[str, Any]:
        return {"num_levels": len(self.edges), "num_classes": num_classes, "image_size": self.train_size}

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        out = model(images.to(self.device, non_blocking=True))
        stack = lambda key: torch.stack([t[key] for t in targets]).to(self.device, non_blocking=True)  # noqa: E731
        return watershed_loss(out["foreground"].float(), out["energy"].float(), stack("foreground"), stack("level"),
                              stack("energy_weight"), self.foreground_loss_weight, self.energy_loss_weight)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        if self.scale is not None:
            return scaled_input(image, self.scale)
        return network_input(image_tensor(image), self.network_size)

    def maps(self, model: nn.Module, images: torch.Tensor, tta: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Foreground probability, expected energy and, with several classes, each class's probability, at the
        input size; ``tta``: the probabilities averaged with those of the horizontally flipped images (flipped
        back). Shapes: (N, h, w), (N, h, w), (N, K, h, w) or None for one class; with ``eval.mode`` whole or
        slide, lists of each image's (h, w) and (K, h, w) maps at its training scale (windows merged before the
        watershed, so an instance across a window border is not split)."""
        if self.scale is not None:
            return self._dense_maps(model, images, tta)
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        fg, prob, classes = self._averaged(model, images.to(self.device, non_blocking=True), tta)
        return (fg.cpu().numpy(), np.stack([expected_energy(p) for p in prob.cpu().numpy()]),
                None if classes is None else classes.cpu().numpy())

    def _dense_maps(self, model: nn.Module, images: Any, tta: bool) -> tuple[list, list, list | None]:
        """Foreground probability, expected energy and class probabilities: all linear in the network's
        probabilities, so averaging overlapping windows averages the probabilities."""
        def channels(x: torch.Tensor) -> torch.Tensor:
            fg, prob, classes = self._averaged(model, x, tta)
            levels = torch.arange(prob.shape[1], dtype=prob.dtype, device=prob.device).view(1, -1, 1, 1)
            parts = [fg[:, None], (prob * levels).sum(1, keepdim=True)] + ([classes] if classes is not None else [])
            return torch.cat(parts, 1)

        maps = [m.numpy() for m in self.dense_forward(model, images, channels)]
        multi = maps[0].shape[0] > 2
        return [m[0] for m in maps], [m[1] for m in maps], [m[2:] for m in maps] if multi else None

    def _averaged(self, model: nn.Module, images: torch.Tensor, tta: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`_probabilities`, with ``tta`` averaged with those of the mirror images (flipped back)."""
        fg, prob, classes = self._probabilities(model, images)
        if tta:
            fg_flip, prob_flip, classes_flip = self._probabilities(model, images.flip(-1))
            fg, prob = (fg + fg_flip.flip(-1)) / 2, (prob + prob_flip.flip(-1)) / 2
            if classes is not None:
                classes = (classes + classes_flip.flip(-1)) / 2
        return fg, prob, classes

    @staticmethod
    def _probabilities(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = model(images)
        head = torch.softmax(out["foreground"].float(), 1)
        classes = head[:, 1:] if head.shape[1] > 2 else None  # one class: the foreground is the class
        return head[:, 1:].sum(1), torch.softmax(out["energy"].float(), 1), classes

    def instances(self, foreground: np.ndarray, energy: np.ndarray, size: tuple[int, int],
                  classes: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The post-processing of one image's maps (network resolution) into instances at ``size``; with several
        classes (``classes``: each class's probability) each instance takes its class and a class-aware score
        (``postprocess.instance_classes``). The oracle feeds it ground-truth maps."""
        labels, scores = watershed_instances(foreground, energy, **self.post.watershed_arguments())
        label_of = None
        if classes is not None:
            label_of, scores = instance_classes(labels, scores, classes, foreground)
        return instances_from_labels(labels, scores, size, foreground if self.post.full_resolution else None,
                                     self.post.mask_threshold, label_of)

    def forward(self, model: nn.Module, images: Any, tta: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return self.maps(model, images, tta)

    def postprocess(self, outputs: tuple, index: int, size: tuple[int, int], probs: bool = False) -> dict[str, torch.Tensor]:
        fg, energy, classes = outputs
        return self.instances(fg[index], energy[index], size, None if classes is None else classes[index])

    def extra_panel(self, outputs: tuple, index: int, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        """The expected energy where the foreground is predicted (the energy head is not trained elsewhere)."""
        fg, energy = outputs[:2]
        shown = torch.from_numpy(np.where(fg[index] >= self.post.foreground_threshold, energy[index], 0.0))
        resized = F.interpolate(shown[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return resized.numpy(), "predicted energy on the foreground"

    def export_module(self, model: nn.Module) -> nn.Module:
        return _Outputs(model)

    def oracle_outputs(self, target: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The instances of the ground-truth maps of an evaluation target (classes, foreground and energy levels)."""
        classes = target["foreground"].numpy()
        count = int(classes.max()) if classes.size else 0
        one_hot = None if count <= 1 else (classes[None] == np.arange(1, count + 1).reshape(-1, 1, 1)).astype(np.float32)
        return self.instances((classes > 0).astype(np.float32), target["level"].numpy().astype(np.float32),
                              target["orig_size"], one_hot)

    def oracle_facts(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "post": self.post.as_dict()}
