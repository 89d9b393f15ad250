"""A toy dataset format and a toy instance method, defined outside the package and registered from here: what a
contributor writes to add either (docs/extending.md walks through the real ones). Loaded by the unchanged tools
with ``SEG_EXT_PLUGINS=toy_plugin`` (this folder on ``PYTHONPATH``).

* Format ``toyshapes``: ``shapes.json`` (``classes`` and, per image, its shapes: ``disc`` ``[cx, cy, r]`` or
  ``box`` ``[x0, y0, x1, y1]`` with a ``class``) beside ``pictures/<id>.png``. It serves semantic masks (the
  shapes painted with their class; background 0) and instances (each shape).
* Method ``blobs``: a two-layer convolutional network that predicts the foreground at ``blobs.input_size``;
  instances are the connected components of the foreground, scored by their mean probability.
* Metric ``toy_error``: the share of wrongly classified pixels, for every semantic run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from seg_ext.config import pixels
from seg_ext.data.base import Format, InstanceSource, SemanticSource
from seg_ext.data.coco import CocoInstanceDataset, image_tensor
from seg_ext.data.formats import register_format
from seg_ext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg_ext.evaluation import Evaluator, register_evaluator
from seg_ext.methods import register_method
from seg_ext.methods.instance import InstanceMethod


# ---- the format ----------------------------------------------------------------------------------------------


def _draw(shape: dict[str, Any], h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    if shape["kind"] == "disc":
        cx, cy, r = shape["at"]
        return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)
    x0, y0, x1, y1 = shape["at"]
    return ((xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)).astype(np.uint8)


class ToyShapesFormat(Format):
    name = "toyshapes"
    layout = "shapes.json + pictures/ (toy shapes)"
    serves = ("semantic", "instance")
    default_split = (2, 2)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> bool:
        return (root / "shapes.json").is_file() and (root / "pictures").is_dir()

    @staticmethod
    def _read(root: Path) -> dict[str, Any]:
        return json.loads((root / "shapes.json").read_text())

    def semantic_source(self, root: Path, ignore_index: int = 255) -> SemanticSource:
        spec = self._read(root)
        classes = ["background", *spec["classes"]]

        def read(path: Path, num_classes: int, ignore: int) -> np.ndarray:
            image_id = path.name.split("#", 1)[1]
            h, w = spec["images"][image_id]["size"]
            mask = np.zeros((h, w), np.uint8)
            for shape in spec["images"][image_id]["shapes"]:
                mask[_draw(shape, h, w) > 0] = classes.index(shape["class"])
            return mask

        # the label "file" of an image is its entry in shapes.json, named so the reader finds it
        items = {i: (root / "pictures" / f"{i}.png", root / f"shapes.json#{i}") for i in sorted(spec["images"])}
        return SemanticSource(root, self.name, classes, items, read, None, ignore_index, check_sizes_eagerly=False,
                              default_split=self.default_split)

    def instance_source(self, root: Path) -> InstanceSource:
        spec = self._read(root)
        categories = [{"id": k + 1, "name": c} for k, c in enumerate(spec["classes"])]

        def read(image_id: str) -> tuple[np.ndarray, np.ndarray]:
            h, w = spec["images"][image_id]["size"]
            shapes = spec["images"][image_id]["shapes"]
            masks = np.stack([_draw(s, h, w) for s in shapes]) if shapes else np.zeros((0, h, w), np.uint8)
            return masks, np.array([spec["classes"].index(s["class"]) + 1 for s in shapes], np.int64)

        items = {i: root / "pictures" / f"{i}.png" for i in sorted(spec["images"])}
        return InstanceSource(root, "toy shapes", categories, items, read, self.default_split)


def write_toy_shapes(root: Path, count: int = 12, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """A toy dataset: grey pictures with bright discs and dark boxes, each shape an instance of its class."""
    rng = np.random.default_rng(seed)
    h, w = size
    (root / "pictures").mkdir(parents=True)
    spec: dict[str, Any] = {"classes": ["disc", "box"], "images": {}}
    for i in range(count):
        image = np.full((h, w, 3), 120, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
        shapes = []
        for k in range(int(rng.integers(1, 4))):
            if k % 2 == 0:
                cx, cy, r = int(rng.integers(8, w - 8)), int(rng.integers(8, h - 8)), int(rng.integers(4, 8))
                shape = {"kind": "disc", "class": "disc", "at": [cx, cy, r]}
                image[_draw(shape, h, w) > 0] = (230, 230, 40)
            else:
                x0, y0 = int(rng.integers(0, w - 14)), int(rng.integers(0, h - 14))
                shape = {"kind": "box", "class": "box", "at": [x0, y0, x0 + int(rng.integers(6, 14)), y0 + int(rng.integers(6, 14))]}
                image[_draw(shape, h, w) > 0] = (30, 30, 160)
            shapes.append(shape)
        name = f"toy{i:03d}"
        Image.fromarray(image).save(root / "pictures" / f"{name}.png")
        spec["images"][name] = {"size": [h, w], "shapes": shapes}
    (root / "shapes.json").write_text(json.dumps(spec))
    return root


# ---- the method ----------------------------------------------------------------------------------------------


class BlobNet(nn.Module):
    """Two 3x3 convolutions and a 1x1 head: foreground logits (2 channels) at the input's size."""

    size_multiple = 1

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(width, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _network_input(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return (image - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


class ForegroundDataset(Dataset):
    """A COCO split at the network's size with the foreground as the target."""

    def __init__(self, base: CocoInstanceDataset, size: tuple[int, int]) -> None:
        self.base, self.size = base, size
        self.coco, self.category_of = base.coco, base.category_of
        self.class_names, self.num_classes, self.transform = base.class_names, base.num_classes, base.transform

    def __len__(self) -> int:
        return len(self.base)

    def raw(self, index: int):
        return self.base.raw(index)

    def image_info(self, index: int):
        return self.base.image_info(index)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        fg = target["masks"].amax(0, keepdim=True).float() if len(target["masks"]) else torch.zeros(1, *image.shape[1:])
        fg = F.interpolate(fg[None], size=self.size, mode="nearest")[0, 0].long()
        info = self.base.image_info(index)
        return _network_input(image, self.size), {"foreground": fg, "image_id": target["image_id"],
                                                  "orig_size": (int(info["height"]), int(info["width"]))}


class BlobsMethod(InstanceMethod):
    name = "blobs"
    title = "toy blobs"
    models = {"blobnet": BlobNet}
    onnx_outputs = ("foreground",)
    network_keys = ("blobs.input_size",)
    default_model = {"name": "blobnet", "width": 8}
    default_changes = {"train": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0, "warmup_iters": 0, "epochs": 3},
                       "data": {"batch_size": 4}}
    config_blocks = {"blobs": {"input_size": [48, 64], "threshold": 0.5}}

    @classmethod
    def validate(cls, cfg: dict[str, Any]) -> None:
        super().validate(cfg)
        pixels(cfg["blobs"]["input_size"], "blobs.input_size", minimum=8)

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.cfg["blobs"]["input_size"]
        return int(h), int(w)

    def model_arguments(self, num_classes: int) -> dict[str, Any]:
        return {}

    def dataset(self, base: CocoInstanceDataset, train: bool) -> Dataset:
        return ForegroundDataset(base, self.input_size)

    def collate(self, batch):
        images, targets = zip(*batch)
        return torch.stack(images), list(targets)

    def loss_step(self, model: nn.Module, batch: Any):
        images, targets = batch
        logits = model(images.to(self.device))
        target = torch.stack([t["foreground"] for t in targets]).to(self.device)
        loss = F.cross_entropy(logits.float(), target)
        return loss, {"loss_foreground": float(loss.detach())}

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        return _network_input(image_tensor(image), self.input_size)

    def forward(self, model: nn.Module, images: Any, tta: bool = False) -> np.ndarray:
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        probs = torch.softmax(model(images.to(self.device)).float(), 1)[:, 1]
        if tta:
            probs = (probs + torch.softmax(model(images.flip(-1).to(self.device)).float(), 1)[:, 1].flip(-1)) / 2
        return probs.cpu().numpy()

    def postprocess(self, outputs: np.ndarray, index: int, size: tuple[int, int], probs: bool = False) -> dict[str, torch.Tensor]:
        prob = torch.from_numpy(outputs[index])[None, None]
        prob = F.interpolate(prob, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()
        labels, count = ndimage.label(prob >= self.cfg["blobs"]["threshold"])
        masks = (labels[None] == np.arange(1, count + 1).reshape(-1, 1, 1)).astype(np.uint8)
        boxes = np.zeros((count, 4), np.float32)
        scores = np.zeros(count, np.float32)
        for i, m in enumerate(masks):
            ys, xs = np.nonzero(m)
            boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            scores[i] = prob[m > 0].mean()
        return {"boxes": torch.from_numpy(boxes), "labels": torch.ones(count, dtype=torch.int64),
                "scores": torch.from_numpy(scores), "masks": torch.from_numpy(masks)}


# ---- the metric ----------------------------------------------------------------------------------------------


class ToyErrorRate(Evaluator):
    """The share of pixels (not ignored) whose predicted class is wrong, in percent."""

    task = "semantic"
    summary = ("toy/error",)

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.wrong, self.total = 0, 0

    def process(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        valid = target != self.ignore_index
        self.wrong += int(((logits.argmax(1) != target) & valid).sum())
        self.total += int(valid.sum())

    def process_probs(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.process(probs, target)

    def evaluate(self) -> dict[str, float]:
        return {"toy/error": 100.0 * self.wrong / max(self.total, 1)}

    def combine(self) -> None:
        from seg_ext import distributed

        self.wrong, self.total = (int(v) for v in distributed.all_reduce([float(self.wrong), float(self.total)]))

    @classmethod
    def comparison_keys(cls, metrics: dict[str, Any]) -> list[str]:
        return ["toy/error"] if "toy/error" in metrics else []

    @classmethod
    def report(cls, report: Any, summary: dict[str, Any]) -> None:
        report.heading("Toy error rate")
        report.table(["split", "error %"], [[s, summary[s]["toy/error"]] for s in ("val", "test") if s in summary])


register_format(ToyShapesFormat)
register_method(BlobsMethod)
register_evaluator("toy_error", ToyErrorRate)
