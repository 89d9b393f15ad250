"""Penn-Fudan -> COCO conversion: every pedestrian accounted for, and decoding gives back exactly its pixels."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import call_tool
from seg_ext.data.pennfudan import convert_pennfudan, list_pennfudan, pennfudan_to_coco
from seg_ext.errors import DatasetError


def test_round_trip_on_a_generated_pennfudan_layout(pennfudan_root, tmp_path):
    paths = convert_pennfudan(pennfudan_root, tmp_path, seed=0, val=2, test=3)
    expected_instances = 0
    for _, _, mask_path in list_pennfudan(pennfudan_root):
        expected_instances += len(set(np.unique(np.asarray(Image.open(mask_path)))) - {0})
    seen_images, seen_instances, image_ids = set(), 0, set()
    for split, path in paths.items():
        coco = json.loads(path.read_text())
        assert coco["categories"] == [{"id": 1, "name": "person", "supercategory": "person"}]
        by_image = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for image in coco["images"]:
            assert image["file_name"].startswith("PNGImages/")
            image_ids.add(image["id"])
            seen_images.add(image["file_name"])
            label = np.asarray(Image.open(pennfudan_root / "PedMasks" / image["file_name"].split("/")[1].replace(".png", "_mask.png")))
            assert (image["height"], image["width"]) == label.shape
            anns = by_image.get(image["id"], [])
            ids = sorted(set(np.unique(label)) - {0})
            assert len(anns) == len(ids)
            for ann, pedestrian in zip(anns, ids):
                decoded = mask_utils.decode(ann["segmentation"])
                np.testing.assert_array_equal(decoded, (label == pedestrian).astype(np.uint8))
                assert ann["area"] == decoded.sum()
                ys, xs = np.nonzero(decoded)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert ann["iscrowd"] == 0 and ann["category_id"] == 1
            seen_instances += len(anns)
    assert len(seen_images) == 12 and len(image_ids) == 12
    assert seen_instances == expected_instances
    assert [len(json.loads(paths[s].read_text())["images"]) for s in ("train", "val", "test")] == [7, 2, 3]


def test_split_is_deterministic_for_a_seed(pennfudan_root):
    a = pennfudan_to_coco(pennfudan_root, seed=5, val=2, test=3)
    b = pennfudan_to_coco(pennfudan_root, seed=5, val=2, test=3)
    c = pennfudan_to_coco(pennfudan_root, seed=6, val=2, test=3)
    names = lambda d: {s: [i["file_name"] for i in d[s]["images"]] for s in d}  # noqa: E731
    assert names(a) == names(b) and names(a) != names(c)


def test_tool_prints_the_counts(pennfudan_root, tmp_path, capsys):
    code = call_tool("convert_pennfudan_to_coco", ["--data-root", pennfudan_root, "--output-dir", tmp_path, "--val", "2", "--test", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "total: 12 images" in out and (tmp_path / "instances_test.json").is_file()


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", r"dataset folder .*nothing does not exist"),
        ("no_masks_dir", r"has no PedMasks/ folder; expected the Penn-Fudan layout"),
        ("no_mask", r"image .*SynthPed00003\.png has no mask; expected .*PedMasks/SynthPed00003_mask\.png"),
        ("size", r"mask .*SynthPed00004_mask\.png is 7x9 but image .*SynthPed00004\.png is \d+x\d+; expected the same size"),
    ],
)
def test_bad_folders(case, pattern, pennfudan_root, tmp_path, capsys):
    root = tmp_path / "pf"
    if case != "missing":
        shutil.copytree(pennfudan_root, root)
    if case == "no_masks_dir":
        shutil.rmtree(root / "PedMasks")
    elif case == "no_mask":
        (root / "PedMasks" / "SynthPed00003_mask.png").unlink()
    elif case == "size":
        Image.fromarray(np.zeros((9, 7), np.uint8)).save(root / "PedMasks" / "SynthPed00004_mask.png")
    target = tmp_path / "nothing" if case == "missing" else root
    with pytest.raises(DatasetError, match=pattern):
        list_pennfudan(target)
    assert call_tool("convert_pennfudan_to_coco", ["--data-root", target, "--output-dir", tmp_path / "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
