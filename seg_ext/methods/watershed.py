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
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg_ext.data.coco import CocoInstanceDataset, image_tensor
from seg_ext.data.energy import WatershedDataset, collate_watershed, network_input
from seg_ext.losses import watershed_loss
from seg_ext.methods.base import InstanceMethod
from seg_ext.models.dual_unet import DualHeadUNet
from seg_ext.postprocess import expected_energy, instances_from_labels, watershed_instances


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


class WatershedMethod(InstanceMethod):
    """The dual-head UNet trained on foreground/energy targets; instances come from the watershed.

    Args:
        input_size: (H, W) the network sees; outputs are resized back to each image's own size.
        levels: lower bin edges (pixels) of the energy levels.
        level_weights, area_weighting: how the energy loss weights its pixels (see ``energy_targets``).
        foreground_loss_weight, energy_loss_weight: the two losses' scalar weights in the total.
        post: the post-processing settings.
    """

    name = "watershed"
    models = {"dual_unet": DualHeadUNet}

    def __init__(
        self,
        device: torch.device,
        input_size: tuple[int, int] = (256, 256),
        levels: Sequence[float] = (0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30, 37, 45, 54),
        level_weights: Sequence[float] = (3, 3, 3, 2),
        area_weighting: bool = True,
        foreground_loss_weight: float = 1.0,
        energy_loss_weight: float = 1.0,
        post: PostProcessing = PostProcessing(),
    ) -> None:
        super().__init__(device)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.edges = [float(v) for v in levels]
        self.level_weights, self.area_weighting = list(level_weights), bool(area_weighting)
        self.foreground_loss_weight, self.energy_loss_weight = float(foreground_loss_weight), float(energy_loss_weight)
        self.post = post

    def collate(self, batch: list[Any]) -> Any:
        return collate_watershed(batch)

    def dataset(self, base: CocoInstanceDataset, train: bool) -> WatershedDataset:
        return WatershedDataset(base, self.input_size, self.edges, self.level_weights, self.area_weighting)

    def model_arguments(self, num_classes: int) -> dict[str, Any]:
        return {"num_levels": len(self.edges), "image_size": self.input_size}

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        out = model(images.to(self.device, non_blocking=True))
        stack = lambda key: torch.stack([t[key] for t in targets]).to(self.device, non_blocking=True)  # noqa: E731
        return watershed_loss(out["foreground"].float(), out["energy"].float(), stack("foreground"), stack("level"),
                              stack("energy_weight"), self.foreground_loss_weight, self.energy_loss_weight)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        return network_input(image_tensor(image), self.input_size)

    def maps(self, model: nn.Module, images: torch.Tensor, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Foreground probability and expected energy at the input size; ``tta``: the probabilities averaged with
        those of the horizontally flipped images (flipped back). Shapes: (N, h, w) each."""
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        images = images.to(self.device, non_blocking=True)
        fg, prob = self._probabilities(model, images)
        if tta:
            fg_flip, prob_flip = self._probabilities(model, images.flip(-1))
            fg, prob = (fg + fg_flip.flip(-1)) / 2, (prob + prob_flip.flip(-1)) / 2
        return fg.cpu().numpy(), np.stack([expected_energy(p) for p in prob.cpu().numpy()])

    @staticmethod
    def _probabilities(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(images)
        return torch.softmax(out["foreground"].float(), 1)[:, 1], torch.softmax(out["energy"].float(), 1)

    def instances(self, foreground: np.ndarray, energy: np.ndarray, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The post-processing of one image's maps (network resolution) into instances at ``size``; the oracle
        feeds it ground-truth maps."""
        labels, scores = watershed_instances(foreground, energy, **self.post.watershed_arguments())
        return instances_from_labels(labels, scores, size, foreground if self.post.full_resolution else None,
                                     self.post.mask_threshold)

    def forward(self, model: nn.Module, images: Any, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return self.maps(model, images, tta)

    def postprocess(self, outputs: tuple[np.ndarray, np.ndarray], index: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        fg, energy = outputs
        return self.instances(fg[index], energy[index], size)

    def extra_panel(self, outputs: tuple[np.ndarray, np.ndarray], index: int, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        """The expected energy where the foreground is predicted (the energy head is not trained elsewhere)."""
        fg, energy = outputs
        shown = torch.from_numpy(np.where(fg[index] >= self.post.foreground_threshold, energy[index], 0.0))
        resized = F.interpolate(shown[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return resized.numpy(), "predicted energy on the foreground"
