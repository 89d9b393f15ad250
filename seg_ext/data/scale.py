"""Scaling an image (and its masks and boxes) by a factor or to a short or long side, keeping its aspect ratio:
``data.resize: scale`` (see :mod:`seg_ext.dense`). Training and prediction scale with the same function, so the
network sees the same pixels in both."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from seg_ext.errors import ConfigError

_SIDE = re.compile(r"^(short|long):(\d+)$")


@dataclass(frozen=True)
class Scale:
    """How an image is scaled for the network, keeping its aspect ratio: by ``factor``, or so that its ``short``
    or ``long`` side gets ``side`` pixels."""

    kind: str  # factor | short | long
    value: float

    @classmethod
    def parse(cls, value: Any, key: str = "data.scale") -> "Scale":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0 < float(value) <= 16:
                raise ConfigError(f"config key '{key}' is {value}; expected a factor in (0, 16], or short:N / long:N")
            return cls("factor", float(value))
        match = _SIDE.match(str(value).strip())
        if not match or int(match.group(2)) < 1:
            raise ConfigError(f"config key '{key}' is {value!r}; expected a factor such as 0.5, or short:N / long:N "
                              "(the short or long side in pixels, e.g. short:384)")
        return cls(match.group(1), float(match.group(2)))

    def factor(self, height: int, width: int) -> float:
        if self.kind == "factor":
            return self.value
        side = min(height, width) if self.kind == "short" else max(height, width)
        return self.value / max(side, 1)

    def size(self, height: int, width: int) -> tuple[int, int]:
        """The scaled (H, W), at least 1 pixel each."""
        f = self.factor(height, width)
        return max(1, int(round(height * f))), max(1, int(round(width * f)))

    def __str__(self) -> str:
        return f"{self.value:g}" if self.kind == "factor" else f"{self.kind}:{int(self.value)}"


def _interpolation(old: tuple[int, int], new: tuple[int, int]) -> int:
    """Area averaging when shrinking (no aliasing), bilinear when enlarging."""
    return cv2.INTER_AREA if new[0] * new[1] < old[0] * old[1] else cv2.INTER_LINEAR


def scale_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An HxWx3 uint8 image at ``size`` (H, W)."""
    old = image.shape[:2]
    if tuple(old) == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=_interpolation(old, size))


class ScaledPipeline:
    """``data.resize: scale`` for training: each image (with its class mask, or its instance masks and boxes)
    scaled by ``scale`` (class masks nearest; instance masks area-averaged, then the majority), then ``pipeline``
    (albumentations: jitter, crop, flip). Seeded like the pipeline (``set_random_seed``)."""

    def __init__(self, scale: Scale, pipeline: Any) -> None:
        self.scale, self.pipeline = scale, pipeline

    def set_random_seed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, **data: Any) -> dict[str, Any]:
        image = data["image"]
        old = image.shape[:2]
        size = self.scale.size(*old)
        if tuple(size) != tuple(old):
            data["image"] = scale_image(image, size)
            if data.get("mask") is not None:
                data["mask"] = cv2.resize(data["mask"], (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
            if data.get("masks") is not None:
                how = _interpolation(old, size)
                data["masks"] = [(cv2.resize(m.astype(np.float32), (size[1], size[0]), interpolation=how) >= 0.5)
                                 .astype(np.uint8) for m in data["masks"]]
            if data.get("bboxes") is not None and len(data["bboxes"]):
                fy, fx = size[0] / old[0], size[1] / old[1]
                boxes = np.asarray(data["bboxes"], np.float32).reshape(-1, 4) * np.array([fx, fy, fx, fy], np.float32)
                data["bboxes"] = np.clip(boxes, 0, [size[1], size[0], size[1], size[0]])
        return self.pipeline(**data)


def stack_or_list(images: Any) -> torch.Tensor | list[torch.Tensor]:
    """A batch of images stacked when they share a size (squashed, or training crops), else a list (each image at
    the training scale, run one by one)."""
    images = list(images)
    return torch.stack(images) if all(i.shape == images[0].shape for i in images) else images
