"""CVAT for images 1.1 XML: ``annotations.xml`` (a task or a project export) and the images under
``images/<subset>/<name>`` (a project) or ``images/<name>``; without ``annotations.xml``, the folder's CVAT XML
files whatever their names, found by their content (Datumaro writes one per subset, ``train.xml``, ``test.xml``:
several files are the subsets named by their stems, one file is the whole set).

* Shapes: ``polygon``, ``box``, ``ellipse`` and ``mask`` (CVAT's run-length encoding over the mask's own box,
  row by row, starting with background) are read; ``polyline``, ``points``, ``skeleton``, ``tag`` and tracks
  are skipped with a count. ``z_order`` is the drawing order; ``occluded`` is an attribute only; shapes with the
  same ``group_id`` and label form one instance.
* Classes: the labels of ``<meta>`` (the task's or the project's), in order.
* Images are keyed by (subset, name): ids restart and names repeat in every subset of a project. The subsets
  (``Train``, ``Validation``, ``Test``) are the split.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from seg_ext.data.annotations import AnnotatedFormat, AnnotationSet, ImageAnnotation, Shape, subset_splits
from seg_ext.errors import DatasetError

SKIPPED = ("polyline", "points", "skeleton", "tag", "cuboid")


def _points(text: str, where: str) -> list[tuple[float, float]]:
    try:
        return [(float(x), float(y)) for x, y in (p.split(",") for p in text.strip().split(";") if p)]
    except ValueError:
        raise DatasetError(f"{where} has points {text!r}; expected \"x,y;x,y;...\"") from None


def _rle_mask(element: ET.Element, where: str):
    """A ``<mask rle left top width height>``: runs over the box, row by row, starting with background."""
    try:
        counts = [int(v) for v in element.get("rle", "").split(",") if v.strip()]
        left, top, width, height = (int(float(element.get(k))) for k in ("left", "top", "width", "height"))
    except (TypeError, ValueError):
        raise DatasetError(f"{where} is a mask without a readable rle, left, top, width and height") from None
    if sum(counts) != width * height:
        raise DatasetError(f"{where} is a mask whose RLE covers {sum(counts)} pixels but its box is {width}x{height} "
                           f"({width * height}); expected the same")
    values = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool).reshape(height, width)

    def draw(h: int, w: int) -> np.ndarray:
        if left + width > w or top + height > h or left < 0 or top < 0:
            raise DatasetError(f"{where} is a mask whose box ({left}, {top}, {width}x{height}) leaves the {w}x{h} "
                               "image; expected it inside")
        full = np.zeros((h, w), bool)
        full[top:top + height, left:left + width] = values
        return full

    return draw


def _is_cvat(path: Path) -> bool:
    """A CVAT for images XML file, by its start (``<annotations>``; VOC's files start ``<annotation>``)."""
    try:
        with open(path, "rb") as fh:
            return b"<annotations" in fh.read(2048)
    except OSError:
        return False


def cvat_files(root: Path) -> list[Path]:
    """``annotations.xml``, else the folder's other CVAT XML files (sorted)."""
    if _is_cvat(root / "annotations.xml"):
        return [root / "annotations.xml"]
    return [p for p in sorted(root.glob("*.xml")) if p.is_file() and _is_cvat(p)]


class CvatFormat(AnnotatedFormat):
    name = "cvat"
    layout = "annotations.xml or other CVAT for images 1.1 XML files + images/"
    default_split = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        return 2 if cvat_files(root) else 0

    def read(self, root: Path) -> AnnotationSet:
        paths = cvat_files(root)
        if not paths:
            raise DatasetError(f"dataset folder {root} holds no CVAT XML file; expected annotations.xml (CVAT for "
                               "images 1.1) there")
        classes: list[str] = []
        skipped = Counter()
        images: dict[str, ImageAnnotation] = {}
        subsets: dict[str, str] = {}
        for path in paths:  # several files: each a subset, named by its stem
            self._read_file(root, path, path.stem if len(paths) > 1 else None, classes, images, subsets, skipped)
        where = str(paths[0]) if len(paths) == 1 else f"the CVAT files of {root}"
        splits = subset_splits(subsets, where) if subsets else None
        return AnnotationSet(root, "CVAT annotations", classes, images, splits, "background", skipped)

    def _read_file(self, root: Path, path: Path, file_subset: str | None, classes: list[str],
                   images: dict[str, ImageAnnotation], subsets: dict[str, str], skipped: Counter) -> None:
        try:
            tree = ET.parse(path)
        except (ET.ParseError, OSError):
            raise DatasetError(f"CVAT file {path} is not valid XML; expected a CVAT for images 1.1 export") from None
        top = tree.getroot()
        for label in top.iter("label"):
            name = label.findtext("name")
            if name is not None and name not in classes:
                classes.append(name)
        skipped.update("track(s) skipped (video annotations)" for _ in top.iter("track"))
        for element in top.iter("image"):
            name, subset = element.get("name", ""), element.get("subset") or file_subset
            where = f"CVAT file {path}, image {name!r}" + (f" of subset {subset}" if subset else "")
            candidates = ([root / "images" / subset / name] if subset else []) + [root / "images" / name, root / name]
            image = next((c for c in candidates if c.is_file()), candidates[0])
            image_id = f"{subset}/{Path(name).with_suffix('').as_posix()}" if subset else Path(name).with_suffix("").as_posix()
            if image_id in images:
                raise DatasetError(f"{where} appears twice; expected each image once per subset")
            size = (int(element.get("height")), int(element.get("width"))) if element.get("height") else None
            shapes = []
            for k, child in enumerate(element):
                tag, label = child.tag, child.get("label", "")
                shape_where = f"{where}, shape {k} ({tag})"
                if tag in SKIPPED:
                    skipped[f"{tag} shape(s) skipped (not regions)"] += 1
                    continue
                if label not in classes:
                    raise DatasetError(f"{shape_where} has label {label!r}, which the file's labels do not list "
                                       f"({', '.join(classes)})")
                z, group = int(float(child.get("z_order", 0))), child.get("group_id")
                group = None if group in (None, "0", "") else group
                if tag == "polygon":
                    points = _points(child.get("points", ""), shape_where)
                    if len(points) < 3:
                        raise DatasetError(f"{shape_where} is a polygon with {len(points)} point(s); expected at least 3")
                    shapes.append(Shape(label, "polygon", points, group=group, z=z, where=shape_where))
                elif tag == "box":
                    corners = [(float(child.get("xtl")), float(child.get("ytl"))), (float(child.get("xbr")), float(child.get("ybr")))]
                    shapes.append(Shape(label, "rectangle", corners, group=group, z=z, where=shape_where))
                elif tag == "ellipse":
                    cx, cy, rx, ry = (float(child.get(k)) for k in ("cx", "cy", "rx", "ry"))
                    points = [(cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 64, endpoint=False)]
                    shapes.append(Shape(label, "polygon", points, group=group, z=z, where=shape_where))
                elif tag == "mask":
                    shapes.append(Shape(label, "mask", mask=_rle_mask(child, shape_where), group=group, z=z, where=shape_where))
                else:
                    skipped[f"<{tag}> element(s) skipped"] += 1
            images[image_id] = ImageAnnotation(image, shapes, size, where=where)
            if subset:
                subsets[image_id] = subset
