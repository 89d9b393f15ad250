#!/usr/bin/env python
"""Train and evaluate a semantic-segmentation model; writes metrics.json and report.md into the run folder.

With no arguments: the default UNet on the built-in synthetic scenes, a few minutes on a CPU.

Examples:
    python tools/train_semantic.py
    python tools/train_semantic.py --config configs/semantic/pennfudan_unet.yaml --data-root ../shared/data/PennFudanPed
    python tools/train_semantic.py --output-dir runs/x --resume
    python tools/train_semantic.py --eval-only --checkpoint runs/x/best.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import add_run_arguments, run_tool, train_tool  # noqa: E402

TASK = "semantic"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_run_arguments(parser, TASK)


def main(args: argparse.Namespace) -> None:
    train_tool(args, TASK)


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
