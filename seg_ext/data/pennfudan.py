"""The Penn-Fudan pedestrian dataset: reading its instances, and converting it to COCO instance files.

Layout: ``PNGImages/<id>.png`` (RGB), ``PedMasks/<id>_mask.png`` (8-bit: 0 background, 1..N pedestrian N).
The conversion writes ``instances_{train,val,test}.json`` with one category, ``person``; every pedestrian
becomes an annotation with an RLE ``segmentation`` (pycocotools), ``area`` = its pixel count, a tight ``bbox``
from its mask (COCO ``[x, y, width, height]``) and ``iscrowd`` 0. ``file_name`` is relative to the dataset
folder (``PNGImages/<id>.png``), which is the image root for the COCO dataset reader.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from seg_ext.data.coco import masks_to_rles
from seg_ext.data.files import image_size, read_label_png
from seg_ext.data.semantic import make_splits
from seg_ext.errors import DatasetError

logger = logging.getLogger(__name__)

PERSON_CATEGORY = {"id": 1, "name": "person", "supercategory": "person"}
DEFAULT_VAL, DEFAULT_TEST = 15, 50  # the same split as Penn-Fudan semantic segmentation for the same seed


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


def tight_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, width, height]`` of the pixels of a binary mask (a pixel is 1x1)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def pennfudan_to_coco(
    root: str | Path, seed: int = 0, val: float = DEFAULT_VAL, test: float = DEFAULT_TEST
) -> dict[str, dict[str, Any]]:
    """COCO instance dicts for the train/val/test splits of a Penn-Fudan folder.

    Image ids are the 1-based position of the image in the sorted list, the same in every split file.
    """
    records = list_pennfudan(root)
    root = Path(root)
    splits = make_splits([r[0] for r in records], val, test, seed)
    split_of = {image_id: split for split, ids in splits.items() for image_id in ids}
    out = {
        split: {
            "info": {"description": f"Penn-Fudan pedestrians ({split}), converted by seg_ext", "seed": seed},
            "images": [],
            "annotations": [],
            "categories": [dict(PERSON_CATEGORY)],
        }
        for split in splits
    }
    for number, (image_id, image_path, mask_path) in enumerate(records, start=1):
        coco = out[split_of[image_id]]
        masks, _ = instance_masks(mask_path)
        h, w = masks.shape[1:] if len(masks) else image_size(mask_path)
        coco["images"].append(
            {"id": number, "file_name": f"PNGImages/{image_path.name}", "width": int(w), "height": int(h)}
        )
        for m, rle in zip(masks, masks_to_rles(masks)):
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": number,
                    "category_id": PERSON_CATEGORY["id"],
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": tight_bbox(m),
                    "iscrowd": 0,
                }
            )
    return out


def convert_pennfudan(
    root: str | Path, output_dir: str | Path, seed: int = 0, val: float = DEFAULT_VAL, test: float = DEFAULT_TEST
) -> dict[str, Path]:
    """Write ``instances_{train,val,test}.json`` for a Penn-Fudan folder; return their paths by split."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, coco in pennfudan_to_coco(root, seed, val, test).items():
        path = output_dir / f"instances_{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(coco))
        tmp.replace(path)
        paths[split] = path
        logger.info("%s: %d images, %d pedestrians", path, len(coco["images"]), len(coco["annotations"]))
    return paths
