"""COCO instance data: the ``coco`` format (any COCO instances files + their image folder, named by
``data.train_json`` / ``data.val_json`` / ``data.test_json``) and the dataset every instance method reads,
yielding what torchvision's detection models take."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from seg_ext.data.annotations import BACKGROUND_NAMES, AnnotatedFormat, AnnotationSet, ImageAnnotation, Shape, subset_splits
from seg_ext.data.base import SPLITS, SplitRequest, masks_to_rles  # noqa: F401  (re-exported)
from seg_ext.data.files import read_image, read_json
from seg_ext.errors import ConfigError, DatasetError
from seg_ext.io import write_json

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("id", "file_name", "width", "height")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "segmentation")


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read and check a COCO instances file.

    Raises:
        DatasetError: the file is missing, not JSON, lacks a required key, or an annotation points at an unknown
            image or category. The message names the file and the first offending entry.
    """
    path = Path(path)
    data = read_json(path, "COCO file", "a COCO instances file (images, annotations, categories)", dict)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"COCO file {path} has no '{key}' list; expected images, annotations and categories")
    for i, image in enumerate(data["images"]):
        missing = [k for k in IMAGE_KEYS if k not in image]
        if missing:
            raise DatasetError(f"COCO file {path}: images[{i}] has no '{missing[0]}'; expected {', '.join(IMAGE_KEYS)}")
    for i, cat in enumerate(data["categories"]):
        if "id" not in cat or "name" not in cat:
            raise DatasetError(f"COCO file {path}: categories[{i}] needs 'id' and 'name'")
    image_ids = {image["id"] for image in data["images"]}
    cat_ids = {cat["id"] for cat in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in ANNOTATION_KEYS if k not in ann]
        if missing:
            raise DatasetError(f"COCO file {path}: annotations[{i}] has no '{missing[0]}'; expected {', '.join(ANNOTATION_KEYS)}")
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"COCO file {path}: annotation {ann['id']} points at image_id {ann['image_id']}, which is not in images")
        if ann["category_id"] not in cat_ids:
            raise DatasetError(f"COCO file {path}: annotation {ann['id']} has category_id {ann['category_id']}, which is not in categories")
        ann.setdefault("iscrowd", 0)
    return data


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO index over an already loaded dict (quietly)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoInstanceDataset(Dataset):
    """Images and instance annotations of one COCO file.

    ``__getitem__`` returns ``(image, target)``: ``image`` a float tensor (3, H, W) in [0, 1] and ``target`` a
    dict with ``boxes`` (N, 4) float xyxy, ``labels`` (N,) int64 (1..K, 0 is background), ``masks`` (N, H, W)
    uint8, ``image_id`` (the COCO id), ``area``, ``iscrowd``. Crowd annotations are not training targets.
    Annotations with a box under ``min_box_size`` pixels wide or high are dropped, with a warning that counts them.

    Args:
        json_path: the COCO instances file.
        image_root: folder that ``file_name`` is relative to.
        transform: from ``build_instance_transforms`` (or None).
    """

    def __init__(
        self, json_path: str | Path, image_root: str | Path, transform: Callable | None = None, min_box_size: float = 1.0
    ) -> None:
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        self.transform = transform
        data = load_coco_json(self.json_path)
        kept, dropped = [], 0
        for ann in data["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w < min_box_size or h < min_box_size:
                dropped += 1
                continue
            kept.append(ann)
        if dropped:
            logger.warning("%s: dropped %d annotation(s) with degenerate boxes (under %g px)", self.json_path, dropped, min_box_size)
        data["annotations"] = kept
        self.dropped = dropped
        self.coco = coco_from_dict(data)
        self.ids = sorted(self.coco.imgs)
        self.cat_ids = sorted(self.coco.cats)
        self.label_of = {cat_id: i + 1 for i, cat_id in enumerate(self.cat_ids)}
        self.category_of = {label: cat_id for cat_id, label in self.label_of.items()}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.num_classes = len(self.cat_ids) + 1  # with background

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict[str, Any]:
        return self.coco.imgs[self.ids[index]]

    def load_image(self, index: int) -> np.ndarray:
        """The image, HxWx3 uint8 RGB, checked against the size the COCO file gives."""
        info = self.image_info(index)
        path = self.image_root / info["file_name"]
        image = read_image(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"image {path} is {image.shape[1]}x{image.shape[0]} but {self.json_path} says "
                f"{info['width']}x{info['height']}; expected the same size"
            )
        return image

    def load_instances(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-crowd instances: masks (N, H, W) uint8, boxes (N, 4) xyxy float32, labels (N,) int64."""
        info = self.image_info(index)
        anns = [a for a in self.coco.imgToAnns.get(self.ids[index], []) if not a.get("iscrowd", 0)]
        h, w = info["height"], info["width"]
        masks = np.zeros((len(anns), h, w), np.uint8)
        boxes = np.zeros((len(anns), 4), np.float32)
        for i, ann in enumerate(anns):
            try:
                masks[i] = self.coco.annToMask(ann)
            except Exception:
                raise DatasetError(
                    f"COCO file {self.json_path}: annotation {ann['id']} has a segmentation pycocotools cannot decode; "
                    "expected polygons or RLE"
                ) from None
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            boxes[i] = [max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)]
        labels = np.array([self.label_of[a["category_id"]] for a in anns], np.int64)
        return masks, boxes, labels

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed image (H, W, 3) uint8 and its instance masks (N, H, W), for drawing."""
        return self.load_image(index), self.load_instances(index)[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image = self.load_image(index)
        masks, boxes, labels = self.load_instances(index)
        if self.transform is not None:
            out = self.transform(
                image=image, masks=list(masks), bboxes=boxes, labels=labels, instance_ids=np.arange(len(labels))
            )
            image = out["image"]
            keep = np.asarray(out["instance_ids"], dtype=np.int64)
            # masks come back for every instance; boxes only for those still in the picture: re-index
            all_masks = np.asarray(out["masks"], dtype=np.uint8).reshape(-1, *image.shape[:2])
            masks = all_masks[keep] if len(keep) else np.zeros((0, *image.shape[:2]), np.uint8)
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
            visible = masks.any((1, 2))
            masks, boxes, labels = masks[visible], boxes[visible], labels[visible]
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "masks": torch.as_tensor(masks, dtype=torch.uint8),
            "image_id": int(self.ids[index]),
            "area": torch.as_tensor(masks.sum((1, 2)), dtype=torch.float32),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
            "orig_size": tuple(image.shape[:2]),  # where predictions are scored (the image as returned)
        }
        return image_tensor(image), target


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """An HxWx3 uint8 image as the float tensor (3, H, W) in [0, 1] that instance models take."""
    if not image.flags.writeable:  # e.g. np.asarray of a PIL image
        image = image.copy()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)


def collate_instances(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection batches are lists: images differ in size."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _coco_files(root: Path) -> list[Path]:
    """COCO instance files in ``root/annotations/`` or ``root`` (sorted)."""
    found = []
    for folder in (root / "annotations", root):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                with open(path, "rb") as fh:
                    head = fh.read(1 << 16)
            except OSError:
                continue
            if b'"images"' in head and b'"annotations"' in head or b'"categories"' in head and b'"images"' in head:
                found.append(path)
        if found:
            return found
    return found


def _subset_of(path: Path) -> str | None:
    match = re.search(r"(train|validation|valid|val|test)", path.stem.lower())
    return match.group(1) if match else None


class CocoFormat(AnnotatedFormat):
    """COCO instance files: named in the config (``data.train_json``, ``data.val_json``, ``data.test_json``,
    images under ``data.root``, read as they are), or found in the folder (``annotations/*.json`` or ``*.json``:
    ``instances_<subset>.json`` files give the split; one file is split like any dataset). Polygons (several per
    annotation: one instance), RLE (``counts`` a list or a string), ``iscrowd`` regions (ignore), category ids
    through ``categories`` (a category named like the background is the background); an annotation without a
    segmentation (a box only) is left out with a count."""

    name = "coco"
    layout = "COCO instance files (annotations/*.json or *.json; or data.train_json and data.val_json)"
    serves = ("semantic", "instance")
    default_split = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        if (files or {}).get("train"):
            return 2
        return 2 if _coco_files(root) else 0

    def coco_splits(self, root: Path | None, output_dir: Path, request: SplitRequest) -> tuple[dict[str, Path | None], Path]:
        if root is None:
            raise ConfigError("config key 'data.format' is coco but data.root is null; expected the COCO image folder")
        files = request.files or {}
        if not any(files.values()):  # the files found in the folder, split as the format's files say
            return super().coco_splits(root, output_dir, request)
        for split in ("train", "val"):
            if not files.get(split):
                raise ConfigError(f"config key 'data.{split}_json' is empty; COCO data needs the instance files of train and val")
        paths = {s: Path(files[s]).expanduser() if files.get(s) else None for s in SPLITS}
        if request.max_images is not None:  # the given files' first images, as copies in the run's coco/ folder
            for split, path in paths.items():
                coco = load_coco_json(path) if path else None
                if coco is not None and len(coco["images"]) > request.max_images:
                    coco["images"] = coco["images"][:request.max_images]
                    kept = {image["id"] for image in coco["images"]}
                    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
                    paths[split] = Path(output_dir) / "coco" / f"instances_{split}.json"
                    paths[split].parent.mkdir(parents=True, exist_ok=True)
                    write_json(coco, paths[split])
        return paths, root

    def read(self, root: Path) -> AnnotationSet:
        paths = _coco_files(root)
        if not paths:
            raise DatasetError(f"dataset folder {root} holds no COCO instance file; expected annotations/*.json there, or "
                               "the files named by data.train_json and data.val_json")
        classes: list[str] = []
        background = "background"
        images: dict[str, ImageAnnotation] = {}
        subsets: dict[str, str] = {}
        skipped = Counter()
        for path in paths:
            data = load_coco_json(path)
            names = {c["id"]: str(c["name"]) for c in data["categories"]}
            for name in names.values():
                if name in BACKGROUND_NAMES:
                    background = name
                elif name not in classes:
                    classes.append(name)
            subset = _subset_of(path) if len(paths) > 1 else None
            by_image: dict[Any, list[dict[str, Any]]] = {}
            for ann in data["annotations"]:
                by_image.setdefault(ann["image_id"], []).append(ann)
            for info in data["images"]:
                name = str(info["file_name"])
                candidates = [root / name, path.parent / name, *([root / "images" / subset / name] if subset else []),
                              root / "images" / name]
                image = next((c for c in candidates if c.is_file()), None)
                if image is None:
                    raise DatasetError(f"COCO file {path}: image {info['id']} is {name!r}, which is not under {root} "
                                       "(nor images/<subset>/); expected the image file")
                image_id = (f"{subset}/" if subset else "") + Path(name).with_suffix("").as_posix()
                h, w = int(info["height"]), int(info["width"])
                shapes = []
                for ann in by_image.get(info["id"], []):
                    where = f"COCO file {path}, annotation {ann['id']}"
                    seg = ann.get("segmentation")
                    if not seg:
                        skipped["COCO annotation(s) without a segmentation (boxes only) left out"] += 1
                        continue
                    shapes.append(Shape(names[ann["category_id"]], "mask", mask=_segmentation(seg, h, w, where),
                                        group=("ann", ann["id"]), crowd=bool(ann.get("iscrowd", 0)), where=where))
                images[image_id] = ImageAnnotation(image, shapes, (h, w), where=f"COCO file {path}, image {info['id']}")
                if subset:
                    subsets[image_id] = subset
        splits = subset_splits(subsets, str(root)) if subsets else None
        return AnnotationSet(root, "COCO annotations", classes, images, splits, background, skipped)


def _segmentation(seg: Any, height: int, width: int, where: str):
    """A COCO segmentation (polygons, or RLE with list or string counts) as a mask function, checked."""
    if isinstance(seg, list):
        for polygon in seg:
            if len(polygon) < 6 or len(polygon) % 2:
                raise DatasetError(f"{where} has a polygon of {len(polygon)} coordinates; expected at least 3 x, y pairs")
    elif isinstance(seg, dict):
        size = [int(v) for v in seg.get("size", [])]
        if size != [height, width]:
            raise DatasetError(f"{where} has an RLE of size {size} (height, width) but its image is {[height, width]}; "
                               "expected the same")
    else:
        raise DatasetError(f"{where} has a segmentation of type {type(seg).__name__}; expected polygons or RLE")

    def draw(h: int, w: int) -> np.ndarray:
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]}
        return mask_utils.decode(rle).astype(bool)

    return draw
