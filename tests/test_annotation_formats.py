"""The annotation formats people export, read from real files written by the tools themselves
(``../shared/data/annotation_samples``, read in place): every reader on every sample of its format, the class
maps against LabelMe's own VOC export pixel by pixel, the instances against its own COCO export, and every kind
of bad annotation as one sentence naming the file (and the shape or line)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg_ext.data.formats import FORMATS, find_format
from seg_ext.data.semantic import SemanticSegDataset
from seg_ext.errors import DatasetError

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotation_samples"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"the annotation samples are not at {SAMPLES}")

# sample folder -> the format each task reads it as (None: refused in one sentence)
EXPECTED = {
    "labelme_instance": ("labelme", "labelme"),
    "labelme_semantic": ("labelme", "labelme"),
    "cvat_images_xml": ("cvat", "cvat"),
    "yolo_seg": ("yolo", "yolo"),
    "voc_seg": ("voc", "voc"),
    "voc_seg_labelme": ("voc", "voc"),
    "coco_rle": ("coco", "coco"),
    "coco_labelme": ("coco", "coco"),
    "common_semseg": ("colormask", None),
    "xanylabeling_semseg": ("colormask", "labelme"),
    "labelme_xml": (None, None),
}


@needs_samples
def test_every_sample_is_recognised_or_refused_in_one_sentence():
    assert set(EXPECTED) == {p.name for p in SAMPLES.iterdir() if p.is_dir()}, "a sample without an expectation"
    for name, formats in EXPECTED.items():
        for task, expected in zip(("semantic", "instance"), formats):
            if expected is None:
                with pytest.raises(DatasetError) as info:
                    find_format(SAMPLES / name, "auto", task)
                assert "\n" not in str(info.value) and str(SAMPLES / name) in str(info.value)
            else:
                assert find_format(SAMPLES / name, "auto", task).name == expected, (name, task)


def _class_maps(fmt: str, folder: str) -> dict[str, np.ndarray]:
    source = FORMATS[fmt]().semantic_source(SAMPLES / folder)
    dataset = SemanticSegDataset(source, sorted(source.items))
    return {Path(i).name: dataset.load_pair(k)[1] for k, i in enumerate(dataset.ids)}, source.class_names


@needs_samples
def test_labelme_class_maps_equal_labelmes_own_voc_export():
    ours, names = _class_maps("labelme", "labelme_semantic")
    theirs, their_names = _class_maps("voc", "voc_seg_labelme")
    assert names == their_names and set(ours) == set(theirs) == {"2011_000003", "2011_000006", "2011_000025"}
    differing = sum(int((ours[k] != theirs[k]).sum()) for k in ours)
    total = sum(m.size for m in ours.values())
    # one pixel of 544,000 differs: a polygon vertex PIL rounds differently from the version labelme ran
    assert differing <= 2, f"{differing} of {total} pixels differ"
    assert all((m == 255).any() for k, m in ours.items() if k != "2011_000025")  # __ignore__ regions


@needs_samples
def test_labelme_instances_equal_labelmes_own_coco_export(caplog):
    ours = FORMATS["labelme"]().instance_source(SAMPLES / "labelme_instance")
    theirs = FORMATS["coco"]().instance_source(SAMPLES / "coco_labelme")
    count = {}
    for source, key in ((ours, "ours"), (theirs, "theirs")):
        names = {c["id"]: c["name"] for c in source.categories}
        per_image = {}
        for image_id in source.items:
            masks, categories, _ = source.read(image_id)
            per_image[Path(image_id).name] = sorted(names[int(c)] for c in categories)
        count[key] = per_image
    assert count["ours"] == count["theirs"]
    assert sum(len(v) for v in count["ours"].values()) == 12  # group_id parts joined: 14 polygons, 12 instances


@needs_samples
def test_cvat_project_export():
    fmt = FORMATS["cvat"]()
    data = fmt.read(SAMPLES / "cvat_images_xml")
    assert data.classes == ["label1", "label2"] and len(data.images) == 6
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 2, "val": 2, "test": 2}
    assert data.skipped == {"polyline shape(s) skipped (not regions)": 3, "points shape(s) skipped (not regions)": 3}
    box = next(s for s in data.images["Train/img0"].shapes if s.kind == "rectangle")
    drawn = box.draw(8, 8)  # xtl 0, ytl 2, xbr 4, ybr 4: rows 2-4, columns 0-4
    assert drawn.sum() == 15 and drawn[2:5, 0:5].all()


@needs_samples
def test_cvat_files_named_otherwise_are_found_by_their_content(tmp_path):
    """The project export renamed (one file: the whole set), and split into one file per subset as Datumaro writes
    them (``Train.xml``, ...: the subsets named by the stems) read as the original: same images, shapes, splits."""
    import xml.etree.ElementTree as ET

    def shapes(data):
        return {i: [(s.label, s.kind, s.points) for s in a.shapes] for i, a in data.images.items()}

    original = FORMATS["cvat"]().read(SAMPLES / "cvat_images_xml")
    renamed, per_subset = tmp_path / "renamed", tmp_path / "per_subset"
    for folder in (renamed, per_subset):
        folder.mkdir()
        (folder / "images").symlink_to(SAMPLES / "cvat_images_xml" / "images")
    shutil.copy(SAMPLES / "cvat_images_xml" / "annotations.xml", renamed / "task_7_export.xml")
    for subset in ("Train", "Validation", "Test"):
        tree = ET.parse(SAMPLES / "cvat_images_xml" / "annotations.xml")
        for image in list(tree.getroot().iter("image")):
            if image.attrib.pop("subset") != subset:
                tree.getroot().remove(image)
        tree.write(per_subset / f"{subset}.xml")
    (per_subset / "notes.xml").write_text("<notes>not an annotation file</notes>")
    for folder in (renamed, per_subset):
        assert find_format(folder, "auto", "instance").name == "cvat"
        data = FORMATS["cvat"]().read(folder)
        assert data.classes == original.classes and data.splits == original.splits
        assert shapes(data) == shapes(original) and data.skipped == original.skipped
        assert {i: a.image.resolve() for i, a in data.images.items()} == {
            i: a.image.resolve() for i, a in original.images.items()}


@needs_samples
def test_yolo_polygons_are_denormalised_and_named():
    source = FORMATS["yolo"]().instance_source(SAMPLES / "yolo_seg")
    (image_id,) = source.items
    masks, categories, _ = source.read(image_id)
    names = {c["id"]: c["name"] for c in source.categories}
    assert [names[int(c)] for c in categories] == ["label_2", "label_4"]
    assert masks.shape == (2, 10, 15)  # the 15x10 image
    ys, xs = np.nonzero(masks[0])  # the triangle (0.1, 0.1), (0.4, 0.1), (0.4, 0.5) of 15x10
    assert xs.min() == 1 and xs.max() == 6 and ys.min() == 1 and ys.max() == 5


@needs_samples
def test_voc_rgb_masks_and_a_listed_image_without_a_mask(caplog):
    caplog.set_level(logging.WARNING)
    source = FORMATS["voc"]().semantic_source(SAMPLES / "voc_seg")
    assert list(source.items) == ["2007_000001"] and "2007_000002" in caplog.text
    mask = source.mask_reader(source.items["2007_000001"][1], 21, 255)
    assert (mask == source.class_names.index("bicycle")).all()  # RGB (0, 128, 0) through the VOC colormap
    instances = FORMATS["voc"]().instance_source(SAMPLES / "voc_seg")
    masks, categories = instances.read("2007_000001")
    assert masks.shape == (1, 10, 20) and masks.all() and categories.tolist() == [2]


@needs_samples
def test_coco_rle_crowd_regions_and_box_only_annotations(caplog):
    caplog.set_level(logging.WARNING)
    source = FORMATS["coco"]().instance_source(SAMPLES / "coco_rle")
    assert [c["name"] for c in source.categories] == ["a", "b", "c"]  # ids 1, 2, 4: by name, not position
    assert "1 COCO annotation(s) without a segmentation (boxes only) left out" in caplog.text
    masks, categories, crowd = source.read("val/b")
    assert crowd.tolist() == [False, True]
    assert masks[1].sum() == 20 and masks[1][:, :2].all()  # the RLE: the two left columns of the 5x10 image
    semantic = FORMATS["coco"]().semantic_source(SAMPLES / "coco_rle")
    mask = semantic.mask_reader(semantic.items["val/b"][1], len(semantic.class_names), 255)
    assert (mask[:, :2] == 255).all()  # a crowd region is ignore in class maps


@needs_samples
def test_colour_masks_through_their_tables():
    source = FORMATS["colormask"]().semantic_source(SAMPLES / "common_semseg")
    mask = source.mask_reader(source.items["0001"][1], len(source.class_names), 255)
    assert np.bincount(mask.ravel(), minlength=6).tolist() == [0, 0, 0, 4, 0, 1]  # Bicyclist 4 px, Road 1 px
    source = FORMATS["colormask"]().semantic_source(SAMPLES / "xanylabeling_semseg")
    assert source.class_names == ["background", "cat", "dog"]
    mask = source.mask_reader(source.items["cat_dog"][1], 3, 255)  # a palette PNG read through its palette
    assert np.bincount(mask.ravel(), minlength=3).tolist() == [761017, 139911, 265472]


# ---- bad annotations: one sentence naming the file (and the shape or line) ----------------------------------


def _labelme(tmp_path: Path, shapes: list[dict], labels: list[str] | None = None, image: str = "a.png") -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "a.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "b.png")
    for name in ("a", "b"):
        (root / f"{name}.json").write_text(json.dumps({"version": "5.0.1", "shapes": shapes, "imagePath": image if name == "a" else "b.png",
                                                       "imageData": None, "imageHeight": 20, "imageWidth": 30}))
    if labels is not None:
        (root / "labels.txt").write_text("\n".join(labels) + "\n")
    return root


def _polygon(label: str, points: list) -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}


@pytest.mark.parametrize("shapes, labels, image, pattern", [
    ([_polygon("cat", [[1, 1], [5, 5]])], None, "a.png", r"a\.json, shape 0 is a polygon with 2 point\(s\); expected at least 3"),
    ([_polygon("dog", [[1, 1], [5, 5], [1, 8]])], ["__ignore__", "_background_", "cat"], "a.png",
     r"a\.json, shape 0 has label 'dog', which .*labels\.txt does not list"),
    ([_polygon("cat", [[1, 1], [5, 5], [1, 8]])], None, "missing.png", r"a\.json names image 'missing\.png', which is not at"),
])
def test_bad_labelme_files(shapes, labels, image, pattern, tmp_path):
    root = _labelme(tmp_path, shapes, labels, image)
    with pytest.raises(DatasetError, match=pattern):
        FORMATS["labelme"]().semantic_source(root).mask_reader("a", 3, 255)


def test_points_outside_the_image_are_clipped_with_a_count(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    root = _labelme(tmp_path, [_polygon("cat", [[-5, 1], [50, 5], [1, 30]])])
    source = FORMATS["labelme"]().semantic_source(root)
    assert "2 shape(s) with points outside the image (drawn clipped, as LabelMe does)" in caplog.text
    assert (source.mask_reader("a", 2, 255) == 1).any()


def _yolo(tmp_path: Path, line: str) -> Path:
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("cat\ndog\n")
    for name in ("a", "b"):
        Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "images" / f"{name}.png")
        (root / "labels" / f"{name}.txt").write_text(line + "\n")
    return root


@pytest.mark.parametrize("line, pattern", [
    ("0 0.1 0.1 0.5 0.1 0.5", r"labels/a\.txt, line 1 has 5 coordinates, an odd number"),
    ("2 0.1 0.1 0.5 0.1 0.5 0.5", r"labels/a\.txt, line 1 has class 2; expected 0\.\.1"),
    ("1 0.1 0.1 0.5 0.5", None),  # four numbers: a box (the detection format), read
])
def test_bad_yolo_lines(line, pattern, tmp_path):
    root = _yolo(tmp_path, line)
    if pattern is None:
        masks, categories, _ = FORMATS["yolo"]().instance_source(root).read("images/a")
        assert categories.tolist() == [2] and masks.sum() > 0
        return
    with pytest.raises(DatasetError, match=pattern):
        FORMATS["yolo"]().instance_source(root)


@needs_samples
def test_a_colour_the_table_does_not_have(tmp_path):
    root = tmp_path / "colour"
    shutil.copytree(SAMPLES / "common_semseg", root)
    mask = np.asarray(Image.open(root / "masks" / "0001.png").convert("RGB")).copy()
    mask[0, 2] = (1, 2, 3)
    Image.fromarray(mask).save(root / "masks" / "0001.png")
    source = FORMATS["colormask"]().semantic_source(root)
    with pytest.raises(DatasetError, match=re.escape(f"mask file {root / 'masks' / '0001.png'} has colour (1, 2, 3) at "
                                                     "pixel (2, 0), which") + r".*dataset_meta\.json does not list"):
        source.mask_reader(source.items["0001"][1], 6, 255)


@needs_samples
def test_an_rle_of_another_size(tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(SAMPLES / "coco_rle", root)
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["segmentation"]["size"] = [11, 5]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances_val\.json, annotation 2 has an RLE of size \[11, 5\] \(height, "
                                           r"width\) but its image is \[10, 5\]"):
        FORMATS["coco"]().instance_source(root)


@needs_samples
def test_an_annotation_naming_an_image_that_is_not_there(tmp_path):
    root = tmp_path / "cvat"
    shutil.copytree(SAMPLES / "cvat_images_xml", root)
    (root / "images" / "Train" / "img1.jpg").unlink()
    source = FORMATS["cvat"]().instance_source(root)
    with pytest.raises(DatasetError, match=r"image 'img1\.jpg' of subset Train: its image .*img1\.jpg does not exist"):
        source.read("Train/img1")


@pytest.mark.parametrize("tool, make, pattern", [
    ("train_semantic", lambda p: _labelme(p, [_polygon("cat", [[1, 1], [5, 5]])]), r"a\.json, shape 0 is a polygon with 2"),
    ("train_semantic", lambda p: _labelme(p, [_polygon("dog", [[1, 1], [5, 5], [1, 8]])], ["_background_", "cat"]),
     r"a\.json, shape 0 has label 'dog'"),
    ("train_instance", lambda p: _yolo(p, "0 0.1 0.1 0.5 0.1 0.5"), r"labels/a\.txt, line 1 has 5 coordinates"),
    ("train_instance", lambda p: _labelme(p, [_polygon("cat", [[1, 1], [5, 5], [1, 8]])], None, "missing.png"),
     r"a\.json names image 'missing\.png'"),
])
def test_the_tools_refuse_bad_annotations_with_exit_2_and_one_sentence(tool, make, pattern, tmp_path, capsys):
    from conftest import call_tool

    root = make(tmp_path)
    code = call_tool(tool, ["--data-root", root, "--output-dir", tmp_path / "run", "--opts", "train.epochs=1",
                            "data.num_workers=0", "data.val=1", "data.test=0"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and re.search(pattern, errors[0]), (code, errors)
