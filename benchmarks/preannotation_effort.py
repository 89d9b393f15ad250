#!/usr/bin/env python
"""What pre-annotations save a person, measured on labelled data: a trained checkpoint predicts a split's images,
its predictions become shapes as ``tools/predict.py --save-format`` writes them, and each image's shapes are
compared with its ground truth's, at several polygon tolerances.

Per image and tolerance:

* round trip: the mean IoU of the shapes drawn back (as LabelMe draws them) with the prediction itself, per class
  (semantic) or per instance: what the simplification costs;
* vertices: of the predicted shapes (what a person gets) and of the ground truth's shapes simplified the same way
  (what a person would click drawing them from scratch);
* effort with the pre-annotations: the predicted vertices farther than ``--near`` px from the true outline (to
  move), the vertices of true shapes no predicted shape matches (IoU < 0.5: to draw) and the predicted shapes that
  match no true one (to delete, one action each), against the vertices to draw from scratch.

Penn-Fudan only (its ``PedMasks``: semantic = person vs background, instances = the pedestrians); the images of
the split come from the run's ``splits.json`` (semantic) or ``coco/instances_<split>.json`` (instances).

    python benchmarks/preannotation_effort.py --checkpoint runs/pf/unet/best.pt --data-root ../shared/data/PennFudanPed --split val
    python benchmarks/preannotation_effort.py --checkpoint runs/results/watershed/best.pt --data-root ../shared/data/PennFudanPed --split val
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_ext.data.annotations import Shape  # noqa: E402
from seg_ext.data.preannotate import Region, instance_regions, outlines_of, semantic_regions  # noqa: E402


def drawn(region: Region, shape: tuple[int, int]) -> np.ndarray:
    """The region's shapes as LabelMe draws them (its mask where it keeps holes)."""
    if region.holes:
        return region.full()
    out = np.zeros(shape, bool)
    for polygon in region.outlines:
        out |= Shape("x", "polygon", [tuple(p) for p in polygon]).draw(*shape)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def truth_shapes(mask: np.ndarray, task: str) -> list[np.ndarray]:
    """The true shapes: the pedestrians (instances) or the person pieces (semantic)."""
    if task == "instance":
        return [mask == k for k in range(1, int(mask.max()) + 1) if (mask == k).any()]
    import cv2

    count, components = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    return [components == k for k in range(1, count)]


def effort(regions: list[Region], truths: list[np.ndarray], tolerance: float, near: float) -> dict[str, float]:
    import cv2

    shape = truths[0].shape if truths else regions[0].size
    truth_vertices = [sum(len(p) for p in outlines_of(t, tolerance)) for t in truths]
    boundary = np.ones(shape, np.uint8)
    for t in truths:
        contours, _ = cv2.findContours(t.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(boundary, contours, -1, 0, 1)
    distance = cv2.distanceTransform(boundary, cv2.DIST_L2, 5)  # to the nearest true outline pixel
    matched_truth, move, delete = set(), 0, 0
    for region in regions:
        scores = [iou(region.full(), t) for t in truths]
        best = int(np.argmax(scores)) if scores else -1
        if best < 0 or scores[best] < 0.5:
            delete += 1
            continue
        matched_truth.add(best)
        for polygon in region.outlines:
            xy = np.clip(np.round(polygon).astype(int), 0, [shape[1] - 1, shape[0] - 1])
            move += int((distance[xy[:, 1], xy[:, 0]] > near).sum())
    draw = sum(v for k, v in enumerate(truth_vertices) if k not in matched_truth)
    return {"scratch": sum(truth_vertices), "move": move, "draw": draw, "delete": delete,
            "vertices": sum(len(p) for r in regions for p in r.outlines)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, required=True, help="the Penn-Fudan folder")
    parser.add_argument("--split", default="val", help="the run's split to measure on (splits.json)")
    parser.add_argument("--tolerance", type=float, nargs="+", default=[0, 0.5, 1, 2, 3])
    parser.add_argument("--near", type=float, default=2.0, help="a vertex this close (px) to the true outline stays")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from PIL import Image

    from seg_ext.inference import Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    run = args.checkpoint.parent
    if (run / "splits.json").is_file():  # a semantic run's split
        names = [Path(str(i)).stem for i in json.loads((run / "splits.json").read_text())[args.split]]
    else:  # an instance run's: its COCO file of the split
        images = json.loads((run / "coco" / f"instances_{args.split}.json").read_text())["images"]
        names = [Path(str(image["file_name"])).stem for image in images]
    rows = {t: [] for t in args.tolerance}
    for name in names:
        image = args.data_root / "PNGImages" / f"{name}.png"
        truth = np.asarray(Image.open(args.data_root / "PedMasks" / f"{name}_mask.png"))
        result = predictor(image)
        truths = truth_shapes(truth, predictor.task)
        for tolerance in args.tolerance:
            start = time.perf_counter()
            if predictor.task == "semantic":
                labels = result["labels"]
                regions = semantic_regions(labels, predictor.class_names, tolerance)
                seconds = time.perf_counter() - start
                back = np.zeros(labels.shape, np.int64)
                for region in regions:  # painted in the written order
                    back[drawn(region, labels.shape)] = predictor.class_names.index(region.label)
                present = [c for c in range(len(predictor.class_names)) if (labels == c).any() or (back == c).any()]
                fidelity = float(np.mean([iou(back == c, labels == c) for c in present]))
            else:
                regions = instance_regions(result["instance_map"], result["labels"], result["scores"],
                                           predictor.class_names, tolerance)
                seconds = time.perf_counter() - start
                fidelity = float(np.mean([iou(drawn(r, r.size), r.full()) for r in regions])) if regions else 1.0
            rows[tolerance].append({"image": name, "round_trip_iou": fidelity, "seconds": seconds,
                                    **effort(regions, truths, tolerance, args.near)})
    print(f"{predictor.task} checkpoint {args.checkpoint}, {len(names)} {args.split} images, a vertex within "
          f"{args.near:g} px of the true outline stays")
    print("| tolerance (px) | round-trip IoU, mean (min) | vertices per image: predicted | true, drawn from scratch | "
          "with the pre-annotations: to move + to draw (+ shapes to delete) | share of the scratch work | ms per image |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for tolerance, found in rows.items():
        mean = lambda key: float(np.mean([r[key] for r in found]))  # noqa: E731
        work = sum(r["move"] + r["draw"] + r["delete"] for r in found) / max(sum(r["scratch"] for r in found), 1)
        summary[str(tolerance)] = {"round_trip_iou": mean("round_trip_iou"),
                                   "round_trip_iou_min": min(r["round_trip_iou"] for r in found),
                                   "vertices": mean("vertices"), "scratch": mean("scratch"), "move": mean("move"),
                                   "draw": mean("draw"), "delete": mean("delete"), "work_share": work,
                                   "ms": 1000 * mean("seconds")}
        s = summary[str(tolerance)]
        print(f"| {tolerance:g} | {s['round_trip_iou']:.4f} ({s['round_trip_iou_min']:.4f}) | {s['vertices']:.1f} | "
              f"{s['scratch']:.1f} | {s['move']:.1f} + {s['draw']:.1f} (+ {s['delete']:.2f}) | {100 * work:.0f}% | "
              f"{s['ms']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "images": {str(t): r for t, r in rows.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
