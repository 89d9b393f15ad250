#!/usr/bin/env python
"""COCO evaluation of a results file against a ground-truth instances file (pycocotools).

Prints the standard 12-number COCO summary for each IoU type and writes the metrics (percent, keys like segm/AP,
segm/AP50, bbox/AP, ...) as JSON. Works for results from any method or tool in the COCO results format. segm
results are scored without their bbox, so a result's area is its mask area.

Example:
    python tools/evaluate.py --gt runs/instance/x/coco/instances_test.json --results runs/instance/x/results_test_segm.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", type=Path, required=True, help="ground truth: a COCO instances JSON")
    parser.add_argument("--results", type=Path, required=True, help="a COCO results JSON (a list of detections)")
    parser.add_argument("--iou-type", nargs="+", choices=("segm", "bbox"), default=["segm"],
                        help="what to score (default: segm); bbox needs results with a bbox")
    parser.add_argument("--backend", choices=("pycocotools", "faster_coco_eval"), default="pycocotools",
                        help="COCOeval implementation (faster_coco_eval gives the same numbers, faster)")
    parser.add_argument("--output", type=Path, default=None,
                        help="metrics JSON to write (default: <results>.metrics.json beside the results)")
    return parser


def main(args: argparse.Namespace) -> None:
    from seg_ext.data.coco import coco_from_dict, load_coco_json
    from seg_ext.evaluation.coco import coco_evaluate, load_results
    from seg_ext.io import write_json

    setup_logging()
    coco_gt = coco_from_dict(load_coco_json(args.gt))
    metrics: dict[str, float] = {}
    for iou_type in args.iou_type:
        results = load_results(args.results, coco_gt, iou_type)
        values, summary = coco_evaluate(coco_gt, results, iou_type, backend=args.backend)
        print(f"IoU type: {iou_type} ({len(results)} results, {len(coco_gt.getImgIds())} images)")
        print(summary)
        metrics.update(values)
    output = args.output or args.results.with_suffix(".metrics.json")
    write_json(metrics, output)
    print(f"metrics: {output}")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
