"""Pre-annotations (seg_ext.data.preannotate): label maps and instance maps written in each labelling tool's
format, read back by the package's own importers (the format found by detection, as a user's run finds it), give
back the maps: per image mean IoU >= 0.98 at the default tolerance, the classes in the same order. The maps have
what real predictions have: holes with background in them, a class inside another's hole, instances in several
pieces, specks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from seg_ext.data.formats import find_format
from seg_ext.data.preannotate import (DEFAULT_MIN_AREA, DEFAULT_TOLERANCE, WRITERS, PreAnnotator, check_formats,
                                      instance_regions, semantic_regions)
from seg_ext.errors import SegExtError

FORMATS = list(WRITERS)
SEMANTIC_CLASSES = ["background", "cat", "dog"]
INSTANCE_CLASSES = ["person", "car"]


def semantic_map(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint8)
    cx, cy = int(rng.integers(40, 60)), int(rng.integers(50, 70))
    cv2.circle(labels, (cx, cy), 35, 1, -1)
    cv2.circle(labels, (cx, cy), 12, 0, -1)  # a background hole in a cat
    cv2.rectangle(labels, (100, 20), (150, 100), 2, -1)
    cv2.ellipse(labels, (125, 60), (12, 8), 30, 0, 360, 1, -1)  # a cat inside a dog's hole
    labels[3:6, 3:6] = 2  # a speck
    return labels


def instance_map(h: int = 120, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((h, w), np.uint16)
    cx = int(rng.integers(40, 60))
    cv2.circle(ids, (cx, 60), 35, 1, -1)
    cv2.circle(ids, (cx, 60), 12, 0, -1)  # a hole
    cv2.rectangle(ids, (100, 20), (150, 100), 2, -1)
    cv2.rectangle(ids, (95, 104), (120, 116), 2, -1)  # the second piece of instance 2
    cv2.ellipse(ids, (125, 60), (10, 14), 0, 0, 360, 3, -1)  # inside instance 2
    return ids, np.array([1, 2, 1]), np.array([0.93, 0.71, 0.55])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def semantic_agreement(read: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Mean IoU over the classes either map has."""
    present = [c for c in range(classes) if (read == c).any() or (labels == c).any()]
    return float(np.mean([iou(read == c, labels == c) for c in present]))


def instance_agreement(masks: np.ndarray, categories: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the predicted instances of the IoU with the read-back instance of the same class that fits best
    (0 where none); a read-back instance with no prediction counts 0 too."""
    scores = []
    for k, label in enumerate(labels, start=1):
        same = [m.astype(bool) for m, c in zip(masks, categories) if c == label]
        scores.append(max((iou(m, ids == k) for m in same), default=0.0))
    scores += [0.0] * max(0, len(masks) - len(labels))
    return float(np.mean(scores))


def write_images(folder: Path, count: int, h: int = 120, w: int = 160) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        path = folder / f"photo_{k}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def read_semantic(root: Path) -> tuple[str, list[str], dict[str, np.ndarray]]:
    fmt = find_format(root, "auto", "semantic")
    source = fmt.semantic_source(root)
    maps = {Path(image).stem: source.mask_reader(ref, len(source.class_names), 255)
            for image, ref in source.items.values()}
    return fmt.name, source.class_names, maps


def read_instances(root: Path) -> tuple[str, list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    fmt = find_format(root, "auto", "instance")
    source = fmt.instance_source(root)
    read = {Path(image).stem: source.read(i)[:2] for i, image in source.items.items()}
    return fmt.name, [c["name"] for c in source.categories], read


@pytest.mark.parametrize("name", FORMATS)
def test_semantic_round_trip(name, tmp_path):
    images = write_images(tmp_path / "photos", 3)
    maps = {p.stem: semantic_map(seed=k) for k, p in enumerate(images)}
    writer = PreAnnotator(tmp_path / "out", "semantic", SEMANTIC_CLASSES, [name])
    for path in images:
        writer.add(path, path.stem, {"labels": maps[path.stem]})
    summary = writer.close()
    assert summary["dropped"] == {f"semantic piece(s) under {DEFAULT_MIN_AREA} pixels (specks)": 3}
    found, classes, read = read_semantic(tmp_path / "out" / name)
    assert found == name and classes == SEMANTIC_CLASSES and sorted(read) == sorted(maps)
    for stem, labels in maps.items():
        expected = labels.copy()
        expected[3:6, 3:6] = 0  # the speck, dropped
        assert semantic_agreement(read[stem], expected, 3) >= 0.98, (name, stem)


@pytest.mark.parametrize("name", FORMATS)
def test_instance_round_trip(name, tmp_path):
    images = write_images(tmp_path / "photos", 2)
    writer = PreAnnotator(tmp_path / "out", "instance", INSTANCE_CLASSES, [name])
    for k, path in enumerate(images):
        ids, labels, scores = instance_map(seed=k)
        writer.add(path, path.stem, {"instance_map": ids, "labels": labels, "scores": scores})
    writer.close()
    found, classes, read = read_instances(tmp_path / "out" / name)
    assert found == name and classes == INSTANCE_CLASSES
    for k, path in enumerate(images):
        ids, labels, _ = instance_map(seed=k)
        masks, categories = read[path.stem]
        assert len(masks) == len(labels)  # the two pieces of instance 2 are one instance
        assert instance_agreement(masks, categories, ids, labels) >= 0.98, (name, path.stem)


def test_a_model_without_a_background_class_gets_shapes_for_every_class(tmp_path):
    """Synthetic scenes' class 0 is a class like any other: it gets shapes, and is read back after a background
    every format adds."""
    images = write_images(tmp_path / "photos", 1)
    labels = semantic_map()
    names = ["sky", "cat", "dog"]
    writer = PreAnnotator(tmp_path / "out", "semantic", names, FORMATS)
    writer.add(images[0], images[0].stem, {"labels": labels})
    writer.close()
    for name in FORMATS:
        _, classes, read = read_semantic(tmp_path / "out" / name)
        assert classes[1:] == names, name
        shifted = labels.astype(np.int64) + 1
        shifted[3:6, 3:6] = 1  # the speck (a dog) is dropped: the sky around it, drawn without the hole, covers it
        got = read[images[0].stem]
        assert semantic_agreement(got, shifted, 4) >= 0.98, name


def test_holes_are_kept_where_nothing_drawn_later_fills_them():
    labels = semantic_map()
    regions = semantic_regions(labels, SEMANTIC_CLASSES)
    by_label = {r.label: r for r in regions}
    assert [r.label for r in regions] == ["dog", "cat", "cat"]  # largest outline first
    assert by_label["dog"].holes is False  # its hole holds a cat, drawn after it
    assert regions[1].holes is True  # the ring's hole holds background
    assert regions[2].holes is False
    ids, labels, scores = instance_map()
    instances = instance_regions(ids, labels, scores, INSTANCE_CLASSES)
    assert [(r.label, r.holes, r.score) for r in instances] == [("person", True, 0.93), ("car", True, 0.71),
                                                                 ("person", False, 0.55)]


def test_tolerance_trades_vertices_for_fidelity():
    labels = semantic_map()
    exact = semantic_regions(labels, SEMANTIC_CLASSES, tolerance=0)
    simple = semantic_regions(labels, SEMANTIC_CLASSES, tolerance=DEFAULT_TOLERANCE)
    vertices = [sum(len(p) for r in regions for p in r.outlines) for regions in (exact, simple)]
    assert vertices[1] * 3 < vertices[0]


def test_bad_format_names_are_one_sentence():
    assert check_formats(["labelme,cvat", "labelme"]) == ["labelme", "cvat"]
    assert check_formats([]) == ["masks"]
    with pytest.raises(SegExtError, match="--save-format 'labelmee' is not a format .* expected one or more of: masks, "
                                          "labelme, cvat, coco, yolo, voc"):
        check_formats(["labelmee"])
    with pytest.raises(SegExtError, match="--tolerance is -1"):
        PreAnnotator(Path("unused"), "semantic", SEMANTIC_CLASSES, ["labelme"], tolerance=-1)
