"""Colour masks with a colour table: RGB (or palette) mask PNGs whose colours stand for classes, the table in one of
the files annotation tools write:

* Datumaro's ``dataset_meta.json``: ``label_map`` (index -> name) and ``segmentation_colors`` (RGB by index);
* CVAT's ``labelmap.txt`` (its "Segmentation mask" export): ``name:r,g,b:parts:actions`` lines;
* X-AnyLabeling's ``mask_color_map.json``: ``{"colors": {name: [r, g, b]}}`` (black, unlisted, is background);
* ``classes.txt`` with colours: ``name r g b`` lines.

Masks are in ``masks/`` or ``SegmentationClass/``; images in ``images/``, ``JPEGImages/`` or ``sources/``, paired by
file name. A palette PNG is read through its palette (the colours, not the indices). A colour the table does not
have is an error naming the file, the colour and a pixel. Semantic masks only: colours do not separate instances.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seg_ext.data.base import Format, SemanticSource, images_in, pair_items
from seg_ext.data.voc import colours_to_classes
from seg_ext.errors import DatasetError

TABLES = ("dataset_meta.json", "labelmap.txt", "mask_color_map.json", "classes.txt")
MASK_FOLDERS = ("masks", "SegmentationClass")
IMAGE_FOLDERS = ("images", "JPEGImages", "sources")


def _colour_table(root: Path) -> tuple[list[str], list[tuple[int, int, int]], Path] | None:
    """Class names and their colours, and the file they came from; None when the folder has no colour table."""
    meta = root / "dataset_meta.json"
    if meta.is_file():
        spec = json.loads(meta.read_text())
        if "segmentation_colors" in spec:
            labels = spec.get("label_map") or {}
            names = [str(labels.get(str(k), k)) for k in range(len(spec["segmentation_colors"]))]
            return names, [tuple(int(v) for v in c) for c in spec["segmentation_colors"]], meta
    labelmap = root / "labelmap.txt"
    if labelmap.is_file():
        names, colours = [], []
        for n, line in enumerate(labelmap.read_text().splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, _, rest = line.partition(":")
            try:
                colours.append(tuple(int(v) for v in rest.split(":")[0].split(",")))
            except ValueError:
                raise DatasetError(f"colour table {labelmap}, line {n}: {line.strip()!r}; expected name:r,g,b::") from None
            names.append(name.strip())
        return names, colours, labelmap
    xany = root / "mask_color_map.json"
    if xany.is_file():
        spec = json.loads(xany.read_text())
        entries = (spec.get("colors") or {}).items()
        names = ["background"] + [str(n) for n, _ in entries]
        return names, [(0, 0, 0)] + [tuple(int(v) for v in c) for _, c in entries], xany
    classes = root / "classes.txt"
    rows = coloured_rows(classes)
    if rows:
        return [" ".join(r[:-3]) for r in rows], [tuple(int(v) for v in r[-3:]) for r in rows], classes
    return None


def coloured_rows(path: Path) -> list[list[str]] | None:
    """The rows of a ``classes.txt`` whose every line is ``name r g b`` (a colour table), else None (a file of
    names only, or none)."""
    if not path.is_file():
        return None
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return rows if rows and all(len(r) >= 4 and all(v.isdigit() for v in r[-3:]) for r in rows) else None


def _folder(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


class ColorMaskFormat(Format):
    name = "colormask"
    layout = "masks/ of colours + a colour table (dataset_meta.json, labelmap.txt, mask_color_map.json or classes.txt with colours)"
    serves = ("semantic",)
    default_split = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        if _folder(root, MASK_FOLDERS) is None or _folder(root, IMAGE_FOLDERS) is None:
            return 0
        if (root / "class_names.txt").is_file() and (root / "SegmentationClass").is_dir():
            return 1  # labelme's VOC export (and predict's voc/): masks of class indices, VOC's own layout
        return 2 if _colour_table(root) is not None else 0

    def semantic_source(self, root: Path, ignore_index: int = 255) -> SemanticSource:
        table = _colour_table(root)
        if table is None:
            raise DatasetError(f"dataset folder {root} has no colour table; expected one of: {', '.join(TABLES)}")
        names, colours, table_path = table
        lookup = {c: k for k, c in enumerate(colours)}
        masks, images = _folder(root, MASK_FOLDERS), _folder(root, IMAGE_FOLDERS)
        if masks is None or images is None:
            raise DatasetError(f"dataset folder {root} has no masks/ and images/ folders; expected {self.layout}")
        items = pair_items(images_in(images), lambda i: masks / f"{i}.png", root)

        def read(path: Path, num_classes: int, ignore: int) -> np.ndarray:
            try:
                with Image.open(path) as image:
                    rgb = np.asarray(image.convert("RGB"))  # a palette PNG through its palette
            except OSError as exc:
                raise DatasetError(f"cannot read mask file {path} ({exc.__class__.__name__}); expected a PNG") from None
            return colours_to_classes(rgb, lookup, lambda colour, x, y: (
                f"mask file {path} has colour {colour} at pixel ({x}, {y}), which {table_path} does not list; "
                f"expected one of its {len(colours)} colours")).astype(np.uint8)

        return SemanticSource(root, self.name, names, items, read, None, ignore_index, check_sizes_eagerly=False,
                              default_split=self.default_split)
