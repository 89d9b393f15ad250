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
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import add_run_arguments, check_run_arguments, default_output_dir, run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_run_arguments(parser)


def main(args: argparse.Namespace) -> None:
    from seg_ext.config import load_config, merge_config, parse_overrides
    from seg_ext.engine import load_checkpoint
    from seg_ext.tasks.semantic import config_from_checkpoint, evaluate_semantic, train_semantic

    check_run_arguments(args)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    overrides: dict = {}
    for nested in parse_overrides(args.opts):
        overrides = _deep_update(overrides, nested)
    if args.eval_only:
        cfg = config_from_checkpoint(args.checkpoint, args.data_root, overrides)
        output_dir = args.output_dir or default_output_dir("semantic", "eval")
    elif args.resume:
        output_dir = args.output_dir
        cfg = config_from_checkpoint(output_dir / "last.pt", args.data_root, overrides) if (output_dir / "last.pt").is_file() else None
    else:
        cfg = load_config(args.config, args.opts)
        if args.data_root is not None:
            cfg = merge_config(cfg, {"data": {"root": str(args.data_root)}}, source="--data-root")
        name = args.config.stem if args.config else "default"
        output_dir = args.output_dir or default_output_dir("semantic", name)
    setup_logging(output_dir)
    if args.eval_only:
        summary = evaluate_semantic(cfg, args.checkpoint, output_dir, command)
    else:
        if cfg is None:  # --resume without last.pt: let train_semantic say so
            load_checkpoint(output_dir / "last.pt")
        summary = train_semantic(cfg, output_dir, resume=args.resume, command=command)
    for split in ("val", "test"):
        if split in summary:
            m = summary[split]
            print(f"{split:>5}: mIoU {m['mIoU']:.2f}  mAP {m['mAP']:.2f}  pixel acc {m['pixel_acc']:.2f}")
    print(f"report: {output_dir / 'report.md'}")


def _deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = _deep_update(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
