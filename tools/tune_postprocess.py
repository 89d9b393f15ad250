#!/usr/bin/env python
"""Choose a method's post-processing on val without retraining: run trained checkpoints (say, one per seed) once
over the split, then score every combination of a grid of post-processing values with the method's own
evaluation; the table gives each setting's mean ± standard deviation over the checkpoints, the best mean in bold,
like a sweep's comparison. For methods whose post-processing has settings (Method.postprocess_keys); the
watershed's: watershed.marker_level, .foreground_threshold, .min_marker_area, .min_instance_area, .split_dynamic,
.score_energy, .score_area, .full_resolution and eval.mask_threshold. Put the chosen values in the config (or give
them to tools/predict.py with --opts).

Example:
    python tools/tune_postprocess.py runs/sweeps/ws/default/seed*/best.pt \\
        --grid watershed.split_dynamic=0,3.5,4 eval.mask_threshold=0.3,0.5 --output runs/sweeps/ws/post.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="checkpoints of a method whose post-processing has settings (best.pt of several seeds)")
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                        help="post-processing key and its values (YAML), one item per key")
    parser.add_argument("--output", type=Path, required=True, help="the markdown file to write (a .json and a plot beside it)")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="where to score (default val: choose there)")
    parser.add_argument("--data-root", type=Path, default=None, help="the dataset folder, if it moved since training")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    return parser


def main(args: argparse.Namespace) -> None:
    from seg_ext.tasks.tune import tune_postprocess

    setup_logging()
    numbers = tune_postprocess(args.checkpoints, args.grid, args.output, args.split, args.data_root, args.device)
    print(f"{len(numbers['settings'])} setting(s) x {len(args.checkpoints)} checkpoint(s): {args.output}")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
