"""What annotation tools export, in one shape: per image, a list of shapes (a class, a geometry or a mask, an
instance key, a drawing order), and how both tasks are read from it.

A format of this kind (LabelMe, CVAT, YOLO, COCO, ...) is an :class:`AnnotatedFormat`: it parses its files into an
:class:`AnnotationSet` and gets both tasks from it:

* semantic masks: the shapes painted in drawing order (``z``, then file order: later shapes over earlier ones),
  class 0 the background, ignore regions 255;
* instances: the shapes with the same (class, ``group``) form one instance (``group`` None: the shape is its own
  instance), ignore regions left out with a warning that counts them (they are no object), crowd regions kept as
  crowd (ignored in training and by COCO's evaluation).

Polygons, rectangles and circles are drawn the way LabelMe draws them (PIL's ``ImageDraw`` with the outline
filled), so a class map equals LabelMe's own VOC export pixel for pixel.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
from PIL import Image, ImageDraw

from seg_ext.data.base import Format, InstanceSource, SemanticSource
from seg_ext.data.files import image_size
from seg_ext.errors import DatasetError

logger = logging.getLogger(__name__)

IGNORE = 255
BACKGROUND_NAMES = ("_background_", "background", "__background__")
SUBSET_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test"}


@dataclass
class Shape:
    """One annotated region of an image.

    Attributes:
        label: its class name.
        kind: ``polygon``, ``rectangle`` (two corners), ``circle`` (centre and a point on it) or ``mask``.
        points: pixel coordinates (x, y) of the geometry.
        mask: a full-image boolean mask (``kind`` mask), or a function of (height, width) giving one.
        group: instance key: shapes with the same (label, group) form one instance; None: its own instance.
        z: drawing order (higher over lower; the same: file order).
        ignore: an ignore region (255 in class maps; no instance).
        crowd: a crowd region (COCO ``iscrowd``): ignore in class maps, a crowd annotation as an instance.
        where: how the error messages name it (file and shape index).
    """

    label: str
    kind: str
    points: list[tuple[float, float]] = field(default_factory=list)
    mask: np.ndarray | Callable[[int, int], np.ndarray] | None = None
    group: Any = None
    z: int = 0
    ignore: bool = False
    crowd: bool = False
    where: str = ""

    def draw(self, height: int, width: int) -> np.ndarray:
        """The shape as a (height, width) bool mask."""
        if self.kind == "mask":
            mask = self.mask(height, width) if callable(self.mask) else self.mask
            mask = np.asarray(mask).astype(bool)
            if mask.shape != (height, width):
                raise DatasetError(f"{self.where}: its mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                   f"{width}x{height}; expected the same size")
            return mask
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        xy = [(float(x), float(y)) for x, y in self.points]
        if self.kind == "circle":
            (cx, cy), (px, py) = xy[:2]
            r = math.hypot(cx - px, cy - py)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
        elif self.kind == "rectangle":
            (x0, y0), (x1, y1) = xy[:2]
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
        else:
            draw.polygon(xy, outline=1, fill=1)
        return np.asarray(canvas, dtype=bool)


@dataclass
class ImageAnnotation:
    """An image and its shapes. ``size`` (height, width) is what the annotation says, checked against the file."""

    image: Path
    shapes: list[Shape]
    size: tuple[int, int] | None = None
    where: str = ""

    def checked_size(self) -> tuple[int, int]:
        if not self.image.is_file():
            raise DatasetError(f"{self.where or self.image}: its image {self.image} does not exist; expected the "
                               "image file the annotation names")
        real = image_size(self.image)
        if self.size is not None and tuple(self.size) != tuple(real):
            raise DatasetError(f"{self.where}: the annotation says the image is {self.size[1]}x{self.size[0]} but "
                               f"{self.image} is {real[1]}x{real[0]}; expected the same size")
        return real


@dataclass
class AnnotationSet:
    """A dataset as an annotation format holds it.

    Attributes:
        root: the folder image paths are relative to (in COCO files written from it).
        title: the data in words (COCO files' ``info``).
        classes: the object classes in order (the background and ignore labels left out).
        images: image id -> its annotation, in order.
        splits: the dataset's own split (train/val/test -> ids), or None.
        background: the background's class name for class maps (the dataset's own spelling where it has one).
    """

    root: Path
    title: str
    classes: list[str]
    images: dict[str, ImageAnnotation]
    splits: dict[str, list[str]] | None = None
    background: str = "background"
    skipped: Counter = field(default_factory=Counter)

    def warn_skipped(self, what: str) -> None:
        """One warning per kind of skipped or changed content (lines, points, clipped shapes, ...), with its
        count: nothing is left out silently."""
        for kind, n in sorted(self.skipped.items()):
            logger.warning("%s: %d %s", what, n, kind)


def subset_splits(subset_of: dict[str, str], what: str) -> dict[str, list[str]] | None:
    """Train/val/test ids from subset names (``Train``, ``validation``, ...); None when the data has no named
    train subset (everything in one ``default`` subset, say)."""
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    unknown = set()
    for image_id, subset in subset_of.items():
        name = SUBSET_NAMES.get(str(subset).strip().lower())
        if name is None:
            unknown.add(subset)
            continue
        splits[name].append(image_id)
    if not splits["train"]:
        return None
    if unknown:
        logger.warning("%s: subset(s) %s are not train, val or test; their images are left out of the split", what,
                       ", ".join(sorted(map(str, unknown))))
    return splits


class AnnotatedFormat(Format):
    """A format whose files list shapes per image; :meth:`read` parses them, both tasks come from that."""

    serves: ClassVar[tuple[str, ...]] = ("semantic", "instance")

    def read(self, root: Path) -> AnnotationSet:
        raise NotImplementedError

    def _read(self, root: Path) -> AnnotationSet:
        data = self.read(Path(root))
        data.warn_skipped(str(root))
        if not data.images:
            raise DatasetError(f"dataset folder {root} holds no annotated image; expected {self.layout}")
        return data

    def semantic_source(self, root: Path, ignore_index: int = IGNORE) -> SemanticSource:
        data = self._read(root)
        names = [data.background, *data.classes]
        index = {name: k for k, name in enumerate(names)}

        def read(image_id: str, num_classes: int, ignore: int) -> np.ndarray:
            annotation = data.images[image_id]
            h, w = annotation.checked_size()
            mask = np.zeros((h, w), np.uint8)
            for shape in sorted(annotation.shapes, key=lambda s: s.z):  # stable: file order within a z
                drawn = shape.draw(h, w)
                mask[drawn] = ignore if (shape.ignore or shape.crowd) else index[shape.label]
            return mask

        items = {i: (a.image, i) for i, a in data.images.items()}
        return SemanticSource(data.root, self.name, names, items, read, data.splits, ignore_index,
                              check_sizes_eagerly=False, default_split=self.default_split)

    def instance_source(self, root: Path) -> InstanceSource:
        data = self._read(root)
        category = {name: k + 1 for k, name in enumerate(data.classes)}
        dropped = Counter()

        def read(image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            annotation = data.images[image_id]
            h, w = annotation.checked_size()
            instances: dict[Any, list[Any]] = {}
            for k, shape in enumerate(sorted(annotation.shapes, key=lambda s: s.z)):
                if shape.ignore:
                    dropped["ignore region(s) (no object)"] += 1
                    continue
                if shape.label == data.background:
                    dropped["shape(s) labelled as the background"] += 1
                    continue
                key = (shape.label, shape.group) if shape.group is not None else ("#", k)
                drawn = shape.draw(h, w)
                if key in instances:
                    instances[key][1] |= drawn
                else:
                    instances[key] = [shape, drawn]
            kept = [(s, m) for s, m in instances.values() if m.any()]
            if len(kept) < len(instances):
                dropped["instance(s) with no pixel in the image"] += len(instances) - len(kept)
            masks = np.stack([m for _, m in kept]).astype(np.uint8) if kept else np.zeros((0, h, w), np.uint8)
            return (masks, np.array([category[s.label] for s, _ in kept], np.int64),
                    np.array([s.crowd for s, _ in kept], bool))

        return InstanceSource(data.root, data.title, [{"id": k + 1, "name": c} for k, c in enumerate(data.classes)],
                              {i: a.image for i, a in data.images.items()}, read, self.default_split,
                              splits=data.splits, dropped=dropped)
