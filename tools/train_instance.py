#!/usr/bin/env python
"""Train and evaluate an instance-segmentation method, e.g. Mask R-CNN (detection-based) or a dual-head UNet
whose foreground and energy outputs a watershed turns into instances (detection-free); the choices are the
registered instance methods. Every method is scored with COCO box and mask AP (pycocotools); the run folder gets
results files, metrics.json and report.md.

With no --data-root: built-in synthetic pedestrians in the Penn-Fudan layout, converted to COCO like the real data.

Examples:
    python tools/train_instance.py --method maskrcnn
    python tools/train_instance.py --method watershed
    python tools/train_instance.py --method maskrcnn --config configs/instance/pennfudan_maskrcnn_r18.yaml \\
        --data-root ../shared/data/PennFudanPed
    python tools/train_instance.py --method watershed --oracle --data-root ../shared/data/PennFudanPed
    python tools/train_instance.py --eval-only --checkpoint runs/instance/x/best.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import add_run_arguments, run_tool, train_tool  # noqa: E402

TASK = "instance"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_run_arguments(parser, TASK)


def main(args: argparse.Namespace) -> None:
    train_tool(args, TASK)


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
