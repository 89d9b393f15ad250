"""Semantic-segmentation datasets on disk: plain folders, Stanford Background, Penn-Fudan as person/background.

``open_semantic_source(root, format)`` finds the image/label pairs of a dataset folder (detecting its layout when
``format`` is ``"auto"``); ``SemanticSegDataset`` reads one pair, checks it and applies the albumentations
transform. ``build_semantic_datasets(root, transforms, ...)`` does both for the train/val/test splits.

Formats:

* ``folder``: ``images/<id>.<png|jpg|...>``, ``masks/<id>.png`` (single channel, uint8 class ids,
  255 = ignore), ``classes.txt`` (one class name a line), optional ``train.txt``/``val.txt``/``test.txt``.
* ``stanford``: the Stanford Background ``iccv09Data`` layout, ``images/<id>.jpg`` and
  ``labels/<id>.regions.txt``; the 8 classes plus unknown (-1) as a ninth class, ``misc``.
* ``pennfudan``: ``PNGImages/<id>.png`` and ``PedMasks/<id>_mask.png``; every pedestrian becomes ``person``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from seg_ext.data.files import image_size, read_image, read_json, read_label_png
from seg_ext.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
STANFORD_CLASSES = ["sky", "tree", "road", "grass", "water", "building", "mountain", "foreground", "misc"]
PENNFUDAN_CLASSES = ["background", "person"]
FORMATS = ("folder", "stanford", "pennfudan")
SPLITS = ("train", "val", "test")

# default (val, test) split sizes when a dataset brings no split: a count or a fraction of all images
DEFAULT_SPLIT_SIZES: dict[str, tuple[float, float]] = {
    "folder": (0.1, 0.1),
    "stanford": (0.1, 0.1),
    "pennfudan": (15, 50),  # 50 test images, as torchvision's Penn-Fudan tutorial keeps
}


# ---- mask readers: path -> HxW uint8 class ids (255 = ignore), values checked ----------------------------


def _check_values(mask: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise DatasetError(
            f"mask file {path} contains label value {int(bad[0])}; expected class ids 0..{num_classes - 1} "
            f"or the ignore index {ignore_index}"
        )
    return mask.astype(np.uint8)


def folder_mask(path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """Mask of the plain folder format."""
    return _check_values(read_label_png(path), path, num_classes, ignore_index)


def pennfudan_mask(path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """Penn-Fudan instance mask (0 background, 1..N pedestrians) as background/person."""
    return (read_label_png(path) > 0).astype(np.uint8)


def stanford_mask(path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """Stanford Background ``.regions.txt``: rows of integers -1..7; -1 (unknown) becomes class 8, misc."""
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        labels = np.array(rows, dtype=np.int64)
    except FileNotFoundError:
        raise DatasetError(f"label file {path} does not exist") from None
    except (ValueError, OSError):
        raise DatasetError(
            f"label file {path} is not a grid of integers; expected one row of space-separated labels per image row"
        ) from None
    if labels.ndim != 2:
        raise DatasetError(f"label file {path} has rows of different lengths; expected one label per pixel")
    bad = labels[(labels < -1) | (labels > 7)]
    if bad.size:
        raise DatasetError(f"label file {path} contains label value {int(bad[0])}; expected -1..7")
    labels[labels == -1] = 8
    return labels.astype(np.uint8)


@dataclass
class SemanticSource:
    """What a dataset folder holds: its image/label pairs, class names and any split it brings."""

    root: Path
    format: str
    class_names: list[str]
    items: dict[str, tuple[Path, Path]]  # image id -> (image path, label path)
    mask_reader: Callable[[Path, int, int], np.ndarray]
    splits: dict[str, list[str]] | None = None
    ignore_index: int = 255
    check_sizes_eagerly: bool = True


def detect_format(root: Path) -> str:
    """Guess the dataset format from the folder layout."""
    if (root / "PNGImages").is_dir() and (root / "PedMasks").is_dir():
        return "pennfudan"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "stanford"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    raise DatasetError(
        f"dataset folder {root} has no recognised layout; expected images/ + masks/ (folder format), "
        "images/ + labels/ (Stanford Background) or PNGImages/ + PedMasks/ (Penn-Fudan)"
    )


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"dataset folder {path.parent} has no {path.name}/ folder; expected {what}")


def _pair(images: dict[str, Path], label_for: Callable[[str], Path], root: Path) -> dict[str, tuple[Path, Path]]:
    if not images:
        raise DatasetError(f"dataset folder {root} contains no images")
    items = {}
    for image_id, image_path in images.items():
        label_path = label_for(image_id)
        if not label_path.is_file():
            raise DatasetError(f"image {image_path} has no mask; expected {label_path}")
        items[image_id] = (image_path, label_path)
    return items


def _read_split_files(root: Path, items: dict[str, Any]) -> dict[str, list[str]] | None:
    files = {split: root / f"{split}.txt" for split in SPLITS}
    if not any(f.is_file() for f in files.values()):
        return None
    splits = {}
    for split, path in files.items():
        ids = path.read_text().split() if path.is_file() else []
        unknown = [i for i in ids if i not in items]
        if unknown:
            raise DatasetError(f"split file {path} names image id '{unknown[0]}', which has no image and mask")
        splits[split] = ids
    if not splits["train"]:
        raise DatasetError(f"split files in {root} give no training images; expected ids in {files['train']}")
    return splits


def open_semantic_source(root: str | Path, format: str = "auto", ignore_index: int = 255) -> SemanticSource:
    """Find the image/label pairs of the dataset at ``root``.

    Raises:
        DatasetError: the folder is missing, has no recognised layout, or an image has no label file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if format == "auto":
        format = detect_format(root)
    if format not in FORMATS:
        raise ConfigError(f"config key 'data.format' is {format!r}; expected one of: auto, {', '.join(FORMATS)}")

    if format == "pennfudan":
        _require_dir(root / "PNGImages", "the Penn-Fudan images")
        _require_dir(root / "PedMasks", "the Penn-Fudan masks")
        items = _pair(_images_in(root / "PNGImages"), lambda i: root / "PedMasks" / f"{i}_mask.png", root)
        return SemanticSource(root, format, list(PENNFUDAN_CLASSES), items, pennfudan_mask, None, ignore_index)

    if format == "stanford":
        _require_dir(root / "images", "images/<id>.jpg")
        _require_dir(root / "labels", "labels/<id>.regions.txt")
        items = _pair(_images_in(root / "images"), lambda i: root / "labels" / f"{i}.regions.txt", root)
        return SemanticSource(
            root, format, list(STANFORD_CLASSES), items, stanford_mask, None, ignore_index, check_sizes_eagerly=False
        )

    _require_dir(root / "images", "images/<id>.png")
    _require_dir(root / "masks", "masks/<id>.png")
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise DatasetError(f"dataset folder {root} has no classes.txt; expected one class name per line")
    class_names = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    if len(class_names) < 2:
        raise DatasetError(f"{classes_file} names {len(class_names)} class(es); expected at least 2, one per line")
    if len(class_names) > ignore_index:
        raise DatasetError(f"{classes_file} names {len(class_names)} classes; at most {ignore_index} fit in uint8 masks")
    items = _pair(_images_in(root / "images"), lambda i: root / "masks" / f"{i}.png", root)
    return SemanticSource(root, format, class_names, items, folder_mask, _read_split_files(root, items), ignore_index)


def _split_count(size: float, total: int, key: str) -> int:
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
    n_val = _split_count(val, len(ids), "data.val")
    n_test = _split_count(test, len(ids), "data.test")
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


def resolve_splits(
    source: SemanticSource, val: float | None = None, test: float | None = None, split_seed: int = 0,
    splits_file: str | Path | None = None,
) -> dict[str, list[str]]:
    """The train/val/test ids: from ``splits_file``, else the dataset's own split files, else seeded from
    ``split_seed`` with ``val`` and ``test`` images (counts or fractions; None: the format's default)."""
    if splits_file:
        path = Path(splits_file)
        splits = read_json(path, "splits file", "a splits.json from a run", dict)
        if not all(isinstance(splits.get(s), list) for s in SPLITS):
            raise DatasetError(f"splits file {path} must map train, val and test to lists of image ids")
        for split in SPLITS:
            for image_id in splits[split]:
                if image_id not in source.items:
                    raise DatasetError(f"splits file {path} names image id '{image_id}', which is not in {source.root}")
        return {s: list(splits[s]) for s in SPLITS}
    if source.splits is not None and val is None and test is None:
        return source.splits
    default_val, default_test = DEFAULT_SPLIT_SIZES[source.format]
    val = val if val is not None else default_val
    test = test if test is not None else default_test
    return make_splits(list(source.items), val, test, split_seed)


class SemanticSegDataset(Dataset):
    """Image/label pairs of one split.

    ``__getitem__`` returns a dict: ``image`` (after the transform: a float tensor 3xHxW, or HxWx3 uint8
    without one), ``mask`` (int64 tensor HxW with class ids, ``ignore_index`` for ignored pixels), ``image_id``
    and ``file_name``.

    Args:
        source: the dataset folder's pairs and format, from ``open_semantic_source``.
        ids: image ids of this split.
        transform: an albumentations transform called as ``transform(image=..., mask=...)``, or None.
    """

    def __init__(self, source: SemanticSource, ids: Sequence[str], transform: Callable | None = None) -> None:
        self.source = source
        self.ids = list(ids)
        self.transform = transform
        self.class_names = source.class_names
        self.num_classes = len(source.class_names)
        self.ignore_index = source.ignore_index
        if source.check_sizes_eagerly:
            for image_id in self.ids:
                image_path, label_path = source.items[image_id]
                self._check_same_size(image_size(image_path), image_size(label_path), image_path, label_path)

    @staticmethod
    def _check_same_size(image_hw: tuple[int, int], label_hw: tuple[int, int], image_path: Path, label_path: Path) -> None:
        if tuple(image_hw) != tuple(label_hw):
            raise DatasetError(
                f"mask {label_path} is {label_hw[1]}x{label_hw[0]} but image {image_path} is "
                f"{image_hw[1]}x{image_hw[0]}; expected the same size"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> np.ndarray:
        """The raw image, HxWx3 uint8 RGB."""
        return read_image(self.source.items[self.ids[index]][0])

    def load_mask(self, index: int) -> np.ndarray:
        """The raw label map, HxW uint8 class ids (values checked)."""
        path = self.source.items[self.ids[index]][1]
        return self.source.mask_reader(path, self.num_classes, self.ignore_index)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw image and label map, checked to have the same size."""
        image, mask = self.load_image(index), self.load_mask(index)
        image_path, label_path = self.source.items[self.ids[index]]
        self._check_same_size(image.shape[:2], mask.shape, image_path, label_path)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load_pair(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": image,
            "mask": torch.as_tensor(np.asarray(mask), dtype=torch.int64),
            "image_id": self.ids[index],
            "file_name": self.source.items[self.ids[index]][0].name,
        }

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels of each class over this split's raw label maps (ignored pixels not counted)."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for i in range(len(self)):
            mask = self.load_mask(i)
            counts += np.bincount(mask[mask != self.ignore_index].ravel(), minlength=self.num_classes)[: self.num_classes]
        return counts


def semantic_data_root(root: str | Path | None, format: str = "auto") -> tuple[Path, str]:
    """The dataset folder and its format; the built-in synthetic scenes when ``root`` is None."""
    if root:
        return Path(root).expanduser(), format
    from seg_ext.data.synthetic import ensure_synthetic_scenes

    return ensure_synthetic_scenes(), "folder"


def build_semantic_datasets(
    root: str | Path | None,
    transforms: dict[str, Callable | None],
    format: str = "auto",
    val: float | None = None,
    test: float | None = None,
    split_seed: int = 0,
    splits_file: str | Path | None = None,
) -> tuple[dict[str, SemanticSegDataset], dict[str, list[str]]]:
    """Datasets for each split (see :func:`resolve_splits`), each with its transform; also returns the split ids.
    ``root`` None: the built-in synthetic scenes."""
    root, fmt = semantic_data_root(root, format)
    source = open_semantic_source(root, fmt)
    splits = resolve_splits(source, val, test, split_seed, splits_file)
    logger.info(
        "dataset %s (%s): %d classes, %s",
        root,
        source.format,
        len(source.class_names),
        ", ".join(f"{s} {len(splits[s])}" for s in SPLITS),
    )
    datasets = {s: SemanticSegDataset(source, splits[s], transforms.get(s)) for s in SPLITS}
    return datasets, splits
