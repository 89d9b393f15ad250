"""Predictions as pre-annotations: a model's label maps or instance maps turned into the shapes a labelling tool
opens and a person corrects, written in the tools' own layouts (``tools/predict.py --save-format``).

From a prediction to shapes (:func:`semantic_regions`, :func:`instance_regions`):

* semantic: one region per connected piece (8-connected) of each class; pieces under ``min_area`` pixels
  (specks) are dropped. A class named like the background (``background``, ``_background_``) gets no shapes:
  it is what no shape covers. Regions are written largest first (by the area inside their outline), so a region
  inside another one's hole is drawn after it and fills it again;
* instance: one region per instance of the instance map (so overlaps are resolved as in ``instances/``), with its
  class and score; pieces of an instance under ``min_area`` are dropped, an instance with nothing left is left out
  (both counted in the summary);
* outlines: the region's outer contours (OpenCV), simplified with Douglas-Peucker to ``tolerance`` pixels (a
  vertex every few pixels instead of one per boundary pixel). A region keeps its holes where the outline alone
  would fill ``min_area`` or more pixels that no shape drawn later covers: as a mask where the format has masks
  (LabelMe ``mask`` shape, CVAT ``<mask>``, COCO RLE), as one polygon bridged into its holes in YOLO.

Coordinates: LabelMe, CVAT and YOLO polygons run through boundary pixels' centres (pixel (x, y) at x, y; drawn
with the outline included, as LabelMe and OpenCV draw them); COCO polygons run along the pixels' outer edges
(COCO's convention: pixel x spans [x, x + 1)), so pycocotools rasterises them back to the same pixels.

The writers (:class:`LabelWriter` and its subclasses, one per format) lay the files out as the tool's own export
does, in ``<output>/<format>/``; images are hard-linked in (copied where linking fails) where the layout keeps
them beside the labels. They are fed from the prediction's writer threads (:meth:`LabelWriter.add` is thread
safe) and write the files that cover all images in :meth:`LabelWriter.close`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Sequence

import cv2
import numpy as np
from PIL import Image

from seg_ext.data.annotations import BACKGROUND_NAMES
from seg_ext.data.voc import voc_colormap
from seg_ext.errors import SegExtError
from seg_ext.io import write_json

DEFAULT_TOLERANCE = 2.0
DEFAULT_MIN_AREA = 16
MASK_FORMAT = "masks"  # the label maps / instance maps of the method itself (``masks/``, ``instances/``)


@dataclass
class Region:
    """One shape to write.

    Attributes:
        label: its class name.
        mask: its pixels inside its box (the tightest around them), (h, w) bool: a region costs its box's bytes,
            not the image's.
        origin: (left, top) of that box in the image.
        size: the image's (height, width).
        outlines: its outer polygons in image coordinates, each (N, 2) float (x, y) through boundary pixels'
            centres, simplified.
        holes: the outlines alone would fill pixels nobody draws later: write the mask (or bridge the holes).
        score: the instance's score (instances), else None.
    """

    label: str
    mask: np.ndarray
    origin: tuple[int, int]
    size: tuple[int, int]
    outlines: list[np.ndarray]
    holes: bool = False
    score: float | None = None

    def box(self) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the pixels."""
        return self.origin[0], self.origin[1], self.mask.shape[1], self.mask.shape[0]

    def full(self) -> np.ndarray:
        """The pixels as an image-sized (H, W) bool mask."""
        out = np.zeros(self.size, bool)
        left, top, width, height = self.box()
        out[top:top + height, left:left + width] = self.mask
        return out

    def coco_polygons(self) -> list[list[float]]:
        """The outer polygons along the pixels' edges, in COCO's coordinates (x0, y0, x1, y1, ...)."""
        return [[round(float(v), 2) for v in edge_polygon(p).ravel()] for p in self.outlines]

    def bridged(self, tolerance: float) -> np.ndarray:
        """One polygon through every outline and hole (simplified to ``tolerance``), joined by zero-width bridges:
        for a format with one polygon per shape and no holes (YOLO)."""
        contours, _ = cv2.findContours(self.mask.astype(np.uint8), cv2.RETR_CCOMP, _chain(tolerance))
        parts = sorted((simplified(c.reshape(-1, 2), tolerance) + self.origin for c in contours), key=lambda p: -len(p))
        return joined_polygon(parts)


@dataclass
class PreAnnotation:
    """One image's prediction, as the writers take it.

    Attributes:
        image: the image file.
        name: its unique output stem.
        size: (height, width).
        regions: the shapes (see the module docstring).
        labels: semantic: the class map (class ids of ``class_names``); instances: None.
        instance_map: instances: the instance ids (1..N by decreasing score; 0 none), else None.
        instance_labels: instances: each id's class (1-based into ``class_names``).
    """

    image: Path
    name: str
    size: tuple[int, int]
    regions: list[Region]
    labels: np.ndarray | None = None
    instance_map: np.ndarray | None = None
    instance_labels: np.ndarray | None = None


def has_background(class_names: Sequence[str]) -> bool:
    """Whether class 0 of a semantic model is the background (then it gets no shapes)."""
    return bool(class_names) and class_names[0] in BACKGROUND_NAMES


def object_classes(task: str, class_names: Sequence[str]) -> list[str]:
    """The classes shapes are written for, in the model's order (a semantic model's background left out)."""
    if task == "semantic" and has_background(class_names):
        return list(class_names[1:])
    return list(class_names)


def outlines_of(mask: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """The outer contours of ``mask`` through boundary pixels' centres, simplified (:func:`simplified`). Each at
    least 3 points (a one- or two-pixel piece repeats its points)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, _chain(tolerance))
    return [simplified(c.reshape(-1, 2), tolerance) for c in contours]


def _chain(tolerance: float) -> int:
    """Every boundary pixel for Douglas-Peucker to choose from; with no simplification only the corners (lossless)."""
    return cv2.CHAIN_APPROX_NONE if tolerance > 0 else cv2.CHAIN_APPROX_SIMPLE


def edge_polygon(points: np.ndarray) -> np.ndarray:
    """A polygon through boundary pixels' centres (pixel (x, y) at x, y) moved onto those pixels' outer edges in
    COCO's coordinates (pixel x spans [x, x + 1)): shifted by half a pixel, each edge pushed out by half a pixel
    (vertices mitred, the mitre capped at twice that). pycocotools then fills the pixels the centre polygon draws."""
    p = points.astype(float) + 0.5
    ahead, behind = np.roll(p, -1, axis=0), np.roll(p, 1, axis=0)
    area = 0.5 * float(np.sum(p[:, 0] * ahead[:, 1] - ahead[:, 0] * p[:, 1]))
    if abs(area) < 1e-9:  # no area (a line of pixels): the box around its points' pixels
        (x0, y0), (x1, y1) = p.min(0) - 0.5, p.max(0) + 0.5
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    sign = 1.0 if area > 0 else -1.0

    def normals(edges: np.ndarray) -> np.ndarray:
        length = np.maximum(np.hypot(edges[:, 0], edges[:, 1]), 1e-12)[:, None]
        return sign * np.stack([edges[:, 1], -edges[:, 0]], axis=1) / length

    before, after = normals(p - behind), normals(ahead - p)
    mitre = before + after
    length = np.hypot(mitre[:, 0], mitre[:, 1])[:, None]
    mitre = np.where(length > 1e-9, mitre / np.maximum(length, 1e-12), before)
    cos_half = np.maximum((mitre * before).sum(1, keepdims=True), 0.25)
    return p + 0.5 * mitre / cos_half


FIT = 0.98  # the least IoU of a simplified outline with the outline it simplifies


def simplified(points: np.ndarray, tolerance: float) -> np.ndarray:
    """``points`` (a closed contour through pixel centres) simplified with Douglas-Peucker to ``tolerance`` pixels,
    or to half of that, a quarter, ... where the simplified polygon, drawn as LabelMe draws it, would overlap the
    contour's own pixels with an IoU under ``FIT`` (a small region keeps more of its corners); 0: unsimplified.
    Both are drawn on the contour's own box (the simplified polygon's vertices are some of the contour's)."""
    points = _at_least_3(points.astype(float))
    if tolerance <= 0 or len(points) <= 4:
        return points
    origin = points.min(0)
    shape = tuple(int(v) for v in (points.max(0) - origin)[::-1] + 1)
    exact = None
    while tolerance >= 0.25:
        approx = cv2.approxPolyDP(points.astype(np.float32).reshape(-1, 1, 2), float(tolerance), True).reshape(-1, 2)
        if len(approx) >= 3:
            exact = _centre_raster(points - origin, shape) if exact is None else exact
            drawn = _centre_raster(approx - origin, shape)
            if (drawn & exact).sum() >= FIT * (drawn | exact).sum():
                return approx.astype(float)
        tolerance /= 2
    return points


def _centre_raster(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A polygon through pixel centres, filled with its outline (as LabelMe and OpenCV draw them)."""
    canvas = np.zeros(shape, np.uint8)
    polygon = [np.round(points).astype(np.int32)]
    cv2.fillPoly(canvas, polygon, 1)
    cv2.polylines(canvas, polygon, True, 1)
    return canvas.astype(bool)


def _at_least_3(points: np.ndarray) -> np.ndarray:
    return points if len(points) >= 3 else np.concatenate([points] * 3)[:3]


def _filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled (what its outer outlines enclose)."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask)


def _keeps_holes(mask: np.ndarray, filled: np.ndarray, covered: np.ndarray, min_area: int) -> bool:
    """Whether ``mask``'s holes hold ``min_area`` or more pixels (at least 1) that ``covered`` (what the shapes drawn
    after it paint) leaves uncovered: then its outline alone would paint them."""
    return int((filled & ~mask & ~covered).sum()) >= max(int(min_area), 1)


def _region(label: str, mask: np.ndarray, origin: tuple[int, int], size: tuple[int, int], tolerance: float,
            holes: bool, score: float | None = None) -> Region:
    return Region(label, mask, origin, size, [p + origin for p in outlines_of(mask, tolerance)], holes, score)


def semantic_regions(labels: np.ndarray, class_names: Sequence[str], tolerance: float = DEFAULT_TOLERANCE,
                     min_area: int = DEFAULT_MIN_AREA, dropped: Counter | None = None) -> list[Region]:
    """The regions of a class map (see the module docstring), largest first."""
    first = 1 if has_background(class_names) else 0
    pieces: list[tuple[int, str, np.ndarray, np.ndarray, tuple[slice, slice]]] = []
    for c in range(first, len(class_names)):
        count, components, stats, _ = cv2.connectedComponentsWithStats((labels == c).astype(np.uint8), connectivity=8)
        for k in range(1, count):
            left, top, width, height, area = (int(v) for v in stats[k])
            if area < min_area:
                if dropped is not None:
                    dropped[f"semantic piece(s) under {min_area} pixels (specks)"] += 1
                continue
            box = (slice(top, top + height), slice(left, left + width))
            piece = components[box] == k
            filled = _filled(piece)  # its holes lie inside its box
            pieces.append((int(filled.sum()), class_names[c], piece, filled, box))
    pieces.sort(key=lambda p: -p[0])
    regions = []
    later = np.zeros(labels.shape, bool)  # what the regions after this one draw
    for _, name, piece, filled, box in reversed(pieces):
        origin = (box[1].start, box[0].start)
        regions.append(_region(name, piece, origin, labels.shape, tolerance,
                               _keeps_holes(piece, filled, later[box], min_area)))
        later[box] |= piece
    return regions[::-1]


def instance_regions(instance_map: np.ndarray, labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                     tolerance: float = DEFAULT_TOLERANCE, min_area: int = DEFAULT_MIN_AREA,
                     dropped: Counter | None = None) -> list[Region]:
    """The regions of an instance map (ids 1..N; ``labels`` and ``scores`` per id), in id order."""
    from scipy import ndimage

    boxes = ndimage.find_objects(instance_map, max_label=len(scores))  # each id's box, in one pass
    regions = []
    for k, (label, score) in enumerate(zip(labels, scores), start=1):
        box = boxes[k - 1]
        if box is None:  # no pixel of its own in the map (covered by higher-scored instances)
            if dropped is not None:
                dropped["instance(s) with no piece left"] += 1
            continue
        mask = instance_map[box] == k
        count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        small = [j for j in range(1, count) if stats[j, cv2.CC_STAT_AREA] < min_area]
        if small:
            mask = mask & ~np.isin(components, small)
            if dropped is not None:
                dropped[f"instance piece(s) under {min_area} pixels"] += len(small)
        if not mask.any():
            if dropped is not None:
                dropped["instance(s) with no piece left"] += 1
            continue
        ys, xs = np.nonzero(mask)  # the box again, tight around what is left
        mask = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        origin = (box[1].start + int(xs.min()), box[0].start + int(ys.min()))
        name = class_names[int(label) - 1] if 0 < int(label) <= len(class_names) else str(int(label))
        nothing = np.zeros(mask.shape, bool)
        regions.append(_region(name, mask, origin, instance_map.shape, tolerance,
                               _keeps_holes(mask, _filled(mask), nothing, min_area), round(float(score), 5)))
    return regions


# ---- writers ---------------------------------------------------------------------------------------------------


def link_image(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy where the file system cannot link), replaced if there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _mask_png(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Written(NamedTuple):
    """What a writer keeps of an image for its closing files."""

    name: str
    file_name: str
    size: tuple[int, int]
    kept: Any


class LabelWriter:
    """Writes pre-annotations of one format into ``<output>/<name>/``."""

    name: ClassVar[str] = ""

    def __init__(self, output_dir: Path, task: str, class_names: Sequence[str], tolerance: float) -> None:
        self.root = Path(output_dir) / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.task, self.class_names, self.tolerance = task, list(class_names), tolerance
        self.classes = object_classes(task, class_names)
        self.lock = threading.Lock()
        self.items: list[Written] = []

    def add(self, item: PreAnnotation) -> None:
        """Write what belongs to this image alone; keep what the closing files need (not its masks: memory stays
        flat in the number of images)."""
        kept = self.write_image(item)
        with self.lock:
            self.items.append(Written(item.name, self.image_name(item), item.size, kept))

    def write_image(self, item: PreAnnotation) -> Any:
        return None

    def close(self) -> None:
        """Write the files that cover every image (in the order of the names)."""
        self.items.sort(key=lambda written: written.name)
        self.finish()

    def finish(self) -> None:
        pass

    def background(self, default: str) -> str:
        """The name class 0 is read back as: a semantic model's own background name, else the format's usual."""
        return self.class_names[0] if self.task == "semantic" and has_background(self.class_names) else default

    def image_name(self, item: PreAnnotation) -> str:
        return f"{item.name}{item.image.suffix.lower()}"


class LabelMeWriter(LabelWriter):
    """``labelme/<stem>.json`` per image (LabelMe 5: polygons, ``mask`` shapes for regions with holes; the score in
    the shape's ``description``; ``imagePath`` relative to the JSON, no image data) and ``labels.txt``
    (``__ignore__``, ``_background_``, the classes: what ``labelme --labels labels.txt`` takes)."""

    name = "labelme"

    def write_image(self, item: PreAnnotation) -> None:
        shapes = []
        for k, region in enumerate(item.regions):
            base = {"label": region.label, "group_id": k + 1 if self.task == "instance" else None,
                    "description": "" if region.score is None else f"score={region.score:.3f}", "flags": {}}
            if region.holes:
                left, top, width, height = region.box()
                shapes.append({**base, "points": [[left, top], [left + width - 1, top + height - 1]],
                               "shape_type": "mask", "mask": _mask_png(region.mask)})
            else:
                shapes.extend({**base, "points": [[float(x), float(y)] for x, y in polygon], "shape_type": "polygon",
                               "mask": None} for polygon in region.outlines)
        data = {"version": "5.5.0", "flags": {}, "shapes": shapes,
                "imagePath": os.path.relpath(item.image.resolve(), self.root.resolve()), "imageData": None,
                "imageHeight": int(item.size[0]), "imageWidth": int(item.size[1])}
        (self.root / f"{item.name}.json").write_text(json.dumps(data, indent=2))

    def finish(self) -> None:
        lines = ["__ignore__", self.background("_background_"), *self.classes]
        (self.root / "labels.txt").write_text("\n".join(lines) + "\n")


class CvatWriter(LabelWriter):
    """``cvat/annotations.xml`` (CVAT for images 1.1, one task: polygons, ``<mask>`` for regions with holes, the
    score as a text attribute ``score``) and ``cvat/images/`` (the images, linked)."""

    name = "cvat"

    def write_image(self, item: PreAnnotation) -> ET.Element:
        link_image(item.image, self.root / "images" / self.image_name(item))
        image = ET.Element("image", id="", name=self.image_name(item), width=str(item.size[1]), height=str(item.size[0]))
        for k, region in enumerate(item.regions):
            common = {"label": region.label, "source": "auto", "occluded": "0", "z_order": "0"}
            if self.task == "instance":
                common["group_id"] = str(k + 1)
            if region.holes:
                left, top, width, height = region.box()
                shapes = [ET.SubElement(image, "mask", **common, rle=_cvat_rle(region.mask), left=str(left), top=str(top),
                                        width=str(width), height=str(height))]
            else:
                shapes = [ET.SubElement(image, "polygon", **common, points=";".join(f"{x:.2f},{y:.2f}" for x, y in polygon))
                          for polygon in region.outlines]
            if region.score is not None:
                for shape in shapes:
                    ET.SubElement(shape, "attribute", name="score").text = f"{region.score:.4f}"
        return image

    def finish(self) -> None:
        top = ET.Element("annotations")
        ET.SubElement(top, "version").text = "1.1"
        meta = ET.SubElement(top, "meta")
        task = ET.SubElement(meta, "task")
        for key, value in (("id", "1"), ("name", "seg_ext predictions"), ("size", str(len(self.items))),
                           ("mode", "annotation"), ("overlap", "0")):
            ET.SubElement(task, key).text = value
        labels = ET.SubElement(task, "labels")
        colours = voc_colormap(len(self.classes) + 1)[1:]
        for name, colour in zip(self.classes, colours):
            label = ET.SubElement(labels, "label")
            ET.SubElement(label, "name").text = name
            ET.SubElement(label, "color").text = "#" + "".join(f"{int(v):02x}" for v in colour)
            ET.SubElement(label, "type").text = "any"
            if self.task == "instance":
                attributes = ET.SubElement(ET.SubElement(label, "attributes"), "attribute")
                for key, value in (("name", "score"), ("mutable", "False"), ("input_type", "text"),
                                   ("default_value", ""), ("values", "")):
                    ET.SubElement(attributes, key).text = value
        for index, written in enumerate(self.items):
            written.kept.set("id", str(index))
            top.append(written.kept)
        ET.indent(top, "  ")
        ET.ElementTree(top).write(self.root / "annotations.xml", encoding="utf-8", xml_declaration=True)


def _cvat_rle(patch: np.ndarray) -> str:
    """CVAT's mask RLE: run lengths over the box row by row, starting with a (possibly empty) background run."""
    flat = patch.astype(bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])
    return ", ".join(str(int(r)) for r in runs)


class CocoWriter(LabelWriter):
    """``coco/annotations/instances_default.json`` (CVAT's COCO export layout: images, categories and annotations
    without scores, polygons or RLE for regions with holes; what a labelling tool imports) and ``coco/images/``
    (the images, linked). Instance scores stay in the results files beside (``results_segm.json``)."""

    name = "coco"

    def write_image(self, item: PreAnnotation) -> list[dict[str, Any]]:
        from pycocotools import mask as mask_utils

        link_image(item.image, self.root / "images" / self.image_name(item))
        annotations = []
        for region in item.regions:
            if region.holes:
                rle = mask_utils.encode(np.asfortranarray(region.full().astype(np.uint8)))
                segmentation: Any = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
            else:
                segmentation = region.coco_polygons()
            left, top, width, height = region.box()
            annotations.append({"category_id": self.classes.index(region.label) + 1, "segmentation": segmentation,
                                "area": int(region.mask.sum()), "bbox": [left, top, width, height], "iscrowd": 0})
        return annotations

    def finish(self) -> None:
        images, annotations = [], []
        for index, written in enumerate(self.items, start=1):
            images.append({"id": index, "file_name": written.file_name, "height": int(written.size[0]),
                           "width": int(written.size[1])})
            for annotation in written.kept:
                annotations.append({"id": len(annotations) + 1, "image_id": index, **annotation})
        categories = [{"id": k + 1, "name": name, "supercategory": ""} for k, name in enumerate(self.classes)]
        write_json({"info": {"description": "seg_ext predictions (pre-annotations)"}, "licenses": [],
                    "categories": categories, "images": images, "annotations": annotations},
                   self.root / "annotations" / "instances_default.json")


class YoloWriter(LabelWriter):
    """``yolo/images/`` (linked), ``yolo/labels/<stem>.txt`` (``class x1 y1 x2 y2 ...`` normalised to [0, 1]; a
    region with holes or several pieces as one polygon bridged through them, as Ultralytics' converters join
    them), the names as ``yolo/classes.txt`` (X-AnyLabeling's) and ``yolo/data.yaml`` (Ultralytics')."""

    name = "yolo"

    def write_image(self, item: PreAnnotation) -> None:
        link_image(item.image, self.root / "images" / self.image_name(item))
        h, w = item.size
        lines = []
        for region in item.regions:
            polygons = [region.bridged(self.tolerance)] if region.holes else region.outlines
            if self.task == "instance" and len(polygons) > 1:  # one line is one instance: its pieces joined
                polygons = [joined_polygon(polygons)]
            for polygon in polygons:
                coords = " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in polygon)
                lines.append(f"{self.classes.index(region.label)} {coords}")
        label = self.root / "labels" / f"{item.name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines))

    def finish(self) -> None:
        (self.root / "classes.txt").write_text("".join(f"{name}\n" for name in self.classes))
        # the names for readers that take them from data.yaml (Ultralytics' layout); no train/val folders: the
        # images are one set, split as the reader splits unsplit data
        names = "".join(f"  {k}: {json.dumps(name)}\n" for k, name in enumerate(self.classes))
        (self.root / "data.yaml").write_text(f"path: .\nnc: {len(self.classes)}\nnames:\n{names}")


def joined_polygon(polygons: list[np.ndarray]) -> np.ndarray:
    """The polygons as one: each spliced in at the point closest to what is joined so far, there and back along
    the same zero-width bridge (filled even-odd, the bridges cancel; the outline draws them, a pixel wide)."""
    joined = polygons[0]
    for part in polygons[1:]:
        d = ((joined[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        joined = np.concatenate([joined[:i + 1], part[j:], part[:j + 1], joined[i:]])
    return joined


class VocWriter(LabelWriter):
    """``voc/JPEGImages/`` (linked), ``voc/SegmentationClass/<stem>.png`` (palette PNGs of class indices, VOC's
    colours), for instances ``voc/SegmentationObject/<stem>.png`` (1..N, at most 254 objects), the classes (the
    background first) as ``class_names.txt`` (labelme's VOC export) and ``labelmap.txt`` (CVAT's and Datumaro's),
    and ``ImageSets/Segmentation/default.txt``. Written from the label maps, not the
    polygons: VOC's masks are pixels."""

    name = "voc"

    def write_image(self, item: PreAnnotation) -> None:
        link_image(item.image, self.root / "JPEGImages" / self.image_name(item))
        palette = voc_colormap().ravel().tolist()
        if self.task == "semantic":
            shift = 0 if has_background(self.class_names) else 1
            classes = item.labels.astype(np.uint8) + shift
        else:
            ids = item.instance_map
            if int(ids.max(initial=0)) > 254:
                raise SegExtError(f"image {item.image} has {int(ids.max())} instances; VOC's SegmentationObject holds "
                                  "at most 254: raise --score-threshold or choose another --save-format")
            lookup = np.concatenate([[0], np.asarray(item.instance_labels, np.int64)]).astype(np.uint8)
            classes = lookup[ids]
            objects = Image.fromarray(ids.astype(np.uint8), mode="P")
            objects.putpalette(palette)
            (self.root / "SegmentationObject").mkdir(exist_ok=True)
            objects.save(self.root / "SegmentationObject" / f"{item.name}.png")
        picture = Image.fromarray(classes, mode="P")
        picture.putpalette(palette)
        (self.root / "SegmentationClass").mkdir(exist_ok=True)
        picture.save(self.root / "SegmentationClass" / f"{item.name}.png")

    def finish(self) -> None:
        names = [self.background("background"), *self.classes]
        (self.root / "class_names.txt").write_text("".join(f"{n}\n" for n in names))
        colours = voc_colormap(len(names))  # the same names for readers of CVAT's and Datumaro's VOC (name:r,g,b::)
        (self.root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
            f"{n}:{','.join(str(int(v)) for v in c)}::\n" for n, c in zip(names, colours)))
        lists = self.root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / "default.txt").write_text("".join(f"{written.name}\n" for written in self.items))


WRITERS: dict[str, type[LabelWriter]] = {w.name: w for w in (LabelMeWriter, CvatWriter, CocoWriter, YoloWriter, VocWriter)}
SAVE_FORMATS = (MASK_FORMAT, *WRITERS)


def check_formats(names: Sequence[str]) -> list[str]:
    """The requested formats, each known (in the order given, once).

    Raises:
        SegExtError: an unknown name, in one sentence with the known ones.
    """
    out = []
    for name in names:
        for part in str(name).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in SAVE_FORMATS:
                raise SegExtError(f"--save-format {part!r} is not a format predictions are written in; expected one or "
                                  f"more of: {', '.join(SAVE_FORMATS)}")
            if part not in out:
                out.append(part)
    return out or [MASK_FORMAT]


@dataclass
class PreAnnotator:
    """Turns each image's prediction into regions once and hands it to every requested writer."""

    output_dir: Path
    task: str
    class_names: list[str]
    formats: list[str]
    tolerance: float = DEFAULT_TOLERANCE
    min_area: int = DEFAULT_MIN_AREA
    dropped: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise SegExtError(f"--tolerance is {self.tolerance}; expected 0 (every corner) or more pixels")
        if self.min_area < 0:
            raise SegExtError(f"--min-area is {self.min_area}; expected 0 or more pixels")
        self.writers = [WRITERS[f](self.output_dir, self.task, self.class_names, self.tolerance)
                        for f in self.formats if f in WRITERS]

    def add(self, image: Path, name: str, result: dict[str, np.ndarray]) -> dict[str, int]:
        """Write one image's prediction (``Predictor.result``: ``labels`` or ``instance_map``/``labels``/``scores``)
        in every format; returns the count of shapes written."""
        dropped: Counter = Counter()
        if self.task == "semantic":
            labels = result["labels"]
            regions = semantic_regions(labels, self.class_names, self.tolerance, self.min_area, dropped)
            item = PreAnnotation(Path(image), name, labels.shape[:2], regions, labels=labels)
        else:
            ids = result["instance_map"]
            regions = instance_regions(ids, result["labels"], result["scores"], self.class_names, self.tolerance,
                                       self.min_area, dropped)
            item = PreAnnotation(Path(image), name, ids.shape[:2], regions, instance_map=ids,
                                 instance_labels=np.asarray(result["labels"]))
        for writer in self.writers:
            writer.add(item)
        with self.lock:
            self.dropped.update(dropped)
        return {"shapes": len(regions), "vertices": sum(len(p) for r in regions for p in r.outlines)}

    def close(self) -> dict[str, Any]:
        for writer in self.writers:
            writer.close()
        return {"formats": [w.name for w in self.writers], "tolerance": self.tolerance, "min_area": self.min_area,
                "dropped": dict(self.dropped)}
