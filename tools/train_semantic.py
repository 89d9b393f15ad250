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

from seg_ext.cli import add_run_arguments, command_line, print_summary, resolve_run, run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_run_arguments(parser)


def main(args: argparse.Namespace) -> None:
    from seg_ext.config import SEMANTIC_DEFAULTS
    from seg_ext.tasks.semantic import evaluate_semantic, train_semantic

    cfg, output_dir = resolve_run(args, "semantic", SEMANTIC_DEFAULTS)
    setup_logging(output_dir)
    if args.eval_only:
        summary = evaluate_semantic(cfg, args.checkpoint, output_dir, command_line())
    else:
        summary = train_semantic(cfg, output_dir, resume=args.resume, command=command_line())
    print_summary(summary, output_dir, lambda m: f"mIoU {m['mIoU']:.2f}  mAP {m['mAP']:.2f}  pixel acc {m['pixel_acc']:.2f}")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
