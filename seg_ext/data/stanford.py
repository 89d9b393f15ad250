"""The Stanford Background ``iccv09Data`` layout: ``images/<id>.jpg`` and ``labels/<id>.regions.txt`` (rows of
integers -1..7); the 8 classes plus unknown (-1) as a ninth class, ``misc``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seg_ext.data.base import Format, SemanticSource, images_in, pair_items, require_dir
from seg_ext.errors import DatasetError

STANFORD_CLASSES = ["sky", "tree", "road", "grass", "water", "building", "mountain", "foreground", "misc"]


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


class StanfordFormat(Format):
    name = "stanford"
    layout = "images/ + labels/ (Stanford Background)"
    serves = ("semantic",)
    default_split = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        if not ((root / "images").is_dir() and (root / "labels").is_dir()):
            return 0
        return 2 if next((root / "labels").glob("*.regions.txt"), None) is not None else 0

    def semantic_source(self, root: Path, ignore_index: int = 255) -> SemanticSource:
        require_dir(root / "images", "images/<id>.jpg")
        require_dir(root / "labels", "labels/<id>.regions.txt")
        items = pair_items(images_in(root / "images"), lambda i: root / "labels" / f"{i}.regions.txt", root)
        return SemanticSource(root, self.name, list(STANFORD_CLASSES), items, stanford_mask, None, ignore_index,
                              check_sizes_eagerly=False, default_split=self.default_split)
