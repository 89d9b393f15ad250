"""What Ray costs per run: the same tiny grid swept by the local runner (one run at a time) and by ``--engine ray``
on an embedded Ray with one run at a time (``--cpus-per-run`` = every CPU), each sweep timed whole, repeated; the
overhead per trial is the difference of the medians over the number of runs.

    python benchmarks/run.py --only ray_overhead
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import harness
from harness import ROOT

OPTS = ["data.image_size=[64,64]", "data.batch_size=4", "data.num_workers=0", "model.base_width=4", "model.depth=2",
        "report.num_overlays=0", "train.epochs=1", "train.threads=1"]


def _grid() -> list[str]:
    """2 learning rates x 2 seeds: 4 runs (1 under --smoke)."""
    return ["train.lr=0.001", "--seeds", "0"] if harness.SMOKE else ["train.lr=0.001,0.003", "--seeds", "0", "1"]


def _sweep(out: Path, data: Path, *extra: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), "--data-root", str(data), "--output-dir", str(out),
                    "--grid", *_grid(), "--opts", *OPTS, *extra],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def bench(quick: bool = False, repeat: int = 3) -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"note": "skipped: Ray is not installed (pip install '.[cluster]')", "met": None}
    from seg_ext.data.synthetic import ensure_synthetic_scenes

    cpus = str(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        data = ensure_synthetic_scenes(Path(tmp) / "scenes", 8, 4, 4, size=(64, 80), seed=1)
        local, on_ray = [], []
        for k in range(1 if quick else repeat):
            local.append(_sweep(Path(tmp) / f"local{k}", data))
            on_ray.append(_sweep(Path(tmp) / f"ray{k}", data, "--engine", "ray", "--cpus-per-run", cpus))
    ours, reference = median(on_ray), median(local)
    runs = 1 if harness.SMOKE else 4
    per_trial = (ours - reference) / runs
    return {"ours_s": ours, "reference_s": reference, "ratio": ours / reference, "met": None,
            "note": f"{runs} tiny runs one at a time: local {reference:.1f} s, Ray {ours:.1f} s (median of "
                    f"{len(local)}); Ray adds {per_trial:.1f} s per trial, Ray's start included"}
