"""coco_eval: COCO segm evaluation, pycocotools vs faster-coco-eval, on noisy copies of the test masks."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from harness import median_time, pennfudan_test_split


def bench(quick: bool, repeat: int) -> dict[str, Any]:
    from scipy import ndimage

    from seg_ext.data.coco import masks_to_rles
    from seg_ext.evaluation.coco import coco_evaluate

    with tempfile.TemporaryDirectory() as tmp:
        _, dataset = pennfudan_test_split(tmp)
    rng = np.random.default_rng(0)
    results = []
    copies = 2 if quick else 8  # several noisy detections per pedestrian, as a real detector gives
    for image_id in dataset.ids:
        for ann in dataset.coco.imgToAnns.get(image_id, []):
            mask = dataset.coco.annToMask(ann).astype(bool)
            for _ in range(copies):
                m = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 4))) if rng.random() < 0.5 else \
                    ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 4)))
                m = np.roll(m, int(rng.integers(-6, 7)), axis=1)
                if m.any():
                    results.append({"image_id": int(image_id), "category_id": 1, "score": float(rng.random()),
                                    "segmentation": masks_to_rles(m[None])[0]})
    ours, _ = median_time(lambda: coco_evaluate(dataset.coco, results, "segm", backend="faster_coco_eval"), repeat)
    ref, _ = median_time(lambda: coco_evaluate(dataset.coco, results, "segm", backend="pycocotools"), repeat)
    a = coco_evaluate(dataset.coco, results, "segm", backend="faster_coco_eval")[0]
    b = coco_evaluate(dataset.coco, results, "segm", backend="pycocotools")[0]
    diff = max(0.0 if np.isnan(a[k]) and np.isnan(b[k]) else abs(a[k] - b[k]) for k in b)
    identical = diff < 1e-9  # the same up to the order of floating-point sums
    return {
        "ours_s": ours, "reference_s": ref, "ratio": ref / ours, "results": len(results), "images": len(dataset),
        "identical_metrics": identical, "max_metric_difference": diff, "segm_AP": b["segm/AP"],
        "target": "faster-coco-eval gives identical numbers (then offered as eval.backend)", "met": identical,
        "note": f"faster-coco-eval {ref / ours:.1f}x faster on {len(results)} segm results; largest metric "
        f"difference {diff:.1e} points",
    }
