"""The Penn-Fudan pedestrian dataset: both tasks (every pedestrian as ``person`` for semantic segmentation;
each pedestrian an instance), and its conversion to COCO instance files.

Layout: ``PNGImages/<id>.png`` (RGB), ``PedMasks/<id>_mask.png`` (8-bit: 0 background, 1..N pedestrian N).
The conversion writes ``instances_{train,val,test}.json`` with one category, ``person``; every pedestrian
becomes an annotation with an RLE ``segmentation`` (pycocotools), ``area`` = its pixel count, a tight ``bbox``
from its mask (COCO ``[x, y, width, height]``) and ``iscrowd`` 0. ``file_name`` is relative to the dataset
folder (``PNGImages/<id>.png``), which is the image root for the COCO dataset reader. Default split: 15 val and
50 test images (torchvision's tutorial keeps 50 for test), the same images for both tasks with the same seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seg_ext.data.base import (
    Format, InstanceSource, SemanticSource, images_in, instances_to_coco, pair_items, require_dir, tight_bbox,  # noqa: F401
    write_coco_splits,
)
from seg_ext.data.files import image_size, read_label_png
from seg_ext.errors import DatasetError

PERSON_CATEGORY = {"id": 1, "name": "person", "supercategory": "person"}
PENNFUDAN_CLASSES = ["background", "person"]
DEFAULT_VAL, DEFAULT_TEST = 15, 50


def pennfudan_mask(path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """Penn-Fudan instance mask (0 background, 1..N pedestrians) as background/person."""
    return (read_label_png(path) > 0).astype(np.uint8)


def list_pennfudan(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(image id, image path, mask path) of every image, sorted, each checked to have a mask of its size.

    Raises:
        DatasetError: a folder is missing, an image has no mask, or a mask's size differs from its image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    for sub in ("PNGImages", "PedMasks"):
        if not (root / sub).is_dir():
            raise DatasetError(f"dataset folder {root} has no {sub}/ folder; expected the Penn-Fudan layout (PNGImages/, PedMasks/)")
    images = sorted(p for p in (root / "PNGImages").iterdir() if p.suffix.lower() == ".png")
    if not images:
        raise DatasetError(f"{root / 'PNGImages'} holds no .png images")
    records = []
    for image_path in images:
        mask_path = root / "PedMasks" / f"{image_path.stem}_mask.png"
        if not mask_path.is_file():
            raise DatasetError(f"image {image_path} has no mask; expected {mask_path}")
        ih, iw = image_size(image_path)
        mh, mw = image_size(mask_path)
        if (ih, iw) != (mh, mw):
            raise DatasetError(f"mask {mask_path} is {mw}x{mh} but image {image_path} is {iw}x{ih}; expected the same size")
        records.append((image_path.stem, image_path, mask_path))
    return records


def instance_masks(mask_path: Path) -> tuple[np.ndarray, list[int]]:
    """Binary masks of the pedestrians of one PedMasks file. Shape: (N, H, W) uint8, with their ids."""
    label = read_label_png(mask_path)
    ids = [int(i) for i in np.unique(label) if i != 0]
    if not ids:
        return np.zeros((0, *label.shape), np.uint8), []
    return (label[None] == np.array(ids)[:, None, None]).astype(np.uint8), ids


class PennFudanFormat(Format):
    name = "pennfudan"
    layout = "PNGImages/ + PedMasks/ (Penn-Fudan)"
    serves = ("semantic", "instance")
    default_split = (DEFAULT_VAL, DEFAULT_TEST)
    title = "Penn-Fudan pedestrians"

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        return 2 if (root / "PNGImages").is_dir() and (root / "PedMasks").is_dir() else 0

    def semantic_source(self, root: Path, ignore_index: int = 255) -> SemanticSource:
        require_dir(root / "PNGImages", "the Penn-Fudan images")
        require_dir(root / "PedMasks", "the Penn-Fudan masks")
        items = pair_items(images_in(root / "PNGImages"), lambda i: root / "PedMasks" / f"{i}_mask.png", root)
        return SemanticSource(root, self.name, list(PENNFUDAN_CLASSES), items, pennfudan_mask, None, ignore_index,
                              default_split=self.default_split)

    def instance_source(self, root: Path) -> InstanceSource:
        records = list_pennfudan(root)
        masks_of = {image_id: mask_path for image_id, _, mask_path in records}

        def read(image_id: str) -> tuple[np.ndarray, np.ndarray]:
            masks, _ = instance_masks(masks_of[image_id])
            return masks, np.full(len(masks), PERSON_CATEGORY["id"], np.int64)

        return InstanceSource(Path(root), self.title, [dict(PERSON_CATEGORY)],
                              {image_id: image_path for image_id, image_path, _ in records}, read, self.default_split)


def pennfudan_to_coco(root: str | Path, seed: int = 0, val: float = DEFAULT_VAL, test: float = DEFAULT_TEST
                      ) -> dict[str, dict[str, Any]]:
    """COCO instance dicts for the train/val/test splits of a Penn-Fudan folder (image ids: the 1-based position
    of the image in the sorted list, the same in every split file)."""
    return instances_to_coco(PennFudanFormat().instance_source(Path(root)), seed, val, test)


def convert_pennfudan(root: str | Path, output_dir: str | Path, seed: int = 0, val: float = DEFAULT_VAL,
                      test: float = DEFAULT_TEST) -> dict[str, Path]:
    """Write ``instances_{train,val,test}.json`` for a Penn-Fudan folder; return their paths by split."""
    return write_coco_splits(PennFudanFormat().instance_source(Path(root)), output_dir, seed, val, test)
