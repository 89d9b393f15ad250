"""Failure analysis: matching and AP equal pycocotools', TIDE's labels on hand-made cases, the progressive
breakdown sums to the gap to 100, calibration on known inputs."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from seg_ext.data.coco import coco_from_dict
from seg_ext.evaluation.analysis import (
    ERROR_TYPES, calibration_bins, error_labels, image_detections, image_scores, mean_ap, reliability, tide_breakdown,
    worst_and_median,
)

H = W = 64


def _box_mask(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    return m


def _rle(m):
    r = mask_utils.encode(np.asfortranarray(m))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _problem(seed: int, images: int = 12, crowd: bool = True):
    """Random boxes as masks in two categories; detections are jittered copies, duplicates, wrong classes and
    noise, with random scores."""
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    results = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "file_name": f"im{image_id}.png", "height": H, "width": W})
        for k in range(rng.integers(0, 5)):
            x0, y0 = rng.integers(0, 40, 2)
            w, h = rng.integers(6, 24, 2)
            box = (int(x0), int(y0), int(min(x0 + w, W)), int(min(y0 + h, H)))
            c = int(rng.integers(1, 3))
            is_crowd = crowd and rng.random() < 0.1
            m = _box_mask(*box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": c,
                                      "segmentation": _rle(m), "area": float(m.sum()), "iscrowd": int(is_crowd),
                                      "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
            for _ in range(rng.integers(0, 3)):
                dx, dy = rng.integers(-6, 7, 2)
                jit = (max(box[0] + dx, 0), max(box[1] + dy, 0), min(box[2] + dx, W), min(box[3] + dy, H))
                cat = c if rng.random() < 0.8 else 3 - c
                results.append({"image_id": image_id, "category_id": cat, "score": round(float(rng.random()), 3),
                                "segmentation": _rle(_box_mask(*jit))})
        for _ in range(rng.integers(0, 3)):
            x0, y0 = rng.integers(0, 50, 2)
            results.append({"image_id": image_id, "category_id": int(rng.integers(1, 3)), "score": round(float(rng.random()), 3),
                            "segmentation": _rle(_box_mask(int(x0), int(y0), int(x0) + 10, int(y0) + 10))})
    return coco_from_dict(gt), results


def _coco_ap(coco_gt, results, image_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "segm")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100 * ev.stats[0], 100 * ev.stats[1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ap_equals_pycocotools(seed):
    coco_gt, results = _problem(seed)
    images = image_detections(coco_gt, results, "segm")
    ap, ap50 = _coco_ap(coco_gt, results)
    assert mean_ap(images, 0.5) == pytest.approx(ap50, abs=1e-9)
    assert np.mean([mean_ap(images, t) for t in np.linspace(0.5, 0.95, 10)]) == pytest.approx(ap, abs=1e-9)


def test_per_image_ap_equals_pycocotools_on_that_image():
    coco_gt, results = _problem(5, crowd=False)
    for image in image_detections(coco_gt, results, "segm"):
        row = image_scores(image, 0.5)
        if not row["ground_truth"]:
            assert math.isnan(row["AP"])
            continue
        ap, ap50 = _coco_ap(coco_gt, [r for r in results if r["image_id"] == image.image_id] or results[:0], [image.image_id]) \
            if any(r["image_id"] == image.image_id for r in results) else (0.0, 0.0)
        assert row["AP"] == pytest.approx(ap, abs=1e-9) and row["AP50"] == pytest.approx(ap50, abs=1e-9)
        assert row["matched"] + row["missed"] == row["ground_truth"]
        assert row["matched"] + row["false"] == row["detections"]


def _one_image(gts, dets):
    """gts: [(box, class)], dets: [(box, class, score)] -> ImageDetections."""
    gt = {"images": [{"id": 1, "file_name": "x.png", "height": H, "width": W}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "segmentation": _rle(_box_mask(*b)),
                           "area": 1.0, "iscrowd": 0, "bbox": [0, 0, 1, 1]} for k, (b, c) in enumerate(gts)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    coco = coco_from_dict(gt)
    res = [{"image_id": 1, "category_id": c, "score": s, "segmentation": _rle(_box_mask(*b))} for b, c, s in dets]
    return image_detections(coco, res, "segm")


def test_tide_labels_each_kind():
    person, other = (10, 10, 30, 30), (40, 40, 60, 60)
    image = _one_image(
        [(person, 1), (other, 1), ((0, 40, 20, 60), 2)],
        [(person, 1, 0.9),                 # tp
         (person, 1, 0.8),                 # duplicate of the first
         ((40, 40, 52, 52), 1, 0.7),       # IoU 0.36 with `other`: localisation
         ((0, 40, 20, 60), 1, 0.6),        # right place, wrong class: classification
         ((50, 0, 60, 8), 2, 0.5),         # nothing near: background
         ((36, 36, 56, 56), 2, 0.4)],      # wrong class and poor overlap: both
    )[0]
    labels = error_labels(image)
    assert labels.det_kind == ["tp", "dupe", "loc", "cls", "bkg", "both"]
    assert labels.gt_kind == ["matched", "fixable", "fixable"]
    missed = error_labels(_one_image([(person, 1), (other, 2)], [(person, 1, 0.9)])[0])
    assert missed.gt_kind == ["matched", "missed"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_progressive_fixes_sum_to_the_gap(seed):
    coco_gt, results = _problem(seed, crowd=False)
    images = image_detections(coco_gt, results, "segm")
    out = tide_breakdown(images)
    assert out["AP50"] == pytest.approx(_coco_ap(coco_gt, results)[1], abs=1e-9)
    assert sum(out["dAP_progressive"].values()) == pytest.approx(100 - out["AP50"], abs=1e-9)
    assert set(out["dAP"]) == set(ERROR_TYPES) and all(v >= 0 for v in out["dAP"].values())
    assert sum(out["counts"][t] for t in ERROR_TYPES if t != "missed") == sum(
        1 for im in images for k in error_labels(im).det_kind if k not in ("tp", "ignored"))


def test_perfect_detections_have_no_errors():
    coco_gt, _ = _problem(0, crowd=False)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "segmentation": a["segmentation"]}
               for a in coco_gt.dataset["annotations"]]
    out = tide_breakdown(image_detections(coco_gt, results, "segm"))
    assert out["AP50"] == pytest.approx(100) and all(v == 0 for v in out["counts"].values())


def test_calibration_ece_of_known_bins():
    conf = np.array([0.05, 0.15, 0.95, 0.95])
    correct = np.array([0, 0, 1, 0])
    table = calibration_bins(conf, correct)
    out = reliability(table)
    # bins: 0 -> |0 - .05|, 1 -> |0 - .15|, 9 -> |.5 - .95|; weighted by 1, 1, 2 of 4
    assert out["ece"] == pytest.approx(100 * (0.05 + 0.15 + 2 * 0.45) / 4)
    assert out["count"][9] == 2 and math.isnan(out["accuracy"][5])
    perfect = reliability(calibration_bins(np.array([1.0, 1.0]), np.array([1, 1])))
    assert perfect["ece"] == pytest.approx(0)


def test_worst_and_median():
    rows = [{"image": str(i), "mIoU": v} for i, v in enumerate([50.0, 10.0, float("nan"), 90.0, 30.0])]
    out = worst_and_median(rows, "mIoU", 2)
    assert [r["image"] for r in out["worst"]] == ["1", "4"] and out["median"]["image"] == "4"
    assert out["median_value"] == 40.0 and out["images"] == 5
