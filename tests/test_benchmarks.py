"""Benchmarks that cannot rot unseen: every benchmark's quick tier runs here at its smallest size
(``benchmarks/run.py --smoke``: every step of each, one repeat), in a process of its own, as a user runs it; each
returns its figures, or says it was skipped (the CUDA one without a GPU, the Ray one without the cluster extra).
The figures of a smoke run are not measurements: ``make bench ARGS=--quick`` for those."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow  # a benchmark process

SMOKE = ("semseg_eval", "semantic_loader", "train_overhead", "watershed_postprocess", "coco_eval", "cpu_throughput",
         "cuda_throughput", "predict_throughput", "onnx_vs_torch", "ddp_scaling", "large_image", "ray_overhead")


def test_the_quick_tier_of_the_benchmarks_runs(tmp_path):
    out = tmp_path / "bench.json"
    spec = importlib.util.spec_from_file_location("benchmarks_run", ROOT / "benchmarks" / "run.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    assert sorted(SMOKE) == sorted(runner.BENCHMARKS)  # a new benchmark is smoked too
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--only", *SMOKE, "--json",
                           str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in SMOKE:
        res = results[name]
        if name.startswith("cuda") and not torch.cuda.is_available():
            assert "skipped" in res, res
            continue
        if name == "ray_overhead" and res["note"].startswith("skipped"):  # the cluster extra is not installed
            continue
        assert res["ours_s"] > 0 and res["reference_s"] > 0 and res["ratio"] > 0 and res["note"], (name, res)
