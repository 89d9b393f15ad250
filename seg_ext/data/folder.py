"""The plain folder format: ``images/<id>.<png|jpg|...>``, ``masks/<id>.png`` (single channel, uint8 class
ids, 255 = ignore), ``classes.txt`` (one class name a line), optional ``train.txt`` / ``val.txt`` /
``test.txt`` (image ids) as the splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seg_ext.data.base import (
    SPLITS, Format, SemanticSource, check_mask_values, images_in, pair_items, require_dir,
)
from seg_ext.data.colormask import coloured_rows
from seg_ext.data.files import read_label_png
from seg_ext.errors import DatasetError


def folder_mask(path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """Mask of the plain folder format."""
    return check_mask_values(read_label_png(path), path, num_classes, ignore_index)


def read_split_files(root: Path, items: dict[str, Any]) -> dict[str, list[str]] | None:
    """The splits ``train.txt`` / ``val.txt`` / ``test.txt`` name, or None when the folder has none."""
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


class FolderFormat(Format):
    name = "folder"
    layout = "images/ + masks/ (folder format)"
    serves = ("semantic",)
    default_split = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        """2 with ``classes.txt`` (of names only: with colours it is a colour table); 1 without (the reader then
        says what is missing)."""
        if not ((root / "images").is_dir() and (root / "masks").is_dir()):
            return 0
        classes = root / "classes.txt"
        if not classes.is_file():
            return 1
        return 0 if coloured_rows(classes) else 2

    def semantic_source(self, root: Path, ignore_index: int = 255) -> SemanticSource:
        require_dir(root / "images", "images/<id>.png")
        require_dir(root / "masks", "masks/<id>.png")
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            raise DatasetError(f"dataset folder {root} has no classes.txt; expected one class name per line")
        class_names = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if len(class_names) < 2:
            raise DatasetError(f"{classes_file} names {len(class_names)} class(es); expected at least 2, one per line")
        if len(class_names) > ignore_index:
            raise DatasetError(f"{classes_file} names {len(class_names)} classes; at most {ignore_index} fit in uint8 masks")
        items = pair_items(images_in(root / "images"), lambda i: root / "masks" / f"{i}.png", root)
        return SemanticSource(root, self.name, class_names, items, folder_mask, read_split_files(root, items),
                              ignore_index, default_split=self.default_split)
