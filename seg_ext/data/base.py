"""What a dataset format declares (:class:`Format`), what it serves, and the splits every format shares.

A format is one module in ``seg_ext/data/`` with a :class:`Format` subclass and one line in the table
(``seg_ext.data.formats.FORMATS``). It says how its layout is recognised (:meth:`Format.detect`), its default
split sizes, and which tasks it serves:

* ``semantic``: :meth:`Format.semantic_source`, image/label pairs and a mask reader (HxW class ids, 255 ignore);
* ``instance``: :meth:`Format.instance_source`, images and a reader of their instances (masks and categories),
  which :meth:`Format.coco_splits` writes as COCO instance files, one per split, cached in the run folder.
  (A format that already is COCO overrides ``coco_splits``.)
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from seg_ext.data.files import image_size, read_json
from seg_ext.errors import ConfigError, DatasetError
from seg_ext.io import write_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TASKS = ("semantic", "instance")


@dataclass
class SemanticSource:
    """What a dataset folder holds for semantic segmentation: its image/label pairs, class names and any split
    it brings. The label of an image is what ``mask_reader`` takes: a file's path, or an image id for formats
    whose labels are shapes in an annotation file."""

    root: Path
    format: str
    class_names: list[str]
    items: dict[str, tuple[Path, Any]]  # image id -> (image path, label path or reference)
    mask_reader: Callable[[Path, int, int], np.ndarray]
    splits: dict[str, list[str]] | None = None
    ignore_index: int = 255
    check_sizes_eagerly: bool = True
    default_split: tuple[float, float] = (0.1, 0.1)  # val, test when the dataset brings no split


@dataclass
class InstanceSource:
    """What a dataset folder holds for instance segmentation: images (ids in order), their COCO categories and a
    reader of each image's instances: ``read(image_id) -> (masks (N, H, W) uint8, category ids (N,))``, or with a
    third array, whether each is a crowd region (ignored in training and evaluation)."""

    root: Path  # the folder image paths are relative to in the COCO files
    title: str  # what the COCO files' info says, e.g. "Penn-Fudan pedestrians"
    categories: list[dict[str, Any]]
    items: dict[str, Path]  # image id -> image path, in the order image ids are numbered
    read: Callable[[str], tuple]
    default_split: tuple[float, float] = (0.1, 0.1)
    splits: dict[str, list[str]] | None = None  # the dataset's own split, used when the run asks for none
    dropped: Counter = field(default_factory=Counter)  # what reading left out, by kind (counted in one warning)


@dataclass(frozen=True)
class SplitRequest:
    """How the run asks for its splits: ``val`` / ``test`` sizes (counts or fractions; None: the format's
    default), the seed of a drawn split, and COCO files given in the config (``files[split]``)."""

    val: float | None = None
    test: float | None = None
    seed: int = 0
    files: dict[str, str | None] | None = None
    max_images: int | None = None  # data.max_images: each split cut to its first images
    splits_file: str | Path | None = None  # data.splits_file: a run's splits.json, its ids reused exactly


class Format:
    """A dataset format. Subclasses set the class attributes and implement what they serve.

    Attributes:
        name: the ``data.format`` value.
        layout: the layout in words, for the message when no format recognises a folder.
        serves: ``semantic`` and/or ``instance``.
        default_split: (val, test) sizes, counts or fractions, when the dataset brings no split.
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    serves: ClassVar[tuple[str, ...]] = ()
    default_split: ClassVar[tuple[float, float]] = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        """How surely the folder ``root`` is in this layout: 0 not, 1 possibly (its files one folder down, or a
        part of the layout missing), 2 surely (``files``: the COCO files the config names). The surest wins;
        a tie is ambiguous."""
        return 0

    def describe(self, root: Path | None, task: str = "semantic") -> str:
        """The data as the report names it."""
        return str(root)

    def example_image(self, root: Path | None, task: str = "semantic") -> Path | None:
        """A real image of the dataset (the first, sorted, that is not a mask), to check an export on."""
        if root is None or not Path(root).is_dir():
            return None
        for path in sorted(Path(root).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and "mask" not in path.name.lower() and path.is_file():
                return path
        return None

    def semantic_source(self, root: Path | None, ignore_index: int = 255) -> SemanticSource:
        raise DatasetError(f"format {self.name} holds no semantic masks")

    def instance_source(self, root: Path | None) -> InstanceSource:
        raise DatasetError(f"format {self.name} holds no instances")

    def coco_splits(self, root: Path | None, output_dir: Path, request: SplitRequest) -> tuple[dict[str, Path | None], Path]:
        """COCO instance files of each split and the folder their ``file_name`` is relative to: the instances of
        :meth:`instance_source` converted into ``<output_dir>/coco`` (reused when a conversion with the same
        parameters is there)."""
        source = self.instance_source(root)
        own = source.splits if request.val is None and request.test is None else None
        if request.splits_file:
            own = read_splits_file(request.splits_file, source.items, source.root)
        default_val, default_test = source.default_split
        val = request.val if request.val is not None else default_val
        test = request.test if request.test is not None else default_test
        coco_dir = Path(output_dir) / "coco"
        params = {"root": str(Path(source.root).resolve()), "seed": request.seed, "val": val, "test": test}
        if request.splits_file:
            params = {"root": params["root"], "format": self.name, "splits": own}
        elif own is not None:
            params = {"root": params["root"], "format": self.name, "splits": "the dataset's own"}
        elif request.val is None and request.test is None:
            val, test = small_split(len(source.items), val, test, str(root))
        if request.max_images is not None:
            params["max_images"] = request.max_images
        marker = coco_dir / "conversion.json"
        paths = {s: coco_dir / f"instances_{s}.json" for s in SPLITS}
        ids = coco_dir / "splits.json"
        if not (marker.is_file() and json.loads(marker.read_text()) == params
                and all(p.is_file() for p in (*paths.values(), ids))):
            splits = own if own is not None else make_splits(list(source.items), val, test, request.seed)
            splits = first_images({s: list(splits.get(s, [])) for s in SPLITS}, request.max_images)
            write_coco_splits(source, coco_dir, request.seed, val, test, splits=splits)
            write_json(splits, ids)
            marker.write_text(json.dumps(params))
        return dict(paths), Path(source.root)


# ---- splits -----------------------------------------------------------------------------------------------


def split_count(size: float, total: int, key: str) -> int:
    """Images a split gets from ``size``: a count, or a fraction of ``total`` (at least one when positive)."""
    if isinstance(size, float) and 0 <= size < 1:
        return max(1, int(size * total)) if size > 0 else 0  # a small dataset still gets one image
    if float(size).is_integer() and 0 <= size <= total:
        return int(size)
    if float(size).is_integer() and size > total:
        raise ConfigError(f"config key '{key}' is {size!r}, more than the {total} images of the dataset")
    raise ConfigError(f"config key '{key}' is {size!r}; expected a count of images or a fraction in [0, 1)")


def make_splits(ids: Sequence[str], val: float, test: float, seed: int) -> dict[str, list[str]]:
    """Deterministic random split of ``ids`` into train/val/test (counts or fractions), the same on every machine."""
    ids = sorted(ids)
    n_val = split_count(val, len(ids), "data.val")
    n_test = split_count(test, len(ids), "data.test")
    if n_val + n_test >= len(ids):
        raise ConfigError(
            f"config keys 'data.val' and 'data.test' take {n_val + n_test} of {len(ids)} images; "
            "expected some left for training"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val :]),
    }


def first_images(splits: dict[str, list[str]], max_images: int | None) -> dict[str, list[str]]:
    """``data.max_images``: each split cut to its first ``max_images`` ids (in the split's order; None: all), for a
    quick try of a pipeline on a few images. Said in the log when it cuts."""
    if max_images is None:
        return splits
    cut = {s: ids[:max_images] for s, ids in splits.items()}
    if cut != splits:
        logger.info("data.max_images %d: %s", max_images,
                    ", ".join(f"{s} {len(cut[s])} of {len(ids)}" for s, ids in splits.items()))
    return cut


def small_split(total: int, val: float, test: float, what: str) -> tuple[float, float]:
    """A format's default split sizes fitted to a small dataset: val and test shrink (test first) so that one
    image is left to train on; a dataset needs two images at least (one to train on, one to validate).

    Raises:
        DatasetError: fewer than two images.
    """
    if total < 2:
        raise DatasetError(f"dataset {what} has {total} image(s); expected at least 2 (one to train on, one to validate)")

    def count(size: float) -> int:
        return min(split_count(size, total, "") if size < 1 else int(size), total)

    n_val, n_test = count(val), count(test)
    fits = n_val + n_test < total
    while n_val + n_test >= total and n_test > 0:
        n_test -= 1
    while n_val + n_test >= total and n_val > 1:
        n_val -= 1
    return (val, test) if fits else (n_val, n_test)


def read_splits_file(splits_file: str | Path, items: Mapping[str, Any], root: str | Path) -> dict[str, list[str]]:
    """``data.splits_file``: a run's ``splits.json`` (train, val and test, each a list of image ids), every id one
    of ``items`` (the dataset at ``root``); otherwise one sentence."""
    path = Path(splits_file).expanduser()
    splits = read_json(path, "splits file", "a splits.json from a run", dict)
    if not all(isinstance(splits.get(s), list) for s in SPLITS):
        raise DatasetError(f"splits file {path} must map train, val and test to lists of image ids")
    for split in SPLITS:
        for image_id in splits[split]:
            if image_id not in items:
                raise DatasetError(f"splits file {path} names image id '{image_id}', which is not in {root}")
    return {s: list(splits[s]) for s in SPLITS}


def resolve_splits(
    source: SemanticSource, val: float | None = None, test: float | None = None, split_seed: int = 0,
    splits_file: str | Path | None = None,
) -> dict[str, list[str]]:
    """The train/val/test ids: from ``splits_file``, else the dataset's own split files, else seeded from
    ``split_seed`` with ``val`` and ``test`` images (counts or fractions; None: the format's default)."""
    if splits_file:
        return read_splits_file(splits_file, source.items, source.root)
    if source.splits is not None and val is None and test is None:
        return {s: [i for i in source.splits.get(s, []) if i in source.items] for s in SPLITS}
    default_val, default_test = source.default_split
    if val is None and test is None:
        val, test = small_split(len(source.items), default_val, default_test, str(source.root))
    val = val if val is not None else default_val
    test = test if test is not None else default_test
    return make_splits(list(source.items), val, test, split_seed)


# ---- instances as COCO files ------------------------------------------------------------------------------


def masks_to_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs of binary masks, with ``counts`` as a str so they can go into JSON. Shape: (N, H, W)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def tight_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, width, height]`` of the pixels of a binary mask (a pixel is 1x1)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def instances_to_coco(source: InstanceSource, seed: int = 0, val: float = 0.1, test: float = 0.1,
                      splits: dict[str, list[str]] | None = None, max_images: int | None = None) -> dict[str, dict[str, Any]]:
    """COCO instance dicts of the train/val/test splits of an instance source: ``splits`` (the dataset's own), or
    a seeded split with ``val`` and ``test`` images; with ``max_images``, each split's first images only
    (:func:`first_images`).

    Image ids are the 1-based position of the image in the source's order, the same in every split file; each
    instance is an annotation with an RLE ``segmentation``, ``area`` = its pixels, a tight ``bbox`` and
    ``iscrowd`` (1 for a crowd region); ``file_name`` is relative to ``source.root``.
    """
    if splits is None:
        splits = make_splits(list(source.items), val, test, seed)
    splits = first_images({s: list(splits.get(s, [])) for s in SPLITS}, max_images)
    split_of = {image_id: split for split, ids in splits.items() for image_id in ids}
    out = {
        split: {
            "info": {"description": f"{source.title} ({split}), converted by seg_ext", "seed": seed},
            "images": [],
            "annotations": [],
            "categories": [dict(c) for c in source.categories],
        }
        for split in splits
    }
    for number, (image_id, image_path) in enumerate(source.items.items(), start=1):
        if image_id not in split_of:
            continue
        coco = out[split_of[image_id]]
        masks, categories, *crowd = source.read(image_id)
        crowd = crowd[0] if crowd else np.zeros(len(masks), bool)
        h, w = masks.shape[1:] if len(masks) else image_size(image_path)
        try:  # relative to the image root; an image kept elsewhere (extracted from an annotation file) by its path
            file_name = Path(image_path).relative_to(source.root).as_posix()
        except ValueError:
            file_name = str(Path(image_path).resolve())
        coco["images"].append({"id": number, "file_name": file_name, "width": int(w), "height": int(h)})
        for m, category, is_crowd, rle in zip(masks, categories, crowd, masks_to_rles(masks)):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1,
                "image_id": number,
                "category_id": int(category),
                "segmentation": rle,
                "area": float(m.sum()),
                "bbox": tight_bbox(m),
                "iscrowd": int(bool(is_crowd)),
            })
    for kind, n in sorted(source.dropped.items()):
        logger.warning("%s: %d %s left out of the instances", source.root, n, kind)
    return out


def write_coco_splits(source: InstanceSource, output_dir: str | Path, seed: int = 0, val: float = 0.1,
                      test: float = 0.1, splits: dict[str, list[str]] | None = None,
                      max_images: int | None = None) -> dict[str, Path]:
    """Write ``instances_{train,val,test}.json`` of an instance source (``splits``: the dataset's own, else a
    seeded split); return their paths by split."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, coco in instances_to_coco(source, seed, val, test, splits, max_images).items():
        path = output_dir / f"instances_{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(coco))
        tmp.replace(path)
        paths[split] = path
        logger.info("%s: %d images, %d instances", path, len(coco["images"]), len(coco["annotations"]))
    return paths


def images_in(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem, sorted."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"dataset folder {path.parent} has no {path.name}/ folder; expected {what}")


def pair_items(images: dict[str, Path], label_for: Callable[[str], Path], root: Path) -> dict[str, tuple[Path, Path]]:
    """Each image with its label file; an image without one is an error naming both."""
    if not images:
        raise DatasetError(f"dataset folder {root} contains no images")
    items = {}
    for image_id, image_path in images.items():
        label_path = label_for(image_id)
        if not label_path.is_file():
            raise DatasetError(f"image {image_path} has no mask; expected {label_path}")
        items[image_id] = (image_path, label_path)
    return items


def check_mask_values(mask: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """A label map whose values are class ids or the ignore index, as uint8; otherwise one sentence."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise DatasetError(
            f"mask file {path} contains label value {int(bad[0])}; expected class ids 0..{num_classes - 1} "
            f"or the ignore index {ignore_index}"
        )
    return mask.astype(np.uint8)
