"""torchvision Mask R-CNN as an instance method: the model computes its own losses in training mode."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from seg_ext.methods.base import InstanceMethod, to_device
from seg_ext.models.maskrcnn import maskrcnn


class MaskRCNNMethod(InstanceMethod):
    """Detection-based instances: boxes, then a mask per box."""

    name = "maskrcnn"
    models = {"maskrcnn": maskrcnn}

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        losses = model([i.to(self.device, non_blocking=True) for i in images], to_device(targets, self.device))
        total = sum(losses.values())
        return total, {k: float(v.detach()) for k, v in losses.items()}

    def predict(self, model: nn.Module, images: Any, sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, torch.Tensor]]:
        """Detections in each input image's own pixels (torchvision resizes internally and maps back)."""
        outputs = model([i.to(self.device, non_blocking=True) for i in images])
        return [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]
