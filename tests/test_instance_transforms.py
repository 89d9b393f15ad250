"""Instance augmentation keeps image, masks, boxes and labels together; instances cropped away vanish from all."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from seg_ext.data.coco import CocoInstanceDataset, masks_to_rles
from seg_ext.data.pennfudan import tight_bbox
from seg_ext.methods import method_config
from seg_ext.data.transforms import build_instance_transforms
from seg_ext.errors import ConfigError

COLOURS = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0], [0, 250, 250]], np.uint8)
RECTS = [(5, 5, 30, 40), (50, 10, 90, 60), (100, 70, 118, 95), (0, 80, 12, 99), (60, 75, 85, 90)]  # x0, y0, x1, y1


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A 100x120 image whose colour says which rectangle instance a pixel belongs to; one COCO file."""
    root = tmp_path_factory.mktemp("coded")
    h, w = 100, 120
    image = np.full((h, w, 3), 128, np.uint8)
    anns = []
    for i, (x0, y0, x1, y1) in enumerate(RECTS):
        mask = np.zeros((h, w), np.uint8)
        mask[y0:y1, x0:x1] = 1
        image[mask.astype(bool)] = COLOURS[i]
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": masks_to_rles(mask[None])[0],
                     "area": float(mask.sum()), "bbox": tight_bbox(mask), "iscrowd": 0})
    Image.fromarray(image).save(root / "img.png")
    coco = {"images": [{"id": 1, "file_name": "img.png", "width": w, "height": h}], "annotations": anns,
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "gt.json").write_text(json.dumps(coco))
    return root


def _colour_index(pixels: np.ndarray) -> int:
    return int(np.argmin(np.abs(COLOURS.astype(int) - pixels.astype(int).mean(0)).sum(1)))


def test_alignment_and_instances_cropped_away(coded):
    dataset = CocoInstanceDataset(coded / "gt.json", coded, build_instance_transforms(True, 0.5, [0.7, 1.4], 0.45, seed=0))
    dropped_some = emptied = 0
    for _ in range(60):
        image, target = dataset[0]
        img = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        masks, boxes, labels = target["masks"].numpy(), target["boxes"].numpy(), target["labels"].numpy()
        assert len(masks) == len(boxes) == len(labels) == len(target["area"])
        assert masks.shape[1:] == img.shape[:2]
        dropped_some += len(masks) < len(RECTS)
        emptied += len(masks) == 0
        seen = set()
        for mask, box in zip(masks, boxes):
            assert mask.any()
            ys, xs = np.nonzero(mask)
            # the box is the rectangle's box after the same crop/scale/flip: it hugs the mask
            np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.5)
            inner = binary_erosion(mask.astype(bool), iterations=2)
            if inner.any():
                k = _colour_index(img[inner])
                assert np.abs(img[inner].astype(int) - COLOURS[k]).max() <= 3  # one instance's colour only
                assert k not in seen
                seen.add(k)
    assert dropped_some > 0  # the crop really removed instances in some draws


def test_no_instance_left_is_a_valid_negative(coded, tmp_path):
    coco = json.loads((coded / "gt.json").read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] == 4]  # only the one touching the left border
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    dataset = CocoInstanceDataset(tmp_path / "gt.json", coded, build_instance_transforms(True, 0.0, [1.0, 1.0], 0.45, seed=1))
    shapes = set()
    for _ in range(40):
        image, target = dataset[0]
        n = len(target["labels"])
        assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, *image.shape[1:])
        shapes.add(n)
    assert 0 in shapes and 1 in shapes


def test_eval_has_no_transform_and_bad_augment_config():
    assert build_instance_transforms(train=False) is None
    with pytest.raises(ConfigError, match="augment.crop_fraction"):  # checked when the config is loaded
        method_config("maskrcnn", overrides=["augment.crop_fraction=0.7"])
    with pytest.raises(ConfigError, match="augment.scale_jitter"):
        method_config("maskrcnn", overrides=["augment.scale_jitter=[1.2,0.8]"])
