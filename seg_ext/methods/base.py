"""The instance-method protocol: what a way of turning images into instances must provide.

The instance task owns the data (COCO files, the augmentation), the engine, the evaluator and the report; a
method brings the rest. A new method is a subclass of :class:`InstanceMethod` in its own module plus one entry
in ``seg_ext.methods.METHODS`` (its config block); its tests come from subclassing the contract test
``tests/contracts.py::InstanceMethodContract``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from seg_ext.data.coco import CocoInstanceDataset, collate_instances, image_tensor

# what ``predict`` / ``postprocess`` return for each image: keys and dtypes (masks: (N, H, W) or (N, 1, H, W), at the image's size)
PREDICTION_KEYS = {"boxes": torch.float32, "labels": torch.int64, "scores": torch.float32}


def to_device(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Move the tensors of a list of target dicts to ``device``."""
    return [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


class InstanceMethod:
    """Base class of the instance methods.

    Attributes:
        name: the method's name (``method`` in the config, ``--method`` on the command line).
        models: model names -> builders, for the config's ``model`` block.
        device: where batches go.
    """

    name: str = ""
    supports_tta: bool = True  # forward(..., tta=True) averages with the flipped images
    models: dict[str, Callable[..., nn.Module]] = {}

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def collate(self, batch: list[Any]) -> Any:
        """Batch samples of :meth:`dataset` (default: images and targets as lists)."""
        return collate_instances(batch)

    def dataset(self, base: CocoInstanceDataset, train: bool) -> Dataset:
        """The dataset training and evaluation batches come from, on top of a COCO split (default: the split)."""
        return base

    def model_arguments(self, num_classes: int) -> dict[str, Any]:
        """What the method tells the model builder besides the config's ``model`` block."""
        return {"num_classes": num_classes}

    def loss_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a batch and its named parts (floats, for the log)."""
        raise NotImplementedError

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """The network input of one HxWx3 uint8 RGB image, as :meth:`dataset` gives it for evaluation (default:
        the image as a float tensor in [0, 1]). Runs in loader workers."""
        return image_tensor(image)

    def forward(self, model: nn.Module, images: Any, tta: bool = False) -> Any:
        """The network's outputs for a batch of prepared images (``tta``: averaged with the horizontally flipped
        images'), in whatever form :meth:`postprocess` takes."""
        raise NotImplementedError

    def postprocess(self, outputs: Any, index: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Instances of image ``index`` of a batch's :meth:`forward` outputs, at the image's own ``size`` (H, W):
        ``boxes`` (N, 4) xyxy float32, ``labels`` (N,) int64, ``scores`` (N,) float32, ``masks`` (N, H, W) or
        (N, 1, H, W) probabilities or 0/1."""
        raise NotImplementedError

    def predict(self, model: nn.Module, images: Any, sizes: Sequence[tuple[int, int]], tta: bool = False) -> list[dict[str, torch.Tensor]]:
        """Instances of each image at its own size ``sizes[i]``: :meth:`forward`, then :meth:`postprocess`. The
        one path of evaluation, the report's overlays and ``seg_ext.inference.Predictor``."""
        outputs = self.forward(model, images, tta)
        return [self.postprocess(outputs, i, tuple(size)) for i, size in enumerate(sizes)]

    def extra_panel(self, outputs: Any, index: int, size: tuple[int, int]) -> tuple[np.ndarray, str] | None:
        """An extra picture for the report's overlays from a batch's :meth:`forward` outputs (an array at
        ``size`` and its title), or None."""
        return None
