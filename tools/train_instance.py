#!/usr/bin/env python
"""Train and evaluate an instance-segmentation model: Mask R-CNN (detection-based) or a dual-head UNet whose
foreground and energy outputs a watershed turns into instances (detection-free). Both are scored with COCO box
and mask AP (pycocotools); the run folder gets results files, metrics.json and report.md.

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

from seg_ext.cli import add_run_arguments, command_line, print_summary, resolve_run, run_tool, setup_logging  # noqa: E402
from seg_ext.errors import ConfigError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("maskrcnn", "watershed"), default=None,
                        help="maskrcnn (default) or watershed; a config file may name it instead")
    parser.add_argument("--oracle", action="store_true",
                        help="watershed only: no training; run the post-processing on targets made from the ground "
                             "truth and report the AP it reaches (the method's ceiling)")
    return add_run_arguments(parser)


def main(args: argparse.Namespace) -> None:
    from seg_ext.config import instance_defaults, read_yaml

    method = args.method
    if args.config is not None and not (args.resume or args.eval_only):
        in_file = read_yaml(args.config).get("method")
        if method is not None and in_file is not None and in_file != method:
            raise ConfigError(f"config file {args.config} is for method {in_file!r} but --method is {method!r}")
        method = method or in_file
    method = method or "maskrcnn"
    if args.oracle and method != "watershed":
        raise ConfigError("--oracle is for --method watershed")
    cfg, output_dir = resolve_run(args, "instance", instance_defaults(method))
    if args.method is not None and cfg["method"] != args.method:
        raise ConfigError(f"the checkpoint's run used method {cfg['method']!r} but --method is {args.method!r}")
    setup_logging(output_dir)
    command = command_line()
    if args.oracle:
        from seg_ext.tasks.instance import run_oracle

        summary = run_oracle(cfg, output_dir, command)
    elif args.eval_only:
        from seg_ext.tasks.instance import evaluate_instance

        summary = evaluate_instance(cfg, args.checkpoint, output_dir, command)
    else:
        from seg_ext.tasks.instance import train_instance

        summary = train_instance(cfg, output_dir, resume=args.resume, command=command)
    print_summary(summary, output_dir, lambda m: f"bbox AP {m['bbox/AP']:.2f} (AP50 {m['bbox/AP50']:.2f})  "
                                                 f"segm AP {m['segm/AP']:.2f} (AP50 {m['segm/AP50']:.2f})")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
