#!/usr/bin/env python
"""Convert a dataset of any supported format (LabelMe, CVAT XML, YOLO, Pascal VOC, colour masks, COCO, ...) into a
standard layout for use elsewhere: COCO instance files with the images (--to coco), or class-id PNG masks with
classes.txt, the plain folder format (--to masks). The format is recognised from the layout; --from names it
where the layout is ambiguous. Splits are carried over where the dataset has its own.

Examples:
    python tools/convert.py --to coco --data-root ../shared/data/annotation_samples/labelme_instance --output-dir runs/coco
    python tools/convert.py --to masks --data-root path/to/cvat_export --output-dir runs/masks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    from seg_ext.data.formats import format_names
    from seg_ext.tasks.convert import TARGETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", choices=["auto", *(n for n in format_names() if n != "synthetic")],
                        default="auto", help="the dataset's format (default: recognised from the layout)")
    parser.add_argument("--to", required=True, choices=list(TARGETS), help="coco (instances) or masks (class-id PNGs)")
    parser.add_argument("--data-root", type=Path, required=True, help="the dataset folder")
    parser.add_argument("--output-dir", type=Path, required=True, help="a new folder for the converted dataset")
    return parser


def main(args: argparse.Namespace) -> None:
    from seg_ext.tasks.convert import convert

    setup_logging()
    summary = convert(args.data_root, args.output_dir, args.to, args.source)
    if args.to == "coco":
        for split, info in summary["splits"].items():
            print(f"{split:>5}: {info['images']} images, {info['instances']} instances -> {info['file']}")
    else:
        print(f"{summary['images']} images, {len(summary['classes'])} classes -> {args.output_dir}")
    print(f"converted from {summary['format']}; read it back with --data-root {args.output_dir}")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
