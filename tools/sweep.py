#!/usr/bin/env python
"""Run a training tool over every combination of a grid of config values and several seeds, then compare the
settings (mean ± standard deviation over seeds) in OUT/comparison.md.

Each run gets its own folder, OUT/<key=value__...>/seed<k>; the seed sets train.seed (the data split stays).
Running the same command again skips finished runs and continues unfinished ones (--resume).

Examples:
    python tools/sweep.py --grid augment.hflip_prob=0,0.5 augment.crop_scale=[0.5,1],[0.08,1] --seeds 0 1 2 \\
        --config configs/semantic/pennfudan_unet.yaml --data-root ../shared/data/PennFudanPed --output-dir runs/sweeps/aug
    python tools/sweep.py --method watershed --grid train.lr=0.001,0.003 --seeds 0 1 --output-dir runs/sweeps/ws
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                        help="config key and its values (YAML; commas inside [...] stay), one item per key; "
                             "none: the config itself over the seeds (folder OUT/default/seed<k>)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="values of train.seed (default: 0)")
    parser.add_argument("--output-dir", type=Path, required=True, help="the sweep's folder")
    parser.add_argument("--config", type=Path, default=None, help="YAML config the settings change")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: built-in synthetic data)")
    from seg_ext.methods import method_names

    parser.add_argument("--method", choices=method_names(), default=None,
                        help="the method (its task's training tool runs; default: the config file's, else semantic)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1: one after the other)")
    return parser


def main(args: argparse.Namespace) -> int:
    from seg_ext.tasks.sweep import sweep

    setup_logging()
    failed = sweep(args.grid, args.seeds, args.output_dir, args.config, args.data_root, args.method, args.opts, args.jobs)
    print(f"comparison: {args.output_dir / 'comparison.md'}")
    if failed:
        print(f"error: {failed} run(s) failed; their output is in OUT/<setting>/seed<k>.out; run the same command "
              "again to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
