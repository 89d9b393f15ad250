"""Semantic-segmentation datasets: image/label pairs of any format in the table that serves semantic masks
(``seg_ext.data.formats``: plain folders, Stanford Background, Penn-Fudan as person/background, the synthetic
scenes).

``open_semantic_source(root, format)`` finds the image/label pairs of a dataset folder (detecting its layout when
``format`` is ``"auto"``); ``SemanticSegDataset`` reads one pair, checks it and applies the albumentations
transform. ``build_semantic_datasets(root, transforms, ...)`` does both for the train/val/test splits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from seg_ext.data.base import (  # noqa: F401  (re-exported: the split helpers and the source live in data.base)
    IMAGE_EXTENSIONS, SPLITS, SemanticSource, first_images, make_splits, resolve_splits,
)
from seg_ext.data.files import image_size, read_image
from seg_ext.errors import DatasetError

logger = logging.getLogger(__name__)


def detect_format(root: Path) -> str:
    """The name of the semantic format whose layout ``root`` has."""
    from seg_ext.data.formats import find_format

    return find_format(Path(root), "auto", "semantic").name


def open_semantic_source(root: str | Path | None, format: str = "auto", ignore_index: int = 255) -> SemanticSource:
    """Find the image/label pairs of the dataset at ``root`` (None: the built-in synthetic scenes).

    Raises:
        DatasetError: the folder is missing, has no recognised layout, or an image has no label file.
        ConfigError: ``format`` is not a semantic format.
    """
    from seg_ext.data.formats import find_format

    root = Path(root).expanduser() if root else None
    return find_format(root, format, "semantic").semantic_source(root, ignore_index)


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


def build_semantic_datasets(
    root: str | Path | None,
    transforms: dict[str, Callable | None],
    format: str = "auto",
    val: float | None = None,
    test: float | None = None,
    split_seed: int = 0,
    splits_file: str | Path | None = None,
    max_images: int | None = None,
) -> tuple[dict[str, SemanticSegDataset], dict[str, list[str]]]:
    """Datasets for each split (see :func:`resolve_splits`; ``max_images``: each split's first images only), each
    with its transform; also returns the split ids. ``root`` None: the built-in synthetic scenes."""
    source = open_semantic_source(root, format)
    splits = first_images(resolve_splits(source, val, test, split_seed, splits_file), max_images)
    logger.info(
        "dataset %s (%s): %d classes, %s",
        source.root,
        source.format,
        len(source.class_names),
        ", ".join(f"{s} {len(splits[s])}" for s in SPLITS),
    )
    datasets = {s: SemanticSegDataset(source, splits[s], transforms.get(s)) for s in SPLITS}
    return datasets, splits
