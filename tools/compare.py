#!/usr/bin/env python
"""Compare finished runs: one table of the final val and test metrics per setting (mean ± standard deviation over
the runs that differ only in train.seed, and n), the config keys that differ between runs as columns, the best
mean per column in bold; validation curves of every run overlaid and a bar chart of the spread over seeds.

Examples:
    python tools/compare.py runs/sweeps/aug --output runs/sweeps/aug/comparison.md
    python tools/compare.py runs/semantic/a runs/semantic/b --output runs/compare.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders of runs (a sweep)")
    parser.add_argument("--output", type=Path, required=True, help="the markdown file to write (plots and a .json beside it)")
    return parser


def main(args: argparse.Namespace) -> None:
    from seg_ext.tasks.compare import compare_runs

    numbers = compare_runs(args.runs, args.output)
    print(f"{sum(len(s['runs']) for s in numbers['settings'])} run(s), {len(numbers['settings'])} setting(s): {args.output}")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
