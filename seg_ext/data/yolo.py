"""YOLO / Ultralytics segmentation: ``data.yaml`` (``names``: a list or an index -> name mapping; ``train`` /
``val`` / ``test``: image folders relative to ``path``) or ``classes.txt``, images under ``images/`` and, for
each image, ``labels/.../<stem>.txt`` (the image's path with ``images`` replaced by ``labels``).

Each label line is ``class x1 y1 x2 y2 ...``: a polygon in coordinates normalised to [0, 1] (multiplied by the
image's width and height); a line of exactly four numbers after the class is a box (``cx cy w h``, the detection
format). An image without a label file has no object. The subsets named in ``data.yaml`` (or the folders
``images/train`` / ``val`` / ``test``) are the split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from seg_ext.data.annotations import AnnotatedFormat, AnnotationSet, ImageAnnotation, Shape, subset_splits
from seg_ext.data.base import IMAGE_EXTENSIONS
from seg_ext.data.files import image_size
from seg_ext.errors import DatasetError


def _names(root: Path) -> tuple[list[str], dict[str, Any], Path]:
    """Class names (index order), the YAML (or {}), and the file they came from."""
    for path in [root / "data.yaml", *sorted(root.glob("*.yaml"))]:
        if not path.is_file():
            continue
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            raise DatasetError(f"YOLO file {path} is not valid YAML; expected names and the image folders") from None
        names = spec.get("names") if isinstance(spec, dict) else None
        if isinstance(names, dict):
            try:
                order = sorted(names, key=int)
            except (TypeError, ValueError):
                raise DatasetError(f"YOLO file {path}: names has keys {list(names)}; expected class indices") from None
            if [int(k) for k in order] != list(range(len(order))):
                raise DatasetError(f"YOLO file {path}: names has indices {[int(k) for k in order]}; expected 0..{len(order) - 1}")
            return [str(names[k]) for k in order], spec, path
        if isinstance(names, list):
            return [str(n) for n in names], spec, path
    path = root / "classes.txt"
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()], {}, path
    raise DatasetError(f"dataset folder {root} has no data.yaml with names nor classes.txt; expected the YOLO class names")


class YoloFormat(AnnotatedFormat):
    name = "yolo"
    layout = "data.yaml or classes.txt + images/ + labels/ (YOLO segmentation)"
    default_split = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        if not ((root / "images").is_dir() and (root / "labels").is_dir()):
            return 0
        has_names = (root / "data.yaml").is_file() or (root / "classes.txt").is_file() or any(root.glob("*.yaml"))
        return 2 if has_names and any((root / "labels").rglob("*.txt")) else 0

    def read(self, root: Path) -> AnnotationSet:
        root = root.resolve()  # data.yaml's path is resolved too: image ids are relative to the same real folder
        classes, spec, names_file = _names(root)
        base = (root / str(spec.get("path") or ".")).resolve() if spec else root
        folders: dict[str, Path] = {}
        for subset in ("train", "val", "test"):
            entry = spec.get(subset) if spec else None
            if isinstance(entry, str):
                folders[subset] = (base / entry) if not Path(entry).is_absolute() else Path(entry)
            elif (root / "images" / subset).is_dir():
                folders[subset] = root / "images" / subset
        if not folders:
            folders = {"": root / "images"}
        images: dict[str, ImageAnnotation] = {}
        subsets: dict[str, str] = {}
        skipped = Counter()
        for subset, folder in folders.items():
            if not folder.is_dir():
                raise DatasetError(f"YOLO file {names_file} names image folder {folder}, which does not exist")
            for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
                image_id = _relative(image, root, base).with_suffix("").as_posix()
                label = _label_path(image)
                shapes = self._shapes(label, image, classes, skipped) if label.is_file() else []
                images[image_id] = ImageAnnotation(image, shapes, None, where=f"YOLO image {image}")
                if subset:
                    subsets[image_id] = subset
        splits = subset_splits(subsets, str(names_file)) if subsets else None
        return AnnotationSet(root, "YOLO annotations", classes, images, splits, "background", skipped)

    @staticmethod
    def _shapes(label: Path, image: Path, classes: list[str], skipped: Counter) -> list[Shape]:
        h, w = image_size(image)
        shapes = []
        for n, line in enumerate(label.read_text().splitlines(), start=1):
            values = line.split()
            if not values:
                continue
            where = f"YOLO label file {label}, line {n}"
            try:
                cls, coords = int(values[0]), [float(v) for v in values[1:]]
            except ValueError:
                raise DatasetError(f"{where} is {line.strip()!r}; expected a class index and numbers") from None
            if not 0 <= cls < len(classes):
                raise DatasetError(f"{where} has class {cls}; expected 0..{len(classes) - 1} (the names of the dataset)")
            if len(coords) % 2:
                raise DatasetError(f"{where} has {len(coords)} coordinates, an odd number; expected x y pairs")
            if any(c < 0 or c > 1 for c in coords):
                skipped["YOLO shape(s) with coordinates outside [0, 1] (drawn clipped)"] += 1
            if len(coords) == 4:  # the detection format: a box
                cx, cy, bw, bh = coords
                points = [(round((cx - bw / 2) * w, 3), round((cy - bh / 2) * h, 3)),
                          (round((cx + bw / 2) * w, 3), round((cy + bh / 2) * h, 3))]
                shapes.append(Shape(classes[cls], "rectangle", points, where=where))
                continue
            if len(coords) < 6:
                raise DatasetError(f"{where} is a polygon with {len(coords) // 2} point(s); expected at least 3")
            # back to pixels, rounded to a thousandth: 6 decimals of a fraction are a few 1e-5 px off, and a vertex just
            # under a pixel's centre would draw the edge a pixel over (PIL truncates), so a file written from pixel
            # coordinates would not draw back to its pixels
            points = [(round(coords[i] * w, 3), round(coords[i + 1] * h, 3)) for i in range(0, len(coords), 2)]
            shapes.append(Shape(classes[cls], "polygon", points, where=where))
        return shapes


def _relative(image: Path, *folders: Path) -> Path:
    """``image`` relative to the first of ``folders`` that holds it (an absolute path where none does)."""
    for folder in folders:
        if image.is_relative_to(folder):
            return image.relative_to(folder)
    return image


def _label_path(image: Path) -> Path:
    """``images/.../<stem>.ext`` -> ``labels/.../<stem>.txt`` (the last ``images`` folder of the path, as
    ultralytics' ``img2label_paths`` swaps it)."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")
