#!/usr/bin/env python
"""Convert the Penn-Fudan pedestrians to COCO instance files: instances_{train,val,test}.json.

The split is drawn with --seed (the same on every machine); by default 50 test images, as torchvision's Penn-Fudan
tutorial keeps, and 15 for validation. file_name in the JSON is relative to --data-root.

Example:
    python tools/convert_pennfudan_to_coco.py --data-root ../shared/data/PennFudanPed --output-dir runs/pennfudan_coco
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="the PennFudanPed folder (PNGImages/, PedMasks/)")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the three JSON files go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--val", type=int, default=15, help="validation images (default 15)")
    parser.add_argument("--test", type=int, default=50, help="test images (default 50)")
    return parser


def main(args: argparse.Namespace) -> None:
    from seg_ext.data.pennfudan import convert_pennfudan

    setup_logging()
    paths = convert_pennfudan(args.data_root, args.output_dir, args.seed, args.val, args.test)
    images = annotations = 0
    for split, path in paths.items():
        coco = json.loads(path.read_text())
        images += len(coco["images"])
        annotations += len(coco["annotations"])
        print(f"{split:>5}: {len(coco['images']):4d} images, {len(coco['annotations']):4d} pedestrians -> {path}")
    print(f"total: {images} images, {annotations} pedestrians")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
