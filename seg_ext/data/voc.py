"""Pascal VOC segmentation: ``JPEGImages/``, ``SegmentationClass/`` (class masks) and optionally
``SegmentationObject/`` (instance masks) and ``ImageSets/Segmentation/{train,val,trainval,test}.txt`` (the split).

* Masks are palette PNGs (the pixel value is the class index) or RGB PNGs coloured with the VOC colormap (mapped
  back to indices). 255, or the border colour (224, 224, 192), is ignore; a colour the colormap does not have is
  an error naming the file and the pixel.
* Classes: ``class_names.txt`` (labelme's VOC export writes one; line number = index) or the 21 VOC names.
* An image without a mask (VOC lists such images in ``ImageSets``) is left out with a warning that counts them.
* Instances: each value of ``SegmentationObject`` (1..254) is one object; its class is the class mask's most
  frequent class under it. Without ``SegmentationObject/`` the folder holds no instances.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from seg_ext.data.base import SPLITS, Format, InstanceSource, SemanticSource, check_mask_values, images_in
from seg_ext.errors import DatasetError

logger = logging.getLogger(__name__)

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
BORDER = (224, 224, 192)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC colour of each index (the bit-interleaving palette VOC's devkit and labelme use). Shape: (n, 3)."""
    colours = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def read_indexed(path: Path, colours: np.ndarray | None = None, what: str = "mask") -> np.ndarray:
    """A mask PNG as indices: a palette or single-channel PNG as its values; an RGB one through ``colours``
    (default: the VOC colormap), the border colour as 255.

    Raises:
        DatasetError: a colour the colormap does not have, naming the file, the colour and a pixel.
    """
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "L", "I", "I;16", "1"):
                return np.asarray(image).astype(np.int64)
            rgb = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {what} file {path} ({exc.__class__.__name__}); expected a PNG") from None
    table = _voc_table() if colours is None else _colour_table(colours)
    return colours_to_classes(rgb, table, lambda colour, x, y: (
        f"{what} file {path} has colour {colour} at pixel ({x}, {y}), which the VOC colormap does not have; "
        "expected class colours (or a palette PNG of class indices)"))


def _colour_table(colours: np.ndarray) -> dict[tuple[int, int, int], int]:
    """Colour -> index of the first 255 colours, the border colour as 255."""
    table = {tuple(int(v) for v in c): k for k, c in enumerate(colours[:255])}
    table.setdefault(BORDER, 255)
    return table


@functools.lru_cache(maxsize=1)
def _voc_table() -> dict[tuple[int, int, int], int]:
    """The VOC colormap's table, made once (masks are read for every sample of every epoch)."""
    return _colour_table(voc_colormap())


def colours_to_classes(rgb: np.ndarray, table: dict[tuple[int, int, int], int],
                       unknown: Callable[[tuple[int, int, int], int, int], str]) -> np.ndarray:
    """An (H, W, 3) colour mask as class indices through ``table`` (colour -> index).

    Raises:
        DatasetError: with the sentence ``unknown(colour, x, y)`` gives for the first colour the table lacks.
    """
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    values, inverse = np.unique(codes, return_inverse=True)
    out = np.empty(len(values), np.int64)
    for k, code in enumerate(values):
        colour = (int(code) >> 16, (int(code) >> 8) & 255, int(code) & 255)
        if colour not in table:
            y, x = np.argwhere(codes == code)[0]
            raise DatasetError(unknown(colour, int(x), int(y)))
        out[k] = table[colour]
    return out[inverse].reshape(codes.shape)


class VocFormat(Format):
    name = "voc"
    layout = "JPEGImages/ + SegmentationClass/ (Pascal VOC segmentation)"
    serves = ("semantic", "instance")
    default_split = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        if not ((root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir()):
            return 0
        # CVAT's segmentation-mask export (colour masks) has labelmap.txt and no class_names.txt (labelme's VOC export's)
        return 1 if (root / "labelmap.txt").is_file() and not (root / "class_names.txt").is_file() else 2

    def _classes(self, root: Path) -> list[str]:
        path = root / "class_names.txt"
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return list(VOC_CLASSES)

    def _items(self, root: Path, folder: str) -> tuple[dict[str, tuple[Path, Path]], dict[str, list[str]] | None]:
        images = images_in(root / "JPEGImages")
        lists = root / "ImageSets" / "Segmentation"
        splits = None
        if lists.is_dir():
            def listed_ids(name: str) -> list[str]:
                return [line.split()[0] for line in (lists / f"{name}.txt").read_text().splitlines() if line.strip()]

            splits = {split: listed_ids(split) for split in SPLITS if (lists / f"{split}.txt").is_file()}
            if "train" not in splits and (lists / "trainval.txt").is_file():
                splits["train"] = listed_ids("trainval")
            listed = [i for ids in splits.values() for i in ids]
            missing = [i for i in listed if i not in images]
            if missing:
                raise DatasetError(f"{lists} lists image {missing[0]!r}, which JPEGImages/ does not have")
        items = {i: (p, root / folder / f"{i}.png") for i, p in images.items() if (root / folder / f"{i}.png").is_file()}
        unmasked = [i for i in (listed if splits else images) if i not in items]
        if unmasked:
            logger.warning("%s: %d listed image(s) have no mask in %s/ and are left out (e.g. %s)", root, len(unmasked),
                           folder, unmasked[0])
        if splits is not None:
            splits = {s: [i for i in ids if i in items] for s, ids in splits.items()}
            splits = splits if splits.get("train") else None
        if not items:
            raise DatasetError(f"dataset folder {root} has no image with a mask in {folder}/; expected <id>.png masks")
        return items, splits

    def semantic_source(self, root: Path, ignore_index: int = 255) -> SemanticSource:
        classes = self._classes(root)
        items, splits = self._items(root, "SegmentationClass")

        def read(path: Path, num_classes: int, ignore: int) -> np.ndarray:
            mask = check_mask_values(read_indexed(path), path, num_classes, 255)  # VOC's void is 255
            return np.where(mask == 255, ignore, mask).astype(np.uint8)

        return SemanticSource(root, self.name, classes, items, read, splits, ignore_index, check_sizes_eagerly=False,
                              default_split=self.default_split)

    def instance_source(self, root: Path) -> InstanceSource:
        if not (root / "SegmentationObject").is_dir():
            raise DatasetError(f"dataset folder {root} has no SegmentationObject/ folder, so it holds no instances; "
                               "train a semantic model on it (tools/train_semantic.py)")
        classes = self._classes(root)
        objects, splits = self._items(root, "SegmentationObject")
        classes_of = {i: root / "SegmentationClass" / f"{i}.png" for i in objects}

        def read(image_id: str):
            ids = read_indexed(objects[image_id][1], what="object mask")
            cls = read_indexed(classes_of[image_id], what="class mask")
            if ids.shape != cls.shape:
                raise DatasetError(f"object mask {objects[image_id][1]} and class mask {classes_of[image_id]} differ in "
                                   "size; expected the same")
            values = [int(v) for v in np.unique(ids) if 0 < v < 255]
            masks = np.stack([ids == v for v in values]).astype(np.uint8) if values else np.zeros((0, *ids.shape), np.uint8)
            labels = []
            for m in masks.astype(bool):
                under = cls[m]
                under = under[(under > 0) & (under < 255)]
                if not under.size:
                    raise DatasetError(f"object mask {objects[image_id][1]} has an object over no class in "
                                       f"{classes_of[image_id]}; expected its class under it")
                labels.append(int(np.bincount(under).argmax()))
            return masks, np.array(labels, np.int64)

        categories = [{"id": k, "name": name} for k, name in enumerate(classes) if k > 0]
        return InstanceSource(root, "Pascal VOC annotations", categories, {i: p for i, (p, _) in objects.items()}, read,
                              self.default_split, splits=splits)
