"""Benchmarks that cannot rot unseen: the quick tier of the benchmarks that fit the full tier's time runs here as
a user runs it (``benchmarks/run.py --quick``), in a process of its own; each returns its figures, or says it was
skipped (the CUDA ones without a GPU). The others (semseg_eval, watershed_postprocess, cpu_throughput,
predict_throughput, onnx_vs_torch, ddp_scaling, large_image, ray_overhead) take minutes even in their quick tier:
``make bench ARGS=--quick``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow  # a benchmark process

SMOKE = ("train_overhead", "coco_eval", "semantic_loader", "cuda_throughput")


def test_the_quick_tier_of_the_benchmarks_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--repeat", "1", "--only",
                           *SMOKE, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in SMOKE:
        res = results[name]
        if name.startswith("cuda") and not torch.cuda.is_available():
            assert "skipped" in res, res
            continue
        assert res["ours_s"] > 0 and res["reference_s"] > 0 and res["ratio"] > 0 and res["note"], (name, res)
