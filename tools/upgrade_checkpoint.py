#!/usr/bin/env python
"""Convert a checkpoint written by seg_ext before 0.2 to the safe format, once.

Checkpoints are read with torch.load(weights_only=True), which runs nothing a file carries; older checkpoints
hold NumPy objects that only an unsafe load can read, so every tool refuses them. This tool does that unsafe load
for a file you say you trust (your own run, or one from someone you trust: an unsafe load runs any code a crafted
file carries), converts it, writes it safely and checks that it now opens with the safe load. By default the file
is converted in place and the original kept beside it as <name>.v1.

Examples:
    python tools/upgrade_checkpoint.py runs/old/best.pt runs/old/last.pt
    python tools/upgrade_checkpoint.py old.pt --output new.pt
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seg_ext.cli import run_tool, setup_logging  # noqa: E402
from seg_ext.errors import SegExtError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints written by seg_ext before 0.2 that you trust")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the converted checkpoint (one input only; default: in place, the "
                             "original kept as <name>.v1)")
    return parser


def main(args: argparse.Namespace) -> None:
    from seg_ext.engine import upgrade_checkpoint_file

    setup_logging()
    if args.output is not None and len(args.checkpoints) > 1:
        raise SegExtError("--output takes one checkpoint; without it each is converted in place")
    for path in args.checkpoints:
        logging.getLogger(__name__).warning(
            "reading %s with an unsafe load: it runs any code the file carries; only convert files you trust", path)
        output = args.output or path.with_name(path.name + ".new")
        upgrade_checkpoint_file(path, output)
        if args.output is None:
            os.replace(path, path.with_name(path.name + ".v1"))
            os.replace(output, path)
            output = path
        print(f"{path} -> {output} (it opens with the safe load; the original is {path.name}.v1)" if args.output is None
              else f"{path} -> {output} (it opens with the safe load)")


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
