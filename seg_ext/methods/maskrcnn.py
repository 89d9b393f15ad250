"""torchvision Mask R-CNN as an instance method: the model computes its own losses in training mode."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seg_ext.methods.base import InstanceMethod, to_device
from seg_ext.models.maskrcnn import maskrcnn


class MaskRCNNMethod(InstanceMethod):
    """Detection-based instances: boxes, then a mask per box."""

    name = "maskrcnn"
    supports_tta = False  # detections of a flipped image would need merging
    models = {"maskrcnn": maskrcnn}

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        losses = model([i.to(self.device, non_blocking=True) for i in images], to_device(targets, self.device))
        total = sum(losses.values())
        return total, {k: float(v.detach()) for k, v in losses.items()}

    def forward(self, model: nn.Module, images: Any, tta: bool = False) -> list[dict[str, torch.Tensor]]:
        """Detections in each input image's own pixels (torchvision resizes internally and maps back)."""
        if tta:
            raise ValueError("Mask R-CNN has no test-time augmentation (supports_tta is False)")
        outputs = model([i.to(self.device, non_blocking=True) for i in images])
        return [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]

    def postprocess(self, outputs: list[dict[str, torch.Tensor]], index: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return outputs[index]
