#!/usr/bin/env python
"""Run a training tool over every combination of a grid of config values and several seeds, then compare the
settings (mean ± standard deviation over seeds) in OUT/comparison.md.

Each run gets its own folder, OUT/<key=value__...>/seed<k>; the seed sets train.seed (the data split stays).
Running the same command again skips finished runs and continues unfinished ones (--resume).

Examples:
    python tools/sweep.py --grid augment.hflip_prob=0,0.5 augment.crop_scale=[0.5,1],[0.08,1] --seeds 0 1 2 \\
        --config configs/semantic/pennfudan_unet.yaml --data-root ../shared/data/PennFudanPed --output-dir runs/sweeps/aug
    python tools/sweep.py --method watershed --grid train.lr=0.001,0.003 --seeds 0 1 --output-dir runs/sweeps/ws
    python tools/sweep.py --engine ray --address auto --grid train.lr=0.001,0.003 --seeds 0 1 2 --output-dir /shared/sweeps/lr
    python tools/sweep.py --engine ray --search optuna --trials 20 --space train.lr=loguniform:1e-4:1e-2 --seeds 0 1 2 \
        --top 2 --output-dir runs/sweeps/search        (docs/experiments.md)
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
    from seg_ext.tasks.sweep import ENGINES

    parser.add_argument("--method", choices=method_names(), default=None,
                        help="the method (its task's training tool runs; default: the config file's, else semantic)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="log the sweep and each of its runs (its children) to MLflow there: a server's "
                             "http://HOST:PORT, or a folder for a SQLite store (needs the tracking extra)")
    parser.add_argument("--jobs", type=int, default=1, help="local engine: runs at a time (default 1: one after the other)")
    ray = parser.add_argument_group("Ray (--engine ray; pip install '.[cluster]')")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this machine (default); ray: Ray Tune, embedded here or on a cluster (--address)")
    ray.add_argument("--address", default=None, help="a Ray cluster's HOST:PORT, or auto (default: an embedded Ray here)")
    ray.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each run takes (default 1)")
    ray.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each run takes (default 0)")
    ray.add_argument("--max-failures", type=int, default=3,
                     help="retries of a run whose process or node died; it resumes from its last.pt (default 3)")
    ray.add_argument("--search", choices=("optuna",), default=None,
                     help="sample --space with Optuna (ASHA stops bad trials early), then run the --top best over --seeds")
    ray.add_argument("--trials", type=int, default=0, help="runs the search samples")
    ray.add_argument("--space", nargs="+", default=[], metavar="KEY=RANGE",
                     help="uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH or choice:V1,V2, e.g. train.lr=loguniform:1e-4:1e-2")
    ray.add_argument("--top", type=int, default=1, help="best settings of the search rerun over --seeds (default 1)")
    return parser


def main(args: argparse.Namespace) -> int:
    from seg_ext.tasks.sweep import RayOptions, sweep

    setup_logging()
    ray = RayOptions(args.address, args.cpus_per_run, args.gpus_per_run, args.max_failures, args.search, args.trials,
                     args.space, args.top)
    failed = sweep(args.grid, args.seeds, args.output_dir, args.config, args.data_root, args.method, args.opts, args.jobs,
                   args.engine, ray, args.tracking_uri)
    print(f"comparison: {args.output_dir / 'comparison.md'}")
    if failed:
        print(f"error: {failed} run(s) failed; their output is in OUT/<setting>/seed<k>.out; run the same command "
              "again to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, get_args_parser().parse_args()))
