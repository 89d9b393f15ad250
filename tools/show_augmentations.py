#!/usr/bin/env python
"""Write a grid of augmented training samples with their masks overlaid, to check that they stay aligned.

Each row: one training image resized to the evaluation size, then random crops/flips of it as training sees them.

Example:
    python tools/show_augmentations.py --data-root ../shared/data/PennFudanPed --output runs/augmentations.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML config (its data and augment blocks are used)")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: built-in synthetic data)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--output", type=Path, default=Path("runs/augmentations.png"), help="PNG file to write")
    parser.add_argument("--num-images", type=int, default=4, help="training images to show (rows)")
    parser.add_argument("--per-image", type=int, default=4, help="augmented versions of each image (columns)")
    return parser


def main(args: argparse.Namespace) -> None:
    from seg_ext.methods import build_method, merge_checked, method_config, resolve_method

    setup_logging()
    cfg = method_config(resolve_method(None, args.config), args.config, args.opts)
    if args.data_root is not None:
        cfg = merge_checked(cfg, {"data": {"root": str(args.data_root)}}, source="--data-root")
    path = build_method(cfg).show_augmentations(args.output, args.num_images, args.per_image)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
