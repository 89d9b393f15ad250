"""torchvision Mask R-CNN as an instance method: boxes, then a mask per box; the model computes its own losses in
training mode and maps its detections back to each input image's pixels."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seg_ext.errors import ConfigError
from seg_ext.evaluation.base import to_device
from seg_ext.methods.instance import InstanceMethod
from seg_ext.models.maskrcnn import maskrcnn


class _Detections(nn.Module):
    """Mask R-CNN on a batch of one image, its detections as a tuple (what ONNX exports)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor):
        out = self.detector([image[0]])[0]
        return out["boxes"], out["labels"], out["scores"], out["masks"]


class MaskRCNNMethod(InstanceMethod):
    """Detection-based instances: boxes, then a mask per box."""

    name = "maskrcnn"
    title = "Mask R-CNN"
    supports_tta = False  # detections of a flipped image would need merging
    models = {"maskrcnn": maskrcnn}
    onnx_outputs = ("boxes", "labels", "scores", "masks")
    export_fixed_size = True  # torchvision's exporter takes one size and batch 1 (pytorch/vision#2311)
    fixed_train_size = False  # the detector resizes each image to min_size/max_size, keeping its aspect ratio
    # CPU-sized: ResNet-18-FPN with group norm (trains from scratch with batches of 2), small images, and fewer
    # proposals and sampled RoIs than torchvision's defaults (2000 / 512), which makes an iteration 2x cheaper
    default_model = {
        "name": "maskrcnn",
        "backbone": "resnet18_fpn",
        "norm": "group",
        "min_size": 256,
        "max_size": 416,
        "box_batch_size_per_image": 128,
        "rpn_post_nms_top_n_train": 500,
        "rpn_post_nms_top_n_test": 300,
    }

    @classmethod
    def validate(cls, cfg: dict[str, Any]) -> None:
        super().validate(cfg)
        if cfg["data"].get("resize", "squash") != "squash" or cfg["eval"].get("mode") not in (None, "resize"):
            key = "data.resize" if cfg["data"].get("resize", "squash") != "squash" else "eval.mode"
            raise ConfigError(f"config key '{key}' is {cfg[key.split('.')[0]][key.split('.')[1]]!r}, but Mask R-CNN "
                              "scales images itself (model.min_size / model.max_size); expected it unset")

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        losses = model([i.to(self.device, non_blocking=True) for i in images], to_device(targets, self.device))
        total = sum(losses.values())
        return total, {k: float(v.detach()) for k, v in losses.items()}

    def forward(self, model: nn.Module, images: Any, tta: bool = False) -> list[dict[str, torch.Tensor]]:
        """Detections in each input image's own pixels (torchvision resizes internally and maps back).

        One image per network call, as torchvision's and detectron2's evaluations do: in a batch, torchvision pads
        every image to the largest one's size, and the padding changes the features near an image's border (and,
        with group norm, the whole image's statistics), so an image's detections would depend on which other
        images share its batch. The evaluation and ``tools/predict.py`` give the same detections for an image
        whatever the batch size (tests/test_models.py, tests/test_predict.py)."""
        if tta:
            raise ValueError("Mask R-CNN has no test-time augmentation (supports_tta is False)")
        outputs = [model([image.to(self.device, non_blocking=True)])[0] for image in images]
        return [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]

    def postprocess(self, outputs: list[dict[str, torch.Tensor]], index: int, size: tuple[int, int],
                    probs: bool = False) -> dict[str, torch.Tensor]:
        return outputs[index]

    def size_multiple(self, model: nn.Module) -> int | None:
        return None  # the export takes the one size it was made at

    def export_module(self, model: nn.Module) -> nn.Module:
        return _Detections(model)
