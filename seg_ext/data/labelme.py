"""LabelMe JSON (wkentaro/labelme; X-AnyLabeling writes the same): one ``<name>.json`` per image, in the dataset
folder or one folder below it (labelme's examples keep them in ``data_annotated/``), optionally ``labels.txt``.

* ``shapes``: ``polygon``, ``rectangle`` (two corners), ``circle`` (centre, a point on the circle) and ``mask`` (a
  base64 PNG over the box its two points give) are read; ``line``, ``linestrip``, ``point`` and ``points`` are
  skipped with a count. Shapes with the same ``label`` and ``group_id`` form one instance (``group_id`` null:
  the shape is its own instance). ``__ignore__`` marks ignore regions.
* Classes: the lines of ``labels.txt`` when there is one (labelme's convention: ``__ignore__`` first, then
  ``_background_`` = class 0, then the classes in order; a label it does not list is an error); otherwise
  ``background`` and every label found, sorted.
* ``imagePath`` is relative to the JSON; an image embedded as ``imageData`` (and not on disk) is written once to
  the cache of generated data.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from seg_ext.data.annotations import BACKGROUND_NAMES, AnnotatedFormat, AnnotationSet, ImageAnnotation, Shape
from seg_ext.errors import DatasetError

IGNORE_LABEL = "__ignore__"
REGION_SHAPES = ("polygon", "rectangle", "circle", "mask")
SKIPPED_SHAPES = ("line", "linestrip", "point", "points")


def _labelme_files(root: Path) -> list[Path]:
    """LabelMe JSONs in ``root`` or in its direct subfolders (sorted)."""
    found = sorted(p for p in root.glob("*.json") if _is_labelme(p))
    if found:
        return found
    return sorted(p for p in root.glob("*/*.json") if _is_labelme(p))


def _is_labelme(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b'"shapes"' in head and (b'"imagePath"' in head or b'"version"' in head) and b'"categories"' not in head


def _embedded_image(json_path: Path, data: str, name: str) -> Path:
    """An image embedded in a LabelMe file, written once into the generated-data cache."""
    from seg_ext.data.synthetic import default_generated_dir

    key = hashlib.sha256(str(json_path.resolve()).encode()).hexdigest()[:16]
    out = default_generated_dir() / "labelme_embedded" / key / f"{Path(name).stem or json_path.stem}.png"
    if not out.is_file():
        try:
            image = ImageOps.exif_transpose(Image.open(io.BytesIO(base64.b64decode(data))))  # as LabelMe shows it
            out.parent.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(out)
        except Exception:
            raise DatasetError(f"{json_path}: its imageData cannot be decoded as an image; expected a base64 PNG or JPEG") from None
    return out


class LabelMeFormat(AnnotatedFormat):
    name = "labelme"
    layout = "LabelMe JSON files (<name>.json with shapes, one per image; labels.txt optional)"
    default_split = (0.1, 0.1)

    @classmethod
    def detect(cls, root: Path, files: dict[str, Any] | None = None) -> int:
        if any(_is_labelme(p) for p in root.glob("*.json")):
            return 2
        return 1 if any(_is_labelme(p) for p in root.glob("*/*.json")) else 0

    def read(self, root: Path) -> AnnotationSet:
        files = _labelme_files(root)
        if not files:
            raise DatasetError(f"dataset folder {root} holds no LabelMe JSON file; expected <name>.json files with shapes")
        labels_file = next((p for p in (root / "labels.txt", files[0].parent / "labels.txt") if p.is_file()), None)
        listed = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()] if labels_file else None
        skipped, outside = Counter(), Counter()
        images: dict[str, ImageAnnotation] = {}
        found_labels: list[str] = []
        for path in files:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                raise DatasetError(f"LabelMe file {path} is not valid JSON; expected a LabelMe annotation") from None
            image_id = path.relative_to(root).with_suffix("").as_posix()
            image = path.parent / str(data.get("imagePath") or "")
            if not image.is_file():
                if data.get("imageData"):
                    image = _embedded_image(path, data["imageData"], str(data.get("imagePath") or ""))
                else:
                    raise DatasetError(f"LabelMe file {path} names image {data.get('imagePath')!r}, which is not at "
                                       f"{image}; expected the image beside the JSON (imagePath is relative to it)")
            h, w = data.get("imageHeight"), data.get("imageWidth")
            size = (int(h), int(w)) if h and w else None
            shapes = []
            for k, raw in enumerate(data.get("shapes") or []):
                where = f"LabelMe file {path}, shape {k}"
                kind, label = raw.get("shape_type") or "polygon", str(raw.get("label", ""))
                if kind in SKIPPED_SHAPES:
                    skipped[f"{kind} shape(s) skipped (lines and points are not regions)"] += 1
                    continue
                if kind not in REGION_SHAPES:
                    raise DatasetError(f"{where} has shape_type {kind!r}; expected one of: {', '.join(REGION_SHAPES + SKIPPED_SHAPES)}")
                points = [(float(x), float(y)) for x, y in raw.get("points") or []]
                if kind == "polygon" and len(points) < 3:
                    raise DatasetError(f"{where} is a polygon with {len(points)} point(s); expected at least 3")
                if kind in ("rectangle", "circle") and len(points) != 2:
                    raise DatasetError(f"{where} is a {kind} with {len(points)} point(s); expected 2")
                if size and any(x < 0 or y < 0 or x > size[1] or y > size[0] for x, y in points):
                    outside["shape(s) with points outside the image (drawn clipped, as LabelMe does)"] += 1
                ignore = label == IGNORE_LABEL
                if not ignore and label not in found_labels:
                    found_labels.append(label)
                if not ignore and listed is not None and label not in listed:
                    raise DatasetError(f"{where} has label {label!r}, which {labels_file} does not list; expected one "
                                       "of its labels")
                mask = self._mask(raw, points, where) if kind == "mask" else None
                shapes.append(Shape(label, kind, points, mask=mask, group=raw.get("group_id"), ignore=ignore, where=where))
            images[image_id] = ImageAnnotation(image, shapes, size, where=f"LabelMe file {path}")
        if listed is not None:
            background = next((n for n in listed if n in BACKGROUND_NAMES), "background")
            classes = [n for n in listed if n not in BACKGROUND_NAMES and n != IGNORE_LABEL]
        else:
            background = "background"
            classes = sorted(n for n in found_labels if n not in BACKGROUND_NAMES)
        for shape in (s for a in images.values() for s in a.shapes):  # background-labelled shapes paint class 0
            if shape.label in BACKGROUND_NAMES and not shape.ignore:
                shape.label = background
        return AnnotationSet(root, "LabelMe annotations", classes, images, None, background, skipped + outside)

    @staticmethod
    def _mask(raw: dict[str, Any], points: list[tuple[float, float]], where: str):
        """A ``mask`` shape: a base64 PNG of the box (x1, y1)-(x2, y2), placed into a full-image mask."""
        try:
            patch = np.asarray(Image.open(io.BytesIO(base64.b64decode(raw["mask"])))).astype(bool)
        except Exception:
            raise DatasetError(f"{where} is a mask shape whose mask is not a base64 PNG") from None
        if patch.ndim == 3:
            patch = patch.any(-1)
        (x1, y1) = points[0]

        def draw(height: int, width: int) -> np.ndarray:
            full = np.zeros((height, width), bool)
            top, left = int(round(y1)), int(round(x1))
            ph, pw = patch.shape
            full[max(top, 0):min(top + ph, height), max(left, 0):min(left + pw, width)] = \
                patch[max(-top, 0):max(-top, 0) + min(top + ph, height) - max(top, 0),
                      max(-left, 0):max(-left, 0) + min(left + pw, width) - max(left, 0)]
            return full

        return draw
